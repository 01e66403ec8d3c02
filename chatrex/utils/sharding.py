"""Splitting a state dict into safetensors shards of bounded size (a tensor is never split)."""

from __future__ import annotations

from typing import Mapping

import torch


def split_into_shards(tensors: Mapping[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Group ``tensors`` in order into dicts of at most ``max_bytes`` each; a tensor larger than the limit
    gets a shard of its own. Always returns at least one (possibly empty) shard."""
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards
