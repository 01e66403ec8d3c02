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


def count_step_ops(model, opt, task, batch, device, amp: bool) -> dict[str, dict[str, float]]:
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
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    out["clip_and_optimizer"] = {"all": c.total, "non_view": c.compute}
    return out
