"""Image and box preprocessing for ChatRex.

Every image is padded to a square, **centred**, with the CLIP mean colour (as LLaVA's ``expand2square``),
then resized (bicubic) to ``image_size`` (336, CLIP) and ``image_size_aux`` (768, ConvNeXt) and normalised
with each tower's mean/std. Boxes given in original-image pixels are shifted by the padding offset and
divided by the square's side: xyxy in [0, 1] of the padded square, the frame the model works in.

``input_mode="official"`` reproduces the official RexSeek / ChatRex input instead (for models loaded from
official checkpoints): the pad colour is ``int(mean * 255)`` (not rounded), the CLIP input is a bilinear
resize of the *normalised* 768 px tensor (not a resize of the image), and boxes are not clipped to the image.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from chatrex.utils.image import load_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
#: ``"chatrex"``: our preprocessing; ``"official"``: the official code's (see the module docstring).
INPUT_MODES = ("chatrex", "official")


@dataclass(frozen=True)
class SquareFrame:
    """Where an image sits inside its padded square: ``square = offset + original``, side in pixels."""

    width: int
    height: int
    side: int
    offset_x: int
    offset_y: int


def square_frame(width: int, height: int) -> SquareFrame:
    """Centred padding of a ``width`` x ``height`` image to a square."""
    side = max(width, height)
    return SquareFrame(width, height, side, (side - width) // 2, (side - height) // 2)


def normalize_boxes(boxes: Any, frame: SquareFrame, clip: bool = True) -> torch.Tensor:
    """Original-pixel xyxy boxes → xyxy in [0, 1] of the padded square.

    Raises ``ValueError`` naming the box for a wrong shape, NaN/inf, x1 < x0 or y1 < y0, or (with ``clip``)
    a box with no area left inside the image after clipping.
    Args:
        clip: clip boxes to the image first (ours). False keeps them as given, as the official code does, so
            a box reaching past the image reaches past it in the padded square too (and may leave [0, 1]).
    Returns:
        (K, 4) float32.
    """
    if isinstance(boxes, torch.Tensor):
        arr = boxes.detach().cpu().double().numpy()
    else:
        try:
            arr = np.asarray(boxes if boxes is not None else [], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"boxes must be a list of [x0, y0, x1, y1] numbers: {err}") from err
    if arr.size == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4) as [[x0, y0, x1, y1], ...]; got shape {arr.shape}")
    for k, (x0, y0, x1, y1) in enumerate(arr):
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ValueError(f"box {k} {[x0, y0, x1, y1]} contains NaN or infinite values")
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {k} {[x0, y0, x1, y1]} has x1 < x0 or y1 < y0 (boxes are [x0, y0, x1, y1])")
        if not clip:
            continue
        cx0, cx1 = min(max(x0, 0.0), frame.width), min(max(x1, 0.0), frame.width)
        cy0, cy1 = min(max(y0, 0.0), frame.height), min(max(y1, 0.0), frame.height)
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            raise ValueError(
                f"box {k} {[x0, y0, x1, y1]} has zero area inside the {frame.width}x{frame.height} image after clipping"
            )
    shift = np.array([frame.offset_x, frame.offset_y, frame.offset_x, frame.offset_y], dtype=np.float64)
    if not clip:
        return torch.from_numpy((arr + shift) / frame.side).float()
    clipped = np.stack(
        [arr[:, 0].clip(0, frame.width), arr[:, 1].clip(0, frame.height),
         arr[:, 2].clip(0, frame.width), arr[:, 3].clip(0, frame.height)], axis=1
    )
    return torch.from_numpy(((clipped + shift) / frame.side).clip(0.0, 1.0)).float()


def denormalize_boxes(boxes_norm: Any, frame: SquareFrame) -> torch.Tensor:
    """Inverse of :func:`normalize_boxes`: square-normalised xyxy → original-image pixels (clipped)."""
    b = torch.as_tensor(boxes_norm, dtype=torch.float64).reshape(-1, 4) * frame.side
    b = b - torch.tensor([frame.offset_x, frame.offset_y, frame.offset_x, frame.offset_y], dtype=torch.float64)
    b[:, 0::2] = b[:, 0::2].clamp(0, frame.width)
    b[:, 1::2] = b[:, 1::2].clamp(0, frame.height)
    return b.float()


class ChatRexImageProcessor:
    """Pads, resizes and normalises images for both towers.

    ``__call__(images) -> {"pixel_values": (B,3,S,S), "pixel_values_aux": (B,3,S',S'), "frames": [SquareFrame]}``.

    Args:
        input_mode: ``"chatrex"`` (default) or ``"official"`` (the official code's input; one mean/std for
            both towers, see the module docstring).
    """

    def __init__(
        self,
        image_size: int = 336,
        image_size_aux: int = 768,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        image_mean_aux: Sequence[float] | None = None,
        image_std_aux: Sequence[float] | None = None,
        input_mode: str = "chatrex",
    ):
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}; got {input_mode!r}")
        self.input_mode = input_mode
        self.image_size = int(image_size)
        self.image_size_aux = int(image_size_aux)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.image_mean_aux = tuple(float(v) for v in (image_mean_aux or image_mean))
        self.image_std_aux = tuple(float(v) for v in (image_std_aux or image_std))
        for name in ("image_mean", "image_std", "image_mean_aux", "image_std_aux"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} needs 3 values (R, G, B); got {getattr(self, name)}")
        if min(self.image_std + self.image_std_aux) <= 0:
            raise ValueError("image_std values must be positive")
        if self.official and (self.image_mean_aux, self.image_std_aux) != (self.image_mean, self.image_std):
            raise ValueError("the official input normalises both towers' images with one mean/std")

    @property
    def official(self) -> bool:
        return self.input_mode == "official"

    @property
    def pad_color(self) -> tuple[int, int, int]:
        if self.official:  # the official code truncates: (122, 116, 104) for CLIP's mean
            return tuple(int(v * 255) for v in self.image_mean)  # type: ignore[return-value]
        return tuple(int(round(v * 255)) for v in self.image_mean)  # type: ignore[return-value]

    def pad_to_square(self, image: Image.Image) -> tuple[Image.Image, SquareFrame]:
        frame = square_frame(image.width, image.height)
        if image.width == image.height:
            return image, frame
        canvas = Image.new("RGB", (frame.side, frame.side), self.pad_color)
        canvas.paste(image, (frame.offset_x, frame.offset_y))
        return canvas, frame

    @staticmethod
    def _to_uint8(image: Image.Image, size: int) -> torch.Tensor:
        """(3, size, size) uint8, bicubic-resized."""
        resized = image.resize((size, size), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor, aux: bool = False) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float normalised with this processor's mean/std, on ``pixels``' device.

        ``aux`` picks the ConvNeXt tower's statistics. Lets training ship uint8 images from data workers
        (4x fewer bytes) and normalise on the GPU.
        """
        if pixels.dtype != torch.uint8:
            raise ValueError(f"normalize expects uint8 pixels, got {pixels.dtype}")
        mean = torch.tensor(self.image_mean_aux if aux else self.image_mean, device=pixels.device)
        std = torch.tensor(self.image_std_aux if aux else self.image_std, device=pixels.device)
        scale = (1.0 / (255.0 * std)).view(3, 1, 1)
        return pixels.float() * scale - (mean / std).view(3, 1, 1)

    def official_normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float32 as the CLIP image processor computes it (rescale in float64, cast to
        float32, then ``(x - mean) / std`` in float32)."""
        mean = torch.tensor(self.image_mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        return ((pixels.double() * (1 / 255)).float() - mean) / std

    def __call__(self, images: Sequence[Any], normalize: bool = True) -> dict[str, Any]:
        """Args:
            normalize: False returns uint8 ``pixel_values`` / ``pixel_values_aux`` to be passed through
                :meth:`normalize` later (e.g. on the GPU); the official input mode has no uint8 form.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        if self.official:
            return self._official_call(images, normalize)
        pv, pva, frames = [], [], []
        for src in images:
            square, frame = self.pad_to_square(load_image(src))
            pv.append(self._to_uint8(square, self.image_size))
            pva.append(self._to_uint8(square, self.image_size_aux))
            frames.append(frame)
        pixel_values, pixel_values_aux = torch.stack(pv), torch.stack(pva)
        if normalize:
            pixel_values, pixel_values_aux = self.normalize(pixel_values), self.normalize(pixel_values_aux, aux=True)
        return {"pixel_values": pixel_values, "pixel_values_aux": pixel_values_aux, "frames": frames}

    def _official_call(self, images: Sequence[Any], normalize: bool) -> dict[str, Any]:
        """The official input: the square image at ``image_size_aux`` (bicubic, normalised), and the CLIP
        input as a bilinear resize of that normalised tensor."""
        if not normalize:
            raise ValueError("the official input mode builds the CLIP input from the normalised ConvNeXt input; "
                             "it has no uint8 form (normalize_images=False)")
        pva, frames = [], []
        for src in images:
            square, frame = self.pad_to_square(load_image(src))
            pva.append(self._to_uint8(square, self.image_size_aux))
            frames.append(frame)
        pixel_values_aux = self.official_normalize(torch.stack(pva))
        pixel_values = F.interpolate(pixel_values_aux, size=(self.image_size, self.image_size), mode="bilinear",
                                     align_corners=False)
        return {"pixel_values": pixel_values, "pixel_values_aux": pixel_values_aux, "frames": frames}

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "ChatRexImageProcessor",
            "image_size": self.image_size, "image_size_aux": self.image_size_aux,
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "image_mean_aux": list(self.image_mean_aux), "image_std_aux": list(self.image_std_aux),
            "padding": "centered square, CLIP mean colour",
            "input_mode": self.input_mode,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChatRexImageProcessor":
        keys = ("image_size", "image_size_aux", "image_mean", "image_std", "image_mean_aux", "image_std_aux",
                "input_mode")
        return cls(**{k: d[k] for k in keys if k in d})

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, IMAGE_PROCESSOR_FILE), "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "ChatRexImageProcessor":
        path = os.path.join(folder, IMAGE_PROCESSOR_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {IMAGE_PROCESSOR_FILE} in '{folder}'")
        with open(path) as f:
            return cls.from_dict(json.load(f))


__all__ = [
    "CLIP_MEAN", "CLIP_STD", "INPUT_MODES", "SquareFrame", "square_frame", "normalize_boxes", "denormalize_boxes",
    "ChatRexImageProcessor",
]
