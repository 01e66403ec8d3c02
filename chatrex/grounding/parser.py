"""Grounded answers as data: parse ChatRex's tagged output into plain text plus groundings.

ChatRex answers by *retrieving* boxes: every grounded phrase is followed by the indices of the input
boxes it refers to::

    The <ground>red car</ground><objects><obj3><obj7></objects> is parked by a <ground>tree</ground><objects><obj1></objects>.

:func:`parse_grounded` turns such a string into a :class:`GroundedAnswer`:

* ``text``: the plain answer, tags removed, each phrase kept in place ("The red car is parked by a tree.").
* ``groundings``: one :class:`Grounding` per well-formed ``<ground>…</ground><objects>…</objects>`` pair,
  with the phrase, its character ``span`` into ``text`` and its box ``indices`` in the order given.
* ``dropped``: human-readable notes on everything that was malformed and therefore ignored.

Rules (the parser never raises, whatever the string):

* Whitespace (even newlines) between ``</ground>`` and ``<objects>`` is tolerated and removed.
  Whitespace, commas and semicolons between ``<objK>`` tokens are tolerated.
* A phrase's span is trimmed of surrounding whitespace and of trailing ``, . ; : ! ?`` (the official
  model writes ``<ground>plaid couch,</ground>``); the trimmed characters stay in ``text``.
* ``<objects></objects>`` is a valid, *empty* grounding: it is how an answer says "none of the boxes"
  (see :func:`render_grounded` and ``chatrex.grounding.prompts.detection_answer``).
* A ``<ground>`` whose ``</ground>`` is missing but which is followed directly by ``<objects>`` is closed
  there (noted). Any other unclosed ``<ground>`` keeps its text but yields no grounding (noted).
* An ``<objects>`` block that is not closed by ``</objects>`` (before other text, another tag or the end
  of the string, e.g. a generation cut off by ``max_new_tokens``) yields no grounding (noted).
* ``<objects>`` with no phrase right before it, ``<ground>…</ground>`` with no ``<objects>`` after it,
  empty phrases, indices ``>= num_boxes``, an index repeated within one grounding, stray tokens
  (a lone ``</objects>``, ``</ground>`` or ``<obj12>`` outside a block) and leaked placeholders
  (``<objfeat>``, ``<image>``) are removed from the text and noted (identical notes once, with a count).
* End-of-sequence / padding tokens (``</s>``, ``<s>``, ``<|im_end|>``, ``<|endoftext|>``, ...) are stripped
  silently; the final text is stripped of leading and trailing whitespace.
* Text right after ``</objects>`` is kept verbatim (``<ground>sneaker</ground><objects><obj0></objects>s``
  reads "sneakers"); no spaces are inserted.

**Region answers as data.** :func:`read_region_captions` (region caption and category answers:
region index → text), :func:`read_classification` (the candidate a region-classification answer
picks) and :func:`read_relation` (a region-relation answer as :class:`RegionRelation`) read the fixed
answer forms of ``chatrex.grounding.prompts`` (RegionGPT's task-guided region tasks). Like
:func:`parse_grounded` they never raise on a malformed answer; they return what they could read
(``{}`` / ``None``).

The module imports nothing heavy (no torch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

__all__ = [
    "Grounding",
    "GroundedAnswer",
    "parse_grounded",
    "render_grounded",
    "boxes_for",
    "RegionRelation",
    "read_region_captions",
    "read_classification",
    "read_relation",
    "EOS_TOKENS",
    "PHRASE_TRAILING_PUNCTUATION",
]

#: End-of-sequence, start and padding tokens of the LLMs ChatRex is built on; stripped silently.
EOS_TOKENS: tuple[str, ...] = (
    "</s>",
    "<s>",
    "<unk>",
    "<pad>",
    "<|im_end|>",
    "<|im_start|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
)
#: Characters trimmed from the end of a phrase's span (they stay in the text).
PHRASE_TRAILING_PUNCTUATION = ",.;:!?"
#: Index digits beyond this length are treated as out of range without converting them.
_MAX_INDEX_DIGITS = 9
#: Longest excerpt of offending text quoted in a note.
_NOTE_EXCERPT = 40

_TOKEN_RE = re.compile(
    r"<ground>|</ground>|<objects>|</objects>|<obj(\d+)>|<objfeat>|<image>|"
    + "|".join(re.escape(t) for t in EOS_TOKENS)
)
_BLOCK_FILLER_RE = re.compile(r"[\s,;]*")


@dataclass
class Grounding:
    """One grounded phrase.

    Attributes:
        phrase: the phrase as it appears in the answer text.
        span: ``(start, end)`` character offsets into :attr:`GroundedAnswer.text`;
            ``text[start:end] == phrase``.
        indices: box indices (``<objK>`` → ``K``) in the order the model gave them, without repeats;
            empty when the model answered that no box matches.
    """

    phrase: str
    span: tuple[int, int]
    indices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.span = (int(self.span[0]), int(self.span[1]))
        self.indices = [int(i) for i in self.indices]

    def to_dict(self) -> dict[str, Any]:
        return {"phrase": self.phrase, "span": [self.span[0], self.span[1]], "indices": list(self.indices)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Grounding":
        """Inverse of :meth:`to_dict`; also accepts the data schema's ``"regions"`` key for indices."""
        indices = data.get("indices", data.get("regions", []))
        return cls(phrase=str(data["phrase"]), span=tuple(data["span"]), indices=list(indices))


