"""Record schema: dataclass round trips and validation of every kind of bad record."""

from __future__ import annotations

import copy

import pytest

from chatrex.data.schema import Record, SchemaError, validate_box, validate_record


def good_record() -> dict:
    text = "A red car is parked next to a tree."
    return {
        "id": "world-train-0000001", "image": "images/000001.png", "width": 640, "height": 480,
        "source": "world", "split": "train",
        "regions": [
            {"id": 0, "box": [10, 20, 110, 80], "category": "car", "level": "instance",
             "attributes": {"color": "red", "size": "small"}, "phrase": "a small red car",
             "description": "A small red car.", "referring": "the red car", "visible": 0.9, "area": 4000},
            {"id": 1, "box": [20, 60, 40, 80], "category": "wheel", "level": "part", "parent": 0},
            {"id": 2, "box": [300, 10, 400, 200], "category": "tree", "level": "instance"},
        ],
        "relations": [{"subject": 0, "predicate": "left of", "object": 2}],
        "captions": [{"kind": "brief", "text": text,
                      "groundings": [{"span": [2, 9], "phrase": "red car", "regions": [0]},
                                     {"span": [28, 34], "phrase": "a tree", "regions": [2]}]}],
        "conversations": [{"question": "What colour is the car?", "answer": "The car is red.",
                           "groundings": [{"span": [4, 7], "phrase": "car", "regions": [0]}]}],
    }


def test_good_record_is_valid_and_round_trips():
    d = good_record()
    assert validate_record(d) == []
    r = Record.from_dict(d)
    assert r.region(1).parent == 0 and r.captions[0].groundings[1].regions == [2]
    assert r.to_dict() == d


def test_minimal_real_record_is_valid_and_round_trips():
    d = {"id": "x", "image": "/abs/img.jpg", "width": 10, "height": 20, "regions": [{"id": 3, "box": [0, 0, 10, 20]}]}
    assert validate_record(d) == []
    assert Record.from_dict(d).to_dict() == d


def test_unknown_keys_are_kept():
    d = good_record()
    d["seed"] = 7
    d["regions"][0]["mask_rle"] = "abc"
    d["captions"][0]["groundings"][0]["score"] = 0.5
    assert validate_record(d) == []
    assert Record.from_dict(d).to_dict() == d


def _set(path, value):
    def mutate(d):
        target = d
        for k in path[:-1]:
            target = target[k]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


_DELETE = object()

