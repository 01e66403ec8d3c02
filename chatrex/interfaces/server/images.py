"""Images sent to the server: data URLs, bare base64, or ``file://`` URLs under allowed folders.

Every refusal is an :class:`~chatrex.utils.image.ImageLoadError` (a ``ValueError``) whose message says
what is wrong and what the limit is; the app answers it with 400. The size is checked from the image
header before anything is decoded, so a small file that claims 20,000 x 20,000 pixels costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlparse

from PIL import Image, ImageOps, UnidentifiedImageError

from chatrex.utils.image import MIN_IMAGE_SIDE, ImageLoadError, to_rgb

__all__ = ["decode_image_bytes", "load_image_url"]

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


def decode_image_bytes(data: bytes, max_pixels: int, what: str = "the image") -> Image.Image:
    """Encoded image bytes → an upright RGB PIL image, refusing more than ``max_pixels`` pixels before decoding."""
    if not data:
        raise ImageLoadError(f"{what} is empty")
    try:
        probe = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{what} is too large ({exc}); the server accepts at most {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{what} is not a readable image ({type(exc).__name__}: {exc})") from None
    width, height = probe.size
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ImageLoadError(f"{what} is {width}x{height} px; each side must be at least {MIN_IMAGE_SIDE} px")
    if width * height > max_pixels:
        raise ImageLoadError(f"{what} is {width}x{height} = {width * height:,} pixels; the server accepts at most "
                             f"{max_pixels:,} pixels: downscale it first")
    try:
        image = ImageOps.exif_transpose(probe)
        image.load()
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"{what} could not be decoded ({type(exc).__name__}: {exc})") from None


def _b64decode(payload: str, max_bytes: int, what: str) -> bytes:
    payload = "".join(payload.split())  # base64 may be wrapped
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ImageLoadError(f"{what} holds about {len(payload) * 3 // 4:,} bytes; the server accepts at most "
                             f"{max_bytes:,} bytes per image")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageLoadError(f"{what} is not valid base64 ({exc})") from None
    if len(data) > max_bytes:
        raise ImageLoadError(f"{what} is {len(data):,} bytes; the server accepts at most {max_bytes:,} bytes per image")
    return data


def _read_local(url: str, roots: Sequence[Path], max_bytes: int) -> bytes:
    if not roots:
        raise ImageLoadError("file:// image URLs are turned off; start the server with --allow-local-files DIR to "
                             "allow files under DIR, or send the image as a data URL")
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ImageLoadError(f"file URL '{url}' names a host ({parsed.netloc}); only local files are read")
    path = Path(unquote(parsed.path))
    if not path.is_absolute():
        raise ImageLoadError(f"file URL '{url}' is not an absolute path")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ImageLoadError(f"file '{path}' is outside the folders the server may read "
                             f"({', '.join(str(r) for r in roots)})")
    if not resolved.is_file():
        raise ImageLoadError(f"file '{path}' does not exist or is not a file")
    size = resolved.stat().st_size
    if size > max_bytes:
        raise ImageLoadError(f"file '{path}' is {size:,} bytes; the server accepts at most {max_bytes:,} bytes per image")
    return resolved.read_bytes()


def load_image_url(url: str, max_bytes: int, max_pixels: int, allowed_roots: Sequence[Path] = (),
                   allow_bare_base64: bool = False) -> Image.Image:
    """An image given as a URL → an RGB PIL image.

    Args:
        url: ``data:image/...;base64,...``; ``file:///abs/path`` (only under ``allowed_roots``); or, with
            ``allow_bare_base64``, the base64 text alone.
        max_bytes / max_pixels: the limits (encoded bytes; width x height).

    Raises:
        ImageLoadError: anything else (remote URLs are never fetched), bad base64, a file outside the
            allowed folders, an unreadable, corrupt or too-large image.
    """
    if not isinstance(url, str) or not url.strip():
        raise ImageLoadError("the image is missing: give a data URL (data:image/png;base64,...)")
    text = url.strip()
    head = text[:64].lower()
    if head.startswith("data:"):
        m = _DATA_URL.match(text[:512])
        if m is None:
            raise ImageLoadError("the image data URL is malformed; expected data:image/<type>;base64,<data>")
        if not m.group("b64"):
            raise ImageLoadError("the image data URL is not base64-encoded; expected data:image/<type>;base64,<data>")
        mime = (m.group("mime") or "").lower()
        if mime and not mime.startswith("image/") and mime != "application/octet-stream":
            raise ImageLoadError(f"the data URL holds '{mime}', not an image")
        data = _b64decode(text[m.end():], max_bytes, "the image data URL")
        return decode_image_bytes(data, max_pixels, "the image")
    if head.startswith("file:"):
        return decode_image_bytes(_read_local(text, allowed_roots, max_bytes), max_pixels, f"image '{text}'")
    if head.startswith(("http://", "https://")):
        raise ImageLoadError("remote image URLs are not fetched; send the image as a data URL "
                             "(data:image/jpeg;base64,...)")
    if allow_bare_base64:
        return decode_image_bytes(_b64decode(text, max_bytes, "the image"), max_pixels, "the image")
    raise ImageLoadError(f"unsupported image URL '{text[:40]}...'; send a data URL (data:image/jpeg;base64,...)")
