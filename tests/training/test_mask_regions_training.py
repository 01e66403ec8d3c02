"""Training with mask regions: the datasets give asked regions as masks at ``mask_region_rate``, the collates
decode them in the workers, and stages 0-2 train on mixed box / mask batches."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from chatrex.data.chatrex_dataset import ChatRexDataConfig, ChatRexDataset, build_box_list, render_task
from chatrex.data.vision_dataset import VisionDataConfig, VisionPretrainDataset
from chatrex.grounding import parse_grounded, read_relation
from chatrex.training.chatrex_task import ChatRexTask, ChatRexTaskConfig
from chatrex.training.config import TrainConfig
from chatrex.training.sampler import SeededIndex
from chatrex.training.trainer import Trainer
from chatrex.training.vision_task import VisionTask, VisionTaskConfig
from chatrex.utils.masks import decode_mask, encode_rle
from tests.training.test_chatrex_training import TINY_VISION, base_dir  # noqa: F401  (fixture)

W, H = 96, 64


def _ellipse(box) -> np.ndarray:
    im = Image.new("L", (W, H), 0)
    ImageDraw.Draw(im).ellipse([box[0], box[1], box[2] - 1, box[3] - 1], fill=255)
    return np.asarray(im) > 0


def _record(i: int, masks: bool = True) -> dict:
    car, house, wheel = [4, 4, 40, 30], [50, 10, 90, 50], [8, 20, 18, 30]
    regions = [
        {"id": 0, "box": car, "category": "car", "level": "instance", "phrase": "a red car", "referring": "the red car"},
        {"id": 1, "box": house, "category": "house", "level": "instance", "phrase": "a blue house",
         "referring": "the blue house"},
        {"id": 2, "box": wheel, "category": "wheel", "level": "part", "parent": 0, "phrase": "a wheel"},
    ]
    if masks:
        for r in regions:
            r["mask"] = encode_rle(_ellipse(r["box"]))
    return {"id": f"m{i}", "image": f"images/{i}.png", "width": W, "height": H, "regions": regions,
            "relations": [{"subject": 0, "predicate": "left of", "object": 1}]}


@pytest.fixture()
def mask_data(tmp_path):
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(4):
        im = Image.new("RGB", (W, H), (200, 200, 200))
        d = ImageDraw.Draw(im)
        d.ellipse([4, 4, 39, 29], fill=(220, 20, 20))
        d.ellipse([50, 10, 89, 49], fill=(20, 20, 220))
        im.save(tmp_path / "images" / f"{i}.png")
        lines.append(json.dumps(_record(i, masks=i != 3)))  # the last record has no masks (old data)
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_region_tasks_give_the_asked_regions_as_masks_at_the_rate(mask_data):
    weights = {"region_category": 1.0, "detection": 1.0}
    always = ChatRexDataset(ChatRexDataConfig(files=[str(mask_data)], task_weights=weights, mask_region_rate=1.0))
    seen_masks = 0
    for i in range(40):
        item = always[SeededIndex(i % 4, i)]
        if not item["task"].startswith("region_") or i % 4 == 3:
            assert item["masks"] == {}  # detection, or a record without masks: boxes only
            continue
        asked = {g.indices[0] for g in parse_grounded(item["answer"]).groundings}
        assert set(item["masks"]) == asked or (len(item["boxes"]) <= 3 and set(item["masks"]) == set(range(len(item["boxes"]))))
        for k, rle in item["masks"].items():  # each mask is the one of the region at that index
            box = [int(v) for v in item["boxes"][k]]
            assert (decode_mask(rle, H, W) == _ellipse(box)).all()
        seen_masks += len(item["masks"])
    assert seen_masks > 10
    never = ChatRexDataset(ChatRexDataConfig(files=[str(mask_data)], task_weights=weights, mask_region_rate=0.0))
    assert all(never[SeededIndex(i % 4, i)]["masks"] == {} for i in range(20))
    half = ChatRexDataset(ChatRexDataConfig(files=[str(mask_data)], task_weights={"region_category": 1.0},
                                            mask_region_rate=0.5, region_boxes_only_prob=0.0, max_targets=1))
    counts = [len(half[SeededIndex(i % 3, i)]["masks"]) for i in range(90)]
    assert 0.3 < np.mean(counts) < 0.7  # one asked region each time, a mask about half the time
    with pytest.raises(ValueError, match="mask_region_rate"):
        ChatRexDataset(ChatRexDataConfig(files=[str(mask_data)], mask_region_rate=2.0))


def test_a_rate_without_any_masks_in_the_data_warns(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(_record(0, masks=False)) + "\n")
    with pytest.warns(UserWarning, match="none of its 1 records has region masks"):
        ChatRexDataset(ChatRexDataConfig(files=[str(path)], mask_region_rate=0.5))
    with pytest.warns(UserWarning, match="none of its 1 records"):
        VisionPretrainDataset(VisionDataConfig(files=[str(path)], mask_region_rate=0.5))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ChatRexDataset(ChatRexDataConfig(files=[str(path)], mask_region_rate=0.0))


def test_region_relation_task_renders_and_reads_back():
    rec = _record(0)
    boxes, index_of = build_box_list(rec, random.Random(0), ChatRexDataConfig())
    q, a = render_task("region_relation", rec, index_of, ["car", "house"], random.Random(1))
    assert f"<obj{index_of[0]}>" in q and f"<obj{index_of[1]}>" in q
    rel = read_relation(a, predicates=["left of", "right of"], num_boxes=len(boxes))
    assert (rel.subject, rel.predicate, rel.object) == (index_of[0], "left of", index_of[1])
    assert render_task("region_relation", {**rec, "relations": []}, index_of, [], random.Random(1)) is None


def test_collate_decodes_masks_to_uint8_grids_and_the_model_trains_on_them(tmp_path, mask_data, base_dir):  # noqa: F811
    task = ChatRexTask(ChatRexTaskConfig.from_dict(dict(
        stage="stage2", base=str(base_dir), vision=TINY_VISION, lora={"r": 4, "alpha": 8, "dropout": 0.0},
        data={"files": [str(mask_data)], "task_weights": {"region_category": 1.0, "region_relation": 1.0},
              "mask_region_rate": 1.0, "region_boxes_only_prob": 1.0})))
    model = task.build_model()
    ds = task.build_dataset()
    samples = [ds[SeededIndex(i, i)] for i in range(3)]
    batch = task.collate(samples)
    grid = TINY_VISION["aux_vision_config"]["image_size"] // 4
    assert all(m.dtype == torch.uint8 and m.shape[1:] == (grid, grid) for m in batch["region_masks"])
    assert [t.tolist() for t in batch["region_mask_indices"]] == [sorted(s["masks"]) for s in samples]
    loss, logs = task.compute_loss(model, batch, torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss) and model.mm_object_projector[0].weight.grad is not None
    # a batch without any mask goes the plain boxes way
    plain = task.collate([{**s, "masks": {}} for s in samples])
    assert "region_masks" not in plain
    cfg = TrainConfig(output_dir=str(tmp_path / "s2"), max_steps=2, batch_size=2, lr=1e-3, warmup_steps=1,
                      save_every=2, log_every=1, num_workers=0)
    Trainer(task, cfg, device="cpu", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)


def test_stage0_gives_regions_as_masks_and_trains(tmp_path, mask_data):
    ds = VisionPretrainDataset(VisionDataConfig(files=[str(mask_data)], mask_region_rate=1.0, max_mask_regions=2))
    item = ds[SeededIndex(0, 0)]
    assert len(item["masks"]) == 2 and set(item["masks"]) <= set(range(item["regions"]))
    assert ds[SeededIndex(3, 0)]["masks"] == {}  # no masks in that record
    none = VisionPretrainDataset(VisionDataConfig(files=[str(mask_data)], mask_region_rate=0.0))
    assert none[SeededIndex(0, 0)]["masks"] == {}
    task = VisionTask(VisionTaskConfig.from_dict({"vision": TINY_VISION, "head_dim": 32,
                                                  "data": {"files": [str(mask_data)], "mask_region_rate": 1.0}}))
    batch = task.collate([task.dataset[SeededIndex(i, i)] for i in range(3)])
    assert [t.numel() for t in batch["region_mask_indices"]] == [3, 3, 3]
    cfg = TrainConfig(output_dir=str(tmp_path / "s0"), max_steps=3, batch_size=2, lr=1e-3, warmup_steps=1,
                      save_every=3, log_every=1, num_workers=0)
    Trainer(task, cfg, device="cpu", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "s0" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)
