"""POPE-style existence questions (random / popular / adversarial negatives)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from chatrex.evaluation.coco import region_in_level
from chatrex.evaluation.datasets import EvalData, EvalDataError, coco_category_names, coco_image_annotations
from chatrex.evaluation.pope import SETTINGS, build_pope_questions, parse_yes_no, pope_metrics
from chatrex.evaluation.runners.common import Query, answer_stats, limit_items, run_queries

QUESTION = "Is there a {category} in the image? Answer yes or no."


def image_categories(data: EvalData, level: str = "instance") -> list[tuple[str, set]]:
    """``[(image path, {category, ...})]`` for every image."""
    if data.kind == "records":
        return [(rec["image"], {r["category"] for r in rec.get("regions", [])
                                if region_in_level(r, level) and r.get("category")}) for rec in data.records]
    if data.kind == "coco":
        names = coco_category_names(data.coco)
        anns = coco_image_annotations(data.coco)
        return [(img["path"], {names[a["category_id"]] for a in anns[img["id"]]}) for img in data.coco["images"]]
    raise EvalDataError(f"pope needs JSONL records or a COCO annotation file, not {data.kind} data ({data.source})")


def run_pope(
    predictor: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    settings: Sequence[str] = SETTINGS,
    num_per_image: int = 3,
    seed: int = 0,
    level: str = "instance",
    granularity: str = "fine",
    min_score: float = 0.3,
    nms: Optional[float] = None,
    max_boxes: int = 100,
    progress: bool = True,
) -> dict:
    """Questions are built over the whole data set's vocabulary (so "popular" and "adversarial" see
    all images), then the first ``limit`` images are asked. The question goes through the
    conversation prompt: ``build_prompt("conversation", question="Is there a … ? Answer yes or no.")``."""
    from chatrex.grounding.prompts import build_prompt

    images = image_categories(data, level)
    keep = len(limit_items(images, limit))
    metrics: dict = {}
    predictions = []
    for setting in settings:
        questions = [q for q in build_pope_questions([c for _, c in images], setting, num_per_image, seed)
                     if q.image_index < keep]
        queries = [Query(images[q.image_index][0], build_prompt("conversation", question=QUESTION.format(category=q.category)))
                   for q in questions]
        answers = run_queries(predictor, queries, batch_size=batch_size, granularity=granularity, min_score=min_score, nms=nms,
                              max_boxes=max_boxes, desc=f"pope ({setting})", progress=progress)
        said = [parse_yes_no(a.text) for a in answers]
        m = pope_metrics(said, [q.label for q in questions])
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio", "num_samples", "num_unparsed"):
            metrics[f"{setting}/{key}"] = m[key]
        metrics[f"{setting}/answers_with_dropped_markup"] = answer_stats(answers)["answers_with_dropped_markup"]
        predictions += [{"setting": setting, "image": images[q.image_index][0], "category": q.category,
                         "label": "yes" if q.label else "no",
                         "predicted": None if s is None else ("yes" if s else "no"), "answer": a.text}
                        for q, s, a in zip(questions, said, answers)]
    return {
        "task": "pope",
        "metrics": metrics,
        "headline": [f"{s}/{k}" for s in settings for k in ("accuracy", "f1", "yes_ratio")],
        "config": {"settings": list(settings), "num_per_image": num_per_image, "seed": seed, "level": level,
                   "granularity": granularity, "limit": limit, "data": data.source, "data_kind": data.kind},
        "predictions": predictions,
    }
