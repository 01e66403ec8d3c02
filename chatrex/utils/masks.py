"""Region masks: decoding (binary arrays, polygons, COCO RLE), encoding to COCO RLE, and resizing.

A mask region can arrive in three forms, all in pixels of the image it belongs to:

* a **binary array** (numpy, torch or a PIL image) of shape (H, W): bool, or numbers that are all 0 or 1
  (integer arrays may also use 0 / 255, as mask images do);
* **polygons**, COCO style: a list of polygons, each a flat list ``[x0, y0, x1, y1, ...]`` of at least
  three points (``[[...], [...]]``); a single flat polygon is not accepted, since ``[x0, y0, x1, y1]``
  is a box;
* **COCO RLE**: ``{"size": [H, W], "counts": "..."}`` (compressed string, as pycocotools writes it, or
  bytes) or ``{"size": [H, W], "counts": [n0, n1, ...]}`` (uncompressed run lengths, column-major,
  starting with a run of zeros).

:func:`decode_mask` turns any of them into an (H, W) bool array and raises :class:`MaskError` (a
``ValueError``) naming the problem for an empty mask, a mask of the wrong size, values that are not
binary, or a malformed RLE. RLE strings are parsed and checked here before pycocotools decodes them,
since pycocotools' decoder writes past its buffer when the run lengths do not add up to H x W.

:func:`encode_rle` writes compressed COCO RLE (JSON-ready: ``counts`` is a ``str``);
:func:`rle_from_crop` does the same from a mask given only inside its box (how the procedural world
holds its visible masks), without building the full-image array. :func:`mask_to_grid` resizes a mask
to a coarse grid by exact area averaging (each grid cell gets the fraction of its area the mask
covers), which is how masks reach the feature maps.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "MaskError",
    "is_box",
    "is_mask",
    "decode_mask",
    "decode_rle",
    "rle_counts",
    "encode_rle",
    "rle_from_crop",
    "rle_area",
    "validate_rle",
    "mask_bbox",
    "mask_to_grid",
]


class MaskError(ValueError):
    """A mask region is malformed (empty, wrong size, not binary, bad polygon or RLE)."""


# ------------------------------------------------------------------------------------------ kinds
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def is_box(region: Any) -> bool:
    """Whether ``region`` is a box: a flat sequence (or 1-D array/tensor) of 4 numbers."""
    if hasattr(region, "ndim") and hasattr(region, "shape"):
        return int(region.ndim) == 1 and int(region.shape[0]) == 4
    if isinstance(region, (list, tuple)) and len(region) == 4:
        return all(_is_number(v) for v in region)
    return False


def is_mask(region: Any) -> bool:
    """Whether ``region`` has the form of a mask: a 2-D array / tensor / PIL image, an RLE dict (with
    ``counts``) or a list of polygons (a list of lists). Its contents are checked by :func:`decode_mask`."""
    if isinstance(region, Mapping):
        return "counts" in region
    if hasattr(region, "ndim") and hasattr(region, "shape"):
        return int(region.ndim) == 2
    if _is_pil(region):
        return True
    if isinstance(region, (list, tuple)) and region:
        return all(isinstance(p, (list, tuple)) for p in region)
    return False


def _is_pil(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        return False
    return isinstance(value, Image.Image)


# ------------------------------------------------------------------------------------------ RLE
def rle_counts(counts: Any, where: str = "mask") -> list[int]:
    """Run lengths of a COCO RLE ``counts`` field: a compressed string (or bytes) or a list of ints.

    The string form is pycocotools' (``rleToString``): each count is written in 5-bit groups, low first,
    as characters ``48 + group`` with bit 0x20 marking "more groups follow", the last group's bit 0x10
    giving the sign; from the third count on, the difference to the count two places earlier is stored.
    Raises :class:`MaskError` for characters outside that alphabet, a count cut off at the end, or a
    negative run length.
    """
    if isinstance(counts, (list, tuple)):
        out = []
        for k, v in enumerate(counts):
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool)) or v < 0:
                raise MaskError(f"{where}: RLE counts must be non-negative integers; counts[{k}] is {v!r}")
            out.append(int(v))
        return out
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise MaskError(f"{where}: RLE counts string is not ASCII") from None
    if not isinstance(counts, bytes):
        raise MaskError(f"{where}: RLE counts must be a string or a list of integers, got {type(counts).__name__}")
    if not counts:
        return []
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    bad = np.flatnonzero((c < 0) | (c >= 64))
    if bad.size:
        raise MaskError(f"{where}: RLE counts string has the character {chr(counts[bad[0]])!r}, outside pycocotools' "
                        "alphabet ('0' to 'o')")
    last = (c & 0x20) == 0  # the last 5-bit group of a count
    if not last[-1]:
        raise MaskError(f"{where}: RLE counts string ends in the middle of a count")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.repeat(np.arange(ends.size), ends - starts + 1)
    k = np.arange(c.size) - starts[group]  # position of each character within its count
    if int(k.max()) > 11:
        raise MaskError(f"{where}: RLE counts string holds a count of more than 12 characters")
    values = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    values = values - np.where(negative, np.left_shift(1, 5 * (k[ends] + 1)), 0)
    # from the third count on, a count is stored as its difference to the count two places earlier
    x = values.copy()
    x[1::2] = np.cumsum(values[1::2])
    if x.size > 2:
        x[2::2] = np.cumsum(values[2::2])
    if (x < 0).any():
        run = int(np.flatnonzero(x < 0)[0])
        raise MaskError(f"{where}: RLE counts string decodes to a negative run length ({int(x[run])}) at run {run}")
    return x.tolist()


def _rle_size(rle: Any, where: str) -> tuple[int, int]:
    if not isinstance(rle, Mapping):
        raise MaskError(f"{where}: an RLE mask must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    for key in ("size", "counts"):
        if key not in rle:
            raise MaskError(f"{where}: RLE mask has no '{key}' (COCO RLE is {{'size': [H, W], 'counts': ...}})")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size)):
        raise MaskError(f"{where}: RLE 'size' must be [height, width] with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def validate_rle(rle: Any, height: Optional[int] = None, width: Optional[int] = None, where: str = "mask",
                 allow_empty: bool = False) -> list[int]:
    """Check a COCO RLE dict; return its run lengths.

    Raises :class:`MaskError` when it is not ``{"size": [H, W], "counts": ...}``, when its size is not
    ``height`` x ``width`` (when given), when the run lengths do not add up to H x W, or (unless
    ``allow_empty``) when it covers no pixel.
    """
    h, w = _rle_size(rle, where)
    if height is not None and width is not None and (h, w) != (int(height), int(width)):
        raise MaskError(f"{where}: the RLE mask is {h}x{w} (height x width) but the image is {height}x{width}")
    counts = rle_counts(rle["counts"], where)
    total = sum(counts)
    if total != h * w:
        raise MaskError(f"{where}: RLE run lengths add up to {total} pixels, not {h} x {w} = {h * w}")
    if not allow_empty and not any(counts[1::2]):
        raise MaskError(f"{where}: the mask is empty (no pixel set)")
    return counts


def rle_area(rle: Mapping[str, Any]) -> int:
    """Pixels a (valid) RLE covers, from its run lengths (no decoding)."""
    return int(sum(rle_counts(rle["counts"])[1::2]))


def decode_rle(rle: Any, height: Optional[int] = None, width: Optional[int] = None, where: str = "mask") -> np.ndarray:
    """(H, W) bool array of a COCO RLE, checked first (:func:`validate_rle`), decoded by pycocotools."""
    import pycocotools.mask as mask_utils

    counts = validate_rle(rle, height, width, where)
    h, w = _rle_size(rle, where)
    raw = rle["counts"]
    if isinstance(raw, (str, bytes)):  # checked above: pycocotools decodes the string itself
        compressed = {"size": [h, w], "counts": raw.encode("ascii") if isinstance(raw, str) else raw}
    else:
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return mask_utils.decode(compressed).view(bool)


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of an (H, W) binary mask: ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    import pycocotools.mask as mask_utils

    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise MaskError(f"encode_rle needs an (H, W) mask, got shape {arr.shape}")
    rle = mask_utils.encode(np.asfortranarray(arr.astype(np.uint8)))
    return {"size": [int(arr.shape[0]), int(arr.shape[1])], "counts": rle["counts"].decode("ascii")}


def rle_from_crop(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """Compressed COCO RLE of an ``height`` x ``width`` mask that is zero outside ``crop`` placed at
    ``(x0, y0)`` (top-left, pixels). Equal to ``encode_rle`` of the full mask, without building it.

    Args:
        crop: (h, w) binary, lying inside the image.
    """
    import pycocotools.mask as mask_utils

    crop = np.asarray(crop, dtype=bool)
    if crop.ndim != 2:
        raise MaskError(f"rle_from_crop needs an (h, w) crop, got shape {crop.shape}")
    h, w = crop.shape
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise MaskError(f"the {h}x{w} crop at ({x0}, {y0}) does not lie inside the {height}x{width} image")
    # runs of each column of the crop (column-major, as COCO): each column padded with a zero at both
    # ends, so that a diff of the flat array marks run starts (+1) and run ends (-1) within columns only
    padded = np.zeros((w, h + 2), dtype=np.int8)
    padded[:, 1:-1] = crop.T
    diff = np.diff(padded.ravel())
    s_flat = np.flatnonzero(diff == 1) + 1  # flat padded index of a run's first pixel
    e_flat = np.flatnonzero(diff == -1) + 1  # ... of the pixel after its last one
    sc, sr = np.divmod(s_flat, h + 2)
    ec, er = np.divmod(e_flat, h + 2)
    starts = (x0 + sc).astype(np.int64) * height + y0 + sr - 1
    ends = (x0 + ec).astype(np.int64) * height + y0 + er - 1
    if starts.size:  # a run ending at the bottom edge continues at the top of the next column
        join = ends[:-1] == starts[1:]
        if join.any():
            keep_start = np.concatenate([[True], ~join])
            keep_end = np.concatenate([~join, [True]])
            starts, ends = starts[keep_start], ends[keep_end]
    edges = np.empty(2 * starts.size + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, height * width
    edges[1:-1:2], edges[2:-1:2] = starts, ends
    counts = np.diff(edges).tolist()
    if len(counts) > 1 and counts[-1] == 0:  # pycocotools writes no empty run after a last run of ones
        counts.pop()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


# ------------------------------------------------------------------------------------------ decoding
def _decode_polygons(polygons: Sequence[Any], height: int, width: int, where: str) -> np.ndarray:
    import pycocotools.mask as mask_utils

    flat = []
    for k, poly in enumerate(polygons):
        if not isinstance(poly, (list, tuple)):
            raise MaskError(f"{where}: polygon {k} must be a flat list [x0, y0, x1, y1, ...], got {type(poly).__name__}")
        if not all(_is_number(v) for v in poly):
            raise MaskError(f"{where}: polygon {k} must hold numbers only (a flat list [x0, y0, x1, y1, ...])")
        vals = [float(v) for v in poly]
        if not all(math.isfinite(v) for v in vals):
            raise MaskError(f"{where}: polygon {k} has a non-finite coordinate")
        if len(vals) % 2 or len(vals) < 6:
            raise MaskError(f"{where}: polygon {k} has {len(vals)} numbers; a polygon needs an even number, at least "
                            "6 (three points)")
        flat.append(vals)
    if not flat:
        raise MaskError(f"{where}: no polygon given")
    rles = mask_utils.frPyObjects(flat, int(height), int(width))
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _binary_array(value: Any, where: str) -> np.ndarray:
    if _is_pil(value):
        value = np.asarray(value.convert("L") if value.mode not in ("1", "L", "I", "I;16", "F") else value)
    elif hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 2:
        raise MaskError(f"{where}: a binary mask must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MaskError(f"{where}: a binary mask must hold bools or numbers, got dtype {arr.dtype}")
    values = np.unique(arr)
    if np.issubdtype(arr.dtype, np.integer) and set(values.tolist()) <= {0, 255}:
        return arr == 255
    if not set(values.tolist()) <= {0, 1}:
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise MaskError(f"{where}: the mask is not binary: it holds the values {shown} (use 0/1, booleans, or 0/255 "
                        "for integer images)")
    return arr == 1


def decode_mask(region: Any, height: int, width: int, where: str = "mask") -> np.ndarray:
    """The (height, width) bool array of a mask region (binary array, polygons or COCO RLE; see the module
    docstring). Raises :class:`MaskError` for an empty mask, a wrong size, non-binary values, or a
    malformed polygon or RLE."""
    height, width = int(height), int(width)
    if isinstance(region, Mapping):
        arr = decode_rle(region, height, width, where)
    elif isinstance(region, (list, tuple)):
        if region and all(_is_number(v) for v in region):
            raise MaskError(f"{where}: a flat list of numbers is not a mask; polygons are a list of flat lists "
                            "[[x0, y0, x1, y1, x2, y2, ...]] (and [x0, y0, x1, y1] is a box)")
        arr = _decode_polygons(region, height, width, where)
    elif not (_is_pil(region) or (hasattr(region, "shape") and hasattr(region, "ndim"))):
        raise MaskError(f"{where}: a region must be a box [x0, y0, x1, y1] or a mask (a binary (H, W) array, COCO "
                        f"polygons or COCO RLE), got {type(region).__name__}")
    else:
        arr = _binary_array(region, where)
        if arr.shape != (height, width):
            raise MaskError(f"{where}: the mask is {arr.shape[0]}x{arr.shape[1]} (height x width) but the image is "
                            f"{height}x{width}")
    if not arr.any():
        raise MaskError(f"{where}: the mask is empty (no pixel set)"
                        + (" inside the image" if isinstance(region, (list, tuple)) else ""))
    return arr


def mask_bbox(mask: np.ndarray) -> list[int]:
    """Tight box ``[x0, y0, x1, y1]`` of a non-empty mask, ``x1`` / ``y1`` exclusive (pixels)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        raise MaskError("the mask is empty (no pixel set)")
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


