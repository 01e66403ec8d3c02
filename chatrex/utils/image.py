"""Loading user images safely: paths, PIL images, numpy arrays and tensors become RGB PIL images.

Every failure is an :class:`ImageLoadError` that names the input and says what is wrong, so bad input
never reaches torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest number of pixels accepted (8192 x 8192, below PIL's own decompression-bomb limit of about
#: 89 MP). Larger inputs are refused from their header, before decoding. The models see the image at
#: most about 1333 px on its long side, so nothing is lost: downscale larger images first.
MAX_IMAGE_PIXELS = 8192 * 8192
#: Smallest side accepted, in pixels.
MIN_IMAGE_SIDE = 2

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, Any]


class ImageLoadError(ValueError):
    """An image could not be read or is not usable (missing, corrupt, absurd size, odd layout)."""


def _describe(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return f"image file '{os.fspath(src)}'"
    if isinstance(src, Image.Image):
        return f"PIL image ({src.mode}, {src.width}x{src.height})"
    if isinstance(src, np.ndarray):
        return f"array of shape {tuple(src.shape)} and dtype {src.dtype}"
    return f"object of type {type(src).__name__}"


def _check_size(width: int, height: int, what: str, max_pixels: int) -> None:
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ImageLoadError(f"{what} is {width}x{height} px; each side must be at least {MIN_IMAGE_SIDE} px")
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{what} is {width}x{height} px = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; downscale it first"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB. Transparent pixels are composited over white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return Image.fromarray(_stretch_to_uint8(np.asarray(image)), "L").convert("RGB")
    return image.convert("RGB")


_STRETCH_ROWS = 256  # rows per block when a 32-bit image is scaled in floating point


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map ``arr`` (H, W) linearly from [min, max] to [0, 255] (rounded), as uint8, without a float64 copy
    of the whole image: 8- and 16-bit values go through a lookup table, 32-bit ones block by block."""
    lo, hi = arr.min(), arr.max()
    out = np.zeros(arr.shape, dtype=np.uint8)
    if not hi > lo:  # flat (or NaN)
        return out
    lo, span = float(lo), float(hi) - float(lo)
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:  # a table of at most 65,536 entries
        levels = np.arange(int(hi) + 1, dtype=np.float64)
        return np.clip((levels - lo) / span * 255.0, 0.0, 255.0).round().astype(np.uint8)[arr]
    for start in range(0, arr.shape[0], _STRETCH_ROWS):
        block = arr[start:start + _STRETCH_ROWS].astype(np.float64)
        out[start:start + _STRETCH_ROWS] = ((block - lo) / span * 255.0).round()
    return out


def _array_to_pil(arr: np.ndarray, what: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"{what}: expected (H, W), (H, W, 3|4) or (3|4, H, W)")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageLoadError(f"{what}: contains NaN or infinite values")
    if arr.dtype == np.uint8:
        data = arr
    elif arr.dtype == np.bool_:
        data = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ImageLoadError(f"{what}: float images must hold values in [0, 1]")
        data = (arr * 255.0).round().astype(np.uint8)
    elif arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ImageLoadError(f"{what}: integer images must hold values in [0, 255]")
        data = arr.astype(np.uint8)
    else:
        raise ImageLoadError(f"{what}: unsupported dtype")
    _check_size(data.shape[1], data.shape[0], what, MAX_IMAGE_PIXELS)
    return to_rgb(Image.fromarray(np.ascontiguousarray(data)))


def load_image(src: ImageInput, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Return ``src`` as an RGB PIL image, upright according to its EXIF orientation.

    Args:
        src: a path, a PIL image (any mode), a numpy array (HWC or CHW; uint8, bool, or float in
            [0, 1]) or a torch tensor (CHW float in [0, 1] or uint8).
        max_pixels: refuse images with more pixels than this.

    Raises:
        ImageLoadError: missing or unreadable file, corrupt data, absurd size or unusable layout.
    """
    what = _describe(src)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise ImageLoadError(f"{what} does not exist")
        if not path.is_file():
            raise ImageLoadError(f"{what} is not a file")
        try:
            with Image.open(path) as probe:
                _check_size(probe.width, probe.height, what, max_pixels)
                image = ImageOps.exif_transpose(probe)
                image.load()
        except ImageLoadError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(f"{what} could not be decoded ({type(exc).__name__}: {exc})") from exc
        return to_rgb(image)
    if isinstance(src, Image.Image):
        _check_size(src.width, src.height, what, max_pixels)
        try:
            image = ImageOps.exif_transpose(src)
        except Exception as exc:  # a broken EXIF block must not lose the image
            raise ImageLoadError(f"{what} has unreadable EXIF data ({exc})") from exc
        return to_rgb(image)
    if isinstance(src, np.ndarray):
        return _array_to_pil(src, what)
    if type(src).__module__.startswith("torch"):
        arr = src.detach().cpu().numpy()
        return _array_to_pil(arr, what)
    raise ImageLoadError(f"cannot load an image from an {what}; pass a path, PIL image or array")

