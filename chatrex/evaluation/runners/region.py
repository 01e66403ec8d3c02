"""Region understanding: the model gets one ground-truth box and is asked about it at several
granularities (category, short phrase, brief referring description, one sentence)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from chatrex.evaluation.boxes import xywh_to_xyxy
from chatrex.evaluation.coco import region_in_level
from chatrex.evaluation.datasets import EvalData, coco_category_names, coco_image_annotations, data_synonyms
from chatrex.evaluation.region import caption_metrics, category_accuracy, load_sentence_encoder, osprey_scores, predicted_name
from chatrex.evaluation.runners.common import Query, answer_stats, rounded_box, run_queries, sample_items

#: Sub-task → (prompt task, ground-truth field of a sample).
REGION_TASKS = {
    "category": ("region_category", "category"),
    "phrase": ("region_phrase", "phrase"),
    "brief": ("region_brief", "referring"),
    "sentence": ("region_sentence", "description"),
}


def region_samples(data: EvalData, level: str = "all") -> list[dict]:
    """``[{"image", "box", "category"?, "phrase"?, "referring"?, "description"?}]``; text fields are
    lists of accepted references (RefCOCO gives every expression of a box as ``referring``).

    ``level`` (records only): the regions asked about, ``instance``, ``part`` or ``all``."""
    out = []
    if data.kind == "records":
        for rec in data.records:
            for r in rec.get("regions", []):
                if not region_in_level(r, level):
                    continue
                s = {"image": rec["image"], "box": r["box"], "record": rec.get("id"), "region": r.get("id")}
                for key in ("category", "phrase", "referring", "description"):
                    if (r.get(key) or "").strip():
                        s[key] = [r[key]]
                out.append(s)
    elif data.kind == "coco":
        names = coco_category_names(data.coco)
        anns = coco_image_annotations(data.coco)
        for img in data.coco["images"]:
            for a in anns[img["id"]]:
                out.append({"image": img["path"], "box": xywh_to_xyxy(a["bbox"])[0].tolist(), "annotation": a["id"],
                            "category": [names[a["category_id"]]]})
    else:
        for it in data.refcoco:
            out.append({"image": it["image"], "box": it["box"], "referring": list(it["expressions"])})
    return out


def run_region(
    predictor: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    tasks: Sequence[str] = tuple(REGION_TASKS),
    sentence_encoder: Any = "auto",
    use_java: Optional[bool] = None,
    progress: bool = True,
    level: str = "all",
) -> dict:
    """Evaluate ``limit`` regions (a fixed random subset, see ``sample_items``) on each of ``tasks`` that the
    data has ground truth for.

    ``level`` (world records): ask about instances, parts or all regions.

    ``sentence_encoder``: ``"auto"`` loads all-MiniLM-L6-v2 when installed, None skips SS, or a
    callable ``texts -> (N, D) array``. ``use_java``: None detects java for METEOR.
    """
    from chatrex.grounding.prompts import build_prompt

    unknown = [t for t in tasks if t not in REGION_TASKS]
    if unknown:
        raise ValueError(f"unknown region task(s) {unknown}; choose from {list(REGION_TASKS)}")
    samples = sample_items(region_samples(data, level), limit)
    synonyms = data_synonyms(data)
    metrics: dict = {"num_regions": len(samples)}
    headline: list = []
    skipped: dict = {}
    predictions = [{k: (rounded_box(v) if k == "box" else v) for k, v in s.items()} for s in samples]
    for task in tasks:
        prompt_task, field = REGION_TASKS[task]
        chosen = [i for i, s in enumerate(samples) if field in s]
        if not chosen:
            skipped[task] = f"skipped: the data has no '{field}' for regions"
            continue
        queries = [Query(samples[i]["image"], build_prompt(prompt_task, regions=[0]), boxes=[samples[i]["box"]])
                   for i in chosen]
        answers = run_queries(predictor, queries, batch_size=batch_size, desc=f"region {task}", progress=progress)
        texts = [predicted_name(a.text, [p for p, _ in a.groundings]) for a in answers]
        metrics[f"{task}/answers_with_dropped_markup"] = answer_stats(answers)["answers_with_dropped_markup"]
        for i, a, t in zip(chosen, answers, texts):
            predictions[i][f"predicted_{task}"] = t
            predictions[i][f"answer_{task}"] = a.to_dict()
        if task == "category":
            labels = [samples[i]["category"][0] for i in chosen]
            acc = category_accuracy([t or None for t in texts], labels, synonyms)
            if sentence_encoder == "auto":
                encoder, reason = load_sentence_encoder()
            else:
                encoder, reason = sentence_encoder, "skipped: no sentence encoder given"
            osp = osprey_scores([t or None for t in texts], labels, encoder, reason)
            metrics.update({"category/accuracy": acc["accuracy"], "category/num_samples": acc["num_samples"],
                            "category/S-IoU": osp["s_iou"], "category/SS": osp["ss"]})
            headline += ["category/accuracy", "category/SS", "category/S-IoU"]
        else:
            preds = {str(i): t for i, t in zip(chosen, texts)}
            refs = {str(i): samples[i][field] for i in chosen}
            scores = caption_metrics(preds, refs, use_java=use_java)
            metrics.update({f"{task}/{k}": v for k, v in scores.items()})
            metrics[f"{task}/num_samples"] = len(chosen)
            headline += [f"{task}/METEOR", f"{task}/CIDEr"]
    if skipped:
        metrics["skipped"] = skipped
    return {
        "task": "region",
        "metrics": metrics,
        "headline": headline,
        "config": {"tasks": list(tasks), "level": level, "limit": limit, "data": data.source, "data_kind": data.kind},
        "predictions": predictions,
    }
