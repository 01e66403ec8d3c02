"""Hungarian matching between UPN queries and ground-truth boxes (binary objectness, DINO-style costs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou


@dataclass
class MatcherConfig:
    """Cost weights of the paper (App. B.1): class 2.0, L1 5.0, GIoU 2.0; focal cost alpha/gamma."""

    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0


def focal_class_cost(logits: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Per-query cost of calling a query an object: positive focal term minus negative focal term.

    Args:
        logits: (Q,) objectness logits.
    Returns:
        (Q,) cost (lower = more object-like).
    """
    p = logits.sigmoid()
    neg = (1 - alpha) * p.pow(gamma) * -torch.log1p(-p + 1e-8)
    pos = alpha * (1 - p).pow(gamma) * -torch.log(p + 1e-8)
    return pos - neg


@torch.no_grad()
def hungarian_match(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, targets: list[torch.Tensor],
                    cfg: MatcherConfig = MatcherConfig()) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Match predictions to targets, image by image.

    The costs of the whole batch are computed on the predictions' device against the targets padded
    to the largest count, and copied to the host once; only the assignment runs per image (scipy).

    Args:
        pred_logits: (B, Q, 1) objectness logits.
        pred_boxes: (B, Q, 4) normalised cxcywh.
        targets: B tensors (N_b, 4) of normalised cxcywh ground-truth boxes.

    Returns:
        B pairs ``(query_idx, target_idx)`` of int64 tensors of equal length min(Q, N_b).
    """
    sizes = [int(t.shape[0]) for t in targets]
    empty = torch.empty(0, dtype=torch.int64)
    n_max = max(sizes, default=0)
    if n_max == 0:
        return [(empty, empty) for _ in targets]
    B = pred_boxes.shape[0]
    boxes = pred_boxes.float()
    padded = boxes.new_zeros((B, n_max, 4))
    padded[..., 2:] = 1.0  # a valid box for the padding slots (their costs are never read)
    for b, t in enumerate(targets):
        if sizes[b]:
            padded[b, :sizes[b]] = t.to(boxes)
    c_cls = focal_class_cost(pred_logits[..., 0].float(), cfg.alpha, cfg.gamma)[:, :, None]
    c_l1 = torch.cdist(boxes, padded, p=1)
    pred_xyxy = box_convert(boxes, "cxcywh", "xyxy")
    tgt_xyxy = box_convert(padded, "cxcywh", "xyxy")
    c_giou = -torch.stack([generalized_box_iou(pred_xyxy[b], tgt_xyxy[b]) for b in range(B)])
    cost = cfg.cost_bbox * c_l1 + cfg.cost_class * c_cls + cfg.cost_giou * c_giou
    cost = torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6).cpu().numpy()
    out = []
    for b, n in enumerate(sizes):
        if n == 0:
            out.append((empty, empty))
            continue
        qi, ti = linear_sum_assignment(cost[b, :, :n])
        out.append((torch.as_tensor(qi, dtype=torch.int64), torch.as_tensor(ti, dtype=torch.int64)))
    return out
