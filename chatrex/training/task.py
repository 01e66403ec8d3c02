"""What a trainer needs to know about a task (UPN, ChatRex stage 1, ChatRex stage 2, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TrainTask(Protocol):
    """A training task. The trainer owns the loop, precision, distribution and checkpoints.

    ``build_model`` must be deterministic given the seed already set by the trainer: on resume the
    model is rebuilt and only the trainable parameters are restored from the checkpoint.
    """

    name: str

    def build_model(self) -> nn.Module:
        """The module to train (it may wrap the exported model together with training-only parts)."""

    def build_dataset(self) -> torch.utils.data.Dataset:
        """The training dataset; items are fetched with ``SeededIndex`` keys (see sampler.py)."""

    def collate(self, samples: list[Any]) -> Any:
        """Batch a list of dataset items."""

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Move ``batch`` to ``device``, run ``model`` (possibly DDP/FSDP-wrapped) and return the loss
        to minimise plus scalar logs (e.g. loss components)."""

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """Write the trained model in its user-facing format (``save_pretrained``)."""

    # Optional: ``repeated_blocks(model) -> list[nn.Module]``, the model's repeated blocks (e.g. transformer
    # layers). FSDP shards each of them, and ``train.compile`` compiles each of them.


def compile_repeated_blocks(task: Any, model: nn.Module) -> int:
    """Compile each of ``task.repeated_blocks(model)`` in place, for dynamic shapes; returns their number.

    Raises:
        ValueError: the task names no repeated blocks.
    """
    blocks_of = getattr(task, "repeated_blocks", None)
    blocks = list(blocks_of(model)) if callable(blocks_of) else []
    if not blocks:
        raise ValueError(f"train.compile: the task {getattr(task, 'name', type(task).__name__)!r} names no "
                         "repeated blocks to compile (task.repeated_blocks)")
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def default_param_groups(model: nn.Module, lr: float, weight_decay: float,
                         lr_multipliers: Optional[dict[str, float]] = None,
                         no_decay: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """AdamW groups: no decay for biases, norms and embeddings; per-prefix learning-rate multipliers.

    Args:
        lr_multipliers: ``{name_prefix: factor}``; the first matching prefix scales that parameter's lr.
        no_decay: further parameters without weight decay, e.g. one of which only some rows train (a
            gradient hook zeroes the others): AdamW's decay would shrink the frozen rows too.
    """
    excluded = {id(p) for p in no_decay}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay_here = (id(p) in excluded or p.ndim <= 1 or "embed" in name or "norm" in name
                         or name.endswith(".bias"))
        factor = 1.0
        for prefix, f in (lr_multipliers or {}).items():
            if name.startswith(prefix):
                factor = f
                break
        key = (lr * factor, 0.0 if no_decay_here else weight_decay)
        groups.setdefault(key, []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [{"params": ps, "lr": k[0], "weight_decay": k[1]} for k, ps in groups.items()]


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)
