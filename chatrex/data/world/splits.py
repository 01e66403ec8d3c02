"""Dataset splits of the world: fixed, disjoint seed ranges, and a compositional split.

Scene ``i`` of a split is generated from seed ``SPLITS[split].start + seed_offset + i``; the seed
ranges do not overlap, so nothing of val/test can occur in train. The **compositional** split
("test-comp") holds out a fixed list of (colour, category) combinations, :data:`HELDOUT_PAIRS`: the
generator never draws them in train, val or test (the colour is resampled), and draws one or two of
them, fully visible on top, in every test-comp scene. A model that learnt "red" and "car" separately
but never saw a red car is measured there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from chatrex.data.world.scene import WorldConfig


@dataclass(frozen=True)
class SeedRange:
    """Seeds ``[start, stop)`` of a split."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def __contains__(self, seed: int) -> bool:
        return self.start <= seed < self.stop


#: Seed range of each split (disjoint).
SPLITS: dict[str, SeedRange] = {
    "train": SeedRange(0, 100_000_000),
    "val": SeedRange(100_000_000, 101_000_000),
    "test": SeedRange(101_000_000, 102_000_000),
    "test-comp": SeedRange(102_000_000, 103_000_000),
}
SPLIT_NAMES: tuple[str, ...] = tuple(SPLITS)

#: (colour, category) combinations never seen in train/val/test and always present in test-comp.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "car"),
    ("blue", "house"),
    ("green", "cat"),
    ("yellow", "fish"),
    ("purple", "tree"),
    ("orange", "umbrella"),
    ("pink", "robot"),
    ("white", "boat"),
    ("black", "bird"),
    ("cyan", "cup"),
)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")


def split_seed(split: str, index: int, seed_offset: int = 0) -> int:
    """The seed of scene ``index`` of ``split``; raises if it would leave the split's range."""
    _check_split(split)
    rng = SPLITS[split]
    if index < 0 or seed_offset < 0:
        raise ValueError(f"index and seed_offset must be >= 0, got {index}, {seed_offset}")
    seed = rng.start + seed_offset + index
    if seed not in rng:
        raise ValueError(f"{split} scene {index} with seed offset {seed_offset} leaves the split's "
                         f"{rng.size:,} seeds")
    return seed


def split_of_seed(seed: int) -> Optional[str]:
    """The split whose range holds ``seed`` (None if none does)."""
    for name, rng in SPLITS.items():
        if seed in rng:
            return name
    return None


def split_config(split: str, base: Optional[WorldConfig] = None) -> WorldConfig:
    """The world config of ``split``: ``base`` (default config if None) with the held-out pairs
    forbidden (train/val/test) or required (test-comp)."""
    _check_split(split)
    base = base or WorldConfig()
    if split == "test-comp":
        return replace(base, forbidden_pairs=(), required_pairs=HELDOUT_PAIRS)
    forbidden = tuple(dict.fromkeys(tuple(base.forbidden_pairs) + HELDOUT_PAIRS))
    return replace(base, forbidden_pairs=forbidden, required_pairs=())


def record_id(split: str, index: int) -> str:
    """The record id of scene ``index`` of ``split`` ("world-train-0000123")."""
    return f"world-{split}-{index:07d}"
