"""``UPNWrapper``: images in, object proposals out.

The user-facing inference API of the Universal Proposal Network, compatible with the official
``UPNWrapper`` (``inference`` + ``filter``) but safer: images of any mode go through
:func:`chatrex.utils.image.load_image` (EXIF orientation, grayscale/RGBA/palette, clear errors), the
device is a choice, scores come as (B, Q), and ``filter`` keeps every image of a batch.

Example::

    upn = UPNWrapper("checkpoints/upn_large.pth")
    props = upn.inference("street.jpg", prompt_type="coarse")
    kept = upn.filter(props, min_score=0.3, nms_value=0.8)
    kept["original_xyxy_boxes"][0], kept["scores"][0]
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from chatrex.upn.config import PROMPT_TYPES, canonical_prompt_type
from chatrex.upn.postprocess import filter_proposals, postprocess
from chatrex.upn.transforms import UPNTransform, batch_images, size_batches
from chatrex.utils.image import ImageInput, load_image

#: Name of the default config preset (used to tell "not given" from an explicit choice).
DEFAULT_CONFIG = "upn_large"
#: The input size a saved UPN directory records for inference (``{"resize": int, "max_size": int}``,
#: written by the UPN training export).
PREPROCESSOR_CONFIG = "preprocessor_config.json"
#: The official input size: short side 800, long side at most 1333.
OFFICIAL_INPUT_SIZE = (800, 1333)
#: ``precision`` values: ``"fp32"``, or ``"bf16"`` (bfloat16 autocast on the backbone and encoder; query
#: selection, decoder and heads in float32).
PRECISIONS = ("fp32", "bf16")
_FROM_CHECKPOINT = object()


def recorded_input_size(ckpt_path: Union[str, os.PathLike]) -> tuple[int, Optional[int]]:
    """The ``(resize, max_size)`` a saved UPN directory records for inference, or the official
    ``(800, 1333)`` for a checkpoint file or a directory without ``preprocessor_config.json``."""
    pre = Path(ckpt_path) / PREPROCESSOR_CONFIG
    if not pre.is_file():
        return OFFICIAL_INPUT_SIZE
    try:
        stored = json.loads(pre.read_text(encoding="utf-8"))
        resize, max_size = stored["resize"], stored.get("max_size", OFFICIAL_INPUT_SIZE[1])
        if not (isinstance(resize, int) and resize > 0 and (max_size is None or (isinstance(max_size, int) and max_size > 0))):
            raise ValueError(f"resize {resize!r} and max_size {max_size!r} must be positive integers")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"'{pre}' is not a valid UPN preprocessor config ({type(exc).__name__}: {exc}); "
                         'expected {"resize": 800, "max_size": 1333}') from exc
    return resize, max_size


def resolve_prompt_type(prompt_type: str, available: Sequence[str] = PROMPT_TYPES) -> str:
    """Map ``"fine"``/``"coarse"`` (or the full names) to the model's prompt name; anything else is a
    ``ValueError`` naming the valid choices (the official model would silently use a zero prompt)."""
    return canonical_prompt_type(prompt_type, tuple(available))


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """Parse ``device`` and check it exists here (e.g. refuse 'cuda' on a machine without a GPU)."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist; {torch.cuda.device_count()} CUDA device(s) found")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was requested but MPS is not available on this machine")
    return dev


def _load_model(ckpt_path: Union[str, os.PathLike], config: Any, device: torch.device) -> tuple[nn.Module, Any]:
    """Build a UPN from an official ``.pth`` file or one of our ``save_pretrained`` directories."""
    from chatrex.upn.checkpoint import load_official_checkpoint
    from chatrex.upn.config import resolve_config
    from chatrex.upn.model import build_upn, from_pretrained

    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"UPN checkpoint '{path}' does not exist")
    if path.is_dir():
        model = from_pretrained(path, device=device)
        cfg = getattr(model, "config", None)
        if config is not None and not (isinstance(config, str) and config == DEFAULT_CONFIG):
            wanted = resolve_config(config)
            if cfg is not None and wanted != cfg:
                raise ValueError(
                    f"the checkpoint directory '{path}' carries its own config, which differs from the "
                    f"config {config!r} given; leave the config out to use the directory's"
                )
        return model, cfg
    cfg = resolve_config(config if config is not None else DEFAULT_CONFIG)
    model = build_upn(cfg)
    load_official_checkpoint(model, path, strict=True)
    return model.to(device), cfg


