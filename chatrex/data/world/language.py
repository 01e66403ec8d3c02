"""The language of the scene world: every ChatRex annotation granularity, derived from the scene graph.

:func:`annotate` takes a world record (``regions`` with ``category`` / ``level`` / ``parent`` /
``attributes``, ``relations``, ``width`` / ``height``; see ``docs/design.md`` § "Data records") and
fills in, exactly from that graph:

* per region: ``phrase`` (short: "a small red striped car"; parts: "the wheel of the red car"),
  ``description`` (one sentence with attributes, pose and a relation or position) and ``referring``
  (an expression that picks out exactly this region; ``None`` in the rare scene where no expression
  can, e.g. two identical boxes of one category with identical attributes);
* ``captions``: a ``brief`` and a ``detailed`` caption, each with grounded spans;
* ``conversations``: grounded question/answer pairs (colour, counting, relations, existence,
  attributes and descriptions of referred objects);
* ``synonyms``: ``{category: [other nouns]}`` for the categories of the scene that the texts may name
  by a synonym ("automobile" for "car"); the same map for every category is :data:`SYNONYMS` and
  :func:`synonyms_of`. Evaluation should accept these nouns for the category.

Referring expressions have a *structured* form (a JSON-able dict, the "spec") that
:func:`refers_uniquely` evaluates against the scene::

    {"category": "cup", "level": "instance",            # required / default "instance"
     "attributes": {"color": "blue"},                     # equal attribute values
     "parent": <spec>,                                    # parts: the parent is what <spec> selects
     "relation": {"predicate": "left of", "object": <spec>},  # a record relation to what <spec> selects
     "ordinal": {"order": "left", "rank": 2}}             # the 2nd from the left among the rest

Filters apply in that order. Orders are ``left``/``right``/``top``/``bottom`` (box centres) and
``largest``/``smallest`` (box areas); centres closer than :data:`POSITION_TOLERANCE` of the narrower
box's extent (areas within :data:`AREA_TOLERANCE` relative) are ties, and a tie at the chosen rank
selects all tied regions — so an expression that needs a hair-breadth comparison never counts as
unique.

Everything is deterministic given the ``random.Random`` passed in; the rng only chooses among
equally valid options (paraphrase templates, which relation to mention, synonyms).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Optional, Sequence

from chatrex.data.world import catalog
from chatrex.data.world.phrasing import (
    ATTRIBUTE_ORDER,
    GroundedText,
    Ref,
    Seq,
    counted,
    join_words,
    number_word,
    ordinal_word,
    pluralize,
    with_article,
)
from chatrex.data.world.templates import (
    BACKGROUND_SETTINGS,
    IMAGE_POSITIONS,
    IMAGE_WORDS,
    ORDINAL_PHRASES,
    ORIENTATION_PHRASES,
    PART_POSITIONS,
    PREDICATE_PHRASES,
    SETTING_PHRASES,
    TEMPLATES,
)

#: Other nouns the texts may use for a category (recorded per scene in ``record["synonyms"]``).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "car": ("automobile",),
    "truck": ("lorry",),
    "bus": ("coach",),
    "bicycle": ("bike",),
    "boat": ("sailboat",),
    "airplane": ("plane", "aeroplane"),
    "house": ("building",),
    "person": ("human figure",),
    "robot": ("android",),
    "cup": ("mug",),
    "mushroom": ("toadstool",),
    "umbrella": ("parasol",),
    "lamp": ("floor lamp",),
}
#: Probability that a text names a category by one of its synonyms instead of its name.
SYNONYM_RATE = 0.15

#: Attributes a referring expression may use to tell regions apart, in order of preference.
REFERRING_ATTRIBUTES: tuple[str, ...] = ("color", "pattern", "size")
#: Orderings a referring expression may use ("the leftmost cat", "the largest star").
ORDERS: tuple[str, ...] = ("left", "right", "top", "bottom", "largest", "smallest")
#: Two boxes whose centres differ by at most this fraction of the narrower box's extent along the
#: axis (and at least 1 px) are tied for left/right/top/bottom.
POSITION_TOLERANCE = 0.2
#: Box areas within this relative difference are tied for largest/smallest.
AREA_TOLERANCE = 0.10
#: Highest rank an ordinal expression may use ("the third tree from the left").
MAX_RANK = 5
#: Most categories a brief caption names.
BRIEF_MAX_CATEGORIES = 3

_SPEC_KEYS = {"category", "level", "attributes", "parent", "relation", "ordinal"}
_ADJECTIVE_FORMS = {("size", "medium"): "medium-sized"}
_SILENT_IN_PHRASES = {("pattern", "plain")}  # "a red car", not "a red plain car"


class LanguageError(ValueError):
    """A record or a referring-expression spec cannot be read (names the problem)."""


def synonyms_of(category: str) -> tuple[str, ...]:
    """Other nouns for ``category`` ("car" -> ("automobile",)); empty when it has none."""
    return SYNONYMS.get(category, ())


def plural_of(noun: str) -> str:
    """Plural of a category, part or synonym noun (catalog plural first, else English rules)."""
    cat = catalog.CATEGORY_BY_NAME.get(noun)
    if cat is not None:
        return cat.plural
    if noun in catalog.PARTS:
        return catalog.PARTS[noun]
    return pluralize(noun)


def _adjective(field: str, value: str) -> str:
    return _ADJECTIVE_FORMS.get((field, value), value)


def _adjectives(attributes: Mapping[str, Any], fields: Sequence[str], phrase: bool = False) -> list[str]:
    out = []
    for field in ATTRIBUTE_ORDER:
        value = attributes.get(field)
        if field in fields and value and not (phrase and (field, value) in _SILENT_IN_PHRASES):
            out.append(_adjective(field, value))
    return out


# ============================================================================ scene index + resolver


@dataclass(frozen=True)
class _Geometry:
    cx: float
    cy: float
    w: float
    h: float
    area: float


class SceneIndex:
    """Look-up tables over one record, shared by the resolver and the text generators."""

    def __init__(self, record: Mapping[str, Any]):
        if not isinstance(record, Mapping):
            raise LanguageError(f"a scene record must be a dict, got {type(record).__name__}")
        try:
            self.width = float(record["width"])
            self.height = float(record["height"])
        except (KeyError, TypeError, ValueError) as e:
            raise LanguageError(f"record {record.get('id')!r}: needs numeric 'width' and 'height' ({e})")
        regions = record.get("regions")
        if not isinstance(regions, list):
            raise LanguageError(f"record {record.get('id')!r}: 'regions' must be a list")
        self.regions: dict[int, Mapping[str, Any]] = {}
        self.geometry: dict[int, _Geometry] = {}
        self.groups: dict[tuple[str, str], list[int]] = {}
        self.attribute_sets: dict[tuple[str, str, str, str], set[int]] = {}
        self.children: dict[int, list[int]] = {}
        self._category: dict[int, str] = {}
        self._level: dict[int, str] = {}
        self._attributes: dict[int, Mapping[str, str]] = {}
        self._parent: dict[int, Optional[int]] = {}
        for r in regions:
            rid = r.get("id") if isinstance(r, Mapping) else None
            if not isinstance(rid, int) or rid in self.regions:
                raise LanguageError(f"record {record.get('id')!r}: region ids must be unique integers, "
                                    f"got {rid!r}")
            cat = r.get("category")
            if not isinstance(cat, str) or not cat:
                raise LanguageError(f"record {record.get('id')!r}: region {rid} has no category")
            box = r.get("box")
            if not (isinstance(box, (list, tuple)) and len(box) == 4):
                raise LanguageError(f"record {record.get('id')!r}: region {rid} box must be [x0, y0, x1, y1]")
            x0, y0, x1, y1 = (float(v) for v in box)
            if not (x1 > x0 and y1 > y0):
                raise LanguageError(f"record {record.get('id')!r}: region {rid} box {list(box)} is empty")
            level = r.get("level") or "instance"
            self.regions[rid] = r
            self._category[rid] = cat
            self._level[rid] = level
            self._attributes[rid] = r.get("attributes") or {}
            self._parent[rid] = r.get("parent")
            w, h = x1 - x0, y1 - y0
            self.geometry[rid] = _Geometry((x0 + x1) / 2, (y0 + y1) / 2, w, h, w * h)
            self.groups.setdefault((cat, level), []).append(rid)
            for field, value in (r.get("attributes") or {}).items():
                self.attribute_sets.setdefault((cat, level, field, value), set()).add(rid)
        for rid, parent in self._parent.items():
            if parent is not None:
                if parent not in self.regions:
                    raise LanguageError(f"record {record.get('id')!r}: region {rid} has missing parent "
                                        f"{parent}")
                self.children.setdefault(parent, []).append(rid)
        self.subjects: dict[tuple[str, int], set[int]] = {}
        self.relations_of: dict[int, list[tuple[str, int]]] = {}
        self.relations_to: dict[int, list[tuple[str, int]]] = {}
        subjects, relations_of, relations_to = self.subjects, self.relations_of, self.relations_to
        known = self.regions
        for rel in record.get("relations") or ():
            try:
                s, p, o = rel["subject"], rel["predicate"], rel["object"]
            except (KeyError, TypeError):
                raise LanguageError(f"record {record.get('id')!r}: a relation needs subject, predicate and "
                                    f"object, got {rel!r}") from None
            if s not in known or o not in known or not isinstance(p, str):
                raise LanguageError(f"record {record.get('id')!r}: bad relation {rel!r} (unknown region or "
                                    "non-string predicate)")
            subjects.setdefault((p, o), set()).add(s)
            relations_of.setdefault(s, []).append((p, o))
            relations_to.setdefault(o, []).append((p, s))
        self._sorted: dict[tuple[str, str, str], list[int]] = {}

    # ------------------------------------------------------------------ helpers

    def category(self, rid: int) -> str:
        return self._category[rid]

    def level(self, rid: int) -> str:
        """"instance" or "part" (a region without a level counts as an instance)."""
        return self._level[rid]

    def attributes(self, rid: int) -> Mapping[str, str]:
        return self._attributes[rid]

    def parent(self, rid: int) -> Optional[int]:
        return self._parent[rid]

    def instances(self) -> list[int]:
        return [rid for rid, level in self._level.items() if level == "instance"]

    def key(self, rid: int, order: str) -> float:
        g = self.geometry[rid]
        if order in ("left", "right"):
            return g.cx
        if order in ("top", "bottom"):
            return g.cy
        return g.area

    def tied(self, i: int, j: int, order: str) -> bool:
        """Whether regions ``i`` and ``j`` are too close in ``order`` to tell apart."""
        gi, gj = self.geometry[i], self.geometry[j]
        if order in ("left", "right"):
            return abs(gi.cx - gj.cx) <= max(1.0, POSITION_TOLERANCE * min(gi.w, gj.w))
        if order in ("top", "bottom"):
            return abs(gi.cy - gj.cy) <= max(1.0, POSITION_TOLERANCE * min(gi.h, gj.h))
        return abs(gi.area - gj.area) <= AREA_TOLERANCE * max(gi.area, gj.area)

    def sorted_group(self, category: str, level: str, order: str) -> list[int]:
        """Ids of a (category, level) group sorted by ``order`` (first = rank 1)."""
        k = (category, level, order)
        if k not in self._sorted:
            ids = self.groups.get((category, level), [])
            reverse = order in ("right", "bottom", "largest")
            self._sorted[k] = sorted(ids, key=lambda i: (self.key(i, order), i), reverse=reverse)
        return self._sorted[k]

    # ------------------------------------------------------------------ resolver

    def resolve(self, spec: Mapping[str, Any]) -> list[int]:
        """Sorted ids of the regions that ``spec`` selects (see the module docstring)."""
        if not isinstance(spec, Mapping):
            raise LanguageError(f"a referring spec must be a dict, got {type(spec).__name__}")
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise LanguageError(f"referring spec has unknown keys {sorted(unknown)}; "
                                f"allowed: {sorted(_SPEC_KEYS)}")
        category = spec.get("category")
        if not isinstance(category, str):
            raise LanguageError(f"referring spec needs a 'category' string, got {category!r}")
        level = spec.get("level", "instance")
        cands = set(self.groups.get((category, level), ()))
        for field, value in (spec.get("attributes") or {}).items():
            cands &= self.attribute_sets.get((category, level, field, value), set())
        if spec.get("parent") is not None:
            parents = set(self.resolve(spec["parent"]))
            cands = {c for c in cands if self._parent[c] in parents}
        relation = spec.get("relation")
        if relation is not None:
            if not isinstance(relation, Mapping) or "predicate" not in relation or "object" not in relation:
                raise LanguageError("referring spec relation needs 'predicate' and 'object', "
                                    f"got {relation!r}")
            objects = self.resolve(relation["object"])
            related: set[int] = set()
            for o in objects:
                related |= self.subjects.get((relation["predicate"], o), set())
            cands &= related
        ordinal = spec.get("ordinal")
        if ordinal is not None:
            order, rank = ordinal.get("order"), ordinal.get("rank", 1)
            if order not in ORDERS:
                raise LanguageError(f"referring spec ordinal order must be one of {list(ORDERS)}, "
                                    f"got {order!r}")
            if not isinstance(rank, int) or rank < 1:
                raise LanguageError(f"referring spec ordinal rank must be an integer >= 1, got {rank!r}")
            ranked = [i for i in self.sorted_group(category, level, order) if i in cands]
            if rank > len(ranked):
                return []
            chosen = ranked[rank - 1]
            cands = {i for i in ranked if self.tied(i, chosen, order)}
        return sorted(cands)


def refers_uniquely(expression_spec: Mapping[str, Any], record: Mapping[str, Any] | SceneIndex) -> list[int]:
    """Evaluate a structured referring expression against a scene: the ids of every region it picks
    out (sorted). A good expression returns exactly one id."""
    index = record if isinstance(record, SceneIndex) else SceneIndex(record)
    return index.resolve(expression_spec)


# ============================================================================ referring expressions


@dataclass(frozen=True)
class ReferringExpression:
    """A referring expression: its structured ``spec`` and its realised ``text``."""

    spec: dict
    text: str


@lru_cache(maxsize=64)
def _subsets(fields: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Every subset of ``fields``, fewest first (``()`` first)."""
    return tuple(c for n in range(len(fields) + 1) for c in itertools.combinations(fields, n))


