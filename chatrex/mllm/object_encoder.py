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

**Mask regions** (RegionGPT's mask pooling; :func:`mask_features`): a region given as a mask reaches
the encoder as its bounding box plus the mask on a fixed grid (each cell's covered fraction, made by
the processor). The mask is area-resized to every ConvNeXt level and each level's features are
averaged inside it (weights = covered fractions); the level averages are concatenated in the fused
order, so the result has the C_total channels of a RoI feature, and the sine embedding of the mask's
bounding box is added. A mask token thus has the width of a box token and goes through the same
trunk and projector. Every mask of the batch goes through one batched matrix product per level.

A model trained on box tokens alone has seen only averages over whole boxes, background included; a
mask average leaves the background out, and such a model reads it worse (the shipped model: region
category accuracy 0.30 on masks against 0.72 on the same regions' boxes). :class:`MaskAdapter`
(``config.mask_adapter_dim`` > 0) is a residual MLP on the mask-pooled features, before the box
embedding, that maps them to where that model expects a region's features
(:mod:`chatrex.training.mask_adapter` trains it); box tokens never pass through it.

Where a box and its filled-rectangle mask differ: RoIAlign samples the *bilinearly upsampled* fused map
at ``output_size``² x (sampling ratio)² points inside the box, while mask pooling averages the cells of
each level weighted by exact area coverage. With ``aligned=False`` (the official layout) RoIAlign also
reads the box half a stride-4 cell up and to the left of where the mask lies (cell centres at integer
coordinates); ``aligned=True`` removes that shift. On features that vary linearly in space the two then
agree exactly for boxes on the coarsest level's cell grid; elsewhere they differ at the box's edges
(bilinear sampling blends in the neighbouring cells, area pooling does not), most for small boxes.
"""

from __future__ import annotations

import math
from typing import Sequence

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
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


def validate_masks(masks: Sequence[torch.Tensor], mask_indices: Sequence[torch.Tensor],
                   boxes: Sequence[torch.Tensor]) -> None:
    """Check region masks against the boxes: B tensors (M_i, G, G) and B index tensors (M_i,) of distinct
    box indices in ``[0, K_i)``; raise ``ValueError`` naming the problem."""
    batch = len(boxes)
    for name, value in (("region_masks", masks), ("region_mask_indices", mask_indices)):
        if not isinstance(value, (list, tuple)) or len(value) != batch:
            raise ValueError(f"{name} must be a list of {batch} tensors (one per image)")
    side = None
    for i, (m, ix) in enumerate(zip(masks, mask_indices)):
        if not isinstance(m, torch.Tensor) or m.ndim != 3 or m.shape[1] != m.shape[2]:
            raise ValueError(f"region_masks[{i}] must be a tensor (M, G, G); got "
                             f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}")
        if m.shape[0] and side is not None and m.shape[1] != side:
            raise ValueError(f"region_masks[{i}] has a {m.shape[1]}-cell grid but earlier masks have {side}")
        if m.shape[0]:
            side = m.shape[1]
        if not isinstance(ix, torch.Tensor) or ix.ndim != 1 or ix.shape[0] != m.shape[0] or ix.is_floating_point():
            raise ValueError(f"region_mask_indices[{i}] must be an integer tensor of the {m.shape[0]} mask(s)' box indices")
    counts = [int(ix.shape[0]) for ix in mask_indices]
    if not sum(counts):
        return
    # one check for the whole batch (one host sync): every index inside its image's boxes, none twice
    ix = torch.cat([t.long() for t in mask_indices])
    image = torch.repeat_interleave(torch.arange(batch, device=ix.device), torch.tensor(counts, device=ix.device))
    num = torch.tensor([int(b.shape[0]) for b in boxes], device=ix.device)[image]
    key = image * (max(int(b.shape[0]) for b in boxes) + 1) + ix
    outside = (ix < 0) | (ix >= num)
    if bool(outside.any()) or torch.unique(key).numel() != key.numel():
        for i, (t, b) in enumerate(zip(mask_indices, boxes)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= b.shape[0]):
                raise ValueError(f"region_mask_indices[{i}] = {t.tolist()} points outside the image's {b.shape[0]} boxes")
            if torch.unique(t).numel() != t.numel():
                raise ValueError(f"region_mask_indices[{i}] = {t.tolist()} names a box twice")


def mask_features(levels: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mask-pooled features: for each level, the level's average inside the mask area-resized to it.

    Args:
        levels: L tensors (B, C_l, H_l, W_l).
        masks: B tensors (M_i, G, G), each cell's covered fraction in [0, 1] (any G; the mask is resized
            to each level with ``adaptive_avg_pool2d``, exact area averaging when G is a multiple). The
            weights are normalised, so any non-negative scale works (training ships uint8 0..255).
    Returns:
        (sum M_i, sum C_l) float32, masks of image 0 first, in order; the channels in the order of
        :func:`fuse_levels`.
    """
    counts = [int(m.shape[0]) for m in masks]
    c_total = sum(int(level.shape[1]) for level in levels)
    ref = levels[0]
    if not sum(counts):
        return ref.new_zeros((0, c_total))
    side = next(m.shape[-1] for m in masks if m.shape[0])
    # the masks of all images in one padded batch (B, M_max, G, G): zero masks past M_i, never read back
    padded = torch.nn.utils.rnn.pad_sequence(
        [m.to(device=ref.device, dtype=torch.float32) if m.shape[0] else ref.new_zeros((0, side, side), dtype=torch.float32)
         for m in masks], batch_first=True)
    pooled = []
    for level in levels:  # the weights in the level's own dtype: no float copy of a (B, C_l, H_l, W_l) map
        h, w = level.shape[-2:]
        weights = F.adaptive_avg_pool2d(padded, (h, w)).flatten(2)  # (B, M_max, h*w)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
        feats = level.flatten(2).transpose(1, 2)  # (B, h*w, C_l)
        pooled.append(torch.bmm(weights.to(level.dtype), feats).float())  # (B, M_max, C_l)
    out = torch.cat(pooled, dim=-1)
    m_max = out.shape[1]
    rows = torch.cat([torch.arange(c) + i * m_max for i, c in enumerate(counts)]).to(out.device)
    return out.flatten(0, 1).index_select(0, rows)


class MaskAdapter(nn.Module):
    """Residual MLP on mask-pooled features: ``x + fc2(gelu(fc1(norm(x))))``, (N, C) → (N, C).

    ``fc2`` starts at zero (:meth:`reset_to_identity`), so an adapter added to a trained model changes
    nothing until it is trained. Computes in its weights' dtype and returns ``x``'s dtype.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.reset_to_identity()

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        """Zero ``fc2`` so that the adapter is the identity."""
        self.fc2.weight.zero_()
        self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.fc1.weight.dtype)
        return (h + self.fc2(F.gelu(self.fc1(self.norm(h))))).to(x.dtype)


def encode_objects(
    levels: Sequence[torch.Tensor],
    boxes: Sequence[torch.Tensor],
    input_size: int,
    output_size: int = 7,
    box_embedding: bool = True,
    masks: Sequence[torch.Tensor] | None = None,
    mask_indices: Sequence[torch.Tensor] | None = None,
    aligned: bool = False,
    mask_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """Object features of every box (or mask region) of every image, before the projector.

    Args:
        levels: ConvNeXt stage outputs, finest (stride 4) first, each (B, C_l, H_l, W_l).
        boxes: B tensors (K_i, 4), xyxy normalised to [0, 1] of the (square) input image; for a mask
            region, its mask's bounding box.
        input_size: side of the input image in pixels (768 at full size).
        output_size: RoIAlign grid (7).
        box_embedding: add the sine box embedding (the model always does; False gives the pooled
            features alone, for diagnostics).
        masks / mask_indices: optional mask regions: B tensors (M_i, G, G) (covered fraction per cell of
            the padded square) and B integer tensors (M_i,), which box each mask stands for. Those
            boxes' RoI features are replaced by the masks' pooled features (:func:`mask_features`).
        aligned: RoIAlign's ``aligned`` (False: the official layout; True: no half-cell shift).
        mask_transform: applied to the mask-pooled features (M, C_total) before the box embedding is
            added (a :class:`MaskAdapter`); box features never pass through it.
    Returns:
        (sum K_i, C_total), boxes of image 0 first, then image 1, … in the given order.
    """
    batch = levels[0].shape[0]
    validate_boxes(boxes, batch)
    if (masks is None) != (mask_indices is None):
        raise ValueError("region masks need their box indices: pass both masks and mask_indices, or neither")
    if masks is not None:
        validate_masks(masks, mask_indices, boxes)
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
        sampling_ratio=-1, aligned=aligned,
    )  # (sum K, C_total, 7, 7)
    feats = pooled.mean(dim=(2, 3))
    if masks is not None and sum(int(m.shape[0]) for m in masks):
        offsets = torch.tensor([0] + [int(b.shape[0]) for b in boxes[:-1]], device=feats.device).cumsum(0)
        rows = torch.cat([ix.to(feats.device).long() + offsets[i] for i, ix in enumerate(mask_indices)])
        pooled_masks = mask_features(levels, masks)
        if mask_transform is not None:
            pooled_masks = mask_transform(pooled_masks)
        feats = feats.index_copy(0, rows, pooled_masks.to(feats.dtype))
    if not box_embedding:
        return feats.to(out_dtype)
    norm = torch.cat([b.to(device=fused.device) for b in boxes], dim=0)
    return (feats + xyxy_box_embedding(norm, c_total // 4).to(feats.dtype)).to(out_dtype)


__all__ = ["box_sine_embedding", "xyxy_box_embedding", "fuse_levels", "encode_objects", "validate_boxes",
           "mask_features", "validate_masks", "MaskAdapter"]
