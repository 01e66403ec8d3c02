"""Rendering objects to sprites and compositing them onto a background with exact masks.

A :class:`Sprite` is one object ready to paste: its label map (which paint covers each pixel, after
pattern and orientation), its colours, and its full mask, all cropped to the tight box of the
drawing. :func:`composite` pastes sprites back to front and keeps, for every image pixel, which
instance is visible there (``instance_map``); a part is visible where its instance is visible and the
sprite's label belongs to the part. Boxes of *visible* pixels come from these (see ``scene.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from chatrex.data.world.catalog import CATEGORY_BY_NAME, COLORS, ORIENTATIONS, PATTERNS
from chatrex.data.world.shapes import DRAWINGS, SKIN, SKIN_RGB, Paint, draw_layers

#: Label bit marking the second colour of a pattern.
PATTERN_BIT = 128
#: Label bit marking outline pixels (drawn darker).
EDGE_BIT = 64
#: Paint index bits of a label (a drawing has fewer than 64 paints).
PAINT_MASK = EDGE_BIT - 1
#: Outlines are drawn on objects whose shorter side is at least this many pixels.
MIN_OUTLINE_SIDE = 12
#: Patterns are only drawn (and named) on objects whose shorter side is at least this many pixels.
MIN_PATTERN_SIDE = 16


@dataclass
class Sprite:
    """One rendered object, cropped to its tight box.

    Attributes:
        labels: (h, w) uint8 paint labels: 0 = empty, else paint ``k = labels & PAINT_MASK`` with
            ``PATTERN_BIT`` set on a pattern's second colour and ``EDGE_BIT`` on outline pixels.
        lut: (256, 3) uint8 colour of every label value.
        parts: the category's named parts (catalogue order).
        part_of_label: (256,) int16, the index into ``parts`` each label belongs to (-1: none).
        part_colors: each part's colour name (None when it is not an attribute colour, e.g. skin).
        part_pixels: full pixel count of each part.
        pixels: full pixel count of the object.
        pieces: (h, w) int16, which *piece* each pixel belongs to (0: none). A piece is one drawn
            copy of a part: the two wheels of a car are two pieces of the part "wheel".
        piece_parts: the part index of piece ``k`` at ``piece_parts[k - 1]``.
        piece_pixels: full pixel count of each piece.
    """

    labels: np.ndarray
    lut: np.ndarray
    parts: tuple[str, ...]
    part_of_label: np.ndarray
    part_colors: tuple[Optional[str], ...]
    part_pixels: tuple[int, ...]
    pixels: int
    pieces: Optional[np.ndarray] = None
    piece_parts: tuple[int, ...] = ()
    piece_pixels: tuple[int, ...] = ()

    @property
    def height(self) -> int:
        return int(self.labels.shape[0])

    @property
    def width(self) -> int:
        return int(self.labels.shape[1])

    @property
    def mask(self) -> np.ndarray:
        """(h, w) bool: the object's full (unoccluded) pixels."""
        return self.labels > 0

    @property
    def rgb(self) -> np.ndarray:
        """(h, w, 3) uint8 colours (black where empty)."""
        return self.lut[self.labels]


def resolve_color(paint: Paint, color: str) -> str:
    """The colour name a paint takes on an object of colour ``color``."""
    if paint.color == "main":
        return color
    if paint.color == color and paint.fallback:
        return paint.fallback
    return paint.color


def _rgb(name: str) -> tuple[int, int, int]:
    return SKIN_RGB if name == SKIN else COLORS[name]


def pattern_color(rgb: Sequence[int]) -> tuple[int, int, int]:
    """The second colour of a pattern on ``rgb``: lighter on dark colours, darker on light ones."""
    r, g, b = (float(v) for v in rgb)
    if 0.299 * r + 0.587 * g + 0.114 * b < 150:
        return tuple(int(round(v + (255 - v) * 0.6)) for v in (r, g, b))
    return tuple(int(round(v * 0.55)) for v in (r, g, b))


