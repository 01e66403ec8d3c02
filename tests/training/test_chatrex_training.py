import json
import random
import shutil

import pytest
import torch
from PIL import Image, ImageDraw

from chatrex.data.chatrex_dataset import ChatRexDataConfig, ChatRexDataset, build_box_list, render_task
from chatrex.grounding import parse_grounded
from chatrex.training.chatrex_task import ChatRexTask, ChatRexTaskConfig
from chatrex.training.config import TrainConfig
from chatrex.training.trainer import Trainer

TINY_VISION = {
    "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          patch_size=14, image_size=56, projection_dim=32),
    "aux_vision_config": dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64], image_size=128),
}


def _record(i):
    box_a, box_b, wheel = [4, 4, 40, 30], [50, 10, 90, 50], [8, 20, 18, 30]
    text = "A red car is next to a blue house."
    return {
        "id": f"r{i}", "image": f"images/{i}.png", "width": 96, "height": 64,
        "regions": [
            {"id": 0, "box": box_a, "category": "car", "level": "instance", "phrase": "a red car",
             "description": "A red car on the left.", "referring": "the red car"},
            {"id": 1, "box": box_b, "category": "house", "level": "instance", "phrase": "a blue house",
             "description": "A blue house on the right.", "referring": "the blue house"},
            {"id": 2, "box": wheel, "category": "wheel", "level": "part", "parent": 0, "phrase": "the wheel of the red car"},
        ],
        "captions": [{"kind": "brief", "text": text, "groundings": [
            {"span": [2, 9], "phrase": "red car", "regions": [0]}, {"span": [23, 33], "phrase": "blue house", "regions": [1]}]}],
        "conversations": [{"question": "What is next to the house?", "answer": "A red car.",
                           "groundings": [{"span": [2, 9], "phrase": "red car", "regions": [0]}]}],
    }


@pytest.fixture()
def data_file(tmp_path):
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(4):
        im = Image.new("RGB", (96, 64), (200, 200, 200))
        d = ImageDraw.Draw(im)
        d.rectangle([4, 4, 40, 30], fill=(220, 20, 20))
        d.rectangle([50, 10, 90, 50], fill=(20, 20, 220))
        im.save(tmp_path / "images" / f"{i}.png")
        lines.append(json.dumps(_record(i)))
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def _save_tiny_base(out, chatrex_tokens: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.mllm.conftest import build_tiny_tokenizer

    tok = build_tiny_tokenizer(chatrex_tokens)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                       tie_word_embeddings=False))
    llm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def base_dir(tmp_path):
    return _save_tiny_base(tmp_path / "base")


def test_box_list_mixes_proposals_and_keeps_gt_unique():
    rec = _record(0)
    rng = random.Random(0)
    cfg = ChatRexDataConfig(synth_proposals=(20, 20))
    boxes, index_of = build_box_list(rec, rng, cfg)
    assert set(index_of) == {0, 1, 2}
    assert len(boxes) > 3 and len(boxes) <= 100
    from torchvision.ops import box_iou

    gt = torch.tensor([r["box"] for r in rec["regions"]], dtype=torch.float32)
    props = torch.tensor([b for i, b in enumerate(boxes) if i not in index_of.values()])
    assert (box_iou(props, gt) <= 0.9).all()  # near-duplicates of ground truth are dropped
    # shuffled: over seeds the ground-truth region 0 lands at different indices
    spots = {build_box_list(rec, random.Random(s), cfg)[1][0] for s in range(10)}
    assert len(spots) > 3
    rec["proposals"] = [{"box": [0, 0, 10, 10], "score": 0.9}, {"box": [4, 4, 40, 30.5], "score": 0.8}]
    boxes, index_of = build_box_list(rec, random.Random(1), cfg)
    assert len(boxes) == 4  # the near-duplicate proposal is dropped


