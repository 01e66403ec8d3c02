"""Procedural scenes: sample a layout, render it, and annotate it exactly.

``generate_scene(seed, config)`` is the entry point: the same seed and config always give the same
image bytes and the same record. The three steps are public so tests and tools can build scenes by
hand:

1. :func:`sample_layout` — image size, background, and a list of :class:`ObjectSpec` in drawing
   order (back to front), from a ``numpy.random.Generator``.
2. :func:`render_layout` — sprites composited onto the background (:class:`~render.Canvas`).
3. :func:`annotate_canvas` — regions (instance and part boxes of the *visible* pixels, their masks as
   COCO RLE, categories, attributes, parent links, visible fraction and area) and relations (catalogue
   ``PREDICATES``).

Boxes are ``[x0, y0, x1, y1]`` integer pixel edges: ``x1``/``y1`` are one past the last visible
column/row. Instances less than ``min_visible`` visible (hidden by others or cut by the border) are
left out; parts likewise. Each drawn piece of a part is one part region (a car has two "wheel"
regions; a wheel cut in two by a bicycle's frame is still one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from chatrex.data.world.backgrounds import BACKGROUND_KINDS, make_background
from chatrex.data.world.catalog import (
    CATEGORIES, CATEGORY_BY_NAME, COLOR_NAMES, FACING, PATTERNS, PREDICATES, SIZES, size_name,
)
from chatrex.data.world.render import MIN_PATTERN_SIDE, Canvas, Sprite, composite, render_object
from chatrex.utils.masks import rle_from_crop

_PRED_ORDER = {p: i for i, p in enumerate(PREDICATES)}


# ------------------------------------------------------------------------------------------ config


@dataclass
class WorldConfig:
    """What scenes look like. All ranges are inclusive ``(low, high)``.

    Attributes:
        min_side, max_side: image side lengths in pixels (both sides stay in this range).
        aspect_range: width / height range of the image.
        image_size: fixed ``(width, height)``; overrides the three above.
        sparse_prob, crowded_prob: chance of a sparse / crowded scene (else normal).
        sparse_objects, normal_objects, crowded_objects: object count ranges of each scene kind.
        size_weights: per scene kind, the weights of "small", "medium", "large".
        categories, colors, patterns: allowed values (None: the whole catalogue).
        plain_prob: chance an object is plain (else a random other pattern).
        upright_prob: chance a category that can tilt is drawn upright.
        tilt_range: tilt angle range in degrees for "tilted left/right".
        background_weights: weights of the background kinds.
        nest_prob: chance to place an object inside the box of a larger one placed before it.
        min_visible: instances (and parts) with a smaller visible fraction are left out.
        min_region_pixels, min_part_pixels: smallest visible area kept, in pixels.
        parts: emit part regions.
        neighbours: spatial relations are computed between each instance and this many nearest ones.
        forbidden_pairs: (colour, category) pairs never generated (colour is resampled).
        required_pairs: (colour, category) pairs of which ``required_per_image`` objects are drawn
            on top of every scene (the compositional split).
        required_per_image: range of the number of required objects.
    """

    min_side: int = 256
    max_side: int = 1024
    aspect_range: tuple[float, float] = (0.5, 2.0)
    image_size: Optional[tuple[int, int]] = None
    sparse_prob: float = 0.2
    crowded_prob: float = 0.12
    sparse_objects: tuple[int, int] = (1, 3)
    normal_objects: tuple[int, int] = (4, 14)
    crowded_objects: tuple[int, int] = (30, 60)
    size_weights: dict = field(default_factory=lambda: {
        "sparse": (0.2, 0.5, 0.3), "normal": (0.45, 0.45, 0.1), "crowded": (0.9, 0.1, 0.0)})
    categories: Optional[tuple[str, ...]] = None
    colors: Optional[tuple[str, ...]] = None
    patterns: Optional[tuple[str, ...]] = None
    plain_prob: float = 0.55
    upright_prob: float = 0.6
    tilt_range: tuple[float, float] = (20.0, 35.0)
    background_weights: dict = field(default_factory=lambda: {
        "flat": 0.25, "gradient": 0.25, "noise": 0.2, "photo": 0.3})
    nest_prob: float = 0.1
    min_visible: float = 0.3
    min_region_pixels: int = 16
    min_part_pixels: int = 6
    parts: bool = True
    neighbours: int = 3
    forbidden_pairs: tuple[tuple[str, str], ...] = ()
    required_pairs: tuple[tuple[str, str], ...] = ()
    required_per_image: tuple[int, int] = (1, 2)

    def __post_init__(self) -> None:
        errors = self.check()
        if errors:
            raise ValueError("invalid WorldConfig: " + "; ".join(errors))

    def check(self) -> list[str]:
        errors = []
        if not 16 <= self.min_side <= self.max_side:
            errors.append(f"need 16 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        lo, hi = self.aspect_range
        if not 0 < lo <= hi:
            errors.append(f"bad aspect_range {self.aspect_range}")
        elif self.image_size is None and self.min_side * max(hi, 1 / lo) > self.max_side * 1.0001:
            errors.append(f"aspect_range {self.aspect_range} cannot fit sides in [{self.min_side}, {self.max_side}]")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 16):
            errors.append(f"image_size must be (width, height) >= 16, got {self.image_size}")
        for name in ("sparse_objects", "normal_objects", "crowded_objects", "required_per_image"):
            a, b = getattr(self, name)
            if not 0 <= a <= b:
                errors.append(f"{name} must be (low, high) with 0 <= low <= high, got {(a, b)}")
        for c in self.categories or ():
            if c not in CATEGORY_BY_NAME:
                errors.append(f"unknown category {c!r}")
        for c in self.colors or ():
            if c not in COLOR_NAMES:
                errors.append(f"unknown colour {c!r}")
        for p in self.patterns or ():
            if p not in PATTERNS:
                errors.append(f"unknown pattern {p!r}")
        for k in self.background_weights:
            if k not in BACKGROUND_KINDS:
                errors.append(f"unknown background kind {k!r}")
        for color, cat in tuple(self.forbidden_pairs) + tuple(self.required_pairs):
            if color not in COLOR_NAMES or cat not in CATEGORY_BY_NAME:
                errors.append(f"unknown (colour, category) pair {(color, cat)!r}")
        if not 0.0 <= self.min_visible <= 1.0:
            errors.append(f"min_visible must be in [0, 1], got {self.min_visible}")
        return errors

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown WorldConfig keys: {sorted(unknown)}")
        kw = dict(d)
        for k in ("aspect_range", "image_size", "sparse_objects", "normal_objects", "crowded_objects",
                  "tilt_range", "required_per_image", "categories", "colors", "patterns"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        for k in ("forbidden_pairs", "required_pairs"):
            if k in kw:
                kw[k] = tuple(tuple(p) for p in kw[k])
        if "size_weights" in kw:
            kw["size_weights"] = {k: tuple(v) for k, v in kw["size_weights"].items()}
        return cls(**kw)


# ------------------------------------------------------------------------------------------ layout


@dataclass
class ObjectSpec:
    """One object to draw: what it is and where. ``(cx, cy)`` is the centre of its sprite in pixels;
    ``width`` x ``height`` the drawing box before orientation."""

    category: str
    color: str
    width: int
    height: int
    cx: float
    cy: float
    pattern: str = "plain"
    orientation: str = "upright"
    tilt: float = 0.0


@dataclass
class SceneLayout:
    """A whole scene before rendering: image size, background, objects back to front."""

    width: int
    height: int
    objects: list[ObjectSpec]
    background: str = "flat"
    background_seed: int = 0


def _weighted(rng: np.random.Generator, items: Sequence, weights: Sequence[float]):
    w = np.asarray(weights, dtype=np.float64)
    return items[int(rng.choice(len(items), p=w / w.sum()))]


def _sample_image_size(rng: np.random.Generator, cfg: WorldConfig) -> tuple[int, int]:
    if cfg.image_size is not None:
        return int(cfg.image_size[0]), int(cfg.image_size[1])
    lo, hi = cfg.aspect_range
    aspect = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    ratio = max(aspect, 1.0 / aspect)
    long_side = rng.uniform(min(cfg.min_side * ratio, cfg.max_side), cfg.max_side)
    short_side = min(max(long_side / ratio, cfg.min_side), cfg.max_side)
    long_side, short_side = int(round(long_side)), int(round(short_side))
    return (long_side, short_side) if aspect >= 1 else (short_side, long_side)


def _sample_orientation(rng: np.random.Generator, cfg: WorldConfig, category: str) -> tuple[str, float]:
    allowed = CATEGORY_BY_NAME[category].orientations
    if allowed == FACING:
        return FACING[int(rng.integers(2))], 0.0
    others = [o for o in allowed if o != "upright"]
    if "upright" in allowed and (not others or rng.random() < cfg.upright_prob):
        return "upright", 0.0
    o = others[int(rng.integers(len(others)))]
    tilt = float(rng.uniform(*cfg.tilt_range)) if o.startswith("tilted") else 0.0
    return o, round(tilt, 2)


def _sample_object(
    rng: np.random.Generator, cfg: WorldConfig, W: int, H: int, size_weights: Sequence[float],
    placed: list[ObjectSpec], pair: Optional[tuple[str, str]] = None,
) -> ObjectSpec:
    categories = list(cfg.categories or [c.name for c in CATEGORIES])
    colors = list(cfg.colors or COLOR_NAMES)
    forbidden = set(map(tuple, cfg.forbidden_pairs))
    if pair is not None:
        color, category = pair
    else:
        for _ in range(100):
            category = categories[int(rng.integers(len(categories)))]
            allowed = [c for c in colors if (c, category) not in forbidden]
            if allowed:
                break
        else:
            raise ValueError("every allowed (colour, category) combination is forbidden")
        color = allowed[int(rng.integers(len(allowed)))]

    size = "medium" if pair is not None else _weighted(rng, list(SIZES), size_weights)
    lo, hi = SIZES[size]
    rel = rng.uniform(lo, hi)
    aspect = CATEGORY_BY_NAME[category].aspect * rng.uniform(0.9, 1.1)
    area = (rel ** 2) * W * H
    dw, dh = math.sqrt(area * aspect), math.sqrt(area / aspect)
    shrink = min(1.0, 0.95 * W / dw, 0.95 * H / dh)
    dw, dh = dw * shrink, dh * shrink
    grow = max(1.0, 8.0 / min(dw, dh))
    dw, dh = max(1, round(dw * grow)), max(1, round(dh * grow))

    orientation, tilt = _sample_orientation(rng, cfg, category)
    patterns = list(cfg.patterns or PATTERNS)
    fancy = [p for p in patterns if p != "plain"]
    if min(dw, dh) < MIN_PATTERN_SIDE or not fancy or ("plain" in patterns and rng.random() < cfg.plain_prob):
        pattern = "plain"
    else:
        pattern = fancy[int(rng.integers(len(fancy)))]

    hosts = [o for o in placed if o.width * o.height >= 4 * dw * dh]
    if pair is None and hosts and rng.random() < cfg.nest_prob:
        host = hosts[int(rng.integers(len(hosts)))]
        cx = host.cx + rng.uniform(-0.3, 0.3) * host.width
        cy = host.cy + rng.uniform(-0.3, 0.3) * host.height
    else:
        margin = 0.5 if pair is not None else 0.4  # required objects stay fully inside
        mx, my = dw * margin, dh * margin
        cx = rng.uniform(mx, W - mx) if W - mx > mx else W / 2
        cy = rng.uniform(my, H - my) if H - my > my else H / 2
    return ObjectSpec(category, color, int(dw), int(dh), round(float(cx), 2), round(float(cy), 2),
                      pattern, orientation, tilt)


def sample_layout(rng: np.random.Generator, config: Optional[WorldConfig] = None) -> SceneLayout:
    """Sample a scene layout (image size, background, objects in drawing order)."""
    cfg = config or WorldConfig()
    W, H = _sample_image_size(rng, cfg)
    u = rng.random()
    kind = "sparse" if u < cfg.sparse_prob else "crowded" if u < cfg.sparse_prob + cfg.crowded_prob else "normal"
    lo, hi = getattr(cfg, f"{kind}_objects")
    n = int(rng.integers(lo, hi + 1))
    kinds = list(cfg.background_weights)
    background = _weighted(rng, kinds, [cfg.background_weights[k] for k in kinds])
    background_seed = int(rng.integers(2**31))
    objects: list[ObjectSpec] = []
    for _ in range(n):
        objects.append(_sample_object(rng, cfg, W, H, cfg.size_weights[kind], objects))
    if cfg.required_pairs:
        k = int(rng.integers(cfg.required_per_image[0], cfg.required_per_image[1] + 1))
        for _ in range(k):
            pair = tuple(cfg.required_pairs[int(rng.integers(len(cfg.required_pairs)))])
            objects.append(_sample_object(rng, cfg, W, H, cfg.size_weights[kind], objects, pair=pair))
    return SceneLayout(W, H, objects, background, background_seed)


# ---------------------------------------------------------------------------------------- render


def render_sprites(layout: SceneLayout) -> tuple[list[Sprite], list[tuple[int, int]]]:
    """Render every object of ``layout`` and place its sprite centred on ``(cx, cy)``."""
    sprites, origins = [], []
    for o in layout.objects:
        s = render_object(o.category, o.color, o.width, o.height, o.pattern, o.orientation, o.tilt)
        sprites.append(s)
        origins.append((int(round(o.cx - s.width / 2)), int(round(o.cy - s.height / 2))))
    return sprites, origins


def render_layout(layout: SceneLayout) -> tuple[Image.Image, Canvas]:
    """Render ``layout``: the RGB image and the canvas with instance/part maps."""
    bg = make_background(layout.background, layout.width, layout.height,
                         np.random.default_rng(layout.background_seed))
    sprites, origins = render_sprites(layout)
    canvas = composite(bg, sprites, origins)
    return Image.fromarray(canvas.image), canvas


# -------------------------------------------------------------------------------------- annotate


def _tight_box(mask: np.ndarray, x_off: int, y_off: int) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0] + x_off), int(rows[0] + y_off), int(cols[-1] + 1 + x_off), int(rows[-1] + 1 + y_off)]


def _rle(mask: np.ndarray, box: Sequence[int], x_off: int, y_off: int, layout: "SceneLayout") -> dict:
    """COCO RLE (whole image) of ``mask``, a crop at ``(x_off, y_off)``, from its tight ``box`` only."""
    x0, y0, x1, y1 = box
    tight = mask[y0 - y_off:y1 - y_off, x0 - x_off:x1 - x_off]
    return rle_from_crop(tight, x0, y0, layout.height, layout.width)


@dataclass
class _Kept:
    region_id: int
    index: int  # drawing order
    box: np.ndarray  # visible box (4,)
    full_pixels: int


def annotate_canvas(layout: SceneLayout, canvas: Canvas, config: Optional[WorldConfig] = None) -> tuple[list[dict], list[dict]]:
    """Regions and relations of a rendered scene.

    Returns:
        ``(regions, relations)`` as record dicts (``chatrex.data.schema`` format).
    """
    cfg = config or WorldConfig()
    image_area = float(layout.width * layout.height)
    regions: list[dict] = []
    kept: list[_Kept] = []
    for i, (spec, sprite) in enumerate(zip(layout.objects, canvas.sprites)):
        c = canvas.clip(i)
        if c is None:
            continue
        iy, ix, sy, sx = c
        vis = canvas.instance_map[iy, ix] == i
        n_vis = int(np.count_nonzero(vis))
        full = sprite.pixels
        if n_vis == 0 or n_vis < cfg.min_region_pixels or n_vis / full < cfg.min_visible:
            continue
        rid = len(regions)
        box = _tight_box(vis, ix.start, iy.start)
        regions.append({
            "id": rid, "box": box, "category": spec.category, "level": "instance", "parent": None,
            "attributes": {
                "color": spec.color, "size": size_name(sprite.width * sprite.height, image_area),
                "pattern": spec.pattern, "orientation": spec.orientation,
            },
            "visible": round(n_vis / full, 3), "area": n_vis,
            "mask": _rle(vis, box, ix.start, iy.start, layout),
        })
        kept.append(_Kept(rid, i, np.asarray(box, dtype=np.float64), full))
        if not cfg.parts or not sprite.parts:
            continue
        # piece at every visible pixel (0: background, occluded, or no named part); each piece of a
        # part (each wheel of a car) is its own part region
        piece_vis = np.where(vis, sprite.pieces[sy, sx], 0)
        for k, (j, p_full) in enumerate(zip(sprite.piece_parts, sprite.piece_pixels), start=1):
            pvis = piece_vis == k
            p_vis = int(np.count_nonzero(pvis))
            if p_vis < max(1, cfg.min_part_pixels) or p_full == 0 or p_vis / p_full < cfg.min_visible:
                continue
            pbox = _tight_box(pvis, ix.start, iy.start)
            region = {"id": len(regions), "box": pbox, "category": sprite.parts[j], "level": "part", "parent": rid}
            if sprite.part_colors[j] is not None:
                region["attributes"] = {"color": sprite.part_colors[j]}
            region.update({"visible": round(p_vis / p_full, 3), "area": p_vis,
                           "mask": _rle(pvis, pbox, ix.start, iy.start, layout)})
            regions.append(region)
    relations = compute_relations(canvas, kept, cfg.neighbours)
    return regions, relations


def _overlap(canvas: Canvas, a: int, b: int) -> int:
    """Pixels where the full masks of sprites ``a`` and ``b`` overlap inside the image."""
    ca, cb = canvas.clip(a), canvas.clip(b)
    if ca is None or cb is None:
        return 0
    y0, y1 = max(ca[0].start, cb[0].start), min(ca[0].stop, cb[0].stop)
    x0, x1 = max(ca[1].start, cb[1].start), min(ca[1].stop, cb[1].stop)
    if y0 >= y1 or x0 >= x1:
        return 0
    (ax, ay), (bx, by) = canvas.origins[a], canvas.origins[b]
    ma = canvas.sprites[a].mask[y0 - ay:y1 - ay, x0 - ax:x1 - ax]
    mb = canvas.sprites[b].mask[y0 - by:y1 - by, x0 - bx:x1 - bx]
    return int(np.count_nonzero(ma & mb))


def compute_relations(canvas: Canvas, kept: Sequence[_Kept], neighbours: int = 3) -> list[dict]:
    """Relations between the kept instances.

    * "in front of" / "behind": the full masks overlap by at least 3 pixels and 2% of the smaller
      object; the later-drawn object is in front.
    * "inside": the front object's mask lies at least 85% on the back object's mask and its box is
      less than half the back object's box.
    * "left of" / "right of" / "above" / "below": between each instance and its ``neighbours``
      nearest (box centres), when the visible boxes overlap by at most 20% of the smaller extent
      along that axis.
    * "next to": the gap between two boxes is at most 30% of their mean longest side, their boxes'
      IoU is below 0.25 and neither is inside the other.
    """
    rels: set[tuple[int, str, int]] = set()
    n = len(kept)
    if n < 2:
        return []
    boxes = np.stack([k.box for k in kept])  # (n, 4) visible boxes
    sprite_boxes = []
    for k in kept:
        x, y = canvas.origins[k.index]
        s = canvas.sprites[k.index]
        sprite_boxes.append((x, y, x + s.width, y + s.height))
    sb = np.asarray(sprite_boxes, dtype=np.float64)

    inside: set[tuple[int, int]] = set()
    ix0 = np.maximum(sb[:, None, 0], sb[None, :, 0])
    iy0 = np.maximum(sb[:, None, 1], sb[None, :, 1])
    ix1 = np.minimum(sb[:, None, 2], sb[None, :, 2])
    iy1 = np.minimum(sb[:, None, 3], sb[None, :, 3])
    touching = (ix1 > ix0) & (iy1 > iy0)
    sb_area = (sb[:, 2] - sb[:, 0]) * (sb[:, 3] - sb[:, 1])
    for a, b in zip(*np.nonzero(np.triu(touching, 1))):
        ka, kb = kept[a], kept[b]
        back, front = (ka, kb) if ka.index < kb.index else (kb, ka)
        ov = _overlap(canvas, back.index, front.index)
        if ov < max(3, 0.02 * min(back.full_pixels, front.full_pixels)):
            continue
        rels.add((front.region_id, "in front of", back.region_id))
        rels.add((back.region_id, "behind", front.region_id))
        fa, ba = (b, a) if front is kb else (a, b)
        if ov >= 0.85 * front.full_pixels and sb_area[fa] < 0.5 * sb_area[ba]:
            rels.add((front.region_id, "inside", back.region_id))
            inside.add((fa, ba))

    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    d = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    pairs: set[tuple[int, int]] = set()
    for a in range(n):
        for b in np.argsort(d[a], kind="stable")[:neighbours]:
            pairs.add((min(a, int(b)), max(a, int(b))))
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    for a, b in sorted(pairs):
        A, B = boxes[a], boxes[b]
        ra, rb = kept[a].region_id, kept[b].region_id
        ox = min(A[2], B[2]) - max(A[0], B[0])
        oy = min(A[3], B[3]) - max(A[1], B[1])
        if ox <= 0.2 * min(w[a], w[b]):
            left, right = (ra, rb) if centres[a, 0] < centres[b, 0] else (rb, ra)
            rels.add((left, "left of", right))
            rels.add((right, "right of", left))
        if oy <= 0.2 * min(h[a], h[b]):
            top, bottom = (ra, rb) if centres[a, 1] < centres[b, 1] else (rb, ra)
            rels.add((top, "above", bottom))
            rels.add((bottom, "below", top))
        if (a, b) in inside or (b, a) in inside:
            continue
        gap = math.hypot(max(-ox, 0.0), max(-oy, 0.0))
        inter = max(ox, 0.0) * max(oy, 0.0)
        union = w[a] * h[a] + w[b] * h[b] - inter
        mean_long = (max(w[a], h[a]) + max(w[b], h[b])) / 2
        if gap <= 0.3 * mean_long and inter / union < 0.25:
            rels.add((ra, "next to", rb))
            rels.add((rb, "next to", ra))
    ordered = sorted(rels, key=lambda r: (r[0], r[2], _PRED_ORDER[r[1]]))
    return [{"subject": s, "predicate": p, "object": o} for s, p, o in ordered]


# ------------------------------------------------------------------------------------- generate


def build_record(
    layout: SceneLayout, canvas: Canvas, config: Optional[WorldConfig] = None, *, record_id: str,
    image_path: str, split: Optional[str] = None, seed: Optional[int] = None,
) -> dict:
    """The record dict of a rendered scene."""
    regions, relations = annotate_canvas(layout, canvas, config)
    record: dict[str, Any] = {"id": record_id, "image": image_path, "width": layout.width,
                              "height": layout.height, "source": "world"}
    if split is not None:
        record["split"] = split
    if seed is not None:
        record["seed"] = int(seed)
    record["background"] = layout.background
    record["regions"] = regions
    record["relations"] = relations
    return record


def generate_scene(
    seed: int, config: Optional[WorldConfig] = None, *, split: Optional[str] = None,
    record_id: Optional[str] = None, image_path: Optional[str] = None,
) -> tuple[Image.Image, dict]:
    """One scene from ``seed``: the RGB image and its record (no language fields).

    The same ``seed`` and ``config`` give the same image bytes and record.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    cfg = config or WorldConfig()
    layout = sample_layout(np.random.default_rng(int(seed)), cfg)
    image, canvas = render_layout(layout)
    rid = record_id or f"world-{int(seed):09d}"
    record = build_record(layout, canvas, cfg, record_id=rid, image_path=image_path or f"images/{rid}.png",
                          split=split, seed=int(seed))
    return image, record
