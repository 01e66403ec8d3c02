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

    Args:
        pred_logits: (B, Q, 1) objectness logits.
        pred_boxes: (B, Q, 4) normalised cxcywh.
        targets: B tensors (N_b, 4) of normalised cxcywh ground-truth boxes.

    Returns:
        B pairs ``(query_idx, target_idx)`` of int64 tensors of equal length min(Q, N_b).
    """
    out = []
    for b, tgt in enumerate(targets):
        if tgt.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64)
            out.append((empty, empty))
            continue
        logits = pred_logits[b, :, 0].float()
        boxes = pred_boxes[b].float()
        tgt = tgt.to(boxes)
        c_cls = focal_class_cost(logits, cfg.alpha, cfg.gamma)[:, None]
        c_l1 = torch.cdist(boxes, tgt, p=1)
        c_giou = -generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"))
        cost = cfg.cost_bbox * c_l1 + cfg.cost_class * c_cls + cfg.cost_giou * c_giou
        cost = torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6)
        qi, ti = linear_sum_assignment(cost.cpu().numpy())
        out.append((torch.as_tensor(qi, dtype=torch.int64), torch.as_tensor(ti, dtype=torch.int64)))
    return out
