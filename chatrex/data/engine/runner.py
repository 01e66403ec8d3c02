"""Running the engine over a folder: locally (one process or a multiprocessing pool) or on Ray Data.

Every backend runs the same :func:`~chatrex.data.engine.process.process_image` with steps built from
a :class:`~chatrex.data.engine.spec.StepsSpec` once per worker; the parent process alone writes the
output (:class:`~chatrex.data.engine.store.EngineStore`), one durable line per finished image, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from .collect import ImageTask, collect_tasks
from .process import EngineConfig, ImageProcessingError, process_image
from .spec import StepsSpec
from .steps import EngineSteps
from .store import EngineStore

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


class EngineBackendError(RuntimeError):
    """The requested backend cannot run here (e.g. ``ray`` is not installed)."""


@dataclass
class EngineSummary:
    """What one call of :func:`run_engine` did."""

    out_dir: str
    total: int
    skipped: int
    done: int = 0
    rejected: int = 0
    failed: int = 0
    status: str = "running"
    repairs: list[str] = field(default_factory=list)

    @property
    def records_path(self) -> str:
        return str(Path(self.out_dir) / "records.jsonl")


class _Worker:
    """Steps built lazily from a spec, once per process (or Ray actor), then reused for every image."""

    def __init__(self, spec: dict[str, Any], config: dict[str, Any], records_dir: str) -> None:
        self.spec = StepsSpec.from_dict(spec)
        self.config = EngineConfig.from_dict(config)
        self.records_dir = records_dir
        self._steps: Optional[EngineSteps] = None

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        if self._steps is None:
            self._steps = self.spec.build()
        return process_image(ImageTask.from_dict(task), self._steps, self.config, self.records_dir)


# One worker object per pool process (set by the pool initializer; each process has its own copy).
_POOL_WORKER: Optional[_Worker] = None


def _pool_init(spec: dict[str, Any], config: dict[str, Any], records_dir: str) -> None:
    global _POOL_WORKER
    _POOL_WORKER = _Worker(spec, config, records_dir)


def _pool_run(task: dict[str, Any]) -> dict[str, Any]:
    assert _POOL_WORKER is not None, "pool worker used before its initializer ran"
    return _POOL_WORKER(task)


def _run_inline(tasks: list[ImageTask], spec: StepsSpec, config: EngineConfig, records_dir: str) -> Iterator[dict[str, Any]]:
    worker = _Worker(spec.to_dict(), config.to_dict(), records_dir)
    for task in tasks:
        yield worker(task.to_dict())


def _run_pool(tasks: list[ImageTask], spec: StepsSpec, config: EngineConfig, records_dir: str, workers: int,
              start_method: str) -> Iterator[dict[str, Any]]:
    ctx = mp.get_context(start_method)
    pool = ctx.Pool(workers, initializer=_pool_init, initargs=(spec.to_dict(), config.to_dict(), records_dir))
    try:
        yield from pool.imap_unordered(_pool_run, [t.to_dict() for t in tasks], chunksize=1)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


class _RayBatchWorker:
    """Callable class for ``Dataset.map_batches``: one per Ray actor, steps built once."""

    def __init__(self, spec: dict[str, Any], config: dict[str, Any], records_dir: str) -> None:
        self.worker = _Worker(spec, config, records_dir)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        outcomes = [json.dumps(self.worker(json.loads(str(t)))) for t in batch["task"]]
        return {"outcome": outcomes}


def _run_ray(tasks: list[ImageTask], spec: StepsSpec, config: EngineConfig, records_dir: str, workers: int,
             ray_remote_args: Optional[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    try:
        import ray  # noqa: F401
        import ray.data
    except ImportError as exc:
        raise EngineBackendError(
            "backend 'ray' needs Ray Data, which is not installed: pip install 'ray[data]' "
            "(or run with --backend local)"
        ) from exc
    if not tasks:
        return
    ds = ray.data.from_items([{"task": json.dumps(t.to_dict())} for t in tasks])
    ds = ds.map_batches(
        _RayBatchWorker,
        fn_constructor_kwargs={"spec": spec.to_dict(), "config": config.to_dict(), "records_dir": records_dir},
        batch_size=1,
        concurrency=max(1, workers),
        **(ray_remote_args or {}),
    )
    for row in ds.iter_rows():
        yield json.loads(str(row["outcome"]))


def run_engine(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: StepsSpec,
    *,
    workers: int = 1,
    backend: str = "local",
    config: Optional[EngineConfig] = None,
    progress: bool = True,
    limit: Optional[int] = None,
    start_method: str = "spawn",
    ray_remote_args: Optional[dict[str, Any]] = None,
) -> EngineSummary:
    """Annotate every image under ``images_dir`` into ``out_dir/records.jsonl``, resuming if possible.

    Args:
        images_dir: folder of images (searched recursively).
        out_dir: output folder (created); an earlier run's output there is resumed.
        steps: how each worker builds its stages.
        workers: processes (local) or actors (ray). ``1`` runs in this process.
        backend: ``"local"`` or ``"ray"`` (needs ``ray[data]``).
        config: thresholds and error policy.
        progress: show a progress bar.
        limit: process at most this many pending images (handy for a trial run).
        start_method: multiprocessing start method for ``workers > 1`` (``"spawn"`` is safe with CUDA).
        ray_remote_args: extra ``map_batches`` arguments for Ray (e.g. ``{"num_gpus": 1}``).

    Returns:
        An :class:`EngineSummary`. Raises :class:`~chatrex.data.engine.process.ImageProcessingError`
        when a stage fails and ``config.on_error == "raise"``; ``KeyboardInterrupt`` propagates. In both
        cases every finished image is already on disk and ``state.json`` says how the run ended.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if backend == "ray":
        try:
            import ray.data  # noqa: F401
        except ImportError as exc:
            raise EngineBackendError(
                "backend 'ray' needs Ray Data, which is not installed: pip install 'ray[data]' "
                "(or run with --backend local)"
            ) from exc
    config = config or EngineConfig()
    steps.check()
    images_dir = os.path.abspath(os.fspath(images_dir))
    out_dir = os.path.abspath(os.fspath(out_dir))
    tasks = collect_tasks(images_dir)
    store = EngineStore(out_dir)
    done = store.open({"images_dir": images_dir, "steps": steps.to_dict(), "config": config.to_dict(),
                       "backend": backend, "workers": workers, "total": len(tasks)})
    pending = [t for t in tasks if t.key not in done]
    summary = EngineSummary(out_dir=out_dir, total=len(tasks), skipped=len(tasks) - len(pending),
                            repairs=list(store.repairs))
    if limit is not None:
        pending = pending[: max(0, int(limit))]
    if backend == "ray":
        outcomes = _run_ray(pending, steps, config, out_dir, workers, ray_remote_args)
    elif workers == 1:
        outcomes = _run_inline(pending, steps, config, out_dir)
    else:
        outcomes = _run_pool(pending, steps, config, out_dir, min(workers, max(1, len(pending))), start_method)
    bar = _progress_bar(len(pending), progress)
    status = "failed"
    try:
        for outcome in outcomes:
            store.append(outcome)
            if outcome["status"] == "done":
                summary.done += 1
            elif outcome["status"] == "rejected":
                summary.rejected += 1
            else:
                summary.failed += 1
                logger.warning("engine: %s", outcome.get("reason"))
            bar.update(1)
            bar.set_postfix(done=summary.done, rejected=summary.rejected, failed=summary.failed, refresh=False)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        bar.close()
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()  # stops the pool of an unfinished generator
        store.close(status)
        summary.status = status
    return summary


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="data engine", unit="img", disable=not enabled, dynamic_ncols=True)


__all__ = ["BACKENDS", "EngineBackendError", "EngineSummary", "ImageProcessingError", "run_engine"]
