"""Rexverse-like data records: one JSON object per image (see ``docs/design.md`` § "Data records").

A record holds the image reference and size, its regions (boxes at the *instance* or *part* level,
with category, attributes and texts), relations between regions, grounded captions and grounded
conversations::

    {"id": "world-train-0000123", "image": "images/train/0000123.jpg", "width": 640, "height": 480,
     "source": "world", "split": "train",
     "regions": [{"id": 0, "box": [x0, y0, x1, y1], "category": "car", "level": "instance",
                  "parent": null, "attributes": {"color": "red"}, "phrase": "a red car"}, ...],
     "relations": [{"subject": 0, "predicate": "left of", "object": 3}],
     "captions": [{"kind": "brief", "text": "A red car ...",
                   "groundings": [{"span": [2, 9], "phrase": "red car", "regions": [0]}]}],
     "conversations": [{"question": "...", "answer": "The car is red.",
                        "groundings": [{"span": [4, 7], "phrase": "car", "regions": [0]}]}]}

A region may carry a ``mask``: its visible pixels as COCO RLE, ``{"size": [height, width], "counts":
"..."}`` (compressed, as pycocotools writes it), in pixels of the whole image. Records without masks
stay valid.

Only ``id``, ``image``, ``width``, ``height`` and ``regions[*].{id, box}`` are required. Boxes are
``xyxy`` in pixels of the image, with ``x1``/``y1`` the exclusive pixel edge (a one-pixel object at
column 5 has ``x0=5, x1=6``). Grounding spans are ``[start, end)`` character offsets into the text
they belong to (the caption's ``text``, the conversation's ``answer``) with ``text[start:end] ==
phrase``. Unknown keys are kept (``extra``) so that records round-trip through the dataclasses.

:func:`validate_record` checks a plain dict and returns a list of error strings (empty = valid); the
dataclasses' ``from_dict`` raise :class:`SchemaError` with those messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

#: Region levels.
LEVELS = ("instance", "part")
#: Boxes may exceed the image by this many pixels (rounding in real annotations) and still validate.
BOX_TOLERANCE = 0.5

REQUIRED_RECORD_KEYS = ("id", "image", "width", "height", "regions")
REQUIRED_REGION_KEYS = ("id", "box")


class SchemaError(ValueError):
    """A record does not follow the schema. ``errors`` lists every problem found."""

    def __init__(self, errors: list[str], what: str = "record"):
        self.errors = list(errors)
        shown = "; ".join(self.errors[:8]) + (f"; ... ({len(self.errors) - 8} more)" if len(self.errors) > 8 else "")
        super().__init__(f"invalid {what}: {shown}")


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _known(d: Mapping[str, Any], keys: Iterable[str]) -> dict:
    keys = set(keys)
    return {k: v for k, v in d.items() if k not in keys}


# ----------------------------------------------------------------------------------------- dataclasses


@dataclass
class Grounding:
    """A phrase of a text tied to regions: ``text[span[0]:span[1]] == phrase`` -> ``regions`` (ids)."""

    span: tuple[int, int]
    regions: list[int]
    phrase: Optional[str] = None
    extra: dict = field(default_factory=dict)

    _KEYS = ("span", "phrase", "regions")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Grounding":
        return cls(span=(int(d["span"][0]), int(d["span"][1])), regions=[int(r) for r in d["regions"]],
                   phrase=d.get("phrase"), extra=_known(d, cls._KEYS))

    def to_dict(self) -> dict:
        return {**_drop_none({"span": [int(self.span[0]), int(self.span[1])], "phrase": self.phrase,
                              "regions": list(self.regions)}), **self.extra}


@dataclass
class Caption:
    """A caption of the whole image; ``kind`` is e.g. "brief" or "detailed"."""

    text: str
    kind: Optional[str] = None
    groundings: list[Grounding] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    _KEYS = ("kind", "text", "groundings")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Caption":
        return cls(text=d["text"], kind=d.get("kind"),
                   groundings=[Grounding.from_dict(g) for g in d.get("groundings") or []],
                   extra=_known(d, cls._KEYS))

    def to_dict(self) -> dict:
        out = _drop_none({"kind": self.kind, "text": self.text})
        if self.groundings:
            out["groundings"] = [g.to_dict() for g in self.groundings]
        return {**out, **self.extra}


@dataclass
class Conversation:
    """One question/answer turn; groundings point into ``answer``."""

    question: str
    answer: str
    groundings: list[Grounding] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    _KEYS = ("question", "answer", "groundings")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Conversation":
        return cls(question=d["question"], answer=d["answer"],
                   groundings=[Grounding.from_dict(g) for g in d.get("groundings") or []],
                   extra=_known(d, cls._KEYS))

    def to_dict(self) -> dict:
        out = {"question": self.question, "answer": self.answer}
        if self.groundings:
            out["groundings"] = [g.to_dict() for g in self.groundings]
        return {**out, **self.extra}


@dataclass
class Relation:
    """``subject PREDICATE object`` between two region ids ("0 left of 3")."""

    subject: int
    predicate: str
    object: int
    extra: dict = field(default_factory=dict)

    _KEYS = ("subject", "predicate", "object")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Relation":
        return cls(subject=int(d["subject"]), predicate=d["predicate"], object=int(d["object"]),
                   extra=_known(d, cls._KEYS))

    def to_dict(self) -> dict:
        return {"subject": self.subject, "predicate": self.predicate, "object": self.object, **self.extra}


@dataclass
class Region:
    """A box with optional labels. ``level`` is "instance" or "part"; ``parent`` links a part to its
    instance. ``visible`` (fraction of the object's pixels that can be seen), ``area`` (visible
    pixels) and ``mask`` (the visible pixels as COCO RLE, ``{"size": [H, W], "counts": str}``) are
    filled by the procedural world; real data may leave them out."""

    id: int
    box: list[float]
    category: Optional[str] = None
    level: Optional[str] = None
    parent: Optional[int] = None
    attributes: dict[str, str] = field(default_factory=dict)
    phrase: Optional[str] = None
    description: Optional[str] = None
    referring: Optional[str] = None
    visible: Optional[float] = None
    area: Optional[int] = None
    mask: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    _KEYS = ("id", "box", "category", "level", "parent", "attributes", "phrase", "description",
             "referring", "visible", "area", "mask")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Region":
        return cls(
            id=int(d["id"]), box=[float(v) for v in d["box"]], category=d.get("category"),
            level=d.get("level"), parent=d.get("parent"), attributes=dict(d.get("attributes") or {}),
            phrase=d.get("phrase"), description=d.get("description"), referring=d.get("referring"),
            visible=d.get("visible"), area=d.get("area"),
            mask=dict(d["mask"]) if isinstance(d.get("mask"), Mapping) else None, extra=_known(d, cls._KEYS),
        )

    def to_dict(self) -> dict:
        out = _drop_none({
            "id": self.id, "box": [_num(v) for v in self.box], "category": self.category,
            "level": self.level, "parent": self.parent,
        })
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        out.update(_drop_none({"phrase": self.phrase, "description": self.description,
                               "referring": self.referring, "visible": self.visible, "area": self.area,
                               "mask": None if self.mask is None else dict(self.mask)}))
        return {**out, **self.extra}


@dataclass
class Record:
    """One image with its regions, relations, captions and conversations."""

    id: str
    image: str
    width: int
    height: int
    regions: list[Region] = field(default_factory=list)
    source: Optional[str] = None
    split: Optional[str] = None
    relations: list[Relation] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    _KEYS = ("id", "image", "width", "height", "source", "split", "regions", "relations", "captions",
             "conversations")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], validate: bool = True) -> "Record":
        """Build a record from a dict; with ``validate`` (default) raise :class:`SchemaError` if invalid."""
        if validate:
            errors = validate_record(d)
            if errors:
                raise SchemaError(errors, f"record {d.get('id')!r}" if isinstance(d, Mapping) else "record")
        return cls(
            id=d["id"], image=d["image"], width=int(d["width"]), height=int(d["height"]),
            regions=[Region.from_dict(r) for r in d["regions"]], source=d.get("source"),
            split=d.get("split"), relations=[Relation.from_dict(r) for r in d.get("relations") or []],
            captions=[Caption.from_dict(c) for c in d.get("captions") or []],
            conversations=[Conversation.from_dict(c) for c in d.get("conversations") or []],
            extra=_known(d, cls._KEYS),
        )

    def to_dict(self) -> dict:
        out = _drop_none({"id": self.id, "image": self.image, "width": self.width, "height": self.height,
                          "source": self.source, "split": self.split})
        out["regions"] = [r.to_dict() for r in self.regions]
        if self.relations:
            out["relations"] = [r.to_dict() for r in self.relations]
        if self.captions:
            out["captions"] = [c.to_dict() for c in self.captions]
        if self.conversations:
            out["conversations"] = [c.to_dict() for c in self.conversations]
        return {**out, **self.extra}

    def validate(self) -> list[str]:
        return validate_record(self.to_dict())

    def region(self, region_id: int) -> Region:
        for r in self.regions:
            if r.id == region_id:
                return r
        raise KeyError(f"record {self.id!r} has no region {region_id}")


def _num(v: float) -> float | int:
    """Keep integral box values as ints in JSON (shorter files)."""
    f = float(v)
    return int(f) if f.is_integer() else f


# ------------------------------------------------------------------------------------------ validation


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_str(d: Mapping, key: str, where: str, errors: list[str], required: bool = False) -> None:
    if key not in d or d[key] is None:
        if required:
            errors.append(f"{where}: missing required key '{key}'")
        return
    if not isinstance(d[key], str):
        errors.append(f"{where}.{key}: must be a string, got {type(d[key]).__name__}")
    elif required and not d[key]:
        errors.append(f"{where}.{key}: must not be empty")


def _check_list(d: Mapping, key: str, where: str, errors: list[str]) -> list:
    v = d.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        errors.append(f"{where}.{key}: must be a list, got {type(v).__name__}")
        return []
    return v


def validate_box(box: Any, width: Optional[int], height: Optional[int], where: str = "box") -> list[str]:
    """Errors of one ``[x0, y0, x1, y1]`` box in an image of ``width`` x ``height`` (None: unknown)."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return [f"{where}: must be a list of 4 numbers [x0, y0, x1, y1], got {box!r}"]
    if not all(_is_num(v) for v in box):
        return [f"{where}: every coordinate must be a finite number, got {box!r}"]
    x0, y0, x1, y1 = (float(v) for v in box)
    errors = []
    if not x0 < x1:
        errors.append(f"{where}: x0 must be < x1, got x0={x0:g}, x1={x1:g}")
    if not y0 < y1:
        errors.append(f"{where}: y0 must be < y1, got y0={y0:g}, y1={y1:g}")
    tol = BOX_TOLERANCE
    if min(x0, y0) < -tol:
        errors.append(f"{where}: {box!r} starts outside the image (negative coordinate)")
    if width is not None and max(x0, x1) > width + tol:
        errors.append(f"{where}: {box!r} extends past the image width {width}")
    if height is not None and max(y0, y1) > height + tol:
        errors.append(f"{where}: {box!r} extends past the image height {height}")
    return errors


