"""Proposal recall: AR@k (recall averaged over IoU 0.5:0.95) and recall@0.5 at each k.

Proposals of an image are taken in score order; the top k are matched one-to-one to the image's
ground-truth boxes (COCO's greedy rule) at each IoU threshold. Recall pools every ground-truth box
of the data set (class-agnostic, like proposal evaluation in the DETR/SAM literature).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from chatrex.evaluation.boxes import as_boxes, box_iou, greedy_match

DEFAULT_KS = (10, 100, 300, 900)
#: COCO's thresholds 0.50, 0.55, …, 0.95.
IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())


def recalled_at_k(gt_boxes: Any, proposals: Any, ks: Sequence[int], iou_thresholds: Sequence[float]) -> np.ndarray:
    """Number of ground-truth boxes of one image recalled by the top-k proposals.

    ``proposals`` (P, 4) must be sorted by score, best first. Returns an int array (T, K) for the
    thresholds × ks. Greedy matching is sequential, so the matching of the top k is the first k
    steps of the full matching.
    """
    gt = as_boxes(gt_boxes, "ground-truth boxes")
    props = as_boxes(proposals, "proposals")
    out = np.zeros((len(iou_thresholds), len(ks)), dtype=np.int64)
    if len(gt) == 0 or len(props) == 0:
        return out
    iou = box_iou(props, gt)
    for t, thr in enumerate(iou_thresholds):
        matched = greedy_match(iou, thr)
        rows = np.where(matched >= 0)[0]
        for j, k in enumerate(ks):
            out[t, j] = int(np.sum(rows < k))
    return out


def proposal_recall(
    gt_boxes: Sequence[Any],
    proposals: Sequence[Any],
    ks: Sequence[int] = DEFAULT_KS,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict:
    """AR@k and recall@0.5 at k over a data set.

    ``gt_boxes[i]`` (N_i, 4) and ``proposals[i]`` (P_i, 4, score-sorted) belong to image i. Returns
    ``{"AR@k": …, "R50@k": …, "num_ground_truth": N, "num_images": I}``; values are None when there
    is no ground truth. R50 needs 0.5 among the thresholds.
    """
    if len(gt_boxes) != len(proposals):
        raise ValueError(f"{len(gt_boxes)} ground-truth images but {len(proposals)} proposal images")
    ks = [int(k) for k in ks]
    if any(k <= 0 for k in ks):
        raise ValueError(f"k must be positive, got {ks}")
    thresholds = [float(t) for t in iou_thresholds]
    total = np.zeros((len(thresholds), len(ks)), dtype=np.int64)
    num_gt = 0
    for gt, props in zip(gt_boxes, proposals):
        gt = as_boxes(gt, "ground-truth boxes")
        num_gt += len(gt)
        total += recalled_at_k(gt, props, ks, thresholds)
    out: dict = {"num_ground_truth": num_gt, "num_images": len(gt_boxes)}
    recall = total / num_gt if num_gt else None
    t50 = next((i for i, t in enumerate(thresholds) if abs(t - 0.5) < 1e-9), None)
    for j, k in enumerate(ks):
        out[f"AR@{k}"] = float(recall[:, j].mean()) if recall is not None else None
        if t50 is not None:
            out[f"R50@{k}"] = float(recall[t50, j]) if recall is not None else None
    return out