def pattern_mask(pattern: str, h: int, w: int) -> Optional[np.ndarray]:
    """Where a pattern's second colour goes in an (h, w) box (None for "plain")."""
    if pattern == "plain":
        return None
    period = max(4, round(min(h, w) / 5))
    half = max(2, period // 2)
    yy = np.arange(h)[:, None]
    xx = np.arange(w)[None, :]
    if pattern == "striped":
        return np.broadcast_to((yy // half) % 2 == 1, (h, w))
    if pattern == "checkered":
        return ((yy // half) + (xx // half)) % 2 == 1
    if pattern == "dotted":
        c = (period - 1) / 2.0
        return ((xx % period) - c) ** 2 + ((yy % period) - c) ** 2 <= (0.3 * period) ** 2
    raise ValueError(f"unknown pattern {pattern!r}; choose from {list(PATTERNS)}")


def _edges(groups: np.ndarray) -> np.ndarray:
    """Pixels of a non-empty group that touch (4-neighbourhood) a different group or the outside."""
    inside = groups > 0
    edge = np.zeros(groups.shape, dtype=bool)
    d = groups[1:, :] != groups[:-1, :]
    edge[1:, :] |= d
    edge[:-1, :] |= d
    d = groups[:, 1:] != groups[:, :-1]
    edge[:, 1:] |= d
    edge[:, :-1] |= d
    edge[0, :] = edge[-1, :] = True  # the crop is tight: border rows/columns touch the outside
    edge[:, 0] = edge[:, -1] = True
    edge &= inside
    return edge


@lru_cache(maxsize=None)
def _palette(category: str, color: str) -> tuple[np.ndarray, np.ndarray, tuple[Optional[str], ...], np.ndarray]:
    """Colour of every label value, part index of every label value, part colour names, and which
    labels carry the pattern, for a ``category`` of main colour ``color`` (memoised; read-only)."""
    paints = DRAWINGS[category].paint_list
    lut = np.zeros((256, 3), dtype=np.uint8)
    parts = CATEGORY_BY_NAME[category].parts
    part_of_label = np.full(256, -1, dtype=np.int16)
    part_colors: list[Optional[str]] = [None] * len(parts)
    patterned = np.zeros(256, dtype=bool)
    for k, p in enumerate(paints, start=1):
        name = resolve_color(p, color)
        base = np.asarray(_rgb(name), dtype=np.uint16)
        alt = np.asarray(pattern_color(base), dtype=np.uint16) if p.patterned else base
        for v, rgb in ((k, base), (k | PATTERN_BIT, alt)):
            lut[v] = rgb
            lut[v | EDGE_BIT] = rgb * 9 // 16
        patterned[k] = p.patterned
        if p.part is not None:
            j = parts.index(p.part)
            part_of_label[[k, k | PATTERN_BIT, k | EDGE_BIT, k | PATTERN_BIT | EDGE_BIT]] = j
            if part_colors[j] is None and name != SKIN:
                part_colors[j] = name
    for a in (lut, part_of_label, patterned):
        a.setflags(write=False)
    return lut, part_of_label, tuple(part_colors), patterned


def render_object(
    category: str,
    color: str,
    width: int,
    height: int,
    pattern: str = "plain",
    orientation: str = "upright",
    tilt: float = 0.0,
    outline: bool = True,
) -> Sprite:
    """Render one object.

    Args:
        category: a catalogue category.
        color: a catalogue colour (the object's main colour).
        width, height: the drawing box in pixels before orientation.
        pattern: one of ``PATTERNS``.
        orientation: one of ``ORIENTATIONS``; things with a front are drawn facing right and mirrored
            for "facing left"; "upside down" turns by 180 degrees; "tilted left"/"tilted right" turn
            counter-clockwise/clockwise by ``abs(tilt)`` degrees.
        tilt: tilt angle in degrees for the tilted orientations.
        outline: darken the pixels on the border of each paint (shape and part outlines).
    """
    if category not in CATEGORY_BY_NAME:
        raise ValueError(f"unknown world category {category!r}")
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; choose from {list(COLORS)}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r}; choose from {list(ORIENTATIONS)}")
    labels, piece_numbers, _ = draw_layers(category, max(1, int(round(width))), max(1, int(round(height))))
    h, w = labels.shape

    lut, part_of_label, part_colors, patterned = _palette(category, color)
    parts = CATEGORY_BY_NAME[category].parts

    pm = pattern_mask(pattern, h, w)
    if pm is not None:
        labels[patterned[labels] & pm] |= PATTERN_BIT

    labels = _orient(labels, orientation, tilt)
    rows = np.flatnonzero(labels.any(axis=1))
    cols = np.flatnonzero(labels.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"a {category} drawn at {width}x{height} px has no pixels")
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    labels = np.ascontiguousarray(labels[crop])
    if piece_numbers is not None:
        piece_numbers = np.ascontiguousarray(_orient(piece_numbers, orientation, tilt)[crop])

    if outline and min(labels.shape) >= MIN_OUTLINE_SIDE:
        labels[_edges(labels & PAINT_MASK)] |= EDGE_BIT

    counts = np.bincount(labels.ravel(), minlength=256)
    pixels = int(labels.size - counts[0])
    part_pixels = tuple(int(counts[part_of_label == j].sum()) for j in range(len(parts)))
    sprite = Sprite(labels, lut, parts, part_of_label, part_colors, part_pixels, pixels)
    if parts:
        sprite.pieces, sprite.piece_parts, sprite.piece_pixels = _pieces(
            part_of_label[labels], piece_numbers, len(parts))
    return sprite


def _orient(a: np.ndarray, orientation: str, tilt: float) -> np.ndarray:
    """Mirror, turn or tilt an (h, w) uint8 map (nearest neighbour: labels stay labels)."""
    if orientation == "facing left":
        return a[:, ::-1]
    if orientation == "upside down":
        return a[::-1, ::-1]
    if orientation in ("tilted left", "tilted right"):
        angle = abs(float(tilt)) * (1.0 if orientation == "tilted left" else -1.0)
        return np.asarray(Image.fromarray(np.ascontiguousarray(a)).rotate(
            angle, resample=Image.Resampling.NEAREST, expand=True), dtype=np.uint8)
    return a


#: Piece numbers per part are below this (a drawing numbers at most 15 pieces of one part).
MAX_PIECES = 16


def _pieces(part_map: np.ndarray, piece_numbers: Optional[np.ndarray], n_parts: int
            ) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """Number the pieces of a sprite: ``(pieces (h, w) int16, part of each piece, pixels of each)``.

    ``part_map`` is the part index of every pixel (-1: none); a piece is a (part, piece number) pair
    that has pixels, numbered 1.. in part order, then piece-number order.
    """
    key = part_map.astype(np.int32) * MAX_PIECES
    if piece_numbers is not None:
        key += np.minimum(piece_numbers, MAX_PIECES - 1)
    key[part_map < 0] = -1
    counts = np.bincount((key + 1).ravel(), minlength=n_parts * MAX_PIECES + 1)[1:]
    present = np.flatnonzero(counts)
    ids = np.zeros(n_parts * MAX_PIECES + 1, dtype=np.int16)  # index key + 1 -> piece id
    ids[present + 1] = np.arange(1, len(present) + 1, dtype=np.int16)
    pieces = ids[key + 1]
    return pieces, tuple(int(k) // MAX_PIECES for k in present), tuple(int(counts[k]) for k in present)


@dataclass
class Canvas:
    """A composited scene.

    Attributes:
        image: (H, W, 3) uint8.
        instance_map: (H, W) int16, index of the sprite visible at each pixel (-1: background).
        sprites: the sprites in drawing order (back to front).
        origins: each sprite's top-left ``(x, y)`` in the image (may be negative: cut by the border).

    A sprite's part is visible where the sprite is visible and its label belongs to that part.
    """

    image: np.ndarray
    instance_map: np.ndarray
    sprites: list[Sprite]
    origins: list[tuple[int, int]]

    def clip(self, i: int) -> Optional[tuple[slice, slice, slice, slice]]:
        """Image slices and sprite slices where sprite ``i`` overlaps the image (None: outside)."""
        s, (x0, y0) = self.sprites[i], self.origins[i]
        H, W = self.instance_map.shape
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + s.width, W), min(y0 + s.height, H)
        if ix0 >= ix1 or iy0 >= iy1:
            return None
        return slice(iy0, iy1), slice(ix0, ix1), slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)

    def visible_mask(self, i: int) -> Optional[tuple[np.ndarray, int, int]]:
        """Sprite ``i``'s visible pixels within its clipped box, with the box's image offset (x, y)."""
        c = self.clip(i)
        if c is None:
            return None
        iy, ix, _, _ = c
        return self.instance_map[iy, ix] == i, ix.start, iy.start


def composite(background: np.ndarray, sprites: Sequence[Sprite], origins: Sequence[tuple[int, int]]) -> Canvas:
    """Paste ``sprites`` (back to front) at ``origins`` (top-left, pixels) onto a copy of ``background``."""
    if len(sprites) != len(origins):
        raise ValueError(f"got {len(sprites)} sprites but {len(origins)} origins")
    background = np.asarray(background, dtype=np.uint8)
    if background.ndim != 3 or background.shape[2] != 3:
        raise ValueError(f"background must be (H, W, 3), got {background.shape}")
    H, W = background.shape[:2]
    image = Image.fromarray(np.ascontiguousarray(background))
    inst = np.full((H, W), -1, dtype=np.int16)
    canvas = Canvas(background, inst, list(sprites), [(int(x), int(y)) for x, y in origins])
    for i, s in enumerate(sprites):
        c = canvas.clip(i)
        if c is None:
            continue
        iy, ix, sy, sx = c
        sub = s.labels[sy, sx]
        size = (sub.shape[1], sub.shape[0])
        filled = sub > 0
        inst[iy, ix][filled] = i
        tile = Image.frombytes("P", size, np.ascontiguousarray(sub).tobytes())
        tile.putpalette(s.lut.tobytes())
        mask = Image.frombytes("L", size, (filled.view(np.uint8) * np.uint8(255)).tobytes())
        image.paste(tile.convert("RGB"), (ix.start, iy.start), mask)
    canvas.image = np.asarray(image).copy()
    return canvas
