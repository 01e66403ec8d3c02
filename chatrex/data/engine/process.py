"""The per-image function: one image through all six stages into one record (or a rejection).

:func:`process_image` is what every backend runs (in-process, a multiprocessing worker, a Ray actor).
It returns a JSON-able *outcome* dict::

    {"key": "cats/001.jpg#<sha256>", "path": "cats/001.jpg", "sha256": "...",
     "status": "done" | "rejected" | "failed",
     "record": {...} (done only), "reason": "..." (rejected / failed), "stats": {...}}

Checks on what the stages return live here, so a stage that returns a bad box or a phrase it was never
given fails with an :class:`~chatrex.data.engine.steps.EngineStepError` naming the stage and the image.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

from PIL import Image

from chatrex.data.schema import validate_record
from chatrex.utils.image import ImageLoadError, load_image

from .collect import ImageFilterConfig, ImageTask, reject_reason
from .steps import EngineStepError, EngineSteps, GroundedPhrase, Phrase

ON_ERROR = ("raise", "log")


@dataclass
class EngineConfig:
    """Thresholds of stages 1 and 4-6 and the error policy.

    Attributes:
        image_filter: stage-1 thresholds (size, flatness).
        min_score: drop grounded boxes scoring below this.
        min_box_side: drop boxes (after clipping to the image) thinner than this many pixels.
        dedupe_iou: boxes of the same phrase overlapping more than this are duplicates (the better
            scoring one stays).
        max_boxes_per_phrase: keep at most this many boxes per phrase (best first).
        max_regions: keep at most this many regions per image (ChatRex sees at most 100 boxes).
        min_regions: images with fewer grounded regions are rejected.
        on_error: ``"raise"`` stops the run at the first failing image (finished images are kept);
            ``"log"`` writes the failure to ``errors.jsonl`` and goes on (failed images are retried on
            the next run).
        split: optional ``split`` value written into every record.
    """

    image_filter: ImageFilterConfig = field(default_factory=ImageFilterConfig)
    min_score: float = 0.0
    min_box_side: float = 2.0
    dedupe_iou: float = 0.9
    max_boxes_per_phrase: int = 10
    max_regions: int = 100
    min_regions: int = 1
    on_error: str = "raise"
    split: Optional[str] = None

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if isinstance(self.image_filter, Mapping):
            self.image_filter = ImageFilterConfig.from_dict(dict(self.image_filter))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EngineConfig":
        data = dict(data)
        if "image_filter" in data and isinstance(data["image_filter"], Mapping):
            data["image_filter"] = ImageFilterConfig.from_dict(dict(data["image_filter"]))
        return cls(**data)


class ImageProcessingError(RuntimeError):
    """A stage failed on one image; the message names the image and the stage."""

    def __init__(self, message: str, path: str = "", stage: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.stage = stage

    def __reduce__(self):  # keep path/stage across process boundaries
        return (type(self), (str(self), self.path, self.stage))


def record_id(task: ImageTask) -> str:
    """Stable record id from the image key (path + content hash)."""
    return "engine-" + hashlib.sha1(task.key.encode("utf-8")).hexdigest()[:16]


def first_sentence(text: str) -> str:
    """Whitespace-normalised first sentence of ``text`` (the stages are asked for one sentence)."""
    text = " ".join(str(text).split())
    match = re.search(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", text)
    return text[: match.start()] if match else text


def box_ious(box: Sequence[float], boxes: Sequence[Sequence[float]]) -> list[float]:
    """IoU of the xyxy ``box`` with each of ``boxes``, in one ``torchvision.ops.box_iou`` call; 0 for two
    zero-area boxes."""
    if not boxes:
        return []
    import torch
    from torchvision.ops import box_iou as torchvision_box_iou

    iou = torchvision_box_iou(torch.tensor([box], dtype=torch.float64), torch.tensor(boxes, dtype=torch.float64))
    return torch.nan_to_num(iou, nan=0.0)[0].tolist()


def _stage_name(steps: EngineSteps, attr: str) -> str:
    return f"{attr} ({type(getattr(steps, attr)).__name__})"


def _check_phrases(phrases: Any, caption: str, who: str) -> list[Phrase]:
    if not isinstance(phrases, (list, tuple)):
        raise EngineStepError(f"{who} must return a list of Phrase, got {type(phrases).__name__}")
    out: list[Phrase] = []
    for i, p in enumerate(phrases):
        if not isinstance(p, Phrase):
            raise EngineStepError(f"{who} returned item {i} of type {type(p).__name__}; expected Phrase")
        if not (0 <= p.start < p.end <= len(caption)) or caption[p.start : p.end] != p.text:
            raise EngineStepError(
                f"{who} returned phrase {p.text!r} with span [{p.start}, {p.end}) that does not match the "
                f"caption {caption!r}"
            )
        out.append(p)
    return out


def _check_grounding(items: Any, phrases: list[Phrase], image: Image.Image, who: str) -> list[GroundedPhrase]:
    if not isinstance(items, (list, tuple)):
        raise EngineStepError(f"{who} must return a list of (phrase, box, score), got {type(items).__name__}")
    by_text = {p.text: p for p in phrases}
    out: list[GroundedPhrase] = []
    for i, item in enumerate(items):
        if isinstance(item, GroundedPhrase):
            phrase, box, score = item.phrase, item.box, item.score
        elif isinstance(item, (list, tuple)) and len(item) == 3:
            phrase, box, score = item
        else:
            raise EngineStepError(f"{who} returned item {i} = {item!r}; expected a (phrase, box, score) triple")
        if isinstance(phrase, str) and phrase in by_text:
            phrase = by_text[phrase]
        if phrase not in phrases:
            raise EngineStepError(f"{who} returned a box for {phrase!r}, which is not one of the phrases it was given")
        try:
            coords = [float(v) for v in box]
            score_f = float(score)
        except (TypeError, ValueError) as exc:
            raise EngineStepError(f"{who} returned item {i} with a box {box!r} / score {score!r} that are not numbers") from exc
        if len(coords) != 4 or not all(math.isfinite(v) for v in coords) or not math.isfinite(score_f):
            raise EngineStepError(f"{who} returned item {i} with box {box!r}, score {score!r}; need 4 finite numbers and a finite score")
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise EngineStepError(f"{who} returned box {coords} for {phrase.text!r}; boxes are [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")
        out.append(GroundedPhrase(phrase, tuple(coords), score_f))
    return out


def select_regions(grounded: list[GroundedPhrase], phrases: list[Phrase], width: int, height: int,
                   config: EngineConfig) -> list[GroundedPhrase]:
    """Clip, threshold, de-duplicate and cap the grounder's boxes; order by phrase then score."""
    kept: list[GroundedPhrase] = []
    order = {p: i for i, p in enumerate(phrases)}
    for g in sorted(grounded, key=lambda g: (order[g.phrase], -g.score)):
        x0, y0, x1, y1 = g.box
        box = (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height))
        box = tuple(round(v, 2) for v in box)
        if box[2] - box[0] < config.min_box_side or box[3] - box[1] < config.min_box_side:
            continue
        if g.score < config.min_score:
            continue
        same = [k for k in kept if k.phrase == g.phrase]
        if len(same) >= config.max_boxes_per_phrase:
            continue
        if any(iou > config.dedupe_iou for iou in box_ious(box, [k.box for k in same])):
            continue
        kept.append(GroundedPhrase(g.phrase, box, g.score))
    if len(kept) > config.max_regions:
        best = sorted(range(len(kept)), key=lambda i: -kept[i].score)[: config.max_regions]
        kept = [kept[i] for i in sorted(best)]
    return kept


