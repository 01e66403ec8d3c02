"""Training images decoded, resized, flipped and normalised on the training device, in batches.

Data workers then only read each image file's bytes (a few tens of kB for a JPEG) instead of decoding,
resizing and normalising it into float32 pixels (megabytes per image, copied from the worker to the
main process and then to the GPU): at hundreds of images per second the CPU path, not the GPU, sets
the pace. On CUDA, JPEG files are decoded by nvJPEG in one batched call (``torchvision.io.decode_jpeg``);
other formats, and every format on the CPU, are decoded by ``torchvision.io.decode_image``.

The resize is bilinear with antialiasing (like PIL's bilinear resize, which the CPU path uses, up to
rounding), so a model trained on either path sees the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

#: The first bytes of a JPEG file.
JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedImageError(ValueError):
    """An image file that cannot be decoded (the message names it)."""


def read_encoded(path: str | Path) -> torch.Tensor:
    """The bytes of an image file as a 1-D uint8 tensor (what :func:`decode_images` takes).

    Raises:
        EncodedImageError: the file is missing or empty.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EncodedImageError(f"cannot read image {path}: {exc}") from exc
    if not data:
        raise EncodedImageError(f"image {path} is empty")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def is_jpeg(encoded: torch.Tensor) -> bool:
    return encoded.numel() >= 3 and bytes(encoded[:3].tolist()) == JPEG_MAGIC


def decode_images(encoded: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Decode image files' bytes to RGB uint8 tensors on ``device``.

    Args:
        encoded: N 1-D uint8 tensors (:func:`read_encoded`).
    Returns:
        N tensors (3, H_i, W_i) uint8 on ``device``.
    Raises:
        EncodedImageError: a file is not a decodable image.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    device = torch.device(device)
    out: list[Optional[torch.Tensor]] = [None] * len(encoded)
    jpeg = [i for i, e in enumerate(encoded) if device.type == "cuda" and is_jpeg(e)]
    if jpeg:
        try:
            decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            raise EncodedImageError(f"cannot decode a JPEG of the batch on {device}: {exc}") from exc
        for i, image in zip(jpeg, decoded):
            out[i] = image
    for i, e in enumerate(encoded):
        if out[i] is None:
            try:
                out[i] = decode_image(e, mode=ImageReadMode.RGB).to(device, non_blocking=True)
            except RuntimeError as exc:
                raise EncodedImageError(f"image {i} of the batch is not a decodable image: {exc}") from exc
    return out  # type: ignore[return-value]


def resize_into_canvas(images: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], canvas: tuple[int, int],
                       mean: Sequence[float], std: Sequence[float], flips: Optional[Sequence[bool]] = None,
                       dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize each image, flip it if asked, normalise it and place it at the top left of a padded batch.

    Args:
        images: N tensors (3, H_i, W_i) uint8, all on one device.
        sizes: N target sizes (h_i, w_i), each within ``canvas``.
        canvas: (H, W) of the batch.
        mean, std: per-channel normalisation of pixels scaled to [0, 1].
        flips: N booleans: mirror the image left to right (after resizing).
        dtype: of the returned pixels.
    Returns:
        pixels: (N, 3, H, W) normalised, 0 in the padding (like ``chatrex.upn.transforms.batch_images``);
        mask: (N, H, W) bool, True where a pixel is padding.
    """
    if len(images) != len(sizes):
        raise ValueError(f"{len(images)} images but {len(sizes)} sizes")
    if not images:
        raise ValueError("resize_into_canvas needs at least one image")
    H, W = canvas
    device = images[0].device
    pixels = torch.zeros((len(images), 3, H, W), dtype=dtype, device=device)
    mask = torch.ones((len(images), H, W), dtype=torch.bool, device=device)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    for i, (image, (h, w)) in enumerate(zip(images, sizes)):
        if h > H or w > W:
            raise ValueError(f"image {i} resized to {h}x{w} does not fit the canvas {H}x{W}")
        x = image.float()[None]
        if (h, w) != tuple(image.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = x[0].clamp_(0, 255)
        if flips is not None and flips[i]:
            x = x.flip(-1)
        pixels[i, :, :h, :w] = ((x / 255.0 - m) / s).to(dtype)
        mask[i, :h, :w] = False
    return pixels, mask
