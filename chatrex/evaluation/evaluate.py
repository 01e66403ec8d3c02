"""One entry point for every evaluation: load the data, run the task's runner with a predictor,
write the JSON + markdown results. The ``chatrex eval`` commands are thin wrappers around
:func:`evaluate`, so it can be called with any stand-in predictor."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Callable, Optional

from chatrex.evaluation.datasets import EvalData, load_eval_data
from chatrex.evaluation.report import write_results
from chatrex.evaluation.runners import (run_counting, run_detection, run_grounded_caption, run_object_tokens, run_pope,
                                        run_proposals, run_referring, run_region, run_retrieval)
from chatrex.evaluation.sharding import current_shard

#: Task name → runner. ``proposals`` takes a UPN (``.inference``); the others a pipeline
#: (``object-tokens`` and ``retrieval`` read its ``.model`` and ``.processor``, they generate nothing).
RUNNERS: dict[str, Callable[..., dict]] = {
    "detection": run_detection,
    "proposals": run_proposals,
    "referring": run_referring,
    "region": run_region,
    "grounded-caption": run_grounded_caption,
    "counting": run_counting,
    "pope": run_pope,
    "object-tokens": run_object_tokens,
    "retrieval": run_retrieval,
}
TASKS = tuple(RUNNERS)


def evaluate(
    task: str,
    predictor: Any,
    data: str | Path | EvalData,
    images: str | Path | None = None,
    out: str | Path | None = None,
    limit: Optional[int] = None,
    batch_size: int = 8,
    progress: bool = True,
    model_name: Optional[str] = None,
    **options: Any,
) -> dict:
    """Run ``task`` on ``data`` with ``predictor`` and return the result dict.

    Args:
        task: one of :data:`TASKS`.
        predictor: a ``ChatRexPipeline`` (or anything with its call signature); for ``proposals`` a
            ``UPNWrapper`` (or anything with ``inference(images, prompt_type)``).
        data: a ``.jsonl`` of records, a COCO ``.json``, a RefCOCO-style ``.json``, or loaded
            :class:`EvalData`.
        images: image folder for COCO/RefCOCO files (default: the data file's folder).
        out: where to write the JSON (a ``.md`` table is written beside it); None writes nothing. In a
            ``torchrun`` job (:mod:`chatrex.evaluation.sharding`) process 0 writes it.
        limit: evaluate only the first N images / samples (as each task counts them).
        options: task-specific keyword arguments of the runner (e.g. ``level``, ``kind``).
    """
    if task not in RUNNERS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    runner = RUNNERS[task]
    accepted = set(inspect.signature(runner).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"task {task!r} does not take option(s) {unknown}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    if not isinstance(data, EvalData):
        data = load_eval_data(data, images)
    start = time.perf_counter()
    result = runner(predictor, data, limit=limit, batch_size=batch_size, progress=progress, **options)
    result["config"]["model"] = model_name
    result["config"]["batch_size"] = batch_size
    result["wall_seconds"] = round(time.perf_counter() - start, 3)
    if out is not None and current_shard().is_main:  # a torchrun job writes its merged results once
        json_path, md_path = write_results(result, out)
        result["files"] = {"json": str(json_path), "markdown": str(md_path)}
    return result
