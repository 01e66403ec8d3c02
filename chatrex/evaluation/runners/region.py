"""Region understanding: the model gets one ground-truth region and is asked about it at several
granularities (category, short phrase, brief referring description, one sentence), and to classify it
from a category list (RegionGPT's COCO protocol: top-1 accuracy against the data's categories).

The region is the ground-truth box (``regions="boxes"``) or the ground-truth mask (``regions="masks"``:
the records' ``regions[*].mask``, a COCO file's ``segmentation``), so both kinds can be measured on the
same regions."""

from __future__ import annotations

import random
from typing import Any, Optional, Sequence

from chatrex.evaluation.boxes import xywh_to_xyxy
from chatrex.evaluation.coco import region_in_level
from chatrex.evaluation.datasets import EvalData, coco_category_names, coco_image_annotations, data_synonyms
from chatrex.evaluation.region import caption_metrics, category_accuracy, load_sentence_encoder, osprey_scores, predicted_name
from chatrex.evaluation.text import SynonymTable
from chatrex.evaluation.runners.common import Query, answer_stats, rounded_box, run_queries, sample_items

#: Sub-task → (prompt task, ground-truth field of a sample).
REGION_TASKS = {
    "category": ("region_category", "category"),
    "phrase": ("region_phrase", "phrase"),
    "brief": ("region_brief", "referring"),
    "sentence": ("region_sentence", "description"),
    "classification": ("region_classification", "category"),
}
#: What the model is given for a region.
REGION_KINDS = ("boxes", "masks")


def region_samples(data: EvalData, level: str = "all") -> list[dict]:
    """``[{"image", "box", "mask"?, "category"?, "phrase"?, "referring"?, "description"?}]``; text fields are
    lists of accepted references (RefCOCO gives every expression of a box as ``referring``); ``mask`` is
    the region's mask (records: COCO RLE; COCO: its ``segmentation``) where the data has one.

    ``level`` (records only): the regions asked about, ``instance``, ``part`` or ``all``."""
    out = []
    if data.kind == "records":
        for rec in data.records:
            for r in rec.get("regions", []):
                if not region_in_level(r, level):
                    continue
                s = {"image": rec["image"], "box": r["box"], "record": rec.get("id"), "region": r.get("id")}
                if r.get("mask"):
                    s["mask"] = r["mask"]
                for key in ("category", "phrase", "referring", "description"):
                    if (r.get(key) or "").strip():
                        s[key] = [r[key]]
                out.append(s)
    elif data.kind == "coco":
        names = coco_category_names(data.coco)
        anns = coco_image_annotations(data.coco)
        for img in data.coco["images"]:
            for a in anns[img["id"]]:
                s = {"image": img["path"], "box": xywh_to_xyxy(a["bbox"])[0].tolist(), "annotation": a["id"],
                     "category": [names[a["category_id"]]]}
                if a.get("segmentation"):
                    s["mask"] = a["segmentation"]
                out.append(s)
    else:
        for it in data.refcoco:
            out.append({"image": it["image"], "box": it["box"], "referring": list(it["expressions"])})
    return out


def category_list(data: EvalData, level: str = "all") -> list[str]:
    """The categories a classification question chooses from: every category of the data (records: of the
    regions at ``level``; COCO: its category list), sorted."""
    if data.kind == "records":
        return sorted({r["category"] for rec in data.records for r in rec.get("regions", [])
                       if region_in_level(r, level) and (r.get("category") or "").strip()})
    if data.kind == "coco":
        return sorted(set(coco_category_names(data.coco).values()))
    return []


