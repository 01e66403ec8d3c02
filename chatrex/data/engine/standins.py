"""Stand-in steps that replay known annotations instead of running models (tests, demos, oracles).

A *script* maps image files to what each model would have said::

    {"street.jpg": {"caption": "A red car is parked next to a tree.",
                    "regions": [{"phrase": "red car", "span": [2, 9], "box": [10, 20, 200, 120],
                                 "score": 0.9, "description": "A red car parked by the curb."}]}}

The steps recognise an image by the digest of its decoded pixels (:func:`image_digest`), so they work
through the real engine, which hands them PIL images only:

* :class:`ScriptedCaptioner` returns the image's ``caption``;
* :class:`ScriptedGrounder` returns, for each phrase, the boxes of the script regions whose ``span``
  overlaps the phrase's span in the caption (or, for regions without a span, whose ``phrase`` equals
  the phrase's text, ignoring case and articles);
* :class:`ScriptedRegionCaptioner` returns the ``description`` of the script region with that box.

:func:`records_to_script` turns existing records (e.g. from the procedural world) into a script, so
the engine can be checked against ground truth. :class:`CrashingCaptioner` raises after ``n`` images
to test resuming.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from PIL import Image

from chatrex.utils.image import load_image

from .process import box_ious
from .steps import EngineStepError, EngineSteps, Phrase

_ARTICLES = ("a ", "an ", "the ")


def image_digest(image: Image.Image) -> str:
    """SHA-1 of an image's mode, size and pixel bytes (identifies an image after decoding)."""
    digest = hashlib.sha1()
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _norm(text: str) -> str:
    text = " ".join(str(text).lower().split())
    for article in _ARTICLES:
        if text.startswith(article):
            return text[len(article):]
    return text


class Script:
    """A script (see the module docstring) indexed by image digest.

    Args:
        entries: ``{image_path: {"caption": ..., "regions": [...]}}``; relative paths are resolved
            against ``base_dir``.
        base_dir: folder of relative image paths (default: the working directory).
    """

    def __init__(self, entries: Mapping[str, Mapping[str, Any]], base_dir: Optional[str] = None) -> None:
        self.by_digest: dict[str, dict[str, Any]] = {}
        for path, entry in entries.items():
            full = path if os.path.isabs(path) or base_dir is None else os.path.join(base_dir, path)
            self.by_digest[image_digest(load_image(full))] = {"path": path, **dict(entry)}

    @classmethod
    def load(cls, source: str | Mapping[str, Any], base_dir: Optional[str] = None) -> "Script":
        """From a dict or a JSON file (whose folder is then the default ``base_dir``)."""
        if isinstance(source, Mapping):
            return cls(source, base_dir)
        with open(source, "r", encoding="utf-8") as handle:
            data = json.load(handle)
        return cls(data, base_dir if base_dir is not None else os.path.dirname(os.path.abspath(source)))

    def entry(self, image: Image.Image, who: str) -> dict[str, Any]:
        found = self.by_digest.get(image_digest(image))
        if found is None:
            raise EngineStepError(f"{who}: the script has no entry for this {image.width}x{image.height} image")
        return found

    def regions(self, image: Image.Image, who: str) -> list[dict[str, Any]]:
        return list(self.entry(image, who).get("regions") or [])


class ScriptedCaptioner:
    """``caption(image)`` -> the script's caption for the image."""

    def __init__(self, script: Script) -> None:
        self.script = script

    def caption(self, image: Image.Image) -> str:
        return str(self.script.entry(image, "ScriptedCaptioner")["caption"])


class ScriptedGrounder:
    """``ground(image, phrases)`` -> the script's boxes for each phrase (matched by span, else by text)."""

    def __init__(self, script: Script) -> None:
        self.script = script

    def ground(self, image: Image.Image, phrases: Sequence[Phrase]) -> list[tuple[Phrase, list[float], float]]:
        regions = self.script.regions(image, "ScriptedGrounder")
        out: list[tuple[Phrase, list[float], float]] = []
        for phrase in phrases:
            for region in regions:
                span = region.get("span")
                if span is not None:
                    hit = int(span[0]) < phrase.end and phrase.start < int(span[1])
                else:
                    hit = _norm(region.get("phrase", "")) == _norm(phrase.text)
                if hit:
                    out.append((phrase, [float(v) for v in region["box"]], float(region.get("score", 1.0))))
        return out


class ScriptedRegionCaptioner:
    """``caption(image, box, phrase)`` -> the ``description`` of the script region with that box."""

    def __init__(self, script: Script, min_iou: float = 0.9) -> None:
        self.script = script
        self.min_iou = float(min_iou)

    def caption(self, image: Image.Image, box: Sequence[float], phrase: Phrase) -> str:
        best, best_iou = None, self.min_iou
        regions = self.script.regions(image, "ScriptedRegionCaptioner")
        ious = box_ious(list(map(float, box)), [list(map(float, region["box"])) for region in regions])
        for region, iou in zip(regions, ious):
            if iou >= best_iou:
                best, best_iou = region, iou
        return str(best.get("description", "")) if best is not None else ""


class CrashingCaptioner:
    """Wraps a captioner and raises after ``after`` successful calls (``kind``: "error" or "interrupt")."""

    def __init__(self, inner: Any, after: int, kind: str = "error") -> None:
        if kind not in ("error", "interrupt"):
            raise ValueError(f"kind must be 'error' or 'interrupt', got {kind!r}")
        self.inner = inner
        self.after = int(after)
        self.kind = kind
        self.calls = 0

    def caption(self, image: Image.Image) -> str:
        if self.calls >= self.after:
            if self.kind == "interrupt":
                raise KeyboardInterrupt(f"simulated Ctrl-C after {self.after} images")
            raise RuntimeError(f"simulated crash after {self.after} images")
        self.calls += 1
        return self.inner.caption(image)


