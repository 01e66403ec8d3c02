"""Stage 6: check each region caption against its phrase and rewrite it as a short referring expression.

The paper uses an LLM for this; :class:`RuleBasedCaptionFilter` is a transparent rule-based version
(any object with ``rewrite(phrase, caption) -> str | None`` can replace it):

1. reject captions that are empty, hedge or refuse ("I can't tell", "unclear"), ask a question, or do
   not mention the phrase's head noun (any inflection: car / cars, man / men, box / boxes; or a
   synonym: bike / bicycle);
2. strip framing ("In this image, ...", "This is ...", "There is ...", "The region shows ...");
3. turn the sentence into a noun phrase: a leading "a"/"an" becomes "the"; "X is parked by ..." becomes
   "X parked by ..."; "X is red" becomes "X that is red"; "X sits on ..." becomes "X sitting on ..."
   (a list of frequent verbs);
4. stop at the first clause break (comma, "and", "while", ...) once ``min_words`` words are reached,
   cut to at most ``max_words`` words before a preposition where possible, never ending on a function
   word, and without inner commas; expressions shorter than ``min_words`` are completed from the
   phrase's modifiers or rejected.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional

from .steps import Phrase

#: Phrases that mark a caption as a refusal or guess.
HEDGES = (
    "i can't", "i cannot", "i can not", "i'm not sure", "i am not sure", "not sure", "unclear", "unable to",
    "cannot be determined", "can't be determined", "hard to tell", "difficult to tell", "impossible to",
    "no visible", "nothing visible", "not visible", "sorry", "as an ai", "it is unknown", "unknown object",
)

_FRAMING = re.compile(
    r"^(?:(?:in|within) (?:this|the) (?:image|picture|photo|photograph|region|box|crop|area),?\s+"
    r"|(?:this|the) (?:image|picture|photo|photograph|region|box|crop|area) (?:shows|depicts|contains|features|is of)\s+"
    r"|(?:this|that|it) is\s+|(?:this|that|it)'s\s+|there (?:is|are)\s+|(?:we|you) can see\s+|i see\s+"
    r"|(?:a |an )?(?:close-up|closeup|view|photo|picture|image) of\s+)",
    re.IGNORECASE,
)

_FUNCTION_WORDS = frozenset(
    """a an the of to with and or but on in at by for from into onto near next behind beside under over
    above below between while that which who whose is are was were be its their his her as than""".split()
)
_PREPOSITIONS = frozenset(
    """on in at by with near next behind beside besides under over above below between against along across
    around inside outside atop upon beneath underneath toward towards through from into onto off up down""".split()
)
_COPULAS = ("is", "are", "was", "were")
#: Words before which a long expression may be cut ("... standing at the edge | of the square").
_CUT_BEFORE = _PREPOSITIONS | {"of", "where", "that", "which", "whose", "while", "as"}
#: Frequent finite verbs of region captions and their "-ing" forms ("the dog sits on" -> "the dog sitting on").
_FINITE_TO_ING = {
    "sits": "sitting", "sit": "sitting", "stands": "standing", "stand": "standing", "lies": "lying",
    "lie": "lying", "rests": "resting", "rest": "resting", "hangs": "hanging", "hang": "hanging",
    "walks": "walking", "walk": "walking", "faces": "facing", "face": "facing", "holds": "holding",
    "hold": "holding", "wears": "wearing", "wear": "wearing", "runs": "running", "run": "running",
    "flies": "flying", "fly": "flying", "looks": "looking", "look": "looking", "leans": "leaning",
    "lean": "leaning", "plays": "playing", "play": "playing", "sleeps": "sleeping", "sleep": "sleeping",
    "eats": "eating", "eat": "eating", "rides": "riding", "ride": "riding", "waits": "waiting",
    "wait": "waiting", "carries": "carrying", "carry": "carrying", "covers": "covering",
    "cover": "covering", "contains": "containing", "contain": "containing", "grazes": "grazing",
    "graze": "grazing", "swims": "swimming", "swim": "swimming", "jumps": "jumping", "jump": "jumping",
    "floats": "floating", "float": "floating", "leads": "leading", "lead": "leading", "has": "with",
    "have": "with", "shows": "showing", "show": "showing",
}
_CLAUSE_BREAKS = re.compile(r",|;|:| - | and | while | which | who | as | but ")

#: Nouns that name the same thing; a caption naming any of them mentions the others (own list, small).
DEFAULT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "bicycle": ("bike",), "car": ("automobile",), "motorcycle": ("motorbike",), "airplane": ("plane", "aeroplane", "aircraft"),
    "couch": ("sofa",), "television": ("tv",), "cup": ("mug",), "umbrella": ("parasol",), "person": ("human",),
    "truck": ("lorry",), "phone": ("cellphone", "smartphone"), "puppy": ("dog",), "kitten": ("cat",),
}

_IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "foot": "feet", "tooth": "teeth",
    "mouse": "mice", "goose": "geese", "knife": "knives", "leaf": "leaves", "shelf": "shelves", "wolf": "wolves",
    "sheep": "sheep", "fish": "fish", "deer": "deer",
}


def head_forms(words: Iterable[str]) -> set[str]:
    """Lower-case surface forms that count as mentioning any of ``words`` (singular and plural)."""
    forms: set[str] = set()
    for word in words:
        w = word.lower().strip()
        if not w:
            continue
        forms.add(w)
        for sing, plur in _IRREGULAR_PLURALS.items():
            if w == sing:
                forms.add(plur)
            if w == plur:
                forms.add(sing)
        forms.update({w + "s", w + "es"})
        if w.endswith("y") and len(w) > 2:
            forms.add(w[:-1] + "ies")
        if w.endswith("ies"):
            forms.add(w[:-3] + "y")
        if w.endswith("es"):
            forms.add(w[:-2])
        if w.endswith("s") and not w.endswith("ss"):
            forms.add(w[:-1])
    return forms


def _is_participle(word: str) -> bool:
    """A rough test for "-ing" / "-ed" verb forms ("parked", "sitting"; not "red", "bed", "king")."""
    return len(word) > 4 and (word.endswith("ing") or word.endswith("ed"))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower())


def _synonym_groups(synonyms: Optional[Mapping[str, Iterable[str]]]) -> list[set[str]]:
    """``{name: [other nouns]}`` as groups of last words ("floor lamp" counts as "lamp")."""
    groups = []
    for name, others in (synonyms or {}).items():
        if isinstance(others, str):
            others = [others]
        groups.append({w.lower().split()[-1] for w in [name, *others] if w.strip()})
    return groups


def phrase_targets(phrase: Phrase, synonyms: Optional[Mapping[str, Iterable[str]]] = None) -> set[str]:
    """The head noun, the category's last word and their synonyms, in every inflection."""
    targets = {phrase.head.lower()}
    if phrase.category:
        targets.add(phrase.category.split()[-1].lower())
    forms = head_forms(targets)
    for group in _synonym_groups(synonyms):
        if forms & head_forms(group):
            targets |= group
    return head_forms(targets)