def test_every_task_renders_an_answer_that_parses_to_the_right_boxes():
    rec = _record(0)
    boxes, index_of = build_box_list(rec, random.Random(3), ChatRexDataConfig())
    vocab = ["car", "house", "wheel", "tree", "cat"]
    for task in ["detection", "referring", "region_category", "region_phrase", "region_sentence", "region_brief",
                 "region_classification", "counting", "caption_brief", "conversation"]:
        q, a = render_task(task, rec, index_of, vocab, random.Random(5), absent_prob=0.0)
        parsed = parse_grounded(a, num_boxes=len(boxes))
        assert not parsed.dropped, (task, a, parsed.dropped)
        assert parsed.groundings, task
        if task == "referring":
            assert parsed.groundings[0].indices == [index_of[0]] or parsed.groundings[0].indices == [index_of[1]]
    assert render_task("caption_detailed", rec, index_of, vocab, random.Random(5)) is None
    q, a = render_task("counting", rec, index_of, ["tree"], random.Random(0), absent_prob=1.0)
    assert "no" in a and parse_grounded(a).groundings[0].indices == []


def test_max_targets_bounds_and_reaches_the_prompt_size():
    rec = _record(0)
    boxes, index_of = build_box_list(rec, random.Random(3), ChatRexDataConfig())
    vocab = ["car", "house", "wheel", "tree"]
    sizes = set()
    for seed in range(60):
        _, a = render_task("region_category", rec, index_of, vocab, random.Random(seed), max_targets=3)
        sizes.add(len(parse_grounded(a, num_boxes=len(boxes)).groundings))
        _, a = render_task("detection", rec, index_of, vocab, random.Random(seed), absent_prob=0.0, max_targets=1)
        assert len(parse_grounded(a).groundings) == 1
    assert sizes == {1, 2, 3}  # the record has 3 regions: every size up to the cap occurs


def test_region_tasks_sometimes_get_only_user_boxes(data_file):
    from chatrex.data.seeded_index import SeededIndex

    cfg = ChatRexDataConfig(files=[str(data_file)], task_weights={"region_category": 1.0}, region_boxes_only_prob=1.0)
    ds = ChatRexDataset(cfg)
    for i in range(20):
        item = ds[SeededIndex(i % 4, i)]
        assert 1 <= len(item["boxes"]) <= 3
        for g in parse_grounded(item["answer"], num_boxes=len(item["boxes"])).groundings:
            (idx,) = g.indices
            region = next(r for r in _record(0)["regions"] if r["category"] == g.phrase)
            assert item["boxes"][idx] == [float(v) for v in region["box"]]  # the index points at that region
    never = ChatRexDataset(ChatRexDataConfig(files=[str(data_file)], task_weights={"region_category": 1.0},
                                             region_boxes_only_prob=0.0))
    assert all(len(never[SeededIndex(i % 4, i)]["boxes"]) > 3 for i in range(10))
    with pytest.raises(ValueError, match="region_boxes_only_prob"):
        ChatRexDataset(ChatRexDataConfig(files=[str(data_file)], region_boxes_only_prob=1.5))


def test_dataset_items(data_file):
    ds = ChatRexDataset(ChatRexDataConfig(files=[str(data_file)], stage="stage2"))
    tasks = {ds[(i % 4)]["task"] for i in range(4)}
    from chatrex.data.seeded_index import SeededIndex

    tasks = {ds[SeededIndex(i % 4, i)]["task"] for i in range(40)}
    assert len(tasks) >= 5
    with pytest.raises(ValueError, match="unknown tasks"):
        ChatRexDataset(ChatRexDataConfig(files=[str(data_file)], task_weights={"dance": 1.0}))


def _logits(model, processor, image_path):
    batch = processor.process(image=str(image_path), question="Please detect car in this image.",
                              bbox=[[4, 4, 40, 30], [50, 10, 90, 50]])
    with torch.no_grad():
        return model(**batch).logits


