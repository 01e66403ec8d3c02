"""Time what a ChatRex training data worker spends in ``ChatRexProcessor`` per sample, float32 against uint8.

    python benchmarks/processor_cost.py --data data/world/test.jsonl --batch 32 --repeats 3

A batch of world scenes is rendered into the recipe's task mix (``ChatRexDataset``) and run through the
shipped processor (``chatrex/assets/chatrex-small/chatrex``: 336 px CLIP and 768 px ConvNeXt inputs) the way
the training collate does, with ``normalize_images=True`` (float32 pixels, normalised in the worker) and
``normalize_images=False`` (uint8 pixels, what training uses: ``compute_loss`` normalises them on the
device). One thread; the median of ``--repeats`` runs in CPU time (what a worker costs, whatever else the
machine runs) and in wall-clock time; also the bytes of the pixel tensors a worker hands over per batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/chatrex_small_stage2.json")
    ap.add_argument("--processor", default="chatrex/assets/chatrex-small/chatrex",
                    help="a saved ChatRexProcessor (tokenizer + image processor)")
    ap.add_argument("--data", required=True, help="a JSONL of world (or other) records")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from chatrex.data.chatrex_dataset import ChatRexDataset
    from chatrex.mllm.processing_chatrex import ChatRexProcessor
    from chatrex.training.chatrex_task import ChatRexTaskConfig
    from chatrex.training.config import load_recipe

    torch.set_num_threads(1)  # one data worker's view
    spec = load_recipe(args.recipe, {"task.data.files": json.dumps([args.data])})
    dataset = ChatRexDataset(ChatRexTaskConfig.from_dict(spec["task"]).data)
    samples = [dataset[i % len(dataset)] for i in range(args.batch)]
    processor = ChatRexProcessor.from_pretrained(args.processor)

    rows = []
    for normalize in (True, False):
        cpu, wall, batch = [], [], None
        for _ in range(args.repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            batch = processor([s["image"] for s in samples], [s["question"] for s in samples],
                              [s["boxes"] for s in samples], answers=[s["answer"] for s in samples],
                              normalize_images=normalize)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        pixels = sum(batch[k].numel() * batch[k].element_size() for k in ("pixel_values", "pixel_values_aux"))
        rows.append({"pixels": str(batch["pixel_values"].dtype).removeprefix("torch."),
                     "cpu_ms_per_sample": round(statistics.median(cpu) / args.batch * 1000, 1),
                     "wall_ms_per_sample": round(statistics.median(wall) / args.batch * 1000, 1),
                     "pixel_bytes_per_batch": pixels})
    print(json.dumps({"batch": args.batch, "repeats": args.repeats, "torch": torch.__version__, "rows": rows},
                     indent=1))


if __name__ == "__main__":
    main()
