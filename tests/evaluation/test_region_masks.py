"""``eval region`` on masks and on boxes, and classification from the category list (RegionGPT's protocol)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from chatrex.evaluation.datasets import load_eval_data
from chatrex.evaluation.runners.region import candidates_for, category_list, run_region
from chatrex.grounding.parser import parse_grounded
from chatrex.interfaces.cli import build_app
from chatrex.utils.masks import decode_mask, encode_rle, mask_bbox
from tests.evaluation.standins import StandInResult, write_world

NAMES = {(2, 2, 30, 20): "car", (4, 14, 10, 20): "wheel", (40, 5, 60, 40): "tree", (10, 10, 30, 30): "car",
         (32, 10, 50, 30): "truck", (0, 0, 8, 30): "person"}


def _world_with_masks(folder):
    """The stand-in world, each region with a mask: its box with the top-left quarter cut away."""
    path = write_world(folder)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for rec in records:
        for r in rec["regions"]:
            m = np.zeros((rec["height"], rec["width"]), dtype=bool)
            x0, y0, x1, y1 = r["box"]
            m[y0:y1, x0:x1] = True
            m[y0:(y0 + y1) // 2, x0:(x0 + x1) // 2] = False
            m[y0, x1 - 1] = m[y1 - 1, x0] = True  # keeps the bounding box the region's box
            r["mask"] = encode_rle(m)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


class RegionPipeline:
    """Answers by the region it is given: from a box as it is, from a mask by its bounding box; on a mask
    it takes a car for a truck, so the two kinds differ."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, questions, boxes=None, granularity="fine", min_score=0.3, max_boxes=100,
                 regions=None):
        self.calls.append({"boxes": boxes, "regions": regions, "questions": list(questions)})
        out = []
        for i, q in enumerate(questions):
            if regions is not None:
                im = images[i]
                mask = decode_mask(regions[i][0], im.height, im.width)
                box, kind = mask_bbox(mask), "mask"
            else:
                box, kind = [int(v) for v in boxes[i][0]], "box"
            name = NAMES[tuple(box)]
            if kind == "mask" and name == "car":
                name = "truck"
            if "candidates" in q or ":" in q:
                answer = f"<ground>{name}</ground><objects><obj0></objects>"
            elif "category" in q:
                answer = f"<ground>{name}</ground><objects><obj0></objects>"
            else:
                answer = f"<ground>a {name} in the picture</ground><objects><obj0></objects>"
            out.append(StandInResult(parse_grounded(answer, num_boxes=1), answer, [box], None))
        return out


def test_masks_go_to_the_predictor_as_regions_and_score_like_boxes(tmp_path):
    data = load_eval_data(_world_with_masks(tmp_path))
    kw = dict(sentence_encoder=None, use_java=False, progress=False, tasks=["category", "classification", "phrase"])
    boxes_pipe, masks_pipe = RegionPipeline(), RegionPipeline()
    boxes = run_region(boxes_pipe, data, regions="boxes", **kw)
    masks = run_region(masks_pipe, data, regions="masks", **kw)
    assert all(c["regions"] is None and c["boxes"] for c in boxes_pipe.calls)
    assert all(c["boxes"] is None and isinstance(c["regions"][0][0], dict) for c in masks_pipe.calls)
    mb, mm = boxes["metrics"], masks["metrics"]
    assert mb["num_regions"] == mm["num_regions"] == 6 and mm["regions"] == "masks"
    # boxes: only the truck (a car) is wrong; masks: the two cars, answered "truck", are wrong too
    assert mb["category/accuracy"] == pytest.approx(5 / 6)
    assert mm["category/accuracy"] == pytest.approx(3 / 6)
    # classification picks from the category list, where "truck" is not
    assert mb["classification/num_candidates"] == 4 and mb["classification/chance"] == pytest.approx(1 / 4)
    assert mb["classification/accuracy"] == pytest.approx(5 / 6)
    assert mm["classification/accuracy"] == pytest.approx(3 / 6) and mm["classification/no_candidate_named"] == 3
    listed = [q for c in boxes_pipe.calls for q in c["questions"] if "car, person, tree, wheel" in q]
    assert len(listed) == 6  # every classification question lists the whole category list
    assert masks["config"]["regions"] == "masks" and "phrase/BLEU-1" in mm


def test_candidates_option_and_missing_masks(tmp_path):
    data = load_eval_data(_world_with_masks(tmp_path))
    assert category_list(data, "all") == ["car", "person", "tree", "wheel"]
    assert category_list(data, "part") == ["wheel"]
    import random

    cands = candidates_for("tree", category_list(data), 2, random.Random(0))
    assert len(cands) == 2 and "tree" in cands
    assert candidates_for("tree", category_list(data), 0, random.Random(0)) == category_list(data)
    pipe = RegionPipeline()
    res = run_region(pipe, data, tasks=["classification"], candidates=2, sentence_encoder=None, use_java=False,
                     progress=False)
    assert res["metrics"]["classification/num_candidates"] == 2
    assert all(p["candidates"] == 2 for p in res["predictions"])
    plain = load_eval_data(write_world(tmp_path / "plain"))  # records without masks
    with pytest.raises(ValueError, match="no region masks"):
        run_region(pipe, plain, regions="masks", progress=False)
    with pytest.raises(ValueError, match="regions must be one of"):
        run_region(pipe, plain, regions="polygons", progress=False)


@pytest.mark.slow
def test_eval_region_command_on_masks_with_a_saved_model(tiny_pipeline_dir, tmp_path):
    data = _world_with_masks(tmp_path)
    out = tmp_path / "res" / "region.json"
    res = CliRunner().invoke(build_app(), [
        "eval", "region", "--model", str(tiny_pipeline_dir), "--data", str(data), "--out", str(out),
        "--limit", "2", "--batch-size", "2", "--device", "cpu", "--max-new-tokens", "4", "--regions", "masks",
        "--tasks", "category,classification"])
    assert res.exit_code == 0, res.output
    saved = json.loads(out.read_text())
    assert saved["config"]["regions"] == "masks" and saved["metrics"]["num_regions"] == 2
    assert 0.0 <= saved["metrics"]["classification/accuracy"] <= 1.0