class ScriptPhraseExtractor:
    """``extract(caption)`` -> the script regions' phrases found in the caption (no spaCy).

    Uses each region's ``span`` when given, else the first occurrence of its ``phrase``; the category is
    the region's ``category`` or the phrase's last word.
    """

    def __init__(self, script: Script) -> None:
        self.by_caption: dict[str, list[dict[str, Any]]] = {}
        for entry in script.by_digest.values():
            self.by_caption.setdefault(str(entry["caption"]), []).extend(entry.get("regions") or [])

    def extract(self, caption: str) -> list[Phrase]:
        phrases: dict[tuple[int, int], Phrase] = {}
        for region in self.by_caption.get(caption, []):
            text = str(region.get("phrase", ""))
            if region.get("span") is not None:
                start, end = int(region["span"][0]), int(region["span"][1])
                text = caption[start:end]
            else:
                start = caption.find(text)
                if not text or start < 0:
                    continue
                end = start + len(text)
            head = text.split()[-1]
            phrases.setdefault((start, end), Phrase(text, start, end, head, str(region.get("category") or head.lower())))
        return [phrases[k] for k in sorted(phrases)]


def build_scripted_steps(
    script: str | Mapping[str, Any],
    base_dir: Optional[str] = None,
    extractor: str = "spacy",
    caption_filter: Optional[Mapping[str, Any]] = None,
    crash_after: Optional[int] = None,
    crash_kind: str = "error",
) -> EngineSteps:
    """Steps that replay ``script`` (a dict or JSON file). A factory for :class:`~chatrex.data.engine.spec.StepsSpec`.

    Args:
        script: the script, or the path of a JSON file holding it.
        base_dir: folder of the script's relative image paths.
        extractor: ``"spacy"`` (the real :class:`SpacyPhraseExtractor`) or ``"script"``
            (:class:`ScriptPhraseExtractor`).
        caption_filter: keyword arguments of :class:`RuleBasedCaptionFilter`.
        crash_after: wrap the captioner in :class:`CrashingCaptioner` (tests of resuming).
        crash_kind: ``"error"`` or ``"interrupt"``.
    """
    from .phrases import SpacyPhraseExtractor
    from .rewrite import RuleBasedCaptionFilter

    loaded = Script.load(script, base_dir)
    captioner: Any = ScriptedCaptioner(loaded)
    if crash_after is not None:
        captioner = CrashingCaptioner(captioner, crash_after, crash_kind)
    if extractor == "spacy":
        phrase_extractor: Any = SpacyPhraseExtractor()
    elif extractor == "script":
        phrase_extractor = ScriptPhraseExtractor(loaded)
    else:
        raise ValueError(f"extractor must be 'spacy' or 'script', got {extractor!r}")
    return EngineSteps(
        captioner=captioner,
        extractor=phrase_extractor,
        grounder=ScriptedGrounder(loaded),
        region_captioner=ScriptedRegionCaptioner(loaded),
        caption_filter=RuleBasedCaptionFilter(**dict(caption_filter or {})),
    )


def build_scripted_stage(stage: str, script: str | Mapping[str, Any], base_dir: Optional[str] = None) -> Any:
    """One scripted stage (``"captioner"``, ``"grounder"``, ``"region_captioner"`` or ``"extractor"``), for
    per-stage specs (:func:`chatrex.data.engine.spec.compose_steps`)."""
    classes = {"captioner": ScriptedCaptioner, "grounder": ScriptedGrounder,
               "region_captioner": ScriptedRegionCaptioner, "extractor": ScriptPhraseExtractor}
    if stage not in classes:
        raise ValueError(f"no scripted stage {stage!r}; choose from {sorted(classes)}")
    return classes[stage](Script.load(script, base_dir))


def records_to_script(records: Iterable[Mapping[str, Any]], jsonl_dir: str | os.PathLike,
                      caption_kind: str = "brief") -> dict[str, dict[str, Any]]:
    """A script that replays existing records: the caption of kind ``caption_kind``, every grounding of
    it as script regions (span, phrase, each region's box and description, score 1.0).

    Image paths are made absolute (records hold paths relative to their JSONL folder ``jsonl_dir``).
    """
    script: dict[str, dict[str, Any]] = {}
    for record in records:
        captions = [c for c in record.get("captions") or [] if c.get("kind") == caption_kind]
        if not captions:
            continue
        caption = captions[0]
        by_id = {r["id"]: r for r in record["regions"]}
        regions = []
        for g in caption.get("groundings") or []:
            for rid in g["regions"]:
                region = by_id[rid]
                entry = {"phrase": g.get("phrase") or caption["text"][g["span"][0]:g["span"][1]],
                         "span": list(g["span"]), "box": list(region["box"]), "score": 1.0}
                if region.get("category"):
                    entry["category"] = region["category"]
                if region.get("description"):
                    entry["description"] = region["description"]
                regions.append(entry)
        image = record["image"]
        path = image if os.path.isabs(image) else os.path.abspath(os.path.join(os.fspath(jsonl_dir), image))
        script[str(Path(path))] = {"caption": caption["text"], "regions": regions}
    return script
