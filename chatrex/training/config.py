"""Training configuration: one plain dataclass shared by every task (UPN, ChatRex stages)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional


@dataclass
class TrainConfig:
    """How to train; what to train is the task's business (see ``chatrex.training.task``).

    Attributes:
        output_dir: run folder: checkpoints/, metrics.jsonl, loss.png and the exported model.
        max_steps: optimizer steps to run.
        batch_size: samples per process per micro-step.
        grad_accum: micro-steps per optimizer step.
        lr: peak learning rate (tasks may scale it per parameter group).
        weight_decay: AdamW weight decay (not applied to norms, biases and embeddings).
        warmup_steps: linear warm-up steps, then cosine decay to ``lr * min_lr_ratio``.
        grad_clip: max global gradient norm (<= 0 disables clipping).
        max_bad_steps: a step whose loss or gradient is not finite is skipped (no update); this many
            such steps in a row stop the run with ``FloatingPointError``.
        precision: "fp32" or "bf16" (autocast; master weights stay fp32).
        gradient_checkpointing: trade compute for memory where the model supports it.
        compile: compile each of the task's repeated blocks (``task.repeated_blocks``, e.g. the LLM's
            decoder layers) with ``torch.compile`` for dynamic shapes: regional compilation, which fuses
            each block's many small operators into fewer kernels (eager steps of small models on a GPU
            tend to be bound by the host's operator dispatch). The first steps pay the compilation. Not
            with FSDP.
        strategy: "auto" (DDP when several processes, else none), "none", "ddp" or "fsdp".
        save_every: checkpoint every N optimizer steps (and always at the end).
        keep_checkpoints: how many step checkpoints to keep on disk.
        export_every: if > 0, also write the task's export every N optimizer steps to
            ``output_dir/latest`` (replaced each time; ``final`` is still written at the end): a usable
            model from a run that may not finish, e.g. on a machine that can be taken away.
        log_every: write a metrics line every N optimizer steps.
        seed: seeds model init, data order and augmentation.
        num_workers: DataLoader workers per process.
        betas: AdamW betas.
        time_budget_s: if set, after 40 steps the run is shortened (schedule included) so that it
            ends within this many seconds, at the speed of steps 20-40 (the first steps, which compile
            and start the workers, are left out), and re-estimated later; the length is checkpointed,
            and so is the training time already spent, so a resumed run keeps to the same budget.
        stop_after_s: this process stops after about this many seconds (checked at each log step), with
            a checkpoint; the same command continues the run where it stopped (for machines lent in
            short slices). ``Trainer.completed`` then says False, and ``chatrex train`` exits with 75.
    """

    output_dir: str = "runs/default"
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    max_bad_steps: int = 10
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    compile: bool = False
    strategy: str = "auto"
    save_every: int = 500
    keep_checkpoints: int = 2
    export_every: int = 0
    log_every: int = 10
    seed: int = 0
    num_workers: int = 2
    betas: tuple[float, float] = (0.9, 0.999)
    time_budget_s: Optional[float] = None
    stop_after_s: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.strategy not in ("auto", "none", "ddp", "fsdp"):
            raise ValueError(f"strategy must be auto, none, ddp or fsdp, got {self.strategy!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "save_every", "log_every", "max_bad_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.compile and self.strategy == "fsdp":
            raise ValueError("train.compile does not work with strategy 'fsdp' here; use 'ddp' or 'none'")
        if int(self.export_every) < 0:
            raise ValueError(f"export_every must be >= 0 (0: only the final export), got {self.export_every}")
        self.betas = tuple(self.betas)  # JSON gives lists

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)


def _parse_value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_recipe(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Read a recipe JSON (``{"task": {...}, "train": {...}}``) and apply dotted overrides.

    Args:
        overrides: ``{"train.lr": 1e-4, "task.data.files": '["a.jsonl"]'}``; string values are parsed
            as JSON when they are JSON (numbers, lists, booleans), else kept as strings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"recipe {path} is not valid JSON: {exc}") from exc
    if not isinstance(recipe, dict) or "train" not in recipe or "task" not in recipe:
        raise ValueError(f"recipe {path} must be an object with 'task' and 'train' sections")
    for key, value in (overrides or {}).items():
        parts = key.split(".")
        if parts[0] not in ("task", "train") or len(parts) < 2 or not all(parts):
            raise ValueError(f"override {key!r} must look like 'train.lr' or 'task.data.files'")
        node = recipe
        for part in parts[:-1]:
            if not isinstance(node.setdefault(part, {}), dict):
                raise ValueError(f"override {key!r}: {part!r} is not a section")
            node = node[part]
        node[parts[-1]] = _parse_value(value)
    return recipe