def mentions_head(phrase: Phrase, caption: str, synonyms: Optional[Mapping[str, Iterable[str]]] = None) -> bool:
    """Whether ``caption`` mentions the phrase's head noun (or the last word of its category, or a synonym)."""
    forms = phrase_targets(phrase, synonyms)
    return any(w in forms for w in _words(caption))


class RuleBasedCaptionFilter:
    """``rewrite(phrase, caption) -> str | None``: verify a region caption and shorten it to a referring
    expression of ``min_words``..``max_words`` words (see the module docstring for the rules).

    Args:
        min_words, max_words: length of the referring expression.
        hedges: lower-case substrings that mark a refusal or a guess.
        synonyms: ``{name: [other nouns]}`` accepted as mentions of each other, added to
            :data:`DEFAULT_SYNONYMS` (a caption may call the phrase's "bike" a "bicycle").
        default_synonyms: include :data:`DEFAULT_SYNONYMS`.
    """

    def __init__(self, min_words: int = 5, max_words: int = 10, hedges: Iterable[str] = HEDGES,
                 synonyms: Optional[Mapping[str, Iterable[str]]] = None, default_synonyms: bool = True) -> None:
        if not 1 <= min_words <= max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")
        self.min_words = int(min_words)
        self.max_words = int(max_words)
        self.hedges = tuple(h.lower() for h in hedges)
        merged: dict[str, list[str]] = {k: list(v) for k, v in DEFAULT_SYNONYMS.items()} if default_synonyms else {}
        for name, others in (synonyms or {}).items():
            merged.setdefault(name, []).extend([others] if isinstance(others, str) else list(others))
        self.synonyms = merged

    # -- checks -------------------------------------------------------------------------------
    def reject_reason(self, phrase: Phrase, caption: str) -> Optional[str]:
        """Why the caption is rejected, or ``None`` when it passes the checks."""
        if not isinstance(caption, str) or not caption.strip():
            return "empty caption"
        low = " ".join(caption.lower().split())
        if "?" in low:
            return "caption is a question"
        for hedge in self.hedges:
            if hedge in low:
                return f"caption hedges or refuses ({hedge!r})"
        if not mentions_head(phrase, caption, self.synonyms):
            return f"caption does not mention the head noun {phrase.head!r}"
        return None

    # -- rewriting ----------------------------------------------------------------------------
    def rewrite(self, phrase: Phrase, caption: str) -> Optional[str]:
        if self.reject_reason(phrase, caption) is not None:
            return None
        text = " ".join(caption.strip().split())
        text = re.split(r"(?<=[.!])\s", text, maxsplit=1)[0]  # first sentence only
        text = text.rstrip(" .!;:,")
        for _ in range(3):
            stripped = _FRAMING.sub("", text, count=1)
            if stripped == text:
                break
            text = stripped
        words = text.split()
        if not words:
            return None
        words = self._as_noun_phrase(words, phrase)
        words = self._cut(words, phrase)
        if words is None:
            return None
        out = " ".join(w.strip(",;:") for w in words)  # a referring expression has no inner commas
        if not words[0].isupper() or len(words[0]) == 1:  # keep acronyms ("TV") as written
            out = out[0].lower() + out[1:]
        return out if mentions_head(phrase, out, self.synonyms) else None

    def _as_noun_phrase(self, words: list[str], phrase: Phrase) -> list[str]:
        first = words[0].lower()
        if first in ("a", "an", "one", "some"):
            words = ["the"] + words[1:]
        forms = phrase_targets(phrase, self.synonyms)
        seen_head = False
        # the first verb after the subject: "the car is parked ..." -> "the car parked ...",
        # "the car is red" -> "the car that is red", "the dog sits on ..." -> "the dog sitting on ..."
        for i, w in enumerate(words[1:9], start=1):
            lw = w.lower().strip(",;:")
            seen_head = seen_head or words[i - 1].lower().strip(",;:") in forms
            if lw in _COPULAS:
                nxt = words[i + 1].lower() if i + 1 < len(words) else ""
                if not nxt:
                    return words[:i]
                if _is_participle(nxt) or nxt in _PREPOSITIONS:
                    return words[:i] + words[i + 1 :]
                return words[:i] + ["that"] + words[i:]
            if seen_head and lw in _FINITE_TO_ING:
                return words[:i] + [_FINITE_TO_ING[lw]] + words[i + 1 :]
            if lw in _PREPOSITIONS or _is_participle(lw):
                break
        return words

    def _cut(self, words: list[str], phrase: Phrase) -> Optional[list[str]]:
        text = " ".join(words)
        # stop at the first clause break ("..., talking") when what comes before is long enough
        for m in _CLAUSE_BREAKS.finditer(text):
            prefix = text[: m.start()].split()
            if len(prefix) >= self.min_words:
                words = prefix
                break
        if len(words) > self.max_words:
            # the longest prefix that ends before a preposition, else a hard cut
            best: Optional[list[str]] = None
            for i in range(self.min_words, min(len(words), self.max_words + 1)):
                if words[i].lower() in _CUT_BEFORE and words[i - 1].lower() not in _FUNCTION_WORDS:
                    best = words[:i]
            words = best if best is not None else words[: self.max_words]
        while words and words[-1].lower().strip(",;:") in _FUNCTION_WORDS:
            words = words[:-1]
        words = [w.rstrip(",;:") if i == len(words) - 1 else w for i, w in enumerate(words)]
        if len(words) < self.min_words:
            words = self._complete(words, phrase)
        if words is None or not (self.min_words <= len(words) <= self.max_words):
            return None
        return words

    def _complete(self, words: list[str], phrase: Phrase) -> Optional[list[str]]:
        """Lengthen a short expression with the phrase's own modifiers ("the car that is red" + "small")."""
        phrase_words = phrase.text.split()
        have = {w.lower() for w in words}
        extra = [w for w in phrase_words if w.lower() not in have and w.lower() not in _FUNCTION_WORDS]
        if not extra:
            return None
        # put the phrase's modifiers right after the leading determiner
        if words and words[0].lower() == "the":
            words = ["the"] + extra + words[1:]
        else:
            words = ["the"] + extra + words
        return words if len(words) >= self.min_words else None