class _Options:
    """The attribute subsets of one region, fewest first, each with the candidates of its group that
    share those attribute values. Computed lazily: most regions are unique after the first few."""

    def __init__(self, index: SceneIndex, rid: int, cands: set[int]):
        self.index, self.rid, self.cands = index, rid, cands
        attrs = index.attributes(rid)
        self.subsets = _subsets(tuple(f for f in REFERRING_ATTRIBUTES if attrs.get(f)))
        self.done: list[tuple[tuple[str, ...], set[int]]] = []

    def __iter__(self):
        i = 0
        while i < len(self.subsets):
            if i == len(self.done):
                ix, rid = self.index, self.rid
                attrs, cat, level = ix.attributes(rid), ix.category(rid), ix.level(rid)
                s = self.cands
                for f in self.subsets[i]:
                    s = s & ix.attribute_sets[(cat, level, f, attrs[f])]
                self.done.append((self.subsets[i], s))
            yield self.done[i]
            i += 1


class _ReferringBuilder:
    """Finds the simplest unique spec of each region: fewest attributes, then a relation to a simply
    describable object, then an ordinal (lowest rank, then fewest attributes)."""

    def __init__(self, index: SceneIndex, rng: random.Random):
        self.index = index
        self.rng = rng
        self.specs: dict[int, Optional[dict]] = {}
        self._simple: dict[int, Optional[dict]] = {}

    def _base(self, rid: int) -> tuple[dict, set[int]]:
        ix = self.index
        cat, level = ix.category(rid), ix.level(rid)
        spec: dict = {"category": cat, "level": level}
        cands = set(ix.groups[(cat, level)])
        parent = ix.parent(rid)
        if level == "part" and parent is not None:
            parent_spec = self.spec(parent)
            if parent_spec is None:
                return spec, set()
            spec["parent"] = parent_spec
            cands = {c for c in ix.children[parent] if c in cands}
        return spec, cands

    def _attribute_options(self, rid: int, cands: set[int]) -> "_Options":
        return _Options(self.index, rid, cands)

    @staticmethod
    def _with_attrs(spec: dict, attrs: Mapping[str, str], subset: tuple[str, ...]) -> dict:
        out = dict(spec)
        if subset:
            out["attributes"] = {f: attrs[f] for f in subset}
        return out

    def _ordinal(self, rid: int, options, spec: dict, attrs) -> Optional[dict]:
        ix = self.index
        cat, level = ix.category(rid), ix.level(rid)
        orders = list(ORDERS)
        self.rng.shuffle(orders)
        best = None  # (cost, spec)
        for subset, cands in options:
            if best is not None and best[0] <= len(subset):
                break
            for order in orders:
                if order in ("largest", "smallest") and "size" in subset:
                    continue  # "the largest small car" reads badly
                mine = ix.key(rid, order)
                rank, unique = 1, True
                for other in ix.sorted_group(cat, level, order):
                    if other == rid or other not in cands:
                        continue
                    if ix.tied(other, rid, order):
                        unique = False
                        break
                    if (ix.key(other, order) < mine) != (order in ("right", "bottom", "largest")):
                        rank += 1
                if not unique or rank > MAX_RANK:
                    continue
                cost = 2 * (rank - 1) + len(subset)
                if best is None or cost < best[0]:
                    s = self._with_attrs(spec, attrs, subset)
                    s["ordinal"] = {"order": order, "rank": rank}
                    best = (cost, s)
        return None if best is None else best[1]

    def simple(self, rid: int) -> Optional[dict]:
        """A spec without relations (attributes, else a rank-1 ordinal), for relation objects."""
        if rid not in self._simple:
            spec, cands = self._base(rid)
            attrs = self.index.attributes(rid)
            options = self._attribute_options(rid, cands)
            found = None
            for subset, s in options:
                if s == {rid}:
                    found = self._with_attrs(spec, attrs, subset)
                    break
            if found is None:
                o = self._ordinal(rid, options, spec, attrs)
                if o is not None and o["ordinal"]["rank"] == 1:
                    found = o
            self._simple[rid] = found
        return self._simple[rid]

    def spec(self, rid: int) -> Optional[dict]:
        if rid in self.specs:
            return self.specs[rid]
        ix = self.index
        spec, cands = self._base(rid)
        attrs = ix.attributes(rid)
        options = self._attribute_options(rid, cands)
        found = None
        for subset, s in options:  # 1. fewest attributes
            if s == {rid}:
                found = self._with_attrs(spec, attrs, subset)
                break
        if found is None and cands:  # 2. a relation to a simply describable object
            relations = list(ix.relations_of.get(rid, ()))
            self.rng.shuffle(relations)
            for subset, s in options:
                for predicate, obj in relations:
                    if obj == rid or ix.level(obj) != "instance":
                        continue
                    if s & ix.subjects[(predicate, obj)] != {rid}:
                        continue
                    obj_spec = self.simple(obj)
                    if obj_spec is None or "relation" in obj_spec:
                        continue
                    found = self._with_attrs(spec, attrs, subset)
                    found["relation"] = {"predicate": predicate, "object": obj_spec}
                    break
                if found is not None:
                    break
        if found is None and cands:  # 3. superlatives and ordinals
            found = self._ordinal(rid, options, spec, attrs)
        if found is not None and ix.resolve(found) != [rid]:
            found = None  # never hand out an expression the checker would not resolve to rid
        self.specs[rid] = found
        return found


