"""Detection precision and recall at one IoU threshold, per class and averaged over classes.

The ChatRex protocol (paper §7): the model is told the image's ground-truth categories and answers
with proposal indices; precision and recall at IoU 0.5 are computed for each class over the whole
data set and then averaged over classes (macro). mAP goes through pycocotools (``coco.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import numpy as np

from chatrex.evaluation.boxes import as_boxes, box_iou, greedy_match


@dataclass
class ImageGroundTruth:
    """Ground truth of one image: ``boxes`` (N, 4) xyxy and one label per box."""

    boxes: Any
    labels: Sequence[Hashable]

    def __post_init__(self) -> None:
        self.boxes = as_boxes(self.boxes, "ground-truth boxes")
        self.labels = list(self.labels)
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"ground truth has {len(self.boxes)} boxes but {len(self.labels)} labels")


@dataclass
class ImageDetections:
    """Detections of one image: ``boxes`` (M, 4) xyxy, one label and one score per box."""

    boxes: Any
    labels: Sequence[Hashable]
    scores: Sequence[float] | None = None

    def __post_init__(self) -> None:
        self.boxes = as_boxes(self.boxes, "predicted boxes")
        self.labels = list(self.labels)
        if self.scores is None:
            self.scores = [1.0] * len(self.labels)
        self.scores = [float(s) for s in self.scores]
        if not (len(self.labels) == len(self.scores) == len(self.boxes)):
            raise ValueError(
                f"detections have {len(self.boxes)} boxes, {len(self.labels)} labels and {len(self.scores)} scores"
            )


@dataclass
class ClassCounts:
    """Matches of one class over the data set."""

    true_positives: int = 0
    num_predictions: int = 0
    num_ground_truth: int = 0

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.num_predictions if self.num_predictions else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.num_ground_truth if self.num_ground_truth else None


@dataclass
class PrecisionRecall:
    """Macro (per class, then averaged) and micro precision/recall at one IoU threshold.

    ``precision`` averages over classes with at least one prediction, ``recall`` over classes with at
    least one ground-truth box (a class without predictions has no defined precision; it still lowers
    ``recall``). Both are None when no class qualifies.
    """

    precision: float | None
    recall: float | None
    micro_precision: float | None
    micro_recall: float | None
    iou_threshold: float
    per_class: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "micro_precision": self.micro_precision,
            "micro_recall": self.micro_recall,
            "iou_threshold": self.iou_threshold,
            "per_class": {
                str(k): {
                    "precision": c.precision,
                    "recall": c.recall,
                    "true_positives": c.true_positives,
                    "num_predictions": c.num_predictions,
                    "num_ground_truth": c.num_ground_truth,
                }
                for k, c in self.per_class.items()
            },
        }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def precision_recall_per_class(
    ground_truth: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    iou_threshold: float = 0.5,
) -> PrecisionRecall:
    """Per-class precision and recall at ``iou_threshold``, averaged over classes.

    Within each image and class, detections (highest score first) are matched one-to-one to ground
    truth of the same class (COCO's greedy rule); a matched detection is a true positive.
    ``ground_truth[i]`` and ``detections[i]`` describe the same image.
    """
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection images")
    counts: dict[Hashable, ClassCounts] = {}
    for gt, det in zip(ground_truth, detections):
        det_scores = np.asarray(det.scores, dtype=np.float64)
        for label in dict.fromkeys(list(gt.labels) + list(det.labels)):
            c = counts.setdefault(label, ClassCounts())
            gi = np.asarray([i for i, g in enumerate(gt.labels) if g == label], dtype=np.int64)
            di = np.asarray([i for i, d in enumerate(det.labels) if d == label], dtype=np.int64)
            c.num_ground_truth += len(gi)
            c.num_predictions += len(di)
            if len(gi) == 0 or len(di) == 0:
                continue
            di = di[np.argsort(-det_scores[di], kind="stable")]
            iou = box_iou(det.boxes[di], gt.boxes[gi])
            c.true_positives += int(np.sum(greedy_match(iou, iou_threshold) >= 0))
    tp = sum(c.true_positives for c in counts.values())
    npred = sum(c.num_predictions for c in counts.values())
    ngt = sum(c.num_ground_truth for c in counts.values())
    return PrecisionRecall(
        precision=_mean([c.precision for c in counts.values() if c.precision is not None]),
        recall=_mean([c.recall for c in counts.values() if c.recall is not None]),
        micro_precision=tp / npred if npred else None,
        micro_recall=tp / ngt if ngt else None,
        iou_threshold=iou_threshold,
        per_class=counts,
    )
