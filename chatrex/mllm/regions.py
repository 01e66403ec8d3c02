"""Regions for ChatRex's object tokens: boxes and masks, mixed in one list.

A region is either a **box** ``[x0, y0, x1, y1]`` (original-image pixels) or a **mask** in any form
:func:`chatrex.utils.masks.decode_mask` reads (a binary (H, W) array, COCO polygons, COCO RLE). For the
model, every region has a box (a mask's is its bounding box, which gives the box embedding), and a mask
region also has its mask on a ``G`` x ``G`` grid of the padded square (each cell's covered fraction),
which the object encoder pools the features with (:func:`chatrex.mllm.object_encoder.mask_features`).

:func:`prepare_regions` does this for one image; :class:`~chatrex.mllm.processing_chatrex.ChatRexProcessor`
calls it for its ``regions=`` input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from chatrex.mllm.image_processing import SquareFrame, normalize_boxes
from chatrex.utils.masks import MaskError, decode_mask, is_box, mask_bbox, mask_to_grid

__all__ = ["PreparedRegions", "prepare_regions", "region_kind", "quantize_mask_grid"]


@dataclass
class PreparedRegions:
    """One image's regions as the model takes them.

    Attributes:
        boxes: (K, 4) float32, xyxy in [0, 1] of the padded square (a mask region: its bounding box).
        masks: (M, G, G) float32, the mask regions' covered fraction of each grid cell of the padded square.
        mask_indices: (M,) int64, which of the K regions each mask is (ascending).
        pixel_boxes: K boxes ``[x0, y0, x1, y1]`` in original-image pixels (a mask region: its bounding box).
    """

    boxes: torch.Tensor
    masks: torch.Tensor
    mask_indices: torch.Tensor
    pixel_boxes: list[list[float]]


def region_kind(region: Any) -> str:
    """``"box"`` for a flat ``[x0, y0, x1, y1]`` (or a 1-D array of 4), else ``"mask"`` (checked when decoded)."""
    return "box" if is_box(region) else "mask"


def prepare_regions(regions: Sequence[Any] | None, frame: SquareFrame, grid: int, where: str = "image") -> PreparedRegions:
    """Boxes and masks of one image, in the given order.

    Args:
        regions: boxes and masks, mixed (None or empty: no regions).
        frame: where the image sits in its padded square (:func:`chatrex.mllm.image_processing.square_frame`).
        grid: G, the side of the mask grid.
    Raises:
        ValueError (``MaskError`` for masks) naming the region: a malformed box, or a mask that is empty,
        of the wrong size, not binary, or a malformed polygon or RLE.
    """
    if regions is None:
        regions = []
    if isinstance(regions, (str, bytes)) or not isinstance(regions, (list, tuple)):
        raise ValueError(f"{where}: regions must be a list of boxes [x0, y0, x1, y1] and masks, got {type(regions).__name__}")
    pixel_boxes: list[list[float]] = []
    grids: list[np.ndarray] = []
    mask_indices: list[int] = []
    for k, region in enumerate(regions):
        if is_box(region):
            vals = region.tolist() if hasattr(region, "tolist") else list(region)
            pixel_boxes.append([float(v) for v in vals])
            continue
        try:
            mask = decode_mask(region, frame.height, frame.width, where=f"region {k}")
        except MaskError as err:
            raise MaskError(f"{where}: {err}") from None
        box = mask_bbox(mask)
        pixel_boxes.append([float(v) for v in box])
        grids.append(mask_to_grid(mask, grid, frame.offset_x, frame.offset_y, frame.side, box=box))
        mask_indices.append(k)
    try:
        boxes = normalize_boxes(pixel_boxes, frame) if pixel_boxes else torch.zeros((0, 4), dtype=torch.float32)
    except ValueError as err:
        raise ValueError(f"{where}: {err} (boxes are counted among all regions)") from None
    masks = torch.from_numpy(np.stack(grids)) if grids else torch.zeros((0, grid, grid), dtype=torch.float32)
    return PreparedRegions(boxes, masks, torch.tensor(mask_indices, dtype=torch.long), pixel_boxes)


def quantize_mask_grid(masks: torch.Tensor) -> torch.Tensor:
    """(M, G, G) covered fractions in [0, 1] → uint8 0..255, a quarter of the bytes to ship from the data
    workers. Mask pooling normalises its weights, so the model reads them as they are (a cell covered at
    all keeps a weight of at least 1)."""
    q = (masks.clamp(0, 1) * 255).round()
    return torch.where((masks > 0) & (q == 0), torch.ones_like(q), q).to(torch.uint8)
