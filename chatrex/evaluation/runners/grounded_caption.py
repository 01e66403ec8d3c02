"""Grounded image captions: phrase–box F1 of the answer's groundings, plus caption text scores."""

from __future__ import annotations

from typing import Any, Optional

from chatrex.evaluation.datasets import EvalData, EvalDataError, record_synonyms
from chatrex.evaluation.grounded_caption import PhraseBox, match_phrase_boxes, phrase_box_f1
from chatrex.evaluation.region import caption_metrics
from chatrex.evaluation.runners.common import Query, answer_stats, limit_items, run_queries

CAPTION_KINDS = {"brief": "caption_brief", "detailed": "caption_detailed"}


def caption_samples(data: EvalData, kind: str = "brief") -> list[dict]:
    """One sample per record with a caption of ``kind``: ``{"image", "caption", "pairs": [PhraseBox]}``.

    Ground-truth pairs come from the caption's groundings (each grounded region's box), with the
    region's ``category``, its synonyms (the record's ``synonyms`` map) and ``phrase`` as accepted
    aliases.
    """
    if kind not in CAPTION_KINDS:
        raise ValueError(f"caption kind must be one of {sorted(CAPTION_KINDS)}, got {kind!r}")
    if data.kind != "records":
        raise EvalDataError(f"grounded-caption needs JSONL records with grounded captions, not {data.kind} data "
                            f"({data.source})")
    out = []
    for rec in data.records:
        cap = next((c for c in rec.get("captions", []) if c.get("kind", "brief") == kind), None)
        if cap is None:
            continue
        regions = {r["id"]: r for r in rec.get("regions", [])}
        synonyms = record_synonyms([rec])

        def aliases(region: dict) -> tuple:
            cat = region.get("category") or ""
            return (cat, *synonyms.get(cat, ()), region.get("phrase") or "")

        pairs = [PhraseBox(g["phrase"], regions[rid]["box"], aliases=aliases(regions[rid]))
                 for g in cap.get("groundings", []) for rid in g.get("regions", []) if rid in regions]
        out.append({"image": rec["image"], "record": rec.get("id"), "caption": cap["text"], "pairs": pairs})
    return out


def run_grounded_caption(
    predictor: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    kind: str = "brief",
    granularity: str = "fine",
    min_score: float = 0.3,
    nms: Optional[float] = None,
    max_boxes: int = 100,
    iou_threshold: float = 0.5,
    text_metrics: bool = True,
    use_java: Optional[bool] = None,
    progress: bool = True,
) -> dict:
    """Ask for a grounded caption of each image; score phrase–box pairs (F1) and, with
    ``text_metrics``, the plain caption text against the reference (BLEU/ROUGE-L/CIDEr/METEOR)."""
    from chatrex.grounding.prompts import build_prompt

    samples = limit_items(caption_samples(data, kind), limit)
    queries = [Query(s["image"], build_prompt(CAPTION_KINDS[kind])) for s in samples]
    answers = run_queries(predictor, queries, batch_size=batch_size, granularity=granularity, min_score=min_score, nms=nms,
                          max_boxes=max_boxes, desc=f"grounded caption ({kind})", progress=progress)
    predicted = [[PhraseBox(p, a.boxes[i]) for p, ix in a.groundings for i in ix] for a in answers]
    truth = [s["pairs"] for s in samples]
    f1 = phrase_box_f1(predicted, truth, iou_threshold=iou_threshold)
    metrics = {"precision": f1["precision"], "recall": f1["recall"], "f1": f1["f1"], "matched": f1["matched"],
               "num_predicted": f1["num_predicted"], "num_ground_truth": f1["num_ground_truth"],
               "num_images": len(samples), **answer_stats(answers)}
    headline = ["precision", "recall", "f1"]
    if text_metrics:
        scores = caption_metrics({str(i): a.text for i, a in enumerate(answers)},
                                 {str(i): [s["caption"]] for i, s in enumerate(samples)}, use_java=use_java)
        metrics.update({f"text/{k}": v for k, v in scores.items()})
        headline += ["text/CIDEr"]
    predictions = []
    for s, a, pred in zip(samples, answers, predicted):
        matches = match_phrase_boxes(pred, s["pairs"], iou_threshold)
        predictions.append({"image": s["image"], "record": s["record"], "caption": s["caption"],
                            "answer": a.to_dict(), "num_predicted": len(pred), "num_ground_truth": len(s["pairs"]),
                            "matched": len(matches)})
    return {
        "task": "grounded-caption",
        "metrics": metrics,
        "headline": headline,
        "config": {"kind": kind, "granularity": granularity, "min_score": min_score, "nms": nms, "max_boxes": max_boxes,
                   "iou_threshold": iou_threshold, "limit": limit, "data": data.source, "data_kind": data.kind},
        "predictions": predictions,
    }
