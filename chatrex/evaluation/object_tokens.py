"""Does the visual input carry information? Metrics on feature vectors, no model needed.

A ChatRex whose object tokens are all the same vector cannot tell boxes apart, whatever its LLM does.
These metrics measure that directly:

* :func:`mean_pairwise_cosine`: how alike the vectors of one group (the boxes of one image, or the
  images of a dataset) are; 1.0 means one vector repeated;
* :func:`linear_probe_accuracy`: held-out accuracy of a multinomial logistic regression that reads a
  label (e.g. the box's category) from the vectors; compare it with :func:`majority_accuracy`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _check_features(features: torch.Tensor) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError(f"features must be a 2-D tensor (N, D); got {getattr(features, 'shape', type(features))}")
    if features.numel() and not torch.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features.detach().double()


def mean_pairwise_cosine(features: torch.Tensor, groups: Optional[torch.Tensor] = None) -> Optional[float]:
    """Mean cosine similarity over pairs of distinct rows in the same group.

    Args:
        features: (N, D).
        groups: (N,) integer group of each row (e.g. its image); None: one group.
    Returns:
        The mean over groups (each group weighted equally) of the mean over its pairs, or None when no
        group has two rows.
    """
    x = F.normalize(_check_features(features), dim=-1)
    if groups is None:
        groups = torch.zeros(x.shape[0], dtype=torch.long)
    if groups.shape != (x.shape[0],):
        raise ValueError(f"groups must have shape ({x.shape[0]},); got {tuple(groups.shape)}")
    means = []
    for g in groups.unique():
        z = x[groups == g]
        n = z.shape[0]
        if n < 2:
            continue
        sim = z @ z.T
        means.append(((sim.sum() - sim.diagonal().sum()) / (n * n - n)).item())
    return sum(means) / len(means) if means else None


def majority_accuracy(labels: torch.Tensor, train: torch.Tensor) -> float:
    """Held-out accuracy of always answering the commonest training label (the smallest one on ties)."""
    if not train.any() or train.all():
        raise ValueError("the split needs at least one training and one held-out row")
    commonest = torch.bincount(labels[train].long()).argmax()
    return (labels[~train] == commonest).double().mean().item()


def linear_probe_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    train: torch.Tensor,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
) -> float:
    """Held-out accuracy of a logistic regression from ``features`` to ``labels``.

    Features are standardised with the training rows' mean and std; full-batch Adam for ``steps``,
    L2 penalty ``weight_decay`` on the weights. Deterministic (zero init, no sampling).

    Args:
        features: (N, D); labels: (N,) integers in [0, C); train: (N,) bool, True for training rows.
    """
    x = _check_features(features).float()
    if labels.shape != (x.shape[0],) or train.shape != (x.shape[0],):
        raise ValueError(f"labels and train must have shape ({x.shape[0]},); got {tuple(labels.shape)}, "
                         f"{tuple(train.shape)}")
    if not train.any() or train.all():
        raise ValueError("the split needs at least one training and one held-out row")
    labels = labels.long()
    num_classes = int(labels.max().item()) + 1
    mean, std = x[train].mean(0), x[train].std(0, unbiased=False)
    x = (x - mean) / (std + 1e-6)
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(x[train] @ weight + bias, labels[train]) + weight_decay * weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = (x[~train] @ weight + bias).argmax(-1)
    return (pred == labels[~train]).double().mean().item()


__all__ = ["linear_probe_accuracy", "majority_accuracy", "mean_pairwise_cosine"]
