"""Time one ChatRex training step (forward, answer loss, backward, AdamW) and show where the time goes.

    python benchmarks/chatrex_train_step.py --recipe recipes/chatrex_small_stage2.json \
        --init-from chatrex/assets/chatrex-small/chatrex --data data/world/train.jsonl \
        --batch 32 --steps 10 [--compile] [--profile] [--count-ops]

The model starts from ``--init-from`` (an exported stage, e.g. the shipped delta), so no earlier stage
has to run first. Batches are real world scenes rendered into the recipe's task mix and run through
the training collate (processor, uint8 pixels); the same batches are reused for every timed step, so
only the model, the loss and the optimizer are timed, not the data workers. Prints ms/step,
samples/s, tokens per sample, peak GPU memory and, with ``--profile``, the top operators by self
time. ``--count-ops`` counts the ATen operators of one step by phase, and the activations its forward
saves (``step_costs.py``). ``--compile`` compiles the LLM's decoder layers as ``train.compile`` does;
the warm-up steps then include the compilation.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from step_costs import count_step_ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/chatrex_small_stage2.json")
    ap.add_argument("--init-from", default="chatrex/assets/chatrex-small/chatrex",
                    help="an exported ChatRex stage (delta directory) to start from")
    ap.add_argument("--data", required=True, help="a world JSONL file")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="compile the decoder layers (train.compile)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--count-ops", action="store_true", help="count the operators of one step, by phase")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args()

    from chatrex.training.chatrex_task import ChatRexTask, ChatRexTaskConfig
    from chatrex.training.config import load_recipe
    from chatrex.training.task import compile_repeated_blocks

    spec = load_recipe(args.recipe, {"task.data.files": json.dumps([args.data]),
                                     "task.init_from": json.dumps(args.init_from)})
    task = ChatRexTask(ChatRexTaskConfig.from_dict(spec["task"]))
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = task.build_model().to(device).train()
    if args.compile:
        compile_repeated_blocks(task, model)
    groups = task.param_groups(model, type("C", (), {"lr": 1e-4, "weight_decay": 0.0})())
    opt = torch.optim.AdamW(groups, fused=device.type == "cuda" or None)  # as the trainer
    ds = task.build_dataset()
    batches = [task.collate([ds[(i * args.batch + j) % len(ds)] for j in range(args.batch)]) for i in range(2)]
    amp = spec["train"].get("precision", "bf16") == "bf16" and device.type == "cuda"
    seq = [int(b["input_ids"].shape[1]) for b in batches]
    answer = [int((b["labels"] != -100).sum()) / args.batch for b in batches]

    def step(i: int) -> dict:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, logs = task.compute_loss(model, batches[i % len(batches)], device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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
        "torch": torch.__version__, "stage": task.cfg.stage, "batch": args.batch, "compile": args.compile,
        "padded_tokens_per_sample": seq, "answer_tokens_per_sample": [round(a, 1) for a in answer],
        "ms_per_step": round(dt * 1000, 1), "samples_per_s": round(args.batch / dt, 2),
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
            for i in range(2):
                step(i)
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=30))


if __name__ == "__main__":
    main()
