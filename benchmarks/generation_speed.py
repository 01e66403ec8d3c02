"""Decode speed of ChatRex-7B's shape: transformers' default ``generate`` against the static-cache paths.

    python benchmarks/generation_speed.py                       # GPU, 7B shape, bf16, batch 1 and 8
    python benchmarks/generation_speed.py --tiny --device cpu --compile-backend eager   # a smoke run

The model is ChatRex-7B's shape (``chatrex.mllm.presets.chatrex_7b``: CLIP ViT-L/14-336, ConvNeXt-L at
768 px, a Llama-2-7B / Vicuna-7B LLM with the 106 ChatRex tokens) with random weights, built directly on
the device in the benchmark dtype (no float32 copy in host memory), with an object pointer
(``--pointer-dim``, 0 for the paper's layout). The prompt is laid out as the processor writes it: a few
text tokens, the 576 ``<image>`` placeholders, ``--boxes`` pairs ``<objK><objfeat>`` and a question,
about 830 tokens with 100 boxes; every row of a batch has the same length. EOS is switched off, so every
variant generates exactly ``--new-tokens`` tokens.

Variants (``--variants``):
    default   ``model.generate(do_sample=False)`` (dynamic cache, eager)
    static    StaticGenerator, eager step (no compile, no CUDA graphs)
    graphs    StaticGenerator, eager step replayed as a CUDA graph
    compiled  StaticGenerator, ``torch.compile``d step replayed as a CUDA graph (what ``generation="auto"``
              picks on CUDA)

For each variant and batch size: the prefill time (``max_new_tokens=1``: image towers, object tokens,
the whole prompt in one pass, one token), the time for ``--new-tokens`` tokens, and from the two the
decode speed, tokens/s per sequence and for the whole batch (medians of ``--repeats``). The first call
of each variant and batch size is a warm-up (for ``compiled`` it compiles and captures; its time is
reported as ``warmup_s``).

The memory-bandwidth bound: each decode step reads every weight the step uses once (the decoder layers,
the final norm, ``lm_head``, the pointer's query; not the input embedding table, of which it reads one
row per sequence), so at batch 1 no implementation can beat ``HBM bandwidth / weight bytes`` tokens/s.
The bandwidth is the card's nominal figure (H100 SXM 3.35 TB/s, H200 4.8 TB/s, or ``--hbm-tbs``) and
also a measured device-to-device copy; both bounds are printed. ``kv_bytes`` adds the KV cache each
step reads at batch B (the static cache is read to its full, rounded-up length).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

# runnable as a script from a checkout (python benchmarks/generation_speed.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatrex.mllm import ChatRexForConditionalGeneration  # noqa: E402
from chatrex.mllm.fast_generation import StaticGenerator  # noqa: E402
from chatrex.mllm.presets import chatrex_7b, chatrex_tiny  # noqa: E402
from chatrex.mllm.tokens import CHATREX_TOKENS, MAX_OBJECTS  # noqa: E402

#: Nominal HBM bandwidth (TB/s) by a substring of the device name.
NOMINAL_TBS = {"H200": 4.8, "H100 NVL": 3.9, "H100 PCIe": 2.0, "H100": 3.35, "A100": 2.0}
VARIANTS = ("default", "static", "graphs", "compiled")


def build_model(tiny: bool, pointer_dim: int, dtype: torch.dtype, device: torch.device) -> ChatRexForConditionalGeneration:
    """A random ChatRex model made on ``device`` in ``dtype``, its ChatRex token ids set (the last 106 ids)."""
    base_vocab = 400 if tiny else 32000
    vocab = base_vocab + len(CHATREX_TOKENS)
    cfg = chatrex_tiny(vocab_size=vocab) if tiny else chatrex_7b(vocab_size=vocab)
    cfg.object_pointer_dim = pointer_dim
    ids = {tok: base_vocab + i for i, tok in enumerate(CHATREX_TOKENS)}
    cfg.image_token_id, cfg.objfeat_token_id = ids["<image>"], ids["<objfeat>"]
    cfg.object_index_token_ids = [ids[f"<obj{k}>"] for k in range(MAX_OBJECTS)]
    cfg.text_config.eos_token_id = None  # every variant generates exactly --new-tokens tokens
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = ChatRexForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def build_inputs(model: ChatRexForConditionalGeneration, batch: int, boxes: int, seed: int = 0) -> dict[str, Any]:
    """Processor-shaped inputs: ``<s>`` text, ``<image>`` x g², ``<objK><objfeat>`` x boxes, question."""
    cfg = model.config
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    gen = torch.Generator().manual_seed(seed)
    text_vocab = min(cfg.object_index_token_ids)

    def text(n: int) -> list[int]:
        return torch.randint(3, text_vocab, (n,), generator=gen).tolist()

    rows = []
    for _ in range(batch):
        ids = [1] + text(12) + [cfg.image_token_id] * cfg.num_image_tokens + text(1)
        for k in range(boxes):
            ids += [cfg.object_index_token_ids[k], cfg.objfeat_token_id]
        rows.append(ids + text(40))
    input_ids = torch.tensor(rows, device=device)
    xy = torch.rand(batch, boxes, 2, generator=gen) * 0.7
    wh = torch.rand(batch, boxes, 2, generator=gen) * 0.3 + 0.02
    box_t = torch.cat([xy, xy + wh], -1).clamp(max=1.0)
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen).to(device, dtype),
        pixel_values_aux=torch.randn(batch, 3, cfg.image_size_aux, cfg.image_size_aux, generator=gen).to(device, dtype),
        boxes=[b.to(device, dtype) for b in box_t],
    )


def decode_weight_bytes(model: ChatRexForConditionalGeneration) -> int:
    """Bytes of the weights one decode step reads: the LLM body without its input embedding table, the
    LM head, the pointer's query projection."""
    embed = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.model.parameters() if p is not embed)
    if model.lm_head.weight is not embed:
        total += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    else:
        total += embed.numel() * embed.element_size()
    if model.config.object_pointer_dim:
        total += sum(p.numel() * p.element_size() for p in model.mm_object_pointer.query.parameters())
    return total


