"""Grounded answers as data: parse ChatRex's tagged answers, write task prompts and fixed-form answers,
and draw grounded answers. Importing this package does not import torch."""

from chatrex.grounding.parser import (
    EOS_TOKENS,
    GroundedAnswer,
    Grounding,
    boxes_for,
    parse_grounded,
    render_grounded,
)
from chatrex.grounding.prompts import (
    MAX_OBJECTS,
    TASKS,
    build_answer,
    build_prompt,
    counting_answer,
    detection_answer,
    format_regions,
    grounded_answer,
    pluralize,
    region_answer,
    templates,
)
from chatrex.grounding.visualize import draw_grounded, phrase_colors

__all__ = [
    "EOS_TOKENS",
    "GroundedAnswer",
    "Grounding",
    "boxes_for",
    "parse_grounded",
    "render_grounded",
    "MAX_OBJECTS",
    "TASKS",
    "build_answer",
    "build_prompt",
    "counting_answer",
    "detection_answer",
    "format_regions",
    "grounded_answer",
    "pluralize",
    "region_answer",
    "templates",
    "draw_grounded",
    "phrase_colors",
]
