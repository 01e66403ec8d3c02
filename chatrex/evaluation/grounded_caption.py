"""Grounded captions: phrase–box F1.

A predicted (phrase, box) pair is correct when it is matched one-to-one to a ground-truth pair whose
box overlaps it with IoU ≥ 0.5 and whose phrase is the same after normalisation, or one of the
aliases the data gives for that ground truth (e.g. the region's category or short phrase). The
one-to-one matching maximises the number of correct pairs per image (Hungarian algorithm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from chatrex.evaluation.boxes import as_boxes, box_iou
from chatrex.evaluation.text import SynonymTable


@dataclass
class PhraseBox:
    """One grounded phrase–box pair; ``aliases`` are other accepted names (ground truth only)."""

    phrase: str
    box: Any
    aliases: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.box = as_boxes(self.box, f"box of phrase {self.phrase!r}")[0].tolist()
        self.aliases = tuple(a for a in self.aliases if a)


def phrases_agree(predicted: str, truth: PhraseBox) -> bool:
    """Whether a predicted phrase names a ground-truth pair (normalised text or an alias)."""
    return SynonymTable([truth.phrase], {truth.phrase: list(truth.aliases)}).same(predicted, truth.phrase)


def match_phrase_boxes(predicted: Sequence[PhraseBox], truth: Sequence[PhraseBox], iou_threshold: float = 0.5) -> list[tuple[int, int]]:
    """Largest one-to-one set of (pred index, gt index) pairs that agree in phrase and box."""
    if not predicted or not truth:
        return []
    iou = box_iou([p.box for p in predicted], [t.box for t in truth])
    ok = np.array([[iou[i, j] >= iou_threshold and phrases_agree(p.phrase, t) for j, t in enumerate(truth)]
                   for i, p in enumerate(predicted)])
    if not ok.any():
        return []
    # Maximise the number of valid pairs; among equal counts prefer higher IoU.
    weight = ok * (1.0 + 1e-3 * iou)
    rows, cols = linear_sum_assignment(-weight)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if ok[r, c]]


def phrase_box_f1(
    predicted: Sequence[Sequence[PhraseBox]], truth: Sequence[Sequence[PhraseBox]], iou_threshold: float = 0.5
) -> dict:
    """Precision, recall and F1 of phrase–box pairs pooled over images.

    ``predicted[i]`` and ``truth[i]`` are the pairs of image i. Returns ``precision``, ``recall``,
    ``f1`` (None when undefined), ``matched``, ``num_predicted``, ``num_ground_truth``.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted images but {len(truth)} ground-truth images")
    matched = sum(len(match_phrase_boxes(p, t, iou_threshold)) for p, t in zip(predicted, truth))
    n_pred = sum(len(p) for p in predicted)
    n_gt = sum(len(t) for t in truth)
    precision = matched / n_pred if n_pred else None
    recall = matched / n_gt if n_gt else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "matched": matched,
            "num_predicted": n_pred, "num_ground_truth": n_gt, "iou_threshold": iou_threshold}
