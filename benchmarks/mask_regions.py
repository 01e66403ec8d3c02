"""What mask regions cost in training: the object encoder on the device, and the collate in the data workers.

    python benchmarks/mask_regions.py --device cuda                      # ChatRex-small sizes (768 px, 32-256)
    python benchmarks/mask_regions.py --device cpu --size 128 --dims 8,16,32,64 --batch 2 --steps 2   # a quick check
    python benchmarks/mask_regions.py --device cuda --data data/world/train.jsonl   # also the collate, per sample

1. **Object encoder** (forward + backward into the feature levels, as when the towers train): ``encode_objects``
   on random ConvNeXt levels of ``--batch`` images with ``--boxes`` boxes each, once with boxes only and
   once with ``--masks`` of them given as masks (uint8 grids, as the training collate ships them), in
   bf16 autocast on CUDA. Prints ms per call for both and the difference.
2. **Collate** (with ``--data``, CPU, one process, as one data worker): ms per sample of the stage-2 training
   collate (``ChatRexTask.collate``: image processing, tokenising, and RLE decoding plus area resizing of
   the mask regions) for region tasks with ``mask_region_rate`` 0 and 1, and the bytes of the mask grids
   per batch. The processor (tokenizer, image sizes) is the one saved with ``--init-from``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def time_encoder(args) -> dict:
    from chatrex.mllm.object_encoder import encode_objects

    device = torch.device(args.device)
    dims = [int(d) for d in args.dims.split(",")]
    strides = [4, 8, 16, 32]
    g = torch.Generator(device="cpu").manual_seed(0)
    levels = [torch.randn(args.batch, c, args.size // s, args.size // s, generator=g).to(device).requires_grad_(True)
              for c, s in zip(dims, strides)]
    xy = torch.rand(args.batch, args.boxes, 2, generator=g) * 0.7
    wh = torch.rand(args.batch, args.boxes, 2, generator=g) * 0.25 + 0.02
    boxes = [torch.cat([xy[i], xy[i] + wh[i]], -1).to(device) for i in range(args.batch)]
    grid = args.size // 4
    masks = [(torch.rand(args.masks, grid, grid, generator=g) > 0.5).to(torch.uint8).mul(255).to(device)
             for _ in range(args.batch)]
    indices = [torch.arange(args.masks, device=device) for _ in range(args.batch)]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def run(with_masks: bool) -> float:
        times = []
        for step in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with amp:
                feats = encode_objects(levels, boxes, args.size, masks=masks if with_masks else None,
                                       mask_indices=indices if with_masks else None)
            feats.float().square().mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - t)
            for level in levels:
                level.grad = None
        return 1000 * sum(times) / len(times)

    boxes_ms, masks_ms = run(False), run(True)
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "batch": args.batch,
            "boxes_per_image": args.boxes, "masks_per_image": args.masks, "input": args.size, "dims": dims,
            "encoder_boxes_only_ms": round(boxes_ms, 2), "encoder_with_masks_ms": round(masks_ms, 2),
            "mask_cost_ms": round(masks_ms - boxes_ms, 2)}


def time_collate(args) -> dict:
    from chatrex.mllm.processing_chatrex import ChatRexProcessor
    from chatrex.training.chatrex_task import ChatRexTask, ChatRexTaskConfig
    from chatrex.training.config import load_recipe
    from chatrex.training.sampler import SeededIndex

    out = {}
    for rate in (0.0, 1.0):
        spec = load_recipe(args.recipe, {"task.data.files": json.dumps([args.data]),
                                         "task.data.mask_region_rate": str(rate),
                                         "task.data.task_weights": json.dumps({"region_category": 1.0})})
        task = ChatRexTask(ChatRexTaskConfig.from_dict(spec["task"]))
        task.processor = ChatRexProcessor.from_pretrained(args.init_from)  # what build_model would make
        ds = task.build_dataset()
        n = args.batch * args.steps
        samples = [ds[SeededIndex(i % len(ds), i)] for i in range(n)]
        t = time.perf_counter()
        batches = [task.collate(samples[i:i + args.batch]) for i in range(0, n, args.batch)]
        ms = 1000 * (time.perf_counter() - t) / n
        grid_bytes = sum(m.numel() * m.element_size() for b in batches for m in b.get("region_masks", []))
        out[f"collate_ms_per_sample_rate{rate:g}"] = round(ms, 2)
        out[f"mask_grid_bytes_per_batch_rate{rate:g}"] = int(grid_bytes / len(batches))
        out[f"masks_per_sample_rate{rate:g}"] = round(sum(len(s["masks"]) for s in samples) / n, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--boxes", type=int, default=60, help="boxes per image")
    ap.add_argument("--masks", type=int, default=3, help="of them, masks per image")
    ap.add_argument("--size", type=int, default=768, help="ConvNeXt input side")
    ap.add_argument("--dims", default="32,64,128,256", help="ConvNeXt level widths")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--data", default=None, help="world records (JSONL) to time the training collate on")
    ap.add_argument("--recipe", default="recipes/chatrex_small_stage2.json")
    ap.add_argument("--init-from", default="chatrex/assets/chatrex-small/chatrex",
                    help="a saved ChatRex whose processor the collate uses")
    args = ap.parse_args()
    if not 0 <= args.masks <= args.boxes:
        ap.error("--masks must be between 0 and --boxes")
    result = time_encoder(args)
    if args.data:
        result.update(time_collate(args))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
