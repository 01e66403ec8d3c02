"""Process-group helpers: the same code runs as one process or under ``torchrun``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


#: Environment that keeps NVLink multicast off (NCCL's NVLS algorithms and symmetric memory's multicast).
MULTICAST_OFF_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, ...).

    One process without those variables gives a plain single-process setup. CUDA uses NCCL, CPU gloo.
    NVLink multicast is switched off (:data:`MULTICAST_OFF_ENV`) unless the environment already says.
    A collective that waits longer than ``$CHATREX_DIST_TIMEOUT_S`` seconds (default 600) fails
    instead of hanging.
    """
    # NVLink multicast (NVLS in NCCL, multicast in symmetric memory) stays off: set here, in every process
    # the launcher starts, before any communicator exists; a value the user exported wins.
    for key, value in MULTICAST_OFF_ENV.items():
        os.environ.setdefault(key, value)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but no GPU is visible")
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.device(device).index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("CHATREX_DIST_TIMEOUT_S", "600")))
        if dev.type == "cuda":
            # binding the device lets NCCL know each rank's GPU up front (no guessing in barrier())
            dist.init_process_group(backend="nccl", rank=rank, world_size=world_size, timeout=timeout, device_id=dev)
        else:
            dist.init_process_group(backend="gloo", rank=rank, world_size=world_size, timeout=timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over processes (identity for one process).

    Processes may hold different keys (a loss term that only some batches produce): every key of any
    process is averaged over the processes that have it. Mismatched keys must not reach the collective
    itself, where tensors of different lengths would hang NCCL.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return dict(values)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, sorted(values))
    keys = sorted(set().union(*gathered))
    if not keys:
        return {}
    t = torch.tensor([[float(values.get(k, 0.0)), float(k in values)] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(total / count) for k, (total, count) in zip(keys, t.tolist())}


def all_agree(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on every process (``flag`` itself for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def all_agree_tensor(flag: torch.Tensor) -> torch.Tensor:
    """Whether the 0-d bool ``flag`` is true on every process, as a tensor on its device (no host copy)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = flag.float().reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t[0] > 0.5


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
