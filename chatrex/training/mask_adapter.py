"""Teach a trained ChatRex to read mask regions: fit its mask adapter to its own box tokens.

A model trained on box regions alone reads a mask region badly: a box token is the average of the
ConvNeXt features over the whole box, background included, and a mask token the average inside the
mask (:func:`chatrex.mllm.object_encoder.mask_features`). Retraining stage 2 with
``task.data.mask_region_rate`` fixes that the thorough way; this module is the cheap way, for a model
that already answers well on boxes. It adds a :class:`~chatrex.mllm.object_encoder.MaskAdapter` (a
residual MLP on the mask-pooled features, starting as the identity) and fits it, everything else frozen,
so that each region's mask token matches the token the model makes from the region's box (the mask's
bounding box): self-distillation on the object tokens, with the LLM never run.

1. :func:`extract_region_features`: one ConvNeXt pass per image; for every region with a mask, the
   mask-pooled features (C_total), its box (the mask's bounding box, normalised to the padded square) and
   the teacher: the model's box token for that box (H).
2. :func:`fit_mask_adapter`: AdamW on ``1 - cos(student, teacher) + |student - teacher|² / |teacher|²``
   (means over regions), student = ``project_objects(adapter(mask_features) + box_embedding)``, on
   mini-batches of regions; the held-out regions' cosine is reported before and after.

Box tokens never pass through the adapter, so everything the model does with boxes is unchanged. What
the adapter cannot do is make a mask more informative than the box the model learnt on: for two
overlapping objects the teacher itself is a box token.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from chatrex.data.jsonl import load_training_records
from chatrex.mllm.object_encoder import MaskAdapter, xyxy_box_embedding
from chatrex.utils.image import load_image


@dataclass
class MaskAdapterConfig:
    """Settings of :func:`train_mask_adapter`.

    Attributes:
        hidden: the adapter's hidden width (``config.mask_adapter_dim``).
        levels: which regions to learn from (``instance``, ``part``).
        min_visible: skip regions less visible than this (``regions[*].visible``).
        max_regions_per_image: at most this many regions of one image (a fixed random choice).
        images: use the first N records (0: all).
        val_fraction: share of the regions held out to report the fit.
        epochs / batch_size / lr / weight_decay: the fit (AdamW, cosine decay to 0 after 5% warm-up).
        image_batch: images per ConvNeXt pass during extraction.
        seed: region choice, split and shuffling.
    """

    hidden: int = 256
    levels: Sequence[str] = ("instance", "part")
    min_visible: float = 0.3
    max_regions_per_image: int = 24
    images: int = 0
    val_fraction: float = 0.1
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    image_batch: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("epochs", "batch_size", "image_batch", "max_regions_per_image"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class RegionFeatures:
    """What the fit needs of N regions: ``mask_feats`` (N, C_total) float32, ``boxes`` (N, 4) xyxy in
    [0, 1] of the padded square, ``teacher`` (N, H) float32 box tokens."""

    mask_feats: torch.Tensor
    boxes: torch.Tensor
    teacher: torch.Tensor
    images: int = 0

    def __len__(self) -> int:
        return int(self.mask_feats.shape[0])

    def state(self) -> dict[str, torch.Tensor]:
        """Plain tensors (for ``torch.save`` / ``torch.load(weights_only=True)``)."""
        return {"mask_feats": self.mask_feats, "boxes": self.boxes, "teacher": self.teacher,
                "images": torch.tensor(self.images)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "RegionFeatures":
        try:
            return cls(state["mask_feats"], state["boxes"], state["teacher"], int(state["images"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a saved RegionFeatures cache: {exc!r}") from exc

    def subset(self, index: torch.Tensor) -> "RegionFeatures":
        return RegionFeatures(self.mask_feats[index], self.boxes[index], self.teacher[index])


@dataclass
class MaskAdapterReport:
    regions_train: int
    regions_val: int
    images: int
    val_cosine_before: float
    val_cosine_after: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _regions_of(record: dict, cfg: MaskAdapterConfig, rng: random.Random) -> list[dict]:
    regions = [r for r in record.get("regions", [])
               if r.get("mask") and r.get("level", "instance") in cfg.levels
               and float(r.get("visible", 1.0)) >= cfg.min_visible]
    if len(regions) > cfg.max_regions_per_image:
        regions = rng.sample(regions, cfg.max_regions_per_image)
    return regions


@torch.no_grad()
def extract_region_features(model, processor, data: Sequence[str], cfg: MaskAdapterConfig,
                            progress: Optional[Callable[[int, int], None]] = None) -> RegionFeatures:
    """Mask-pooled features, boxes and box tokens of the regions with masks in the records of ``data``.

    Every region is given to the processor as its mask (COCO RLE), so the boxes are the masks' bounding
    boxes, on the processor's grid, exactly as a mask region reaches the model at inference.
    """
    from chatrex.mllm.object_encoder import mask_features

    records = load_training_records(data, "the mask-adapter data")
    n = len(records) if not cfg.images else min(cfg.images, len(records))
    rng = random.Random(cfg.seed)
    device = next(model.parameters()).device
    feats, boxes, teacher = [], [], []
    batch: list[tuple[Any, list[dict]]] = []
    used = 0

    def flush() -> None:
        nonlocal used
        if not batch:
            return
        inputs = processor([img for img, _ in batch], ["x"] * len(batch),
                           regions=[[r["mask"] for r in regs] for _, regs in batch])
        aux = inputs["pixel_values_aux"].to(device=device, dtype=next(model.vision_tower_aux.parameters()).dtype)
        levels = model.vision_tower_aux(aux)
        bx = [b.to(device) for b in inputs["boxes"]]
        teacher.append(model.get_object_features(levels, bx).float().cpu())
        feats.append(mask_features(levels, [m.to(device) for m in inputs["region_masks"]]).float().cpu())
        boxes.append(torch.cat(bx).float().cpu())
        used += len(batch)
        batch.clear()

    for i in range(n):
        record, image_path = records[i]
        regions = _regions_of(record, cfg, rng)
        if not regions:
            continue
        batch.append((load_image(image_path), regions))
        if len(batch) == cfg.image_batch:
            flush()
        if progress is not None:
            progress(i + 1, n)
    flush()
    if not feats:
        raise ValueError(f"no region with a mask in {list(data)} (levels {list(cfg.levels)}, visible >= "
                         f"{cfg.min_visible}); world records carry masks since regions could be masks")
    return RegionFeatures(torch.cat(feats), torch.cat(boxes), torch.cat(teacher), images=used)


def _student(model, adapter: MaskAdapter, feats: RegionFeatures) -> torch.Tensor:
    c_total = feats.mask_feats.shape[1]
    pre = adapter(feats.mask_feats) + xyxy_box_embedding(feats.boxes, c_total // 4).to(feats.mask_feats.dtype)
    return model.project_objects(pre).float()


def _loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(student, teacher, dim=-1).mean()
    rel = (student - teacher).pow(2).sum(-1).mean() / teacher.pow(2).sum(-1).mean().clamp_min(1e-12)
    return (1.0 - cos) + rel


@torch.no_grad()
def _val_cosine(model, adapter: MaskAdapter, feats: RegionFeatures, chunk: int = 4096) -> float:
    if not len(feats):
        return float("nan")
    total = 0.0
    for s in range(0, len(feats), chunk):
        part = feats.subset(torch.arange(s, min(s + chunk, len(feats))))
        total += float(F.cosine_similarity(_student(model, adapter, part), part.teacher, dim=-1).sum())
    return total / len(feats)


def fit_mask_adapter(model, feats: RegionFeatures, cfg: MaskAdapterConfig,
                     log: Optional[Callable[[str], None]] = None) -> tuple[MaskAdapter, MaskAdapterReport]:
    """Fit a new :class:`MaskAdapter` (identity at the start) on ``feats``; the model stays frozen.

    ``model`` is moved to the CPU in float32 and its parameters are left with ``requires_grad=False``.
    Returns the adapter (on the CPU, float32) and a report with the held-out cosine before and after.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(feats), generator=g)
    n_val = int(round(len(feats) * cfg.val_fraction))
    val, train = feats.subset(order[:n_val]), feats.subset(order[n_val:])
    if not len(train):
        raise ValueError("no region left to train on")
    model = model.float().cpu()
    for p in model.parameters():
        p.requires_grad_(False)
    adapter = MaskAdapter(feats.mask_feats.shape[1], cfg.hidden)
    before = _val_cosine(model, adapter, val)
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(train), generator=g)
        running = 0.0
        for s in range(steps_per_epoch):
            part = train.subset(perm[s * cfg.batch_size:(s + 1) * cfg.batch_size])
            loss = _loss(_student(model, adapter, part), part.teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach())
        if log is not None and (epoch + 1) % max(1, cfg.epochs // 10) == 0:
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {running / steps_per_epoch:.4f}, "
                f"held-out cosine {_val_cosine(model, adapter, val):.4f}")
    adapter.eval()
    report = MaskAdapterReport(regions_train=len(train), regions_val=len(val), images=feats.images,
                               val_cosine_before=before, val_cosine_after=_val_cosine(model, adapter, val))
    return adapter, report


__all__ = ["MaskAdapterConfig", "RegionFeatures", "MaskAdapterReport", "extract_region_features",
           "fit_mask_adapter"]
