"""Object tokens: multi-level RoI features of the high-resolution ConvNeXt maps plus a box embedding.

For each box (xyxy, normalised to the padded square):

1. all ConvNeXt levels are resized bilinearly (``align_corners=False``) to the stride-4 map and
   concatenated along channels (C_total = sum of the level widths; 2880 at full size);
2. ``torchvision.ops.roi_align`` with ``output_size`` 7, ``spatial_scale`` = map size / input size
   (1/4), ``sampling_ratio=-1`` and ``aligned=False`` pools a 7 x 7 patch, averaged to one C_total vector;
3. a sine embedding of the normalised box (cx, cy, w, h), ``D = C_total // 4`` features per
   coordinate in the order (y, x, w, h), is added.

The result (before ``mm_object_projector``) is what ``object_features`` in
``shared/fixtures/object_encoder`` holds. All boxes of all images go through one ``roi_align`` call.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def box_sine_embedding(boxes_cxcywh: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding of normalised boxes.

    Args:
        boxes_cxcywh: (N, 4) boxes (cx, cy, w, h) in [0, 1].
        num_feats: D, features per coordinate.
    Returns:
        (N, 4 * D): blocks for (y, x, w, h); inside a block feature k is ``sin`` (k even) or ``cos`` (k odd)
        of ``coord * 2π / temperature^(2·floor(k/2)/D)``.
    """
    if boxes_cxcywh.ndim != 2 or boxes_cxcywh.shape[-1] != 4:
        raise ValueError(f"boxes_cxcywh must have shape (N, 4); got {tuple(boxes_cxcywh.shape)}")
    k = torch.arange(num_feats, dtype=torch.float32, device=boxes_cxcywh.device)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_feats)
    coords = boxes_cxcywh.float() * (2 * math.pi)
    even = (k.long() % 2 == 0)
    blocks = []
    for index in (1, 0, 2, 3):  # y, x, w, h
        pos = coords[:, index : index + 1] / dim_t  # (N, D)
        blocks.append(torch.where(even, pos.sin(), pos.cos()))
    return torch.cat(blocks, dim=-1)


def xyxy_box_embedding(boxes_xyxy: torch.Tensor, num_feats: int) -> torch.Tensor:
    """:func:`box_sine_embedding` of (N, 4) normalised xyxy boxes (converted to cx, cy, w, h); (N, 4 * D) float32."""
    b = boxes_xyxy.float()
    cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], dim=-1)
    return box_sine_embedding(cxcywh, num_feats)


def fuse_levels(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Resize every level to the first (finest) one and concatenate channels.

    Args:
        levels: L tensors (B, C_l, H_l, W_l), finest first.
    Returns:
        (B, sum C_l, H_0, W_0).
    """
    if not levels:
        raise ValueError("fuse_levels needs at least one feature level")
    size = levels[0].shape[-2:]
    out = [levels[0]]
    for level in levels[1:]:
        out.append(F.interpolate(level, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out, dim=1)


def validate_boxes(boxes: Sequence[torch.Tensor], batch_size: int) -> None:
    """Check that ``boxes`` is a list of B finite (K_i, 4) tensors; raise ``ValueError`` naming the problem."""
    if not isinstance(boxes, (list, tuple)):
        raise ValueError(f"boxes must be a list of B tensors of shape (K_i, 4); got {type(boxes).__name__}")
    if len(boxes) != batch_size:
        raise ValueError(f"boxes has {len(boxes)} entries but the batch has {batch_size} images")
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor):
            raise ValueError(f"boxes[{i}] must be a tensor of shape (K, 4); got {type(b).__name__}")
        if b.ndim != 2 or b.shape[-1] != 4:
            raise ValueError(f"boxes[{i}] must have shape (K, 4); got {tuple(b.shape)}")
        if b.numel() and not torch.isfinite(b).all():
            raise ValueError(f"boxes[{i}] contains NaN or infinite values")


def encode_objects(
    levels: Sequence[torch.Tensor],
    boxes: Sequence[torch.Tensor],
    input_size: int,
    output_size: int = 7,
    box_embedding: bool = True,
) -> torch.Tensor:
    """Object features of every box of every image, before the projector.

    Args:
        levels: ConvNeXt stage outputs, finest (stride 4) first, each (B, C_l, H_l, W_l).
        boxes: B tensors (K_i, 4), xyxy normalised to [0, 1] of the (square) input image.
        input_size: side of the input image in pixels (768 at full size).
        output_size: RoIAlign grid (7).
        box_embedding: add the sine box embedding (the model always does; False gives the pooled RoI
            features alone, for diagnostics).
    Returns:
        (sum K_i, C_total), boxes of image 0 first, then image 1, … in the given order.
    """
    batch = levels[0].shape[0]
    validate_boxes(boxes, batch)
    fused = fuse_levels(levels)  # (B, C_total, H0, W0)
    c_total = fused.shape[1]
    if c_total % 4:
        raise ValueError(f"C_total = {c_total} must be divisible by 4 for the box embedding")
    total = sum(int(b.shape[0]) for b in boxes)
    if total == 0:
        return fused.new_zeros((0, c_total))
    out_dtype = fused.dtype
    if fused.dtype not in (torch.float32, torch.float64):
        fused = fused.float()  # torchvision's roi_align kernels have no bfloat16 version
    rois = [b.to(device=fused.device, dtype=fused.dtype) * input_size for b in boxes]
    pooled = roi_align(
        fused, rois, output_size=output_size, spatial_scale=fused.shape[-1] / input_size,
        sampling_ratio=-1, aligned=False,
    )  # (sum K, C_total, 7, 7)
    feats = pooled.mean(dim=(2, 3))
    if not box_embedding:
        return feats.to(out_dtype)
    norm = torch.cat([b.to(device=fused.device) for b in boxes], dim=0)
    return (feats + xyxy_box_embedding(norm, c_total // 4).to(feats.dtype)).to(out_dtype)


__all__ = ["box_sine_embedding", "xyxy_box_embedding", "fuse_levels", "encode_objects", "validate_boxes"]
