"""Multi-scale deformable attention (Zhu et al., Deformable DETR), as used by UPN.

The sampling lives in ONE function, ``multi_scale_deformable_attention``, with two implementations:

- ``"pytorch"``: ``F.grid_sample`` (bilinear, zero padding, ``align_corners=False``), runs anywhere;
- ``"triton"``: the fused kernel of ``chatrex.upn.ms_deform_attn_triton`` (CUDA tensors, or CPU under
  ``TRITON_INTERPRET=1``), which never materialises the per-point samples.

``"auto"`` (the default) takes Triton for CUDA tensors when it imports, else PyTorch. Both compute in
fp32 and agree to float rounding.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from chatrex.upn.config import MSDA_IMPLEMENTATIONS as IMPLEMENTATIONS


def check_implementation(implementation: str) -> None:
    """Raise ``ValueError`` unless ``implementation`` is one of ``IMPLEMENTATIONS``."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"deformable-attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether the fused kernel can be imported (Triton installed)."""
    try:
        import chatrex.upn.ms_deform_attn_triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_implementation(implementation: str, device: torch.device) -> str:
    """Map ``"auto"`` to ``"triton"`` (CUDA tensors, Triton importable) or ``"pytorch"``; check the rest."""
    check_implementation(implementation)
    if implementation == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "pytorch"
    if implementation == "triton":
        if not triton_available():
            raise RuntimeError("the 'triton' deformable attention needs the triton package (pip install triton)")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"the 'triton' deformable attention runs on CUDA tensors (got {device.type}); "
                               "use 'pytorch', or set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter")
    return implementation


def multi_scale_deformable_attention(value: torch.Tensor, spatial_shapes: torch.Tensor | list,
                                     sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                                     chunk_size: int | None = None, implementation: str = "pytorch") -> torch.Tensor:
    """Bilinearly sample every level's value map and sum with attention weights.

    Args:
        value: (B, S, M, D) per-head values, S = sum_l H_l*W_l (levels concatenated row-major).
        spatial_shapes: (L, 2) int (H_l, W_l) or a list of pairs.
        sampling_locations: (B, Lq, M, L, P, 2) normalised (x, y) in [0, 1] (pixel centres at +0.5).
        attention_weights: (B, Lq, M, L, P), already softmax-ed over L*P.
        chunk_size: sample at most this many queries at once (``"pytorch"`` only: memory bound;
            results are identical).
        implementation: "pytorch", "triton" or "auto" (see the module docstring).
    Returns:
        (B, Lq, M*D) in the dtype of ``value``; computed in fp32 (autocast is disabled inside).
    """
    out_dtype = value.dtype
    shapes = [(int(h), int(w)) for h, w in (spatial_shapes.tolist() if torch.is_tensor(spatial_shapes) else spatial_shapes)]
    B, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if sum(h * w for h, w in shapes) != S:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} tokens but value has {S}")
    if L != len(shapes) or attention_weights.shape != (B, Lq, M, L, P):
        raise ValueError(
            f"inconsistent shapes: value {tuple(value.shape)}, locations {tuple(sampling_locations.shape)}, "
            f"weights {tuple(attention_weights.shape)}, {len(shapes)} levels"
        )
    device_type = value.device.type if value.device.type in ("cuda", "cpu") else "cpu"
    if resolve_implementation(implementation, value.device) == "triton":
        from chatrex.upn.ms_deform_attn_triton import multi_scale_deformable_attention_triton

        with torch.autocast(device_type=device_type, enabled=False):
            out = multi_scale_deformable_attention_triton(value, shapes, sampling_locations, attention_weights)
        return out.to(out_dtype)
    with torch.autocast(device_type=device_type, enabled=False):
        value = value.float()
        sampling_locations = sampling_locations.float()
        attention_weights = attention_weights.float()
        # (B, H_l*W_l, M, D) -> (B*M, D, H_l, W_l), one map per level
        maps = [v.flatten(2).transpose(1, 2).reshape(B * M, D, h, w)
                for v, (h, w) in zip(value.split([h * w for h, w in shapes], dim=1), shapes)]
        if Lq == 0:
            # no queries: an empty output that still carries (zero) gradients to every input
            empty = value[:, :0].reshape(B, 0, M * D)
            return (empty + 0 * sampling_locations.sum() + 0 * attention_weights.sum()).to(out_dtype)
        step = Lq if not chunk_size or chunk_size >= Lq else int(chunk_size)
        outs = []
        for start in range(0, Lq, step):
            loc = sampling_locations[:, start:start + step]
            wts = attention_weights[:, start:start + step]
            n = loc.shape[1]
            grids = 2 * loc - 1
            sampled = []
            for lvl, vmap in enumerate(maps):
                # (B, n, M, P, 2) -> (B*M, n, P, 2)
                grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
                sampled.append(F.grid_sample(vmap, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
            # (B, n, M, L, P) -> (B*M, 1, n, L*P)
            w = wts.transpose(1, 2).reshape(B * M, 1, n, L * P)
            out = (torch.stack(sampled, dim=-2).flatten(-2) * w).sum(-1).view(B, M * D, n)
            outs.append(out.transpose(1, 2))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return out.contiguous().to(out_dtype)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module.

    Parameters (state_dict names as in the official code): ``sampling_offsets`` (d -> M*L*P*2),
    ``attention_weights`` (d -> M*L*P), ``value_proj`` (d -> d), ``output_proj`` (d -> d).
    Offsets are laid out ((head*L + level)*P + point)*2 + xy.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 5, n_heads: int = 8, n_points: int = 4,
                 chunk_size: int | None = 16384, implementation: str = "auto") -> None:
        super().__init__()
        check_implementation(implementation)
        if d_model % n_heads != 0:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.chunk_size = chunk_size
        self.implementation = implementation
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable-DETR initialisation: offsets start on rays around the reference, uniform weights."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: torch.Tensor, input_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            query: (B, Lq, d).
            reference_points: (B, Lq, L, 2) normalised (x, y), or (B, Lq, L, 4) boxes (cx, cy, w, h).
            input_flatten: (B, S, d) the values before ``value_proj``.
            spatial_shapes: (L, 2) int64 (H_l, W_l).
            input_padding_mask: (B, S) bool, True = padding (its values are zeroed).
        Returns:
            (B, Lq, d).
        """
        B, Lq, _ = query.shape
        _, S, _ = input_flatten.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(B, S, M, self.d_model // M)
        offsets = self.sampling_offsets(query).view(B, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Lq, M, L * P)
        weights = F.softmax(weights, -1).view(B, Lq, M, L, P)
        if reference_points.shape[-1] == 2:
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {tuple(reference_points.shape)}")
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights, chunk_size=self.chunk_size,
                                               implementation=self.implementation)
        return self.output_proj(out)