class _Namer:
    """Chooses the noun for a category: its name or, with probability ``rate``, a synonym."""

    def __init__(self, rng: random.Random, rate: float = SYNONYM_RATE):
        self.rng = rng
        self.rate = rate

    def noun(self, category: str) -> str:
        syns = synonyms_of(category)
        if syns and self.rng.random() < self.rate:
            return self.rng.choice(syns)
        return category

    def plural(self, category: str) -> str:
        return plural_of(self.noun(category))


def realize(spec: Mapping[str, Any], rng: random.Random, namer: Optional[_Namer] = None,
            known: Optional[Mapping[int, str]] = None) -> str:
    """English text of a referring spec ("the second red car from the left").

    ``known`` maps ``id(spec)`` of already realised specs to their text, so that a part's parent is
    worded the same way as the parent's own expression."""
    namer = namer or _Namer(rng)
    if known and id(spec) in known:
        return known[id(spec)]
    category = spec["category"]
    attrs = spec.get("attributes") or {}
    np = " ".join([*_adjectives(attrs, tuple(attrs)), namer.noun(category)])
    ordinal = spec.get("ordinal")
    if ordinal is None:
        text = f"the {np}"
    else:
        forms = ORDINAL_PHRASES[ordinal["order"]]
        rank = ordinal.get("rank", 1)
        if rank == 1:
            choices = forms["first"]
            if spec.get("parent") is not None:  # keep the noun last: "the leftmost wheel of the car"
                choices = tuple(c for c in choices if c.endswith("{np}")) or choices
            text = rng.choice(choices).format(np=np)
        else:
            text = rng.choice(forms["nth"]).format(np=np, nth=ordinal_word(rank))
    if spec.get("parent") is not None:
        text = f"{text} of {realize(spec['parent'], rng, namer, known)}"
    relation = spec.get("relation")
    if relation is not None:
        pred = rng.choice(PREDICATE_PHRASES.get(relation["predicate"], (relation["predicate"],)))
        text = f"{text} {pred} {realize(relation['object'], rng, namer)}"
    return text


