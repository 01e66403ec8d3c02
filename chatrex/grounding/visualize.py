"""Drawing a grounded answer on its image: each grounded box labelled with its phrase, one colour per
phrase; the other input boxes optionally thin and grey. Mask regions are filled in their colour."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from PIL import Image

from chatrex.grounding.parser import GroundedAnswer
from chatrex.utils.visualize import Color, draw_boxes, overlay_masks, palette

__all__ = ["draw_grounded", "phrase_colors", "UNGROUNDED_COLOR"]

#: Colour of boxes that no phrase grounds.
UNGROUNDED_COLOR: Color = (150, 150, 150)
#: Longest label drawn; longer phrases (region sentences) are shortened with an ellipsis.
MAX_LABEL_CHARS = 40


def _key(phrase: str) -> str:
    return " ".join(phrase.lower().split())


def phrase_colors(answer: GroundedAnswer) -> dict[str, Color]:
    """One colour per distinct phrase (case and spacing ignored), in order of first mention; keyed by
    the phrase as first written. The CLI uses the same colours to print the answer."""
    firsts: dict[str, str] = {}
    for g in answer.groundings:
        firsts.setdefault(_key(g.phrase), g.phrase)
    colors = palette(len(firsts))
    by_key = dict(zip(firsts, colors))
    return {g.phrase: by_key[_key(g.phrase)] for g in answer.groundings}


def _as_box_list(boxes: Any) -> list[list[float]]:
    if boxes is None:
        return []
    if hasattr(boxes, "tolist"):  # tensor / ndarray
        boxes = boxes.tolist()
    out = []
    for i, b in enumerate(boxes):
        try:
            vals = [float(v) for v in b]
        except (TypeError, ValueError):
            raise ValueError(f"box {i} is not a sequence of numbers: {b!r}") from None
        if len(vals) != 4:
            raise ValueError(f"box {i} has {len(vals)} values; expected 4 (x0, y0, x1, y1)")
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"box {i} has a non-finite coordinate: {vals}")
        out.append(vals)
    return out


def _shorten(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1].rstrip() + "…"


def draw_grounded(
    image: Image.Image,
    answer: GroundedAnswer,
    boxes: Any,
    show_ungrounded: bool = True,
    width: Optional[int] = None,
    font_size: Optional[int] = None,
    masks: Optional[Sequence[Any]] = None,
) -> Image.Image:
    """Return a copy of ``image`` with the answer's grounded boxes drawn.

    Args:
        image: the PIL image the boxes refer to.
        answer: the parsed answer (its indices refer to ``boxes``).
        boxes: the N boxes given to the model, ``xyxy`` in pixels of ``image`` (list, array or tensor).
        show_ungrounded: also draw boxes no phrase refers to, thin and grey, unlabelled.
        width: line width of grounded boxes (default scales with the image size).
        font_size: label size in px (default scales with the image size).
        masks: optional, one entry per box: None for a box region, or its mask (a binary array of the
            image's size, COCO RLE or polygons), filled in the box's colour (grey when ungrounded and
            ``show_ungrounded``).

    A box grounded by several different phrases is drawn once, labelled ``"phrase A / phrase B"`` in
    the first phrase's colour.

    Raises:
        ValueError: malformed boxes, or an index not smaller than the number of boxes (parse with
            ``num_boxes=len(boxes)`` to avoid it).
    """
    box_list = _as_box_list(boxes)
    n = len(box_list)
    colors = phrase_colors(answer)
    labels: dict[int, list[str]] = {}
    box_color: dict[int, Color] = {}
    for g in answer.groundings:
        for i in g.indices:
            if not 0 <= i < n:
                raise ValueError(
                    f"the answer grounds {g.phrase!r} to <obj{i}> but only {n} boxes were given; "
                    "parse with num_boxes=len(boxes)"
                )
            names = labels.setdefault(i, [])
            if _key(g.phrase) not in (_key(p) for p in names):
                names.append(g.phrase)
            box_color.setdefault(i, colors[g.phrase])
    out = image.convert("RGB")
    if masks is not None:
        from chatrex.utils.masks import decode_mask

        if len(masks) != n:
            raise ValueError(f"got {n} boxes but {len(masks)} mask entries (None for a box region)")
        # ungrounded masks first (grey), grounded ones over them
        drawn = [i for i, m in enumerate(masks) if m is not None and i not in labels and show_ungrounded]
        drawn += [i for i, m in enumerate(masks) if m is not None and i in labels]
        if drawn:
            arrays = [decode_mask(masks[i], out.height, out.width, where=f"mask of region {i}") for i in drawn]
            out = overlay_masks(out, arrays, [box_color.get(i, UNGROUNDED_COLOR) for i in drawn])
    if show_ungrounded:
        rest = [i for i in range(n) if i not in labels]
        if rest:
            out = draw_boxes(out, [box_list[i] for i in rest], colors=[UNGROUNDED_COLOR] * len(rest), width=1)
    if labels:
        order = list(labels)
        out = draw_boxes(
            out,
            [box_list[i] for i in order],
            labels=[_shorten(" / ".join(labels[i])) for i in order],
            colors=[box_color[i] for i in order],
            width=width,
            font_size=font_size,
        )
    return out
