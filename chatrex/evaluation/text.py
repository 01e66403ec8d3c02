"""Normalising names and phrases so that answers can be compared with ground truth.

``normalize_phrase("The Red Cars.") == "red car"``: lower case, punctuation and leading articles
removed, the last word made singular by simple English rules. :class:`SynonymTable` maps any
normalised name or synonym to its canonical category.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

_TAG = re.compile(r"<[^<>]{0,40}>")
_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")
_LEADING = ("a", "an", "the", "some", "this", "that", "these", "those")
_IRREGULAR = {
    "people": "person", "persons": "person", "men": "man", "women": "woman", "children": "child",
    "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose", "knives": "knife",
    "leaves": "leaf", "shelves": "shelf", "wolves": "wolf", "oxen": "ox", "sheep": "sheep",
    "fish": "fish", "deer": "deer", "skis": "ski", "glasses": "glasses", "scissors": "scissors",
    "pants": "pants", "jeans": "jeans", "shorts": "shorts", "trousers": "trousers",
}
_KEEP_S = ("ss", "us", "is", "ous", "ics")

#: Small built-in synonym table (canonical → alternatives) for common detection vocabularies. Data
#: may add more (e.g. LVIS ``categories[*].synonyms``).
DEFAULT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "boy", "girl", "child", "kid", "human", "pedestrian", "player", "lady",
               "guy", "baby"),
    "bicycle": ("bike",),
    "motorcycle": ("motorbike", "motor bike"),
    "airplane": ("aeroplane", "plane", "aircraft", "jet"),
    "car": ("automobile", "sedan"),
    "couch": ("sofa",),
    "tv": ("television", "tv monitor", "tvmonitor"),
    "cell phone": ("mobile phone", "phone", "cellphone", "smartphone"),
    "dining table": ("table", "diningtable"),
    "potted plant": ("pottedplant", "houseplant", "plant"),
    "laptop": ("notebook computer",),
    "cup": ("mug",),
    "sports ball": ("ball",),
    "hair drier": ("hair dryer", "hairdryer"),
}


def strip_tags(text: str) -> str:
    """Remove markup such as ``<ground>``, ``</objects>`` and ``<obj3>`` from model text."""
    return _TAG.sub(" ", text or "")


def singular(word: str) -> str:
    """Singular form of one English word by simple rules (``boxes`` → ``box``, ``bus`` stays)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_KEEP_S):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses", "oes")):
        return word[:-2]
    return word[:-1]


def normalize_phrase(text: str, singularize: bool = True) -> str:
    """Canonical form of a name or phrase for comparison.

    Lower case; tags, punctuation, ``_``/``-``/``/`` become spaces; leading articles and
    demonstratives are dropped; the last word is made singular (when ``singularize``).
    """
    s = strip_tags(text).lower().replace("_", " ").replace("-", " ").replace("/", " ")
    s = _PUNCT.sub(" ", s)
    words = _SPACE.sub(" ", s).strip().split(" ")
    words = [w for w in words if w]
    while len(words) > 1 and words[0] in _LEADING:
        words = words[1:]
    if words and singularize:
        words[-1] = singular(words[-1])
    return " ".join(words)


class SynonymTable:
    """Maps normalised names and synonyms to canonical category names.

    ``SynonymTable(["car", "person"], {"person": ["man"]}).lookup("Men") == "person"``. Only the
    given categories are answers; a synonym listed for a category not in ``categories`` is ignored.
    When two categories claim the same synonym, the category's own name wins over a synonym, and
    otherwise the first category given wins.
    """

    def __init__(
        self,
        categories: Iterable[str],
        synonyms: Mapping[str, Iterable[str]] | None = None,
        use_defaults: bool = True,
    ) -> None:
        self.categories = list(dict.fromkeys(categories))
        self._table: dict[str, str] = {}
        for name in self.categories:
            self._table.setdefault(normalize_phrase(name), name)
        extra: dict[str, list[str]] = {}
        if use_defaults:
            for canon, alts in DEFAULT_SYNONYMS.items():
                extra.setdefault(normalize_phrase(canon), []).extend(alts)
        for canon, alts in (synonyms or {}).items():
            extra.setdefault(normalize_phrase(canon), []).extend(alts)
        for name in self.categories:
            for alt in extra.get(normalize_phrase(name), ()):
                self._table.setdefault(normalize_phrase(alt), name)

    def lookup(self, phrase: str) -> str | None:
        """Canonical category for ``phrase``, or None when it names none of the categories."""
        return self._table.get(normalize_phrase(phrase))

    def same(self, phrase: str, category: str) -> bool:
        """Whether ``phrase`` names ``category`` (exactly after normalisation, or via a synonym)."""
        if normalize_phrase(phrase) == normalize_phrase(category):
            return True
        return self.lookup(phrase) == category

    def __contains__(self, phrase: str) -> bool:
        return self.lookup(phrase) is not None

    def __len__(self) -> int:
        return len(self.categories)