def validate_mask_field(mask: Any, width: Optional[int], height: Optional[int], where: str = "mask") -> list[str]:
    """Errors of a region's ``mask``: COCO RLE ``{"size": [H, W], "counts": str or [int]}`` of the image's
    size. Only the form is checked here (cheap enough for every record); the run lengths are checked
    where a mask is decoded (:func:`chatrex.utils.masks.decode_rle`)."""
    if not isinstance(mask, Mapping):
        return [f"{where}: must be COCO RLE {{'size': [height, width], 'counts': ...}}, got {type(mask).__name__}"]
    errors = []
    size = mask.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        errors.append(f"{where}.size: must be [height, width] (positive integers), got {size!r}")
    elif width is not None and height is not None and list(size) != [height, width]:
        errors.append(f"{where}.size: {list(size)} is not the image's [height, width] = [{height}, {width}]")
    counts = mask.get("counts")
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts):
            errors.append(f"{where}.counts: a list of run lengths must hold non-negative integers")
    elif not isinstance(counts, str) or not counts:
        errors.append(f"{where}.counts: must be a compressed RLE string or a list of run lengths, got {counts!r:.40}")
    return errors


def _check_groundings(owner: Mapping, text_key: str, where: str, region_ids: set, errors: list[str]) -> None:
    text = owner.get(text_key)
    for j, g in enumerate(_check_list(owner, "groundings", where, errors)):
        gw = f"{where}.groundings[{j}]"
        if not isinstance(g, Mapping):
            errors.append(f"{gw}: must be an object, got {type(g).__name__}")
            continue
        span = g.get("span")
        if "span" not in g:
            errors.append(f"{gw}: missing required key 'span'")
        elif not (isinstance(span, (list, tuple)) and len(span) == 2 and all(_is_int(v) for v in span)):
            errors.append(f"{gw}.span: must be [start, end] integers, got {span!r}")
        elif isinstance(text, str):
            s, e = span
            if not 0 <= s < e <= len(text):
                errors.append(f"{gw}.span: {list(span)} is not inside the {len(text)}-character {text_key}")
            elif isinstance(g.get("phrase"), str) and text[s:e] != g["phrase"]:
                errors.append(f"{gw}: {text_key}[{s}:{e}] is {text[s:e]!r}, not the phrase {g['phrase']!r}")
        if "phrase" in g and g["phrase"] is not None and not isinstance(g["phrase"], str):
            errors.append(f"{gw}.phrase: must be a string")
        regs = g.get("regions")
        if "regions" not in g:
            errors.append(f"{gw}: missing required key 'regions'")
        elif not isinstance(regs, list) or not regs or not all(_is_int(r) for r in regs):
            errors.append(f"{gw}.regions: must be a non-empty list of region ids, got {regs!r}")
        else:
            missing = [r for r in regs if r not in region_ids]
            if missing:
                errors.append(f"{gw}.regions: refers to missing region id(s) {missing}")


