"""Scene backgrounds: flat colour, linear gradient, smooth noise, and photographs from scikit-image
(cropped, blurred, tinted and lowered in contrast so they read as texture behind the objects).

Every background is an ``(H, W, 3)`` uint8 array made from a ``numpy.random.Generator`` only, so a
scene's seed fixes it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

#: Background kinds.
BACKGROUND_KINDS = ("flat", "gradient", "noise", "photo")
#: scikit-image sample images used as photographic textures (all ship with scikit-image).
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
               "retina", "brick", "grass", "gravel")


@lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    """A scikit-image sample as an RGB PIL image.

    Raises ``RuntimeError`` when scikit-image or the sample is missing: the world's images must not depend
    on what happens to be installed, so a photo background never silently becomes another kind.
    """
    try:
        import skimage.data
    except ImportError as exc:
        raise RuntimeError("the world's photo backgrounds need scikit-image (pip install 'chatrex[data]')") from exc
    try:
        arr = getattr(skimage.data, name)()
    except Exception as exc:  # e.g. a sample that needs a download we cannot do
        raise RuntimeError(f"the scikit-image sample {name!r} (a world photo background) cannot be loaded: "
                           f"{type(exc).__name__}: {exc}") from exc
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) / max(float(arr.max()), 1e-9) * 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]))


def _random_color(rng: np.random.Generator, lo: int = 40, hi: int = 235) -> np.ndarray:
    return rng.integers(lo, hi, size=3).astype(np.float32)


def _ramp(c0: np.ndarray, c1: np.ndarray) -> bytes:
    """A 256-entry palette blending ``c0`` into ``c1`` (for a "P" image)."""
    t = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    return np.clip(c0 + t * (c1 - c0), 0, 255).astype(np.uint8).tobytes()


def _through_palette(index: Image.Image, palette: bytes) -> np.ndarray:
    """Map an "L" image through a 256-colour palette to an (H, W, 3) array (in C, via Pillow)."""
    index = index.copy() if index.mode == "P" else Image.frombytes("P", index.size, index.tobytes())
    index.putpalette(palette)
    return np.asarray(index.convert("RGB"))


def flat(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A single random colour."""
    color = tuple(int(v) for v in _random_color(rng))
    return np.asarray(Image.new("RGB", (width, height), color))


def gradient(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A linear blend between two random colours along a random direction."""
    c0, c1 = _random_color(rng), _random_color(rng)
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = np.cos(angle), np.sin(angle)
    # the blend parameter is linear in x and y: compute it on a coarse grid and let Pillow
    # interpolate (bilinear interpolation of a linear function is exact up to rounding)
    gw, gh = min(width, 33), min(height, 33)
    xs = (np.linspace(0.0, 1.0, gw, dtype=np.float32) - 0.5) * dx
    ys = (np.linspace(0.0, 1.0, gh, dtype=np.float32) - 0.5) * dy
    t = (ys[:, None] + xs[None, :]) / (abs(dx) + abs(dy)) + 0.5
    coarse = Image.fromarray(np.clip(t * 255 + 0.5, 0, 255).astype(np.uint8))
    return _through_palette(coarse.resize((width, height), Image.Resampling.BILINEAR), _ramp(c0, c1))


def noise(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth value noise between two random colours, plus fine grain."""
    c0, c1 = _random_color(rng), _random_color(rng)
    cells = int(rng.integers(3, 12))
    small = rng.integers(0, 256, size=(cells, max(2, round(cells * width / height))), dtype=np.uint8)
    field = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-10, 11, size=(height, width), dtype=np.int16)
    index = np.clip(field + grain, 0, 255).astype(np.uint8)
    return _through_palette(Image.fromarray(index), _ramp(c0, c1))


def photo(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of one of the :data:`PHOTO_NAMES` photos, blurred, tinted and softened."""
    src = _photo(PHOTO_NAMES[int(rng.integers(len(PHOTO_NAMES)))])
    # a crop with the target aspect ratio covering 35-100% of the photo's shorter side
    aspect = width / height
    frac = rng.uniform(0.35, 1.0)
    ch = min(src.height, src.width / aspect) * frac
    cw = ch * aspect
    x0 = rng.uniform(0, src.width - cw)
    y0 = rng.uniform(0, src.height - ch)
    flip = rng.random() < 0.5
    # blur, tint and soften at a quarter of the resolution (cheap), then scale to the target size
    small_w, small_h = max(2, round(width / 4)), max(2, round(height / 4))
    small = src.resize((small_w, small_h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if flip:
        small = small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    small = small.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.5))))
    arr = np.asarray(small, dtype=np.float32)
    tint, amount = _random_color(rng), rng.uniform(0.15, 0.45)
    contrast = rng.uniform(0.55, 0.85)
    mean = arr.mean()
    arr = ((arr - mean) * contrast + mean) * (1 - amount) + tint * amount
    small = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


_MAKERS = {"flat": flat, "gradient": gradient, "noise": noise, "photo": photo}


def make_background(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 background of ``kind`` (one of :data:`BACKGROUND_KINDS`)."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown background kind {kind!r}; choose from {list(BACKGROUND_KINDS)}")
    return _MAKERS[kind](int(width), int(height), rng)
