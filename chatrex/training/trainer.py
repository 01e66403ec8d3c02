"""One training loop for every task: CPU or GPU, one process or many (DDP / FSDP), bf16 autocast,
gradient accumulation and clipping, checkpoints with exact resume, loss curves.

Exact resume: the data order depends only on (seed, step) (:mod:`chatrex.training.sampler`), and a
checkpoint holds the trainable weights, the optimizer and scheduler states and every RNG state, so a
run that is killed and resumed ends with the same weights as one that never stopped. Checkpoints hold
tensors and plain values only and are read with ``torch.load(weights_only=True)``: resuming from a run
folder made by someone else cannot run code.

Writes are atomic: a checkpoint and the export are written as a temporary folder that then replaces
the old one (:mod:`chatrex.utils.atomic`), so a run killed while saving keeps its previous checkpoint
and export.

A step whose loss or gradient is not finite is skipped (no optimizer update, not in the logged means,
counted in the log's ``skipped``); ``train.max_bad_steps`` such steps in a row stop the run.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from chatrex.training.config import TrainConfig
from chatrex.training.curves import append_metrics, plot_curves, truncate_metrics
from chatrex.training.distributed import DistInfo, all_agree_tensor, all_reduce_mean, barrier, init_distributed
from chatrex.training.run_lock import RunLockedError, acquire_run_lock, release_run_lock
from chatrex.training.sampler import ResumableBatchSampler
from chatrex.training.task import TrainTask, compile_repeated_blocks, count_parameters, default_param_groups
from chatrex.utils.atomic import atomic_write_text, replace_directory, staged_directory

CHECKPOINT_DIR = "checkpoints"


class OutOfDeviceMemory(RuntimeError):
    """A training step ran out of accelerator memory; the message says what to lower."""


# cuDNN's fused attention reports an exhausted workspace as a failed graph execution, not as an OOM
_OOM_MARKERS = ("out of memory", "mha_graph.execute", "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_EXECUTION_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (also when cuDNN's attention reports it)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MARKERS)


def out_of_memory_message(cfg: TrainConfig, step: int, exc: BaseException) -> str:
    """What to tell the user when step ``step`` of a run configured by ``cfg`` ran out of memory."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    ckpt = find_latest_checkpoint(Path(cfg.output_dir))
    resume = f"the run resumes from {ckpt}" if ckpt is not None else "no checkpoint was written yet"
    hints = [f"halve train.batch_size ({cfg.batch_size}) and double train.grad_accum ({cfg.grad_accum}) "
             "for the same effective batch"]
    if not cfg.gradient_checkpointing:
        hints.append("set train.gradient_checkpointing=true")
    hints.append("or stop other processes on the same device")
    return (f"out of device memory at step {step} ({first[:200]}). To fit: " + "; ".join(hints)
            + f". {resume[0].upper()}{resume[1:]}.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class WarmupCosine:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` (an object, not a closure,
    so LambdaLR checkpoints ``total`` and the anchor below when a time budget changes the run's length).

    The cosine's progress runs linearly from ``anchor_progress`` at ``anchor_step`` to 1 at ``total``;
    initially from 0 at the end of the warm-up. :meth:`set_total` moves the end without a jump in the
    learning rate.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio
        self.anchor_step, self.anchor_progress = warmup, 0.0

    def progress(self, step: int) -> float:
        """Where ``step`` is on the cosine: 0 at the end of the warm-up, 1 at ``total`` and after."""
        done = max(0, step - self.anchor_step) / max(1, self.total - self.anchor_step)
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * done)

    def set_total(self, step: int, total: int) -> None:
        """End the schedule at ``total`` instead, from ``step`` on: the rest of the cosine is stretched or
        squeezed to fit, so the learning rate neither jumps nor rises again (a time budget re-estimates
        the run's length several times, and a longer estimate used to restart part of the decay)."""
        at = max(step, self.warmup)
        self.anchor_progress, self.anchor_step = self.progress(at), at
        self.total = total

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))


def lr_lambda(warmup: int, total: int, min_ratio: float) -> WarmupCosine:
    return WarmupCosine(warmup, total, min_ratio)


