"""Reading evaluation data: our JSONL records, COCO annotation files and RefCOCO-style lists.

Every loader resolves image paths and raises :class:`EvalDataError` naming the file and the problem.

* JSONL records (``*.jsonl``, see ``docs/design.md``): images relative to the file's folder, or to
  ``images`` when given.
* COCO (``*.json`` with ``images``/``annotations``/``categories``): ``file_name`` relative to
  ``images`` (default: the annotation file's folder). LVIS-style ``categories[*].synonyms`` are kept.
* RefCOCO-style (``*.json`` holding a list, or ``{"samples": [...]}``): each item
  ``{"image", "expression" | "expressions" | "sentences", "box" (xyxy) | "bbox" (COCO xywh)}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from chatrex.evaluation.boxes import BoxError, as_boxes, xywh_to_xyxy
from chatrex.evaluation.coco import CocoFormatError, check_coco


class EvalDataError(ValueError):
    """Evaluation data cannot be used (missing file, unknown format, malformed entry)."""


@dataclass
class EvalData:
    """Loaded evaluation data: ``kind`` is ``"records"``, ``"coco"`` or ``"refcoco"``.

    ``records``: JSONL dicts with ``image`` made absolute; ``coco``: a checked COCO dict whose
    images carry an absolute ``path``; ``refcoco``: items ``{"image", "expressions", "box"}`` with
    absolute image paths and xyxy boxes.
    """

    kind: str
    source: str
    records: Optional[list] = None
    coco: Optional[dict] = None
    refcoco: Optional[list] = None


def _resolve(image: Any, base: Path, where: str) -> str:
    if not isinstance(image, str) or not image:
        raise EvalDataError(f"{where}: missing image path")
    p = Path(image)
    return str(p if p.is_absolute() else base / p)


def load_records(path: str | Path, images: str | Path | None = None) -> list[dict]:
    """JSONL records with absolute image paths (validated with the data schema)."""
    from chatrex.data.jsonl import RecordError, read_records

    path = Path(path)
    base = Path(images) if images is not None else path.parent
    try:
        records = list(read_records(path, validate=True))
    except (RecordError, FileNotFoundError) as exc:
        raise EvalDataError(str(exc)) from None
    out = []
    for i, rec in enumerate(records):
        rec = dict(rec)
        rec["image"] = _resolve(rec.get("image"), base, f"{path} record {i + 1}")
        out.append(rec)
    return out


def coco_with_paths(data: Any, images: str | Path, source: str = "COCO annotations") -> dict:
    try:
        coco = check_coco(data, source)
    except CocoFormatError as exc:
        raise EvalDataError(str(exc)) from None
    base = Path(images)
    for img in coco["images"]:
        img["path"] = _resolve(img.get("file_name"), base, f"{source} image {img['id']!r}")
    return coco


def parse_refcoco(items: Any, images: str | Path, source: str = "referring data") -> list[dict]:
    """Normalise RefCOCO-style items to ``{"image", "expressions": [...], "box": xyxy}``."""
    if isinstance(items, dict) and isinstance(items.get("samples"), list):
        items = items["samples"]
    if not isinstance(items, list):
        raise EvalDataError(f"{source}: expected a list of {{image, expression, box}} items")
    base = Path(images)
    out = []
    for i, it in enumerate(items):
        where = f"{source} item {i}"
        if not isinstance(it, dict):
            raise EvalDataError(f"{where}: expected an object, got {type(it).__name__}")
        exprs = it.get("expressions", it.get("sentences", it.get("expression")))
        if isinstance(exprs, str):
            exprs = [exprs]
        if isinstance(exprs, list):
            exprs = [e.get("sent", e.get("raw")) if isinstance(e, dict) else e for e in exprs]
        if not exprs or not all(isinstance(e, str) and e.strip() for e in exprs):
            raise EvalDataError(f"{where}: needs a non-empty 'expression' (or 'expressions' list)")
        try:
            if "box" in it:
                box = as_boxes(it["box"], f"{where}.box", allow_degenerate=False)[0]
            elif "bbox" in it:
                box = xywh_to_xyxy(as_boxes(it["bbox"], f"{where}.bbox")[0])[0]
                as_boxes(box, f"{where}.bbox", allow_degenerate=False)
            else:
                raise EvalDataError(f"{where}: needs 'box' [x0, y0, x1, y1] or 'bbox' [x, y, w, h]")
        except BoxError as exc:
            raise EvalDataError(str(exc)) from None
        image = it.get("image", it.get("file_name"))
        out.append({"image": _resolve(image, base, where), "expressions": [e.strip() for e in exprs],
                    "box": [float(v) for v in box]})
    return out


def load_eval_data(path: str | Path, images: str | Path | None = None) -> EvalData:
    """Load ``path`` and tell its kind: ``.jsonl`` → records; ``.json`` → COCO dict or RefCOCO list."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"data file not found: {path}")
    if path.suffix.lower() == ".jsonl":
        return EvalData("records", str(path), records=load_records(path, images))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: not valid JSON ({exc}); expected COCO .json, RefCOCO-style .json or .jsonl")
    base = images if images is not None else path.parent
    if isinstance(data, dict) and "annotations" in data:
        return EvalData("coco", str(path), coco=coco_with_paths(data, base, str(path)))
    if isinstance(data, list) or (isinstance(data, dict) and "samples" in data):
        return EvalData("refcoco", str(path), refcoco=parse_refcoco(data, base, str(path)))
    raise EvalDataError(
        f"{path}: unknown format; expected a COCO file (images/annotations/categories), a RefCOCO-style "
        "list of {image, expression, box}, or JSONL records")


def coco_category_names(coco: dict) -> dict:
    """``{category_id: name}`` of a COCO dict."""
    return {c["id"]: c["name"] for c in coco["categories"]}


def coco_synonyms(coco: dict) -> dict:
    """``{name: [synonyms]}`` from LVIS-style ``categories[*].synonyms`` (empty for plain COCO)."""
    return {c["name"]: [s for s in c.get("synonyms", []) if isinstance(s, str)] for c in coco["categories"]
            if c.get("synonyms")}


def record_synonyms(records: list) -> dict:
    """``{category: [synonyms]}`` merged from the records' ``synonyms`` maps (the world's language pass
    records the other nouns its texts may use for a category, e.g. ``{"car": ["automobile"]}``)."""
    out: dict = {}
    for rec in records:
        syn = rec.get("synonyms")
        if not isinstance(syn, dict):
            continue
        for cat, alts in syn.items():
            if isinstance(alts, str):
                alts = [alts]
            if isinstance(alts, list):
                bucket = out.setdefault(str(cat), [])
                bucket += [a for a in alts if isinstance(a, str) and a not in bucket]
    return out


def data_synonyms(data: "EvalData") -> dict:
    """Category synonyms the data provides: LVIS-style COCO categories or the records' maps."""
    if data.kind == "coco":
        return coco_synonyms(data.coco)
    if data.kind == "records":
        return record_synonyms(data.records)
    return {}


def coco_image_annotations(coco: dict, include_crowd: bool = False) -> dict:
    """``{image_id: [annotation, ...]}`` (crowd annotations left out unless asked)."""
    out: dict = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        if include_crowd or not ann.get("iscrowd", 0):
            out[ann["image_id"]].append(ann)
    return out
