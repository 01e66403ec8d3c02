"""Time one ChatRex training step (forward, answer loss, backward, AdamW) and show where the time goes.

    python benchmarks/chatrex_train_step.py --recipe recipes/chatrex_small_stage2.json \
        --init-from chatrex/assets/chatrex-small/chatrex --data data/world/train.jsonl \
        --batch 32 --steps 10 [--compile] [--profile] [--count-ops]
    python benchmarks/chatrex_train_step.py --base runs/rb --image-token-pool 2 ...   # a fresh model, 144 image tokens

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

import torch

from step_costs import add_step_arguments, report, time_steps, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/chatrex_small_stage2.json")
    ap.add_argument("--init-from", default="chatrex/assets/chatrex-small/chatrex",
                    help="an exported ChatRex stage (delta directory) to start from")
    ap.add_argument("--base", default=None,
                    help="start a fresh model (random towers) from this base LLM directory instead of --init-from "
                         "(e.g. benchmarks/random_base_llm.py's output); the towers train as in stage 0's absence")
    ap.add_argument("--compile", action="store_true", help="compile the decoder layers (train.compile)")
    ap.add_argument("--image-token-pool", type=int, default=None,
                    help="with --base: the fresh model's image_token_pool (2: 144 image tokens instead of 576)")
    add_step_arguments(ap, batch=32)
    args = ap.parse_args()
    if args.image_token_pool is not None and not args.base:
        ap.error("--image-token-pool needs --base (an exported stage keeps the pooling it was trained with)")

    from chatrex.training.chatrex_task import ChatRexTask, ChatRexTaskConfig
    from chatrex.training.config import load_recipe
    from chatrex.training.task import compile_repeated_blocks

    overrides = {"task.data.files": json.dumps([args.data]), "task.init_from": json.dumps(args.init_from)}
    if args.base:
        overrides.update({"task.base": args.base, "task.init_from": "null", "task.vision_lr_mult": "1.0"})
        if args.image_token_pool is not None:
            overrides["task.vision.image_token_pool"] = str(args.image_token_pool)
    spec = load_recipe(args.recipe, overrides)
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

    grad_clip = 1.0
    step = train_step(model, opt, task, batches, device, amp, grad_clip)
    timing = time_steps(step, device, args.steps, args.warmup)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "stage": task.cfg.stage, "batch": args.batch, "compile": args.compile,
        "padded_tokens_per_sample": seq, "answer_tokens_per_sample": [round(a, 1) for a in answer],
        **timing, "samples_per_s": round(args.batch / timing["ms_per_step"] * 1000, 2),
    }
    report(result, args, step, model, opt, task, batches[0], device, amp, grad_clip, profile_steps=2)


if __name__ == "__main__":
    main()
