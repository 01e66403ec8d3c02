"""Held-out accuracy of a stage-0 export: what do the vision towers know before ChatRex is trained on them?

Stage 0 (``chatrex train vision``) reports accuracies on its training batches only. This evaluation runs
the export's own heads on another split (e.g. the world's ``test.jsonl``):

* ``category/accuracy``: the category of each annotated region (instances and parts), read from its
  RoI feature by the stage-0 head; ``category/majority`` is always answering the commonest one;
* ``background/accuracy``: synthesised boxes away from every region, which must read ``background``;
* ``<attribute>/accuracy``: each attribute head, on the regions that have that attribute.

A low linear probe on the RoI features (``chatrex eval object-tokens``) with a high ``category/accuracy``
here means the information is in the features, non-linearly.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Optional

import torch

from chatrex.data.seeded_index import SeededIndex
from chatrex.data.vision_dataset import IGNORE, VisionDataConfig, VisionPretrainDataset, collate_vision


def evaluate_towers(
    model,
    data: str | Path,
    limit: Optional[int] = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    seed: int = 0,
) -> dict:
    """Score a :class:`~chatrex.training.vision_task.VisionPretrainModel` on the records of ``data``.

    Args:
        model: a stage-0 model (``load_vision_pretrain(path)``); its vocabulary labels the data.
        data: a JSONL record file.
        limit: only the first N images.
        seed: draws the background boxes (the same seed gives the same boxes).
    Returns:
        ``{"task": "towers", "metrics", "headline", "config", "wall_seconds"}``.
    """
    from tqdm.auto import tqdm

    from chatrex.mllm.image_processing import ChatRexImageProcessor

    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    start = time.perf_counter()
    vocab = model.vocabulary
    dataset = VisionPretrainDataset(VisionDataConfig(files=[str(data)], attributes=list(vocab.attributes)),
                                    vocabulary=vocab)
    processor = ChatRexImageProcessor(model.config.image_size, model.config.image_size_aux)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    model = model.to(device).eval()
    hits: Counter = Counter()
    counts: Counter = Counter()
    region_labels: list[torch.Tensor] = []
    with torch.no_grad(), tqdm(total=n, desc="towers", unit="image", disable=not progress, leave=False) as bar:
        for first in range(0, n, batch_size):
            samples = [dataset[SeededIndex(i, seed)] for i in range(first, min(first + batch_size, n))]
            batch = collate_vision(samples, processor, model.config.image_grid, list(vocab.attributes))
            pv = processor.normalize(batch["pixel_values"].to(device))
            pva = processor.normalize(batch["pixel_values_aux"].to(device), aux=True)
            out = model(pv, pva, [b.to(device) for b in batch["boxes"]])
            regions = batch["is_region"]
            predicted = out["category"].argmax(-1).cpu()
            labels = batch["category"]
            for name, mask in (("category", regions), ("background", ~regions)):
                hits[name] += int((predicted[mask] == labels[mask]).sum())
                counts[name] += int(mask.sum())
            region_labels.append(labels[regions])
            for name in vocab.attributes:
                valid = batch[name] != IGNORE
                hits[name] += int((out[name].argmax(-1).cpu()[valid] == batch[name][valid]).sum())
                counts[name] += int(valid.sum())
            bar.update(len(batch["boxes"]))
    if counts["category"] == 0:
        raise ValueError(f"'{data}' has no region of a category this model knows ({len(vocab.categories) - 1} "
                         "categories); is it the same kind of data the towers were trained on?")
    metrics: dict = {}
    for name in ["category", "background", *vocab.attributes]:
        if counts[name]:
            metrics[name] = {"accuracy": hits[name] / counts[name], "count": counts[name]}
    labels = torch.cat(region_labels)
    metrics["category"]["majority"] = float(torch.bincount(labels).max()) / len(labels)
    return {
        "task": "towers",
        "metrics": metrics,
        "headline": ["category/accuracy", "category/majority", "background/accuracy",
                     *[f"{a}/accuracy" for a in vocab.attributes if counts[a]]],
        "config": {"data": str(data), "images": n, "seed": seed, "categories": len(vocab.categories) - 1},
        "wall_seconds": round(time.perf_counter() - start, 3),
    }


__all__ = ["evaluate_towers"]
