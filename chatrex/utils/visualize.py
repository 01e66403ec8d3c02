"""Drawing labelled boxes on images.

The font comes from Pillow itself (``ImageFont.load_default(size)``, a bundled scalable font since
Pillow 10.1), so no font path is hard-coded.
"""

from __future__ import annotations

import colorsys
from typing import Any, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

Color = tuple[int, int, int]


def palette(n: int, saturation: float = 0.85, value: float = 0.95) -> list[Color]:
    """``n`` well-separated RGB colours (golden-ratio hue steps, deterministic)."""
    colors = []
    for i in range(n):
        h = (0.07 + i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, saturation, value)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def get_font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (falls back to the bitmap font on old Pillow)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_color(bg: Color) -> Color:
    r, g, b = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Optional[Sequence[str]] = None,
    colors: Optional[Sequence[Color]] = None,
    width: Optional[int] = None,
    font_size: Optional[int] = None,
) -> Image.Image:
    """Return a copy of ``image`` with ``boxes`` (x0, y0, x1, y1 in pixels) drawn and labelled.

    Args:
        image: RGB PIL image.
        boxes: N boxes in pixel coordinates of ``image``.
        labels: N strings drawn on a filled tag at each box's top-left corner (None: no tags).
        colors: N colours (default: one distinct colour per box).
        width: line width (default scales with the image size).
        font_size: label size in px (default scales with the image size).
    """
    out = image.convert("RGB").copy()
    n = len(boxes)
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {n} boxes but {len(labels)} labels")
    if colors is None:
        colors = palette(n)
    elif len(colors) != n:
        raise ValueError(f"got {n} boxes but {len(colors)} colours")
    side = max(out.size)
    width = width or max(1, round(side / 400))
    font = get_font(font_size or max(10, round(side / 55)))
    draw = ImageDraw.Draw(out)
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        draw.rectangle([x0, y0, x1, y1], outline=tuple(colors[i]), width=width)
    if labels is not None:  # tags after boxes so that no box line crosses a tag
        for i, box in enumerate(boxes):
            if not labels[i]:
                continue
            x0, y0 = min(box[0], box[2]), min(box[1], box[3])
            l, t, r, b = draw.textbbox((0, 0), labels[i], font=font)
            tw, th = r - l + 4, b - t + 4
            tx = min(max(0.0, x0), max(0.0, out.width - tw))
            ty = y0 - th if y0 - th >= 0 else max(0.0, y0)
            draw.rectangle([tx, ty, tx + tw, ty + th], fill=tuple(colors[i]))
            draw.text((tx + 2 - l, ty + 2 - t), labels[i], fill=_text_color(tuple(colors[i])), font=font)
    return out


def overlay_masks(image: Image.Image, masks: Sequence[Any], colors: Optional[Sequence[Color]] = None,
                  alpha: float = 0.45) -> Image.Image:
    """Return a copy of ``image`` with each (H, W) binary mask filled in its colour at ``alpha`` opacity.

    Args:
        masks: N binary arrays of the image's size (later masks are drawn over earlier ones).
        colors: N colours (default: one distinct colour per mask).
    """
    import numpy as np

    out = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    n = len(masks)
    if colors is None:
        colors = palette(n)
    elif len(colors) != n:
        raise ValueError(f"got {n} masks but {len(colors)} colours")
    for mask, color in zip(masks, colors):
        m = np.asarray(mask, dtype=bool)
        if m.shape != out.shape[:2]:
            raise ValueError(f"a mask is {m.shape[0]}x{m.shape[1]} but the image is {out.shape[0]}x{out.shape[1]}")
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, dtype=np.float32)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def contact_sheet(images: Sequence[Image.Image], columns: int = 4, cell: int = 256, pad: int = 4) -> Image.Image:
    """Tile images (each fitted into a ``cell`` x ``cell`` square) into one sheet."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        thumb = im.copy()
        thumb.thumbnail((cell, cell))
        r, c = divmod(i, columns)
        x = pad + c * (cell + pad) + (cell - thumb.width) // 2
        y = pad + r * (cell + pad) + (cell - thumb.height) // 2
        sheet.paste(thumb, (x, y))
    return sheet