# ------------------------------------------------------------------------------------------ resizing
def _integrate(values: np.ndarray, start: int, offset: float, side: float, cells: int, axis: int) -> tuple[int, np.ndarray]:
    """Area-resize ``values`` along ``axis`` (pixels ``start ..``) onto ``cells`` cells of a ``side``-pixel
    line: ``(first cell, per-cell sums divided by the cell length)``, from the cumulative sum read at the
    (fractional) cell edges; exact for pixels that are constant over their width."""
    scale = cells / float(side)  # cells per pixel
    n = values.shape[axis]
    first = max(int(math.floor((start + offset) * scale)), 0)
    last = min(int(math.ceil((start + n + offset) * scale)), cells)  # exclusive
    edges = np.clip(np.arange(first, last + 1, dtype=np.float64) / scale - offset - start, 0.0, n)
    moved = np.moveaxis(values, axis, 0)
    cum = np.zeros((n + 1,) + moved.shape[1:], dtype=np.float64)
    np.cumsum(moved, axis=0, out=cum[1:])
    low = np.minimum(np.floor(edges).astype(np.int64), n - 1)
    frac = (edges - low).reshape((-1,) + (1,) * (moved.ndim - 1))
    at_edges = cum[low] + frac * (cum[low + 1] - cum[low])
    return first, np.moveaxis(np.diff(at_edges, axis=0) * scale, 0, axis)


def mask_to_grid(mask: np.ndarray, size: int, offset_x: float = 0.0, offset_y: float = 0.0,
                 side: Optional[float] = None, box: Optional[Sequence[int]] = None) -> np.ndarray:
    """Exact area resize of an (H, W) mask placed at ``(offset_x, offset_y)`` in a square of ``side``
    pixels (default: max(H, W)) onto a ``size`` x ``size`` grid.

    Returns (size, size) float32: each cell's covered fraction, in [0, 1]. Only the mask's box is
    touched (two cumulative sums over it), so a small mask in a large image costs little. ``box``: the
    mask's tight box (:func:`mask_bbox`) when known.
    """
    mask = np.asarray(mask, dtype=bool)
    side = float(max(mask.shape) if side is None else side)
    out = np.zeros((size, size), dtype=np.float32)
    if box is None:
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return out
        cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    x0, y0, x1, y1 = (int(v) for v in box)
    fy, by_rows = _integrate(mask[y0:y1, x0:x1], y0, offset_y, side, size, axis=0)
    fx, block = _integrate(by_rows, x0, offset_x, side, size, axis=1)
    out[fy:fy + block.shape[0], fx:fx + block.shape[1]] = np.clip(block, 0.0, 1.0)
    return out
