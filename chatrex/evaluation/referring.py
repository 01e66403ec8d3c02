"""Referring expression comprehension: Acc@0.5 of the first grounded box."""

from __future__ import annotations

from typing import Any, Sequence

from chatrex.evaluation.boxes import as_boxes, box_iou


def first_grounded_index(groundings: Sequence[Any]) -> int | None:
    """Index of the first box the answer grounds (first grounding with an index), or None."""
    for g in groundings:
        indices = list(getattr(g, "indices", None) or [])
        if indices:
            return int(indices[0])
    return None


def referring_accuracy(predicted_boxes: Sequence[Any | None], gt_boxes: Sequence[Any], threshold: float = 0.5) -> dict:
    """Share of samples whose predicted box overlaps the ground truth with IoU ≥ ``threshold``.

    ``predicted_boxes[i]`` is an xyxy box or None (no grounded box: counts as wrong). Returns
    ``accuracy`` (None for no samples), ``correct``, ``num_samples``, ``num_without_box`` and the
    per-sample ``ious`` (None where there is no box).
    """
    if len(predicted_boxes) != len(gt_boxes):
        raise ValueError(f"{len(predicted_boxes)} predictions but {len(gt_boxes)} ground-truth boxes")
    ious: list[float | None] = []
    for i, (pred, gt) in enumerate(zip(predicted_boxes, gt_boxes)):
        g = as_boxes(gt, f"ground-truth box {i}")
        if pred is None:
            ious.append(None)
            continue
        p = as_boxes(pred, f"predicted box {i}")
        ious.append(float(box_iou(p, g)[0, 0]))
    correct = sum(1 for v in ious if v is not None and v >= threshold)
    n = len(ious)
    return {
        "accuracy": correct / n if n else None,
        "correct": correct,
        "num_samples": n,
        "num_without_box": sum(1 for v in ious if v is None),
        "ious": ious,
    }
