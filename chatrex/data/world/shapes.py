"""How each category is drawn: a label map of *paints* in a box of ``w`` x ``h`` pixels.

A drawing is a small ``uint8`` array where 0 is empty and ``k >= 1`` is the ``k``-th paint of the
category. A :class:`Paint` names the part it belongs to (or ``None`` for the object as a whole) and its
colour: ``"main"`` (the object's colour; carries the pattern) or a catalogue colour with a fallback used
when it would equal the object's colour (black wheels on a black car are drawn gray). Label maps keep
parts exact: a part's mask is the union of its paints' labels.

Drawings are written in unit coordinates (``x`` right, ``y`` down, both in ``[0, 1]`` of the box); a
:class:`Pen` scales them. Things with a front are drawn facing **right**; the renderer mirrors them.
Each category is recognisable by its outline alone (wheels and windows of a car, the roof of a house,
the crown and trunk of a tree, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw


#: Colour of skin, a paint colour that is not one of the attribute colours (no attribute emitted).
SKIN = "skin"
SKIN_RGB = (236, 190, 150)


@dataclass(frozen=True)
class Paint:
    """One colour region of a drawing.

    Attributes:
        part: the named part it belongs to (None: the object as a whole, for simple objects).
        color: "main" (object colour, patterned), a catalogue colour name, or ``SKIN``.
        fallback: colour used instead of ``color`` when that equals the object's colour.
    """

    part: Optional[str]
    color: str = "main"
    fallback: Optional[str] = None

    @property
    def patterned(self) -> bool:
        return self.color == "main"


class Pen:
    """Draws unit-coordinate primitives into a label image of ``w`` x ``h`` pixels.

    ``paints`` maps a paint key to its label (1-based index into the category's paints); paint
    ``None`` is the eraser. Radii and line widths are in units of the box's shorter side.

    ``piece`` numbers the separate pieces of one part (the front and back wheel: ``piece=1`` and
    ``piece=2``; a hub takes its wheel's number). Pieces are kept in a second image, ``pieces``,
    created at the first primitive with a piece number (None while there is none); a part drawn
    without piece numbers is one piece.
    """

    def __init__(self, w: int, h: int, paints: dict[str, int]):
        self.w, self.h, self.m = w, h, min(w, h)
        self.image = Image.new("L", (w, h), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.pieces: Optional[Image.Image] = None
        self._piece_draw: Optional[ImageDraw.ImageDraw] = None
        self.paints = paints

    def _targets(self, paint: Optional[str], piece: int):
        """(draw, value) pairs a primitive is drawn with: the paint label, and its piece number."""
        fill = 0 if paint is None else self.paints[paint]
        if piece and self._piece_draw is None:
            self.pieces = Image.new("L", (self.w, self.h), 0)
            self._piece_draw = ImageDraw.Draw(self.pieces)
        if self._piece_draw is None:
            return ((self.draw, fill),)
        return ((self.draw, fill), (self._piece_draw, piece if paint is not None else 0))

    def _pt(self, x: float, y: float) -> tuple[float, float]:
        return (x * self.w, y * self.h)

    def _box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * self.w, y0 * self.h, max(x0 * self.w, x1 * self.w - 1), max(y0 * self.h, y1 * self.h - 1)]

    def poly(self, paint: Optional[str], pts: Sequence[tuple[float, float]], piece: int = 0) -> None:
        xy = [self._pt(x, y) for x, y in pts]
        for d, v in self._targets(paint, piece):
            d.polygon(xy, fill=v)

    def rect(self, paint: Optional[str], x0: float, y0: float, x1: float, y1: float, piece: int = 0) -> None:
        box = self._box(x0, y0, x1, y1)
        for d, v in self._targets(paint, piece):
            d.rectangle(box, fill=v)

    def ellipse(self, paint: Optional[str], x0: float, y0: float, x1: float, y1: float, piece: int = 0) -> None:
        box = self._box(x0, y0, x1, y1)
        for d, v in self._targets(paint, piece):
            d.ellipse(box, fill=v)

    def circle(self, paint: Optional[str], cx: float, cy: float, r: float, piece: int = 0) -> None:
        """A circle centred at unit ``(cx, cy)`` with radius ``r`` (shorter-side units)."""
        x, y, rp = cx * self.w, cy * self.h, max(0.5, r * self.m)
        for d, v in self._targets(paint, piece):
            d.ellipse([x - rp, y - rp, x + rp, y + rp], fill=v)

    def ring(self, paint: Optional[str], cx: float, cy: float, r: float, thick: float, piece: int = 0) -> None:
        x, y, rp = cx * self.w, cy * self.h, max(1.0, r * self.m)
        width = max(1, round(thick * self.m))
        for d, v in self._targets(paint, piece):
            d.ellipse([x - rp, y - rp, x + rp, y + rp], outline=v, width=width)

    def chord(self, paint: Optional[str], x0: float, y0: float, x1: float, y1: float, start: float, end: float,
              piece: int = 0) -> None:
        box = self._box(x0, y0, x1, y1)
        for d, v in self._targets(paint, piece):
            d.chord(box, start, end, fill=v)

    def line(self, paint: Optional[str], pts: Sequence[tuple[float, float]], width: float, piece: int = 0) -> None:
        wpx = max(1, round(width * self.m))
        xy = [self._pt(x, y) for x, y in pts]
        for d, v in self._targets(paint, piece):
            d.line(xy, fill=v, width=wpx, joint="curve")


@dataclass(frozen=True)
class Drawing:
    """How one category is drawn: its paints (label ``k`` = ``paints[k-1]``) and a draw function."""

    paints: tuple[tuple[str, Paint], ...]
    draw: Callable[[Pen], None]

    @property
    def paint_list(self) -> list[Paint]:
        return [p for _, p in self.paints]


# ------------------------------------------------------------------------------------- the drawings


def _car(p: Pen) -> None:
    p.poly("body", [(0.02, 0.5), (0.12, 0.44), (0.27, 0.42), (0.36, 0.14), (0.7, 0.14), (0.84, 0.42),
                    (0.97, 0.47), (0.99, 0.78), (0.01, 0.78)])
    p.poly("window", [(0.4, 0.2), (0.52, 0.2), (0.52, 0.41), (0.33, 0.41)], piece=1)
    p.poly("window", [(0.56, 0.2), (0.67, 0.2), (0.78, 0.41), (0.56, 0.41)], piece=2)
    for k, cx in enumerate((0.24, 0.76), start=1):
        p.circle("wheel", cx, 0.78, 0.21, piece=k)
        p.circle("hub", cx, 0.78, 0.08, piece=k)


def _truck(p: Pen) -> None:
    p.rect("cargo", 0.01, 0.08, 0.66, 0.78)
    p.poly("cab", [(0.68, 0.26), (0.88, 0.26), (0.99, 0.5), (0.99, 0.8), (0.68, 0.8)])
    p.poly("cabwin", [(0.72, 0.31), (0.86, 0.31), (0.93, 0.5), (0.72, 0.5)])
    for k, cx in enumerate((0.15, 0.45, 0.84), start=1):
        p.circle("wheel", cx, 0.8, 0.19, piece=k)
        p.circle("hub", cx, 0.8, 0.07, piece=k)


def _bus(p: Pen) -> None:
    p.poly("body", [(0.01, 0.08), (0.93, 0.08), (0.99, 0.2), (0.99, 0.84), (0.01, 0.84)])
    for i in range(5):
        x0 = 0.06 + i * 0.155
        p.rect("window", x0, 0.2, x0 + 0.12, 0.46, piece=i + 1)
    p.poly("window", [(0.86, 0.2), (0.93, 0.2), (0.97, 0.26), (0.97, 0.5), (0.86, 0.5)], piece=6)
    for k, cx in enumerate((0.2, 0.8), start=1):
        p.circle("wheel", cx, 0.84, 0.17, piece=k)
        p.circle("hub", cx, 0.84, 0.06, piece=k)


def _bicycle(p: Pen) -> None:
    for k, cx in enumerate((0.22, 0.78), start=1):
        p.ring("wheel", cx, 0.68, 0.46, 0.07, piece=k)
    rear, seat, crank, head, front = (0.22, 0.68), (0.43, 0.3), (0.49, 0.68), (0.73, 0.3), (0.78, 0.68)
    p.line("frame", [rear, seat, crank, rear], 0.06)
    p.line("frame", [seat, head, crank], 0.06)
    p.line("frame", [head, front], 0.06)
    p.line("frame", [(0.73, 0.3), (0.71, 0.14), (0.82, 0.12)], 0.06)
    p.line("saddle", [(0.36, 0.25), (0.5, 0.25)], 0.08)


def _boat(p: Pen) -> None:
    p.rect("mast", 0.47, 0.03, 0.52, 0.64)
    p.poly("sail", [(0.54, 0.06), (0.54, 0.58), (0.92, 0.58)], piece=1)
    p.poly("sail", [(0.45, 0.14), (0.45, 0.58), (0.14, 0.58)], piece=2)
    p.poly("hull", [(0.0, 0.6), (1.0, 0.58), (0.84, 0.96), (0.12, 0.96)])


def _airplane(p: Pen) -> None:
    p.poly("wing", [(0.44, 0.46), (0.62, 0.46), (0.42, 0.0), (0.33, 0.0)], piece=1)
    p.poly("wing", [(0.44, 0.54), (0.62, 0.54), (0.42, 1.0), (0.33, 1.0)], piece=2)
    p.poly("tail", [(0.03, 0.48), (0.15, 0.48), (0.07, 0.22), (0.01, 0.22)], piece=1)
    p.poly("tail", [(0.03, 0.52), (0.15, 0.52), (0.07, 0.78), (0.01, 0.78)], piece=2)
    p.poly("fuselage", [(0.02, 0.44), (0.86, 0.41), (0.97, 0.45), (1.0, 0.5), (0.97, 0.55), (0.86, 0.59),
                        (0.02, 0.56)])


def _house(p: Pen) -> None:
    p.rect("chimney", 0.7, 0.08, 0.8, 0.35)
    p.rect("wall", 0.1, 0.45, 0.9, 1.0)
    p.poly("roof", [(0.0, 0.48), (0.5, 0.04), (1.0, 0.48)])
    p.rect("door", 0.42, 0.68, 0.58, 1.0)
    p.rect("window", 0.17, 0.56, 0.34, 0.73, piece=1)
    p.rect("window", 0.66, 0.56, 0.83, 0.73, piece=2)


def _tree(p: Pen) -> None:
    p.rect("trunk", 0.41, 0.55, 0.59, 1.0)
    p.circle("crown", 0.5, 0.26, 0.36)
    p.circle("crown", 0.28, 0.43, 0.27)
    p.circle("crown", 0.72, 0.43, 0.27)


def _flower(p: Pen) -> None:
    p.line("stem", [(0.5, 0.4), (0.5, 1.0)], 0.09)
    p.poly("leaf", [(0.5, 0.78), (0.85, 0.6), (0.62, 0.84)])
    for k in range(6):
        a = k * math.pi / 3
        p.circle("petal", 0.5 + 0.29 * math.cos(a), 0.28 + 0.29 * math.sin(a) * 0.55, 0.2, piece=k + 1)
    p.circle("centre", 0.5, 0.28, 0.17)


def _mushroom(p: Pen) -> None:
    p.poly("stalk", [(0.38, 0.42), (0.62, 0.42), (0.67, 1.0), (0.33, 1.0)])
    p.chord("cap", 0.0, 0.04, 1.0, 0.96, 180, 360)


def _person(p: Pen) -> None:
    p.line("arm", [(0.3, 0.28), (0.1, 0.58)], 0.17, piece=1)
    p.line("arm", [(0.7, 0.28), (0.9, 0.58)], 0.17, piece=2)
    p.rect("leg", 0.3, 0.58, 0.47, 1.0, piece=1)
    p.rect("leg", 0.53, 0.58, 0.7, 1.0, piece=2)
    p.rect("torso", 0.27, 0.23, 0.73, 0.62)
    p.circle("head", 0.5, 0.11, 0.22)


def _robot(p: Pen) -> None:
    p.line("antenna", [(0.5, 0.02), (0.5, 0.12)], 0.05)
    p.circle("antenna", 0.5, 0.03, 0.05)
    p.rect("head", 0.28, 0.1, 0.72, 0.38)
    p.circle("eye", 0.4, 0.23, 0.06)
    p.circle("eye", 0.6, 0.23, 0.06)
    p.rect("arm", 0.02, 0.44, 0.15, 0.76, piece=1)
    p.rect("arm", 0.85, 0.44, 0.98, 0.76, piece=2)
    p.rect("leg", 0.28, 0.84, 0.42, 1.0)
    p.rect("leg", 0.58, 0.84, 0.72, 1.0)
    p.rect("body", 0.18, 0.41, 0.82, 0.86)


def _cat(p: Pen) -> None:
    p.line("tail", [(0.16, 0.62), (0.04, 0.4), (0.08, 0.12)], 0.09)
    p.rect("body", 0.2, 0.78, 0.28, 1.0)
    p.rect("body", 0.56, 0.78, 0.64, 1.0)
    p.ellipse("body", 0.1, 0.4, 0.76, 0.9)
    p.poly("head", [(0.64, 0.26), (0.68, 0.0), (0.77, 0.14)])
    p.poly("head", [(0.83, 0.14), (0.92, 0.0), (0.95, 0.26)])
    p.circle("head", 0.8, 0.34, 0.24)
    p.circle("eye", 0.86, 0.3, 0.045)


def _fish(p: Pen) -> None:
    p.poly("tail", [(0.0, 0.08), (0.3, 0.5), (0.0, 0.92)])
    p.poly("fin", [(0.45, 0.2), (0.55, 0.0), (0.7, 0.18)])
    p.ellipse("body", 0.18, 0.12, 1.0, 0.88)
    p.circle("eye", 0.82, 0.4, 0.07)


def _bird(p: Pen) -> None:
    p.poly("body", [(0.0, 0.4), (0.2, 0.55), (0.0, 0.72)])
    p.ellipse("body", 0.08, 0.32, 0.84, 0.92)
    p.circle("body", 0.76, 0.3, 0.21)
    p.poly("beak", [(0.9, 0.2), (1.0, 0.3), (0.9, 0.38)])
    p.poly("wing", [(0.25, 0.52), (0.6, 0.46), (0.42, 0.85)])
    p.circle("eye", 0.8, 0.26, 0.045)


def _umbrella(p: Pen) -> None:
    p.line("handle", [(0.5, 0.45), (0.5, 0.88), (0.45, 0.97), (0.37, 0.93)], 0.06)
    p.chord("canopy", 0.0, 0.02, 1.0, 0.98, 180, 360)
    for k in range(4):  # scalloped edge
        p.circle(None, 0.125 + 0.25 * k, 0.52, 0.08)


def _lamp(p: Pen) -> None:
    p.rect("pole", 0.45, 0.33, 0.55, 0.9)
    p.ellipse("base", 0.18, 0.86, 0.82, 1.0)
    p.poly("shade", [(0.25, 0.0), (0.75, 0.0), (0.97, 0.36), (0.03, 0.36)])


def _table(p: Pen) -> None:
    p.rect("leg", 0.06, 0.25, 0.14, 1.0, piece=1)
    p.rect("leg", 0.86, 0.25, 0.94, 1.0, piece=2)
    p.rect("top", 0.0, 0.14, 1.0, 0.3)


def _chair(p: Pen) -> None:
    p.rect("leg", 0.1, 0.6, 0.2, 1.0, piece=1)
    p.rect("leg", 0.8, 0.6, 0.9, 1.0, piece=2)
    p.rect("back", 0.08, 0.0, 0.22, 0.55)
    p.rect("seat", 0.06, 0.5, 0.94, 0.63)


def _cup(p: Pen) -> None:
    p.ring("body", 0.74, 0.44, 0.22, 0.09)
    p.poly("body", [(0.04, 0.04), (0.76, 0.04), (0.68, 1.0), (0.12, 1.0)])


def _bottle(p: Pen) -> None:
    p.rect("cap", 0.3, 0.0, 0.7, 0.09)
    p.rect("body", 0.36, 0.08, 0.64, 0.22)
    p.poly("body", [(0.03, 0.42), (0.36, 0.2), (0.64, 0.2), (0.97, 0.42), (0.97, 1.0), (0.03, 1.0)])
    p.rect("label", 0.03, 0.56, 0.97, 0.8)


def _clock(p: Pen) -> None:
    p.circle("body", 0.5, 0.5, 0.5)
    p.circle("face", 0.5, 0.5, 0.4)
    for x0, y0, x1, y1 in ((0.48, 0.13, 0.52, 0.2), (0.48, 0.8, 0.52, 0.87), (0.13, 0.48, 0.2, 0.52),
                           (0.8, 0.48, 0.87, 0.52)):
        p.rect("hands", x0, y0, x1, y1)
    p.line("hands", [(0.5, 0.5), (0.5, 0.22)], 0.05)
    p.line("hands", [(0.5, 0.5), (0.7, 0.58)], 0.05)


def _key(p: Pen) -> None:
    p.circle("body", 0.2, 0.5, 0.46)
    p.circle(None, 0.2, 0.5, 0.2)
    p.rect("body", 0.36, 0.4, 0.99, 0.6)
    p.rect("body", 0.74, 0.6, 0.81, 0.88)
    p.rect("body", 0.88, 0.6, 0.95, 0.8)


def _ladder(p: Pen) -> None:
    p.rect("body", 0.04, 0.0, 0.2, 1.0)
    p.rect("body", 0.8, 0.0, 0.96, 1.0)
    for k in range(6):
        y = 0.07 + k * 0.16
        p.rect("body", 0.2, y, 0.8, y + 0.05)


def _balloon(p: Pen) -> None:
    p.line("string", [(0.5, 0.72), (0.42, 0.86), (0.56, 1.0)], 0.04)
    p.ellipse("body", 0.02, 0.0, 0.98, 0.72)
    p.poly("body", [(0.42, 0.75), (0.58, 0.75), (0.5, 0.68)])


def _kite(p: Pen) -> None:
    p.line("string", [(0.5, 0.72), (0.38, 0.84), (0.6, 0.92), (0.45, 1.0)], 0.04)
    p.poly("body", [(0.5, 0.0), (0.96, 0.3), (0.5, 0.74), (0.04, 0.3)])
    p.line("spar", [(0.5, 0.02), (0.5, 0.72)], 0.03)
    p.line("spar", [(0.06, 0.3), (0.94, 0.3)], 0.03)


def _star(p: Pen) -> None:
    pts = []
    for k in range(10):
        a = -math.pi / 2 + k * math.pi / 5
        r = 0.5 if k % 2 == 0 else 0.2
        pts.append((0.5 + r * math.cos(a), 0.55 + r * math.sin(a) * 1.0))
    p.poly("body", pts)


def _heart(p: Pen) -> None:
    p.circle("body", 0.28, 0.29, 0.29)
    p.circle("body", 0.72, 0.29, 0.29)
    p.poly("body", [(0.03, 0.4), (0.97, 0.4), (0.5, 1.0)])


def _moon(p: Pen) -> None:
    p.ellipse("body", 0.0, 0.0, 1.0, 1.0)
    p.ellipse(None, 0.38, -0.06, 1.4, 0.94)


def _cloud(p: Pen) -> None:
    p.rect("body", 0.18, 0.6, 0.86, 0.94)
    p.circle("body", 0.2, 0.68, 0.26)
    p.circle("body", 0.42, 0.46, 0.36)
    p.circle("body", 0.68, 0.5, 0.32)
    p.circle("body", 0.85, 0.7, 0.24)


def _d(draw: Callable[[Pen], None], **paints: Paint) -> Drawing:
    return Drawing(tuple(paints.items()), draw)


_WHEEL = Paint("wheel", "black", "gray")
_HUB = Paint("wheel", "gray", "white")
_WINDOW = Paint("window", "cyan", "white")

#: The drawing of every category (keys match :data:`chatrex.data.world.catalog.CATEGORIES`).
DRAWINGS: dict[str, Drawing] = {
    "car": _d(_car, body=Paint("body"), window=_WINDOW, wheel=_WHEEL, hub=_HUB),
    "truck": _d(_truck, cargo=Paint("cargo box", "white", "gray"), cab=Paint("cab"),
                cabwin=Paint("cab", "cyan", "white"), wheel=_WHEEL, hub=_HUB),
    "bus": _d(_bus, body=Paint("body"), window=_WINDOW, wheel=_WHEEL, hub=_HUB),
    "bicycle": _d(_bicycle, wheel=Paint("wheel", "black", "gray"), frame=Paint("frame"),
                  saddle=Paint("frame", "black", "brown")),
    "boat": _d(_boat, mast=Paint("mast", "brown", "black"), sail=Paint("sail", "white", "yellow"),
               hull=Paint("hull")),
    "airplane": _d(_airplane, wing=Paint("wing", "gray", "white"), tail=Paint("tail"),
                   fuselage=Paint("fuselage")),
    "house": _d(_house, chimney=Paint("roof", "brown", "black"), wall=Paint("wall"),
                roof=Paint("roof", "red", "brown"), door=Paint("door", "brown", "orange"), window=_WINDOW),
    "tree": _d(_tree, trunk=Paint("trunk", "brown", "black"), crown=Paint("crown")),
    "flower": _d(_flower, stem=Paint("stem", "green", "brown"), leaf=Paint("stem", "green", "brown"),
                 petal=Paint("petal"), centre=Paint("centre", "yellow", "orange")),
    "mushroom": _d(_mushroom, stalk=Paint("stalk", "white", "gray"), cap=Paint("cap")),
    "person": _d(_person, arm=Paint("arm", SKIN), leg=Paint("leg", "blue", "black"), torso=Paint("torso"),
                 head=Paint("head", SKIN)),
    "robot": _d(_robot, antenna=Paint("antenna", "black", "gray"), head=Paint("head", "gray", "white"),
                eye=Paint("head", "cyan", "yellow"), arm=Paint("arm", "gray", "white"),
                leg=Paint("body", "gray", "white"), body=Paint("body")),
    "cat": _d(_cat, tail=Paint("tail"), body=Paint("body"), head=Paint("head"),
              eye=Paint("head", "black", "yellow")),
    "fish": _d(_fish, tail=Paint("tail"), fin=Paint("body"), body=Paint("body"),
               eye=Paint("body", "black", "white")),
    "bird": _d(_bird, body=Paint("body"), beak=Paint("beak", "orange", "yellow"), wing=Paint("wing"),
               eye=Paint("body", "black", "white")),
    "umbrella": _d(_umbrella, handle=Paint("handle", "black", "gray"), canopy=Paint("canopy")),
    "lamp": _d(_lamp, pole=Paint("pole", "gray", "black"), base=Paint("base", "gray", "black"),
               shade=Paint("shade")),
    "table": _d(_table, leg=Paint("leg", "brown", "black"), top=Paint("top")),
    "chair": _d(_chair, leg=Paint("leg", "brown", "black"), back=Paint("back"), seat=Paint("seat")),
    "cup": _d(_cup, body=Paint(None)),
    "bottle": _d(_bottle, cap=Paint(None, "black", "gray"), body=Paint(None), label=Paint(None, "white", "yellow")),
    "clock": _d(_clock, body=Paint(None), face=Paint(None, "white", "yellow"), hands=Paint(None, "black", "gray")),
    "key": _d(_key, body=Paint(None)),
    "ladder": _d(_ladder, body=Paint(None)),
    "balloon": _d(_balloon, string=Paint(None, "gray", "black"), body=Paint(None)),
    "kite": _d(_kite, string=Paint(None, "black", "gray"), body=Paint(None), spar=Paint(None, "brown", "black")),
    "star": _d(_star, body=Paint(None)),
    "heart": _d(_heart, body=Paint(None)),
    "moon": _d(_moon, body=Paint(None)),
    "cloud": _d(_cloud, body=Paint(None)),
}


def draw_layers(category: str, w: int, h: int) -> tuple[np.ndarray, Optional[np.ndarray], list[Paint]]:
    """Draw ``category`` in a ``w`` x ``h`` box.

    Returns:
        ``(labels, pieces, paints)``: (h, w) uint8 paint labels (0 = empty, ``k`` = ``paints[k-1]``);
        (h, w) uint8 piece numbers within each part (None when the drawing numbers no pieces).
    """
    try:
        drawing = DRAWINGS[category]
    except KeyError:
        raise ValueError(f"unknown world category {category!r}; known: {sorted(DRAWINGS)}") from None
    if w < 1 or h < 1:
        raise ValueError(f"cannot draw a {category} in a {w}x{h} box")
    pen = Pen(int(w), int(h), {key: i + 1 for i, (key, _) in enumerate(drawing.paints)})
    drawing.draw(pen)
    labels = np.asarray(pen.image, dtype=np.uint8).copy()
    pieces = None if pen.pieces is None else np.asarray(pen.pieces, dtype=np.uint8).copy()
    return labels, pieces, drawing.paint_list


def draw_labels(category: str, w: int, h: int) -> tuple[np.ndarray, list[Paint]]:
    """Draw ``category`` into a ``(h, w)`` uint8 label map (0 = empty, ``k`` = ``paints[k-1]``)."""
    labels, _, paints = draw_layers(category, w, h)
    return labels, paints