def test_two_stages_train_and_export_as_delta(tmp_path, data_file, base_dir):
    from chatrex.mllm.delta import load_delta

    common = dict(base=str(base_dir), vision=TINY_VISION, data={"files": [str(data_file)]})
    s1 = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage1", **common}))
    cfg = TrainConfig(output_dir=str(tmp_path / "s1"), max_steps=3, batch_size=2, lr=1e-3, warmup_steps=1,
                      save_every=3, log_every=1, num_workers=0)
    m1 = Trainer(s1, cfg, device="cpu", progress=False).fit()
    trained = {n for n, p in m1.named_parameters() if p.requires_grad}
    assert any(n.startswith("vision_tower.") for n in trained) and not any(n.startswith("model.layers.") for n in trained)
    base_rows = s1.base_vocab_size
    # base embedding rows never change; the tokens' rows may
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.testing.assert_close(m1.get_input_embeddings().weight[:base_rows], base.get_input_embeddings().weight[:base_rows])
    loaded, tok = load_delta(tmp_path / "s1" / "final")
    image = data_file.parent / "images" / "0.png"
    torch.testing.assert_close(_logits(loaded, s1.processor, image), _logits(m1.eval(), s1.processor, image),
                               rtol=2e-2, atol=2e-2)  # delta stored in bf16

    s2 = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage2", "init_from": str(tmp_path / "s1" / "final"),
                                                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, **common}))
    cfg2 = TrainConfig(output_dir=str(tmp_path / "s2"), max_steps=3, batch_size=2, lr=1e-2, warmup_steps=1,
                       save_every=3, log_every=1, num_workers=0)
    m2 = Trainer(s2, cfg2, device="cpu", progress=False).fit()
    trainable2 = {n for n, p in m2.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable2)
    assert m2.get_input_embeddings().weight.requires_grad  # the added rows keep training in stage 2
    assert not any(n.startswith("model.layers.") and "lora_" not in n for n in trainable2)
    torch.testing.assert_close(m2.get_input_embeddings().weight[:base_rows], base.get_input_embeddings().weight[:base_rows])
    final = tmp_path / "s2" / "final"
    assert all(f.stat().st_size <= 16 * 1024 * 1024 for f in final.glob("*.safetensors"))
    loaded2, _ = load_delta(final)
    assert not any("lora_" in n for n, _ in loaded2.named_parameters())  # merged
    torch.testing.assert_close(_logits(loaded2, s2.processor, image), _logits(m2.eval(), s2.processor, image),
                               rtol=3e-2, atol=3e-2)
    # stage 1 from a LoRA delta would merge its LoRA and drop it from the next delta: refused before loading
    again = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage1", "init_from": str(final), **common}))
    with pytest.raises(ValueError, match="holds LoRA factors"):
        again.build_model()
    # stage 2 with LoRA of another rank cannot continue the factors
    other = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage2", "init_from": str(final),
                                                     "lora": {"r": 8, "alpha": 8}, **common}))
    with pytest.raises(ValueError, match="r=4, alpha=8.0"):
        other.build_model()
    fewer = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage2", "init_from": str(final),
                                                     "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj"]},
                                                     **common}))
    with pytest.raises(ValueError, match="does not adapt"):
        fewer.build_model()
    # stage 2 with the same LoRA continues them: unmerged adapters, the same model, the same factors exported
    cont = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage2", "init_from": str(final),
                                                    "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, **common}))
    m3 = cont.build_model()
    assert any("lora_" in n and p.requires_grad for n, p in m3.named_parameters())
    torch.testing.assert_close(_logits(m3.eval(), cont.processor, image), _logits(loaded2, s2.processor, image),
                               rtol=1e-4, atol=1e-4)
    cont.export(m3, tmp_path / "s3")
    from chatrex.mllm.delta import read_lora_factors

    before, meta = read_lora_factors(final)
    after, _ = read_lora_factors(tmp_path / "s3")
    assert meta == {"r": 4, "alpha": 8} and before and set(after) == set(before)
    assert any(float(b.abs().max()) > 0 for _, b in before.values())  # trained, not peft's zero init
    for name, (a, b) in before.items():
        torch.testing.assert_close(after[name][0], a)
        torch.testing.assert_close(after[name][1], b)
    full = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage2", "init_from": str(final),
                                                    "lora": {"enabled": False}, **common}))
    assert full.build_model().model.layers[0].self_attn.q_proj.weight.requires_grad  # a full export keeps it all
    rows = [json.loads(x) for x in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["answer_tokens"] > 0 for r in rows)
    # every logged step names the loss of at least one task of the stage's mix
    stage2_tasks = set(s2.build_dataset().weights)
    for r in rows:
        per_task = {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("loss_task/")}
        assert per_task and set(per_task) <= stage2_tasks
        assert all(v > 0 for v in per_task.values())


