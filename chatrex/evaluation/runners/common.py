"""Batched querying of a predictor and robust reading of its answers."""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from chatrex.evaluation.boxes import BoxError, as_boxes
from chatrex.evaluation.sharding import current_shard


class PredictorError(RuntimeError):
    """The predictor returned something the evaluation cannot read (wrong count, malformed boxes)."""


@dataclass
class Query:
    """One request: an image file, the question, and optionally the boxes (or the regions: boxes and
    masks, ``ChatRexPipeline(regions=...)``) to give the model."""

    image: str
    question: str
    boxes: Optional[list] = None
    regions: Optional[list] = None


@dataclass
class Answer:
    """A predictor's answer in plain data.

    ``groundings`` are ``(phrase, indices)`` with only the indices that exist among ``boxes``;
    ``invalid_indices`` counts those dropped for pointing past the box list.
    """

    text: str
    raw_text: str
    boxes: list
    scores: Optional[list]
    groundings: list = field(default_factory=list)
    invalid_indices: int = 0
    dropped: list = field(default_factory=list)

    def score_of(self, index: int) -> float:
        return float(self.scores[index]) if self.scores is not None else 1.0

    def to_dict(self) -> dict:
        return {"text": self.text, "raw_text": self.raw_text,
                "groundings": [{"phrase": p, "indices": list(ix)} for p, ix in self.groundings],
                "invalid_indices": self.invalid_indices, "dropped": list(self.dropped)}


def to_answer(result: Any, where: str = "result") -> Answer:
    """Read a pipeline result (``.answer``/``.raw_text``/``.boxes``/``.scores``).

    A result without a parsed ``answer`` has its ``raw_text`` parsed with
    :func:`chatrex.grounding.parse_grounded`. Indices outside the box list are dropped and counted.
    """
    raw = getattr(result, "raw_text", None)
    raw = "" if raw is None else str(raw)
    try:
        boxes = as_boxes(getattr(result, "boxes", None), f"{where}.boxes").tolist()
    except BoxError as exc:
        raise PredictorError(f"the predictor returned malformed boxes: {exc}") from None
    scores = getattr(result, "scores", None)
    if scores is not None:
        scores = [float(s) for s in list(scores)]
        if len(scores) != len(boxes):
            raise PredictorError(f"{where}: {len(boxes)} boxes but {len(scores)} scores")
    answer = getattr(result, "answer", None)
    if answer is None:
        from chatrex.grounding.parser import parse_grounded

        answer = parse_grounded(raw, num_boxes=len(boxes))
    groundings, invalid = [], 0
    for g in getattr(answer, "groundings", None) or []:
        ix = [int(i) for i in (getattr(g, "indices", None) or [])]
        ok = [i for i in ix if 0 <= i < len(boxes)]
        invalid += len(ix) - len(ok)
        groundings.append((str(getattr(g, "phrase", "") or ""), list(dict.fromkeys(ok))))
    return Answer(text=str(getattr(answer, "text", "") or ""), raw_text=raw, boxes=boxes, scores=scores,
                  groundings=groundings, invalid_indices=invalid,
                  dropped=list(getattr(answer, "dropped", None) or []))


def batches(items: Sequence[Any], size: int):
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    for i in range(0, len(items), size):
        yield items[i : i + size]


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="query", disable=not enabled, leave=False)


def _takes(predictor: Any, name: str) -> bool:
    """Whether the predictor names a parameter ``name`` (the pipeline names ``batch_size`` and ``on_answer``;
    stand-ins may not)."""
    try:
        return name in inspect.signature(predictor).parameters
    except (TypeError, ValueError):
        return False


