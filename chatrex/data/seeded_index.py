"""What a dataset receives from the training sampler: a sample index and that sample's augmentation seed.

``chatrex.training.sampler.ResumableBatchSampler`` yields :class:`SeededIndex` items; datasets read them
with :func:`split_index`, which also accepts plain integer indices (no seed).
"""

from __future__ import annotations

from typing import NamedTuple


class SeededIndex(NamedTuple):
    """What a dataset receives: the sample index and a seed for that sample's augmentation."""

    index: int
    seed: int


def split_index(item: "int | SeededIndex") -> tuple[int, int | None]:
    """Return ``(index, seed)``; plain integer indices have no seed."""
    if isinstance(item, SeededIndex):
        return item.index, item.seed
    return int(item), None