class UPNWrapper:
    """Run a UPN on user images and return object proposals.

    Args:
        ckpt_path: an official checkpoint file (``{"model": state_dict}``, e.g. ``upn_large.pth``) or a
            directory written by ``chatrex.upn.checkpoint.save_pretrained``.
        config: preset name (``"upn_large"``), config JSON file (ours or the official schema), dict or
            ``UPNConfig``. Used for ``.pth`` files; a directory carries its own config, and an explicit
            config that differs from it is an error.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        resize: short side of the model input. Default: what the directory's
            ``preprocessor_config.json`` records (the size the model was trained for), else the
            official 800.
        max_size: bound on the long side of the model input (None: no bound). Default: the
            directory's recorded value, else the official 1333.
        batch_size: images per forward pass when a list is given (None: the whole list is one padded
            batch, like the official wrapper). Padding changes the model input, so chunked results can
            differ slightly from one big batch.
        precision: ``"fp32"`` (default; what the parity tests check) or ``"bf16"``: the Swin backbone and
            the deformable encoder run under bfloat16 autocast (most of the time), while the two-stage query
            selection, the decoder and the heads, which decide which boxes come out and where, run in
            float32 on the float32 weights. The deformable sampling itself always computes in float32.
            bf16 proposals differ from fp32 ones by rounding (``benchmarks/upn_inference_speed.py``
            measures by how much).
        compile: ``torch.compile`` the encoder and decoder passes (``True``, or a dict of ``torch.compile``
            keyword arguments). The first call per input shape compiles; later shapes of the same rank
            reuse a dynamic-shape graph.
    """

    def __init__(
        self,
        ckpt_path: Union[str, os.PathLike],
        config: Any = DEFAULT_CONFIG,
        device: Union[str, torch.device] = "cpu",
        resize: Optional[int] = None,
        max_size: Any = _FROM_CHECKPOINT,
        batch_size: Optional[int] = None,
        precision: str = "fp32",
        compile: Union[bool, dict] = False,
    ) -> None:
        dev = resolve_device(device)
        if resize is None or max_size is _FROM_CHECKPOINT:  # read the record only for what is not given
            recorded = recorded_input_size(ckpt_path)
            resize = recorded[0] if resize is None else resize
            max_size = recorded[1] if max_size is _FROM_CHECKPOINT else max_size
        model, cfg = _load_model(ckpt_path, config, dev)
        self._setup(model, cfg, dev, resize, max_size, batch_size, precision=precision, compile=compile)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        cfg: Any = None,
        device: Union[str, torch.device, None] = None,
        resize: int = 800,
        max_size: Optional[int] = 1333,
        batch_size: Optional[int] = None,
        precision: str = "fp32",
        compile: Union[bool, dict] = False,
    ) -> "UPNWrapper":
        """Wrap an in-memory UPN (training / evaluation). The model is not copied; with ``device=None``
        it stays where it is. Its train/eval mode is restored after every ``inference`` call."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"from_model expects a torch.nn.Module, got {type(model).__name__}")
        self = cls.__new__(cls)
        if device is None:
            param = next(model.parameters(), None)
            dev = param.device if param is not None else torch.device("cpu")
        else:
            dev = resolve_device(device)
            model = model.to(dev)
        self._setup(model, cfg, dev, resize, max_size, batch_size, set_eval=False, precision=precision, compile=compile)
        return self

    def _setup(self, model, cfg, device, resize, max_size, batch_size, set_eval: bool = True,
               precision: str = "fp32", compile: Union[bool, dict] = False) -> None:
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self._encode = model.forward_encoder
        self._decode = model.forward_decoder
        if compile:
            options = dict(compile) if isinstance(compile, dict) else {}
            self._encode = torch.compile(model.forward_encoder, **options)
            self._decode = torch.compile(model.forward_decoder, **options)
        self.model = model.eval() if set_eval else model
        self.cfg = cfg if cfg is not None else getattr(model, "config", None)
        self.prompt_types = tuple(getattr(self.cfg, "prompt_types", None) or PROMPT_TYPES)
        self.device = device
        self.batch_size = None if batch_size is None else int(batch_size)
        self.transform = UPNTransform(size=int(resize), max_size=None if max_size is None else int(max_size))

    # ------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Load, transform and pad images.

        Returns:
            pixels: (B, 3, H, W) normalised, zero-padded bottom/right; mask: (B, H, W) bool, True =
            padding; sizes: B pairs (H, W) of the loaded (EXIF-upright) originals.
        """
        pils = [load_image(im) for im in images]
        sizes = [(im.height, im.width) for im in pils]
        pixels, mask = batch_images([self.transform(im) for im in pils])
        return pixels, mask, sizes

    def _dtype(self) -> torch.dtype:
        param = next(self.model.parameters(), None)
        return param.dtype if param is not None and param.is_floating_point() else torch.float32

    def _forward(self, images: Sequence[ImageInput], prompt_type: str) -> dict[str, np.ndarray]:
        pixels, mask, sizes = self.preprocess(images)
        pixels = pixels.to(device=self.device, dtype=self._dtype())
        mask = mask.to(self.device)
        with torch.inference_mode():
            outputs = self.run_model(pixels, mask, prompt_type)
        return postprocess({k: outputs[k].float() for k in ("pred_logits", "pred_boxes")}, sizes)

    def run_model(self, pixels: torch.Tensor, mask: torch.Tensor, prompt_type: str) -> dict[str, torch.Tensor]:
        """The UPN on a prepared batch, in the wrapper's precision (and compiled when asked).

        Args:
            pixels: (B, 3, H, W) normalised on the model's device; mask: (B, H, W) bool, True = padding;
            prompt_type: a prompt name the model knows.
        Returns:
            ``{"pred_logits": (B, Q, 1), "pred_boxes": (B, Q, 4)}`` as ``UPN.forward`` returns them (float32).
        """
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            state = self._encode(pixels, mask)
        if state.memory.dtype != torch.float32 and self._dtype() == torch.float32:
            state = replace(state, memory=state.memory.float())
        return self._decode(state, prompt_type)

    def inference(
        self,
        image: Union[ImageInput, Sequence[ImageInput]],
        prompt_type: str = "fine_grained_prompt",
    ) -> dict[str, np.ndarray]:
        """Propose boxes for one image or a list of images.

        Args:
            image: a path, PIL image, numpy array or tensor, or a list of them, run in padded batches of
                alike shapes (:func:`chatrex.upn.transforms.size_batches`), at most ``batch_size`` each.
            prompt_type: ``"fine_grained_prompt"`` / ``"fine"`` (parts and small objects) or
                ``"coarse_grained_prompt"`` / ``"coarse"`` (whole objects).

        Returns:
            ``{"original_xyxy_boxes": (B, Q, 4) float32 ndarray, "scores": (B, Q) float32 ndarray}`` —
            every query's box in pixels of the (EXIF-upright) original image, sorted by score.

        Raises:
            ImageLoadError: an image is missing, corrupt or unusable. ValueError: bad prompt_type.
        """
        prompt = resolve_prompt_type(prompt_type, self.prompt_types)
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("inference got an empty list of images")
        pils = [load_image(im) for im in images]
        # batches of alike shapes (at most batch_size each): padding a portrait and a landscape image
        # together would more than double the pixels the model runs on
        groups = size_batches([self.transform.resized_size(im) for im in pils], self.batch_size)
        was_training = self.model.training
        self.model.eval()
        try:
            parts = [(group, self._forward([pils[i] for i in group], prompt)) for group in groups]
        finally:
            self.model.train(was_training)
        out = {}
        for key in ("original_xyxy_boxes", "scores"):
            first = parts[0][1][key]
            merged = np.empty((len(pils), *first.shape[1:]), dtype=first.dtype)
            for group, part in parts:
                merged[group] = part[key]
            out[key] = merged
        return out

    __call__ = inference

    @staticmethod
    def filter(result: Mapping[str, Any], min_score: float = 0.3, nms_value: float = 0.8) -> dict[str, list]:
        """Keep boxes with score >= ``min_score`` and apply NMS at IoU ``nms_value`` (<= 0: off).

        Returns per-image lists (``"original_xyxy_boxes"``: int boxes, ``"scores"``: floats rounded to 2
        decimals); an image with nothing left gets empty lists. See
        :func:`chatrex.upn.postprocess.filter_proposals`.
        """
        return filter_proposals(result, min_score=min_score, nms_value=nms_value)

    def propose(
        self,
        image: Union[ImageInput, Sequence[ImageInput]],
        prompt_type: str = "fine_grained_prompt",
        min_score: float = 0.3,
        nms_value: float = 0.8,
    ) -> dict[str, list]:
        """``inference`` followed by ``filter``."""
        return self.filter(self.inference(image, prompt_type), min_score=min_score, nms_value=nms_value)


__all__ = ["UPNWrapper", "resolve_prompt_type", "resolve_device", "PRECISIONS"]
