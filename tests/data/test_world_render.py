"""The world's vocabulary and drawings: every category renders, parts match the catalogue,
orientations and patterns behave, backgrounds have the right shape."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import skimage.data

from chatrex.data.world import backgrounds
from chatrex.data.world.backgrounds import BACKGROUND_KINDS, make_background
from chatrex.data.world.catalog import (
    CATEGORIES, COLORS, INVERSE_PREDICATE, ORIENTATIONS, PARTS, PATTERNS, PREDICATES, SIZES, size_name,
)
from chatrex.data.world.render import EDGE_BIT, PATTERN_BIT, composite, render_object
from chatrex.data.world.shapes import DRAWINGS, draw_labels


def test_catalogue_sizes():
    assert len(CATEGORIES) >= 24
    assert sum(c.composite for c in CATEGORIES) >= 6
    assert len(COLORS) >= 10
    assert "plain" in PATTERNS and len(PATTERNS) >= 4
    assert set(SIZES) == {"small", "medium", "large"}
    assert set(PREDICATES) == {"left of", "right of", "above", "below", "next to", "inside", "in front of", "behind"}
    assert set(INVERSE_PREDICATE) == set(PREDICATES)
    names = [c.name for c in CATEGORIES]
    assert len(set(names)) == len(names)
    for c in CATEGORIES:
        assert set(c.orientations) <= set(ORIENTATIONS) and c.orientations
        assert all(p in PARTS for p in c.parts)


def test_size_name_thresholds():
    area = 100 * 100
    assert size_name(0.05 ** 2 * area, area) == "small"
    assert size_name(0.2 ** 2 * area, area) == "medium"
    assert size_name(0.5 ** 2 * area, area) == "large"
    assert size_name(2 * area, area) == "large"


@pytest.mark.parametrize("category", [c.name for c in CATEGORIES])
def test_drawing_parts_match_catalogue(category):
    cat = next(c for c in CATEGORIES if c.name == category)
    paints = DRAWINGS[category].paint_list
    assert {p.part for p in paints if p.part is not None} == set(cat.parts)
    labels, _ = draw_labels(category, int(96 * cat.aspect), 96)
    present = set(np.unique(labels)) - {0}
    assert present, "nothing drawn"
    # every named part has pixels at this size
    for part in cat.parts:
        ks = {k for k, p in enumerate(paints, start=1) if p.part == part}
        assert ks & present, f"part {part} has no pixels"


@pytest.mark.parametrize("category", [c.name for c in CATEGORIES])
def test_every_orientation_and_tiny_size_renders(category):
    cat = next(c for c in CATEGORIES if c.name == category)
    for orientation in cat.orientations:
        s = render_object(category, "red", 60, 50, "striped", orientation, tilt=30)
        assert s.pixels > 0 and s.mask[0].any() and s.mask[:, 0].any() and s.mask[-1].any() and s.mask[:, -1].any()
        assert sum(s.part_pixels) <= s.pixels
    tiny = render_object(category, "blue", 6, 6)
    assert tiny.pixels > 0


def test_facing_left_mirrors_facing_right():
    right = render_object("car", "red", 80, 40, orientation="facing right")
    left = render_object("car", "red", 80, 40, orientation="facing left")
    np.testing.assert_array_equal(left.labels, right.labels[:, ::-1])
    down = render_object("tree", "green", 45, 60, orientation="upside down")
    up = render_object("tree", "green", 45, 60, orientation="upright")
    np.testing.assert_array_equal(down.labels, up.labels[::-1, ::-1])


def test_tilt_changes_box_and_direction():
    up = render_object("ladder", "red", 27, 60)
    left = render_object("ladder", "red", 27, 60, orientation="tilted left", tilt=30)
    right = render_object("ladder", "red", 27, 60, orientation="tilted right", tilt=30)
    assert left.width > up.width and right.width > up.width
    # tilted left: the top leans left, so the top row's pixels sit left of the bottom row's
    def mean_x(row):
        return np.flatnonzero(row).mean()
    assert mean_x(left.mask[0]) < mean_x(left.mask[-1])
    assert mean_x(right.mask[0]) > mean_x(right.mask[-1])


def test_patterns_only_on_main_colour_and_parts_keep_colours():
    plain = render_object("car", "red", 120, 60, "plain", "facing right")
    striped = render_object("car", "red", 120, 60, "striped", "facing right")
    assert not (plain.labels & PATTERN_BIT).any()
    assert (striped.labels & PATTERN_BIT).any()
    # only the body (the main-colour paint) carries the pattern
    paints = DRAWINGS["car"].paint_list
    patterned_paints = set(np.unique(striped.labels[(striped.labels & PATTERN_BIT) > 0] & (EDGE_BIT - 1)))
    assert {paints[k - 1].part for k in patterned_paints} == {"body"}
    assert dict(zip(striped.parts, striped.part_colors)) == {"body": "red", "wheel": "black", "window": "cyan"}
    black = render_object("car", "black", 120, 60)
    assert dict(zip(black.parts, black.part_colors))["wheel"] == "gray"  # fallback on a black car


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown world category 'dragon'"):
        render_object("dragon", "red", 10, 10)
    with pytest.raises(ValueError, match="unknown colour 'mauve'"):
        render_object("car", "mauve", 10, 10)
    with pytest.raises(ValueError, match="unknown orientation"):
        render_object("car", "red", 10, 10, orientation="sideways")
    with pytest.raises(ValueError, match="unknown pattern"):
        render_object("car", "red", 40, 40, pattern="plaid")
    with pytest.raises(ValueError, match="unknown background kind"):
        make_background("marble", 10, 10, np.random.default_rng(0))


@pytest.mark.parametrize("kind", BACKGROUND_KINDS)
def test_backgrounds(kind):
    a = make_background(kind, 96, 64, np.random.default_rng(3))
    b = make_background(kind, 96, 64, np.random.default_rng(3))
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_a_missing_photo_sample_fails_instead_of_changing_the_world(monkeypatch):
    """A photo background never silently falls back to another kind (the world would depend on the machine)."""
    def unavailable():
        raise OSError("needs a download")

    for name in backgrounds.PHOTO_NAMES:
        monkeypatch.setattr(skimage.data, name, unavailable)
    backgrounds._photo.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="cannot be loaded: OSError: needs a download"):
            make_background("photo", 32, 32, np.random.default_rng(0))
        monkeypatch.setitem(sys.modules, "skimage.data", None)  # scikit-image not installed
        backgrounds._photo.cache_clear()
        with pytest.raises(RuntimeError, match="need scikit-image"):
            make_background("photo", 32, 32, np.random.default_rng(0))
    finally:
        backgrounds._photo.cache_clear()


def test_composite_pastes_back_to_front_and_clips():
    bg = np.zeros((50, 60, 3), dtype=np.uint8)
    a = render_object("heart", "red", 30, 27)
    b = render_object("heart", "blue", 30, 27)
    canvas = composite(bg, [a, b], [(-10, 5), (5, 5)])
    inst = canvas.instance_map
    assert (inst == 0).any() and (inst == 1).any()
    # where b's mask is, b wins
    ys, xs = np.nonzero(b.mask)
    assert (inst[ys + 5, xs + 5] == 1).all()
    assert tuple(canvas.image[ys[0] + 5, xs[0] + 5]) in {tuple(c) for c in b.lut[1:]}
    assert canvas.clip(0)[3].start == 10  # a is cut by the left border
    assert (canvas.image[inst == -1] == 0).all()
