"""How far our UPN is from the official outputs of the parity fixture (what the README reports).

Loads the fixture's small UPN from the reference state_dict and prints, per prompt, the largest absolute
difference from the reference of the per-query logits and boxes (on the reference's input tensors),
whether the top-k proposals come out in the reference's order, and of the sorted scores and boxes
(normalised) and the filtered boxes and scores (through ``UPNWrapper`` from the image file)::

    python scripts/upn_parity.py ../shared/fixtures/upn_small ../shared/images/test_upn.jpeg

The tests (``tests/upn/test_model_parity.py``, ``tests/upn/test_parity_end_to_end.py``) check the same
outputs against tolerances; this script shows the differences themselves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from chatrex.upn.checkpoint import load_official_checkpoint
from chatrex.upn.config import config_from_official
from chatrex.upn.model import UPN
from chatrex.upn.wrapper import UPNWrapper

PROMPTS = ("fine_grained_prompt", "coarse_grained_prompt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", type=Path, help="the folder of upn_small_* reference files")
    parser.add_argument("image", type=Path, help="test_upn.jpeg")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ref = dict(np.load(args.fixtures / "upn_small_outputs.npz"))
    inter = torch.load(args.fixtures / "upn_small_intermediates.pt", weights_only=False)
    cfg = config_from_official(json.loads((args.fixtures / "upn_small_config.json").read_text())["model_cfg"])
    model = UPN(cfg).eval()
    load_official_checkpoint(model, args.fixtures / "upn_small_state_dict.pt", strict=True)
    with torch.no_grad():
        state = model.forward_encoder(torch.from_numpy(ref["input_tensors"]), torch.from_numpy(ref["input_mask"]))
        outs = {p: model.forward_decoder(state, p, return_aux=True) for p in PROMPTS}
    wrapper = UPNWrapper(args.fixtures / "upn_small_state_dict.pt", config=args.fixtures / "upn_small_config.json",
                         device="cpu")
    h, w = (int(v) for v in ref["image_sizes_hw"][0])
    scale = np.array([w, h, w, h], dtype=np.float64)
    for p in PROMPTS:
        out = outs[p]
        same_order = torch.equal(out["topk_index"], inter[p]["two_stage.topk_index"])
        e2e = wrapper.inference(args.image, prompt_type=p)
        kept = UPNWrapper.filter(e2e, min_score=0.3, nms_value=0.8)
        boxes = np.asarray(kept["original_xyxy_boxes"][0], dtype=np.int64)
        scores = np.asarray(kept["scores"][0], dtype=np.float32)
        ref_boxes = ref[f"{p}__filtered_boxes_img0"].astype(np.int64)
        report = {
            "prompt": p,
            "top-k in the reference's order": same_order,
            "per query: max |logit diff|": float(np.abs(out["pred_logits"].numpy() - ref[f"{p}__pred_logits"]).max()),
            "per query: max |box diff|": float(np.abs(out["pred_boxes"].numpy() - ref[f"{p}__pred_boxes_cxcywh"]).max()),
            "sorted: max |score diff|": float(np.abs(e2e["scores"] - ref[f"{p}__sorted_scores"][..., 0]).max()),
            "sorted: max |normalised box diff|": float(
                (np.abs(e2e["original_xyxy_boxes"] - ref[f"{p}__sorted_original_xyxy_boxes"]) / scale).max()),
            "filtered: boxes kept (ours, reference)": [len(boxes), len(ref_boxes)],
            "filtered: identical boxes and scores": bool(
                boxes.shape == ref_boxes.shape and np.array_equal(boxes, ref_boxes)
                and np.array_equal(scores, ref[f"{p}__filtered_scores_img0"])),
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()
