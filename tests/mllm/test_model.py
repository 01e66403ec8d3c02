import numpy as np
import pytest
import torch

from chatrex.mllm import ChatRexForConditionalGeneration, apply_key_mapping, load_state_dict_report
from chatrex.mllm.modeling_chatrex import causal_lm_loss
from tests.mllm.conftest import make_model, random_image

QUESTIONS = ["What is the category name of <obj1>?", "Detect dog."]


def _batch(proc, boxes=None, **kw):
    boxes = boxes if boxes is not None else [[[2, 3, 30, 25], [10, 5, 38, 28], [0, 0, 40, 30]], []]
    return proc([random_image(0, 40, 30), random_image(1, 30, 50)], QUESTIONS, boxes, **kw)


def _merged(model, batch):
    ids = batch["input_ids"]
    return model.merge_multimodal_embeddings(ids, model.get_input_embeddings()(ids), batch["pixel_values"],
                                             batch["pixel_values_aux"], batch["boxes"])


@torch.no_grad()
def test_feature_shapes(tiny_model, tiny_processor):
    b = _batch(tiny_processor)
    image_embeds, levels = tiny_model.get_image_features(b["pixel_values"], b["pixel_values_aux"])
    assert image_embeds.shape == (2, 16, 64)
    assert [tuple(l.shape) for l in levels] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    assert tiny_model.get_object_features(levels, b["boxes"]).shape == (3, 64)
    out = tiny_model(**b)
    assert out.logits.shape == (*b["input_ids"].shape, tiny_model.config.text_config.vocab_size)


@torch.no_grad()
def test_kth_objfeat_receives_kth_box_and_image_tokens_in_order(tiny_model, tiny_processor):
    b = _batch(tiny_processor)
    merged = _merged(tiny_model, b)
    image_embeds, levels = tiny_model.get_image_features(b["pixel_values"], b["pixel_values_aux"])
    objects = tiny_model.get_object_features(levels, b["boxes"])
    ids = b["input_ids"]
    pos = (ids[0] == tiny_model.config.objfeat_token_id).nonzero().flatten()
    assert len(pos) == 3
    for k in range(3):
        torch.testing.assert_close(merged[0, pos[k]], objects[k])
    assert not (ids[1] == tiny_model.config.objfeat_token_id).any()
    for i in range(2):
        img_pos = (ids[i] == tiny_model.config.image_token_id).nonzero().flatten()
        torch.testing.assert_close(merged[i, img_pos], image_embeds[i])
    text = ~((ids == tiny_model.config.image_token_id) | (ids == tiny_model.config.objfeat_token_id))
    torch.testing.assert_close(merged[text], tiny_model.get_input_embeddings()(ids)[text])


@torch.no_grad()
def test_moving_one_box_changes_only_its_object_token(tiny_model, tiny_processor):
    a = _batch(tiny_processor)
    moved = [[[2, 3, 30, 25], [0, 10, 20, 30], [0, 0, 40, 30]], []]
    b = _batch(tiny_processor, moved)
    ea, eb = _merged(tiny_model, a), _merged(tiny_model, b)
    diff = (ea - eb).abs().amax(-1)
    pos = (a["input_ids"][0] == tiny_model.config.objfeat_token_id).nonzero().flatten()
    assert diff[0, pos[1]] > 1e-4
    changed = (diff > 0).nonzero().tolist()
    assert changed == [[0, int(pos[1])]]


def test_placeholder_count_mismatches_are_clear(tiny_model, tiny_processor):
    b = _batch(tiny_processor)
    with pytest.raises(ValueError, match="sequence 0 has 3 <objfeat> tokens but 2 boxes"):
        tiny_model(**{**b, "boxes": [b["boxes"][0][:2], b["boxes"][1]]})
    with pytest.raises(ValueError, match="boxes has 1 entries but the batch has 2"):
        tiny_model(**{**b, "boxes": b["boxes"][:1]})
    ids = b["input_ids"].clone()
    ids[0, ids[0] == tiny_model.config.image_token_id] = tiny_processor.pad_token_id
    with pytest.raises(ValueError, match="sequence 0 has 0 <image> tokens but the model needs exactly 16"):
        tiny_model(**{**b, "input_ids": ids})
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    with pytest.raises(ValueError, match="shape"):
        tiny_model(**{**b, "boxes": [torch.zeros(3, 5), b["boxes"][1]]})


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_batch_matches_items_one_by_one(tiny_model, tiny_processor, side):
    boxes = [[[2, 3, 30, 25], [10, 5, 38, 28], [0, 0, 40, 30]], []]
    images = [random_image(0, 40, 30), random_image(1, 30, 50)]
    questions = ["What is the category name of <obj1> in this image, please?", "Detect dog."]
    batch = tiny_processor(images, questions, boxes, padding_side=side)
    out = tiny_model(**batch).logits
    for i in range(2):
        single = tiny_processor([images[i]], [questions[i]], [boxes[i]])
        ref = tiny_model(**single).logits[0]
        valid = batch["attention_mask"][i].bool()
        torch.testing.assert_close(out[i][valid], ref, atol=1e-4, rtol=1e-4)


