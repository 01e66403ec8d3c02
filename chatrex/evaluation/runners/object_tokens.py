"""Object-token diagnostics: can the LLM tell the boxes apart from what ChatRex gives it?

For each image, the ground-truth boxes go through the model's own processor, vision towers, object
encoder and projectors (no generation). The runner reports, at three points of the object path
(pooled RoI features; + box embedding, i.e. what enters the object trunk or projector; object tokens after it):

* the mean within-image cosine between the boxes' vectors (1.0: every box gives the same token);
* the held-out accuracy of a linear probe from the vectors to the box's category (images alternate
  between the probe's training and held-out halves), against always answering the commonest one;

plus the norms of object tokens and text embeddings, and the mean cosine between images of their
mean image token (1.0: the LLM sees the same picture whatever the image).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from chatrex.evaluation.boxes import xywh_to_xyxy
from chatrex.evaluation.coco import region_in_level
from chatrex.evaluation.datasets import EvalData, EvalDataError, coco_image_annotations
from chatrex.evaluation.object_tokens import linear_probe_accuracy, majority_accuracy, mean_pairwise_cosine
from chatrex.evaluation.runners.common import PredictorError, limit_items, progress_bar

POINTS = ("roi", "pre_projector", "object_token")


def labelled_boxes(data: EvalData, level: str = "instance") -> list[tuple[str, list, list[str]]]:
    """``[(image path, [[x0, y0, x1, y1], ...], [category, ...])]`` from records or a COCO file."""
    if data.kind == "records":
        out = []
        for rec in data.records:
            regions = [r for r in rec.get("regions", []) if region_in_level(r, level) and r.get("category")]
            out.append((rec["image"], [list(r["box"]) for r in regions], [str(r["category"]) for r in regions]))
        return out
    if data.kind == "coco":
        names = {c["id"]: c["name"] for c in data.coco.get("categories", [])}
        anns = coco_image_annotations(data.coco)
        out = []
        for img in data.coco["images"]:
            items = [a for a in anns[img["id"]] if a.get("category_id") in names]
            boxes = xywh_to_xyxy([a["bbox"] for a in items]).tolist()
            out.append((img["path"], boxes, [names[a["category_id"]] for a in items]))
        return out
    raise EvalDataError(f"object tokens need JSONL records or a COCO file with categories, not {data.kind} data "
                        f"({data.source})")


def model_and_processor(predictor: Any, what: str = "object tokens") -> tuple[Any, Any]:
    """The ChatRex model and processor of a pipeline, for the diagnostics that run the model directly
    instead of generating; ``PredictorError`` naming ``what`` for any other predictor."""
    model, processor = getattr(predictor, "model", None), getattr(predictor, "processor", None)
    needed = ("get_image_features", "project_objects", "config")
    if model is None or processor is None or not all(hasattr(model, n) for n in needed):
        raise PredictorError(f"{what} need a ChatRexPipeline (its .model and .processor), not "
                             f"{type(predictor).__name__}")
    return model, processor


@torch.no_grad()
def run_object_tokens(
    predictor: Any,
    data: EvalData,
    limit: Optional[int] = None,
    batch_size: int = 8,
    progress: bool = True,
    level: str = "instance",
) -> dict:
    """Statistics of the object path on the ground-truth boxes of ``data`` (see the module docstring).

    ``batch_size`` is accepted for the common interface; images go through the towers one by one.
    """
    from chatrex.mllm.object_encoder import encode_objects, xyxy_box_embedding
    from chatrex.utils.image import load_image

    model, processor = model_and_processor(predictor)
    cfg = model.config
    param = next(p for p in model.parameters() if p.is_floating_point())
    max_boxes = int(getattr(processor, "max_boxes", 100))
    samples = limit_items(labelled_boxes(data, level), limit)
    vectors: dict[str, list[torch.Tensor]] = {p: [] for p in POINTS}
    image_means, image_of_box, categories, per_image = [], [], [], []
    with progress_bar(len(samples), "object tokens", progress) as bar:
        for index, (path, boxes, cats) in enumerate(samples):
            boxes, cats = boxes[:max_boxes], cats[:max_boxes]
            inputs = processor.process(image=load_image(path), question="", bbox=boxes if boxes else None)
            pixel_values = inputs["pixel_values"].to(param.device, param.dtype)
            pixel_values_aux = inputs["pixel_values_aux"].to(param.device, param.dtype)
            image_embeds, levels = model.get_image_features(pixel_values, pixel_values_aux)
            image_means.append(image_embeds[0].float().mean(0).cpu())
            item = {"image": path, "num_boxes": len(boxes)}
            if boxes:
                norm_boxes = [inputs["boxes"][0].to(param.device)]
                roi = encode_objects(levels, norm_boxes, cfg.image_size_aux, cfg.roi_output_size, box_embedding=False)
                pre = roi + xyxy_box_embedding(norm_boxes[0], roi.shape[1] // 4).to(roi.dtype)  # = encode_objects(...)
                tokens = model.project_objects(pre)
                for point, v in zip(POINTS, (roi, pre, tokens)):
                    vectors[point].append(v.float().cpu())
                image_of_box += [index] * len(boxes)
                categories += cats
                item["object_token_cosine"] = mean_pairwise_cosine(vectors["object_token"][-1])
            per_image.append(item)
            bar.update(1)

    embeddings = model.get_input_embeddings().weight.detach().float()
    metrics: dict = {"num_images": len(samples), "num_boxes": len(categories),
                     "num_categories": len(set(categories)),
                     "norm/text_embedding": embeddings.norm(dim=-1).mean().item()}
    if image_means:
        metrics["cosine/image_token_between_images"] = mean_pairwise_cosine(torch.stack(image_means))
    if categories:
        groups = torch.tensor(image_of_box)
        stacked = {p: torch.cat(v) for p, v in vectors.items()}
        metrics["norm/object_token"] = stacked["object_token"].norm(dim=-1).mean().item()
        for point in POINTS:
            metrics[f"cosine/{point}"] = mean_pairwise_cosine(stacked[point], groups)
        names = sorted(set(categories))
        labels = torch.tensor([names.index(c) for c in categories])
        train = groups % 2 == 0
        if train.any() and not train.all():
            metrics["probe/majority"] = majority_accuracy(labels, train)
            for point in POINTS:
                metrics[f"probe/{point}"] = linear_probe_accuracy(stacked[point], labels, train)
    headline = [k for k in ("probe/majority", *(f"probe/{p}" for p in POINTS), *(f"cosine/{p}" for p in POINTS),
                            "cosine/image_token_between_images", "norm/object_token", "norm/text_embedding")
                if k in metrics]
    return {
        "task": "object-tokens",
        "metrics": metrics,
        "headline": headline,
        "config": {"level": level, "limit": limit, "data": data.source, "data_kind": data.kind,
                   "probe_split": "even images train, odd images held out"},
        "predictions": per_image,
    }