BAD = [
    ("missing id", _set(["id"], _DELETE), "missing required key 'id'"),
    ("missing regions", _set(["regions"], _DELETE), "missing required key 'regions'"),
    ("width not int", _set(["width"], "640"), "record.width: must be a positive integer"),
    ("height zero", _set(["height"], 0), "record.height: must be a positive integer"),
    ("image not str", _set(["image"], 5), "record.image: must be a string"),
    ("region without box", _set(["regions", 0, "box"], _DELETE), "regions[0]: missing required key 'box'"),
    ("box x0 >= x1", _set(["regions", 0, "box"], [50, 20, 40, 80]), "x0 must be < x1"),
    ("box y0 >= y1", _set(["regions", 0, "box"], [10, 80, 40, 80]), "y0 must be < y1"),
    ("box outside width", _set(["regions", 2, "box"], [300, 10, 700, 200]), "extends past the image width 640"),
    ("box outside height", _set(["regions", 2, "box"], [300, 10, 400, 500]), "extends past the image height 480"),
    ("negative box", _set(["regions", 2, "box"], [-5, 10, 400, 200]), "starts outside the image"),
    ("box of 3", _set(["regions", 2, "box"], [1, 2, 3]), "must be a list of 4 numbers"),
    ("box with nan", _set(["regions", 2, "box"], [1, 2, float("nan"), 4]), "finite number"),
    ("duplicate id", _set(["regions", 2, "id"], 0), "duplicate region id 0"),
    ("bad level", _set(["regions", 0, "level"], "object"), "regions[0].level: must be one of"),
    ("missing parent", _set(["regions", 1, "parent"], 9), "regions[1].parent: refers to missing region id 9"),
    ("parent is a part", _set(["regions", 2, "parent"], 1), "region 1 is a part"),
    ("self parent", _set(["regions", 1, "parent"], 1), "cannot be its own parent"),
    ("attribute not str", _set(["regions", 0, "attributes"], {"color": 3}), "values must be strings"),
    ("visible > 1", _set(["regions", 0, "visible"], 1.5), "regions[0].visible"),
    ("relation missing object", _set(["relations", 0, "object"], 42), "relations[0].object: refers to missing region id 42"),
    ("relation no predicate", _set(["relations", 0, "predicate"], ""), "relations[0].predicate"),
    ("relation self", _set(["relations", 0, "object"], 0), "subject and object are the same"),
    ("span outside", _set(["captions", 0, "groundings", 0, "span"], [30, 99]), "is not inside the"),
    ("span reversed", _set(["captions", 0, "groundings", 0, "span"], [9, 2]), "is not inside the"),
    ("phrase mismatch", _set(["captions", 0, "groundings", 0, "phrase"], "blue car"), "not the phrase 'blue car'"),
    ("grounding missing region", _set(["captions", 0, "groundings", 0, "regions"], [0, 7]), "missing region id(s) [7]"),
    ("grounding no regions", _set(["captions", 0, "groundings", 0, "regions"], []), "non-empty list"),
    ("caption without text", _set(["captions", 0, "text"], _DELETE), "captions[0]: missing required key 'text'"),
    ("answer span mismatch", _set(["conversations", 0, "groundings", 0, "span"], [0, 3]),
     "answer[0:3] is 'The'"),
    ("regions not a list", _set(["regions"], {"id": 0}), "record.regions: must be a list"),
]


@pytest.mark.parametrize("name,mutate,expected", BAD, ids=[b[0] for b in BAD])
def test_each_bad_record_is_reported(name, mutate, expected):
    d = copy.deepcopy(good_record())
    mutate(d)
    errors = validate_record(d)
    assert any(expected in e for e in errors), errors
    with pytest.raises(SchemaError, match="invalid record"):
        Record.from_dict(d)


def test_not_an_object():
    assert validate_record([1, 2]) == ["record: must be a JSON object, got list"]


def test_box_tolerance_and_unknown_size():
    assert validate_box([0, 0, 640.4, 480], 640, 480) == []
    assert validate_box([0, 0, 641, 480], 640, 480) != []
    assert validate_box([0, 0, 5000, 5000], None, None) == []


def test_region_masks_validate_and_round_trip():
    d = good_record()
    d["regions"][0]["mask"] = {"size": [480, 640], "counts": "PPo0"}
    d["regions"][2]["mask"] = {"size": [480, 640], "counts": [10, 5, 480 * 640 - 15]}
    assert validate_record(d) == []
    r = Record.from_dict(d)
    assert r.region(0).mask == {"size": [480, 640], "counts": "PPo0"} and r.region(1).mask is None
    assert r.to_dict() == d
    old = good_record()  # records without masks stay valid and keep no mask key
    assert "mask" not in Record.from_dict(old).to_dict()["regions"][0]


@pytest.mark.parametrize("mask, expected", [
    ({"size": [48, 640], "counts": "PP"}, "is not the image's [height, width] = [480, 640]"),
    ({"size": [480], "counts": "PP"}, "mask.size: must be [height, width]"),
    ({"size": [480, 640], "counts": ""}, "mask.counts: must be a compressed RLE string"),
    ({"size": [480, 640], "counts": [1, -2]}, "non-negative integers"),
    ({"size": [480, 640]}, "mask.counts"),
    ([1, 2, 3], "must be COCO RLE"),
])
def test_bad_region_masks_are_reported(mask, expected):
    d = good_record()
    d["regions"][0]["mask"] = mask
    errors = validate_record(d)
    assert any(expected in e and e.startswith("regions[0].mask") for e in errors), errors
