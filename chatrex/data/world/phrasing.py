"""Small English helpers for the scene language: articles, plurals, number words, attribute order,
lists, and text assembled with exact grounding spans.

Everything here is pure string work with no knowledge of scenes; ``language.py`` builds the scene
texts from these pieces and ``templates.py`` holds the sentence templates.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Optional, Sequence, Union

#: Adjective order before the noun: size, colour, pattern ("a small red striped car").
ATTRIBUTE_ORDER: tuple[str, ...] = ("size", "color", "pattern")

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
_ORDINAL_WORDS = (
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
).split()

# Plurals that the suffix rules get wrong.
_IRREGULAR_PLURALS = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
    "goose": "geese", "foot": "feet", "tooth": "teeth", "sheep": "sheep", "fish": "fish",
    "deer": "deer", "leaf": "leaves", "knife": "knives", "wolf": "wolves", "shelf": "shelves",
    "loaf": "loaves", "half": "halves", "calf": "calves", "life": "lives", "wife": "wives",
    "scarf": "scarves", "thief": "thieves", "roof": "roofs", "chief": "chiefs", "cliff": "cliffs",
    "photo": "photos", "piano": "pianos", "radio": "radios", "video": "videos", "zoo": "zoos",
    "tomato": "tomatoes", "potato": "potatoes", "hero": "heroes", "volcano": "volcanoes",
    "cactus": "cacti", "fungus": "fungi", "bus": "buses", "ox": "oxen", "die": "dice",
    "aircraft": "aircraft", "series": "series", "species": "species",
}
# Words starting with a vowel letter but a consonant sound, and the reverse.
_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "uti", "ure", "euro", "eu", "one", "once", "ufo")
_VOWEL_SOUND_PREFIXES = ("hour", "honest", "honor", "honour", "heir")


def number_word(n: int) -> str:
    """``3 -> "three"`` for 0..20, digits beyond."""
    if n < 0:
        raise ValueError(f"number_word needs a count >= 0, got {n}")
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def ordinal_word(n: int) -> str:
    """``2 -> "second"`` for 1..20, ``"21st"``-style beyond."""
    if n < 1:
        raise ValueError(f"ordinal_word needs a rank >= 1, got {n}")
    if n < len(_ORDINAL_WORDS):
        return _ORDINAL_WORDS[n]
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def indefinite_article(phrase: str) -> str:
    """``"a"`` or ``"an"`` for the phrase that follows (by the sound of its first word)."""
    word = phrase.strip().lower()
    if not word:
        raise ValueError("indefinite_article needs a non-empty phrase")
    if word.startswith(_VOWEL_SOUND_PREFIXES):
        return "an"
    if word.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    """``"orange cat" -> "an orange cat"``."""
    return f"{indefinite_article(phrase)} {phrase}"


@lru_cache(maxsize=4096)
def _pluralize_word(word: str) -> str:
    low = word.lower()
    if low in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[low]
        return word[0] + plural[1:] if word[:1].isupper() else plural
    if low.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        return word[:-1] + "ies"
    if low.endswith("fe") and len(low) > 2:
        return word[:-2] + "ves"
    return word + "s"


def pluralize(noun: str, plurals: Optional[Mapping[str, str]] = None) -> str:
    """Plural of a (possibly multi-word) noun: an explicit ``plurals`` entry wins, else English rules
    on the last word (``"traffic light" -> "traffic lights"``)."""
    if plurals and noun in plurals:
        return plurals[noun]
    head, _, last = noun.rpartition(" ")
    return f"{head} {_pluralize_word(last)}" if head else _pluralize_word(last)


def counted(n: int, noun: str, plural: str) -> str:
    """``(1, "car") -> "a car"``, ``(3, "car") -> "three cars"`` (noun may carry adjectives)."""
    if n == 1:
        return with_article(noun)
    return f"{number_word(n)} {plural}"


def join_words(items: Sequence[str], conjunction: str = "and") -> str:
    """``["a", "b", "c"] -> "a, b and c"``."""
    if not items:
        raise ValueError("join_words needs at least one item")
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def capitalize_first(text: str) -> str:
    """Upper-case the first character only (``"the red car" -> "The red car"``)."""
    return text[:1].upper() + text[1:]


def adjectives(attributes: Mapping[str, Optional[str]], fields: Iterable[str] = ATTRIBUTE_ORDER,
               silent: Iterable[str] = ()) -> list[str]:
    """Attribute values of ``fields`` in the fixed adjective order, skipping absent values and the
    ``silent`` ones (values that read badly as adjectives, such as a "plain" pattern)."""
    wanted = set(fields)
    silent = set(silent)
    out = []
    for field in ATTRIBUTE_ORDER:
        value = attributes.get(field)
        if field in wanted and value and value not in silent:
            out.append(str(value))
    return out


def noun_phrase(noun: str, attributes: Mapping[str, Optional[str]],
                fields: Iterable[str] = ATTRIBUTE_ORDER, silent: Iterable[str] = ()) -> str:
    """Bare noun phrase with ordered adjectives: ``"small red striped car"``."""
    return " ".join([*adjectives(attributes, fields, silent), noun])


# --------------------------------------------------------------------------- grounded text


@dataclass(frozen=True)
class Ref:
    """A template slot value that is grounded to regions: ``Ref("two red cars", (0, 4))``."""

    text: str
    regions: tuple[int, ...]


class Seq(tuple):
    """A slot value made of pieces written one after another (``Seq(("to the left of ", ref))``);
    a plain ``list`` slot value is instead joined as ``"a, b and c"``."""


Slot = Union[str, Ref, Seq, Sequence[Union[str, Ref]]]


@lru_cache(maxsize=1024)
def _parse_template(template: str) -> tuple[tuple[str, Optional[str]], ...]:
    pieces = []
    for literal, field, spec, conv in string.Formatter().parse(template):
        if spec or conv:
            raise ValueError(f"template {template!r}: format specs are not supported")
        pieces.append((literal, field))
    return tuple(pieces)


class GroundedText:
    """Text assembled piece by piece; grounded pieces record their exact character span.

    ``groundings`` is a list of ``{"span": [s, e], "phrase": text[s:e], "regions": [...]}`` in the
    design.md record format. Sentences added with :meth:`sentence` start with a capital letter (the
    capital is part of the grounded phrase when the sentence opens with one).
    """

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.groundings: list[dict] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._length += len(text)

    def add_ref(self, ref: Ref) -> None:
        start = self._length
        self.add(ref.text)
        self.groundings.append({"span": [start, self._length], "phrase": ref.text,
                                "regions": sorted(ref.regions)})

    def fill(self, template: str, slots: Mapping[str, Slot], capitalize: bool = False) -> None:
        """Append ``template`` with ``{name}`` slots filled; :class:`Ref` values are grounded."""
        first = True
        for literal, field in _parse_template(template):
            if literal:
                self.add(capitalize_first(literal) if capitalize and first else literal)
                first = False
            if field is None:
                continue
            if field not in slots:
                raise KeyError(f"template {template!r} needs slot {field!r}")
            value = slots[field]
            if isinstance(value, Seq):
                self._add_pieces(value, capitalize and first)
            elif isinstance(value, (list, tuple)):
                self._add_list(value, capitalize and first)
            elif isinstance(value, Ref):
                text = capitalize_first(value.text) if capitalize and first else value.text
                self.add_ref(Ref(text, value.regions))
            else:
                self.add(capitalize_first(value) if capitalize and first else value)
            first = False

    def _add_pieces(self, pieces: Sequence[Union[str, Ref]], capitalize: bool) -> None:
        for i, item in enumerate(pieces):
            cap = capitalize and i == 0
            if isinstance(item, Ref):
                self.add_ref(Ref(capitalize_first(item.text) if cap else item.text, item.regions))
            else:
                self.add(capitalize_first(item) if cap else item)

    def _add_list(self, items: Sequence[Union[str, Ref]], capitalize: bool) -> None:
        """``[a, b, c]`` as ``"a, b and c"``, each :class:`Ref` grounded on its own."""
        if not items:
            raise ValueError("a list slot needs at least one item")
        for i, item in enumerate(items):
            if i:
                self.add(" and " if i == len(items) - 1 else ", ")
            if isinstance(item, Ref):
                text = capitalize_first(item.text) if capitalize and i == 0 else item.text
                self.add_ref(Ref(text, item.regions))
            else:
                self.add(capitalize_first(item) if capitalize and i == 0 else item)

    def sentence(self, template: str, slots: Mapping[str, Slot]) -> None:
        """Append one capitalised sentence, separated from earlier text by a space."""
        if self._length:
            self.add(" ")
        self.fill(template, slots, capitalize=True)

    def to_dict(self) -> dict:
        return {"text": self.text, "groundings": [dict(g) for g in self.groundings]}
