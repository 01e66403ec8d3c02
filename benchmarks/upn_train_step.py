"""Time one UPN training step (forward, losses, backward, AdamW) and show where the time goes.

    python benchmarks/upn_train_step.py --recipe recipes/upn_small.json --data data/world/train.jsonl \
        --batch 6 --steps 10 [--msda pytorch|triton] [--profile] [--count-ops]

Batches are real world scenes through the training transform; the same batches are reused for every
timed step so that only the model and the loss are timed. Prints ms/step, samples/s, peak GPU memory
and, with ``--profile``, the top operators by self time. ``--count-ops`` counts the ATen operators one
step dispatches (forward with losses, backward, optimizer), views apart: on a GPU nearly every other
operator is a kernel launch, so this count bounds how fast the host can drive the step, whatever the
device.
"""

from __future__ import annotations

import argparse
import json

import torch

from step_costs import add_step_arguments, report, time_steps, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/upn_small.json")
    ap.add_argument("--scale", type=int, default=None, help="fix the short side (default: the recipe's scales)")
    ap.add_argument("--msda", default=None, help="deformable-attention implementation (auto, pytorch, triton)")
    ap.add_argument("--set", action="append", default=[], help="more recipe overrides (key=value)")
    add_step_arguments(ap, batch=6)
    args = ap.parse_args()

    from chatrex.training.config import load_recipe
    from chatrex.training.upn.task import UPNTask, UPNTaskConfig

    overrides = {"task.data.files": json.dumps([args.data])}
    if args.scale:
        overrides["task.data.scales"] = json.dumps([args.scale])
    if args.msda:
        overrides["task.model.msda_implementation"] = args.msda
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = value
    spec = load_recipe(args.recipe, overrides)
    task = UPNTask(UPNTaskConfig.from_dict(spec["task"]))
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = task.build_model().to(device).train()
    opt = torch.optim.AdamW(task.param_groups(model, type("C", (), {"lr": 1e-4, "weight_decay": 0.05})()),
                            fused=device.type == "cuda" or None)  # as the trainer
    ds = task.build_dataset()
    batches = [task.collate([ds[(i * args.batch + j) % len(ds)] for j in range(args.batch)]) for i in range(2)]
    amp = device.type == "cuda"

    grad_clip = 0.1
    step = train_step(model, opt, task, batches, device, amp, grad_clip)
    timing = time_steps(step, device, args.steps, args.warmup)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "batch": args.batch, "scale": args.scale, "msda": args.msda or "default",
        "overrides": args.set,
        "image_hw": list(batches[0]["images"].shape[-2:] if "images" in batches[0] else batches[0]["canvas"]), **timing,
        "samples_per_s": round(args.batch / timing["ms_per_step"] * 1000, 2),
    }
    report(result, args, step, model, opt, task, batches[0], device, amp, grad_clip, profile_steps=3)


if __name__ == "__main__":
    main()
