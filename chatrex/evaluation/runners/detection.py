"""Detection (paper protocol): ask for the image's ground-truth categories over UPN fine-grained
proposals; grounded phrases map to categories; P/R@0.5 per class (macro) and COCO mAP."""

from __future__ import annotations

from typing import Any, Optional

from chatrex.evaluation.boxes import xywh_to_xyxy
from chatrex.evaluation.coco import coco_from_records, coco_map, detections_to_results
from chatrex.evaluation.datasets import (EvalData, EvalDataError, coco_category_names, coco_image_annotations,
                                         data_synonyms)
from chatrex.evaluation.detection import ImageDetections, ImageGroundTruth, precision_recall_per_class
from chatrex.evaluation.runners.common import Query, answer_stats, limit_items, rounded_box, run_queries
from chatrex.evaluation.text import SynonymTable


def detection_ground_truth(data: EvalData, level: str = "instance") -> dict:
    """The COCO dict to evaluate against (records are converted in memory; images get ``path``)."""
    if data.kind == "coco":
        return data.coco
    if data.kind == "records":
        coco = coco_from_records(data.records, level=level)
        for img in coco["images"]:
            img["path"] = img["file_name"]
        return coco
    raise EvalDataError(f"detection needs a COCO annotation file or JSONL records, not {data.kind} data ({data.source})")


def run_detection(
    predictor: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    level: str = "instance",
    granularity: str = "fine",
    min_score: float = 0.3,
    nms: Optional[float] = None,
    max_boxes: int = 100,
    iou_threshold: float = 0.5,
    use_default_synonyms: bool = True,
    progress: bool = True,
) -> dict:
    """Evaluate detection on the first ``limit`` images (all images count, with or without objects).

    Each image with annotations is asked ``build_prompt("detection", categories=<its categories>)``;
    a grounded phrase names a category when it equals it after normalisation or is a synonym
    (built-in table plus the data's: LVIS-style ``synonyms`` or the records' ``synonyms`` maps); the boxes at its indices become
    detections with the proposals' scores as confidences. Phrases naming no asked category are
    ignored and reported as ``unmatched_phrases``.
    """
    from chatrex.grounding.prompts import build_prompt

    coco = detection_ground_truth(data, level)
    names = coco_category_names(coco)
    name_to_id = {n: i for i, n in names.items()}
    synonyms = data_synonyms(data)
    anns = coco_image_annotations(coco)
    images = limit_items(coco["images"], limit)

    asked = {}
    queries, query_images = [], []
    for img in images:
        cats = sorted({names[a["category_id"]] for a in anns[img["id"]]})
        asked[img["id"]] = cats
        if cats:
            queries.append(Query(img["path"], build_prompt("detection", categories=cats)))
            query_images.append(img["id"])
    answers = run_queries(predictor, queries, batch_size=batch_size, granularity=granularity, min_score=min_score, nms=nms,
                          max_boxes=max_boxes, desc="detection", progress=progress)
    answer_of = dict(zip(query_images, answers))

    gts, dets, results, predictions = [], [], [], []
    unmatched_total = 0
    for img in images:
        gt_anns = anns[img["id"]]
        gts.append(ImageGroundTruth(xywh_to_xyxy([a["bbox"] for a in gt_anns]) if gt_anns else [],
                                    [names[a["category_id"]] for a in gt_anns]))
        ans = answer_of.get(img["id"])
        found: dict = {}
        unmatched: list = []
        if ans is not None:
            table = SynonymTable(asked[img["id"]], synonyms, use_defaults=use_default_synonyms)
            for phrase, indices in ans.groundings:
                cat = table.lookup(phrase)
                if cat is None:
                    unmatched.append(phrase)
                    continue
                for i in indices:
                    found.setdefault((cat, i), (ans.boxes[i], ans.score_of(i)))
        unmatched_total += len(unmatched)
        cats = [c for c, _ in found]
        boxes = [b for b, _ in found.values()]
        scores = [s for _, s in found.values()]
        dets.append(ImageDetections(boxes, cats, scores))
        results += detections_to_results(img["id"], boxes, [name_to_id[c] for c in cats], scores)
        predictions.append({
            "image_id": img["id"], "image": img["path"], "categories": asked[img["id"]],
            "answer": ans.to_dict() if ans is not None else None,
            "detections": [{"category": c, "index": i, "box": rounded_box(b), "score": round(s, 4)}
                           for (c, i), (b, s) in found.items()],
            "unmatched_phrases": unmatched,
        })

    pr = precision_recall_per_class(gts, dets, iou_threshold=iou_threshold)
    coco_stats = coco_map(coco, results, image_ids=[img["id"] for img in images])
    metrics = {
        "precision": pr.precision, "recall": pr.recall,
        "micro_precision": pr.micro_precision, "micro_recall": pr.micro_recall,
        "mAP": coco_stats["mAP"], "AP50": coco_stats["AP50"], "AP75": coco_stats["AP75"],
        "num_images": len(images), "num_queried": len(queries), "num_detections": len(results),
        "num_ground_truth": sum(len(g.labels) for g in gts),
        "unmatched_phrases": unmatched_total, **answer_stats(answers),
    }
    return {
        "task": "detection",
        "metrics": metrics,
        "headline": ["precision", "recall", "mAP"],
        "details": {"per_class": pr.to_dict()["per_class"], "coco": coco_stats},
        "config": {"level": level, "granularity": granularity, "min_score": min_score, "nms": nms, "max_boxes": max_boxes,
                   "iou_threshold": iou_threshold, "limit": limit, "data": data.source, "data_kind": data.kind},
        "predictions": predictions,
    }
