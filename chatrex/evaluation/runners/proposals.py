"""Proposal recall of the UPN: AR@k and recall@0.5 for each granularity."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from chatrex.evaluation.boxes import xywh_to_xyxy
from chatrex.evaluation.coco import region_in_level
from chatrex.evaluation.datasets import EvalData, EvalDataError, coco_image_annotations
from chatrex.evaluation.proposals import DEFAULT_KS, IOU_THRESHOLDS, proposal_recall, recalled_at_k
from chatrex.evaluation.runners.common import PredictorError, batches, limit_items, progress_bar
from chatrex.evaluation.sharding import current_shard

#: Box kinds for ``--boxes``: world records' region levels.
BOX_KINDS = {"instances": "instance", "parts": "part", "all": "all"}
GRANULARITIES = ("fine", "coarse")


def proposal_ground_truth(data: EvalData, kind: str = "all") -> list[tuple[str, np.ndarray]]:
    """``[(image path, (N, 4) xyxy boxes)]``: records filtered by ``kind``; COCO: non-crowd boxes."""
    if kind not in BOX_KINDS:
        raise ValueError(f"box kind must be one of {sorted(BOX_KINDS)}, got {kind!r}")
    if data.kind == "records":
        level = BOX_KINDS[kind]
        return [(rec["image"], np.asarray([r["box"] for r in rec.get("regions", []) if region_in_level(r, level)],
                                          dtype=np.float64).reshape(-1, 4)) for rec in data.records]
    if data.kind == "coco":
        anns = coco_image_annotations(data.coco)
        return [(img["path"], xywh_to_xyxy([a["bbox"] for a in anns[img["id"]]])) for img in data.coco["images"]]
    raise EvalDataError(f"proposals need JSONL records or a COCO annotation file, not {data.kind} data ({data.source})")


def _read(result: Any, n: int, min_score: Optional[float] = None, nms: Optional[float] = None) -> list[np.ndarray]:
    """Each image's proposals (Q_i, 4), best first; with ``min_score`` or ``nms``, only those the pipeline
    would give ChatRex (``chatrex.upn.postprocess.filter_proposals``: score threshold, NMS, int boxes)."""
    try:
        boxes = np.asarray(result["original_xyxy_boxes"], dtype=np.float64)
        scores = np.asarray(result["scores"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"UPN inference must return 'original_xyxy_boxes' and 'scores' ({exc})") from None
    if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4 or scores.shape != boxes.shape[:2]:
        raise PredictorError(f"UPN inference returned boxes {boxes.shape} and scores {scores.shape} for {n} images; "
                             "expected (B, Q, 4) and (B, Q)")
    if min_score is not None or nms is not None:
        from chatrex.upn.postprocess import filter_proposals

        try:
            kept = filter_proposals({"original_xyxy_boxes": boxes.astype(np.float32), "scores": scores.astype(np.float32)},
                                    min_score=min_score or 0.0, nms_value=nms or 0.0)
        except ValueError as exc:
            raise PredictorError(f"UPN proposals cannot be filtered: {exc}") from None
        return [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in kept["original_xyxy_boxes"]]
    order = np.argsort(-scores, axis=1, kind="stable")
    return [boxes[b][order[b]] for b in range(n)]


def run_proposals(
    upn: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    kind: str = "all",
    granularities: Sequence[str] = GRANULARITIES,
    ks: Sequence[int] = DEFAULT_KS,
    min_score: Optional[float] = None,
    nms: Optional[float] = None,
    progress: bool = True,
) -> dict:
    """AR@k (IoU 0.5:0.95) and R50@k for each granularity, against boxes of ``kind``.

    ``upn.inference(images, prompt_type)`` must return ``{"original_xyxy_boxes": (B, Q, 4),
    "scores": (B, Q)}``. By default all Q proposals are ranked by score (no score threshold, no NMS). With
    ``min_score`` and/or ``nms`` (IoU), the proposals are first filtered as the pipeline filters what it
    gives ChatRex (official defaults 0.3 and 0.8), so AR@k counts the first k of those.
    """
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score must be in [0, 1], got {min_score}")
    if nms is not None and not 0.0 < nms <= 1.0:
        raise ValueError(f"nms must be an IoU in (0, 1], got {nms}")
    from chatrex.utils.image import load_image

    for g in granularities:
        if g not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {g!r}")
    samples = limit_items(proposal_ground_truth(data, kind), limit)
    metrics: dict = {"num_images": len(samples), "num_ground_truth": int(sum(len(b) for _, b in samples))}
    per_image = [{"image": path, "num_ground_truth": len(gt)} for path, gt in samples]
    shard = current_shard()  # in a torchrun job: this process's block of the images, then everyone's
    mine = shard.take(samples)
    for g in granularities:
        ranked: list[np.ndarray] = []
        with progress_bar(len(mine), f"proposals ({g})", progress and shard.is_main) as bar:
            for chunk in batches(mine, batch_size):
                images = [load_image(path) for path, _ in chunk]
                ranked += _read(upn.inference(images, prompt_type=g), len(chunk), min_score, nms)
                bar.update(len(chunk))
        ranked = shard.gather(ranked)
        stats = proposal_recall([gt for _, gt in samples], ranked, ks=ks)
        for k in ks:
            metrics[f"{g}/AR@{k}"] = stats[f"AR@{k}"]
            metrics[f"{g}/R50@{k}"] = stats[f"R50@{k}"]
        for item, (_, gt), props in zip(per_image, samples, ranked):
            hits = recalled_at_k(gt, props, ks, [0.5])[0]
            item[g] = {"num_proposals": len(props), **{f"recalled@0.5/{k}": int(h) for k, h in zip(ks, hits)}}
    headline = [f"{g}/AR@{k}" for g in granularities for k in ks]
    return {
        "task": "proposals",
        "metrics": metrics,
        "headline": headline,
        "config": {"boxes": kind, "granularities": list(granularities), "ks": list(ks), "min_score": min_score,
                   "nms": nms,
                   "iou_thresholds": list(IOU_THRESHOLDS), "limit": limit, "data": data.source,
                   "data_kind": data.kind},
        "predictions": per_image,
    }
