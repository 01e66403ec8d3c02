"""Referring expression comprehension: Acc@0.5 of the first grounded box.

The model picks among the UPN's proposals (``boxes="proposals"``, the paper's protocol) or, for world
records, among the image's ground-truth regions (``boxes="gt"``, the target always included): a
diagnostic that leaves the proposals' recall out and reports ``chance@<t>``, the accuracy of an index
drawn at random.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

from chatrex.evaluation.datasets import EvalData, EvalDataError
from chatrex.evaluation.referring import referring_accuracy
from chatrex.evaluation.runners.common import Query, answer_stats, rounded_box, run_queries, sample_items


def referring_samples(data: EvalData) -> list[dict]:
    """``[{"image", "expression", "box"}]``: one per RefCOCO expression, or per record region with a
    ``referring`` expression (then also ``record``, ``region``, the region's ``level`` and ``category``)."""
    if data.kind == "refcoco":
        return [{"image": it["image"], "expression": e, "box": it["box"]} for it in data.refcoco
                for e in it["expressions"]]
    if data.kind == "records":
        return [{"image": rec["image"], "expression": r["referring"], "box": r["box"], "record": rec.get("id"),
                 "region": r.get("id"), "level": r.get("level", "instance"), "category": r.get("category")}
                for rec in data.records for r in rec.get("regions", []) if (r.get("referring") or "").strip()]
    raise EvalDataError(f"referring needs RefCOCO-style JSON or JSONL records, not {data.kind} data ({data.source})")


def regions_by_image(data: EvalData) -> dict[tuple, list[dict]]:
    """{(record id, image): the record's regions} of JSONL records."""
    return {(rec.get("id"), rec["image"]): rec.get("regions", []) for rec in data.records}


def ground_truth_box_lists(data: EvalData, samples: list[dict], max_boxes: int = 100) -> list[list[list[float]]]:
    """For each sample of :func:`referring_samples`: its image's ground-truth regions (every level), at most
    ``max_boxes`` of them with the target always among them, in an order drawn with the record id and
    region id as seed, with the image's file name rather than its path (the same every run, wherever the
    data lives)."""
    if data.kind != "records":
        raise EvalDataError(f"ground-truth boxes need JSONL records, not {data.kind} data ({data.source})")
    regions = regions_by_image(data)
    lists = []
    for s in samples:
        rng = random.Random(f"{s['record']}|{Path(s['image']).name}|{s['region']}")
        others = [r for r in regions[(s["record"], s["image"])] if r.get("id") != s["region"]]
        others = rng.sample(others, min(len(others), max_boxes - 1))
        boxes = [[float(v) for v in s["box"]]] + [[float(v) for v in r["box"]] for r in others]
        rng.shuffle(boxes)
        lists.append(boxes)
    return lists


def ious_with_target(box_list: list, target: list):
    """(N,) IoU of each box of ``box_list`` (N xyxy boxes, N may be 0) with ``target``."""
    from chatrex.evaluation.boxes import as_boxes, box_iou

    return box_iou(as_boxes(box_list, "box list"), as_boxes(target, "target box"))[:, 0]


def best_iou(box_list: list, target: list) -> float:
    """The highest IoU of any box of ``box_list`` with ``target`` (0.0 for an empty list)."""
    ious = ious_with_target(box_list, target)
    return float(ious.max()) if len(ious) else 0.0


def random_index_accuracy(box_list: list, target: list, threshold: float) -> float:
    """Accuracy of an index drawn uniformly from ``box_list``: the share of its boxes with IoU ≥ threshold."""
    ious = ious_with_target(box_list, target)
    return float((ious >= threshold).mean()) if len(ious) else 0.0


def per_level(levels: list, correct: list[bool], best: list[float], threshold: float, oracle: bool) -> dict:
    """``Acc@<t>/<level>``, ``num_samples/<level>`` and (``oracle``) ``oracle@<t>/<level>`` for each
    region level (instance, part) when the samples' ``levels`` hold more than one; {} otherwise."""
    names = sorted({v for v in levels if v})
    if len(names) < 2:
        return {}
    out = {}
    for level in names:
        sel = [i for i, v in enumerate(levels) if v == level]
        out[f"Acc@{threshold:g}/{level}"] = sum(correct[i] for i in sel) / len(sel)
        if oracle:
            out[f"oracle@{threshold:g}/{level}"] = sum(best[i] >= threshold for i in sel) / len(sel)
        out[f"num_samples/{level}"] = len(sel)
    return out


WRONG_PICK_KINDS = ("same_category", "other_category", "no_region", "no_box")


def wrong_pick_kinds(data: EvalData, samples: list[dict], picked: list, ious: list[Optional[float]],
                     threshold: float) -> list[Optional[str]]:
    """What each wrong pick of a world record's expression fits instead of the target.

    ``picked`` holds each sample's picked box (None: none) and ``ious`` its IoU with the target (None:
    no box), as :func:`chatrex.evaluation.referring.referring_accuracy` returns them. For a sample whose
    picked box misses the target (IoU < ``threshold``): "same_category" when it fits
    (IoU ≥ ``threshold``) another region of the target's category, so that the expression's attribute,
    position or parent told them apart; "other_category" when the regions it fits are all of other
    categories; "no_region" when it fits no annotated region; "no_box" when the answer grounded
    nothing. None for a right pick, and for every sample of data without regions.
    """
    if data.kind != "records":
        return [None] * len(samples)
    regions = regions_by_image(data)
    kinds: list[Optional[str]] = []
    for s, box, iou in zip(samples, picked, ious):
        if box is None:
            kinds.append("no_box")
            continue
        if iou >= threshold:
            kinds.append(None)
            continue
        others = [r for r in regions.get((s.get("record"), s["image"]), []) if r.get("id") != s.get("region")]
        overlaps = ious_with_target([r["box"] for r in others], box) if others else []
        fits = [r for v, r in zip(overlaps, others) if v >= threshold]
        if not fits:
            kinds.append("no_region")
        elif any(r.get("category") == s.get("category") for r in fits):
            kinds.append("same_category")
        else:
            kinds.append("other_category")
    return kinds


def run_referring(
    predictor: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    granularity: str = "fine",
    min_score: float = 0.3,
    nms: Optional[float] = None,
    max_boxes: int = 100,
    threshold: float = 0.5,
    progress: bool = True,
    boxes: str = "proposals",
) -> dict:
    """Ask ``build_prompt("referring", expression=...)`` per sample; the first grounded box of the
    answer (first grounding with an index) is compared with the ground truth.

    ``boxes``: "proposals" (the UPN's, the paper's protocol) or "gt" (world records: the image's
    ground-truth regions, at most ``max_boxes``; see :func:`ground_truth_box_lists`).
    """
    from chatrex.grounding.prompts import build_prompt

    if boxes not in ("proposals", "gt"):
        raise ValueError(f"boxes must be 'proposals' or 'gt', got {boxes!r}")
    samples = sample_items(referring_samples(data), limit)
    given = ground_truth_box_lists(data, samples, max_boxes) if boxes == "gt" else [None] * len(samples)
    queries = [Query(s["image"], build_prompt("referring", expression=s["expression"]), boxes=b)
               for s, b in zip(samples, given)]
    answers = run_queries(predictor, queries, batch_size=batch_size, granularity=granularity, min_score=min_score, nms=nms,
                          max_boxes=max_boxes, desc="referring", progress=progress)
    firsts = []
    for ans in answers:
        idx = next((ix[0] for _, ix in ans.groundings if ix), None)
        firsts.append(None if idx is None else ans.boxes[idx])
    acc = referring_accuracy(firsts, [s["box"] for s in samples], threshold=threshold)
    best = [best_iou(ans.boxes, s["box"]) for ans, s in zip(answers, samples)]
    wrong = wrong_pick_kinds(data, samples, firsts, acc["ious"], threshold)
    predictions = [
        {**s, "box": rounded_box(s["box"]), "predicted_box": None if b is None else rounded_box(b),
         "iou": None if iou is None else round(iou, 4), "correct": iou is not None and iou >= threshold,
         "best_iou": round(top, 4), **({"wrong_pick": kind} if kind else {}), "answer": ans.to_dict()}
        for s, b, iou, top, kind, ans in zip(samples, firsts, acc["ious"], best, wrong, answers)
    ]
    metrics = {f"Acc@{threshold:g}": acc["accuracy"], "num_samples": acc["num_samples"],
               "num_without_box": acc["num_without_box"],
               **answer_stats(answers)}
    if boxes == "proposals" and samples:
        # the most a perfect pick among the given proposals could score, and how many were given
        metrics[f"oracle@{threshold:g}"] = sum(v >= threshold for v in best) / len(best)
        metrics["boxes_per_query"] = sum(len(a.boxes) for a in answers) / len(answers)
    if boxes == "gt" and samples:
        chance = [random_index_accuracy(b, s["box"], threshold) for b, s in zip(given, samples)]
        metrics[f"chance@{threshold:g}"] = sum(chance) / len(chance)
        metrics["boxes_per_query"] = sum(len(b) for b in given) / len(given)
    if data.kind == "records" and samples:
        # where the wrong picks went: another object of the target's category, another category, nothing
        metrics.update({f"wrong/{k}": sum(w == k for w in wrong) / len(samples) for k in WRONG_PICK_KINDS})
    metrics.update(per_level([s.get("level") for s in samples], [p["correct"] for p in predictions], best,
                             threshold, oracle=boxes == "proposals"))
    return {
        "task": "referring",
        "metrics": metrics,
        "headline": [f"Acc@{threshold:g}"],
        "config": {"boxes": boxes, "granularity": granularity, "min_score": min_score, "nms": nms, "max_boxes": max_boxes,
                   "threshold": threshold, "limit": limit, "data": data.source, "data_kind": data.kind},
        "predictions": predictions,
    }