def run_queries(
    predictor: Callable[..., Sequence[Any]],
    queries: Sequence[Query],
    batch_size: int = 8,
    granularity: str = "fine",
    min_score: float = 0.3,
    max_boxes: int = 100,
    desc: str = "evaluating",
    progress: bool = True,
    nms: Optional[float] = None,
) -> list[Answer]:
    """Ask ``predictor`` every query, ``batch_size`` at a time, and read the answers.

    In an evaluation spread over processes (:func:`chatrex.evaluation.sharding.current_shard`) this process
    asks its block of the queries and the answers of all come back in order, on every process.

    ``nms`` (the proposals' NMS IoU) is passed on only when given; otherwise the predictor uses its own.

    Images are loaded with :func:`chatrex.utils.image.load_image` (each file once per batch). Queries
    with ``boxes`` pass them to the predictor (the whole batch must then carry boxes); queries with
    ``regions`` pass those as ``regions=`` (likewise). The progress bar moves per answer when the predictor
    reports each one (an ``on_answer`` callback), else per batch.
    """
    from chatrex.utils.image import load_image

    extra: dict[str, Any] = {}
    if _takes(predictor, "batch_size"):
        extra["batch_size"] = batch_size
    if nms is not None:
        extra["nms"] = nms
    shard = current_shard()
    queries = shard.take(queries)
    answers: list[Answer] = []
    with progress_bar(len(queries), desc, progress and shard.is_main) as bar:
        reported = [0]  # answers of the current batch the predictor has reported as done

        def on_answer() -> None:
            reported[0] += 1
            bar.update(1)

        if _takes(predictor, "on_answer"):
            extra["on_answer"] = on_answer
        for chunk in batches(list(queries), batch_size):
            reported[0] = 0
            cache: dict = {}
            images = []
            for q in chunk:
                if q.image not in cache:
                    cache[q.image] = load_image(q.image)
                images.append(cache[q.image])
            with_boxes = [q.boxes is not None for q in chunk]
            if any(with_boxes) and not all(with_boxes):
                raise ValueError("a batch mixes queries with and without boxes")
            with_regions = [q.regions is not None for q in chunk]
            if any(with_regions) and not all(with_regions):
                raise ValueError("a batch mixes queries with and without regions")
            if all(with_regions) and any(with_boxes):
                raise ValueError("a query gives both boxes and regions")
            boxes = [q.boxes for q in chunk] if all(with_boxes) else None
            kwargs = dict(extra)
            if all(with_regions):
                kwargs["regions"] = [q.regions for q in chunk]
            results = predictor(images, [q.question for q in chunk], boxes=boxes, granularity=granularity,
                                min_score=min_score, max_boxes=max_boxes, **kwargs)
            results = list(results)
            if len(results) != len(chunk):
                raise PredictorError(f"the predictor returned {len(results)} results for {len(chunk)} queries")
            answers.extend(to_answer(r, f"result for '{q.image}'") for r, q in zip(results, chunk))
            bar.update(max(0, len(chunk) - reported[0]))
    return shard.gather(answers)


def answer_stats(answers: Sequence[Answer]) -> dict:
    """How malformed the answers were: indices past the box list that reached us, and answers whose
    parser dropped markup (bad tags, out-of-range indices; see ``GroundedAnswer.dropped``)."""
    return {"invalid_indices": sum(a.invalid_indices for a in answers),
            "answers_with_dropped_markup": sum(1 for a in answers if a.dropped)}


def limit_items(items: Sequence[Any], limit: Optional[int]) -> list:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    return list(items) if limit is None else list(items)[:limit]


#: Seed of :func:`sample_items`: every run of a limited per-region task asks about the same samples.
SAMPLE_SEED = 0


def sample_items(items: Sequence[Any], limit: Optional[int], seed: int = SAMPLE_SEED) -> list:
    """At most ``limit`` of ``items``: all of them, or a fixed random subset kept in data order.

    For tasks with many samples per image (referring expressions, regions, categories to count): the
    first ``limit`` samples would all come from the first image or two (a world image holds about 40
    referring expressions), so a limited run would measure a handful of scenes.
    """
    items = list(items)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def rounded_box(box: Sequence[float]) -> list:
    return [round(float(v), 2) for v in box]