@dataclass
class GroundedAnswer:
    """A parsed ChatRex answer: plain text, its groundings and notes on what was dropped."""

    text: str
    groundings: list[Grounding] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def phrases(self) -> list[str]:
        """The grounded phrases, in order (repeats kept)."""
        return [g.phrase for g in self.groundings]

    @property
    def indices(self) -> list[int]:
        """Every box index grounded anywhere in the answer, first mention first, without repeats."""
        seen: dict[int, None] = {}
        for g in self.groundings:
            for i in g.indices:
                seen.setdefault(i, None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``{"text", "groundings": [{"phrase", "span", "indices"}], "dropped"}``."""
        return {
            "text": self.text,
            "groundings": [g.to_dict() for g in self.groundings],
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GroundedAnswer":
        return cls(
            text=str(data["text"]),
            groundings=[Grounding.from_dict(g) for g in data.get("groundings", [])],
            dropped=[str(d) for d in data.get("dropped", [])],
        )

    def to_tagged(self) -> str:
        """The answer in ChatRex's tagged format (see :func:`render_grounded`)."""
        return render_grounded(self.text, self.groundings)


def _excerpt(s: str) -> str:
    s = s if len(s) <= _NOTE_EXCERPT else s[: _NOTE_EXCERPT - 1] + "…"
    return repr(s)


class _Parser:
    """State machine over the tag tokens of one answer (see the module docstring for the rules)."""

    def __init__(self, num_boxes: Optional[int]) -> None:
        self.num_boxes = num_boxes
        self.buf = ""
        self.groundings: list[Grounding] = []
        self.dropped: list[str] = []
        # state: "text" | "ground" | "pending" (after </ground>) | "objects"
        self.state = "text"
        self.phrase_start = 0
        self.phrase_span: Optional[tuple[int, int]] = None  # closed phrase awaiting / owning a block
        self.pending_ws = ""
        self.block_indices: list[int] = []
        self.block_notes: list[str] = []

    # -- output -----------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return len(self.buf)

    def emit(self, s: str) -> None:
        self.buf += s

    def current_text(self, start: int, end: int) -> str:
        return self.buf[start:end]

    def phrase_of(self, span: tuple[int, int]) -> str:
        return self.current_text(*span)

    # -- transitions ------------------------------------------------------------------------------
    def open_ground(self) -> None:
        self.state = "ground"
        self.phrase_start = self.length

    def close_ground(self) -> None:
        self.phrase_span = (self.phrase_start, self.length)
        self.state = "pending"
        self.pending_ws = ""

    def abandon_pending(self, reason: str) -> None:
        """A closed phrase that got no <objects> block: keep its text, drop the grounding."""
        assert self.phrase_span is not None
        self.dropped.append(f"phrase {_excerpt(self.phrase_of(self.phrase_span))} {reason}; grounding dropped")
        self.phrase_span = None
        self.state = "text"
        self.emit(self.pending_ws)
        self.pending_ws = ""

    def open_block(self, span: Optional[tuple[int, int]]) -> None:
        self.phrase_span = span
        self.state = "objects"
        self.block_indices = []
        self.block_notes = []

    def add_index(self, digits: str) -> None:
        if len(digits) > _MAX_INDEX_DIGITS:
            self.block_notes.append(f"index <obj{digits[:_MAX_INDEX_DIGITS]}…> is out of range")
            return
        k = int(digits)
        if self.num_boxes is not None and k >= self.num_boxes:
            self.block_notes.append(f"index <obj{k}> is out of range for {self.num_boxes} boxes")
        elif k in self.block_indices:
            self.block_notes.append(f"index <obj{k}> repeated")
        else:
            self.block_indices.append(k)

    def close_block(self) -> None:
        span = self.phrase_span
        if span is None:
            if self.block_indices:
                ids = "".join(f"<obj{k}>" for k in self.block_indices)
                self.dropped.append(f"<objects> block {ids} has no preceding <ground> phrase; dropped")
            else:
                self.dropped.append("<objects> block has no preceding <ground> phrase; dropped")
        else:
            span = self.trim(span)
            if span is None:
                self.dropped.append("empty <ground></ground> phrase; grounding dropped")
            else:
                phrase = self.phrase_of(span)
                for note in self.block_notes:
                    self.dropped.append(f"{note} in grounding of {_excerpt(phrase)}; dropped")
                self.groundings.append(Grounding(phrase, span, list(self.block_indices)))
        self.phrase_span = None
        self.state = "text"

    def abandon_block(self, reason: str) -> None:
        what = _excerpt(self.phrase_of(self.phrase_span)) if self.phrase_span is not None else "no phrase"
        self.dropped.append(f"<objects> block of {what} {reason}; grounding dropped")
        self.phrase_span = None
        self.state = "text"

    def trim(self, span: tuple[int, int]) -> Optional[tuple[int, int]]:
        start, end = span
        s = self.current_text(start, end)
        lead = len(s) - len(s.lstrip())
        s = s.strip().rstrip(PHRASE_TRAILING_PUNCTUATION + " \t\r\n\f\v")
        if not s:
            return None
        return (start + lead, start + lead + len(s))

    # -- input ------------------------------------------------------------------------------------
    def feed_text(self, s: str) -> None:
        if not s:
            return
        if self.state == "pending":
            if s.isspace():
                self.pending_ws += s
                return
            self.abandon_pending("has no <objects> block after it")
        elif self.state == "objects":
            m = _BLOCK_FILLER_RE.fullmatch(s)
            if m:
                return
            self.abandon_block(f"is not closed by </objects> before text {_excerpt(s.strip())}")
        self.emit(s)

    def feed_tag(self, tag: str, digits: Optional[str]) -> None:
        if tag in EOS_TOKENS:  # end-of-sequence / padding: stripped silently in every state
            return
        state = self.state
        # Tags that end a pending phrase or an open block before being handled as plain-state tags.
        if state == "pending":
            if tag == "<objects>":
                self.pending_ws = ""
                self.open_block(self.phrase_span)
                return
            self.abandon_pending(f"has no <objects> block after it (found {tag})")
        elif state == "objects":
            if digits is not None:
                self.add_index(digits)
                return
            if tag == "</objects>":
                self.close_block()
                return
            self.abandon_block(f"is not closed by </objects> (found {tag})")
        elif state == "ground":
            if tag == "</ground>":
                self.close_ground()
                return
            if tag == "<objects>":
                self.dropped.append(
                    f"<ground>{_excerpt(self.current_text(self.phrase_start, self.length))} was not closed by "
                    "</ground>; closed at <objects>"
                )
                self.open_block((self.phrase_start, self.length))
                return
            if tag == "<ground>":
                self.dropped.append(
                    f"<ground> before {_excerpt(self.current_text(self.phrase_start, self.length))} is not "
                    "closed (found another <ground>); its text is kept ungrounded"
                )
                self.open_ground()
                return
            # other tags inside a phrase: stray, dropped; the phrase continues
            self.stray(tag, inside="a <ground> phrase")
            return
        # plain text state
        if tag == "<ground>":
            self.open_ground()
        elif tag == "<objects>":
            self.open_block(None)
        else:
            self.stray(tag, inside=None)

    def stray(self, tag: str, inside: Optional[str]) -> None:
        where = f" inside {inside}" if inside else ""
        if tag in ("<objfeat>", "<image>"):
            self.dropped.append(f"leaked placeholder {tag}{where} removed")
        elif tag.startswith("<obj") and tag not in ("<objects>", "</objects>"):
            self.dropped.append(f"stray {tag}{where} (outside an <objects> block) removed")
        else:
            self.dropped.append(f"stray {tag}{where} removed")

    def finish(self) -> GroundedAnswer:
        if self.state == "ground":
            self.dropped.append(
                f"<ground> before {_excerpt(self.current_text(self.phrase_start, self.length))} is not closed; "
                "its text is kept ungrounded"
            )
        elif self.state == "pending":
            self.abandon_pending("has no <objects> block after it (end of answer)")
        elif self.state == "objects":
            self.abandon_block("is not closed by </objects> (end of answer)")
        text = self.buf
        stripped = text.strip()
        shift = len(text) - len(text.lstrip())
        groundings = [Grounding(g.phrase, (g.span[0] - shift, g.span[1] - shift), g.indices) for g in self.groundings]
        return GroundedAnswer(stripped, groundings, _collapse(self.dropped))


def _collapse(notes: list[str]) -> list[str]:
    """Identical notes once each, first occurrence first, with a count: ``"... removed (x5)"``."""
    counts: dict[str, int] = {}
    for note in notes:
        counts[note] = counts.get(note, 0) + 1
    return [note if n == 1 else f"{note} (x{n})" for note, n in counts.items()]


def parse_grounded(text: Any, num_boxes: Optional[int] = None) -> GroundedAnswer:
    """Parse a ChatRex answer into plain text, groundings and notes; never raises.

    Args:
        text: the generated answer (special tokens kept). Non-strings are converted with ``str``
            (``None`` → empty answer), with a note.
        num_boxes: number of boxes the model was given; indices ``>= num_boxes`` are dropped (noted).
            ``None`` (or an invalid value, noted) skips the range check.

    Returns:
        :class:`GroundedAnswer` whose groundings' spans index into ``.text``.
    """
    pre_notes: list[str] = []
    if text is None:
        text = ""
    elif not isinstance(text, str):
        try:
            pre_notes.append(f"answer of type {type(text).__name__} converted to str")
            text = str(text)
        except Exception:  # noqa: BLE001 - a never-raising parser must survive odd __str__
            return GroundedAnswer("", [], pre_notes + ["answer could not be converted to str"])
    if num_boxes is not None:
        try:
            num_boxes = int(num_boxes)
            if num_boxes < 0:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            pre_notes.append(f"num_boxes={num_boxes!r} is not a non-negative int; range check skipped")
            num_boxes = None
    parser = _Parser(num_boxes)
    parser.dropped.extend(pre_notes)
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        parser.feed_text(text[pos : m.start()])
        parser.feed_tag(m.group(0), m.group(1))
        pos = m.end()
    parser.feed_text(text[pos:])
    return parser.finish()


def _as_grounding(g: Union[Grounding, Mapping[str, Any]]) -> Grounding:
    return g if isinstance(g, Grounding) else Grounding.from_dict(g)


def render_grounded(text: str, groundings: Iterable[Union[Grounding, Mapping[str, Any]]]) -> str:
    """Inverse of :func:`parse_grounded`: plain text + groundings → ChatRex's tagged string.

    Each grounding's span is wrapped in ``<ground>…</ground>`` and followed by
    ``<objects><objK>…</objects>`` (an empty block for an empty index list). Groundings may be
    :class:`Grounding` objects or mappings with ``span`` and ``indices`` (or the data schema's
    ``regions``).

    Raises:
        ValueError: a span lies outside ``text``, is empty, or overlaps another span; or an index is
            negative.
    """
    items = sorted((_as_grounding(g) for g in groundings), key=lambda g: g.span)
    pieces: list[str] = []
    pos = 0
    for g in items:
        start, end = g.span
        if not 0 <= start < end <= len(text):
            raise ValueError(f"grounding span {g.span} of {g.phrase!r} is empty or outside the text (length {len(text)})")
        if start < pos:
            raise ValueError(f"grounding span {g.span} of {g.phrase!r} overlaps the previous grounding")
        if any(i < 0 for i in g.indices):
            raise ValueError(f"grounding of {g.phrase!r} has a negative box index: {g.indices}")
        pieces.append(text[pos:start])
        pieces.append(f"<ground>{text[start:end]}</ground><objects>")
        pieces.append("".join(f"<obj{i}>" for i in g.indices))
        pieces.append("</objects>")
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def boxes_for(grounding_or_answer: Union[Grounding, GroundedAnswer], boxes: Sequence[Any]) -> list:
    """Map indices to boxes.

    Args:
        grounding_or_answer: a :class:`Grounding` or a whole :class:`GroundedAnswer`.
        boxes: the N boxes the model was given (list, numpy array or tensor of shape (N, 4)).

    Returns:
        For a Grounding: the list of its boxes (``boxes[i]`` for each index, in order). For a
        GroundedAnswer: one such list per grounding.

    Raises:
        ValueError: an index is not smaller than ``len(boxes)``.
    """
    if isinstance(grounding_or_answer, GroundedAnswer):
        return [boxes_for(g, boxes) for g in grounding_or_answer.groundings]
    if not isinstance(grounding_or_answer, Grounding):
        raise TypeError(f"boxes_for expects a Grounding or GroundedAnswer, got {type(grounding_or_answer).__name__}")
    n = len(boxes)
    out = []
    for i in grounding_or_answer.indices:
        if not 0 <= i < n:
            raise ValueError(
                f"grounding {grounding_or_answer.phrase!r} refers to <obj{i}> but only {n} boxes were given; "
                "parse with num_boxes=len(boxes) to drop such indices"
            )
        out.append(boxes[i])
    return out


# ------------------------------------------------------------------------------------------------
# Region answers as data
# ------------------------------------------------------------------------------------------------
@dataclass
class RegionRelation:
    """A region-relation answer: ``<obj{subject}>`` is ``predicate`` ``<obj{object}>``."""

    subject: int
    predicate: str
    object: int

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "predicate": self.predicate, "object": self.object}


