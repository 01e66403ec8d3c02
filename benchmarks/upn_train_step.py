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
import time

import torch

from step_costs import count_step_ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/upn_small.json")
    ap.add_argument("--data", required=True, help="a world JSONL file")
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--scale", type=int, default=None, help="fix the short side (default: the recipe's scales)")
    ap.add_argument("--msda", default=None, help="deformable-attention implementation (auto, pytorch, triton)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--count-ops", action="store_true", help="count the operators of one step, by phase")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args()

    from chatrex.training.config import load_recipe
    from chatrex.training.upn.task import UPNTask, UPNTaskConfig

    overrides = {"task.data.files": json.dumps([args.data])}
    if args.scale:
        overrides["task.data.scales"] = json.dumps([args.scale])
    if args.msda:
        overrides["task.model.msda_implementation"] = args.msda
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

    def step(i: int) -> dict:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, logs = task.compute_loss(model, batches[i % len(batches)], device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return logs

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "batch": args.batch, "scale": args.scale, "msda": args.msda or "default",
        "image_hw": list(batches[0]["images"].shape[-2:]), "ms_per_step": round(dt * 1000, 1),
        "samples_per_s": round(args.batch / dt, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }
    print(json.dumps(result))
    if args.count_ops:
        counts = count_step_ops(model, opt, task, batches[0], device, amp)
        print(json.dumps({"ops_per_step": counts}))
        result["ops_per_step"] = counts
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for i in range(3):
                step(i)
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=30))


if __name__ == "__main__":
    main()
