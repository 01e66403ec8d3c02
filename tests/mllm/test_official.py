"""Official checkpoints: the tiny model that the official RexSeek code built and saved
(``shared/fixtures/rexseek_tiny``) loads through the public loaders and reproduces the official outputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from chatrex.mllm import ChatRexConfig, ChatRexForConditionalGeneration, ChatRexProcessor, OfficialCheckpointError
from chatrex.mllm.official import OFFICIAL_IMAGE_INDEX, OFFICIAL_OBJECT_INDEX, OFFICIAL_PROMPT_TEMPLATES

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def fixture_dir(shared_dir) -> Path:
    return shared_dir / "fixtures" / "rexseek_tiny"


@pytest.fixture(scope="module")
def reference(fixture_dir):
    return torch.load(fixture_dir / "reference_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def official_model(fixture_dir):
    return ChatRexForConditionalGeneration.from_pretrained(fixture_dir / "checkpoint").eval()


def mapped_ids(official_ids: list[int], image_id: int, objfeat_id: int, num_image_tokens: int) -> list[int]:
    """The official ids with -200 as ``num_image_tokens`` image placeholders and -300 as one object placeholder."""
    out: list[int] = []
    for t in official_ids:
        if t == OFFICIAL_IMAGE_INDEX:
            out += [image_id] * num_image_tokens
        else:
            out.append(objfeat_id if t == OFFICIAL_OBJECT_INDEX else t)
    return out


def reference_inputs(model, reference) -> dict:
    cfg = model.config
    ids = mapped_ids(reference["input_ids"][0].tolist(), cfg.image_token_id, cfg.objfeat_token_id, cfg.num_image_tokens)
    return dict(input_ids=torch.tensor([ids]), pixel_values=reference["pixel_values"],
                pixel_values_aux=reference["pixel_values_aux"], boxes=[reference["gt_boxes"][0] / cfg.image_size_aux])


# ------------------------------------------------------------------------------------------------
# the official model's own checkpoint and outputs
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_fixture_checkpoint_reproduces_the_official_logits_and_greedy_tokens(official_model, reference, fixture_dir):
    model = official_model
    assert model.config.text_config.model_type == "qwen2"
    assert model.config.text_config.vocab_size == 424  # the checkpoint's vocabulary, nothing added
    assert model.config.aux_vision_config["dims"] == [12, 20, 44, 84]  # read from the checkpoint's tensors
    assert model.config.aux_vision_config["depths"] == [1, 1, 2, 1]
    weights = load_file(fixture_dir / "checkpoint" / "model.safetensors")
    torch.testing.assert_close(model.vision_tower_aux.trunk.stages[2].blocks[1].gamma,
                               weights["vision_tower_aux.vision_stages.2.blocks.1.ramma"], rtol=0, atol=0)
    torch.testing.assert_close(model.vision_tower.vision_tower.post_layernorm.weight,
                               weights["vision_tower.vision_tower.vision_model.post_layernorm.weight"], rtol=0, atol=0)
    inputs = reference_inputs(model, reference)
    logits = model(**inputs).logits
    assert logits.shape == reference["logits"].shape == (1, 637, 424)
    assert (logits - reference["logits"]).abs().max().item() <= 1e-4
    out = model.generate(**inputs, attention_mask=torch.ones_like(inputs["input_ids"]), max_new_tokens=10,
                         do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert out.sequences[0, inputs["input_ids"].shape[1]:].tolist() == reference["greedy"][0].tolist()
    assert (torch.stack(out.scores, 1) - reference["greedy_scores"]).abs().max().item() <= 1e-4


@torch.no_grad()
def test_processor_builds_the_official_inputs(official_model, reference, fixture_dir, shared_dir):
    processor = ChatRexProcessor.from_pretrained(fixture_dir / "checkpoint")
    assert processor.input_mode == "official"
    assert processor.image_processor.pad_color == (122, 116, 104)
    batch = processor([shared_dir / reference["image"]], [reference["question"]], [reference["boxes"]])
    cfg = official_model.config
    want = mapped_ids(reference["input_ids"][0].tolist(), cfg.image_token_id, cfg.objfeat_token_id, cfg.num_image_tokens)
    assert batch["input_ids"][0].tolist() == want
    assert (batch["pixel_values_aux"] - reference["pixel_values_aux"]).abs().max().item() <= 1e-6
    assert (batch["pixel_values"] - reference["pixel_values"]).abs().max().item() <= 1e-6
    torch.testing.assert_close(batch["boxes"][0] * 768, reference["gt_boxes"][0], rtol=0, atol=1e-3)
    logits = official_model(**batch).logits
    assert (logits - reference["logits"]).abs().max().item() <= 1e-4


@torch.no_grad()
def test_auto_classes_load_the_official_folder(fixture_dir, official_model, reference):
    from transformers import AutoConfig, AutoModelForCausalLM

    from chatrex.mllm import RexSeekQwenConfig

    assert isinstance(AutoConfig.from_pretrained(fixture_dir / "checkpoint"), RexSeekQwenConfig)
    model = AutoModelForCausalLM.from_pretrained(fixture_dir / "checkpoint", torch_dtype=torch.float32).eval()
    assert type(model) is ChatRexForConditionalGeneration
    inputs = reference_inputs(model, reference)
    assert (model(**inputs).logits - reference["logits"]).abs().max().item() <= 1e-4
    config = ChatRexConfig.from_pretrained(fixture_dir / "checkpoint")
    for field in ("aux_vision_config", "image_token_id", "objfeat_token_id", "vision_feature_layer"):
        assert getattr(config, field) == getattr(official_model.config, field)
    assert config.text_config.to_dict() == official_model.config.text_config.to_dict()
    assert config.official_config == json.loads((fixture_dir / "checkpoint" / "config.json").read_text())


def test_dtype_and_device_map_are_honoured(fixture_dir):
    model = ChatRexForConditionalGeneration.from_pretrained(fixture_dir / "checkpoint", torch_dtype=torch.bfloat16,
                                                            device_map="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_official_processor_modes(fixture_dir):
    from chatrex.mllm.image_processing import ChatRexImageProcessor, normalize_boxes, square_frame

    assert ChatRexImageProcessor().pad_color == (123, 117, 104)
    assert ChatRexImageProcessor(input_mode="official").pad_color == (122, 116, 104)
    frame = square_frame(100, 50)
    box = [[-10, 5, 120, 40]]  # reaches past the image on both sides
    torch.testing.assert_close(normalize_boxes(box, frame, clip=False), torch.tensor([[-0.1, 0.3, 1.2, 0.65]]))
    torch.testing.assert_close(normalize_boxes(box, frame), torch.tensor([[0.0, 0.3, 1.0, 0.65]]))
    processor = ChatRexProcessor.from_pretrained(fixture_dir / "checkpoint")
    with pytest.raises(ValueError, match="no uint8 form"):
        processor([torch.zeros(3, 20, 30, dtype=torch.uint8).numpy().transpose(1, 2, 0)], ["q"], normalize_images=False)
    ids, labels = processor.encode_text("Detect dog.", 1, answer="<ground>dog</ground><objects><obj0></objects>")
    prompt = processor.encode_official("Detect dog.", 1)
    answer = processor.tokenizer.encode("<ground>dog</ground><objects><obj0></objects>", add_special_tokens=False)
    assert ids == prompt + answer + [processor.tokenizer.eos_token_id]
    assert labels == [-100] * len(prompt) + answer + [processor.tokenizer.eos_token_id]
    # no boxes: the official evaluation prompt "<image>\n\n{question}"
    assert processor.official_user_text("Describe <image>the image.", 0) == "<image>\n\nDescribe the image."


# ------------------------------------------------------------------------------------------------
# a Llama (Vicuna-style) official folder
# ------------------------------------------------------------------------------------------------
def official_tokenize(prompt: str, tokenizer) -> list[int]:
    """The official code's tokenisation (RexSeek ``tokenizer_image_object_token``), written out for reference:
    bos, then each piece between ``<image>`` / ``<objfeat>`` on its own; -200 / -300 for the placeholders."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for chunk in [c for c in re.split(r"(<image>|<objfeat>)", prompt) if c]:
        if chunk == "<image>":
            ids.append(OFFICIAL_IMAGE_INDEX)
        elif chunk == "<objfeat>":
            ids.append(OFFICIAL_OBJECT_INDEX)
        else:
            ids.extend(tokenizer.encode(chunk, add_special_tokens=False))
    return ids