_ARTICLE_RE = re.compile(r"^(?:a|an|the)\s+")
_WORD_EDGE = r"(?<![\w-]){}(?![\w-])"


def _as_answer(answer: Union[str, GroundedAnswer, Any], num_boxes: Optional[int] = None) -> GroundedAnswer:
    return answer if isinstance(answer, GroundedAnswer) else parse_grounded(answer, num_boxes=num_boxes)


def _normalise_name(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation or quotes, no leading article."""
    s = " ".join(str(text).lower().split()).strip(" \t\"'`" + PHRASE_TRAILING_PUNCTUATION)
    return _ARTICLE_RE.sub("", s)


def read_region_captions(answer: Union[str, GroundedAnswer], num_boxes: Optional[int] = None) -> dict[int, str]:
    """Region index → caption of a region answer (``<ground>caption</ground><objects><objK></objects>`` per
    region: region category, phrase, brief and detailed captions, classification). Groundings that name
    exactly one region count; the first caption of a region wins. ``{}`` when none is readable."""
    out: dict[int, str] = {}
    for g in _as_answer(answer, num_boxes).groundings:
        if len(g.indices) == 1 and g.phrase.strip():
            out.setdefault(g.indices[0], g.phrase.strip())
    return out


def read_classification(answer: Union[str, GroundedAnswer], candidates: Sequence[str]) -> Optional[str]:
    """The candidate category a region-classification answer picks, spelled as in ``candidates``.

    The answer's first grounded phrase (else its whole text) is compared with every candidate after
    normalisation (case, spacing, surrounding punctuation, a leading article, a plural ending); if none is
    equal, the candidates named in the text as whole words are taken, the longest first ("traffic light"
    over "light"). None when the answer names no candidate.
    """
    from chatrex.grounding.prompts import pluralize

    parsed = _as_answer(answer)
    names = [c for c in candidates if isinstance(c, str) and c.strip()]
    if not names:
        return None
    text = next((g.phrase for g in parsed.groundings if g.phrase.strip()), parsed.text)
    said = _normalise_name(text)
    for c in names:
        norm = _normalise_name(c)
        if said in (norm, _normalise_name(pluralize(norm))):
            return c
    for source in (said, _normalise_name(parsed.text)):
        found = [c for c in names if re.search(_WORD_EDGE.format(re.escape(_normalise_name(c))), source)
                 or re.search(_WORD_EDGE.format(re.escape(_normalise_name(pluralize(_normalise_name(c))))), source)]
        if found:
            return max(found, key=lambda c: len(_normalise_name(c)))
    return None


def read_relation(answer: Union[str, GroundedAnswer], predicates: Optional[Sequence[str]] = None,
                  num_boxes: Optional[int] = None) -> Optional[RegionRelation]:
    """A region-relation answer (``<ground>left of</ground><objects><obj1><obj3></objects>``) as a
    :class:`RegionRelation`: the first grounding with two regions gives (subject, predicate, object).

    With ``predicates``, the phrase is read as the predicate it equals after normalisation, else the
    longest one it contains as words ("is to the left of" → "left of"); None when it names none. None
    when no grounding names two regions.
    """
    parsed = _as_answer(answer, num_boxes)
    for g in parsed.groundings:
        if len(g.indices) != 2:
            continue
        phrase = _normalise_name(g.phrase)
        if predicates is not None:
            options = [p for p in predicates if isinstance(p, str) and p.strip()]
            exact = [p for p in options if _normalise_name(p) == phrase]
            inside = [p for p in options if re.search(_WORD_EDGE.format(re.escape(_normalise_name(p))), phrase)]
            chosen = exact or sorted(inside, key=lambda p: -len(p))
            if not chosen:
                return None
            phrase = chosen[0]
        return RegionRelation(g.indices[0], phrase, g.indices[1])
    return None
