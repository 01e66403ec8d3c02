"""UPN: the Universal Proposal Network of ChatRex.

Swin backbone -> 5-level input projection (4 stages + one stride-2 level from the raw last stage)
-> deformable encoder -> prompt-scored two-stage query selection -> deformable decoder with
iterative refinement -> shared box head + contrastive (dot-product) class head.

State-dict keys equal the official ones (``backbone.model.backbone.*``, ``transformer.*``,
``input_proj.*``, ``bbox_embed.*``); the shared box MLP appears under ``bbox_embed.{i}`` and
``transformer.decoder.bbox_embed.{i}`` (12 names, one module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chatrex.upn.checkpoint import (
    DEFAULT_MAX_SHARD_SIZE,
    load_pretrained_weights,
    load_state_dict_checked,
    read_pretrained_config,
    save_pretrained,
)
from chatrex.upn.config import UPNConfig, canonical_prompt_type, resolve_config
from chatrex.upn.deformable_transformer import (
    MLP,
    DeformableTransformer,
    EncoderState,
    contrastive_logits,
    inverse_sigmoid,
)
from chatrex.upn.position_encoding import PositionEmbeddingSineHW
from chatrex.upn.swin import SwinTransformer


class _Joiner(nn.Module):
    """Holds the Swin as ``backbone`` (the official ``Joiner``: ``model.backbone`` in key names)."""

    def __init__(self, backbone: SwinTransformer) -> None:
        super().__init__()
        self.backbone = backbone


class SwinWrapper(nn.Module):
    """Swin + sine position embedding; ``forward(images, mask)`` -> (features, masks, pos) per stage."""

    def __init__(self, cfg: UPNConfig) -> None:
        super().__init__()
        self.model = _Joiner(SwinTransformer(cfg.backbone))
        self.pos_embed = PositionEmbeddingSineHW(cfg.d_model // 2, cfg.pos_temperature, cfg.pos_temperature)
        self.stages = cfg.stages
        self.num_channels = [cfg.backbone.num_features[i] for i in self.stages]

    def forward(self, images: torch.Tensor, mask: torch.Tensor):
        """Returns the features of ``cfg.stages`` with their masks and position embeddings."""
        feats = self.model.backbone(images)
        feats = [feats[i] for i in self.stages]
        masks = [resize_mask(mask, f.shape[-2:]) for f in feats]
        pos = [self.pos_embed(m).to(f.dtype) for f, m in zip(feats, masks)]
        return feats, masks, pos


def resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """(B,H,W) bool -> (B,h,w) bool by nearest interpolation (index floor(dst*in/out))."""
    return F.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]


class UPN(nn.Module):
    """Universal Proposal Network.

    ``forward(images (B,3,H,W) float normalised, mask (B,H,W) bool True=padding, prompt_type)``
    returns ``{"pred_logits": (B,Q,1), "pred_boxes": (B,Q,4)}``: per query slot, the contrastive
    logit against the prompt and the box (cx, cy, w, h) normalised to the valid (unpadded) area.
    ``prompt_type`` is ``"fine_grained_prompt"`` or ``"coarse_grained_prompt"`` (or ``"fine"`` /
    ``"coarse"``); any other value raises ``ValueError`` (the official code silently scores with a
    zero vector instead).

    Training hooks (all optional; the inference path is unchanged when they are off):
      * ``return_aux=True`` adds ``"aux_outputs"`` (decoder layers 0..n-2, each ``{"pred_logits",
        "pred_boxes"}``) and ``"enc_outputs"`` (``pred_logits`` (B,Q,1) and ``pred_boxes`` (B,Q,4) =
        sigmoid(enc_out_bbox_embed + proposal) of the selected top-Q encoder tokens) and
        ``"topk_index"`` (B,Q).
      * ``dn_content`` (B,Ndn,d), ``dn_refpoints`` (B,Ndn,4 unsigmoided) and ``dn_attn_mask``
        (Ndn+Q, Ndn+Q) bool True=blocked: denoising queries prepended to the matching queries. Their
        outputs come back as ``"dn_outputs"`` (``pred_logits``, ``pred_boxes`` and, with
        ``return_aux``, ``aux_outputs``) and ``"dn_meta"`` = ``{"num_dn": Ndn}``; the main outputs hold
        only the Q matching queries.
    Gradient checkpointing (Swin blocks, encoder and decoder layers) is on when
    ``cfg.gradient_checkpointing`` or after ``gradient_checkpointing_enable()``.
    """

    def __init__(self, cfg: UPNConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        d = cfg.d_model
        self.backbone = SwinWrapper(cfg)
        self.transformer = DeformableTransformer(cfg)
        chans = self.backbone.num_channels
        proj = [nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(32, d)) for c in chans]
        extra_in = chans[-1]
        for _ in range(cfg.num_feature_levels - len(chans)):
            proj.append(nn.Sequential(nn.Conv2d(extra_in, d, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, d)))
            extra_in = d
        self.input_proj = nn.ModuleList(proj)
        for p in self.input_proj:
            nn.init.xavier_uniform_(p[0].weight, gain=1)
            nn.init.constant_(p[0].bias, 0)
        box = MLP(d, d, 4, 3)
        nn.init.constant_(box.layers[-1].weight, 0.0)
        nn.init.constant_(box.layers[-1].bias, 0.0)
        self.bbox_embed = nn.ModuleList([box] * cfg.decoder.num_layers)
        self.transformer.decoder.bbox_embed = self.bbox_embed
        if cfg.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    # -- conveniences ------------------------------------------------------------------------------
    @property
    def num_queries(self) -> int:
        return self.config.num_queries

    @property
    def prompt_types(self) -> list[str]:
        return list(self.config.prompt_types)

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute Swin blocks and transformer layers in the backward pass (training only)."""
        self.config.gradient_checkpointing = enabled
        self.backbone.model.backbone.set_gradient_checkpointing(enabled)
        self.transformer.encoder.gradient_checkpointing = enabled
        self.transformer.decoder.gradient_checkpointing = enabled

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "UPN":
        """Load a directory written by ``save_pretrained`` (see ``chatrex.upn.checkpoint``)."""
        return from_pretrained(path, device=device, dtype=dtype)

    def save_pretrained(self, path: str | Path, max_shard_size: int | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (sharded when large) to ``path``."""
        return save_pretrained(self, self.config, path, max_shard_size=max_shard_size or DEFAULT_MAX_SHARD_SIZE)

    # -- forward pieces ----------------------------------------------------------------------------
    @staticmethod
    def _check_inputs(images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"UPN expects images of shape (B, 3, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"UPN expects float images (normalised), got {images.dtype}")
        B, _, H, W = images.shape
        if mask is None:
            return torch.zeros((B, H, W), dtype=torch.bool, device=images.device)
        if not torch.is_tensor(mask) or tuple(mask.shape) != (B, H, W):
            shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f"UPN mask must have shape (B, H, W) = {(B, H, W)}, got {shape}")
        if mask.dtype != torch.bool:
            raise ValueError(f"UPN mask must be bool (True = padding), got {mask.dtype}")
        if bool(mask[:, 0, 0].any()):
            raise ValueError("UPN mask marks the top-left pixel as padding: an image would be empty "
                             "(images are padded at the bottom/right; True = padding)")
        return mask

    def forward_encoder(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderState:
        """Backbone + input projection + encoder; prompt-independent, reusable for several prompts."""
        mask = self._check_inputs(images, mask)
        feats, masks, poss = self.backbone(images, mask)
        srcs = [proj(f) for proj, f in zip(self.input_proj, feats)]
        n = len(srcs)
        for lvl in range(n, self.config.num_feature_levels):
            src = self.input_proj[lvl](feats[-1] if lvl == n else srcs[-1])
            m = resize_mask(mask, src.shape[-2:])
            srcs.append(src)
            masks.append(m)
            poss.append(self.backbone.pos_embed(m).to(src.dtype))
        return self.transformer.forward_encoder(srcs, masks, poss)

    def _heads(self, hs: list[torch.Tensor], refs: list[torch.Tensor], prompt: torch.Tensor) -> list[dict]:
        outs = []
        for k, (h, ref) in enumerate(zip(hs, refs[:-1])):
            boxes = (self.bbox_embed[k](h) + inverse_sigmoid(ref)).sigmoid()
            outs.append({"pred_logits": contrastive_logits(h, prompt), "pred_boxes": boxes})
        return outs

    def forward_decoder(self, state: EncoderState, prompt_type: str, *, return_aux: bool = False,
                        dn_content: torch.Tensor | None = None, dn_refpoints: torch.Tensor | None = None,
                        dn_attn_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Query selection + decoder + heads for one prompt type, from ``forward_encoder``'s state."""
        name = canonical_prompt_type(prompt_type, self.config.prompt_types)
        B = state.memory.shape[0]
        prompt = self.transformer.prompt(name, B)
        sel = self.transformer.select_queries(state, prompt)
        refpoint_embed = sel["refpoint_embed"]
        tgt = self.transformer.tgt_embed.weight[:, None, :].repeat(1, B, 1).transpose(0, 1)
        num_dn = 0
        if dn_content is not None or dn_refpoints is not None:
            dn_content, dn_refpoints, dn_attn_mask = self._check_dn(dn_content, dn_refpoints, dn_attn_mask, B)
            num_dn = dn_content.shape[1]
            tgt = torch.cat([dn_content, tgt], dim=1)
            refpoint_embed = torch.cat([dn_refpoints, refpoint_embed], dim=1)
        elif dn_attn_mask is not None:
            raise ValueError("dn_attn_mask given without dn_content / dn_refpoints")
        hs, refs = self.transformer.forward_decoder(state, refpoint_embed, tgt, dn_attn_mask)
        layers = self._heads(hs, refs, prompt)
        out: dict[str, Any] = dict(layers[-1]) if num_dn == 0 else self._split(layers[-1], num_dn)[1]
        if return_aux:
            aux = layers[:-1] if num_dn == 0 else [self._split(o, num_dn)[1] for o in layers[:-1]]
            out["aux_outputs"] = aux
            out["enc_outputs"] = {"pred_logits": sel["enc_logits"], "pred_boxes": sel["enc_boxes_unsig"].sigmoid()}
            out["topk_index"] = sel["topk_index"]
        if num_dn:
            dn = self._split(layers[-1], num_dn)[0]
            if return_aux:
                dn["aux_outputs"] = [self._split(o, num_dn)[0] for o in layers[:-1]]
            out["dn_outputs"] = dn
            out["dn_meta"] = {"num_dn": num_dn}
        return out

    @staticmethod
    def _split(o: dict[str, torch.Tensor], n: int) -> tuple[dict, dict]:
        return ({k: v[:, :n] for k, v in o.items()}, {k: v[:, n:] for k, v in o.items()})

    def _check_dn(self, content, refpoints, attn_mask, B):
        d, Q = self.config.d_model, self.config.num_queries
        if content is None or refpoints is None:
            raise ValueError("denoising needs both dn_content (B,Ndn,d) and dn_refpoints (B,Ndn,4)")
        if content.dim() != 3 or content.shape[0] != B or content.shape[2] != d:
            raise ValueError(f"dn_content must be (B={B}, Ndn, {d}), got {tuple(content.shape)}")
        n = content.shape[1]
        if tuple(refpoints.shape) != (B, n, 4):
            raise ValueError(f"dn_refpoints must be (B={B}, Ndn={n}, 4), got {tuple(refpoints.shape)}")
        if attn_mask is not None:
            if tuple(attn_mask.shape) != (n + Q, n + Q) or attn_mask.dtype != torch.bool:
                raise ValueError(f"dn_attn_mask must be bool of shape ({n + Q}, {n + Q}), got "
                                 f"{tuple(attn_mask.shape)} {attn_mask.dtype}")
        return content, refpoints, attn_mask

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None,
                prompt_type: str = "fine_grained_prompt", *, return_aux: bool = False,
                dn_content: torch.Tensor | None = None, dn_refpoints: torch.Tensor | None = None,
                dn_attn_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """See the class docstring. ``mask=None`` means no padding."""
        # fail on bad arguments before the heavy work
        canonical_prompt_type(prompt_type, self.config.prompt_types)
        if dn_content is not None or dn_refpoints is not None:
            self._check_dn(dn_content, dn_refpoints, dn_attn_mask, images.shape[0] if torch.is_tensor(images) else -1)
        elif dn_attn_mask is not None:
            raise ValueError("dn_attn_mask given without dn_content / dn_refpoints")
        state = self.forward_encoder(images, mask)
        return self.forward_decoder(state, prompt_type, return_aux=return_aux, dn_content=dn_content,
                                    dn_refpoints=dn_refpoints, dn_attn_mask=dn_attn_mask)


def build_upn(cfg: "UPNConfig | str | Path | dict") -> UPN:
    """Build a randomly initialised UPN from a config (anything ``resolve_config`` accepts)."""
    return UPN(resolve_config(cfg))


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, strict: bool = True) -> UPN:
    """Build a UPN from a ``save_pretrained`` directory and load its weights; returns it in eval mode."""
    cfg = read_pretrained_config(directory)
    model = UPN(cfg)
    load_state_dict_checked(model, load_pretrained_weights(directory), strict=strict,
                            source=f"checkpoint directory '{directory}'")
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device).eval()
