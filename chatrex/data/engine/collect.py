"""Stage 1: collect images from a folder and drop the ones not worth annotating.

An image is dropped when it cannot be read (:class:`chatrex.utils.image.ImageLoadError`), when it is
tiny, or when it is near-empty (almost one flat colour). Each dropped image gets a short reason that the
engine stores, so a rerun does not look at it again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

#: File suffixes treated as images (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageTask:
    """One image to process. ``path`` is relative to ``images_dir``; ``sha256`` is the file's content hash.

    The pair (``path``, ``sha256``) is the key that marks an image as finished.
    """

    images_dir: str
    path: str
    sha256: str

    @property
    def key(self) -> str:
        return f"{self.path}#{self.sha256}"

    @property
    def abspath(self) -> str:
        return os.path.join(self.images_dir, self.path)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageTask":
        return cls(str(data["images_dir"]), str(data["path"]), str(data["sha256"]))


@dataclass
class ImageFilterConfig:
    """Thresholds of stage 1.

    Attributes:
        min_side: drop images whose shorter side has fewer pixels.
        min_pixels: drop images with fewer pixels in all.
        flat_std: drop images whose grey-level standard deviation (0-255, on a 64-px thumbnail) is below this.
        flat_fraction: drop images where one grey level (in 16 bins) covers more than this fraction.
    """

    min_side: int = 64
    min_pixels: int = 64 * 64
    flat_std: float = 4.0
    flat_fraction: float = 0.98

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageFilterConfig":
        return cls(**data)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def list_images(images_dir: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Image files under ``images_dir`` (by suffix), as sorted POSIX paths relative to it."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"the image folder '{root}' does not exist or is not a folder")
    pattern = "**/*" if recursive else "*"
    found = [
        p.relative_to(root).as_posix()
        for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(found)


def collect_tasks(images_dir: str | os.PathLike, recursive: bool = True) -> list[ImageTask]:
    """One :class:`ImageTask` per image file, hashed, in sorted path order."""
    root = os.path.abspath(os.fspath(images_dir))
    return [ImageTask(root, rel, file_sha256(os.path.join(root, rel))) for rel in list_images(root, recursive)]


def reject_reason(image: Image.Image, config: ImageFilterConfig) -> Optional[str]:
    """Why ``image`` should be dropped (``"too small: ..."``, ``"near-empty: ..."``), or ``None`` to keep it."""
    width, height = image.size
    if min(width, height) < config.min_side or width * height < config.min_pixels:
        return f"too small: {width}x{height} px (need a side of at least {config.min_side} px and {config.min_pixels} pixels)"
    thumb = image.convert("L")
    thumb.thumbnail((64, 64))
    grey = np.asarray(thumb, dtype=np.float64)
    std = float(grey.std())
    if std < config.flat_std:
        return f"near-empty: grey-level std {std:.2f} < {config.flat_std}"
    hist = np.bincount((grey // 16).astype(np.int64).ravel(), minlength=16)
    top = float(hist.max()) / float(grey.size)
    if top > config.flat_fraction:
        return f"near-empty: one grey level covers {top:.1%} of the image"
    return None
