"""Contrastive denoising (CDN) queries for UPN training (DINO, Zhang et al. 2022), one class.

Each ground-truth box yields, per group, a *positive* query (small noise: it must reconstruct the box)
and a *negative* query (larger noise: it must be called background). Groups cannot see each other and
the matching queries cannot see any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from torchvision.ops import box_convert

from chatrex.training.upn.matcher import pad_targets


@dataclass
class DenoisingConfig:
    """Attributes:
        num_queries: budget of denoising queries per image (split into groups of 2 x max_gt).
        box_noise_scale: noise relative to half the box size (DINO's lambda).
        enabled: switch CDN off entirely.
    """

    num_queries: int = 100
    box_noise_scale: float = 0.4
    enabled: bool = True


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class DenoisingGenerator(nn.Module):
    """Builds CDN queries from targets. Its one parameter is the shared content vector of the queries
    (a single class, so there is no label to embed or to noise)."""

    def __init__(self, d_model: int, cfg: DenoisingConfig = DenoisingConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.content = nn.Embedding(1, d_model)

    def forward(self, targets: list[torch.Tensor], num_matching_queries: int,
                generator: Optional[torch.Generator] = None) -> Optional[dict[str, Any]]:
        """Args:
            targets: B tensors (N_b, 4), normalised cxcywh.
            num_matching_queries: Q, to size the attention mask.

        Returns:
            None when disabled or no image has a box; else ``dn_content`` (B, P, d),
            ``dn_refpoints`` (B, P, 4) unsigmoided, ``dn_attn_mask`` (P+Q, P+Q) bool True = blocked,
            and ``meta`` = {"pad_size": P, "num_groups": G, "max_gt": M, "num_gt": [N_b]}.
        """
        if not self.cfg.enabled or self.training is False:
            return None
        num_gt = [int(t.shape[0]) for t in targets]
        max_gt = max(num_gt, default=0)
        if max_gt == 0:
            return None
        groups = max(1, self.cfg.num_queries // (2 * max_gt))
        pad = groups * 2 * max_gt
        device = self.content.weight.device
        B = len(targets)
        # slot layout per image: group g, then positives (neg=0) and negatives (neg=1), then max_gt boxes
        gt = pad_targets(targets, device)  # (B,M,4); the padding slots are replaced below
        valid = torch.arange(max_gt, device=device)[None, :] < torch.tensor(num_gt, device=device)[:, None]
        xyxy = box_convert(gt, "cxcywh", "xyxy")[:, None, None]  # (B,1,1,M,4)
        half = (gt[..., 2:] / 2 * self.cfg.box_noise_scale).repeat(1, 1, 2)[:, None, None]
        shape = (B, groups, 2, max_gt, 4)
        sign = torch.randint(0, 2, shape, device=device, generator=generator).float() * 2 - 1
        part = torch.rand(shape, device=device, generator=generator)
        part[:, :, 1] += 1.0  # negatives: noise between 1 and 2 half-sizes
        noisy = box_convert((xyxy + sign * part * half).clamp(0, 1), "xyxy", "cxcywh")
        unused = torch.tensor([0.5, 0.5, 0.1, 0.1], device=device)  # centred boxes, treated as background
        boxes = torch.where(valid[:, None, None, :, None], noisy, unused).reshape(B, pad, 4)
        total = pad + num_matching_queries
        group = torch.arange(pad, device=device) // (2 * max_gt)
        mask = torch.zeros(total, total, dtype=torch.bool, device=device)
        mask[:pad, :pad] = group[:, None] != group[None, :]  # groups cannot see each other
        mask[pad:, :pad] = True  # matching queries do not see the denoising ones
        return {
            "dn_content": self.content.weight[0].expand(B, pad, -1),
            "dn_refpoints": inverse_sigmoid(boxes),
            "dn_attn_mask": mask,
            "meta": {"pad_size": pad, "num_groups": groups, "max_gt": max_gt, "num_gt": num_gt},
        }


def dn_positive_indices(meta: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each image: (query indices of the positive dn queries, their target indices)."""
    out = []
    for n in meta["num_gt"]:
        q, t = [], []
        for g in range(meta["num_groups"]):
            base = g * 2 * meta["max_gt"]
            q.extend(range(base, base + n))
            t.extend(range(n))
        out.append((torch.tensor(q, dtype=torch.int64), torch.tensor(t, dtype=torch.int64)))
    return out
