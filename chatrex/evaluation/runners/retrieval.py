"""Retrieval without generation: the probability the model gives the right box.

For each referring expression of world records, the prompt holds the image's ground-truth regions (the
lists of ``referring --boxes gt``: at most ``max_boxes``, the target always among them) and the answer
``<ground>expression</ground><objects><objK></objects>`` is teacher-forced. At the index token this
reports the cross-entropy and the argmax accuracy, beside those of a uniform guess over the prompt's
boxes (ln K and 1/K). A model blind to its boxes scores the uniform values whatever its language.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from chatrex.evaluation.datasets import EvalData
from chatrex.evaluation.runners.common import progress_bar, sample_items
from chatrex.evaluation.runners.object_tokens import model_and_processor
from chatrex.evaluation.runners.referring import ground_truth_box_lists, referring_samples
from chatrex.evaluation.sharding import current_shard


@torch.no_grad()
def run_retrieval(
    predictor: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    progress: bool = True,
    max_boxes: int = 100,
) -> dict:
    """Index-token cross-entropy and accuracy on teacher-forced referring answers (see the module docstring).

    ``batch_size`` is accepted for the common interface; queries run one by one.
    """
    from chatrex.grounding.prompts import build_answer, build_prompt
    from chatrex.mllm.modeling_chatrex import labelled_positions
    from chatrex.mllm.tokens import OBJ_TOKENS
    from chatrex.utils.batch import batch_to
    from chatrex.utils.image import load_image

    model, processor = model_and_processor(predictor, "retrieval scores")
    param = next(p for p in model.parameters() if p.is_floating_point())
    samples = sample_items(referring_samples(data), limit)
    lists = ground_truth_box_lists(data, samples, max_boxes)
    index_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(OBJ_TOKENS), device=param.device)
    shard = current_shard()  # in a torchrun job: this process's block of the samples, then everyone's
    mine = shard.take(list(zip(samples, lists)))
    predictions = []
    with progress_bar(len(mine), "retrieval", progress and shard.is_main) as bar:
        for s, boxes in mine:
            target = boxes.index([float(v) for v in s["box"]])
            answer = build_answer("referring", detections={s["expression"]: [target]})
            question = build_prompt("referring", expression=s["expression"])
            inputs = batch_to(processor(images=[load_image(s["image"])], questions=[question], boxes=[boxes],
                                        answers=[answer]), param.device, param.dtype)
            # logits only at the answer's positions (a batch of one: every row is 0)
            logits = model(**inputs, logits_at_labels=True).logits.float()
            _, cols = labelled_positions(inputs["labels"])
            labels = inputs["labels"][0, 1:][cols]
            if logits.shape[0] != labels.numel():
                raise RuntimeError(f"the model gave {logits.shape[0]} rows of logits for {labels.numel()} answer tokens")
            at = torch.isin(labels, index_ids).nonzero().flatten()
            if at.numel() != 1:
                raise RuntimeError(f"the teacher-forced answer {answer!r} has {at.numel()} index tokens, not 1")
            t = int(at[0])
            best = (index_ids == logits[t].argmax()).nonzero().flatten()  # empty: the argmax is no index token
            predictions.append({
                "image": s["image"], "expression": s["expression"], "num_boxes": len(boxes), "target": target,
                "predicted": int(best[0]) if best.numel() else None,
                "nll": -float(logits[t].log_softmax(-1)[labels[t]]),
            })
            bar.update(1)
    predictions = shard.gather(predictions)
    n = len(predictions)
    metrics: dict = {"num_samples": n}
    if n:
        metrics.update({
            "index_accuracy": sum(p["predicted"] == p["target"] for p in predictions) / n,
            "index_accuracy/uniform": sum(1 / p["num_boxes"] for p in predictions) / n,
            "index_nll": sum(p["nll"] for p in predictions) / n,
            "index_nll/uniform": sum(math.log(p["num_boxes"]) for p in predictions) / n,
            "boxes_per_query": sum(p["num_boxes"] for p in predictions) / n,
        })
    return {
        "task": "retrieval",
        "metrics": metrics,
        "headline": [k for k in ("index_accuracy", "index_accuracy/uniform", "index_nll", "index_nll/uniform")
                     if k in metrics],
        "config": {"max_boxes": max_boxes, "limit": limit, "data": data.source, "data_kind": data.kind},
        "predictions": predictions,
    }
