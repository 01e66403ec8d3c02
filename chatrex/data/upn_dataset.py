"""UPN training data: images with boxes of both granularities, from records (``chatrex.data.schema``).

Coarse-grained targets are the instances; fine-grained targets are the parts, or (default) every
region — instances and parts — as SA-1B-style data annotates every level.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from PIL import Image

from chatrex.data.jsonl import JsonlRecords, load_training_records
from chatrex.data.device_images import read_encoded
from chatrex.data.seeded_index import split_index
from chatrex.upn.transforms import IMAGENET_MEAN, IMAGENET_STD, UPNTransform, batch_images, resized_size
from chatrex.utils.image import load_image

GRANULARITIES = ("fine", "coarse")
PROMPT_OF = {"fine": "fine_grained_prompt", "coarse": "coarse_grained_prompt"}


@dataclass
class UPNDataConfig:
    """Attributes:
        files: JSONL record files (images relative to each file's folder).
        scales: short-side sizes sampled per image (training multi-scale).
        max_size: cap of the long side.
        flip: horizontal flip probability.
        fine_targets: "all" (instances + parts) or "parts".
        granularities: the prompts trained on every batch ("fine", "coarse").
        min_box_size: boxes smaller than this (px, after resizing) are dropped.
        decode_on_device: items carry the image file's bytes, and the batch is decoded, resized,
            flipped and normalised on the training device (:mod:`chatrex.data.device_images`); one short
            side from ``scales`` is drawn per batch (from the batch's seeds) instead of per image. The
            workers then do no pixel work, which at hundreds of images per second is what limits the
            CPU path.
    """

    files: list[str] = field(default_factory=list)
    scales: list[int] = field(default_factory=lambda: [480, 512, 544, 576, 608, 640])
    max_size: int = 1024
    flip: float = 0.5
    fine_targets: str = "all"
    granularities: list[str] = field(default_factory=lambda: ["fine", "coarse"])
    min_box_size: float = 1.0
    decode_on_device: bool = False


def region_boxes(record: dict, granularity: str, fine_targets: str = "all") -> list[list[float]]:
    """The record's boxes (xyxy px) that a prompt of ``granularity`` must propose."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be 'fine' or 'coarse', got {granularity!r}")
    out = []
    for r in record.get("regions", []):
        level = r.get("level", "instance")
        if granularity == "coarse":
            keep = level == "instance"
        else:
            keep = level == "part" or (fine_targets == "all")
        if keep:
            out.append([float(v) for v in r["box"]])
    return out


class UPNDataset(torch.utils.data.Dataset):
    """Items: ``{"image": (3,H,W) normalised, "boxes": {"fine": (N,4), "coarse": (M,4)} cxcywh in [0,1],
    "seed": int}``."""

    def __init__(self, cfg: UPNDataConfig, records: Optional[Sequence[tuple[dict, Path]]] = None) -> None:
        if cfg.fine_targets not in ("all", "parts"):
            raise ValueError(f"fine_targets must be 'all' or 'parts', got {cfg.fine_targets!r}")
        self.cfg = cfg
        if records is None:
            records = load_training_records(cfg.files, "the UPN dataset")
        elif not records:
            raise ValueError("the UPN dataset is empty: give at least one record")
        self.records = records if isinstance(records, JsonlRecords) else list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item) -> dict[str, Any]:
        index, seed = split_index(item)
        rng = random.Random(seed if seed is not None else index)
        record, path = self.records[index]
        if self.cfg.decode_on_device:
            return self._encoded_item(record, path, rng, seed if seed is not None else index)
        image = load_image(path)
        size = rng.choice(self.cfg.scales)
        transform = UPNTransform(size=size, max_size=self.cfg.max_size)
        flip = rng.random() < self.cfg.flip
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = transform(image)
        h, w = tensor.shape[1:]
        boxes = self._boxes(record, image.width, image.height, flip, h, w)
        return {"image": tensor, "boxes": boxes, "seed": seed if seed is not None else index}

    def _boxes(self, record: dict, W: int, H: int, flip: bool, h: int, w: int) -> dict[str, torch.Tensor]:
        """Both granularities' boxes of ``record`` (an image of W x H px, flipped if ``flip``) as
        normalised cxcywh, without those under ``min_box_size`` once resized to h x w."""
        boxes = {}
        for g in GRANULARITIES:
            b = torch.tensor(region_boxes(record, g, self.cfg.fine_targets), dtype=torch.float32).reshape(-1, 4)
            if flip and len(b):
                b = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)
            b = b / torch.tensor([W, H, W, H], dtype=torch.float32)
            b = b.clamp(0, 1)
            keep = ((b[:, 2] - b[:, 0]) * w >= self.cfg.min_box_size) & ((b[:, 3] - b[:, 1]) * h >= self.cfg.min_box_size)
            b = b[keep]
            boxes[g] = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1) if len(b) else b
        return boxes

    def _encoded_item(self, record: dict, path: Path, rng: random.Random, seed: int) -> dict[str, Any]:
        """The item of ``decode_on_device``: the file's bytes, its size, the flip and the boxes (filtered
        at the smallest scale, since the batch's scale is drawn later)."""
        W, H = int(record["width"]), int(record["height"])
        flip = rng.random() < self.cfg.flip
        h, w = resized_size(W, H, min(self.cfg.scales), self.cfg.max_size)
        return {"encoded": read_encoded(path), "size": (H, W), "flip": flip,
                "boxes": self._boxes(record, W, H, flip, h, w), "seed": seed}


