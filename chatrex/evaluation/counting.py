"""Counting: exact-match accuracy of the number stated in the answer."""

from __future__ import annotations

import re
from typing import Sequence

from chatrex.evaluation.text import strip_tags

_UNITS = {
    "zero": 0, "no": 0, "none": 0, "one": 1, "single": 1, "two": 2, "pair": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12,
    "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_WEAK = {"no", "none", "single", "pair", "dozen"}
_TOKEN = re.compile(r"\d+(?:,\d{3})*|[a-z]+")


def parse_count(text: str) -> int | None:
    """The first number an answer states: digits (``3``, ``1,200``) or English number words
    (``three``, ``twenty-one``, ``a dozen``); ``no``/``none`` give 0 only when no other number is
    stated. Markup such as ``<obj3>`` is ignored. None when the text states no number.
    """
    tokens = _TOKEN.findall(strip_tags(text or "").lower().replace("-", " "))
    weak: int | None = None
    for i, tok in enumerate(tokens):
        if tok[0].isdigit():
            return int(tok.replace(",", ""))
        if tok in _TENS:
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            unit = _UNITS.get(nxt) if nxt not in _WEAK else None
            return _TENS[tok] + (unit if unit is not None and 0 < unit < 10 else 0)
        if tok == "hundred":
            return 100
        if tok in _UNITS:
            if tok in _WEAK:
                if weak is None:
                    weak = _UNITS[tok]
                continue
            return _UNITS[tok]
    return weak


def counting_accuracy(predicted: Sequence[int | None], truth: Sequence[int]) -> dict:
    """Exact-match accuracy; None predictions (no number stated) count as wrong.

    Returns ``accuracy``, ``correct``, ``num_samples``, ``num_unparsed`` and ``mae`` (mean absolute
    error over the parsed answers, None when none parsed).
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions but {len(truth)} ground-truth counts")
    correct = sum(1 for p, t in zip(predicted, truth) if p is not None and int(p) == int(t))
    errors = [abs(int(p) - int(t)) for p, t in zip(predicted, truth) if p is not None]
    n = len(truth)
    return {"accuracy": correct / n if n else None, "correct": correct, "num_samples": n,
            "num_unparsed": sum(1 for p in predicted if p is None),
            "mae": sum(errors) / len(errors) if errors else None}