def referring_expressions(record: Mapping[str, Any] | SceneIndex,
                          rng: random.Random) -> dict[int, Optional[ReferringExpression]]:
    """A unique referring expression for every region (``None`` where no expression is unique)."""
    index = record if isinstance(record, SceneIndex) else SceneIndex(record)
    builder = _ReferringBuilder(index, rng)
    namer = _Namer(rng)
    out: dict[int, Optional[ReferringExpression]] = {}
    known: dict[int, str] = {}
    ordered = sorted(index.regions, key=lambda i: (index.level(i) == "part", i))  # parents first
    for rid in ordered:
        spec = builder.spec(rid)
        if spec is None:
            out[rid] = None
            continue
        text = realize(spec, rng, namer, known)
        known[id(spec)] = text
        out[rid] = ReferringExpression(spec, text)
    return {rid: out[rid] for rid in index.regions}


# ============================================================================ region texts


def _pose(index: SceneIndex, rid: int) -> Optional[str]:
    """The orientation name when it tells something (the category can take more than one)."""
    orientation = index.attributes(rid).get("orientation")
    if not orientation:
        return None
    cat = catalog.CATEGORY_BY_NAME.get(index.category(rid))
    if cat is not None and len(cat.orientations) < 2:
        return None
    return orientation


def _pose_phrase(orientation: str, rng: random.Random) -> str:
    return rng.choice(ORIENTATION_PHRASES.get(orientation, (orientation,)))


