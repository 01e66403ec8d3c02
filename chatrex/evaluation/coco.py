"""COCO-format ground truth and results, and mAP through pycocotools.

``coco_from_records`` turns our JSONL records into a COCO dict in memory so that the world's splits
and real COCO/LVIS files go through the same code. ``coco_map`` wraps ``COCOeval`` (bbox) and returns
its twelve summary numbers by name.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Iterable, Sequence

import numpy as np

from chatrex.evaluation.boxes import BoxError, as_boxes, xyxy_to_xywh

#: Names of COCOeval.stats, in order.
COCO_STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")

LEVELS = ("instance", "part", "all")


class CocoFormatError(ValueError):
    """A COCO annotation dict or file is not usable (missing keys, bad boxes, unknown ids)."""


def check_coco(dataset: Any, source: str = "COCO annotations") -> dict:
    """Validate a COCO dict and return a copy with ``id``, ``area`` and ``iscrowd`` filled in.

    Raises :class:`CocoFormatError` naming ``source`` and the offending entry.
    """
    if not isinstance(dataset, dict):
        raise CocoFormatError(f"{source}: expected a JSON object with images/annotations/categories, "
                              f"got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise CocoFormatError(f"{source}: missing list '{key}'")
    out = copy.deepcopy(dataset)
    image_ids = set()
    for i, img in enumerate(out["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise CocoFormatError(f"{source}: images[{i}] has no 'id'")
        image_ids.add(img["id"])
    cat_ids = set()
    for i, cat in enumerate(out["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise CocoFormatError(f"{source}: categories[{i}] needs 'id' and 'name'")
        cat_ids.add(cat["id"])
    used_ids = {a.get("id") for a in out["annotations"] if isinstance(a, dict)}
    next_id = max([x for x in used_ids if isinstance(x, int)] + [0]) + 1
    for i, ann in enumerate(out["annotations"]):
        if not isinstance(ann, dict):
            raise CocoFormatError(f"{source}: annotations[{i}] is not an object")
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise CocoFormatError(f"{source}: annotations[{i}] has no '{key}'")
        if ann["image_id"] not in image_ids:
            raise CocoFormatError(f"{source}: annotations[{i}] refers to unknown image_id {ann['image_id']!r}")
        if ann["category_id"] not in cat_ids:
            raise CocoFormatError(
                f"{source}: annotations[{i}] refers to unknown category_id {ann['category_id']!r}")
        bbox = ann["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)):
            raise CocoFormatError(f"{source}: annotations[{i}].bbox must be [x, y, w, h], got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise CocoFormatError(f"{source}: annotations[{i}].bbox {bbox!r} has a negative width or height")
        if "id" not in ann:
            ann["id"] = next_id
            next_id += 1
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
        ann.setdefault("iscrowd", 0)
    return out


def region_in_level(region: dict, level: str) -> bool:
    """Whether a record's region belongs to ``level`` (``instance``, ``part`` or ``all``).

    Regions without a ``level`` count as instances.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return level == "all" or region.get("level", "instance") == level


def coco_from_records(records: Sequence[dict], level: str = "instance") -> dict:
    """Build a COCO dict (bbox annotations) from JSONL records.

    Only regions of ``level`` that carry a ``category`` become annotations; image ``id`` s are
    1..N in record order, with ``file_name`` the record's ``image`` and ``record_id`` its ``id``.
    Categories are numbered 1..C in sorted name order.
    """
    names = sorted({r["category"] for rec in records for r in rec.get("regions", [])
                    if region_in_level(r, level) and r.get("category")})
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    images, annotations = [], []
    for img_id, rec in enumerate(records, start=1):
        images.append({"id": img_id, "file_name": str(rec.get("image", "")), "width": rec.get("width"),
                       "height": rec.get("height"), "record_id": rec.get("id")})
        for r in rec.get("regions", []):
            if not (region_in_level(r, level) and r.get("category")):
                continue
            try:
                box = as_boxes(r["box"], f"record {rec.get('id')!r} region {r.get('id')!r}")[0]
            except BoxError as exc:
                raise CocoFormatError(str(exc)) from None
            x, y, w, h = xyxy_to_xywh(box)[0].tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "category_id": cat_id[r["category"]],
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}


def detections_to_results(
    image_id: Any, boxes: Any, category_ids: Iterable[int], scores: Iterable[float]
) -> list[dict]:
    """COCO result entries (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) for one image."""
    xywh = xyxy_to_xywh(as_boxes(boxes, "detections"))
    return [
        {"image_id": image_id, "category_id": int(c), "bbox": [round(float(v), 3) for v in b], "score": float(s)}
        for b, c, s in zip(xywh.tolist(), category_ids, scores)
    ]


def coco_map(gt: dict, results: Sequence[dict], image_ids: Iterable[Any] | None = None) -> dict:
    """Bounding-box AP/AR through pycocotools' ``COCOeval``.

    ``gt`` is a COCO dict (checked with :func:`check_coco`); ``results`` COCO result entries;
    ``image_ids`` restricts evaluation (default: all images of ``gt``). Returns
    ``{name: value}`` for :data:`COCO_STAT_NAMES`, with None where pycocotools has no value (-1),
    e.g. when there is no ground truth. Empty ``results`` give 0 where there is ground truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = check_coco(gt, "ground truth")
    ids = [img["id"] for img in gt["images"]] if image_ids is None else list(image_ids)
    known = {img["id"] for img in gt["images"]}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise CocoFormatError(f"image ids {unknown[:5]} are not in the ground truth")
    id_set = set(ids)
    results = [copy.deepcopy(r) for r in results if r["image_id"] in id_set]
    has_gt = any(a["image_id"] in id_set and not a.get("iscrowd", 0) for a in gt["annotations"])
    if not results:
        return {name: (0.0 if has_gt else None) for name in COCO_STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float(v) if v >= 0 else None) for name, v in zip(COCO_STAT_NAMES, ev.stats)}
