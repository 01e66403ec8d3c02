"""Referring expression comprehension: Acc@0.5 of the first grounded box."""

from __future__ import annotations

from typing import Any, Optional

from chatrex.evaluation.datasets import EvalData, EvalDataError
from chatrex.evaluation.referring import referring_accuracy
from chatrex.evaluation.runners.common import Query, answer_stats, limit_items, rounded_box, run_queries


def referring_samples(data: EvalData) -> list[dict]:
    """``[{"image", "expression", "box"}]``: one per RefCOCO expression, or per record region with a
    ``referring`` expression."""
    if data.kind == "refcoco":
        return [{"image": it["image"], "expression": e, "box": it["box"]} for it in data.refcoco
                for e in it["expressions"]]
    if data.kind == "records":
        return [{"image": rec["image"], "expression": r["referring"], "box": r["box"], "record": rec.get("id"),
                 "region": r.get("id")}
                for rec in data.records for r in rec.get("regions", []) if (r.get("referring") or "").strip()]
    raise EvalDataError(f"referring needs RefCOCO-style JSON or JSONL records, not {data.kind} data ({data.source})")


def run_referring(
    predictor: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    granularity: str = "fine",
    min_score: float = 0.3,
    max_boxes: int = 100,
    threshold: float = 0.5,
    progress: bool = True,
) -> dict:
    """Ask ``build_prompt("referring", expression=...)`` per sample; the first grounded box of the
    answer (first grounding with an index) is compared with the ground truth."""
    from chatrex.grounding.prompts import build_prompt

    samples = limit_items(referring_samples(data), limit)
    queries = [Query(s["image"], build_prompt("referring", expression=s["expression"])) for s in samples]
    answers = run_queries(predictor, queries, batch_size=batch_size, granularity=granularity, min_score=min_score,
                          max_boxes=max_boxes, desc="referring", progress=progress)
    firsts = []
    for ans in answers:
        idx = next((ix[0] for _, ix in ans.groundings if ix), None)
        firsts.append(None if idx is None else ans.boxes[idx])
    acc = referring_accuracy(firsts, [s["box"] for s in samples], threshold=threshold)
    predictions = [
        {**s, "box": rounded_box(s["box"]), "predicted_box": None if b is None else rounded_box(b),
         "iou": None if iou is None else round(iou, 4), "correct": iou is not None and iou >= threshold,
         "answer": ans.to_dict()}
        for s, b, iou, ans in zip(samples, firsts, acc["ious"], answers)
    ]
    metrics = {f"Acc@{threshold:g}": acc["accuracy"], "num_samples": acc["num_samples"],
               "num_without_box": acc["num_without_box"],
               **answer_stats(answers)}
    return {
        "task": "referring",
        "metrics": metrics,
        "headline": [f"Acc@{threshold:g}"],
        "config": {"granularity": granularity, "min_score": min_score, "max_boxes": max_boxes,
                   "threshold": threshold, "limit": limit, "data": data.source, "data_kind": data.kind},
        "predictions": predictions,
    }
