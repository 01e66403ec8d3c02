"""Evaluation spread over the processes of a ``torchrun`` job: each answers its share, every one gets all.

::

    torchrun --nproc_per_node 8 --no-python chatrex eval referring --model M --data test.jsonl --out results/ref.json

Every process loads the model and the data and takes a contiguous block of the task's queries (blocks
keep the questions about one image together, so they still share its UPN pass, tower pass and prefill);
the answers are gathered back in the data's order, so every process holds the answers a single process
would have produced, each exactly once. The metrics are then computed from the whole list and only
process 0 writes the results file. Without a process group (one process) nothing changes.

Spread: the tasks that ask the pipeline (detection, referring, region, grounded-caption, counting, pope),
proposals and retrieval. ``object-tokens`` (a diagnostic with a probe fitted on all tokens) runs whole
in every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch.distributed as dist

__all__ = ["Shard", "current_shard"]


@dataclass(frozen=True)
class Shard:
    """This process's place in an evaluation spread over ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} does not fit a world of {self.world_size} processes")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def span(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this process's block of ``n`` items: blocks in rank order, sizes differing by
        at most one, together every item once."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def take(self, items: Sequence[Any]) -> list:
        """This process's block of ``items``."""
        start, stop = self.span(len(items))
        return list(items[start:stop])

    def gather(self, mine: Sequence[Any]) -> list:
        """Every process's block (what each passes as ``mine``, picklable), concatenated in rank order; the
        same list on every process. One process: ``mine`` as a list."""
        if self.world_size == 1:
            return list(mine)
        blocks: list[Any] = [None] * self.world_size
        dist.all_gather_object(blocks, list(mine))
        return [item for block in blocks for item in block]


def current_shard() -> Shard:
    """The shard of this process: its rank and the world size of the default process group, or a single
    process when no group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()