def _rng_state() -> dict[str, torch.Tensor]:
    """Every RNG state of this process as tensors (so that its file loads with ``weights_only=True``)."""
    version, words, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": torch.tensor([version, *words], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": torch.tensor([np_state["state"]["pos"], np_state["has_gauss"]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state["gauss"]], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    if isinstance(state["python"], tuple):  # a checkpoint written before the states were tensors
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
    else:
        words = state["python"].tolist()
        has_gauss, gauss = state["python_gauss"].tolist()
        random.setstate((int(words[0]), tuple(int(w) for w in words[1:]), gauss if has_gauss else None))
        pos, np_has_gauss = state["numpy_pos"].tolist()
        np.random.set_state({"bit_generator": "MT19937",
                             "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": int(pos)},
                             "has_gauss": int(np_has_gauss), "gauss": float(state["numpy_gauss"][0])})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _load_rng_file(path: Path) -> dict[str, Any]:
    """An ``rng_rank*.pt`` file, read with ``weights_only=True``; files of earlier versions, which pickled
    numpy's state, load with numpy's array reconstruction allowed (and nothing else)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        multiarray = getattr(np, "_core", None) or np.core
        allowed = [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)


def find_latest_checkpoint(output_dir: Path) -> Optional[Path]:
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith("step_") and (p / "complete").exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


def device_logs(logs: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """A task's logs as 0-d float32 tensors on ``device`` (tensors stay where they are: no host copy)."""
    out = {}
    for k, v in logs.items():
        t = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        out[k] = t.to(device=device, dtype=torch.float32, non_blocking=True).reshape(())
    return out


def read_means(acc: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]) -> dict[str, float]:
    """The logged means ``acc / counts`` as floats, with one copy from the device; keys whose every
    micro-step was skipped are left out."""
    if not acc:
        return {}
    keys = list(acc)
    sums = torch.stack([torch.as_tensor(acc[k]) for k in keys]).tolist()
    ns = torch.stack([torch.as_tensor(counts[k], dtype=torch.float32) for k in keys]).tolist()
    return {k: total / n for k, total, n in zip(keys, sums, ns) if n > 0}


