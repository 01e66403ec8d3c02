"""UPN input preprocessing: the official resize rule, ToTensor, ImageNet normalisation, batching.

The pipeline matches the official ``UPNWrapper`` exactly (``RandomResize([800], max_size=1333)`` with a
single size, ``ToTensor``, ``Normalize``) so that the official checkpoint sees the inputs it was trained
on. ``batch_images`` pads a list of tensors to one batch and returns the padding mask the model needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image

#: ImageNet statistics used by the official UPN transform.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(width: int, height: int, size: int = 800, max_size: Optional[int] = 1333) -> tuple[int, int]:
    """Return the ``(height, width)`` an image of ``width`` x ``height`` is resized to.

    The short side becomes ``size`` and the long side ``int(size * long / short)`` (truncated). If that
    long side would exceed ``max_size``, ``size`` is first lowered to ``round(max_size * short / long)``.
    If the short side already equals ``size`` the image keeps its size.

    Example: 2246 x 1590 (W x H) -> (800, 1130).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if size <= 0:
        raise ValueError(f"resize target must be positive, got {size}")
    if max_size is not None and max_size <= 0:
        raise ValueError(f"max_size must be positive or None, got {max_size}")
    short, long = (width, height) if width <= height else (height, width)
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


@dataclass
class UPNTransform:
    """PIL RGB image -> normalised float tensor (3, H', W') following the official UPN recipe.

    Args:
        size: target length of the short side.
        max_size: upper bound on the long side (None: unbounded).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
    """

    size: int = 800
    max_size: Optional[int] = 1333
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def resize(self, image: Image.Image) -> Image.Image:
        """Resize with PIL bilinear (antialiased when shrinking), as torchvision does for PIL input."""
        h, w = self.resized_size(image)
        if (h, w) == (image.height, image.width):
            return image
        return TF.resize(image, [h, w], interpolation=TF.InterpolationMode.BILINEAR)

    def resized_size(self, image: Image.Image) -> tuple[int, int]:
        """(height, width) of ``image`` after :meth:`resize`."""
        return resized_size(image.width, image.height, self.size, self.max_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Return the normalised tensor (3, H', W') float32 for an RGB PIL image."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"UPNTransform expects a PIL image, got {type(image).__name__}")
        if image.mode != "RGB":
            raise ValueError(f"UPNTransform expects an RGB image, got mode {image.mode!r}; use load_image first")
        tensor = TF.to_tensor(self.resize(image))
        return TF.normalize(tensor, list(self.mean), list(self.std))


def batch_images(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad images at the bottom/right into one batch.

    Args:
        tensors: N tensors (C, H_i, W_i) with the same C, dtype and device.

    Returns:
        images: (N, C, H_max, W_max), padding filled with 0 (in normalised space).
        mask: (N, H_max, W_max) bool, True where a pixel is padding.
    """
    if len(tensors) == 0:
        raise ValueError("batch_images needs at least one image")
    for i, t in enumerate(tensors):
        if t.ndim != 3:
            raise ValueError(f"image {i} must be (C, H, W), got shape {tuple(t.shape)}")
    channels = {t.shape[0] for t in tensors}
    if len(channels) != 1:
        raise ValueError(f"images have different channel counts: {sorted(channels)}")
    first = tensors[0]
    h_max = max(t.shape[1] for t in tensors)
    w_max = max(t.shape[2] for t in tensors)
    images = first.new_zeros((len(tensors), first.shape[0], h_max, w_max))
    mask = torch.ones((len(tensors), h_max, w_max), dtype=torch.bool, device=first.device)
    for i, t in enumerate(tensors):
        images[i, :, : t.shape[1], : t.shape[2]].copy_(t)
        mask[i, : t.shape[1], : t.shape[2]] = False
    return images, mask


def size_batches(sizes: Sequence[tuple[int, int]], max_batch: Optional[int] = None,
                 max_padding: float = 0.25) -> list[list[int]]:
    """Group images into padded batches that waste little: images of alike shape go together.

    Padding to the batch's largest height and width costs compute on every padded pixel (a portrait and
    a landscape image padded together run on a square more than twice the area of each). Images are
    taken in order of aspect ratio, and a batch takes the next one while its padded area stays within
    ``1 + max_padding`` times the images' own area and it holds fewer than ``max_batch``.

    Args:
        sizes: (height, width) of each image as the model sees it (after resizing).
        max_batch: most images per batch (None: no limit).
        max_padding: padded area allowed beyond the images' own, as a fraction of it.
    Returns:
        the batches, as lists of indices into ``sizes``, every index once.
    """
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i][0] / sizes[i][1], sizes[i][0] * sizes[i][1]))
    out: list[list[int]] = []
    for i in order:
        if out and (max_batch is None or len(out[-1]) < max_batch):
            group = out[-1] + [i]
            h = max(sizes[j][0] for j in group)
            w = max(sizes[j][1] for j in group)
            if h * w * len(group) <= (1.0 + max_padding) * sum(sizes[j][0] * sizes[j][1] for j in group):
                out[-1].append(i)
                continue
        out.append([i])
    return out