def kv_bytes_per_token(model: ChatRexForConditionalGeneration) -> int:
    text = model.config.text_config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_hidden_layers * 2 * heads * head_dim * model.lm_head.weight.element_size()


def measured_bandwidth(device: torch.device) -> Optional[float]:
    """Device-to-device copy bandwidth in TB/s (read + write bytes / time), or None off CUDA."""
    if device.type != "cuda":
        return None
    src = torch.empty(2 * 2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    del src, dst
    return 2 * 2 * 2**30 / statistics.median(times) / 1e12


def nominal_bandwidth(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tbs in NOMINAL_TBS.items():
        if key in name:
            return tbs
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_runner(variant: str, model, compile_backend: str):
    """``run(inputs, max_new_tokens) -> ids`` for a variant (one generator per variant, kept across calls)."""
    if variant == "default":
        def run(inputs, new):
            with torch.inference_mode():
                return model.generate(**inputs, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
        return run
    cuda = next(model.parameters()).device.type == "cuda"
    if variant == "static":
        gen = StaticGenerator(model, compile=False, cuda_graphs=False)
    elif variant == "graphs":
        gen = StaticGenerator(model, compile=False, cuda_graphs=cuda)
    else:
        options = {} if compile_backend == "inductor" else {"backend": compile_backend}
        gen = StaticGenerator(model, compile=options, cuda_graphs=cuda)
    return lambda inputs, new: gen.generate(**inputs, max_new_tokens=new, eos_token_id=None, pad_token_id=0)


def measure(run, inputs, new_tokens: int, repeats: int, device: torch.device) -> dict[str, Any]:
    def timed(new):
        sync(device)
        start = time.perf_counter()
        out = run(inputs, new)
        sync(device)
        return time.perf_counter() - start, out

    warmup, _ = timed(new_tokens)
    prefill = statistics.median(timed(1)[0] for _ in range(repeats))
    runs = [timed(new_tokens) for _ in range(repeats)]
    total = statistics.median(t for t, _ in runs)
    out = runs[-1][1]
    batch, length = inputs["input_ids"].shape
    if out.shape != (batch, length + new_tokens):
        raise RuntimeError(f"expected {new_tokens} new tokens per row, got output shape {tuple(out.shape)}")
    per_seq = (new_tokens - 1) / max(total - prefill, 1e-9)
    return {"warmup_s": round(warmup, 3), "prefill_ms": round(prefill * 1e3, 2), "total_s": round(total, 3),
            "decode_ms_per_step": round((total - prefill) / (new_tokens - 1) * 1e3, 3),
            "tokens_per_s_per_seq": round(per_seq, 1), "tokens_per_s_batch": round(per_seq * batch, 1),
            "new_ids": out[:, length:].cpu()}


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny test shape instead of 7B (for a CPU smoke run)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--variants", default="default,compiled", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--boxes", type=int, default=100)
    ap.add_argument("--pointer-dim", type=int, default=256, help="object pointer width (0: the paper's layout)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled variant")
    ap.add_argument("--hbm-tbs", type=float, default=None, help="HBM bandwidth in TB/s (default: the card's nominal)")
    ap.add_argument("--json", default=None, help="append one JSON line per row to this file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; pass --device cpu (with --tiny)")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(args.tiny, args.pointer_dim, dtype, device)
    build_s = time.perf_counter() - start
    boxes = min(args.boxes, model.config.max_boxes)
    weight_bytes = decode_weight_bytes(model)
    nominal = args.hbm_tbs or nominal_bandwidth(device)
    measured = measured_bandwidth(device)
    params = sum(p.numel() for p in model.parameters())
    head = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "dtype": args.dtype, "shape": "tiny" if args.tiny else "7b",
            "params_total": params, "decode_weight_bytes": weight_bytes, "build_s": round(build_s, 1),
            "hbm_tbs_nominal": nominal, "hbm_tbs_measured_copy": None if measured is None else round(measured, 2)}
    for name, tbs in (("nominal", nominal), ("measured", measured)):
        if tbs:
            head[f"bound_tokens_per_s_{name}"] = round(tbs * 1e12 / weight_bytes, 1)
    print(json.dumps(head))
    rows = []
    for batch in [int(b) for b in args.batches.split(",") if b]:
        inputs = build_inputs(model, batch, boxes)
        length = inputs["input_ids"].shape[1]
        reference = None
        for variant in variants:
            row = {"variant": variant, "batch": batch, "prompt_tokens": length, "new_tokens": args.new_tokens}
            try:
                result = measure(make_runner(variant, model, args.compile_backend), inputs, args.new_tokens,
                                 args.repeats, device)
            except Exception as exc:  # noqa: BLE001 - one failed variant must not lose the others' numbers
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(json.dumps(row), flush=True)
                rows.append(row)
                continue
            ids = result.pop("new_ids")
            if reference is None:
                reference = (variant, ids)
            else:  # the first token where each row leaves the first variant's answer (bf16 kernels may differ)
                differs = (ids != reference[1]).int()
                first = torch.where(differs.any(1), differs.argmax(1), torch.full((batch,), args.new_tokens))
                row[f"same_tokens_as_{reference[0]}"] = first.tolist()
            row.update(result)
            bound = head.get("bound_tokens_per_s_nominal") or head.get("bound_tokens_per_s_measured")
            if bound:
                row["share_of_weight_bound"] = round(result["tokens_per_s_per_seq"] / bound, 3)
                kv = batch * kv_bytes_per_token(model) * (length + args.new_tokens // 2)
                row["kv_bytes_per_step_at_mid_answer"] = kv
            if device.type == "cuda":
                row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            for row in [head, *rows]:
                f.write(json.dumps(row) + "\n")
    return [head, *rows]


if __name__ == "__main__":
    main()