def validate_record(d: Any) -> list[str]:
    """Check a record dict against the schema. Returns a list of error messages (empty: valid).

    Checks types and required keys; that every box lies inside the image with x0 < x1 and y0 < y1;
    region ids are unique; parents, relations and groundings refer to existing regions; grounding
    spans lie inside their text and ``text[span] == phrase``.
    """
    if not isinstance(d, Mapping):
        return [f"record: must be a JSON object, got {type(d).__name__}"]
    errors: list[str] = []
    for key in REQUIRED_RECORD_KEYS:
        if key not in d:
            errors.append(f"record: missing required key '{key}'")
    _check_str(d, "id", "record", errors, required="id" in d)
    _check_str(d, "image", "record", errors, required="image" in d)
    _check_str(d, "source", "record", errors)
    _check_str(d, "split", "record", errors)
    width = height = None
    for key in ("width", "height"):
        if key in d:
            v = d[key]
            if not _is_int(v) or v <= 0:
                errors.append(f"record.{key}: must be a positive integer, got {v!r}")
            elif key == "width":
                width = v
            else:
                height = v

    regions = _check_list(d, "regions", "record", errors)
    ids: dict[int, Mapping] = {}
    for i, r in enumerate(regions):
        w = f"regions[{i}]"
        if not isinstance(r, Mapping):
            errors.append(f"{w}: must be an object, got {type(r).__name__}")
            continue
        for key in REQUIRED_REGION_KEYS:
            if key not in r:
                errors.append(f"{w}: missing required key '{key}'")
        if "id" in r:
            if not _is_int(r["id"]) or r["id"] < 0:
                errors.append(f"{w}.id: must be a non-negative integer, got {r['id']!r}")
            elif r["id"] in ids:
                errors.append(f"{w}.id: duplicate region id {r['id']}")
            else:
                ids[r["id"]] = r
        if "box" in r:
            errors.extend(validate_box(r["box"], width, height, f"{w}.box"))
        for key in ("category", "phrase", "description", "referring"):
            _check_str(r, key, w, errors)
        level = r.get("level")
        if level is not None and level not in LEVELS:
            errors.append(f"{w}.level: must be one of {list(LEVELS)}, got {level!r}")
        attrs = r.get("attributes")
        if attrs is not None:
            if not isinstance(attrs, Mapping):
                errors.append(f"{w}.attributes: must be an object, got {type(attrs).__name__}")
            else:
                bad = [k for k, v in attrs.items() if not isinstance(v, str)]
                if bad:
                    errors.append(f"{w}.attributes: values must be strings (bad keys: {bad})")
        vis = r.get("visible")
        if vis is not None and not (_is_num(vis) and 0.0 <= vis <= 1.0):
            errors.append(f"{w}.visible: must be a number in [0, 1], got {vis!r}")
        area = r.get("area")
        if area is not None and not (_is_num(area) and area >= 0):
            errors.append(f"{w}.area: must be a non-negative number, got {area!r}")
        if r.get("mask") is not None:
            errors.extend(validate_mask_field(r["mask"], width, height, f"{w}.mask"))

    for i, r in enumerate(regions):  # parents need every id first
        if not isinstance(r, Mapping) or r.get("parent") is None:
            continue
        w, p = f"regions[{i}]", r["parent"]
        if not _is_int(p):
            errors.append(f"{w}.parent: must be a region id or null, got {p!r}")
        elif p not in ids:
            errors.append(f"{w}.parent: refers to missing region id {p}")
        elif p == r.get("id"):
            errors.append(f"{w}.parent: a region cannot be its own parent")
        else:
            if ids[p].get("level") == "part":
                errors.append(f"{w}.parent: region {p} is a part; a parent must be an instance")
            if r.get("level") == "instance":
                errors.append(f"{w}.parent: an instance-level region has a parent ({p}); only parts do")

    region_ids = set(ids)
    for i, rel in enumerate(_check_list(d, "relations", "record", errors)):
        w = f"relations[{i}]"
        if not isinstance(rel, Mapping):
            errors.append(f"{w}: must be an object, got {type(rel).__name__}")
            continue
        for key in ("subject", "object"):
            if key not in rel:
                errors.append(f"{w}: missing required key '{key}'")
            elif not _is_int(rel[key]):
                errors.append(f"{w}.{key}: must be a region id, got {rel[key]!r}")
            elif rel[key] not in region_ids:
                errors.append(f"{w}.{key}: refers to missing region id {rel[key]}")
        if not isinstance(rel.get("predicate"), str) or not rel.get("predicate"):
            errors.append(f"{w}.predicate: must be a non-empty string, got {rel.get('predicate')!r}")
        if _is_int(rel.get("subject")) and rel.get("subject") == rel.get("object"):
            errors.append(f"{w}: subject and object are the same region {rel['subject']}")

    for i, c in enumerate(_check_list(d, "captions", "record", errors)):
        w = f"captions[{i}]"
        if not isinstance(c, Mapping):
            errors.append(f"{w}: must be an object, got {type(c).__name__}")
            continue
        _check_str(c, "text", w, errors, required=True)
        _check_str(c, "kind", w, errors)
        _check_groundings(c, "text", w, region_ids, errors)

    for i, c in enumerate(_check_list(d, "conversations", "record", errors)):
        w = f"conversations[{i}]"
        if not isinstance(c, Mapping):
            errors.append(f"{w}: must be an object, got {type(c).__name__}")
            continue
        _check_str(c, "question", w, errors, required=True)
        _check_str(c, "answer", w, errors, required=True)
        _check_groundings(c, "answer", w, region_ids, errors)
    return errors
