"""Data for pretraining ChatRex's vision towers on records (stage 0, ``chatrex.training.vision_task``).

The official model starts from pretrained CLIP and ConvNeXt towers; ours start from scratch, and the
language-model loss alone teaches them too slowly. Stage 0 gives the towers direct supervision from the
records' annotations:

* **objects**: every region box (instances and parts) with its category and attributes, plus
  synthesised boxes that overlap no region much (``background``): what an object token must tell
  apart;
* **dense**: for each cell of the g x g image-token grid, the category of the smallest region whose
  box holds the cell's centre (``background`` where none does): what the image tokens must carry.

Labels are indices into a :class:`VisionVocabulary` built from the records; index 0 of the
categories is ``background``.

With ``mask_region_rate`` > 0, each region (up to ``max_mask_regions`` per image) is given as its mask
(``regions[*].mask``, COCO RLE) with that probability, where the record has one: the object feature is
then mask-pooled (``chatrex.mllm.object_encoder.mask_features``), so the towers and the object trunk
learn to read both kinds of region.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch

from chatrex.data.chatrex_dataset import box_iou, synthesize_proposals, warn_without_masks
from chatrex.data.jsonl import JsonlRecords, load_training_records
from chatrex.data.seeded_index import split_index
from chatrex.utils.image import load_image

BACKGROUND = "background"
IGNORE = -100
DEFAULT_ATTRIBUTES = ("color", "pattern", "size", "orientation")


@dataclass
class VisionDataConfig:
    """Attributes:
        files: JSONL record files.
        max_regions: most region boxes per image (a random subset when a scene has more).
        negatives: (min, max) synthesised boxes per image; those overlapping a region by IoU
            ``negative_iou`` or more are dropped, the rest are ``background``.
        negative_iou: see ``negatives``.
        attributes: region attributes with a classification head (values absent from a region are ignored).
        mask_region_rate: probability that a region is given as its mask (where the record has one).
        max_mask_regions: most mask regions per image (each costs a G x G grid in the batch).
    """

    files: list[str] = field(default_factory=list)
    max_regions: int = 48
    negatives: tuple[int, int] = (4, 16)
    negative_iou: float = 0.4
    attributes: list[str] = field(default_factory=lambda: list(DEFAULT_ATTRIBUTES))
    mask_region_rate: float = 0.5
    max_mask_regions: int = 16

    def __post_init__(self) -> None:
        self.negatives = tuple(int(v) for v in self.negatives)
        if len(self.negatives) != 2 or not 0 <= self.negatives[0] <= self.negatives[1]:
            raise ValueError(f"negatives must be (min, max) with 0 <= min <= max, got {self.negatives}")
        if self.max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {self.max_regions}")
        if not 0.0 < self.negative_iou <= 1.0:
            raise ValueError(f"negative_iou must be in (0, 1], got {self.negative_iou}")
        if not 0.0 <= self.mask_region_rate <= 1.0:
            raise ValueError(f"mask_region_rate must be in [0, 1], got {self.mask_region_rate}")
        if self.max_mask_regions < 0:
            raise ValueError(f"max_mask_regions must be >= 0, got {self.max_mask_regions}")


@dataclass
class VisionVocabulary:
    """Label names: ``categories[0]`` is ``background``; ``attributes[name]`` lists that attribute's values."""

    categories: list[str]
    attributes: dict[str, list[str]]

    @classmethod
    def from_records(cls, records: Iterable[dict], attributes: Sequence[str]) -> "VisionVocabulary":
        """The vocabulary of ``records`` (read once, so a stream of records will do)."""
        cats: set[str] = set()
        values: dict[str, set[str]] = {a: set() for a in attributes}
        for rec in records:
            for r in rec.get("regions", []):
                if r.get("category"):
                    cats.add(r["category"])
                for a in attributes:
                    if a in (r.get("attributes") or {}):
                        values[a].add(str(r["attributes"][a]))
        return cls([BACKGROUND] + [c for c in sorted(cats) if c != BACKGROUND],
                   {a: sorted(v) for a, v in values.items() if v})

    def to_dict(self) -> dict[str, Any]:
        return {"categories": list(self.categories), "attributes": {k: list(v) for k, v in self.attributes.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionVocabulary":
        return cls(list(d["categories"]), {k: list(v) for k, v in d.get("attributes", {}).items()})


def dense_labels(boxes: torch.Tensor, labels: torch.Tensor, grid: int) -> torch.Tensor:
    """Category of each grid cell: that of the smallest box holding the cell's centre, 0 where none does.

    Args:
        boxes: (K, 4) xyxy normalised to [0, 1] of the square image; labels: (K,) category indices.
    Returns:
        (grid * grid,) int64, row-major (as image tokens are ordered).
    """
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)  # (g², 1)
    if boxes.numel() == 0:
        return torch.zeros(grid * grid, dtype=torch.long)
    inside = (cx >= boxes[:, 0]) & (cx < boxes[:, 2]) & (cy >= boxes[:, 1]) & (cy < boxes[:, 3])  # (g², K)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand_as(inside)
    area = torch.where(inside, area, torch.full_like(area, float("inf")))
    best = area.argmin(dim=1)
    return torch.where(inside.any(dim=1), labels[best], torch.zeros_like(best))


class VisionPretrainDataset(torch.utils.data.Dataset):
    """Items: ``{"image": PIL, "boxes": (K, 4) xyxy px, "category": (K,), "<attribute>": (K,),
    "regions": (R,) how many of the K boxes are regions (the rest are background),
    "masks": {box index: COCO RLE} (the regions given as masks)}``."""

    def __init__(self, cfg: VisionDataConfig, records: Optional[Sequence[tuple[dict, Path]]] = None,
                 vocabulary: Optional[VisionVocabulary] = None) -> None:
        if records is None:
            records = load_training_records(cfg.files, "the vision pretraining dataset")
        elif not records:
            raise ValueError("the vision pretraining dataset is empty: give at least one record")
        self.cfg = cfg
        self.records = records if isinstance(records, JsonlRecords) else list(records)
        self.vocabulary = vocabulary or VisionVocabulary.from_records((r for r, _ in self.records), cfg.attributes)
        self._cat_index = {c: i for i, c in enumerate(self.vocabulary.categories)}
        self._attr_index = {a: {v: i for i, v in enumerate(vals)} for a, vals in self.vocabulary.attributes.items()}
        if cfg.mask_region_rate > 0 and cfg.max_mask_regions > 0:
            warn_without_masks(self.records, cfg.mask_region_rate, "the vision pretraining dataset")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item) -> dict[str, Any]:
        index, seed = split_index(item)
        rng = random.Random(seed if seed is not None else index)
        record, path = self.records[index]
        regions = [r for r in record.get("regions", []) if r.get("category") in self._cat_index]
        if len(regions) > self.cfg.max_regions:
            regions = rng.sample(regions, self.cfg.max_regions)
        gt = torch.tensor([r["box"] for r in regions], dtype=torch.float32).reshape(-1, 4)
        lo, hi = self.cfg.negatives
        neg = synthesize_proposals(gt, int(record["width"]), int(record["height"]), rng.randint(lo, hi), rng)
        if len(neg) and len(gt):
            neg = neg[box_iou(neg, gt).max(dim=1).values < self.cfg.negative_iou]
        out: dict[str, Any] = {
            "image": load_image(path),
            "boxes": torch.cat([gt, neg]),
            "category": torch.tensor([self._cat_index[r["category"]] for r in regions] + [0] * len(neg),
                                     dtype=torch.long),
            "regions": len(regions),
            "masks": {},
        }
        rate, cap = self.cfg.mask_region_rate, self.cfg.max_mask_regions
        if rate > 0 and cap > 0:
            for k, r in enumerate(regions):
                if len(out["masks"]) >= cap:
                    break
                if r.get("mask") and rng.random() < rate:
                    out["masks"][k] = r["mask"]
        for name, index_of in self._attr_index.items():
            values = [index_of.get(str((r.get("attributes") or {}).get(name)), IGNORE) for r in regions]
            out[name] = torch.tensor(values + [IGNORE] * len(neg), dtype=torch.long)
        return out