def _image_position(index: SceneIndex, rid: int, rng: random.Random) -> str:
    g = index.geometry[rid]
    row = min(2, max(0, int(3 * g.cy / index.height)))
    col = min(2, max(0, int(3 * g.cx / index.width)))
    return rng.choice(IMAGE_POSITIONS[(row, col)]).format(image=rng.choice(IMAGE_WORDS))


def _part_position(index: SceneIndex, rid: int, parent: int) -> str:
    g = index.geometry[rid]
    x0, y0, x1, y1 = (float(v) for v in index.regions[parent]["box"])
    col = min(2, max(0, int(3 * (g.cx - x0) / max(x1 - x0, 1e-6))))
    row = min(2, max(0, int(3 * (g.cy - y0) / max(y1 - y0, 1e-6))))
    return PART_POSITIONS[(row, col)]


def _short_np(index: SceneIndex, rid: int, namer: _Namer) -> str:
    """Bare noun phrase with every attribute worth saying: "small red striped car"."""
    return " ".join([*_adjectives(index.attributes(rid), ATTRIBUTE_ORDER, phrase=True),
                     namer.noun(index.category(rid))])


def _phrase(index: SceneIndex, rid: int) -> str:
    cat = index.category(rid)
    parent = index.parent(rid)
    if index.level(rid) == "part" and parent is not None:
        pcolor = index.attributes(parent).get("color")
        pnoun = f"{pcolor} {index.category(parent)}" if pcolor else index.category(parent)
        own = index.attributes(rid).get("color")
        return f"the {own + ' ' if own else ''}{cat} of the {pnoun}"
    np = " ".join([*_adjectives(index.attributes(rid), ATTRIBUTE_ORDER, phrase=True), cat])
    return with_article(np)