def test_loss_is_cross_entropy_over_answer_tokens(tiny_model, tiny_processor):
    b = _batch(tiny_processor, answers=["<ground>dog</ground><objects><obj1></objects>", "none"])
    out = tiny_model(**b)
    logits, labels = out.logits, b["labels"]
    manual = []
    for i in range(2):
        for t in range(labels.shape[1] - 1):
            if labels[i, t + 1] != -100:
                manual.append(torch.nn.functional.cross_entropy(logits[i, t][None], labels[i, t + 1][None]))
    torch.testing.assert_close(out.loss, torch.stack(manual).mean())
    unmasked = b["labels"].clone()
    placeholder = (b["input_ids"] == tiny_model.config.image_token_id) | (b["input_ids"] == tiny_model.config.objfeat_token_id)
    unmasked[placeholder] = b["input_ids"][placeholder]
    torch.testing.assert_close(tiny_model(**{**b, "labels": unmasked}).loss, out.loss)
    out.loss.backward()
    assert tiny_model.mm_object_projector[0].weight.grad is not None
    assert tiny_model.vision_tower_aux.trunk.stem[0].weight.grad is not None
    tiny_model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="labels"):
        causal_lm_loss(logits, labels[:, :-1])


@torch.no_grad()
def test_save_load_round_trip_identical_logits(tiny_tokenizer, tiny_processor, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_model(tiny_tokenizer, seed=3)
    b = _batch(tiny_processor)
    ref = model(**b).logits
    model.save_pretrained(tmp_path / "m", max_shard_size="16MB")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    for folder in ("m", "sharded"):
        loaded = ChatRexForConditionalGeneration.from_pretrained(tmp_path / folder, attn_implementation="eager").eval()
        assert loaded.config.text_config._attn_implementation == "eager"
        assert loaded.config.objfeat_token_id == model.config.objfeat_token_id
        torch.testing.assert_close(loaded(**b).logits, ref, atol=0, rtol=0)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()  # default attention (sdpa)
    assert isinstance(auto, ChatRexForConditionalGeneration)
    valid = b["attention_mask"].bool()
    torch.testing.assert_close(auto(**b).logits[valid], ref[valid], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_parameter_layout_and_key_mapping_report(tiny_tokenizer, tiny_processor):
    """load_state_dict_report with a key mapping: what loads, what is missing, unexpected or mis-shaped.
    (The official checkpoint layout is tested against the official code's own checkpoint in test_official.py.)"""
    model = make_model(tiny_tokenizer, seed=4)
    keys = list(model.state_dict())
    for prefix in ("model.", "lm_head.", "vision_tower.vision_tower.", "vision_tower_aux.trunk.stages.",
                   "mm_projector.0.", "mm_projector.2.", "mm_object_projector.0.", "mm_object_projector.2."):
        assert any(k.startswith(prefix) for k in keys), prefix
    # an open_clip ConvNeXt checkpoint (visual.trunk.*) for the high-resolution tower, with faults
    trunk = "vision_tower_aux.trunk."
    open_clip = {"visual.trunk." + k[len(trunk):]: v.clone() for k, v in model.state_dict().items() if k.startswith(trunk)}
    open_clip["visual.head.proj.weight"] = torch.zeros(2, 2)
    del open_clip["visual.trunk.stem.1.bias"]
    open_clip["visual.trunk.stem.0.bias"] = torch.zeros(3)
    fresh = make_model(tiny_tokenizer, seed=5)
    report = load_state_dict_report(fresh.vision_tower_aux, open_clip, key_mapping={r"^visual\.trunk\.": "trunk."})
    assert report.unexpected == ["visual.head.proj.weight"]  # not matched by any pattern: name kept
    assert report.missing == ["trunk.stem.1.bias"]
    assert [m[0] for m in report.mismatched] == ["trunk.stem.0.bias"]
    assert "shape mismatch" in report.summary()
    torch.testing.assert_close(fresh.vision_tower_aux.trunk.stem[0].weight, model.vision_tower_aux.trunk.stem[0].weight)
    with pytest.raises(ValueError, match="does not match"):
        load_state_dict_report(fresh.vision_tower_aux, open_clip, key_mapping={r"^visual\.trunk\.": "trunk."},
                               strict=True)
    renamed = apply_key_mapping({"a.x": 1, "b.x": 2}, lambda k: None if k.startswith("b") else "c" + k[1:])
    assert renamed == {"c.x": 1}


@torch.no_grad()
def test_object_trunk_runs_before_the_projector_and_round_trips(tiny_model, tiny_processor, tmp_path):
    """object_trunk_dim = D adds Linear-GELU-LayerNorm(D) before mm_object_projector; 0 keeps the paper's layout."""
    from chatrex.mllm.object_encoder import encode_objects
    from chatrex.mllm.presets import with_overrides

    assert not any(k.startswith("mm_object_trunk") for k in tiny_model.state_dict())
    torch.manual_seed(7)
    cfg = with_overrides(tiny_model.config, {"object_trunk_dim": 12})
    model = ChatRexForConditionalGeneration(cfg).eval()
    assert model.mm_object_projector[0].in_features == 12
    assert model.mm_object_trunk[0].in_features == cfg.object_feature_dim
    b = _batch(tiny_processor)
    _, levels = model.get_image_features(b["pixel_values"], b["pixel_values_aux"])
    feats = encode_objects(levels, b["boxes"], cfg.image_size_aux, cfg.roi_output_size)
    hidden = torch.nn.functional.layer_norm(torch.nn.functional.gelu(model.mm_object_trunk[0](feats)), (12,),
                                            model.mm_object_trunk[2].weight, model.mm_object_trunk[2].bias)
    torch.testing.assert_close(model.get_object_features(levels, b["boxes"]), model.mm_object_projector(hidden))

    model.save_pretrained(tmp_path / "m")
    loaded = ChatRexForConditionalGeneration.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    assert loaded.config.object_trunk_dim == 12
    model.config.text_config._attn_implementation = "eager"
    model.config.vision_config._attn_implementation = "eager"
    torch.testing.assert_close(loaded(**b).logits, model(**b).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="object_trunk_dim"):
        with_overrides(tiny_model.config, {"object_trunk_dim": -1})


@torch.no_grad()
def test_qwen2_llm_works(tiny_tokenizer, tiny_processor):
    model = make_model(tiny_tokenizer, text_model_type="qwen2", seed=6)
    assert type(model.model).__name__ == "Qwen2Model"
    b = _batch(tiny_processor)
    assert model(**b).logits.shape[:2] == b["input_ids"].shape
    gen = model.generate(**b, max_new_tokens=3, do_sample=False)
    assert gen.shape == (2, b["input_ids"].shape[1] + 3)


def _mixed_regions():
    from chatrex.utils.masks import encode_rle

    m = np.zeros((30, 40), dtype=bool)
    m[4:20, 6:30] = True
    m[22:28, 2:8] = True
    poly = [[5, 5, 25, 5, 25, 40, 5, 40]]
    return [[[2, 3, 30, 25], m, [0, 0, 40, 30]], [], [poly, encode_rle(np.pad(np.ones((10, 10), bool), ((5, 35), (8, 12))))]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_mixing_boxes_and_masks_matches_items_one_by_one(tiny_model, tiny_processor, side):
    regions = _mixed_regions()
    images = [random_image(0, 40, 30), random_image(1, 30, 50), random_image(2, 30, 50)]
    questions = ["What is the category name of <obj1> in this image, please?", "Detect dog.", "What is <obj0>?"]
    batch = tiny_processor(images, questions, regions=regions, padding_side=side)
    assert [t.tolist() for t in batch["region_mask_indices"]] == [[1], [], [0, 1]]
    out = tiny_model(**batch).logits
    for i in range(3):
        single = tiny_processor([images[i]], [questions[i]], regions=[regions[i]])
        ref = tiny_model(**single).logits[0]
        valid = batch["attention_mask"][i].bool()
        torch.testing.assert_close(out[i][valid], ref, atol=1e-4, rtol=1e-4)


def test_a_mask_region_changes_only_its_object_token(tiny_model, tiny_processor):
    m = np.zeros((30, 40), dtype=bool)
    m[4:20, 6:30] = True
    m[4:12, 6:14] = False  # not a rectangle: pooling differs from the box's RoIAlign
    img = random_image(0, 40, 30)
    with_box = tiny_processor([img], ["q"], regions=[[[1, 1, 10, 10], [6, 4, 30, 20]]])
    with_mask = tiny_processor([img], ["q"], regions=[[[1, 1, 10, 10], m]])
    torch.testing.assert_close(with_box["boxes"][0], with_mask["boxes"][0])  # the mask's box is its bounding box
    levels = tiny_model.vision_tower_aux(with_box["pixel_values_aux"])
    a = tiny_model.get_object_features(levels, with_box["boxes"])
    b = tiny_model.get_object_features(levels, with_mask["boxes"], with_mask["region_masks"],
                                       with_mask["region_mask_indices"])
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1], atol=1e-4)


def test_generation_with_masks_repeats_them_per_beam(tiny_model, tiny_processor):
    images = [random_image(0, 40, 30), random_image(2, 30, 50)]
    batch = tiny_processor(images, ["What is <obj1>?", "What is <obj0>?"], regions=[_mixed_regions()[0], _mixed_regions()[2]])
    greedy = tiny_model.generate(**batch, max_new_tokens=4, do_sample=False)
    beams = tiny_model.generate(**batch, max_new_tokens=4, do_sample=False, num_beams=2)
    assert greedy.shape[0] == beams.shape[0] == 2
    for i in range(2):  # the batch's greedy answer is each item's own
        one = tiny_processor([images[i]], ["What is <obj1>?", "What is <obj0>?"][i:i + 1],
                             regions=[[_mixed_regions()[0], _mixed_regions()[2]][i]])
        alone = tiny_model.generate(**one, max_new_tokens=4, do_sample=False)
        assert greedy[i, -4:].tolist() == alone[0, -4:].tolist()


def test_masks_without_images_or_indices_are_refused(tiny_model, tiny_processor):
    batch = tiny_processor([random_image(0, 40, 30)], ["q"], regions=[_mixed_regions()[0]])
    with pytest.raises(ValueError, match="go together"):
        tiny_model(**{k: v for k, v in batch.items() if k != "region_mask_indices"})
    with pytest.raises(ValueError, match="without pixel_values"):
        tiny_model(input_ids=batch["input_ids"], region_masks=batch["region_masks"],
                   region_mask_indices=batch["region_mask_indices"])


@torch.no_grad()
def test_image_token_pool_averages_cells_and_shortens_the_prompt(tiny_model, tiny_tokenizer, tiny_processor, tmp_path):
    """image_token_pool = k averages k x k cells of the (CLIP + ConvNeXt) grid before mm_projector: <image>
    stands for (g/k)² tokens, the processor writes that many, and both round-trip through save/load."""
    from chatrex.mllm.presets import with_overrides
    from chatrex.mllm.processing_chatrex import ChatRexProcessor
    from tests.mllm.conftest import make_processor

    cfg = with_overrides(tiny_model.config, {"image_token_pool": 2})
    assert (cfg.image_grid, cfg.image_token_grid, cfg.num_image_tokens) == (4, 2, 4)
    model = ChatRexForConditionalGeneration(cfg).eval()
    model.load_state_dict(tiny_model.state_dict())  # the same weights: only the pooling differs
    proc = make_processor(tiny_tokenizer, image_token_pool=2)
    b = _batch(proc)
    plain = _batch(tiny_processor)
    assert (b["input_ids"] == cfg.image_token_id).sum(1).tolist() == [4, 4]
    assert b["input_ids"].shape[1] == plain["input_ids"].shape[1] - 12
    pooled, levels = model.get_image_features(b["pixel_values"], b["pixel_values_aux"])
    clip = tiny_model.vision_tower(b["pixel_values"])
    last = levels[-1].flatten(2).transpose(1, 2)
    cells = torch.cat([clip, last], -1).reshape(2, 2, 2, 2, 2, -1)  # (B, gy/2, 2, gx/2, 2, C)
    expected = tiny_model.mm_projector(cells.mean(dim=(2, 4)).reshape(2, 4, -1))
    torch.testing.assert_close(pooled, expected)
    # the object tokens do not change with pooling; the model runs on the pooled prompt
    torch.testing.assert_close(model.get_object_features(levels, b["boxes"]),
                               tiny_model.get_object_features(levels, b["boxes"]))
    assert model(**b).logits.shape[1] == b["input_ids"].shape[1]
    with pytest.raises(ValueError, match="needs exactly 4"):  # a processor without pooling: a clear error
        model(**plain)
    proc.save_pretrained(tmp_path / "p")
    assert ChatRexProcessor.from_pretrained(tmp_path / "p").num_image_tokens == 4
    model.save_pretrained(tmp_path / "m")
    assert ChatRexForConditionalGeneration.from_pretrained(tmp_path / "m").config.image_token_pool == 2
    for bad in (3, 0, True):
        with pytest.raises(ValueError, match="image_token_pool"):
            with_overrides(tiny_model.config, {"image_token_pool": bad})
        with pytest.raises(ValueError, match="image_token_pool"):
            make_processor(tiny_tokenizer, image_token_pool=bad)
