"""Time one ChatRex stage-0 training step (the two vision towers with their object and dense heads:
forward, losses, backward, AdamW) and show where the time goes.

    python benchmarks/vision_train_step.py --recipe recipes/chatrex_small_stage0.json \
        --data data/world/train.jsonl --batch 64 --steps 10 [--profile] [--count-ops]

Batches are real world scenes through the stage-0 dataset and collate; the same batches are reused for
every timed step, so only the model, the losses and the optimizer are timed, not the data workers.
Prints ms/step, samples/s, peak GPU memory and, on a GPU, the share of time the GPU is busy and the MFU.
"""

from __future__ import annotations

import argparse
import json

import torch

from step_costs import add_step_arguments, report, time_steps, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/chatrex_small_stage0.json")
    add_step_arguments(ap, batch=64)
    args = ap.parse_args()

    from chatrex.training.config import load_recipe
    from chatrex.training.vision_task import VisionTask, VisionTaskConfig

    spec = load_recipe(args.recipe, {"task.data.files": json.dumps([args.data])})
    task = VisionTask(VisionTaskConfig.from_dict(spec["task"]))
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = task.build_model().to(device).train()
    groups = task.param_groups(model, type("C", (), {"lr": 1e-3, "weight_decay": 0.05})())
    opt = torch.optim.AdamW(groups, fused=device.type == "cuda" or None)  # as the trainer
    ds = task.build_dataset()
    batches = [task.collate([ds[(i * args.batch + j) % len(ds)] for j in range(args.batch)]) for i in range(2)]
    amp = spec["train"].get("precision", "bf16") == "bf16" and device.type == "cuda"

    grad_clip = 1.0
    step = train_step(model, opt, task, batches, device, amp, grad_clip)
    timing = time_steps(step, device, args.steps, args.warmup)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "stage": "stage0", "batch": args.batch, **timing,
        "samples_per_s": round(args.batch / timing["ms_per_step"] * 1000, 2),
    }
    report(result, args, step, model, opt, task, batches[0], device, amp, grad_clip, profile_steps=2)


if __name__ == "__main__":
    main()