class _Texts:
    """Everything that needs the referring expressions: descriptions, captions, conversations."""

    def __init__(self, index: SceneIndex, rng: random.Random, refs: dict[int, Optional[ReferringExpression]]):
        self.index = index
        self.rng = rng
        self.refs = refs
        self.namer = _Namer(rng)

    def noun(self, category: str) -> str:
        return self.namer.noun(category)

    def ref(self, rid: int) -> Ref:
        return Ref(self.refs[rid].text, (rid,))

    def pick(self, kind: str) -> str:
        return self.rng.choice(TEMPLATES[kind])

    def where(self, rid: int) -> Seq:
        """A relation to a referable object ("to the left of the blue house") or a position."""
        ix = self.index
        options = [(p, o) for p, o in ix.relations_of.get(rid, ()) if self.refs.get(o) and o != rid]
        for p, s in ix.relations_to.get(rid, ()):
            inverse = catalog.INVERSE_PREDICATE.get(p)
            if inverse and self.refs.get(s) and s != rid:
                options.append((inverse, s))
        if options:
            predicate, obj = self.rng.choice(options)
            phrase = self.rng.choice(PREDICATE_PHRASES.get(predicate, (predicate,)))
            return Seq((phrase + " ", self.ref(obj)))
        return Seq((_image_position(ix, rid, self.rng),))

    def description(self, rid: int) -> GroundedText:
        ix = self.index
        out = GroundedText()
        parent = ix.parent(rid)
        if ix.level(rid) == "part" and parent is not None:
            np = Ref(with_article(_short_np(ix, rid, self.namer)), (rid,))
            parent_ref = self.ref(parent) if self.refs.get(parent) else Ref(
                "the " + _short_np(ix, parent, self.namer), (parent,))
            out.sentence(self.pick("description_part"),
                         {"np": np, "parent": parent_ref, "where": _part_position(ix, rid, parent)})
            return out
        cat = ix.category(rid)
        np_text = with_article(" ".join([*_adjectives(ix.attributes(rid), ATTRIBUTE_ORDER, phrase=True),
                                         self.noun(cat)]))
        slots = {"np": Ref(np_text, (rid,)), "where": self.where(rid)}
        pose = _pose(ix, rid)
        if pose:
            slots["pose"] = _pose_phrase(pose, self.rng)
            out.sentence(self.pick("description"), slots)
        else:
            out.sentence(self.pick("description_plain"), slots)
        return out

    # ------------------------------------------------------------------ captions

    def _category_groups(self) -> list[tuple[str, list[int]]]:
        """Instance categories with their ids, most numerous (then largest total area) first."""
        ix = self.index
        groups = [(cat, ids) for (cat, level), ids in ix.groups.items() if level == "instance"]
        groups.sort(key=lambda g: (-len(g[1]), -sum(ix.geometry[i].area for i in g[1]), g[0]))
        return groups

    def _counted_ref(self, cat: str, ids: list[int], with_color: bool) -> Ref:
        colors = {self.index.attributes(i).get("color") for i in ids}
        noun = self.noun(cat)
        if with_color and len(colors) == 1 and None not in colors:
            c = colors.pop()
            return Ref(counted(len(ids), f"{c} {noun}", f"{c} {plural_of(noun)}"), tuple(ids))
        return Ref(counted(len(ids), noun, plural_of(noun)), tuple(ids))

    def brief(self, setting: Optional[str]) -> GroundedText:
        groups = self._category_groups()
        out = GroundedText()
        if not groups:
            out.sentence(self.pick("brief_empty"), {"setting": self._setting(setting)})
            return out
        shown = groups[:BRIEF_MAX_CATEGORIES]
        items: list = [self._counted_ref(cat, ids, with_color=True) for cat, ids in shown]
        tail = self.pick("brief_more") if len(groups) > len(shown) else ""
        template = self.pick("brief")
        objects: Any = items
        if tail:  # "a, b and c, among other things"
            objects = Seq((*_joined(items), tail))
        out.sentence(template, {"objects": objects, "setting": self._setting(setting)})
        return out

    def _setting(self, setting: Optional[str]) -> str:
        if not setting:
            return ""
        return self.rng.choice(SETTING_PHRASES).format(setting=setting)

    def detailed(self, max_colors: int = 6, max_relations: int = 3, max_parts: int = 2) -> GroundedText:
        ix = self.index
        out = GroundedText()
        groups = self._category_groups()
        if not groups:
            out.sentence(self.pick("detailed_empty"), {})
            return out
        out.sentence(self.pick("detailed_counts"),
                     {"counts": [self._counted_ref(cat, ids, with_color=False) for cat, ids in groups]})
        for cat, ids in groups[:max_colors]:
            noun = self.noun(cat)
            if len(ids) == 1:
                rid = ids[0]
                adjs = _adjectives(ix.attributes(rid), ATTRIBUTE_ORDER)
                if not adjs:
                    continue
                out.sentence(self.pick("detailed_single"),
                             {"it": Ref(f"the {noun}", (rid,)), "adjs": join_words(adjs)})
                continue
            by_color: dict[Optional[str], list[int]] = {}
            for rid in ids:
                by_color.setdefault(ix.attributes(rid).get("color"), []).append(rid)
            if None in by_color:
                continue
            parts = [Ref(counted(len(g), f"{c} {noun}", f"{c} {plural_of(noun)}"), tuple(g))
                     for c, g in sorted(by_color.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
            group = Ref(f"the {number_word(len(ids))} {plural_of(noun)}", tuple(ids))
            out.sentence(self.pick("detailed_colors"), {"group": group, "parts": parts})
        relations = [(s, p, o) for s in ix.regions for p, o in ix.relations_of.get(s, ())
                     if self.refs.get(s) and self.refs.get(o) and s != o]
        self.rng.shuffle(relations)
        for s, p, o in relations[:max_relations]:
            pred = self.rng.choice(PREDICATE_PHRASES.get(p, (p,)))
            out.sentence(self.pick("detailed_relation"),
                         {"subj": self.ref(s), "pred": pred, "obj": self.ref(o)})
        composites = [rid for rid in ix.instances() if ix.children.get(rid) and self.refs.get(rid)]
        self.rng.shuffle(composites)
        for rid in composites[:max_parts]:
            by_cat: dict[str, list[int]] = {}
            for child in ix.children[rid]:
                by_cat.setdefault(ix.category(child), []).append(child)
            parts = [Ref(counted(len(g), c, plural_of(c)), tuple(g)) for c, g in by_cat.items()]
            out.sentence(self.pick("detailed_parts"), {"parent": self.ref(rid), "parts": parts})
        return out

    # ------------------------------------------------------------------ conversations

    def _qa(self, kind: str, question: str, answer: GroundedText) -> dict:
        d = answer.to_dict()
        return {"kind": kind, "question": question, "answer": d["text"], "groundings": d["groundings"]}

    def _referable(self, avoid: Optional[str] = None, need: Optional[str] = None) -> list[int]:
        """Referable instances whose expression does not already give away ``avoid``."""
        out = []
        for rid in self.index.instances():
            ref = self.refs.get(rid)
            if ref is None:
                continue
            if avoid and avoid in (ref.spec.get("attributes") or {}):
                continue
            if need and not self.index.attributes(rid).get(need):
                continue
            out.append(rid)
        return out

    def conversations(self, absent: Sequence[str]) -> list[dict]:
        ix, rng = self.index, self.rng
        qas: list[dict] = []
        # colour of a referred object
        ids = self._referable(avoid="color", need="color")
        if ids:
            rid = rng.choice(ids)
            q = GroundedText()
            q.sentence(self.pick("q_color"), {"obj": self.refs[rid].text})
            a = GroundedText()
            a.sentence(self.pick("a_color"), {"subj": self.ref(rid), "value": ix.attributes(rid)["color"]})
            qas.append(self._qa("color", q.text, a))
        # counting
        groups = self._category_groups()
        if groups:
            cat, ids = rng.choice(groups)
            noun = self.noun(cat)
            q = GroundedText()
            q.sentence(self.pick("q_count"), {"plural": plural_of(noun)})
            a = GroundedText()
            count = f"{number_word(len(ids))} {noun if len(ids) == 1 else plural_of(noun)}"
            a.sentence(self.pick("a_count_one" if len(ids) == 1 else "a_count_many"),
                       {"count": Ref(count, tuple(ids))})
            qas.append(self._qa("count", q.text, a))
        # relations: what is <pred> <object>?
        levels = ix._level
        targets = sorted({(p, o) for (p, o), subs in ix.subjects.items()
                          if levels[o] == "instance" and self.refs.get(o) and o not in subs
                          and all(levels[s] == "instance" for s in subs)})
        if targets:
            small = [t for t in targets if len(ix.subjects[t]) <= 4] or targets
            predicate, obj = rng.choice(small)
            subjects = sorted(ix.subjects[(predicate, obj)])
            pred = rng.choice(PREDICATE_PHRASES.get(predicate, (predicate,)))
            q = GroundedText()
            q.sentence(self.pick("q_relation"), {"pred": pred, "obj": self.refs[obj].text})
            by_phrase: dict[tuple[str, str], list[int]] = {}
            for s in subjects:
                by_phrase.setdefault((ix.category(s), _short_np(ix, s, _Namer(rng, 0.0))), []).append(s)
            items = [Ref(counted(len(g), np, _plural_np(np, cat)), tuple(g))
                     for (cat, np), g in by_phrase.items()]
            a = GroundedText()
            be = "is" if len(subjects) == 1 else "are"
            a.sentence(self.pick("a_relation"),
                       {"subjs": items, "be": be, "pred": pred, "obj": self.ref(obj)})
            qas.append(self._qa("relation", q.text, a))
        # existence, positive
        if groups:
            cat, ids = rng.choice(groups)
            noun = self.noun(cat)
            q = GroundedText()
            q.sentence(self.pick("q_exist"), {"np": with_article(noun)})
            a = GroundedText()
            a.sentence(self.pick("a_exist_yes"),
                       {"count": Ref(counted(len(ids), noun, plural_of(noun)), tuple(ids)),
                                                   "be": "is" if len(ids) == 1 else "are"})
            qas.append(self._qa("exist_yes", q.text, a))
        # existence, negative: a category really absent from the scene
        if absent:
            cat = rng.choice(list(absent))
            noun = self.noun(cat)
            q = GroundedText()
            q.sentence(self.pick("q_exist"), {"np": with_article(noun)})
            a = GroundedText()
            a.sentence(self.pick("a_exist_no"),
                       {"noun": noun, "plural": plural_of(noun), "np": with_article(noun)})
            qas.append(self._qa("exist_no", q.text, a))
        # an attribute of a referred object
        field = rng.choice(("pattern", "size", "orientation"))
        ids = [rid for rid in self._referable(avoid=field, need=field)
               if field != "orientation" or _pose(ix, rid)]
        if ids:
            rid = rng.choice(ids)
            value = ix.attributes(rid)[field]
            if field == "orientation":
                value = _pose_phrase(value, rng)
            else:
                value = _adjective(field, value)
            q = GroundedText()
            q.sentence(self.pick(f"q_{field}"), {"obj": self.refs[rid].text})
            a = GroundedText()
            a.sentence(self.pick(f"a_{field}"), {"subj": self.ref(rid), "value": value})
            qas.append(self._qa(field, q.text, a))
        # describe a referred object
        ids = self._referable()
        if ids:
            rid = rng.choice(ids)
            q = GroundedText()
            q.sentence(self.pick("q_describe"), {"obj": self.refs[rid].text})
            qas.append(self._qa("describe", q.text, self.description(rid)))
        return qas


def _plural_np(np: str, category: str) -> str:
    """Plural of a noun phrase ending in ``category`` ("small red car" -> "small red cars")."""
    head = np[: len(np) - len(category)]
    return head + plural_of(category)


def _joined(items: Sequence[Any]) -> list[Any]:
    """``[a, b, c]`` -> ``[a, ", ", b, " and ", c]`` (pieces for a :class:`Seq`)."""
    out: list[Any] = []
    for i, item in enumerate(items):
        if i:
            out.append(" and " if i == len(items) - 1 else ", ")
        out.append(item)
    return out


# ============================================================================ entry point


def annotate(record: dict, rng: random.Random) -> dict:
    """Fill every language field of a world record in place and return it.

    Sets ``phrase``, ``description`` and ``referring`` on every region, and ``captions`` (brief +
    detailed), ``conversations`` and ``synonyms`` on the record. Each conversation also carries a
    ``kind`` ("color", "count", "relation", "exist_yes", "exist_no", "pattern", "size", "orientation"
    or "describe"). Deterministic given ``rng``.

    The brief caption mentions the setting when the record has one: a free-text
    ``record["setting"]`` ("a sunny park"), else the world's ``record["background"]`` kind
    ("flat", "gradient", "noise", "photo"); without either it names no setting.
    """
    if not isinstance(rng, random.Random):
        raise LanguageError(f"annotate needs a random.Random, got {type(rng).__name__}")
    index = SceneIndex(record)
    refs = referring_expressions(index, rng)
    texts = _Texts(index, rng, refs)
    for r in record["regions"]:
        rid = r["id"]
        r["phrase"] = _phrase(index, rid)
        r["description"] = texts.description(rid).text
        r["referring"] = refs[rid].text if refs[rid] is not None else None
    setting = record.get("setting") if isinstance(record.get("setting"), str) else None
    if setting is None and record.get("background") in BACKGROUND_SETTINGS:
        setting = rng.choice(BACKGROUND_SETTINGS[record["background"]])
    brief, detailed = texts.brief(setting), texts.detailed()
    record["captions"] = [{"kind": "brief", **brief.to_dict()}, {"kind": "detailed", **detailed.to_dict()}]
    present = {index.category(i) for i in index.instances()}
    absent = [c for c in catalog.CATEGORY_NAMES if c not in present and c not in
              {index.category(i) for i in index.regions}]
    record["conversations"] = texts.conversations(absent)
    record["synonyms"] = {c: list(synonyms_of(c)) for c in sorted(present) if synonyms_of(c)}
    return record
