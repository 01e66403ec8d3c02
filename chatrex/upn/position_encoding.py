"""Sine position encodings of UPN.

* ``PositionEmbeddingSineHW``: the image embedding of every feature level (DINO's "HW" variant:
  separate temperatures for y and x; UPN uses 20 for both), computed from the padding mask.
* ``gen_sineembed_for_position``: the query embedding of reference boxes in the decoder
  (temperature 10000, order y, x, w, h).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _interleave_sin_cos(e: torch.Tensor) -> torch.Tensor:
    """(..., F) angles -> (..., F): even channels sin(e[2j]), odd channels cos(e[2j+1]) interleaved."""
    return torch.stack((e[..., 0::2].sin(), e[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSineHW(nn.Module):
    """Normalised sine embedding of the (y, x) position of every non-padding pixel.

    ``forward(mask (B,H,W) bool True=padding) -> (B, 2*num_pos_feats, H, W)`` float32: the first
    ``num_pos_feats`` channels encode y, the rest x. Positions are cumulative counts of valid pixels,
    divided by the last value of their row/column (+1e-6) and scaled to [0, 2*pi].
    """

    def __init__(self, num_pos_feats: int = 128, temperature_h: float = 20.0, temperature_w: float = 20.0,
                 scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature_h = temperature_h
        self.temperature_w = temperature_w
        self.scale = scale

    def _dim_t(self, temperature: float, device: torch.device) -> torch.Tensor:
        k = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / self.num_pos_feats)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.dim() != 3 or mask.dtype != torch.bool:
            raise ValueError(f"position embedding expects a (B,H,W) bool mask, got {tuple(mask.shape)} {mask.dtype}")
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        pos_x = x_embed[:, :, :, None] / self._dim_t(self.temperature_w, mask.device)
        pos_y = y_embed[:, :, :, None] / self._dim_t(self.temperature_h, mask.device)
        pos = torch.cat((_interleave_sin_cos(pos_y), _interleave_sin_cos(pos_x)), dim=3)
        return pos.permute(0, 3, 1, 2)


def gen_sineembed_for_position(pos_tensor: torch.Tensor, num_pos_feats: int = 128,
                               temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding of normalised points or boxes.

    ``pos_tensor`` (..., 2) as (x, y) or (..., 4) as (cx, cy, w, h), values in [0, 1].
    Returns (..., 2*num_pos_feats) ordered (y, x) or (..., 4*num_pos_feats) ordered (y, x, w, h).
    """
    if pos_tensor.shape[-1] not in (2, 4):
        raise ValueError(f"gen_sineembed_for_position expects 2 or 4 coordinates, got {pos_tensor.shape[-1]}")
    scale = 2 * math.pi
    k = torch.arange(num_pos_feats, dtype=torch.float32, device=pos_tensor.device)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_pos_feats)

    def embed(c: torch.Tensor) -> torch.Tensor:
        return _interleave_sin_cos((c * scale)[..., None] / dim_t)

    parts = [embed(pos_tensor[..., 1]), embed(pos_tensor[..., 0])]
    if pos_tensor.shape[-1] == 4:
        parts += [embed(pos_tensor[..., 2]), embed(pos_tensor[..., 3])]
    return torch.cat(parts, dim=-1)
