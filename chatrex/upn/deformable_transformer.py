"""The deformable transformer of UPN: encoder, two-stage query selection and decoder.

Conventions: batch-first tensors at the module boundaries; the decoder works sequence-first
internally (``nn.MultiheadAttention`` with ``batch_first=False``) like the official code, which keeps
the numerics identical. Boxes are (cx, cy, w, h) normalised to the valid (unpadded) area.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from chatrex.upn.config import UPNConfig
from chatrex.upn.ms_deform_attn import MSDeformAttn
from chatrex.upn.position_encoding import gen_sineembed_for_position


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms clamped to >= eps."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (``layers.{i}`` in the state_dict)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


def contrastive_logits(hs: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """The UPN class head (``ContrastiveAssign``): plain dot product. hs (B,N,d), prompt (B,1,d) -> (B,N,1)."""
    return hs @ prompt.transpose(-1, -2)


@dataclass
class EncoderState:
    """Everything the decoder needs from the backbone + encoder (prompt-independent).

    memory (B,S,d); mask_flatten (B,S) bool True=padding; spatial_shapes (L,2) int64;
    level_start_index (L,) int64; valid_ratios (B,L,2) as (w, h)."""

    memory: torch.Tensor
    mask_flatten: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    valid_ratios: torch.Tensor


def get_valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """mask (B,H,W) bool True=padding -> (B,2) (valid_W/W, valid_H/H) from the first row/column."""
    _, H, W = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / W, valid_h.float() / H], -1)


def encoder_reference_points(spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor) -> torch.Tensor:
    """Token centres of every level, normalised to the valid area, seen from every level: (B, S, L, 2) (x, y)."""
    refs = []
    device = valid_ratios.device
    for lvl, (H, W) in enumerate(spatial_shapes.tolist()):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, H - 0.5, H, dtype=torch.float32, device=device),
            torch.linspace(0.5, W - 0.5, W, dtype=torch.float32, device=device),
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * H)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * W)
        refs.append(torch.stack((ref_x, ref_y), -1))
    ref = torch.cat(refs, 1)
    return ref[:, :, None] * valid_ratios[:, None]


def gen_encoder_output_proposals(memory: torch.Tensor, memory_padding_mask: torch.Tensor,
                                 spatial_shapes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed box per encoder token (centre / valid size, side 0.05*2**level).

    Returns ``output_memory`` (B,S,d) with padded/invalid tokens zeroed and ``output_proposals``
    (B,S,4) in logit space, +inf for padded tokens and proposals not strictly inside (0.01, 0.99).
    """
    B = memory.shape[0]
    proposals = []
    cur = 0
    for lvl, (H, W) in enumerate(spatial_shapes.tolist()):
        m = memory_padding_mask[:, cur:cur + H * W].view(B, H, W, 1)
        valid_h = torch.sum(~m[:, :, 0, 0], 1)
        valid_w = torch.sum(~m[:, 0, :, 0], 1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, H - 1, H, dtype=torch.float32, device=memory.device),
            torch.linspace(0, W - 1, W, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
        scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(B, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(B, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
        proposals.append(torch.cat((grid, wh), -1).view(B, -1, 4))
        cur += H * W
    output_proposals = torch.cat(proposals, 1)
    valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
    output_proposals = torch.log(output_proposals / (1 - output_proposals))
    output_proposals = output_proposals.masked_fill(memory_padding_mask.unsqueeze(-1), float("inf"))
    output_proposals = output_proposals.masked_fill(~valid, float("inf"))
    output_memory = memory.masked_fill(memory_padding_mask.unsqueeze(-1), 0.0)
    output_memory = output_memory.masked_fill(~valid, 0.0)
    return output_memory, output_proposals


class DeformableTransformerEncoderLayer(nn.Module):
    """Post-norm: src = LN1(src + MSDA(src + pos)); src = LN2(src + FFN(src))."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int,
                 chunk_size: int | None = None, msda_implementation: str = "auto") -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, chunk_size=chunk_size,
                                      implementation=msda_implementation)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """src, pos (B,S,d); reference_points (B,S,L,2) -> (B,S,d)."""
        src2 = self.self_attn(src + pos, reference_points, src, spatial_shapes, key_padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


class DeformableTransformerEncoder(nn.Module):
    def __init__(self, cfg: UPNConfig) -> None:
        super().__init__()
        e = cfg.encoder
        self.layers = nn.ModuleList(
            DeformableTransformerEncoderLayer(cfg.d_model, e.d_ffn, e.dropout, cfg.num_feature_levels, e.n_heads,
                                              e.n_points, cfg.msda_chunk_size, cfg.msda_implementation)
            for _ in range(e.num_layers)
        )
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def forward(self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: torch.Tensor,
                valid_ratios: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        """src, pos (B,S,d); valid_ratios (B,L,2); key_padding_mask (B,S) -> memory (B,S,d)."""
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        out = src
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                out = checkpoint(layer, out, pos, reference_points, spatial_shapes, key_padding_mask,
                                 use_reentrant=False)
            else:
                out = layer(out, pos, reference_points, spatial_shapes, key_padding_mask)
        return out


class DeformableTransformerDecoderLayer(nn.Module):
    """Post-norm, sequence-first: self-attn -> norm2; deformable cross-attn -> norm1; FFN -> norm3."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int,
                 chunk_size: int | None = None, msda_implementation: str = "auto") -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, chunk_size=chunk_size,
                                       implementation=msda_implementation)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, reference_points: torch.Tensor,
                memory: torch.Tensor, memory_key_padding_mask: torch.Tensor | None, spatial_shapes: torch.Tensor,
                self_attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tgt, query_pos (Q,B,d); reference_points (Q,B,L,4); memory (S,B,d) -> (Q,B,d).
        ``self_attn_mask`` (Q,Q) bool, True = blocked."""
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, tgt, attn_mask=self_attn_mask)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.cross_attn((tgt + query_pos).transpose(0, 1), reference_points.transpose(0, 1).contiguous(),
                               memory.transpose(0, 1), spatial_shapes, memory_key_padding_mask).transpose(0, 1)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))


class DeformableTransformerDecoder(nn.Module):
    """Iterative box refinement with a shared box head (``bbox_embed`` is set by the UPN, aliased)."""

    def __init__(self, cfg: UPNConfig) -> None:
        super().__init__()
        d = cfg.d_model
        dc = cfg.decoder
        self.num_layers = dc.num_layers
        self.d_model = d
        self.layers = nn.ModuleList(
            DeformableTransformerDecoderLayer(d, dc.d_ffn, dc.dropout, cfg.num_feature_levels, dc.n_heads,
                                              dc.n_points, cfg.msda_chunk_size, cfg.msda_implementation)
            for _ in range(dc.num_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.ref_point_head = MLP(2 * d, d, d, 2)
        # Present in the official checkpoint; the official forward multiplies its output by 0, so it
        # has no effect and is not evaluated here.
        self.ref_point_head_point = MLP(d, d, d, 2)
        self.bbox_embed: nn.ModuleList | None = None  # set by UPN (shared MLP, one entry per layer)
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_key_padding_mask: torch.Tensor,
                refpoints_unsigmoid: torch.Tensor, spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor,
                self_attn_mask: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """
        Args (sequence-first): tgt (Q,B,d); memory (S,B,d); memory_key_padding_mask (B,S);
            refpoints_unsigmoid (Q,B,4); valid_ratios (B,L,2); self_attn_mask (Q,Q) bool or None.
        Returns:
            hs: list over layers of normed outputs (B,Q,d); refs: list of num_layers+1 reference boxes
            (B,Q,4) sigmoid space (refs[0] the input, refs[k+1] after layer k, detached).
        """
        assert self.bbox_embed is not None, "UPN must attach the shared bbox_embed"
        output = tgt
        reference_points = refpoints_unsigmoid.sigmoid()
        refs = [reference_points]
        intermediate = []
        vr = torch.cat([valid_ratios, valid_ratios], -1)[None, :]
        for layer_id, layer in enumerate(self.layers):
            ref_in = reference_points[:, :, None] * vr
            sine = gen_sineembed_for_position(ref_in[:, :, 0, :], num_pos_feats=self.d_model // 2)
            query_pos = self.ref_point_head(sine)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                output = checkpoint(layer, output, query_pos, ref_in, memory, memory_key_padding_mask,
                                    spatial_shapes, self_attn_mask, use_reentrant=False)
            else:
                output = layer(output, query_pos, ref_in, memory, memory_key_padding_mask, spatial_shapes,
                               self_attn_mask)
            new_ref = (self.bbox_embed[layer_id](output) + inverse_sigmoid(reference_points)).sigmoid()
            reference_points = new_ref.detach()
            refs.append(new_ref)
            intermediate.append(self.norm(output))
        return [h.transpose(0, 1) for h in intermediate], [r.transpose(0, 1) for r in refs]


class DeformableTransformer(nn.Module):
    """Encoder + two-stage selection + decoder. Parameters: ``level_embed`` (L,d), ``encoder``,
    ``decoder``, ``tgt_embed`` (Q,d), ``enc_output``, ``enc_output_norm``, ``enc_out_bbox_embed`` and one
    ``nn.Embedding(1, d)`` per prompt type (``fine_grained_prompt``, ``coarse_grained_prompt``)."""

    def __init__(self, cfg: UPNConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.d_model = d
        self.num_queries = cfg.num_queries
        self.num_feature_levels = cfg.num_feature_levels
        self.prompt_types = list(cfg.prompt_types)
        self.level_embed = nn.Parameter(torch.empty(cfg.num_feature_levels, d))
        self.encoder = DeformableTransformerEncoder(cfg)
        self.decoder = DeformableTransformerDecoder(cfg)
        self.tgt_embed = nn.Embedding(cfg.num_queries, d)
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        self.enc_out_bbox_embed = MLP(d, d, 4, 3)
        for name in self.prompt_types:
            self.add_module(name, nn.Embedding(1, d))
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.tgt_embed.weight)
        nn.init.constant_(self.enc_out_bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(self.enc_out_bbox_embed.layers[-1].bias, 0.0)

    def prompt(self, prompt_type: str, batch_size: int) -> torch.Tensor:
        """(B, 1, d): the prompt vector of ``prompt_type`` (a canonical name) repeated over the batch."""
        return getattr(self, prompt_type).weight[None].repeat(batch_size, 1, 1)

    def forward_encoder(self, srcs: list[torch.Tensor], masks: list[torch.Tensor],
                        pos_embeds: list[torch.Tensor]) -> EncoderState:
        """srcs/pos_embeds: per level (B,d,H_l,W_l); masks: per level (B,H_l,W_l) bool True=padding."""
        src_flatten, mask_flatten, lvl_pos_flatten, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            _, _, h, w = src.shape
            shapes.append((h, w))
            src_flatten.append(src.flatten(2).transpose(1, 2))
            mask_flatten.append(mask.flatten(1))
            lvl_pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flatten = torch.cat(src_flatten, 1)
        mask_flatten = torch.cat(mask_flatten, 1)
        lvl_pos_flatten = torch.cat(lvl_pos_flatten, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([get_valid_ratio(m) for m in masks], 1)
        memory = self.encoder(src_flatten, lvl_pos_flatten, spatial_shapes, valid_ratios, mask_flatten)
        return EncoderState(memory, mask_flatten, spatial_shapes, level_start_index, valid_ratios)

    def select_queries(self, state: EncoderState, prompt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Two-stage selection: score every token against the prompt, keep the top Q.

        Returns ``refpoint_embed`` (B,Q,4) unsigmoided box logits (detached), ``topk_index`` (B,Q),
        ``enc_logits`` (B,Q,1) and ``enc_boxes_unsig`` (B,Q,4) (not detached) of the selected tokens.
        """
        output_memory, output_proposals = gen_encoder_output_proposals(
            state.memory, state.mask_flatten, state.spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        logits = contrastive_logits(output_memory, prompt)  # (B,S,1)
        coords = self.enc_out_bbox_embed(output_memory) + output_proposals
        k = self.num_queries
        if logits.shape[1] < k:
            raise ValueError(f"the image gives only {logits.shape[1]} encoder tokens, fewer than the {k} queries")
        topk = torch.topk(logits.max(-1)[0], k, dim=1)[1]
        boxes_unsig = torch.gather(coords, 1, topk.unsqueeze(-1).repeat(1, 1, 4))
        enc_logits = torch.gather(logits, 1, topk.unsqueeze(-1))
        return {"refpoint_embed": boxes_unsig.detach(), "topk_index": topk, "enc_logits": enc_logits,
                "enc_boxes_unsig": boxes_unsig}

    def forward_decoder(self, state: EncoderState, refpoint_embed: torch.Tensor, tgt: torch.Tensor | None = None,
                        self_attn_mask: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """refpoint_embed (B,N,4) unsigmoided; tgt (B,N,d) (default: ``tgt_embed`` for every image)."""
        B = refpoint_embed.shape[0]
        if tgt is None:
            tgt = self.tgt_embed.weight[:, None, :].repeat(1, B, 1).transpose(0, 1)
        return self.decoder(tgt.transpose(0, 1), state.memory.transpose(0, 1), state.mask_flatten,
                            refpoint_embed.transpose(0, 1), state.spatial_shapes, state.valid_ratios,
                            self_attn_mask)
