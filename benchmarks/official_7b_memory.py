"""Memory of loading an official-layout ChatRex-7B folder and of one answer, with random weights.

1. A child process builds the ChatRex-7B shape (``chatrex.mllm.presets.chatrex_7b``: CLIP ViT-L/14-336,
   ConvNeXt-L at 768, Vicuna-7B with the 104 ChatRex tokens, vocabulary 32104) on the meta device and writes
   it in the official layout (flat ``rexseek_llama`` config, official key names, 2 GiB safetensors shards) with
   random weights, one tensor at a time; a tiny byte-level tokenizer with the 104 tokens stands in for
   Vicuna's (its ids are fewer than the model's 32104, which only makes decoding meaningless).
2. This process loads the folder through the public loader
   (``ChatRexForConditionalGeneration.from_pretrained(dir, torch_dtype=..., device_map=...)``) and the
   processor (``ChatRexProcessor.from_pretrained(dir)``, official input mode), then answers one question about
   a 640 x 480 image with 100 boxes, generating exactly ``--new-tokens`` tokens.

It prints, for loading and for the answer: peak host memory (resident set: total, anonymous and
file-backed pages, sampled every 20 ms; file-backed pages are the memory-mapped checkpoint, which the kernel
can drop), peak GPU memory (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``) and wall time; and
the folder's size. One JSON line at the end has the same numbers.

GPU (about 3-4 minutes on one H100, 15 GB of local disk)::

    python benchmarks/official_7b_memory.py --device cuda --dtype bfloat16

CPU check with a tiny model of the same layout (seconds)::

    python benchmarks/official_7b_memory.py --shape tiny --device cpu --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARD_BYTES = 2 * 1024**3
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SENTENCES = ["Please detect person; dog; red car in this image. Answer the question with object indexes.",
             "A small red car is parked next to a tree and a dog sits on the grass."]


def model_config(shape: str):
    from chatrex.mllm.presets import chatrex_7b
    from chatrex.mllm.configuration_chatrex import ChatRexConfig

    if shape == "7b":
        return chatrex_7b(vocab_size=32104)
    # the official layout's fixed sizes (CLIP 336 px / 14, ConvNeXt at 768) with tiny widths
    return ChatRexConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=14, image_size=336, projection_dim=32),
        aux_vision_config=dict(depths=[1, 1, 2, 1], dims=[12, 20, 44, 84], image_size=768),
        text_config=dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=False))


def build_tokenizer():
    """A byte-level BPE with bos/eos and the 104 ChatRex tokens (added as the official code adds them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from chatrex.mllm.tokens import CHATREX_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_tokens(CHATREX_TOKENS[:-2], special_tokens=True)  # <obj0>..<obj99>, grounding marks; no placeholders
    return fast


def random_like(name: str, shape: torch.Size, dtype: torch.dtype, device: str) -> torch.Tensor:
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    if len(shape) == 1:  # norms and layer scales
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, device=device, dtype=torch.float32) * 0.02).to(dtype).cpu()


def make_folder(shape: str, out: Path, dtype: torch.dtype, device: str) -> None:
    """Write the official-layout folder (child process: its memory does not count for the load)."""
    from safetensors.torch import save_file

    from chatrex.mllm.modeling_chatrex import ChatRexForConditionalGeneration
    from chatrex.mllm.official import CHATREX_CONFIG_FIELD, chatrex_to_official_key, official_config_from_chatrex

    config = model_config(shape)
    with torch.device("meta"):
        skeleton = ChatRexForConditionalGeneration(config)
    torch.manual_seed(0)
    out.mkdir(parents=True)
    shard: dict[str, torch.Tensor] = {}
    size, files, weight_map = 0, [], {}

    def flush() -> None:
        nonlocal shard, size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, os.fspath(out / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for key, meta in skeleton.state_dict().items():
        tensor = random_like(key, meta.shape, dtype, device)
        shard[chatrex_to_official_key(key)] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    renamed = {}
    for i, name in enumerate(files):  # the usual model-0000i-of-0000n names
        final = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        os.replace(out / name, out / final)
        renamed[name] = final
    index = {"metadata": {"total_size": sum((out / f).stat().st_size for f in renamed.values())},
             "weight_map": {k: renamed[v] for k, v in sorted(weight_map.items())}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))

    if shape == "7b":
        tower = "openai/clip-vit-large-patch14-336"  # its shape is known offline
    else:
        from transformers import CLIPVisionConfig

        tower = "clip_vision_tower"
        CLIPVisionConfig(**config.vision_config.to_dict()).save_pretrained(out / tower)
    flat = official_config_from_chatrex(config, tower)
    flat.pop(CHATREX_CONFIG_FIELD)  # as a real official checkpoint: the flat fields only
    flat["torch_dtype"] = str(dtype).removeprefix("torch.")
    tokenizer = build_tokenizer()
    flat.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    (out / "config.json").write_text(json.dumps(flat, indent=2, sort_keys=True))
    tokenizer.save_pretrained(out)


