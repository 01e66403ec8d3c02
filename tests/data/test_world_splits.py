"""Splits: disjoint seed ranges, and the compositional split's held-out (colour, category) pairs."""

from __future__ import annotations

import numpy as np
import pytest

from chatrex.data.world.scene import WorldConfig, generate_scene, sample_layout
from chatrex.data.world.splits import (
    HELDOUT_PAIRS, SPLITS, record_id, split_config, split_of_seed, split_seed,
)

# few categories and colours, so that held-out pairs would come up often if they were not blocked
NARROW = WorldConfig(min_side=96, max_side=192, categories=("car", "house", "cat", "fish", "tree"),
                     colors=("red", "blue", "green", "yellow", "purple"))
NARROW_PAIRS = {p for p in HELDOUT_PAIRS if p[1] in NARROW.categories and p[0] in NARROW.colors}


def test_seed_ranges_are_disjoint():
    ranges = sorted(SPLITS.values(), key=lambda r: r.start)
    for a, b in zip(ranges, ranges[1:]):
        assert a.stop <= b.start
    for name, rng in SPLITS.items():
        assert split_of_seed(rng.start) == name and split_of_seed(rng.stop - 1) == name
        assert split_seed(name, 5) == rng.start + 5


def test_seed_leaving_its_split_is_refused():
    with pytest.raises(ValueError, match="leaves the split"):
        split_seed("val", SPLITS["val"].size)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        split_seed("dev", 0)


def test_heldout_pairs_never_sampled_outside_test_comp():
    assert len(NARROW_PAIRS) >= 4
    for split in ("train", "val", "test"):
        cfg = split_config(split, NARROW)
        for i in range(150):
            layout = sample_layout(np.random.default_rng(split_seed(split, i)), cfg)
            pairs = {(o.color, o.category) for o in layout.objects}
            assert not (pairs & set(HELDOUT_PAIRS)), (split, i, pairs & set(HELDOUT_PAIRS))


def test_heldout_pairs_absent_from_train_records_and_present_in_test_comp():
    train_cfg = split_config("train", NARROW)
    for i in range(12):
        _, rec = generate_scene(split_seed("train", i), train_cfg)
        pairs = {(r["attributes"]["color"], r["category"]) for r in rec["regions"] if r["level"] == "instance"}
        assert not (pairs & set(HELDOUT_PAIRS))
    comp_cfg = split_config("test-comp", NARROW)
    for i in range(12):
        _, rec = generate_scene(split_seed("test-comp", i), comp_cfg)
        pairs = {(r["attributes"]["color"], r["category"]) for r in rec["regions"] if r["level"] == "instance"}
        assert pairs & set(HELDOUT_PAIRS), i


def test_unrestricted_configs_by_split():
    assert split_config("test-comp").required_pairs == HELDOUT_PAIRS
    assert split_config("test-comp").forbidden_pairs == ()
    assert set(HELDOUT_PAIRS) <= set(split_config("train").forbidden_pairs)
    assert record_id("val", 12) == "world-val-0000012"
