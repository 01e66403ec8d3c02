"""What one training step costs, counted on any device (used by the ``*_train_step.py`` scripts).

* Operators: on a GPU nearly every ATen operator that is not a view is a kernel launch, and eager
  PyTorch spends some microseconds of host time on each, so their count bounds how fast the host can
  drive a step, whatever the device. It does not depend on the device, except the optimizer's (per
  tensor on CPU; fused or multi-tensor on CUDA).
* Activations: the bytes autograd saves for the backward pass (parameters apart), the bulk of a
  training step's memory beyond weights and optimizer state; counted on CPU, they stand in for the GPU
  memory a batch needs (float32 on CPU, where a GPU under bf16 autocast saves many of them in half).
"""

from __future__ import annotations

import json
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while active: all of them, and those that are not views."""

    def __init__(self) -> None:
        super().__init__()
        self.total = self.compute = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        self.compute += not func.is_view
        return func(*args, **(kwargs or {}))


class SavedActivations:
    """Context manager: the bytes of the distinct storages autograd saves for backward while active,
    storages of ``params`` apart (``.gib`` after exit)."""

    def __init__(self, params) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.sizes: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.skip:
            self.sizes[storage.data_ptr()] = storage.nbytes()
        return t

    def __enter__(self) -> "SavedActivations":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def gib(self) -> float:
        return sum(self.sizes.values()) / 2**30


def _optimizer_step(model, opt, grad_clip: float) -> None:
    """Clip the gradients, step and clear them, as the trainer does."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def count_step_ops(model, opt, task, batch, device, amp: bool, grad_clip: float) -> dict[str, dict[str, float]]:
    """Operators of one training step of ``task`` (a ``TrainTask``) by phase: {phase: {"all": n, "non_view": n}};
    the forward's entry also holds ``saved_gib``, the activations it saves for backward (:class:`SavedActivations`)."""
    out = {}
    with OpCounter() as c, SavedActivations(model.parameters()) as saved:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = task.compute_loss(model, batch, device)
    out["forward_and_loss"] = {"all": c.total, "non_view": c.compute, "saved_gib": round(saved.gib, 3)}
    with OpCounter() as c:
        loss.backward()
    out["backward"] = {"all": c.total, "non_view": c.compute}
    with OpCounter() as c:
        _optimizer_step(model, opt, grad_clip)
    out["clip_and_optimizer"] = {"all": c.total, "non_view": c.compute}
    return out


def train_step(model, opt, task, batches: list, device: torch.device, amp: bool, grad_clip: float):
    """``step(i)``: one optimizer step of ``task`` on ``batches[i % len(batches)]``, as the trainer runs it
    (bf16 autocast when ``amp``, clipping, AdamW); returns the task's logs."""

    def step(i: int) -> dict:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, logs = task.compute_loss(model, batches[i % len(batches)], device)
        loss.backward()
        _optimizer_step(model, opt, grad_clip)
        return logs

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device: torch.device, steps: int, warmup: int) -> dict[str, float | None]:
    """Mean time of ``steps`` calls of ``step(i)`` after ``warmup`` untimed ones: ``ms_per_step`` and,
    on CUDA, the peak memory of the timed steps (``peak_mem_gib``)."""
    for i in range(warmup):
        step(i)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
    return {"ms_per_step": round(dt * 1000, 1), "peak_mem_gib": peak}


# Dense bf16 tensor-core peaks (datasheet, SXM parts), for MFU.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device`` from :data:`PEAK_BF16_TFLOPS` (None when unknown or on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def count_step_flops(step, i: int = 0) -> int:
    """Floating-point operations of one ``step(i)`` (forward, backward and optimizer), counted by
    ``torch.utils.flop_counter`` (matrix products, convolutions and attention; elementwise work is not
    counted, so MFU from this count is a lower bound of the work done)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(i)
    return int(counter.get_total_flops())


def gpu_busy(step, device: torch.device, steps: int = 5, first: int = 0) -> dict[str, float] | None:
    """The share of wall-clock time the GPU spends in kernels over ``steps`` steps, from the profiler's
    device-side kernel records (kernels of one stream do not overlap; the union of the intervals is used
    so that concurrent streams are not counted twice). None on CPU."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(first + i)
        _sync(device)
        wall = time.perf_counter() - t0
    intervals = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                       if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    busy_us, cur_s, cur_e = 0.0, None, None
    for s, e in intervals:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy_us += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy_us += cur_e - cur_s
    return {"gpu_busy_pct": round(100.0 * busy_us / 1e6 / wall, 1), "profiled_ms_per_step": round(wall / steps * 1000, 1)}


def profile_table(step, device: torch.device, steps: int = 2, rows: int = 30) -> str:
    """``torch.profiler``'s table of the top operators by self time (CUDA time on a GPU) over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(steps):
            step(i)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def add_step_arguments(ap, batch: int) -> None:
    """The options every ``*_train_step.py`` script takes (data, batch, timing, device, what to report)."""
    ap.add_argument("--data", required=True, help="a world JSONL file")
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--count-ops", action="store_true", help="count the operators of one step, by phase")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")


def report(result: dict, args, step, model, opt, task, batch, device: torch.device, amp: bool, grad_clip: float,
           profile_steps: int = 2) -> None:
    """Print ``result`` as one JSON line, with the step's operator counts when ``args.count_ops``; append it
    to ``args.json``; print the profiler's table when ``args.profile``. On a GPU, ``result`` gains the
    share of time the GPU is busy (:func:`gpu_busy`), the FLOPs of a step and the MFU (FLOP/s over the
    device's dense bf16 peak)."""
    if device.type == "cuda" and not getattr(args, "no_busy", False):
        result.update(gpu_busy(step, device) or {})
        flops = count_step_flops(step)
        result["tflop_per_step"] = round(flops / 1e12, 3)
        peak = peak_tflops(device)
        if peak and result.get("ms_per_step"):
            achieved = flops / (result["ms_per_step"] / 1000) / 1e12
            result["achieved_tflops"] = round(achieved, 1)
            result["mfu_pct"] = round(100 * achieved / peak, 2)
    print(json.dumps(result))
    if args.count_ops:
        counts = count_step_ops(model, opt, task, batch, device, amp, grad_clip)
        print(json.dumps({"ops_per_step": counts}))
        result["ops_per_step"] = counts
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.profile:
        print(profile_table(step, device, steps=profile_steps))
