"""Choose how the pipeline filters UPN proposals before ChatRex sees them, on a validation split.

The official filter (score ≥ 0.3, NMS at IoU 0.8, the first 100 boxes, fine-grained prompt) was tuned
for the official UPN; a smaller UPN's scores are calibrated differently. This script runs the UPN once
per image and granularity (cached as ``.npz``), then for each filter setting measures, on a fixed random
subset of referring expressions:

- ``oracle``: the share of targets some given box overlaps at IoU ≥ 0.5 (the best a perfect pick scores);
- ``recall/instance``, ``recall/part``: the same over every annotated region of the sampled images;
- ``acc``: referring Acc@0.5 of ChatRex's first grounded box (skipped with ``--no-chatrex``);
- ``boxes``: the mean number of boxes given.

A setting is ``GRANULARITY:MIN_SCORE:NMS:MAX_BOXES``; GRANULARITY is ``fine``, ``coarse`` or
``fine+coarse`` (both prompts' kept boxes pooled, NMS over the pool, best scores first)::

    python scripts/sweep_proposal_filter.py --model chatrex/assets/chatrex-small \\
        --data /tmp/val/val.jsonl --cache /tmp/val-cache --samples 150 \\
        --setting fine:0.3:0.8:100 --setting fine:0.1:0.6:100 --out /tmp/sweep.json

Use a validation split (``chatrex world generate --split val``), not the test split the README reports.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Setting:
    granularity: str
    min_score: float
    nms: float
    max_boxes: int

    @classmethod
    def parse(cls, text: str) -> "Setting":
        try:
            gran, score, iou, top = text.split(":")
            setting = cls(gran, float(score), float(iou), int(top))
        except ValueError:
            raise SystemExit(f"bad setting {text!r}; expected GRANULARITY:MIN_SCORE:NMS:MAX_BOXES") from None
        if gran not in ("fine", "coarse", "fine+coarse") or not 0 < setting.max_boxes <= 100:
            raise SystemExit(f"bad setting {text!r}: granularity fine|coarse|fine+coarse, max boxes 1..100")
        return setting

    def __str__(self) -> str:
        return f"{self.granularity}:{self.min_score:g}:{self.nms:g}:{self.max_boxes}"


def cached_proposals(upn, image: str, granularity: str, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, 4) xyxy boxes in original pixels and (Q,) scores, best first; computed once per image."""
    path = cache / granularity / (Path(image).stem + ".npz")
    if not path.is_file():
        out = upn.inference([image], prompt_type=granularity)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, boxes=out["original_xyxy_boxes"][0], scores=out["scores"][0])
    data = np.load(path)
    return torch.from_numpy(data["boxes"]).float(), torch.from_numpy(data["scores"]).float()


def filtered(props: dict[str, tuple[torch.Tensor, torch.Tensor]], setting: Setting) -> list[list[float]]:
    """The boxes the pipeline would give ChatRex under ``setting`` (integer pixels, best score first):
    the pipeline's own ``filter_proposals`` over the prompts' proposals, pooled and sorted by score."""
    from chatrex.upn.postprocess import filter_proposals

    boxes = torch.cat([props[g][0] for g in setting.granularity.split("+")])
    scores = torch.cat([props[g][1] for g in setting.granularity.split("+")])
    order = torch.argsort(scores, descending=True, stable=True)
    kept = filter_proposals({"original_xyxy_boxes": boxes[order][None], "scores": scores[order][None]},
                            min_score=setting.min_score, nms_value=setting.nms)
    return [[float(v) for v in b] for b in kept["original_xyxy_boxes"][0][: setting.max_boxes]]


def covered(given: list[list[float]], targets: list[list[float]]) -> list[bool]:
    """Whether some box of ``given`` fits each target (IoU ≥ 0.5)."""
    from chatrex.evaluation.runners.referring import best_iou

    return [best_iou(given, t) >= 0.5 for t in targets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="pipeline directory (upn/ + chatrex/)")
    parser.add_argument("--data", type=Path, required=True, help="world JSONL records (a validation split)")
    parser.add_argument("--cache", type=Path, required=True, help="folder for the UPN outputs")
    parser.add_argument("--samples", type=int, default=150, help="referring expressions (a fixed random subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", action="append", required=True, type=Setting.parse)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-chatrex", action="store_true", help="only the proposal statistics")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from tqdm.auto import tqdm

    from chatrex.evaluation.coco import region_in_level
    from chatrex.evaluation.datasets import load_eval_data
    from chatrex.evaluation.referring import referring_accuracy
    from chatrex.evaluation.runners.common import Query, run_queries
    from chatrex.evaluation.runners.referring import referring_samples
    from chatrex.grounding.prompts import build_prompt
    from chatrex.interfaces.pipeline import ChatRexPipeline

    data = load_eval_data(args.data)
    samples = referring_samples(data)
    rng = random.Random(args.seed)
    samples = [samples[i] for i in sorted(rng.sample(range(len(samples)), min(args.samples, len(samples))))]
    images = sorted({s["image"] for s in samples})
    regions = {rec["image"]: rec.get("regions", []) for rec in data.records}
    pipe = ChatRexPipeline.from_pretrained(args.model, device="cpu")
    grans = sorted({g for st in args.setting for g in st.granularity.split("+")})
    props = {}
    for image in tqdm(images, desc="UPN (cached)"):
        props[image] = {g: cached_proposals(pipe.upn, image, g, args.cache) for g in grans}

    results = []
    for setting in args.setting:
        given = {image: filtered(props[image], setting) for image in images}
        row: dict = {"setting": str(setting), **asdict(setting), "num_samples": len(samples),
                     "boxes": float(np.mean([len(given[s["image"]]) for s in samples]))}
        row["oracle"] = float(np.mean([covered(given[s["image"]], [s["box"]])[0] for s in samples]))
        for level in ("instance", "part"):
            hits = [h for image in images
                    for h in covered(given[image], [r["box"] for r in regions[image] if region_in_level(r, level)])]
            row[f"recall/{level}"] = float(np.mean(hits)) if hits else None
        if not args.no_chatrex:
            queries = [Query(s["image"], build_prompt("referring", expression=s["expression"]), boxes=given[s["image"]])
                       for s in samples]
            answers = run_queries(pipe, queries, batch_size=args.batch_size, desc=f"referring {setting}")
            firsts = []
            for ans in answers:
                idx = next((ix[0] for _, ix in ans.groundings if ix), None)
                firsts.append(None if idx is None else ans.boxes[idx])
            acc = referring_accuracy(firsts, [s["box"] for s in samples])
            row["acc"] = acc["accuracy"]
            row["correct"] = [iou is not None and iou >= 0.5 for iou in acc["ious"]]  # per sample, for paired tests
            for level in ("instance", "part"):
                sel = [i for i, s in enumerate(samples) if s.get("level") == level]
                ok = [acc["ious"][i] is not None and acc["ious"][i] >= 0.5 for i in sel]
                row[f"acc/{level}"] = float(np.mean(ok)) if ok else None
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "correct"}))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": str(args.model), "data": str(args.data), "seed": args.seed,
                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
