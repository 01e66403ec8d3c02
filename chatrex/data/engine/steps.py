"""The five pluggable stages of the data engine, as small protocols, plus the values they pass around.

A stage is any object with the one method below (duck typing; subclassing the protocol is optional):

========================  =====================================================================
stage                     method
========================  =====================================================================
image captioner           ``Captioner.caption(image) -> str`` (one sentence)
noun-phrase extractor     ``PhraseExtractor.extract(caption) -> list[Phrase]``
grounder                  ``Grounder.ground(image, phrases) -> list[(phrase, box, score)]``
region captioner          ``RegionCaptioner.caption(image, box, phrase) -> str``
caption filter/rewriter   ``CaptionFilter.rewrite(phrase, caption) -> str | None``
========================  =====================================================================

``image`` is always an RGB :class:`PIL.Image.Image` (already loaded through
:func:`chatrex.utils.image.load_image`); boxes are ``[x0, y0, x1, y1]`` in pixels of that image.
:class:`EngineSteps` bundles one object per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

from PIL import Image



class EngineStepError(RuntimeError):
    """A stage returned something the engine cannot use (wrong type, bad box, unknown phrase)."""


@dataclass(frozen=True)
class Phrase:
    """A noun phrase found in a caption.

    Attributes:
        text: the phrase exactly as it appears in the caption (``caption[start:end] == text``).
        start, end: character span into the caption.
        head: the head noun as written (``"cars"``).
        category: the category name: the head noun's lemma with its compound modifiers
            (``"car"``, ``"fire hydrant"``), lower case.
    """

    text: str
    start: int
    end: int
    head: str
    category: str

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end, "head": self.head, "category": self.category}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Phrase":
        return cls(str(data["text"]), int(data["start"]), int(data["end"]), str(data["head"]), str(data["category"]))


@dataclass(frozen=True)
class GroundedPhrase:
    """One box found for one phrase. ``box`` is ``[x0, y0, x1, y1]`` in image pixels."""

    phrase: Phrase
    box: tuple[float, float, float, float]
    score: float


@runtime_checkable
class Captioner(Protocol):
    def caption(self, image: Image.Image) -> str:
        """Describe the whole image in one sentence."""


@runtime_checkable
class PhraseExtractor(Protocol):
    def extract(self, caption: str) -> list[Phrase]:
        """Return the groundable noun phrases of ``caption`` with exact character spans."""


@runtime_checkable
class Grounder(Protocol):
    def ground(self, image: Image.Image, phrases: Sequence[Phrase]) -> list[tuple[Phrase, Sequence[float], float]]:
        """Return ``(phrase, box_xyxy_pixels, score)`` for every box found; a phrase may get 0..n boxes."""


@runtime_checkable
class RegionCaptioner(Protocol):
    def caption(self, image: Image.Image, box: Sequence[float], phrase: Phrase) -> str:
        """Describe the region ``box`` (which shows ``phrase``) in one sentence."""


@runtime_checkable
class CaptionFilter(Protocol):
    def rewrite(self, phrase: Phrase, caption: str) -> Optional[str]:
        """Return a 5-10 word referring expression for the region, or ``None`` to reject the caption."""


@dataclass
class EngineSteps:
    """One object per stage. Build it in each worker (see :mod:`chatrex.data.engine.spec`)."""

    captioner: Captioner
    extractor: PhraseExtractor
    grounder: Grounder
    region_captioner: RegionCaptioner
    caption_filter: CaptionFilter
    #: free-form description of the steps, stored in the run's manifest.
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, method in (
            ("captioner", "caption"),
            ("extractor", "extract"),
            ("grounder", "ground"),
            ("region_captioner", "caption"),
            ("caption_filter", "rewrite"),
        ):
            step = getattr(self, name)
            if not callable(getattr(step, method, None)):
                raise TypeError(
                    f"EngineSteps.{name} must have a .{method}(...) method; got an object of type "
                    f"{type(step).__name__}"
                )
