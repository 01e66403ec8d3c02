"""How alike a model's object tokens are for one region given as its box, as its filled box (a rectangle
mask) and as its mask: mean and lowest cosine over the instance regions of world records, with two
different boxes of the same image for scale.

    python scripts/mask_token_similarity.py --model chatrex/assets/chatrex-small --data data/world/test.jsonl \
        --images 12 --regions-per-image 6
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="chatrex/assets/chatrex-small", help="model directory (upn/ + chatrex/)")
    ap.add_argument("--data", required=True, help="world records (JSONL) with regions[*].mask")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--regions-per-image", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from chatrex.interfaces.pipeline import ChatRexPipeline
    from chatrex.utils.image import load_image

    pipe = ChatRexPipeline.from_pretrained(args.model, device=args.device)
    model, proc = pipe.model, pipe.processor
    data = Path(args.data)
    lines = data.read_text().splitlines()[: args.images]
    cos: dict[str, list[float]] = {"box_vs_rectangle": [], "box_vs_mask": [], "box_vs_other_box": []}
    for line in lines:
        rec = json.loads(line)
        regs = [r for r in rec["regions"] if r["level"] == "instance" and r.get("mask")][: args.regions_per_image]
        if len(regs) < 2:
            continue
        image = load_image(data.parent / rec["image"])
        rects = []
        for r in regs:
            m = np.zeros((rec["height"], rec["width"]), dtype=bool)
            x0, y0, x1, y1 = (int(v) for v in r["box"])
            m[y0:y1, x0:x1] = True
            rects.append(m)
        tokens = {}
        with torch.no_grad():
            for name, regions in (("box", [r["box"] for r in regs]), ("rect", rects), ("mask", [r["mask"] for r in regs])):
                batch = proc([image], ["q"], regions=[regions])
                levels = model.vision_tower_aux(batch["pixel_values_aux"].to(pipe.device, pipe.dtype))
                tokens[name] = model.get_object_features(
                    levels, [b.to(pipe.device) for b in batch["boxes"]],
                    [m.to(pipe.device) for m in batch["region_masks"]] if "region_masks" in batch else None,
                    [i.to(pipe.device) for i in batch["region_mask_indices"]] if "region_masks" in batch else None).float()
        sim = torch.nn.functional.cosine_similarity
        cos["box_vs_rectangle"] += sim(tokens["box"], tokens["rect"]).tolist()
        cos["box_vs_mask"] += sim(tokens["box"], tokens["mask"]).tolist()
        cos["box_vs_other_box"] += sim(tokens["box"], tokens["box"].roll(1, 0)).tolist()
    print(json.dumps({k: {"mean": round(float(np.mean(v)), 4), "lowest": round(float(np.min(v)), 4), "regions": len(v)}
                      for k, v in cos.items() if v}, indent=1))


if __name__ == "__main__":
    main()
