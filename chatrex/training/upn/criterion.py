"""UPN set losses: sigmoid focal (objectness), L1 and GIoU, on every decoder layer, the encoder
proposals and the denoising queries (paper App. B.1: weights 1, 5, 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from chatrex.training.upn.denoising import dn_positive_indices
from chatrex.training.upn.matcher import MatcherConfig, hungarian_match


@dataclass
class CriterionConfig:
    weight_focal: float = 1.0
    weight_l1: float = 5.0
    weight_giou: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0
    matcher: MatcherConfig = field(default_factory=MatcherConfig)


def _num_boxes(targets: list[torch.Tensor], device: torch.device) -> float:
    """Mean number of target boxes per process (at least 1), the losses' normaliser."""
    count = float(sum(int(t.shape[0]) for t in targets))
    if not (dist.is_available() and dist.is_initialized()):
        return max(count, 1.0)  # no device round trip on a single process
    n = torch.tensor(count, device=device)
    dist.all_reduce(n)
    return max(float(n) / dist.get_world_size(), 1.0)


class UPNCriterion(nn.Module):
    """Computes the weighted UPN loss from the model's training outputs.

    Expected ``outputs``: ``pred_logits`` (B,Q,1), ``pred_boxes`` (B,Q,4) cxcywh, ``aux_outputs`` (list of
    the same for earlier layers), ``enc_outputs`` (same, for the selected encoder proposals), and
    optionally ``dn_outputs`` (same structure, incl. ``aux_outputs``) with ``dn_meta``.
    """

    def __init__(self, cfg: CriterionConfig = CriterionConfig()) -> None:
        super().__init__()
        self.cfg = cfg

    def _losses(self, out: dict[str, torch.Tensor], targets: list[torch.Tensor],
                indices: list[tuple[torch.Tensor, torch.Tensor]], num_boxes: float) -> dict[str, torch.Tensor]:
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        onehot = torch.zeros_like(logits)
        src, tgt = [], []
        for b, (qi, ti) in enumerate(indices):
            if qi.numel():
                onehot[b, qi.to(logits.device), 0] = 1.0
                src.append(boxes[b, qi.to(boxes.device)])
                tgt.append(targets[b][ti.to(targets[b].device)].to(boxes))
        focal = sigmoid_focal_loss(logits.float(), onehot.float(), alpha=self.cfg.alpha, gamma=self.cfg.gamma,
                                   reduction="sum") / num_boxes
        if src:
            s, t = torch.cat(src).float(), torch.cat(tgt).float()
            l1 = (s - t).abs().sum() / num_boxes
            giou = generalized_box_iou_loss(box_convert(s, "cxcywh", "xyxy"), box_convert(t, "cxcywh", "xyxy"),
                                            reduction="sum") / num_boxes
        else:
            l1 = giou = boxes.sum() * 0.0
        return {"focal": focal, "l1": l1, "giou": giou}

    def forward(self, outputs: dict[str, Any], targets: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Args:
            outputs: the model's training outputs (see class docstring).
            targets: B tensors (N_b, 4) normalised cxcywh.

        Returns:
            total weighted loss, and logs: the three terms of the last layer plus the totals of the
            auxiliary, encoder and denoising parts.
        """
        device = outputs["pred_logits"].device
        num_boxes = _num_boxes(targets, device)
        w = {"focal": self.cfg.weight_focal, "l1": self.cfg.weight_l1, "giou": self.cfg.weight_giou}

        def weighted(parts: dict[str, torch.Tensor]) -> torch.Tensor:
            return sum(w[k] * v for k, v in parts.items())

        def matched(out):
            return hungarian_match(out["pred_logits"], out["pred_boxes"], targets, self.cfg.matcher)

        main = self._losses(outputs, targets, matched(outputs), num_boxes)
        total = weighted(main)
        logs = {f"loss_{k}": v.detach() for k, v in main.items()}
        aux_total = torch.zeros((), device=device)
        for aux in outputs.get("aux_outputs", []):
            aux_total = aux_total + weighted(self._losses(aux, targets, matched(aux), num_boxes))
        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            aux_total = aux_total + weighted(self._losses(enc, targets, matched(enc), num_boxes))
        total = total + aux_total
        logs["loss_aux"] = aux_total.detach()
        dn = outputs.get("dn_outputs")
        if dn is not None:
            meta = outputs["dn_meta"]
            idx = dn_positive_indices(meta)
            n_dn = num_boxes * meta["num_groups"]
            dn_total = weighted(self._losses(dn, targets, idx, n_dn))
            for aux in dn.get("aux_outputs", []):
                dn_total = dn_total + weighted(self._losses(aux, targets, idx, n_dn))
            total = total + dn_total
            logs["loss_dn"] = dn_total.detach()
        # one host copy for every logged value instead of one per value
        values = torch.stack([v.float() for v in logs.values()]).tolist()
        return total, dict(zip(logs, values))