def test_untied_head_keeps_its_base_rows_and_the_delta_reloads_the_trained_model(tmp_path, data_file):
    """With an untied output embedding only the added tokens' rows train: AdamW's weight decay must not
    shrink the base rows (the delta does not store them), so the model loaded from the delta is the
    trained one."""
    from transformers import AutoModelForCausalLM

    from chatrex.mllm.delta import load_delta

    base_dir = _save_tiny_base(tmp_path / "plain_base", chatrex_tokens=False)  # ChatRex adds its tokens
    task = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage1", "base": str(base_dir), "vision": TINY_VISION,
                                                    "data": {"files": [str(data_file)]}}))
    cfg = TrainConfig(output_dir=str(tmp_path / "s1"), max_steps=2, batch_size=2, lr=1e-2, weight_decay=0.5,
                      warmup_steps=1, save_every=2, log_every=1, num_workers=0)
    trained = Trainer(task, cfg, device="cpu", progress=False).fit().eval()
    head, n0 = trained.get_output_embeddings().weight, task.base_vocab_size
    assert head is not trained.get_input_embeddings().weight  # untied
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    assert torch.equal(head[:n0], base.get_output_embeddings().weight[:n0])
    loaded, _ = load_delta(tmp_path / "s1" / "final")
    loaded_head = loaded.get_output_embeddings().weight
    assert torch.equal(loaded_head[:n0], head[:n0])
    assert torch.equal(loaded_head[n0:], head[n0:].to(torch.bfloat16).float())  # the delta stores bf16
    assert head.shape[0] > n0 and not torch.equal(loaded_head[n0:], torch.zeros_like(loaded_head[n0:]))
    torch.testing.assert_close(_logits(loaded, task.processor, data_file.parent / "images" / "0.png"),
                               _logits(trained, task.processor, data_file.parent / "images" / "0.png"),
                               rtol=2e-2, atol=2e-2)  # the delta stores bf16


def test_a_delta_save_that_fails_midway_keeps_the_previous_delta(tmp_path, data_file, base_dir, monkeypatch):
    import safetensors.torch

    from chatrex.mllm.delta import load_delta, save_delta

    task = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage1", "base": str(base_dir), "vision": TINY_VISION,
                                                    "data": {"files": [str(data_file)]}}))
    model = task.build_model().eval()
    out = tmp_path / "delta"
    task.export(model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with torch.no_grad():
        model.mm_projector[0].weight.add_(1.0)

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a shard")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_delta(model, out, base=str(base_dir), base_vocab_size=task.base_vocab_size)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    load_delta(out)
    save_delta(model, out, base=str(base_dir), base_vocab_size=task.base_vocab_size)  # replaces the tensors only
    assert "tokenizer.json" in {p.name for p in out.iterdir()}
    loaded, _ = load_delta(out)
    assert torch.equal(loaded.mm_projector[0].weight, model.mm_projector[0].weight.to(torch.bfloat16).float())


def test_assembled_delta_model_runs_in_the_pipeline(tmp_path, data_file, base_dir):
    """stage 1 export (a delta) + a UPN, put together by `chatrex train assemble`, load in the pipeline. The
    model pools its image tokens (image_token_pool 2): the saved processor must write as many as it reads."""
    from typer.testing import CliRunner

    from chatrex.interfaces.cli import build_app
    from chatrex.interfaces.pipeline import ChatRexPipeline
    from chatrex.upn.checkpoint import save_pretrained
    from chatrex.upn.config import resolve_config
    from chatrex.upn.model import build_upn

    task = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage1", "base": str(base_dir),
                                                    "vision": {**TINY_VISION, "image_token_pool": 2},
                                                    "data": {"files": [str(data_file)]}}))
    cfg = TrainConfig(output_dir=str(tmp_path / "s1"), max_steps=1, batch_size=2, warmup_steps=1, num_workers=0)
    Trainer(task, cfg, device="cpu", progress=False).fit()
    upn_cfg = resolve_config("upn_tiny")
    save_pretrained(build_upn(upn_cfg), upn_cfg, tmp_path / "upn")
    (tmp_path / "upn" / "preprocessor_config.json").write_text(json.dumps({"resize": 64, "max_size": 128}))
    result = CliRunner().invoke(build_app(), ["train", "assemble", str(tmp_path / "upn"), str(tmp_path / "s1" / "final"),
                                              str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "model" / "pipeline_config.json").read_text()) == {"upn_resize": 64, "upn_max_size": 128}
    pipe = ChatRexPipeline.from_pretrained(tmp_path / "model")
    assert pipe.model.config.image_token_pool == 2 and pipe.processor.num_image_tokens == 4  # (56/14/2)²
    out = pipe([str(data_file.parent / "images" / "0.png")], ["Please detect car in this image."],
               boxes=[[[4, 4, 40, 30], [50, 10, 90, 50]]], max_new_tokens=4)
    assert len(out) == 1 and out[0].boxes == [[4, 4, 40, 30], [50, 10, 90, 50]]
    proposals = pipe([str(data_file.parent / "images" / "0.png")], ["Please detect car in this image."], min_score=0.0,
                     max_new_tokens=4)
    assert 1 <= len(proposals[0].boxes) <= 20  # UPN proposals of the tiny model (20 queries)
    result = CliRunner().invoke(build_app(), ["train", "assemble", str(tmp_path / "upn"), str(tmp_path / "s1" / "final"),
                                              str(tmp_path / "model"), "--min-score", "1.0", "--nms", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "model" / "pipeline_config.json").read_text()) == {
        "upn_resize": 64, "upn_max_size": 128, "min_score": 1.0, "nms": 0.5}
    pipe = ChatRexPipeline.from_pretrained(tmp_path / "model")
    assert pipe([str(data_file.parent / "images" / "0.png")], ["Please detect car in this image."],
                max_new_tokens=4)[0].boxes == []  # nothing of a random UPN scores 1

    (tmp_path / "upn" / "preprocessor_config.json").write_text(json.dumps({"max_size": 128}))  # no resize
    result = CliRunner().invoke(build_app(), ["train", "assemble", str(tmp_path / "upn"), str(tmp_path / "s1" / "final"),
                                              str(tmp_path / "other")])
    assert result.exit_code == 2 and "preprocessor_config.json" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "other").exists()