class StepFlags:
    """Whether each optimizer step was finite, kept on the device and read once the device has
    computed it (a CUDA event per step), so the host never waits for the GPU to learn it."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[int, torch.Tensor, Any]] = []

    def push(self, step: int, finite: torch.Tensor) -> None:
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.append((step, finite, event))

    def pop_ready(self, wait: bool) -> list[tuple[int, bool]]:
        """(step, finite) of the steps whose flag is ready, in order; all of them when ``wait``."""
        out = []
        while self.pending:
            step, finite, event = self.pending[0]
            if event is not None and not wait and not event.query():
                break
            out.append((step, bool(finite)))
            self.pending.pop(0)
        return out


BUDGET_RECHECK_STEPS = 200  # with a time budget, re-estimate the run's length this often


class Trainer:
    """Runs ``task`` under ``config``.

    Args:
        task: a :class:`~chatrex.training.task.TrainTask`.
        config: the :class:`~chatrex.training.config.TrainConfig`.
        device: "cpu", "cuda" or None (GPU when available).
        progress: show a progress bar on the main process.
        clock: seconds, for the time budget and the logged speed (``time.perf_counter``; tests pass their own).
    """

    def __init__(self, task: TrainTask, config: TrainConfig, device: Optional[str] = None, progress: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.task = task
        self.clock = clock
        self.cfg = config
        self.dist: DistInfo = init_distributed(device)
        self.out = Path(config.output_dir)
        self.progress = progress and self.dist.is_main
        self.completed = False  # whether the last fit() reached the end of the run (not stop_after_s)
        self._elapsed_before, self._run_start = 0.0, None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "train_config.json", json.dumps(config.to_dict(), indent=2))
        barrier()

    # ---------------------------------------------------------------- setup
    def _wrap(self, model: nn.Module) -> nn.Module:
        strategy = self.cfg.strategy
        if strategy == "auto":
            strategy = "ddp" if self.dist.distributed else "none"
        self.strategy = strategy
        if strategy == "none":
            return model
        if not self.dist.distributed:
            raise RuntimeError(f"strategy {strategy!r} needs several processes; launch with torchrun")
        if strategy == "ddp":
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            unused = bool(getattr(self.task, "find_unused_parameters", False))
            return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)
        from torch.distributed.fsdp import fully_shard

        blocks = getattr(self.task, "repeated_blocks", None)
        for block in (blocks(model) if callable(blocks) else []):
            fully_shard(block)
        fully_shard(model)
        return model

    def _no_sync(self, model: nn.Module, sync: bool):
        if sync or self.strategy == "none":
            return contextlib.nullcontext()
        if self.strategy == "ddp":
            return model.no_sync()
        model.set_requires_gradient_sync(False)

        @contextlib.contextmanager
        def restore():
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return restore()

    def _elapsed(self) -> float:
        """Seconds this run has trained, over every process that worked on it (checkpointed)."""
        return self._elapsed_before + (self.clock() - self._run_start if self._run_start is not None else 0.0)

    # ---------------------------------------------------------------- checkpoints
    def _save(self, model: nn.Module, optimizer, scheduler, step: int) -> None:
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        root = self.out / CHECKPOINT_DIR
        final = root / f"step_{step:07d}"
        tmp = root / f".tmp_step_{step:07d}"
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            torch.save({"model": msd, "optimizer": osd, "scheduler": scheduler.state_dict(), "step": step,
                        "elapsed_s": self._elapsed(), "config": self.cfg.to_dict()}, tmp / "trainer_state.pt")
        barrier()
        torch.save(_rng_state(), tmp / f"rng_rank{self.dist.rank}.pt")
        barrier()
        if self.dist.is_main:
            (tmp / "complete").write_text(str(step))
            replace_directory(tmp, final)  # durable first; the old folder of this step (if any) until then
            kept = sorted((p for p in root.iterdir() if p.name.startswith("step_")), key=lambda p: p.name)
            for old in kept[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()

    def _load(self, path: Path, model: nn.Module, optimizer, scheduler) -> int:
        state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        saved = set(state["model"])
        missing = sorted(n for n in trainable if n not in saved and n.replace("module.", "", 1) not in saved)
        if missing:
            raise RuntimeError(f"checkpoint {path} lacks trainable parameters: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        set_model_state_dict(model, state["model"], options=StateDictOptions(full_state_dict=True, strict=False))
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(state["scheduler"])
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        rng = path / f"rng_rank{self.dist.rank}.pt"
        if rng.exists():
            _set_rng_state(_load_rng_file(rng))
        return int(state["step"])

    # ---------------------------------------------------------------- loop
    def fit(self, resume: bool = True, stop_after: Optional[int] = None) -> nn.Module:
        """Train to ``max_steps`` (resuming from the latest checkpoint when ``resume``).

        Args:
            stop_after: stop (with a checkpoint) after this many optimizer steps of the whole run —
                used to simulate an interruption in tests.

        Returns:
            The trained (unwrapped) model.

        Raises:
            RunLockedError: another live run writes to the same ``output_dir`` (:mod:`.run_lock`).
        """
        lock, refused = None, None
        if self.dist.is_main:
            try:
                lock = acquire_run_lock(self.out)
            except RunLockedError as exc:
                refused = exc
        # every process stops together when the folder is taken
        if all_reduce_mean({"refused": float(refused is not None)}, self.dist.device)["refused"] > 0:
            raise refused or RunLockedError(f"another training run writes to '{self.out}'")
        try:
            return self._fit(resume, stop_after)
        finally:
            if lock is not None:
                release_run_lock(lock)

    def _fit(self, resume: bool, stop_after: Optional[int]) -> nn.Module:
        cfg, dev = self.cfg, self.dist.device
        seed_everything(cfg.seed)
        model = self.task.build_model().to(dev)
        if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        if cfg.compile:
            compile_repeated_blocks(self.task, model)
        n_train = count_parameters(p for p in model.parameters() if p.requires_grad)
        raw_model = model
        model = self._wrap(model)
        groups_fn = getattr(self.task, "param_groups", None)
        groups = groups_fn(raw_model, cfg) if callable(groups_fn) else default_param_groups(raw_model, cfg.lr, cfg.weight_decay)
        # fused AdamW (CPU and CUDA): one kernel for every tensor, and it skips a non-finite step on its own
        fused = self.strategy != "fsdp"
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)
        schedule = WarmupCosine(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

        step, self._elapsed_before = 0, 0.0
        ckpt = find_latest_checkpoint(self.out) if resume else None
        if ckpt is not None:
            step = self._load(ckpt, model, optimizer, scheduler)
        metrics_path = self.out / "metrics.jsonl"
        if self.dist.is_main:
            if step == 0 and metrics_path.exists():
                metrics_path.unlink()
            elif step > 0:
                truncate_metrics(metrics_path, step)

        dataset = self.task.build_dataset()
        sampler = ResumableBatchSampler(len(dataset), cfg.batch_size, self.dist.world_size, self.dist.rank, cfg.seed,
                                        start_micro_step=step * cfg.grad_accum,
                                        num_micro_steps=cfg.max_steps * cfg.grad_accum)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=self.task.collate,
                                             num_workers=cfg.num_workers, pin_memory=dev.type == "cuda",
                                             persistent_workers=False,
                                             # own generator: worker seeding must not draw from the global
                                             # RNG, whose state a checkpoint restores
                                             generator=torch.Generator().manual_seed(cfg.seed))
        amp = torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()
        end = schedule.total if stop_after is None else min(schedule.total, stop_after)
        bar = self._progress(step, schedule.total, n_train, ckpt)
        # the budget's speed is measured from budget_step on: the first steps include compiling and
        # starting the workers, and an estimate that counted them planned far too few steps (the cosine
        # then decayed early in the run)
        run_start, budget_step = self.clock(), step + 20
        self._run_start = run_start
        self.completed = False
        rate_from: Optional[tuple[int, float]] = None
        model.train()
        # Logs and the finite check stay on the device: reading them every step would make the host wait
        # for the GPU at every step (kernel launches then stop queueing ahead). They are read at log and
        # save time, and each step's finite flag as soon as the device has computed it.
        acc: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}  # per key: a log only some batches produce is averaged over those
        step_logs: list[dict[str, torch.Tensor]] = []  # the micro-steps of this optimizer step
        flags = StepFlags(dev)
        bad_steps, skipped, t0, seen = 0, 0, self.clock(), 0
        grad_norm: Optional[torch.Tensor] = None
        # a fused optimizer skips a non-finite step itself (its ``found_inf``), without the host knowing
        device_skip = bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and fused

        def check_flags(wait: bool) -> None:
            nonlocal bad_steps, skipped
            for flag_step, ok in flags.pop_ready(wait):
                bad_steps = 0 if ok else bad_steps + 1
                skipped += not ok
                if bad_steps >= cfg.max_bad_steps:
                    raise FloatingPointError(
                        f"loss or gradient not finite for {bad_steps} steps in a row (step {flag_step}; "
                        f"train.max_bad_steps = {cfg.max_bad_steps}). Lower train.lr or check the data; "
                        f"the last checkpoint is {find_latest_checkpoint(self.out)}")

        for micro, batch in enumerate(loader):
            if step >= end:
                break
            sync = (micro + 1) % cfg.grad_accum == 0
            try:
                with self._no_sync(model, sync):
                    with amp:
                        loss, logs = self.task.compute_loss(model, batch, dev)
                    (loss / cfg.grad_accum).backward()
            except RuntimeError as exc:  # torch.OutOfMemoryError is one
                if is_out_of_memory(exc):
                    raise OutOfDeviceMemory(out_of_memory_message(cfg, step, exc)) from exc
                raise
            seen += cfg.batch_size
            step_logs.append(device_logs({"loss": loss.detach(), **logs}, dev))
            if not sync:
                continue
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
                    grad_norm = grad_norm.full_tensor()
            # this step only: its own micro-steps' losses and its gradient
            finite = torch.stack([m["loss"] for m in step_logs]).isfinite().all()
            if grad_norm is not None:
                finite = finite & grad_norm.isfinite()
            if self.dist.distributed:  # every process skips the same steps
                finite = all_agree_tensor(finite)
            if device_skip:
                optimizer.found_inf = (~finite).float()  # the fused step's documented skip input
                optimizer.grad_scale = None
                try:
                    optimizer.step()
                finally:
                    del optimizer.found_inf, optimizer.grad_scale
            elif bool(finite):  # waits for the device: CPU, or an optimizer that is not fused
                optimizer.step()
            for micro_logs in step_logs:
                for k, v in micro_logs.items():
                    acc[k] = acc.get(k, 0.0) + torch.where(finite, v, 0.0)
                    counts[k] = counts.get(k, 0) + finite.float()
            flags.push(step + 1, finite)
            check_flags(wait=False)
            step_logs = []
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            since = step - budget_step
            if cfg.time_budget_s and since == 0:
                rate_from = (step, self.clock())
            elif cfg.time_budget_s and since > 0 and (since in (20, 60, 140) or since % BUDGET_RECHECK_STEPS == 0):
                # estimated from 20 steps, then re-estimated: a GPU shared with another run can slow down
                now = self.clock()
                per_step = (now - rate_from[1]) / (step - rate_from[0])
                fitted = self._fit_budget(schedule, step, per_step, self._elapsed(), bar)
                end = fitted if stop_after is None else min(fitted, stop_after)
            pause = False
            if step % cfg.log_every == 0 or step == end:
                check_flags(wait=True)
                means = read_means(acc, counts)
                if cfg.stop_after_s is not None:  # every process stops at the same step
                    means["_pause"] = float(self.clock() - run_start >= cfg.stop_after_s)
                logs_mean = all_reduce_mean(means, dev)
                pause = logs_mean.pop("_pause", 0.0) > 0 and step < end
                dt = self.clock() - t0
                record = {"step": step, "lr": scheduler.get_last_lr()[0], **logs_mean,
                          "samples_per_s": seen * self.dist.world_size / max(dt, 1e-9), "skipped": skipped}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                if self.dist.is_main:
                    append_metrics(metrics_path, record)
                acc, counts, t0, seen, skipped = {}, {}, self.clock(), 0, 0
                if bar is not None:
                    bar[0].update(bar[1], completed=step,
                                  description=f"{self.task.name} loss {record.get('loss', float('nan')):.4f}")
            elif bar is not None:
                bar[0].update(bar[1], completed=step)
            if step % cfg.save_every == 0 or step == end or pause:
                check_flags(wait=True)  # a run that must stop stops before it saves
                self._save(model, optimizer, scheduler, step)
                if self.dist.is_main:
                    plot_curves(metrics_path, self.out / "loss.png", title=self.task.name)
            if pause:
                if self.dist.is_main:
                    print(f"{self.task.name}: paused at step {step} of {schedule.total} after "
                          f"{cfg.stop_after_s:.0f} s (train.stop_after_s); the same command continues", flush=True)
                break
            if cfg.export_every and step % cfg.export_every == 0 and step < schedule.total:
                self._export(model, raw_model, "latest")
        if bar is not None:
            bar[0].stop()
        if step >= schedule.total:
            self._export(model, raw_model)
            self.completed = True
        return raw_model

    def _fit_budget(self, schedule: WarmupCosine, step: int, per_step: float, elapsed: float, bar) -> int:
        """Set the schedule's length so that the run ends within ``time_budget_s``: ``elapsed`` s have
        gone, and the rest runs at ``per_step`` s per step (averaged over the processes)."""
        # the same numbers on every process, so that every process plans the same number of steps
        agreed = all_reduce_mean({"t": per_step, "elapsed": elapsed}, self.dist.device)
        per_step, elapsed = agreed["t"], agreed["elapsed"]
        left = self.cfg.time_budget_s - elapsed
        total = max(step + 1, min(self.cfg.max_steps, step + int(left / max(per_step, 1e-9))))
        if total != schedule.total:
            schedule.set_total(step, total)
            if self.dist.is_main:
                print(f"time budget {self.cfg.time_budget_s:.0f} s at {per_step:.3f} s/step: "
                      f"training {total} steps instead of {self.cfg.max_steps}", flush=True)
            if bar is not None:
                bar[0].update(bar[1], total=total)
        return schedule.total

    def _export(self, model: nn.Module, raw_model: nn.Module, name: str = "final") -> None:
        """The task's export into ``output_dir/name``, written beside it first and then put in place of the
        old one, so that a reader never sees half an export and a failed export keeps the previous one."""
        target = self.out / name
        export_model = raw_model
        if self.strategy == "fsdp":  # every process takes part in gathering the weights
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.dist.is_main:
                export_model = self.task.build_model()
                export_model.load_state_dict(full)
        if self.dist.is_main:
            with staged_directory(target) as staging:  # replaces target only once the export is complete
                self.task.export(export_model, staging)
        barrier()

    def _progress(self, start: int, total: int, n_train: int, ckpt: Optional[Path]):
        if not self.progress:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = Console(stderr=True)
        where = f"resumed from {ckpt.name}" if ckpt else "from scratch"
        console.print(f"[bold]{self.task.name}[/]: {n_train:,} trainable parameters, {self.dist.world_size} process(es) "
                      f"on {self.dist.device.type}, {self.strategy}, {self.cfg.precision}, {where}")
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TimeRemainingColumn(), console=console, transient=False)
        tid = bar.add_task(self.task.name, total=total, completed=start)
        bar.start()
        return bar, tid
