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
        boxes = torch.zeros(B, pad, 4, device=device)
        boxes[..., :2] = 0.5  # unused slots: centred boxes, treated as background
        boxes[..., 2:] = 0.1
        for b, t in enumerate(targets):
            n = num_gt[b]
            if n == 0:
                continue
            t = t.to(device).float()
            xyxy = box_convert(t, "cxcywh", "xyxy")
            half = torch.cat([t[:, 2:], t[:, 2:]], dim=1) / 2 * self.cfg.box_noise_scale
            for g in range(groups):
                for neg in (0, 1):
                    sign = torch.randint(0, 2, (n, 4), device=device, generator=generator).float() * 2 - 1
                    part = torch.rand(n, 4, device=device, generator=generator) + neg
                    noisy = (xyxy + sign * part * half).clamp(0, 1)
                    noisy = box_convert(noisy, "xyxy", "cxcywh")
                    start = g * 2 * max_gt + neg * max_gt
                    boxes[b, start : start + n] = noisy
        total = pad + num_matching_queries
        mask = torch.zeros(total, total, dtype=torch.bool, device=device)
        mask[pad:, :pad] = True  # matching queries do not see the denoising ones
        for g in range(groups):
            s, e = g * 2 * max_gt, (g + 1) * 2 * max_gt
            mask[s:e, :s] = True
            mask[s:e, e:pad] = True
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