def test_per_task_losses_average_each_task_over_its_answer_tokens():
    from chatrex.training.chatrex_task import per_task_losses

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    labels = torch.full((3, 5), -100)
    labels[0, 2:4] = torch.tensor([1, 2])
    labels[1, 1:5] = torch.tensor([3, 4, 5, 6])
    labels[2, 3] = 0
    got = {k: float(v) for k, v in per_task_losses(logits, labels, ["detection", "region_category", "detection"]).items()}
    # the same without counting on the device: the counts given
    given = per_task_losses(logits, labels, ["detection", "region_category", "detection"], [2, 4, 1])
    assert all(isinstance(v, torch.Tensor) for v in given.values())
    assert {k: float(v) for k, v in given.items()} == pytest.approx(got, rel=1e-6)

    def token_losses(i):
        ce = torch.nn.functional.cross_entropy(logits[i, :-1], labels[i, 1:], ignore_index=-100, reduction="none")
        return ce[labels[i, 1:] != -100]

    det = torch.cat([token_losses(0), token_losses(2)])
    assert set(got) == {"loss_task/detection", "loss_task/region_category"}
    assert got["loss_task/detection"] == pytest.approx(float(det.mean()), rel=1e-5)
    assert got["loss_task/region_category"] == pytest.approx(float(token_losses(1).mean()), rel=1e-5)
    rows, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)  # the model's logits_at_labels output
    at_labels = per_task_losses(logits[:, :-1][rows, cols], labels, ["detection", "region_category", "detection"])
    assert {k: float(v) for k, v in at_labels.items()} == pytest.approx(got, rel=1e-6)
    with pytest.raises(ValueError, match="labelled positions"):
        per_task_losses(logits[:, :-1][rows[1:], cols[1:]], labels, ["a", "b", "c"])
    assert per_task_losses(logits, torch.full((3, 5), -100), ["a", "b", "c"]) == {}
    with pytest.raises(ValueError, match="task names"):
        per_task_losses(logits, labels, ["a"])