def collate_vision(samples: list[dict[str, Any]], image_processor: Any, grid: int,
                   attributes: Sequence[str]) -> dict[str, Any]:
    """A batch of :class:`VisionPretrainDataset` items: un-normalised ``pixel_values`` / ``pixel_values_aux``
    from ``image_processor`` (a ``ChatRexImageProcessor``), ``boxes`` (B x (K_i, 4) normalised to the padded
    square), ``dense`` (B, grid²) labels, ``is_region`` (sum K,) and one (sum K,) tensor per label name.

    Items with ``masks`` (box index → COCO RLE) add ``region_masks`` (B uint8 tensors (M_i, G, G), G =
    ``image_size_aux // 4``) and ``region_mask_indices`` (B tensors (M_i,)): the RLE is decoded and resized
    here, in the data workers."""
    from chatrex.data.chatrex_dataset import with_masks
    from chatrex.mllm.image_processing import normalize_boxes
    from chatrex.mllm.regions import prepare_regions, quantize_mask_grid

    pixels = image_processor([s["image"] for s in samples], normalize=False)
    masks = None
    if any(s.get("masks") for s in samples):
        side = max(1, image_processor.image_size_aux // 4)
        prepared = [prepare_regions(with_masks(s["boxes"].tolist(), s.get("masks") or {}), frame, side, f"sample {i}")
                    for i, (s, frame) in enumerate(zip(samples, pixels["frames"]))]
        boxes = [p.boxes for p in prepared]
        masks = ([quantize_mask_grid(p.masks) for p in prepared], [p.mask_indices for p in prepared])
    else:
        boxes = [normalize_boxes(s["boxes"], frame) for s, frame in zip(samples, pixels["frames"])]
    dense = torch.stack([dense_labels(b[: s["regions"]], s["category"][: s["regions"]], grid)
                         for s, b in zip(samples, boxes)])
    batch = {"pixel_values": pixels["pixel_values"], "pixel_values_aux": pixels["pixel_values_aux"],
             "boxes": boxes, "dense": dense,
             "is_region": torch.cat([torch.arange(len(s["category"])) < s["regions"] for s in samples])}
    if masks is not None:
        batch["region_masks"], batch["region_mask_indices"] = masks
    for name in ["category", *attributes]:
        batch[name] = torch.cat([s[name] for s in samples])
    return batch


__all__ = ["BACKGROUND", "IGNORE", "VisionDataConfig", "VisionVocabulary", "VisionPretrainDataset", "collate_vision",
           "dense_labels"]
