"""UPN set losses: sigmoid focal (objectness), L1 and GIoU, on every decoder layer, the encoder
proposals and the denoising queries (paper App. B.1: weights 1, 5, 2)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from chatrex.training.upn.denoising import dn_positive_indices
from chatrex.training.upn.matcher import MatcherConfig, hungarian_match_layers, matcher_threads


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
    optionally ``dn_outputs`` (same structure, incl. ``aux_outputs``, with their own query count) with
    ``dn_meta``.

    The layers of each set (matched: last, auxiliary, encoder; denoising: last, auxiliary) are stacked
    and their losses computed together, so the number of operations (GPU kernel launches) does not
    grow with the batch size or the number of layers.
    """

    def __init__(self, cfg: CriterionConfig = CriterionConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self._pool: Optional[ThreadPoolExecutor] = None  # the matcher's threads, started at the first call

    def _executor(self) -> Optional[ThreadPoolExecutor]:
        threads = matcher_threads(self.cfg.matcher)
        if threads > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="upn-matcher")
        return self._pool

    def __getstate__(self) -> dict[str, Any]:  # data workers get a copy of the task: threads do not travel
        state = self.__dict__.copy()
        state["_pool"] = None
        return state

    def _layer_losses(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[torch.Tensor],
                      indices: list[list[tuple[torch.Tensor, torch.Tensor]]], num_boxes: float) -> dict[str, torch.Tensor]:
        """Focal, L1 and GIoU losses of each layer.

        Args:
            logits (L,B,Q,1), boxes (L,B,Q,4) cxcywh: the stacked layers.
            targets: B tensors (N_b,4) cxcywh.
            indices: per layer, B pairs (query_idx, target_idx) from the matcher.
            num_boxes: the normaliser.
        Returns:
            {"focal"|"l1"|"giou": (L,)}.
        """
        L = logits.shape[0]
        # (layer, image, query, flat target) of every matched pair, gathered on the host, copied once
        cols: list[list[np.ndarray]] = [[], [], [], []]
        offset = 0
        for b, t in enumerate(targets):
            for layer, pairs in enumerate(indices):
                qi, ti = pairs[b]
                cols[0].append(np.full(len(qi), layer))
                cols[1].append(np.full(len(qi), b))
                cols[2].append(qi.numpy())
                cols[3].append(ti.numpy() + offset)
            offset += int(t.shape[0])
        n_pairs = sum(len(c) for c in cols[2])
        idx = None
        if n_pairs:
            idx = torch.from_numpy(np.stack([np.concatenate(c).astype(np.int64) for c in cols])).to(logits.device)
        onehot = torch.zeros(logits.shape[:3], dtype=torch.float32, device=logits.device)
        if idx is not None:
            onehot[idx[0], idx[1], idx[2]] = 1.0
        focal = sigmoid_focal_loss(logits[..., 0].float(), onehot, alpha=self.cfg.alpha, gamma=self.cfg.gamma,
                                   reduction="none").sum((1, 2)) / num_boxes
        if idx is None:
            zero = boxes.sum() * 0.0
            return {"focal": focal, "l1": zero.expand(L), "giou": zero.expand(L)}
        src = boxes[idx[0], idx[1], idx[2]].float()
        tgt = torch.cat(targets).to(src)[idx[3]]
        per_pair_l1 = (src - tgt).abs().sum(-1)
        per_pair_giou = generalized_box_iou_loss(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"),
                                                 reduction="none")
        per_layer = torch.zeros(2, L, dtype=torch.float32, device=src.device)
        per_layer.index_add_(1, idx[0], torch.stack([per_pair_l1, per_pair_giou]))
        return {"focal": focal, "l1": per_layer[0] / num_boxes, "giou": per_layer[1] / num_boxes}

    def forward(self, outputs: dict[str, Any], targets: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args:
            outputs: the model's training outputs (see class docstring).
            targets: B tensors (N_b, 4) normalised cxcywh.

        Returns:
            total weighted loss, and logs (0-d tensors, detached): the three terms of the last layer
            plus the totals of the auxiliary, encoder and denoising parts.
        """
        device = outputs["pred_logits"].device
        num_boxes = _num_boxes(targets, device)
        w = {"focal": self.cfg.weight_focal, "l1": self.cfg.weight_l1, "giou": self.cfg.weight_giou}

        def weighted(parts: dict[str, torch.Tensor]) -> torch.Tensor:
            return sum(w[k] * v for k, v in parts.items())

        matched = [outputs, *outputs.get("aux_outputs", [])]
        if "enc_outputs" in outputs:
            matched.append(outputs["enc_outputs"])
        logits = torch.stack([o["pred_logits"] for o in matched])
        boxes = torch.stack([o["pred_boxes"] for o in matched])
        indices = hungarian_match_layers(logits, boxes, targets, self.cfg.matcher, self._executor())
        parts = self._layer_losses(logits, boxes, targets, indices, num_boxes)
        per_layer = weighted(parts)  # (L,): last layer first
        total = per_layer.sum()
        logs = {f"loss_{k}": v[0].detach() for k, v in parts.items()}
        logs["loss_aux"] = per_layer[1:].sum().detach()
        dn = outputs.get("dn_outputs")
        if dn is not None:
            meta = outputs["dn_meta"]
            layers = [dn, *dn.get("aux_outputs", [])]
            positives = dn_positive_indices(meta)
            dn_parts = self._layer_losses(torch.stack([o["pred_logits"] for o in layers]),
                                          torch.stack([o["pred_boxes"] for o in layers]), targets,
                                          [positives] * len(layers), num_boxes * meta["num_groups"])
            dn_total = weighted(dn_parts).sum()
            total = total + dn_total
            logs["loss_dn"] = dn_total.detach()
        return total, logs