def write_official_folder(root: Path, fixture_dir: Path, state: dict, flat: dict, tokenizer=None) -> Path:
    """``root/checkpoint`` (config, weights, tokenizer) beside ``root/clip_vision_tower``, as in the fixture."""
    ckpt = root / "checkpoint"
    ckpt.mkdir(parents=True)
    if not (root / "clip_vision_tower").exists():
        shutil.copytree(fixture_dir / "clip_vision_tower", root / "clip_vision_tower")
    save_file({k: v.contiguous() for k, v in state.items()}, ckpt / "model.safetensors", metadata={"format": "pt"})
    (ckpt / "config.json").write_text(json.dumps(flat, indent=2))
    if tokenizer is None:
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            shutil.copy(fixture_dir / "checkpoint" / f, ckpt / f)
    else:
        tokenizer.save_pretrained(ckpt)
    return ckpt


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory, fixture_dir):
    """A ``rexseek_llama`` folder: the fixture's towers and projectors (the official code's weights) with a
    random tiny Llama and a tokenizer with a bos token; returns (checkpoint folder, the plain Llama)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(fixture_dir / "checkpoint")
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(11)
    llm = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in llm.parameters():  # well away from the init's near-constant norms
            p.add_(torch.randn_like(p) * 0.05)
    fixture_state = load_file(fixture_dir / "checkpoint" / "model.safetensors")
    state = {k: v for k, v in fixture_state.items() if not k.startswith(("model.", "lm_head."))}
    state.update(llm.state_dict())
    fixture_flat = json.loads((fixture_dir / "checkpoint" / "config.json").read_text())
    flat = {k: v for k, v in cfg.to_dict().items() if k not in ("transformers_version",)}
    flat.update({k: v for k, v in fixture_flat.items() if k.startswith("mm_") or k in ("object_hidden_size", "use_mm_proj")})
    flat.update(model_type="rexseek_llama", architectures=["RexSeekLlamaForCausalLM"])
    ckpt = write_official_folder(tmp_path_factory.mktemp("llama"), fixture_dir, state, flat, tokenizer)
    return ckpt, llm


@torch.no_grad()
def test_llama_family_folder_loads_and_matches_an_independent_reference(llama_folder, official_model, reference,
                                                                        shared_dir):
    ckpt, llm = llama_folder
    model = ChatRexForConditionalGeneration.from_pretrained(ckpt).eval()
    assert model.config.text_config.model_type == "llama"
    processor = ChatRexProcessor.from_pretrained(ckpt)
    assert processor.prompt_template == OFFICIAL_PROMPT_TEMPLATES["llama"] == "USER: {input} ASSISTANT:"
    batch = processor([shared_dir / reference["image"]], [reference["question"]], [reference["boxes"]])

    # reference ids: the official prompt in Vicuna's format, tokenised as the official code does
    objs = "".join(f"<obj{k}><objfeat>" for k in range(len(reference["boxes"])))
    prompt = "USER: " + f"<image>\n{objs}\n{reference['question']}" + " ASSISTANT:"
    official_ids = official_tokenize(prompt, processor.tokenizer)
    assert official_ids[0] == processor.tokenizer.bos_token_id
    cfg = model.config
    assert batch["input_ids"][0].tolist() == mapped_ids(official_ids, cfg.image_token_id, cfg.objfeat_token_id,
                                                        cfg.num_image_tokens)

    # reference logits: the plain Llama on the official sequence, the image and object embeddings coming from
    # the vision side that reproduced the official Qwen2 model's logits (same weights)
    image_embeds, levels = official_model.get_image_features(reference["pixel_values"], reference["pixel_values_aux"])
    objects = official_model.get_object_features(levels, [reference["gt_boxes"][0] / 768])
    pieces, k = [], 0
    for t in official_ids:
        if t == OFFICIAL_IMAGE_INDEX:
            pieces.append(image_embeds[0])
        elif t == OFFICIAL_OBJECT_INDEX:
            pieces.append(objects[k:k + 1])
            k += 1
        else:
            pieces.append(llm.get_input_embeddings()(torch.tensor([t])))
    sequence = torch.cat(pieces)[None]
    want = llm(inputs_embeds=sequence).logits
    got = model(**batch).logits
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4
    ours = model.generate(**batch, max_new_tokens=8, do_sample=False)[0, batch["input_ids"].shape[1]:]
    theirs = llm.generate(inputs_embeds=sequence, attention_mask=torch.ones(sequence.shape[:2], dtype=torch.long),
                          max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0]
    assert ours.tolist() == theirs[-8:].tolist()


# ------------------------------------------------------------------------------------------------
# wrong, truncated and unconvertible checkpoints
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fixture_state(fixture_dir):
    return load_file(fixture_dir / "checkpoint" / "model.safetensors")


@pytest.fixture(scope="module")
def fixture_flat(fixture_dir):
    return json.loads((fixture_dir / "checkpoint" / "config.json").read_text())


def test_truncated_checkpoint_names_the_missing_keys(tmp_path, fixture_dir, fixture_state, fixture_flat):
    gone = ("lm_head.weight", "model.layers.1.mlp.up_proj.weight", "vision_tower.vision_tower.vision_model.post_layernorm.bias",
            "vision_tower_aux.vision_stages.2.blocks.0.ramma", "vision_tower_aux.vision_stages.3.downsample.1.weight")
    state = {k: v for k, v in fixture_state.items() if k not in gone}
    ckpt = write_official_folder(tmp_path, fixture_dir, state, fixture_flat)
    with pytest.raises(OfficialCheckpointError) as err:
        ChatRexForConditionalGeneration.from_pretrained(ckpt)
    message = str(err.value)
    assert f"missing {len(gone)}: " in message and all(key in message for key in gone)
    # a whole stage gone: named too
    state = {k: v for k, v in fixture_state.items() if not k.startswith("vision_tower_aux.vision_stages.3.")}
    ckpt = write_official_folder(tmp_path / "stage", fixture_dir, state, fixture_flat)
    with pytest.raises(OfficialCheckpointError, match=r"vision_tower_aux\.vision_stages\.3\.blocks\.\* are missing"):
        ChatRexForConditionalGeneration.from_pretrained(ckpt)


def test_wrong_checkpoint_names_unexpected_and_misshaped_keys(tmp_path, fixture_dir, fixture_state, fixture_flat):
    state = dict(fixture_state)
    state["vision_tower_aux.vision_stages.0.blocks.0.gamma"] = state.pop("vision_tower_aux.vision_stages.0.blocks.0.ramma")
    state["mm_projector.2.weight"] = torch.zeros(64, 32)
    ckpt = write_official_folder(tmp_path, fixture_dir, state, fixture_flat)
    with pytest.raises(OfficialCheckpointError) as err:
        ChatRexForConditionalGeneration.from_pretrained(ckpt)
    message = str(err.value)
    assert "unexpected 1: vision_tower_aux.vision_stages.0.blocks.0.gamma" in message
    assert "missing 1: vision_tower_aux.vision_stages.0.blocks.0.ramma" in message
    assert "mm_projector.2.weight checkpoint (64, 32) vs model (64, 64)" in message


@torch.no_grad()
def test_llava_nesting_of_towers_and_projectors_loads_too(tmp_path, fixture_dir, fixture_state, fixture_flat,
                                                          reference):
    """LLaVA keeps the towers and projectors inside the LLM body (``model.vision_tower.*``); RexSeek at the top."""
    nested = tuple(f"{p}." for p in ("vision_tower", "vision_tower_aux", "mm_projector", "mm_object_projector"))
    state = {("model." + k if k.startswith(nested) else k): v for k, v in fixture_state.items()}
    ckpt = write_official_folder(tmp_path, fixture_dir, state, fixture_flat)
    model = ChatRexForConditionalGeneration.from_pretrained(ckpt).eval()
    assert (model(**reference_inputs(model, reference)).logits - reference["logits"]).abs().max().item() <= 1e-4
    state["mm_projector.0.bias"] = fixture_state["mm_projector.0.bias"].clone()  # both forms of one tensor
    ckpt = write_official_folder(tmp_path / "twice", fixture_dir, state, fixture_flat)
    with pytest.raises(OfficialCheckpointError, match="stored twice 1: mm_projector.0.bias and model.mm_projector.0.bias"):
        ChatRexForConditionalGeneration.from_pretrained(ckpt)


def test_cut_off_weight_file_names_the_file(tmp_path, fixture_dir, fixture_state, fixture_flat):
    ckpt = write_official_folder(tmp_path, fixture_dir, fixture_state, fixture_flat)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(OfficialCheckpointError, match="model.safetensors"):
        ChatRexForConditionalGeneration.from_pretrained(ckpt)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mystery", "architectures": ["MysteryForCausalLM"]}, "cannot tell the language model"),
    ({"mm_hidden_size": 2560}, "mm_hidden_size=2560"),
    ({"object_hidden_size": 2880}, "object_hidden_size=2880"),
    ({"mm_vision_select_feature": "cls_patch"}, "mm_vision_select_feature"),
    ({"mm_vision_tower": "../no_such_tower"}, "cannot find the CLIP tower"),
])
def test_unconvertible_config_fails_loudly(tmp_path, fixture_dir, fixture_state, fixture_flat, change, message):
    ckpt = write_official_folder(tmp_path, fixture_dir, fixture_state, {**fixture_flat, **change})
    with pytest.raises(OfficialCheckpointError, match=message):
        ChatRexForConditionalGeneration.from_pretrained(ckpt)
    with pytest.raises(OfficialCheckpointError, match=message):
        ChatRexProcessor.from_pretrained(ckpt)


def test_a_flat_config_never_becomes_the_default_model(fixture_flat):
    with pytest.raises(OfficialCheckpointError, match="official flat config"):
        ChatRexConfig(**{k: v for k, v in fixture_flat.items() if k != "model_type"})
    # without its folder the relative CLIP tower cannot be found: an error, not a default
    with pytest.raises(OfficialCheckpointError, match="cannot find the CLIP tower"):
        ChatRexConfig.from_dict(fixture_flat)
    # the 7B shape converts from the config alone (known CLIP tower, the official ConvNeXt-L)
    flat = {**fixture_flat, "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 2560,
            "object_hidden_size": 2880, "model_type": "rexseek_llama", "vocab_size": 32104}
    config = ChatRexConfig.from_dict(flat)
    assert config.aux_vision_config["dims"] == [192, 384, 768, 1536] and config.vision_config.hidden_size == 1024
    assert (config.image_token_id, config.objfeat_token_id) == (32104, 32105)
    with pytest.raises(OfficialCheckpointError, match="object_hidden_size=160"):
        ChatRexConfig.from_dict({**flat, "object_hidden_size": 160})


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------
def test_convert_command_round_trip_is_exact(tmp_path, fixture_dir, reference, shared_dir):
    from typer.testing import CliRunner

    from chatrex.interfaces.cli import build_app

    shutil.copytree(fixture_dir / "clip_vision_tower", tmp_path / "clip_vision_tower")  # the tower beside, as before
    runner = CliRunner()
    result = runner.invoke(build_app(), ["convert", str(fixture_dir / "checkpoint"), str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    ours = tmp_path / "ours"
    assert json.loads((ours / "config.json").read_text())["model_type"] == "chatrex"
    assert json.loads((ours / "processor_config.json").read_text())["input_mode"] == "official"
    result = runner.invoke(build_app(), ["convert", str(ours), str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    back = tmp_path / "back"
    original = load_file(fixture_dir / "checkpoint" / "model.safetensors")
    again = load_file(back / "model.safetensors")
    assert list(sorted(original)) == list(sorted(again))
    for key, value in original.items():
        assert again[key].dtype == value.dtype and torch.equal(again[key], value), key
    assert json.loads((back / "config.json").read_text()) == json.loads((fixture_dir / "checkpoint" / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (back / name).read_bytes() == (fixture_dir / "checkpoint" / name).read_bytes(), name
    # our layout loads as usual (no official detection) and still answers as the official model
    model = ChatRexForConditionalGeneration.from_pretrained(ours).eval()
    processor = ChatRexProcessor.from_pretrained(ours)
    with torch.no_grad():
        batch = processor([shared_dir / reference["image"]], [reference["question"]], [reference["boxes"]])
        assert (model(**batch).logits - reference["logits"]).abs().max().item() <= 1e-4
    # a non-empty destination is refused, and nothing is overwritten
    result = runner.invoke(build_app(), ["convert", str(fixture_dir / "checkpoint"), str(back)])
    assert result.exit_code == 1 and "not an empty folder" in result.output
    assert json.loads((back / "config.json").read_text())["model_type"] == "rexseek_qwen"


@pytest.mark.parametrize("text_model_type", ["llama", "qwen2"])
def test_paper_layout_model_round_trips_through_the_official_layout(tmp_path, text_model_type):
    from chatrex.mllm.convert import convert_chatrex_to_official, convert_official_to_chatrex
    from tests.mllm.conftest import build_tiny_tokenizer, make_model, make_processor, random_image

    tokenizer = build_tiny_tokenizer()
    model, processor = make_model(tokenizer, text_model_type=text_model_type, seed=3), make_processor(tokenizer)
    model.save_pretrained(tmp_path / "ours")
    processor.save_pretrained(tmp_path / "ours")
    official = convert_chatrex_to_official(tmp_path / "ours", tmp_path / "official")
    flat = json.loads((official / "config.json").read_text())
    assert flat["model_type"] == {"llama": "rexseek_llama", "qwen2": "rexseek_qwen"}[text_model_type]
    assert flat["mm_vision_tower"] == "clip_vision_tower" and (official / "clip_vision_tower" / "config.json").is_file()
    keys = set(load_file(official / "model.safetensors"))
    assert "vision_tower_aux.vision_stem.0.weight" in keys and "vision_tower_aux.vision_stages.0.blocks.0.ramma" in keys
    assert "vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    back = convert_official_to_chatrex(official, tmp_path / "back")
    a, b = load_file(tmp_path / "ours" / "model.safetensors"), load_file(back / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((back / "config.json").read_text()) == json.loads((tmp_path / "ours" / "config.json").read_text())
    # the official folder itself loads with our loader and answers as the original model
    loaded = ChatRexForConditionalGeneration.from_pretrained(official).eval()
    loaded_processor = ChatRexProcessor.from_pretrained(official)
    args = ([random_image(0, 40, 30)], ["What is <obj1>?"], [[[2, 3, 30, 25], [10, 5, 38, 28]]])
    batch, batch2 = processor(*args), loaded_processor(*args)
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch2).logits, model(**batch).logits, rtol=0, atol=1e-5)


def test_models_outside_the_paper_layout_are_refused(tmp_path):
    from chatrex.mllm.convert import convert_chatrex_to_official
    from chatrex.mllm.presets import with_overrides
    from tests.mllm.conftest import build_tiny_tokenizer, make_model

    tokenizer = build_tiny_tokenizer()
    model = make_model(tokenizer)
    trunk = ChatRexForConditionalGeneration(with_overrides(model.config, {"object_trunk_dim": 12}))
    trunk.save_pretrained(tmp_path / "trunk")
    with pytest.raises(OfficialCheckpointError, match="object_trunk_dim=12"):
        convert_chatrex_to_official(tmp_path / "trunk", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    pooled = ChatRexForConditionalGeneration(with_overrides(model.config, {"image_token_pool": 2}))
    pooled.save_pretrained(tmp_path / "pooled")
    with pytest.raises(OfficialCheckpointError, match="image_token_pool=2"):
        convert_chatrex_to_official(tmp_path / "pooled", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------
def test_pipeline_answers_with_the_official_folder(fixture_dir, reference, shared_dir):
    from chatrex.interfaces.pipeline import ChatRexPipeline

    pipe = ChatRexPipeline.from_pretrained(fixture_dir / "checkpoint")  # no UPN: boxes are given
    assert pipe.upn is None and pipe.dtype == torch.float32 and pipe.processor.input_mode == "official"
    result = pipe(shared_dir / reference["image"], reference["question"], boxes=reference["boxes"], max_new_tokens=10)[0]
    assert result.raw_text == pipe.processor.decode(reference["greedy"][0])
    with pytest.raises(ValueError, match="no UPN"):
        pipe(shared_dir / reference["image"], reference["question"])
    # a box reaching past the image stays as given, as the official input has it
    wide = pipe(shared_dir / reference["image"], "What is <obj0>?", boxes=[[-20, 10, 700, 300]], max_new_tokens=1)[0]
    assert wide.boxes == [[-20.0, 10.0, 700.0, 300.0]]


def test_predict_command_runs_an_official_folder_with_a_separate_upn(fixture_dir, tiny_pipeline_dir, shared_dir,
                                                                     tmp_path):
    from typer.testing import CliRunner

    from chatrex.interfaces.cli import build_app

    image = shared_dir / "images" / "test_chatrex_install.jpg"
    args = ["predict", str(image), "Please detect person in this image. Answer the question with object indexes.",
            "--model", str(fixture_dir / "checkpoint")]
    runner = CliRunner()
    result = runner.invoke(build_app(), args)
    assert result.exit_code == 1 and "--upn" in result.output
    out = tmp_path / "answer.json"
    result = runner.invoke(build_app(), args + ["--upn", str(tiny_pipeline_dir / "upn"), "--min-score", "0",
                                                "--max-boxes", "5", "--max-new-tokens", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert len(record["boxes"]) == 5 and record["model"] == str(fixture_dir / "checkpoint")
    assert isinstance(record["raw_text"], str)
