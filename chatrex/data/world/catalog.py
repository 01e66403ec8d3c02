"""The vocabulary of the procedural world, as plain data.

Everything the renderer draws and every word the language pass may use for it is named here:

* :data:`CATEGORIES` — object categories, each recognisable by its *shape* (not only its colour), with
  plural, coarse kind, named parts (composite objects) and the orientations it may take.
* :data:`PARTS` — every part name with its plural.
* :data:`COLORS` — colour names with the RGB used to paint them.
* :data:`SIZES` — "small" / "medium" / "large", defined relative to the image (see :func:`size_name`).
* :data:`PATTERNS` — surface textures: "plain", "striped", "dotted", "checkered".
* :data:`ORIENTATIONS` — how an object is posed. Things with a front (vehicles, animals) are drawn
  *facing left* or *facing right*; everything else is *upright*, *tilted left* (top leans to the left,
  i.e. turned counter-clockwise by 20–35 degrees), *tilted right* (clockwise) or *upside down*
  (turned 180 degrees). Each category lists the orientations it can take (a cloud is always upright).
* :data:`PREDICATES` — the relations the scene annotator emits between instances. Spatial ones come
  from the visible boxes; "in front of" / "behind" from the drawing order where two objects' masks
  overlap; "inside" when one visible box lies within another's and the inner object is drawn on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FACING = ("facing left", "facing right")
POSES = ("upright", "tilted left", "tilted right", "upside down")
#: All orientation names. Categories with a front use FACING, the others a subset of POSES.
ORIENTATIONS: tuple[str, ...] = POSES + FACING


@dataclass(frozen=True)
class Category:
    """One object category.

    Attributes:
        name: singular noun ("car").
        plural: plural noun ("cars").
        kind: coarse kind ("vehicle", "animal", "plant", "building", "person", "machine", "household",
            "furniture", "tool", "toy", "shape", "sky").
        parts: named parts emitted as ``level="part"`` regions (empty for simple objects).
        orientations: orientations this category is drawn in (subset of :data:`ORIENTATIONS`).
        aspect: width / height of the upright, unrotated drawing.
    """

    name: str
    plural: str
    kind: str
    parts: tuple[str, ...] = ()
    orientations: tuple[str, ...] = POSES
    aspect: float = 1.0

    @property
    def composite(self) -> bool:
        """True when the object has named parts."""
        return bool(self.parts)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "plural": self.plural, "kind": self.kind, "parts": list(self.parts),
            "composite": self.composite, "orientations": list(self.orientations), "aspect": self.aspect,
        }


UPRIGHT_OR_TILTED = ("upright", "tilted left", "tilted right")

#: Every category, in a fixed order (the order is part of the data format: do not reorder).
CATEGORIES: tuple[Category, ...] = (
    Category("car", "cars", "vehicle", ("body", "wheel", "window"), FACING, 2.0),
    Category("truck", "trucks", "vehicle", ("cab", "cargo box", "wheel"), FACING, 2.2),
    Category("bus", "buses", "vehicle", ("body", "window", "wheel"), FACING, 2.3),
    Category("bicycle", "bicycles", "vehicle", ("frame", "wheel"), FACING, 1.6),
    Category("boat", "boats", "vehicle", ("hull", "sail", "mast"), FACING, 1.1),
    Category("airplane", "airplanes", "vehicle", ("fuselage", "wing", "tail"), FACING, 2.0),
    Category("house", "houses", "building", ("wall", "roof", "door", "window"), ("upright",), 1.0),
    Category("tree", "trees", "plant", ("trunk", "crown"), UPRIGHT_OR_TILTED, 0.75),
    Category("flower", "flowers", "plant", ("petal", "centre", "stem"), UPRIGHT_OR_TILTED, 0.55),
    Category("mushroom", "mushrooms", "plant", ("cap", "stalk"), POSES, 1.0),
    Category("person", "people", "person", ("head", "torso", "arm", "leg"), POSES, 0.5),
    Category("robot", "robots", "machine", ("head", "body", "arm", "antenna"), POSES, 0.75),
    Category("cat", "cats", "animal", ("head", "body", "tail"), FACING, 1.3),
    Category("fish", "fish", "animal", ("body", "tail"), FACING, 1.7),
    Category("bird", "birds", "animal", ("body", "wing", "beak"), FACING, 1.2),
    Category("umbrella", "umbrellas", "household", ("canopy", "handle"), POSES, 1.0),
    Category("lamp", "lamps", "household", ("shade", "pole", "base"), UPRIGHT_OR_TILTED, 0.6),
    Category("table", "tables", "furniture", ("top", "leg"), ("upright", "upside down"), 1.6),
    Category("chair", "chairs", "furniture", ("back", "seat", "leg"), POSES, 0.7),
    Category("cup", "cups", "household", (), POSES, 1.15),
    Category("bottle", "bottles", "household", (), POSES, 0.4),
    Category("clock", "clocks", "household", (), UPRIGHT_OR_TILTED, 1.0),
    Category("key", "keys", "tool", (), POSES, 2.2),
    Category("ladder", "ladders", "tool", (), UPRIGHT_OR_TILTED, 0.45),
    Category("balloon", "balloons", "toy", (), ("upright",), 0.6),
    Category("kite", "kites", "toy", (), UPRIGHT_OR_TILTED, 0.7),
    Category("star", "stars", "shape", (), ("upright", "upside down"), 1.0),
    Category("heart", "hearts", "shape", (), POSES, 1.1),
    Category("moon", "moons", "sky", (), UPRIGHT_OR_TILTED, 0.7),
    Category("cloud", "clouds", "sky", (), ("upright",), 1.8),
)

#: Category by name.
CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}
#: Category names in catalogue order.
CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)

#: Every part name with its plural.
PARTS: dict[str, str] = {
    "body": "bodies", "wheel": "wheels", "window": "windows", "cab": "cabs", "cargo box": "cargo boxes",
    "frame": "frames", "hull": "hulls", "sail": "sails", "mast": "masts", "fuselage": "fuselages",
    "wing": "wings", "tail": "tails", "wall": "walls", "roof": "roofs", "door": "doors",
    "trunk": "trunks", "crown": "crowns", "petal": "petals", "centre": "centres", "stem": "stems",
    "cap": "caps", "stalk": "stalks", "head": "heads", "torso": "torsos", "arm": "arms", "leg": "legs",
    "antenna": "antennas", "beak": "beaks", "canopy": "canopies", "handle": "handles", "shade": "shades",
    "pole": "poles", "base": "bases", "top": "tops", "back": "backs", "seat": "seats",
}

#: Colour names and the RGB they are painted with (order fixed).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (250, 135, 20),
    "yellow": (245, 215, 30),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "purple": (130, 60, 180),
    "pink": (245, 130, 190),
    "brown": (130, 80, 35),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "cyan": (40, 200, 220),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

#: Size classes. The size of an object is ``sqrt(box area / image area)`` of its full, unoccluded
#: drawing (i.e. its box side relative to the image side); each class is a half-open range of it.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.03, 0.12),
    "medium": (0.12, 0.28),
    "large": (0.28, 0.75),
}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

#: Surface textures, painted on the object's main-coloured parts ("plain" = none).
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

#: Relations emitted between instances (subject PREDICATE object).
PREDICATES: tuple[str, ...] = (
    "left of", "right of", "above", "below", "next to", "inside", "in front of", "behind",
)
#: The predicate that holds with subject and object swapped (None: no inverse among PREDICATES).
INVERSE_PREDICATE: dict[str, str | None] = {
    "left of": "right of", "right of": "left of", "above": "below", "below": "above",
    "next to": "next to", "inside": None, "in front of": "behind", "behind": "in front of",
}


def size_name(box_area: float, image_area: float) -> str:
    """The size class of an object whose full box covers ``box_area`` of an image of ``image_area``."""
    rel = (max(box_area, 0.0) / max(image_area, 1e-9)) ** 0.5
    for name, (_, hi) in SIZES.items():
        if rel < hi:
            return name
    return SIZE_NAMES[-1]


@dataclass(frozen=True)
class Vocabulary:
    """The whole vocabulary in one object (handy for serialising next to a generated dataset)."""

    categories: tuple[Category, ...] = CATEGORIES
    colors: dict = field(default_factory=lambda: dict(COLORS))
    sizes: dict = field(default_factory=lambda: dict(SIZES))
    patterns: tuple[str, ...] = PATTERNS
    orientations: tuple[str, ...] = ORIENTATIONS
    predicates: tuple[str, ...] = PREDICATES

    def to_dict(self) -> dict:
        return {
            "categories": [c.to_dict() for c in self.categories],
            "parts": dict(PARTS),
            "colors": {k: list(v) for k, v in self.colors.items()},
            "sizes": {k: list(v) for k, v in self.sizes.items()},
            "patterns": list(self.patterns),
            "orientations": list(self.orientations),
            "predicates": list(self.predicates),
        }
