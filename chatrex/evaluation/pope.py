"""POPE-style object existence (yes/no) questions and their metrics.

For each image, ``n`` categories it contains are asked about (answer "yes") and the same number of
categories it does not contain (answer "no"), drawn in one of three ways (POPE, Li et al. 2023):

* ``random``: uniformly from the absent categories;
* ``popular``: the absent categories that occur in the most images overall;
* ``adversarial``: the absent categories that co-occur most often with the image's categories.
"""

from __future__ import annotations

import random as _random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from chatrex.evaluation.text import strip_tags

SETTINGS = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class PopeQuestion:
    """Ask whether ``category`` is in image ``image_index``; ``label`` is the true answer."""

    image_index: int
    category: str
    label: bool
    setting: str


def category_statistics(image_categories: Sequence[Iterable[str]]) -> tuple[Counter, Counter]:
    """(images per category, images per unordered category pair) over the data set."""
    freq: Counter = Counter()
    pairs: Counter = Counter()
    for cats in image_categories:
        cats = sorted(set(cats))
        freq.update(cats)
        for i, a in enumerate(cats):
            for b in cats[i + 1:]:
                pairs[(a, b)] += 1
    return freq, pairs


def build_pope_questions(
    image_categories: Sequence[Iterable[str]], setting: str, num_per_image: int = 3, seed: int = 0
) -> list[PopeQuestion]:
    """Balanced yes/no questions for every image (deterministic for a given ``seed``).

    Up to ``num_per_image`` present categories (sampled) give "yes" questions; as many absent
    categories, chosen by ``setting``, give "no" questions (fewer when the vocabulary runs out).
    Images without categories get no questions. Ties in popularity / co-occurrence break by name.
    """
    if setting not in SETTINGS:
        raise ValueError(f"POPE setting must be one of {SETTINGS}, got {setting!r}")
    if num_per_image <= 0:
        raise ValueError(f"num_per_image must be positive, got {num_per_image}")
    sets = [set(c) for c in image_categories]
    vocab = sorted(set().union(*sets)) if sets else []
    freq, pairs = category_statistics(sets)
    rng = _random.Random(seed)
    questions: list[PopeQuestion] = []
    for idx, present in enumerate(sets):
        if not present:
            continue
        pos = sorted(rng.sample(sorted(present), min(num_per_image, len(present))))
        absent = [c for c in vocab if c not in present]
        n_neg = min(len(pos), len(absent))
        if setting == "random":
            neg = sorted(rng.sample(absent, n_neg))
        elif setting == "popular":
            neg = sorted(absent, key=lambda c: (-freq[c], c))[:n_neg]
        else:
            def co(c: str) -> int:
                return sum(pairs[tuple(sorted((c, p)))] for p in present)

            neg = sorted(absent, key=lambda c: (-co(c), -freq[c], c))[:n_neg]
        questions += [PopeQuestion(idx, c, True, setting) for c in pos]
        questions += [PopeQuestion(idx, c, False, setting) for c in neg]
    return questions


_WORDS = re.compile(r"[a-z]+")
_NEGATIONS = {"no", "not", "none", "nope", "isn", "aren", "cannot", "nothing", "neither"}


def parse_yes_no(text: str) -> bool | None:
    """Read a yes/no answer: a leading "yes"/"no" decides; otherwise a negation word anywhere means
    "no" and a "yes" anywhere means "yes". None when the text says neither."""
    words = _WORDS.findall(strip_tags(text or "").lower())
    if not words:
        return None
    if words[0] in ("yes", "yeah", "yep", "correct", "true"):
        return True
    if words[0] in ("no", "nope", "false"):
        return False
    if any(w in _NEGATIONS for w in words):
        return False
    if "yes" in words:
        return True
    return None


def pope_metrics(predictions: Sequence[bool | None], labels: Sequence[bool]) -> dict:
    """Accuracy, precision, recall, F1 ("yes" is positive) and yes-ratio.

    Unreadable answers (None) count as "no" and are reported as ``num_unparsed``.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    pred = [bool(p) for p in predictions]
    tp = sum(1 for p, t in zip(pred, labels) if p and t)
    fp = sum(1 for p, t in zip(pred, labels) if p and not t)
    fn = sum(1 for p, t in zip(pred, labels) if not p and t)
    tn = sum(1 for p, t in zip(pred, labels) if not p and not t)
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else None, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n if n else None, "num_samples": n,
            "num_unparsed": sum(1 for p in predictions if p is None),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}
