"""The COCO wrapper agrees with pycocotools called directly; records convert to COCO in memory."""

import contextlib
import copy
import io

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from chatrex.evaluation.coco import (COCO_STAT_NAMES, CocoFormatError, check_coco, coco_from_records, coco_map,
                                     detections_to_results)


def _gt():
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100},
                   {"id": 3, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 80], "area": 4000, "iscrowd": 0},
        ],
    }


def _results():
    return [
        {"image_id": 1, "category_id": 1, "bbox": [12, 10, 40, 38], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [55, 60, 30, 30], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [60, 0, 20, 20], "score": 0.7},
        {"image_id": 2, "category_id": 1, "bbox": [0, 5, 50, 70], "score": 0.6},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.95},
    ]


def _direct(gt, results):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_coco_map_agrees_with_pycocotools():
    ours = coco_map(_gt(), _results())
    direct = _direct(_gt(), _results())
    for name, value in zip(COCO_STAT_NAMES, direct):
        if value < 0:
            assert ours[name] is None
        else:
            assert ours[name] == pytest.approx(value)
    assert 0 < ours["mAP"] < 1


def test_coco_map_restricted_to_images():
    gt = _gt()
    sub = coco_map(gt, _results(), image_ids=[1])
    gt1 = copy.deepcopy(gt)
    gt1["images"] = [gt["images"][0]]
    gt1["annotations"] = [a for a in gt["annotations"] if a["image_id"] == 1]
    direct = _direct(gt1, [r for r in _results() if r["image_id"] == 1])
    assert sub["mAP"] == pytest.approx(direct[0])
    with pytest.raises(CocoFormatError, match="not in the ground truth"):
        coco_map(gt, _results(), image_ids=[99])


def test_coco_map_perfect_and_empty():
    gt = _gt()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    assert coco_map(gt, perfect)["mAP"] == pytest.approx(1.0)
    assert coco_map(gt, [])["mAP"] == 0.0
    assert coco_map(gt, [], image_ids=[3])["mAP"] is None  # image 3 has no ground truth
    assert perfect[0].get("segmentation") is None  # inputs are not mutated


def test_check_coco_fills_defaults_and_names_errors():
    gt = _gt()
    for a in gt["annotations"]:
        del a["area"], a["iscrowd"], a["id"]
    fixed = check_coco(gt)
    assert [a["id"] for a in fixed["annotations"]] == [1, 2, 3]
    assert fixed["annotations"][0]["area"] == 1600
    bad = _gt()
    bad["annotations"][1]["category_id"] = 7
    with pytest.raises(CocoFormatError, match=r"annotations\[1\].*category_id 7"):
        check_coco(bad)
    bad = _gt()
    bad["annotations"][0]["bbox"] = [1, 2, 3]
    with pytest.raises(CocoFormatError, match="bbox"):
        check_coco(bad)
    with pytest.raises(CocoFormatError, match="missing list 'images'"):
        check_coco({"annotations": [], "categories": []})


def test_coco_from_records_levels():
    records = [{"id": "r0", "image": "a.png", "width": 50, "height": 40, "regions": [
        {"id": 0, "box": [0, 0, 20, 20], "category": "car"},
        {"id": 1, "box": [2, 10, 6, 20], "category": "wheel", "level": "part", "parent": 0},
        {"id": 2, "box": [30, 0, 40, 30], "category": "tree", "level": "instance"},
        {"id": 3, "box": [30, 0, 40, 30]},  # no category: not an annotation
    ]}]
    inst = coco_from_records(records, "instance")
    assert [c["name"] for c in inst["categories"]] == ["car", "tree"]
    assert [a["bbox"] for a in inst["annotations"]] == [[0, 0, 20, 20], [30, 0, 10, 30]]
    assert inst["images"][0]["record_id"] == "r0"
    assert len(coco_from_records(records, "part")["annotations"]) == 1
    assert len(coco_from_records(records, "all")["annotations"]) == 3
    with pytest.raises(ValueError, match="level"):
        coco_from_records(records, "objects")


def test_detections_to_results():
    res = detections_to_results(5, [[10, 20, 30, 60]], [3], [0.5])
    assert res == [{"image_id": 5, "category_id": 3, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.5}]
