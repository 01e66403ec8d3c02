"""Scenes: determinism, exact boxes of visible pixels, parts, occlusion, relations, size ranges."""

from __future__ import annotations

import numpy as np
import pytest

from chatrex.data.schema import validate_record
from chatrex.data.world.scene import (
    ObjectSpec, SceneLayout, WorldConfig, annotate_canvas, generate_scene, render_layout, sample_layout,
)

SMALL = WorldConfig(min_side=96, max_side=192)


def _scene(objects, width=400, height=300, config=None):
    layout = SceneLayout(width, height, objects, background="flat", background_seed=1)
    image, canvas = render_layout(layout)
    regions, relations = annotate_canvas(layout, canvas, config)
    return np.asarray(image), canvas, regions, relations


def _rels(relations):
    return {(r["subject"], r["predicate"], r["object"]) for r in relations}


def test_same_seed_same_bytes_and_record():
    im1, rec1 = generate_scene(11, SMALL)
    im2, rec2 = generate_scene(11, SMALL)
    assert im1.tobytes() == im2.tobytes() and rec1 == rec2
    im3, rec3 = generate_scene(12, SMALL)
    assert im1.tobytes() != im3.tobytes() or rec1 != rec3


def test_generated_records_are_valid():
    for seed in range(12):
        image, rec = generate_scene(seed, SMALL)
        assert validate_record(rec) == [], seed
        assert (rec["width"], rec["height"]) == image.size
        assert all(r["level"] in ("instance", "part") for r in rec["regions"])


