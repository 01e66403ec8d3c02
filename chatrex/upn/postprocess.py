"""UPN post-processing: raw model outputs -> sorted pixel boxes -> filtered proposals.

``postprocess`` follows the official ``UPNWrapper.postprocess`` (cxcywh -> xyxy, scale to the
original image, sort by score) but returns scores as a (B, Q) array instead of the official (B, Q, 1)
tensor. ``filter_proposals`` follows the official ``UPNWrapper.filter`` (score threshold, NMS, integer
boxes, scores rounded to 2 decimals) except that an image with no box left gives empty lists while the
rest of the batch is kept (the official code returns early and drops the remaining images).
"""

from __future__ import annotations

from typing import Any, Mapping, Union

import numpy as np
import torch
from torchvision.ops import nms

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x, dtype=np.float32))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _image_sizes(image_sizes: Any, batch: int) -> list[tuple[int, int]]:
    if isinstance(image_sizes, torch.Tensor):
        image_sizes = image_sizes.tolist()
    arr = np.asarray(image_sizes)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"image_sizes must be B pairs (H, W), got shape {arr.shape}")
    if arr.shape[0] != batch:
        raise ValueError(f"got {arr.shape[0]} image sizes for a batch of {batch} predictions")
    sizes = [(int(h), int(w)) for h, w in arr.tolist()]
    for i, (h, w) in enumerate(sizes):
        if h <= 0 or w <= 0:
            raise ValueError(f"image size {i} must be positive (H, W), got ({h}, {w})")
    return sizes


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cx, cy, w, h -> x1, y1, x2, y2 computed like the official code.

    x1 = cx - w/2, y1 = cy - h/2, x2 = x1 + w, y2 = y1 + h (so x2 is rounded through x1 in float32).
    """
    x1 = boxes[..., 0] - boxes[..., 2] / 2
    y1 = boxes[..., 1] - boxes[..., 3] / 2
    return torch.stack([x1, y1, x1 + boxes[..., 2], y1 + boxes[..., 3]], dim=-1)


def postprocess(outputs: Mapping[str, ArrayLike], image_sizes: Any) -> dict[str, np.ndarray]:
    """Turn raw UPN outputs into boxes in original-image pixels, sorted by score (highest first).

    Args:
        outputs: ``{"pred_logits": (B, Q, 1) or (B, Q), "pred_boxes": (B, Q, 4)}`` with boxes as
            cxcywh normalised to the valid (unpadded) image area. Not modified.
        image_sizes: B pairs (H, W) of the original images (list, array or tensor).

    Returns:
        ``{"original_xyxy_boxes": (B, Q, 4) float32 ndarray, "scores": (B, Q) float32 ndarray}``.
        Boxes are not clipped (they may be negative or exceed the image). Scores are sigmoid(logits).
        Equal scores keep their query order (stable sort).
    """
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise KeyError(f"UPN outputs lack '{key}'; got keys {sorted(outputs)}")
    logits = _as_tensor(outputs["pred_logits"], "pred_logits")
    boxes = _as_tensor(outputs["pred_boxes"], "pred_boxes")
    if logits.ndim == 3 and logits.shape[-1] == 1:
        logits = logits[..., 0]
    if logits.ndim != 2:
        raise ValueError(f"pred_logits must be (B, Q, 1) or (B, Q), got shape {tuple(logits.shape)}")
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[:2] != logits.shape:
        raise ValueError(
            f"pred_boxes must be (B, Q, 4) matching pred_logits {tuple(logits.shape)}, got {tuple(boxes.shape)}"
        )
    sizes = _image_sizes(image_sizes, boxes.shape[0])
    scores = logits.sigmoid()
    xyxy = cxcywh_to_xyxy(boxes)
    out_boxes = torch.empty_like(xyxy)
    out_scores = torch.empty_like(scores)
    for i, (h, w) in enumerate(sizes):
        scaled = xyxy[i].clone()
        scaled[:, 0::2] = scaled[:, 0::2] * w
        scaled[:, 1::2] = scaled[:, 1::2] * h
        order = torch.sort(scores[i], descending=True, stable=True).indices
        out_boxes[i] = scaled[order]
        out_scores[i] = scores[i][order]
    return {"original_xyxy_boxes": out_boxes.numpy(), "scores": out_scores.numpy()}


def _round_score(value: np.float32) -> float:
    """Round like the official ``round(np.float32, 2)`` and return the short Python float (0.31, not
    0.3100000023841858)."""
    return float(str(np.round(np.float32(value), 2)))


def filter_proposals(
    props: Mapping[str, Any], min_score: float = 0.3, nms_value: float = 0.8
) -> dict[str, list]:
    """Keep confident, non-overlapping proposals per image.

    Args:
        props: output of :func:`postprocess` — ``"original_xyxy_boxes"`` (B, Q, 4) and ``"scores"``
            (B, Q) (the official (B, Q, 1) layout is accepted too).
        min_score: keep boxes with score >= min_score.
        nms_value: IoU threshold of torchvision NMS (boxes overlapping a better one by more are
            dropped); NMS is skipped when nms_value <= 0.

    Returns:
        ``{"original_xyxy_boxes": [per image: list of [x1, y1, x2, y2] ints], "scores": [per image:
        list of floats]}``, sorted by score descending. Boxes are truncated toward zero to int like the
        official code, scores rounded to 2 decimals. An image with nothing left gets empty lists; the
        other images are kept.
    """
    for key in ("original_xyxy_boxes", "scores"):
        if key not in props:
            raise KeyError(f"proposals lack '{key}'; got keys {sorted(props)}")
    boxes_all = _as_tensor(props["original_xyxy_boxes"], "original_xyxy_boxes")
    scores_all = _as_tensor(props["scores"], "scores")
    if scores_all.ndim == 3 and scores_all.shape[-1] == 1:
        scores_all = scores_all[..., 0]
    if boxes_all.ndim != 3 or boxes_all.shape[-1] != 4 or scores_all.shape != boxes_all.shape[:2]:
        raise ValueError(
            f"expected boxes (B, Q, 4) and scores (B, Q); got {tuple(boxes_all.shape)} and {tuple(scores_all.shape)}"
        )
    if not (torch.isfinite(boxes_all).all() and torch.isfinite(scores_all).all()):
        raise ValueError("proposals contain NaN or infinite boxes or scores")
    result: dict[str, list] = {"original_xyxy_boxes": [], "scores": []}
    for boxes, scores in zip(boxes_all, scores_all):
        keep = scores >= min_score
        boxes, scores = boxes[keep], scores[keep]
        if boxes.shape[0] and nms_value > 0:
            kept = nms(boxes, scores, float(nms_value))
            boxes, scores = boxes[kept], scores[kept]
        int_boxes = boxes.numpy().astype(np.int32)
        np_scores = scores.numpy()
        order = np.argsort(np_scores)[::-1]  # the official re-sort (NMS output is already descending)
        result["original_xyxy_boxes"].append(int_boxes[order].tolist())
        result["scores"].append([_round_score(s) for s in np_scores[order]])
    return result


#: The official name of :func:`filter_proposals`.
filter = filter_proposals  # noqa: A001  (mirrors the official ``UPNWrapper.filter``)

__all__ = ["cxcywh_to_xyxy", "postprocess", "filter_proposals", "filter"]