def collate_upn(samples: list[dict[str, Any]], granularities: Sequence[str] = GRANULARITIES,
                scales: Sequence[int] = (512,), max_size: Optional[int] = None, size_divisor: int = 32) -> dict[str, Any]:
    """Pad images into a batch: ``images`` (B,3,H,W), ``mask`` (B,H,W) True = padding, and
    ``targets`` = {granularity: B tensors (N_b,4) normalised cxcywh}.

    Items of ``decode_on_device`` become ``encoded`` (B byte tensors), ``sizes`` (B resized (h, w): the
    short side one of ``scales``, drawn from the items' seeds, the long side at most ``max_size``),
    ``flips`` and ``canvas`` (the padded (H, W), rounded up to ``size_divisor``) instead of
    ``images`` and ``mask``: :func:`device_batch` turns them into those on the device."""
    for g in granularities:
        if g not in GRANULARITIES:
            raise ValueError(f"unknown granularity {g!r}; expected fine or coarse")
    targets = {g: [s["boxes"][g] for s in samples] for g in granularities}
    if "encoded" in samples[0]:
        scale = random.Random(",".join(str(s["seed"]) for s in samples)).choice(list(scales))
        sizes = [resized_size(s["size"][1], s["size"][0], scale, max_size) for s in samples]
        canvas = tuple(-(-max(hw[i] for hw in sizes) // size_divisor) * size_divisor for i in (0, 1))
        return {"encoded": [s["encoded"] for s in samples], "sizes": sizes, "flips": [s["flip"] for s in samples],
                "canvas": canvas, "targets": targets}
    images, mask = batch_images([s["image"] for s in samples])
    return {"images": images, "mask": mask, "targets": targets}


def device_batch(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (B,3,H,W) float32 normalised, mask (B,H,W) True = padding)`` of a collated batch on
    ``device``: moved there, or (``decode_on_device``) decoded, resized, flipped and normalised there."""
    if "encoded" not in batch:
        return batch["images"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
    from chatrex.data.device_images import decode_images, resize_into_canvas

    decoded = decode_images(batch["encoded"], device)
    return resize_into_canvas(decoded, batch["sizes"], batch["canvas"], IMAGENET_MEAN, IMAGENET_STD, batch["flips"])