def _text_or_error(value: Any, who: str) -> str:
    if not isinstance(value, str):
        raise EngineStepError(f"{who} must return a string, got {type(value).__name__}")
    return first_sentence(value)


def annotate_image(image: Image.Image, steps: EngineSteps, config: EngineConfig) -> tuple[Optional[dict[str, Any]], Optional[str], dict[str, int]]:
    """Stages 2-6 on a loaded image. Returns ``(partial_record, None, stats)`` or ``(None, reason, stats)``.

    ``partial_record`` holds ``width``, ``height``, ``regions`` and ``captions`` (no id/image yet).
    """
    stats = {"phrases": 0, "boxes": 0, "regions": 0, "descriptions": 0, "referring": 0, "filtered": 0}
    width, height = image.size
    stage = "captioner"
    try:
        caption = _text_or_error(steps.captioner.caption(image), _stage_name(steps, stage))
        if not caption:
            return None, "the captioner returned an empty caption", stats
        stage = "extractor"
        phrases = _check_phrases(steps.extractor.extract(caption), caption, _stage_name(steps, stage))
        stats["phrases"] = len(phrases)
        if not phrases:
            return None, f"no groundable noun phrase in the caption {caption!r}", stats
        stage = "grounder"
        grounded = _check_grounding(steps.grounder.ground(image, list(phrases)), phrases, image, _stage_name(steps, stage))
        stats["boxes"] = len(grounded)
        selected = select_regions(grounded, phrases, width, height, config)
        if len(selected) < config.min_regions:
            return None, f"{len(selected)} region(s) grounded, fewer than min_regions={config.min_regions}", stats
        regions: list[dict[str, Any]] = []
        for rid, g in enumerate(selected):
            stage = "region_captioner"
            description = _text_or_error(
                steps.region_captioner.caption(image, list(g.box), g.phrase), _stage_name(steps, stage)
            )
            stage = "caption_filter"
            referring = steps.caption_filter.rewrite(g.phrase, description) if description else None
            if referring is not None and not isinstance(referring, str):
                raise EngineStepError(f"{_stage_name(steps, stage)} must return a string or None, got {type(referring).__name__}")
            region: dict[str, Any] = {
                "id": rid, "box": list(g.box), "category": g.phrase.category, "level": "instance",
                "phrase": g.phrase.text,
            }
            if referring:
                region["description"] = description
                region["referring"] = " ".join(referring.split())
                stats["descriptions"] += 1
                stats["referring"] += 1
            else:
                stats["filtered"] += 1
            region["score"] = round(float(g.score), 4)
            regions.append(region)
    except (KeyboardInterrupt, ImageProcessingError):
        raise
    except Exception as exc:
        raise ImageProcessingError(f"stage '{stage}' failed: {type(exc).__name__}: {exc}", stage=stage) from exc
    stats["regions"] = len(regions)
    groundings = []
    for p in phrases:
        ids = [r["id"] for r, g in zip(regions, selected) if g.phrase == p]
        if ids:
            groundings.append({"span": [p.start, p.end], "phrase": p.text, "regions": ids})
    partial = {
        "width": width, "height": height, "regions": regions,
        "captions": [{"kind": "brief", "text": caption, "groundings": groundings}],
    }
    return partial, None, stats


