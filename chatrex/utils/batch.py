"""Moving a processor's output (a ``BatchFeature`` or dict of tensors) to the model's device and dtype."""

from __future__ import annotations

from typing import Any

import torch


def batch_to(batch: Any, device: Any, dtype: torch.dtype) -> dict[str, Any]:
    """A processor's output on ``device``: tensors and lists of tensors moved, the floating ones (pixels)
    also cast to ``dtype``; ``boxes`` stay float32 (in bfloat16 a coordinate of the 768 px frame would be off
    by up to 3 px); anything else kept as it is."""
    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    out: dict[str, Any] = {}
    for key, value in dict(batch).items():
        if isinstance(value, torch.Tensor):
            value = move(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            value = [v.to(device) if key == "boxes" else move(v) for v in value]
        out[key] = value
    return out