class RssSampler:
    """Peak resident memory of this process (total, anonymous, file-backed), sampled from /proc every 20 ms."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self) -> None:
        self.peak = dict.fromkeys(self.FIELDS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def read(cls) -> dict[str, int]:
        values = {}
        with open("/proc/self/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in cls.FIELDS:
                    values[name] = int(rest.split()[0]) * 1024
        return values

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, v in self.read().items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for k, v in self.read().items():
            self.peak[k] = max(self.peak[k], v)


def gib(n: float) -> float:
    return round(n / 1024**3, 3)


def measure(folder: Path, device: str, dtype: torch.dtype, new_tokens: int, num_boxes: int) -> dict:
    import numpy as np

    from chatrex.mllm import ChatRexForConditionalGeneration, ChatRexProcessor

    cuda = device.startswith("cuda")
    report: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "dtype": str(dtype),
                    "folder_gib": gib(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())),
                    "rss_before_gib": gib(RssSampler.read()["VmRSS"])}
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with RssSampler() as rss:
        model = ChatRexForConditionalGeneration.from_pretrained(
            folder, torch_dtype=dtype, **({"device_map": device} if cuda else {})).eval()
        processor = ChatRexProcessor.from_pretrained(folder)
        if cuda:
            torch.cuda.synchronize(device)
    report["load"] = {"seconds": round(time.perf_counter() - start, 2),
                      **{f"peak_{k}_gib": gib(v) for k, v in rss.peak.items()}}
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["parameter_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    if cuda:
        report["load"]["gpu_max_allocated_gib"] = gib(torch.cuda.max_memory_allocated(device))
        report["load"]["gpu_max_reserved_gib"] = gib(torch.cuda.max_memory_reserved(device))
        torch.cuda.reset_peak_memory_stats(device)

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    xy = rng.uniform(0, 1, size=(num_boxes, 2, 2)) * [640, 480]
    boxes = np.concatenate([xy.min(1), xy.max(1) + 1], axis=1).tolist()
    question = "Please detect person; dog; red car in this image. Answer the question with object indexes."
    start = time.perf_counter()
    with RssSampler() as rss, torch.inference_mode():
        batch = processor([image], [question], [boxes])
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else [b.to(device) for b in v])
                  for k, v in batch.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        inputs["pixel_values_aux"] = inputs["pixel_values_aux"].to(dtype)
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if cuda:
            torch.cuda.synchronize(device)
    report["answer"] = {"seconds": round(time.perf_counter() - start, 2), "prompt_tokens": int(batch["input_ids"].shape[1]),
                        "new_tokens": int(out.shape[1] - batch["input_ids"].shape[1]), "boxes": num_boxes,
                        **{f"peak_{k}_gib": gib(v) for k, v in rss.peak.items()}}
    if cuda:
        report["answer"]["gpu_max_allocated_gib"] = gib(torch.cuda.max_memory_allocated(device))
        report["answer"]["gpu_max_reserved_gib"] = gib(torch.cuda.max_memory_reserved(device))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write the official-layout folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    if args.make_only:
        make_folder(args.shape, args.dir, dtype, args.device if args.device.startswith("cuda") else "cpu")
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available (use --device cpu)")
    root = Path(tempfile.mkdtemp(prefix="chatrex-7b-", dir=args.dir))
    folder = root / "official"
    try:
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make-only", "--shape", args.shape, "--device", args.device,
                        "--dtype", args.dtype, "--dir", os.fspath(folder)], check=True)
        written = round(time.perf_counter() - start, 1)
        report = {"shape": args.shape, "write_seconds": written, **measure(folder, args.device, dtype,
                                                                           args.new_tokens, args.boxes)}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for part in ("load", "answer"):
        r = report[part]
        gpu = (f", GPU max allocated {r['gpu_max_allocated_gib']} GiB (reserved {r['gpu_max_reserved_gib']} GiB)"
               if "gpu_max_allocated_gib" in r else "")
        print(f"{part}: {r['seconds']} s, peak host RSS {r['peak_VmRSS_gib']} GiB (anonymous {r['peak_RssAnon_gib']}, "
              f"file-backed {r['peak_RssFile_gib']}){gpu}")
    print(f"{report['parameters']:,} parameters ({', '.join(report['parameter_dtypes'])}); checkpoint "
          f"{report['folder_gib']} GiB, written in {report['write_seconds']} s; device {report['device']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
