"""UPN: the Universal Proposal Network (API skeleton; implementation follows)."""

from __future__ import annotations

import torch
from torch import nn

from chatrex.upn.config import UPNConfig


class UPN(nn.Module):
    """Swin backbone + 5-level input projection + deformable transformer + shared box head.

    ``forward(images (B,3,H,W) float, mask (B,H,W) bool True=padding, prompt_type)`` returns
    ``{"pred_logits": (B,Q,1), "pred_boxes": (B,Q,4) cxcywh normalised to the valid area}``.
    """

    def __init__(self, cfg: UPNConfig) -> None:
        super().__init__()
        self.config = cfg

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None,
                prompt_type: str = "fine_grained_prompt", *, return_aux: bool = False,
                dn_content: torch.Tensor | None = None, dn_refpoints: torch.Tensor | None = None,
                dn_attn_mask: torch.Tensor | None = None) -> dict:
        raise NotImplementedError


def build_upn(cfg) -> UPN:
    from chatrex.upn.config import resolve_config

    return UPN(resolve_config(cfg))
