"""Box helpers for evaluation: validation with clear errors, IoU, format conversion.

All boxes are ``xyxy`` in pixels unless a name says otherwise (``*_xywh`` is COCO's
``[x, y, width, height]``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class BoxError(ValueError):
    """A box (or list of boxes) is malformed: wrong length, not finite, or inverted."""


def as_boxes(boxes: Any, what: str = "boxes", allow_degenerate: bool = True) -> np.ndarray:
    """Validate ``boxes`` and return them as a float64 array of shape (N, 4), xyxy.

    Accepts an (N, 4) array-like, an empty list, or None (→ (0, 4)). Raises :class:`BoxError`
    naming ``what`` when a box is not four finite numbers or has ``x1 < x0`` / ``y1 < y0``.
    Zero-area boxes are allowed unless ``allow_degenerate`` is False.
    """
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float64)
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BoxError(f"{what}: cannot read as numbers ({exc})") from None
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise BoxError(f"{what}: expected boxes of 4 numbers [x0, y0, x1, y1], got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.where(~np.all(np.isfinite(arr), axis=1))[0][0])
        raise BoxError(f"{what}: box {bad} has a non-finite value: {arr[bad].tolist()}")
    inverted = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if np.any(inverted):
        bad = int(np.where(inverted)[0][0])
        raise BoxError(f"{what}: box {bad} = {arr[bad].tolist()} has x1 < x0 or y1 < y0 (expected xyxy)")
    if not allow_degenerate:
        empty = (arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])
        if np.any(empty):
            bad = int(np.where(empty)[0][0])
            raise BoxError(f"{what}: box {bad} = {arr[bad].tolist()} has zero area")
    return arr


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of (N, 4) xyxy boxes → (N,)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes (x1 >= x0, y1 >= y0) → (N, M) float64, by
    ``torchvision.ops.box_iou``. Two zero-area boxes give 0 (not 0 / 0)."""
    import torch
    from torchvision.ops import box_iou as torchvision_box_iou

    a = torch.from_numpy(np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4))
    b = torch.from_numpy(np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4))
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    return torch.nan_to_num(torchvision_box_iou(a, b), nan=0.0).numpy()


def xyxy_to_xywh(boxes: Any) -> np.ndarray:
    """(N, 4) xyxy → COCO (N, 4) [x, y, w, h]."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 2:] -= b[:, :2]
    return b


def xywh_to_xyxy(boxes: Any) -> np.ndarray:
    """COCO (N, 4) [x, y, w, h] → (N, 4) xyxy."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 2:] += b[:, :2]
    return b


def greedy_match(iou: np.ndarray, threshold: float, order: Sequence[int] | None = None) -> np.ndarray:
    """One-to-one greedy matching of predictions (rows) to ground truth (columns).

    Predictions are visited in ``order`` (default: row order, i.e. already sorted by score); each takes
    the unmatched ground truth with the highest IoU, if that IoU is at least ``threshold`` (the
    COCO rule). Returns an int array (N,) with the matched column, or -1.
    """
    n, m = iou.shape
    matched = np.full(n, -1, dtype=np.int64)
    taken = np.zeros(m, dtype=bool)
    rows = range(n) if order is None else order
    for i in rows:
        if m == 0:
            break
        cand = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= threshold and not taken[j]:
            matched[i] = j
            taken[j] = True
    return matched
