"""Counting: "how many <category>?" for each category an image contains; exact-match accuracy of
the number stated in the answer (and, for reference, of the number of boxes grounded)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from chatrex.evaluation.coco import region_in_level
from chatrex.evaluation.counting import counting_accuracy, parse_count
from chatrex.evaluation.datasets import EvalData, EvalDataError, coco_category_names, coco_image_annotations
from chatrex.evaluation.runners.common import Query, answer_stats, run_queries, sample_items


def counting_samples(data: EvalData, level: str = "instance") -> list[dict]:
    """``[{"image", "category", "count"}]``: one per (image, category present), categories sorted."""
    out = []
    if data.kind == "records":
        for rec in data.records:
            counts = Counter(r["category"] for r in rec.get("regions", [])
                             if region_in_level(r, level) and r.get("category"))
            out += [{"image": rec["image"], "record": rec.get("id"), "category": c, "count": n}
                    for c, n in sorted(counts.items())]
    elif data.kind == "coco":
        names = coco_category_names(data.coco)
        anns = coco_image_annotations(data.coco)
        for img in data.coco["images"]:
            counts = Counter(names[a["category_id"]] for a in anns[img["id"]])
            out += [{"image": img["path"], "image_id": img["id"], "category": c, "count": n}
                    for c, n in sorted(counts.items())]
    else:
        raise EvalDataError(f"counting needs JSONL records or a COCO annotation file, not {data.kind} data "
                            f"({data.source})")
    return out


def run_counting(
    predictor: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    level: str = "instance",
    granularity: str = "fine",
    min_score: float = 0.3,
    nms: Optional[float] = None,
    max_boxes: int = 100,
    progress: bool = True,
) -> dict:
    """Ask ``build_prompt("counting", categories=name)``; the first number in the answer text counts."""
    from chatrex.grounding.prompts import build_prompt

    samples = sample_items(counting_samples(data, level), limit)
    queries = [Query(s["image"], build_prompt("counting", categories=s["category"])) for s in samples]
    answers = run_queries(predictor, queries, batch_size=batch_size, granularity=granularity, min_score=min_score, nms=nms,
                          max_boxes=max_boxes, desc="counting", progress=progress)
    stated = [parse_count(a.text) for a in answers]
    grounded = [len({i for _, ix in a.groundings for i in ix}) for a in answers]
    truth = [s["count"] for s in samples]
    acc = counting_accuracy(stated, truth)
    acc_boxes = counting_accuracy(grounded, truth)
    metrics = {"accuracy": acc["accuracy"], "mae": acc["mae"], "num_samples": acc["num_samples"],
               "num_unparsed": acc["num_unparsed"], "grounded_count_accuracy": acc_boxes["accuracy"],
               **answer_stats(answers)}
    predictions = [{**s, "predicted": p, "grounded_boxes": g, "answer": a.to_dict()}
                   for s, p, g, a in zip(samples, stated, grounded, answers)]
    return {
        "task": "counting",
        "metrics": metrics,
        "headline": ["accuracy"],
        "config": {"level": level, "granularity": granularity, "min_score": min_score, "nms": nms, "max_boxes": max_boxes,
                   "limit": limit, "data": data.source, "data_kind": data.kind},
        "predictions": predictions,
    }