def process_image(task: ImageTask, steps: EngineSteps, config: EngineConfig, records_dir: str) -> dict[str, Any]:
    """All six stages on one image; returns the outcome dict described in the module docstring.

    Args:
        task: the image (path relative to its folder + content hash).
        steps: live stage objects.
        config: thresholds and error policy.
        records_dir: folder of the output JSONL; the record's ``image`` is relative to it.

    Raises:
        ImageProcessingError: a stage failed and ``config.on_error == "raise"``.
    """
    outcome: dict[str, Any] = {"key": task.key, "path": task.path, "sha256": task.sha256}
    try:
        image = load_image(task.abspath)
    except ImageLoadError as exc:
        return {**outcome, "status": "rejected", "reason": f"unreadable: {exc}"}
    reason = reject_reason(image, config.image_filter)
    if reason is not None:
        return {**outcome, "status": "rejected", "reason": reason}
    try:
        partial, reason, stats = annotate_image(image, steps, config)
    except ImageProcessingError as exc:
        error = ImageProcessingError(f"image '{task.path}': {exc}", path=task.path, stage=exc.stage)
        if config.on_error == "raise":
            raise error from exc.__cause__
        return {**outcome, "status": "failed", "reason": str(error)}
    if partial is None:
        return {**outcome, "status": "rejected", "reason": reason, "stats": stats}
    try:
        image_ref = os.path.relpath(task.abspath, records_dir)
    except ValueError:  # another drive (Windows)
        image_ref = os.path.abspath(task.abspath)
    record = {
        "id": record_id(task), "image": image_ref.replace(os.sep, "/"), "width": partial["width"],
        "height": partial["height"], "source": "engine",
    }
    if config.split:
        record["split"] = config.split
    record["regions"] = partial["regions"]
    record["captions"] = partial["captions"]
    record["engine"] = {"path": task.path, "sha256": task.sha256}
    errors = validate_record(record)
    if errors:  # a bug in the engine, not in the input: always loud
        raise ImageProcessingError(f"image '{task.path}': the engine built an invalid record: {'; '.join(errors)}", path=task.path)
    return {**outcome, "status": "done", "record": record, "stats": stats}