def test_frozen_towers_and_distinct_object_rows(base_dir):
    """vision_lr_mult = 0 freezes both towers; object_row_noise gives every <objK> its own starting row."""
    from chatrex.mllm.tokens import MAX_OBJECTS, obj_token

    def build(**extra):
        task = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage1", "base": str(base_dir),
                                                        "vision": TINY_VISION, **extra}))
        model = task.build_model()
        tok = task.processor.tokenizer
        ids = [tok.convert_tokens_to_ids(obj_token(k)) for k in range(MAX_OBJECTS)]
        return task, model, ids

    task, model, ids = build()
    plain = model.get_input_embeddings().weight.detach()[ids].clone()
    plain_out = model.get_output_embeddings().weight.detach()[ids].clone()
    assert all(p.requires_grad for p in model.vision_tower_aux.parameters())

    with pytest.warns(UserWarning, match="random initialisation"):  # frozen, with nothing loaded into them
        task, model, ids = build(vision_lr_mult=0.0, object_row_noise=1.0)
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert not any(p.requires_grad for p in model.vision_tower_aux.parameters())
    assert all(p.requires_grad for p in model.mm_object_projector.parameters())
    weight = model.get_input_embeddings().weight.detach()
    noise = weight[ids] - plain
    base_std = weight[: task.base_vocab_size].std(0)
    torch.testing.assert_close(noise.std(0).mean(), base_std.mean(), rtol=0.25, atol=0.0)  # the base rows' spread
    assert noise.mean(0).abs().mean() < 0.3 * base_std.mean()
    # untied LLM: the output rows get their own noise
    out_noise = model.get_output_embeddings().weight.detach()[ids] - plain_out
    assert out_noise.std(0).mean() > 0.5 * model.get_output_embeddings().weight[: task.base_vocab_size].std(0).mean()
    # the same seed gives the same rows
    _, again, _ = build(object_row_noise=1.0)
    torch.testing.assert_close(again.get_input_embeddings().weight.detach()[ids], weight[ids])
    with pytest.raises(ValueError, match="non-negative"):
        ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage1", "vision_lr_mult": -1.0}))


def _train_stage2(out, data_file, base_dir, **train_options):
    """Three stage-2 LoRA steps on the tiny model: (task, model, logged losses, LoRA factors)."""
    task = ChatRexTask(ChatRexTaskConfig.from_dict(dict(
        stage="stage2", base=str(base_dir), vision=TINY_VISION, data={"files": [str(data_file)]},
        lora={"r": 4, "alpha": 8, "dropout": 0.0})))
    cfg = TrainConfig(output_dir=str(out), max_steps=3, batch_size=2, lr=1e-2, warmup_steps=1, save_every=3,
                      log_every=1, num_workers=0, **train_options)
    model = Trainer(task, cfg, device="cpu", progress=False).fit()
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert lora and any(float(p.abs().max()) > 0 for n, p in lora.items() if "lora_B" in n)  # trained
    return task, model, losses, lora


def _assert_same_training(run, reference, rel, rtol, atol):
    assert run[2] == pytest.approx(reference[2], rel=rel)
    for name, p in reference[3].items():
        torch.testing.assert_close(run[3][name], p, rtol=rtol, atol=atol, msg=name)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_decoder_layers_train_like_eager(tmp_path, data_file, base_dir):
    """train.compile compiles each decoder layer (regional compilation); the run logs the same losses and
    ends with the same weights as an eager one."""
    eager = _train_stage2(tmp_path / "eager", data_file, base_dir)
    compiled = _train_stage2(tmp_path / "compiled", data_file, base_dir, compile=True)
    for (task, model, _, _), is_compiled in ((eager, False), (compiled, True)):
        layers = task.repeated_blocks(model)
        assert len(layers) == 2 and all((layer._compiled_call_impl is not None) == is_compiled for layer in layers)
    _assert_same_training(compiled, eager, rel=1e-4, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="fsdp"):
        TrainConfig(compile=True, strategy="fsdp")


def test_compile_refuses_a_task_without_repeated_blocks():
    from chatrex.training.task import compile_repeated_blocks

    class NoBlocks:
        name = "plain"

    with pytest.raises(ValueError, match="names no repeated blocks"):
        compile_repeated_blocks(NoBlocks(), torch.nn.Linear(2, 2))


def test_gradient_checkpointing_trains_like_without(tmp_path, data_file, base_dir):
    """train.gradient_checkpointing recomputes the decoder layers in backward: same losses, same LoRA weights."""
    plain = _train_stage2(tmp_path / "plain", data_file, base_dir)
    checkpointed = _train_stage2(tmp_path / "checkpointed", data_file, base_dir, gradient_checkpointing=True)
    for (task, model, _, _), on in ((plain, False), (checkpointed, True)):
        assert all(layer.gradient_checkpointing == on for layer in task.repeated_blocks(model))
    _assert_same_training(checkpointed, plain, rel=1e-5, rtol=1e-4, atol=1e-6)