@pytest.mark.parametrize("spec", [
    ObjectSpec("car", "red", 120, 60, 200, 150, orientation="facing left"),
    ObjectSpec("umbrella", "blue", 90, 90, 170, 140, pattern="dotted", orientation="tilted right", tilt=30),
    ObjectSpec("bicycle", "black", 100, 62, 230, 160),
])
def test_box_is_tight_around_visible_pixels(spec):
    image, canvas, regions, _ = _scene([spec])
    bg = image[0, 0]
    ys, xs = np.nonzero((image != bg).any(axis=2))
    inst = [r for r in regions if r["level"] == "instance"]
    assert len(inst) == 1
    assert inst[0]["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert inst[0]["area"] == len(xs) and inst[0]["visible"] == 1.0


def test_parts_lie_inside_their_instance_and_point_to_it():
    seen_parts = 0
    for seed in range(8):
        _, rec = generate_scene(seed, SMALL)
        by_id = {r["id"]: r for r in rec["regions"]}
        for r in rec["regions"]:
            if r["level"] != "part":
                assert r.get("parent") is None
                continue
            seen_parts += 1
            parent = by_id[r["parent"]]
            assert parent["level"] == "instance"
            px0, py0, px1, py1 = parent["box"]
            x0, y0, x1, y1 = r["box"]
            assert px0 <= x0 < x1 <= px1 and py0 <= y0 < y1 <= py1
            assert r["area"] <= parent["area"]
    assert seen_parts > 0


def test_part_boxes_exact_for_a_house():
    image, canvas, regions, _ = _scene([ObjectSpec("house", "yellow", 150, 150, 200, 150)])
    parts = {r["category"]: r for r in regions if r["level"] == "part"}
    assert set(parts) == {"wall", "roof", "door", "window"}
    windows = [r for r in regions if r["category"] == "window"]
    assert len(windows) == 2 and windows[0]["box"][2] < windows[1]["box"][0]
    assert all(p["parent"] == 0 for p in parts.values())
    # the door (brown) is a rectangle in the bottom middle of the wall
    wall, door, roof = parts["wall"]["box"], parts["door"]["box"], parts["roof"]["box"]
    assert door[3] == wall[3] and wall[0] < door[0] < door[2] < wall[2]
    assert roof[1] < wall[1]
    assert parts["door"]["attributes"]["color"] == "brown"


@pytest.mark.parametrize("spec,part,count", [
    (ObjectSpec("car", "red", 120, 60, 200, 150, orientation="facing left"), "wheel", 2),
    (ObjectSpec("truck", "red", 132, 60, 200, 150), "wheel", 3),
    (ObjectSpec("bicycle", "blue", 120, 75, 200, 150, orientation="tilted left", tilt=25), "wheel", 2),
    (ObjectSpec("bus", "green", 138, 60, 200, 150), "window", 6),
    (ObjectSpec("person", "green", 60, 120, 200, 150), "leg", 2),
])
def test_each_piece_of_a_part_is_its_own_region(spec, part, count):
    _, canvas, regions, _ = _scene([spec])
    pieces = [r for r in regions if r["category"] == part]
    assert len(pieces) == count
    for a in pieces:  # each box is tight around its own pixels: pieces do not share a box
        assert sum(a["box"] == b["box"] for b in pieces) == 1
    assert sum(r["area"] for r in pieces) == canvas.sprites[0].part_pixels[canvas.sprites[0].parts.index(part)]


def test_fully_hidden_object_is_dropped_and_partly_hidden_shrinks():
    hidden = ObjectSpec("star", "red", 20, 20, 200, 150)
    cloud = ObjectSpec("cloud", "white", 300, 170, 200, 150)
    _, canvas, regions, _ = _scene([hidden, cloud])
    assert [r["category"] for r in regions if r["level"] == "instance"] == ["cloud"]
    assert not (canvas.instance_map == 0).any()

    back = ObjectSpec("heart", "red", 66, 60, 100, 150)
    front = ObjectSpec("heart", "blue", 66, 60, 140, 150)
    _, canvas, regions, relations = _scene([back, front])
    r_back, r_front = regions[0], regions[1]
    assert 0.3 <= r_back["visible"] < 1.0 and r_front["visible"] == 1.0
    full_x1 = canvas.origins[0][0] + canvas.sprites[0].width
    ys, xs = np.nonzero(canvas.instance_map == 0)
    assert r_back["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert r_back["box"][2] < full_x1  # the hidden right side no longer counts
    assert r_back["area"] == len(xs)
    assert (r_front["id"], "in front of", r_back["id"]) in _rels(relations)
    assert (r_back["id"], "behind", r_front["id"]) in _rels(relations)


def test_min_visible_drops_mostly_hidden_objects():
    back = ObjectSpec("heart", "red", 66, 60, 100, 150)
    front = ObjectSpec("heart", "blue", 66, 60, 112, 150)  # hides most of the back heart
    _, _, regions, _ = _scene([back, front], config=WorldConfig(min_visible=0.3))
    _, _, regions_all, _ = _scene([back, front], config=WorldConfig(min_visible=0.0))
    assert len(regions_all) == 2 and regions_all[0]["visible"] < 0.3
    assert [r["attributes"]["color"] for r in regions] == ["blue"]


def test_relations_on_a_hand_built_scene():
    objects = [
        ObjectSpec("star", "red", 60, 60, 60, 150),      # A
        ObjectSpec("heart", "green", 60, 54, 130, 150),  # B: right of A, close
        ObjectSpec("cloud", "white", 60, 33, 60, 40),    # C: above A
        ObjectSpec("cup", "blue", 120, 104, 310, 170),   # D
        ObjectSpec("star", "yellow", 16, 16, 300, 175),  # E: on top of D, inside it
    ]
    _, _, regions, relations = _scene(objects)
    ids = {r["attributes"]["color"]: r["id"] for r in regions if r["level"] == "instance"}
    A, B, C, D, E = ids["red"], ids["green"], ids["white"], ids["blue"], ids["yellow"]
    rels = _rels(relations)
    expected = {
        (A, "left of", B), (B, "right of", A), (A, "next to", B), (B, "next to", A),
        (C, "above", A), (A, "below", C),
        (E, "inside", D), (E, "in front of", D), (D, "behind", E),
    }
    assert expected <= rels, expected - rels
    wrong = {(A, "above", B), (B, "above", A), (C, "left of", A), (A, "left of", C), (D, "inside", E),
             (A, "inside", B), (A, "in front of", B), (E, "next to", D), (A, "next to", C)}
    assert not (wrong & rels), wrong & rels
    assert all(r["predicate"] in {"left of", "right of", "above", "below", "next to", "inside",
                                  "in front of", "behind"} for r in relations)


def test_image_sizes_and_aspects_in_range():
    cfg = WorldConfig()
    for seed in range(200):
        layout = sample_layout(np.random.default_rng(seed), cfg)
        w, h = layout.width, layout.height
        assert 256 <= w <= 1024 and 256 <= h <= 1024
        assert 0.5 - 1e-2 <= w / h <= 2.0 + 1e-2
    fixed = WorldConfig(image_size=(320, 200))
    assert (sample_layout(np.random.default_rng(0), fixed).width,
            sample_layout(np.random.default_rng(0), fixed).height) == (320, 200)


def test_scene_kinds_object_counts():
    crowded = WorldConfig(sparse_prob=0.0, crowded_prob=1.0)
    sparse = WorldConfig(sparse_prob=1.0, crowded_prob=0.0)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert 30 <= len(sample_layout(rng, crowded).objects) <= 60
        assert 1 <= len(sample_layout(rng, sparse).objects) <= 3
    image, rec = generate_scene(3, WorldConfig(sparse_prob=0.0, crowded_prob=1.0, image_size=(384, 384)))
    n_inst = sum(r["level"] == "instance" for r in rec["regions"])
    assert 10 <= n_inst <= 60


def test_config_validation_and_round_trip():
    cfg = WorldConfig(categories=("car", "tree"), forbidden_pairs=(("red", "car"),))
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown category 'dragon'"):
        WorldConfig(categories=("dragon",))
    with pytest.raises(ValueError, match="cannot fit"):
        WorldConfig(min_side=600, max_side=700)
    with pytest.raises(ValueError, match="unknown WorldConfig keys"):
        WorldConfig.from_dict({"sizes": 3})
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        generate_scene(-1)


def test_all_combinations_forbidden_is_an_error():
    cfg = WorldConfig(categories=("car",), colors=("red",), forbidden_pairs=(("red", "car"),))
    with pytest.raises(ValueError, match="forbidden"):
        sample_layout(np.random.default_rng(0), cfg)


def test_every_region_carries_its_visible_mask_as_rle():
    from chatrex.utils.masks import decode_mask, mask_bbox

    checked = 0
    for seed in range(4):
        _, rec = generate_scene(seed, SMALL)
        masks = {}
        for r in rec["regions"]:
            m = decode_mask(r["mask"], rec["height"], rec["width"])
            assert isinstance(r["mask"]["counts"], str) and r["mask"]["size"] == [rec["height"], rec["width"]]
            assert int(m.sum()) == r["area"] and mask_bbox(m) == r["box"]
            masks[r["id"]] = m
            checked += 1
        for r in rec["regions"]:
            if r["level"] == "part":  # a part's visible pixels are its instance's
                assert not (masks[r["id"]] & ~masks[r["parent"]]).any()
        instances = [masks[r["id"]] for r in rec["regions"] if r["level"] == "instance"]
        if len(instances) > 1:  # the visible masks of instances never overlap
            assert int(np.sum(instances, axis=0).max()) == 1
    assert checked > 20


def test_region_mask_is_exactly_the_visible_pixels():
    from chatrex.utils.masks import decode_mask

    image, canvas, regions, _ = _scene([ObjectSpec("car", "red", 120, 60, 200, 150),
                                        ObjectSpec("umbrella", "blue", 80, 80, 160, 120)])
    for r in regions:
        if r["level"] != "instance":
            continue
        index = 0 if r["category"] == "car" else 1
        want = canvas.instance_map == index
        assert (decode_mask(r["mask"], 300, 400) == want).all()