def candidates_for(category: str, categories: Sequence[str], num: int, rng: random.Random) -> list[str]:
    """The candidate list of one question: all ``categories`` (``num`` 0, RegionGPT's protocol), else the
    true ``category`` and ``num - 1`` others drawn at random, shuffled."""
    if num <= 0 or num >= len(categories):
        return list(categories)
    others = rng.sample([c for c in categories if c != category], num - 1)
    out = others + [category]
    rng.shuffle(out)
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
    regions: str = "boxes",
    candidates: int = 0,
) -> dict:
    """Evaluate ``limit`` regions (a fixed random subset, see ``sample_items``) on each of ``tasks`` that the
    data has ground truth for.

    ``level`` (world records): ask about instances, parts or all regions.

    ``regions``: give the model each region's ground-truth box (``"boxes"``) or mask (``"masks"``; regions
    without a mask are left out and counted in ``regions_without_mask``). The subset is drawn from the
    regions that have a mask in both cases, so that boxes and masks are measured on the same regions
    whenever the data has masks.

    ``candidates`` (classification): how many categories each question lists: 0 (default) the whole
    category list (RegionGPT's COCO protocol), else the true one and ``candidates - 1`` random others.

    ``sentence_encoder``: ``"auto"`` loads all-MiniLM-L6-v2 when installed, None skips SS, or a
    callable ``texts -> (N, D) array``. ``use_java``: None detects java for METEOR.
    """
    from chatrex.grounding.prompts import build_prompt

    from chatrex.grounding.parser import read_classification

    unknown = [t for t in tasks if t not in REGION_TASKS]
    if unknown:
        raise ValueError(f"unknown region task(s) {unknown}; choose from {list(REGION_TASKS)}")
    if regions not in REGION_KINDS:
        raise ValueError(f"regions must be one of {list(REGION_KINDS)}, got {regions!r}")
    if candidates < 0:
        raise ValueError(f"candidates must be >= 0 (0: the whole category list), got {candidates}")
    everything = region_samples(data, level)
    with_mask = [s for s in everything if s.get("mask")]
    pool = with_mask if with_mask else everything
    if regions == "masks" and not with_mask:
        raise ValueError("--regions masks: the data has no region masks (records need regions[*].mask, COCO files "
                         "a segmentation)")
    samples = sample_items(pool, limit)
    synonyms = data_synonyms(data)
    categories = category_list(data, level)
    metrics: dict = {"num_regions": len(samples), "regions": regions,
                     "regions_without_mask": len(everything) - len(with_mask)}
    headline: list = []
    skipped: dict = {}
    predictions = [{k: (rounded_box(v) if k == "box" else v) for k, v in s.items()} for s in samples]
    for task in tasks:
        prompt_task, field = REGION_TASKS[task]
        chosen = [i for i, s in enumerate(samples) if field in s]
        if not chosen:
            skipped[task] = f"skipped: the data has no '{field}' for regions"
            continue
        if task == "classification" and len(categories) < 2:
            skipped[task] = "skipped: the data has fewer than two categories to choose from"
            continue
        rng = random.Random(0)
        questions = []
        for i in chosen:
            if task == "classification":
                cands = candidates_for(samples[i]["category"][0], categories, candidates, rng)
                questions.append(build_prompt(prompt_task, regions=[0], candidates=cands))
                predictions[i]["candidates"] = len(cands)
            else:
                questions.append(build_prompt(prompt_task, regions=[0]))
        if regions == "masks":
            queries = [Query(samples[i]["image"], q, regions=[samples[i]["mask"]]) for i, q in zip(chosen, questions)]
        else:
            queries = [Query(samples[i]["image"], q, boxes=[samples[i]["box"]]) for i, q in zip(chosen, questions)]
        answers = run_queries(predictor, queries, batch_size=batch_size, desc=f"region {task} ({regions})",
                              progress=progress)
        texts = [predicted_name(a.text, [p for p, _ in a.groundings]) for a in answers]
        metrics[f"{task}/answers_with_dropped_markup"] = answer_stats(answers)["answers_with_dropped_markup"]
        for i, a, t in zip(chosen, answers, texts):
            predictions[i][f"predicted_{task}"] = t
            predictions[i][f"answer_{task}"] = a.to_dict()
        if task == "classification":
            labels = [samples[i]["category"][0] for i in chosen]
            # the first grounded phrase names the pick (the answer form); else the plain text may name it
            picks = [read_classification(next((p for p, _ in a.groundings if p.strip()), a.text), categories)
                     for a in answers]
            correct = 0
            for i, pick, t, label in zip(chosen, picks, texts, labels):
                predictions[i]["picked_classification"] = pick
                table = SynonymTable([label], synonyms)
                correct += int(pick == label or (pick is None and bool(t) and table.same(t, label)))
            metrics.update({
                "classification/accuracy": correct / len(chosen),
                "classification/num_samples": len(chosen),
                "classification/no_candidate_named": sum(p is None for p in picks),
                "classification/num_candidates": candidates or len(categories),
                "classification/chance": 1.0 / (candidates or len(categories)),
            })
            headline += ["classification/accuracy"]
        elif task == "category":
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
        "config": {"tasks": list(tasks), "level": level, "limit": limit, "data": data.source, "data_kind": data.kind,
                   "regions": regions, "candidates": candidates},
        "predictions": predictions,
    }
