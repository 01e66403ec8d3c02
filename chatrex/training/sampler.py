"""A resumable, distributed batch sampler whose order depends only on (seed, epoch).

Step ``s`` of a run always sees the same samples, however the run was interrupted and resumed, so a
resumed run reproduces an uninterrupted one exactly. Each sample also carries its own seed for
augmentation, so worker processes need no shared random state.
"""

from __future__ import annotations

from typing import Iterator

import torch

from chatrex.data.seeded_index import SeededIndex


class ResumableBatchSampler:
    """Yields this process's batches of :class:`SeededIndex` for global steps ``start_step`` onwards.

    Args:
        num_samples: dataset length.
        batch_size: samples per process per micro-step.
        world_size, rank: process layout; each global micro-step uses ``batch_size * world_size``
            distinct samples, split by rank.
        seed: base seed of the permutation and of the per-sample seeds.
        start_micro_step: first micro-step to yield (resume point).
        num_micro_steps: total micro-steps of the run.
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, start_micro_step: int = 0, num_micro_steps: int = 1) -> None:
        global_batch = batch_size * world_size
        if num_samples < global_batch:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch "
                f"({batch_size} x {world_size} processes = {global_batch})"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.start = start_micro_step
        self.total = num_micro_steps
        self.steps_per_epoch = num_samples // global_batch

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[list[SeededIndex]]:
        epoch, perm = -1, None
        for step in range(self.start, self.total):
            e, pos = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            base = (pos * self.world_size + self.rank) * self.batch_size
            idx = perm[base : base + self.batch_size].tolist()
            yield [SeededIndex(i, (self.seed * 7919 + e * 104_729 + i) % (2**31 - 1)) for i in idx]

    def __len__(self) -> int:
        return max(0, self.total - self.start)
