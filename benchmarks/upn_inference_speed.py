"""UPN inference speed: UPN-large at the official input size, fp32 and bf16, fused kernel and compile.

    python benchmarks/upn_inference_speed.py                  # GPU: UPN-large, 800 x 1200 input, batch 1 and 4
    python benchmarks/upn_inference_speed.py --tiny --device cpu --variants fp32-pytorch,bf16-pytorch \\
        --compile-backend eager                               # a CPU smoke run

Each variant runs ``UPNWrapper.run_model`` (backbone, encoder, query selection, decoder, heads) on a
prepared batch already on the device; the time is the median of ``--iters`` runs after ``--warmup``
(CUDA events around each run), so image decoding and resizing on the CPU are not in it (one
end-to-end ``UPNWrapper.inference`` of a PIL image at batch 1 is timed beside it, as ``e2e_ms``).

Variants (``--variants``; any ``{fp32,bf16}-{pytorch,triton}[-compiled]``), e.g.:
    fp32-pytorch           the pure-PyTorch path (``F.grid_sample`` deformable attention), float32
    fp32-triton            the fused Triton deformable-attention kernel, float32
    bf16-pytorch           bfloat16 autocast on backbone + encoder (``UPNWrapper(precision="bf16")``)
    bf16-triton            both
    bf16-triton-compiled   both, with ``torch.compile`` of the encoder and decoder passes
    fp32-triton-compiled   float32 with the kernel and compile

UPN-large (``upn_large``: Swin-L, 6 + 6 layers, 900 queries) has random weights here, so its outputs say
nothing about quality; each variant's are still compared with ``fp32-pytorch``'s on the same input.
The precision check that means something uses the shipped trained UPN (``--parity-model``, the
default model's UPN) on a shipped example image at the official 800 / 1333 size: fp32 against bf16
(both with the variant's kernel), as the largest sorted-score difference and, for the proposals the
pipeline would keep (NMS 0.8, best 100, and those scoring >= 0.3), the share that has a bf16 box with
IoU >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatrex.upn.ms_deform_attn import MSDeformAttn  # noqa: E402
from chatrex.upn.model import build_upn  # noqa: E402
from chatrex.upn.transforms import batch_images  # noqa: E402
from chatrex.upn.wrapper import UPNWrapper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARITY_MODEL = ROOT / "chatrex" / "assets" / "chatrex-small" / "upn"
DEFAULT_PARITY_IMAGE = ROOT / "examples" / "world_test_0000003.jpg"
VARIANTS = ("fp32-pytorch", "fp32-triton", "bf16-pytorch", "bf16-triton", "bf16-triton-compiled",
            "fp32-triton-compiled")
PROMPT = "fine_grained_prompt"


def parse_variant(name: str) -> tuple[str, str, bool]:
    """``precision-kernel[-compiled]`` -> (precision, kernel, compiled)."""
    parts = name.split("-")
    if not (len(parts) in (2, 3) and parts[0] in ("fp32", "bf16") and parts[1] in ("pytorch", "triton")
            and parts[2:] in ([], ["compiled"])):
        raise SystemExit(f"unknown variant {name!r}; variants are precision-kernel[-compiled], e.g. "
                         f"{', '.join(VARIANTS)}")
    return parts[0], parts[1], len(parts) == 3


def set_kernel(model: torch.nn.Module, kernel: str) -> None:
    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            module.implementation = kernel


def make_wrapper(model, variant: str, compile_backend: str, resize: int, max_size: Optional[int]) -> UPNWrapper:
    precision, kernel, compiled = parse_variant(variant)
    set_kernel(model, kernel)
    options: Any = False
    if compiled:
        options = {} if compile_backend == "inductor" else {"backend": compile_backend}
    return UPNWrapper.from_model(model, resize=resize, max_size=max_size, precision=precision, compile=options)


def timed_ms(fn, iters: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(median ms after warm-up, seconds the warm-up took)."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warm_s = time.perf_counter() - start
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize(device)
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), warm_s


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, Any]:
    """How far ``got`` (postprocessed proposals) is from ``ref``: the largest sorted-score difference, and
    for ``ref``'s kept proposals (NMS 0.8, best 100; and those >= 0.3) the share with a box of ``got`` at
    IoU >= 0.9 (compared per image)."""
    from torchvision.ops import box_iou

    out: dict[str, Any] = {"max_sorted_score_diff": round(float(np.abs(ref["scores"] - got["scores"]).max()), 5)}
    for name, threshold in (("top100", 0.0), ("score_0.3", 0.3)):
        kept_ref = UPNWrapper.filter(ref, min_score=threshold, nms_value=0.8)
        kept_got = UPNWrapper.filter(got, min_score=max(threshold - 0.05, 0.0), nms_value=0.8)
        hits, total = 0, 0
        for boxes_ref, boxes_got in zip(kept_ref["original_xyxy_boxes"], kept_got["original_xyxy_boxes"]):
            a = torch.tensor(boxes_ref[:100], dtype=torch.float32).reshape(-1, 4)
            b = torch.tensor(boxes_got, dtype=torch.float32).reshape(-1, 4)
            total += len(a)
            if len(a) and len(b):
                hits += int((box_iou(a, b).max(1).values >= 0.9).sum())
        out[f"{name}_matched_iou0.9"] = None if total == 0 else round(hits / total, 3)
        out[f"{name}_count"] = total
    return out


def postprocessed(wrapper: UPNWrapper, pixels, mask, sizes) -> dict[str, np.ndarray]:
    from chatrex.upn.postprocess import postprocess

    with torch.inference_mode():
        outputs = wrapper.run_model(pixels, mask, PROMPT)
    return postprocess({k: outputs[k].float() for k in ("pred_logits", "pred_boxes")}, sizes)


def parity_rows(args, device: torch.device, variants: list[str]) -> list[dict[str, Any]]:
    """fp32 against bf16 on the shipped trained UPN and a real image, per deformable-attention kernel."""
    from PIL import Image

    from chatrex.upn.model import UPN

    model = UPN.from_pretrained(args.parity_model, device=device).eval()
    image = Image.open(args.parity_image).convert("RGB")
    rows = []
    for kernel in sorted({parse_variant(v)[1] for v in variants}):
        results = {}
        for precision in ("fp32", "bf16"):
            set_kernel(model, kernel)
            wrapper = UPNWrapper.from_model(model, resize=args.resize, max_size=args.max_size, precision=precision)
            pixels, mask, sizes = wrapper.preprocess([image])
            results[precision] = postprocessed(wrapper, pixels.to(device), mask.to(device), sizes)
        rows.append({"parity": f"bf16 vs fp32, {kernel} kernel, trained {Path(args.parity_model).name} UPN",
                     "image": Path(args.parity_image).name, "input_hw": list(pixels.shape[-2:]),
                     **compare(results["fp32"], results["bf16"])})
    return rows


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny test UPN and a small input (CPU smoke run)")
    ap.add_argument("--config", default="upn_large")
    ap.add_argument("--height", type=int, default=800, help="model input height (800: the official short side)")
    ap.add_argument("--width", type=int, default=1200, help="model input width (<= 1333)")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--variants", default="fp32-pytorch,fp32-triton,bf16-pytorch,bf16-triton,bf16-triton-compiled")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--parity-model", default=str(DEFAULT_PARITY_MODEL))
    ap.add_argument("--parity-image", default=str(DEFAULT_PARITY_IMAGE))
    ap.add_argument("--no-parity", action="store_true", help="skip the trained-model precision check")
    ap.add_argument("--json", default=None, help="append one JSON line per row to this file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; pass --device cpu (with --tiny)")
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        parse_variant(v)
    if args.tiny:
        args.config, args.height, args.width = "upn_tiny", 96, 128
    args.resize, args.max_size = min(args.height, args.width), max(args.height, args.width)
    torch.manual_seed(0)
    model = build_upn(args.config).to(device).eval()
    head = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "config": args.config, "params": sum(p.numel() for p in model.parameters()),
            "input_hw": [args.height, args.width]}
    print(json.dumps(head), flush=True)
    rows: list[dict[str, Any]] = [head]
    gen = torch.Generator().manual_seed(0)
    for batch in [int(b) for b in args.batches.split(",") if b]:
        images = [torch.randn(3, args.height, args.width, generator=gen) for _ in range(batch)]
        pixels, mask = batch_images(images)
        pixels, mask = pixels.to(device), mask.to(device)
        sizes = [(args.height, args.width)] * batch
        reference = None
        for variant in variants:
            row: dict[str, Any] = {"variant": variant, "batch": batch}
            try:
                wrapper = make_wrapper(model, variant, args.compile_backend, args.resize, args.max_size)

                def run():
                    with torch.inference_mode():
                        wrapper.run_model(pixels, mask, PROMPT)

                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                ms, warm_s = timed_ms(run, args.iters, args.warmup, device)
                row.update({"ms": round(ms, 2), "images_per_s": round(batch * 1e3 / ms, 1), "warmup_s": round(warm_s, 1)})
                if device.type == "cuda":
                    row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                result = postprocessed(wrapper, pixels, mask, sizes)
                if reference is None:
                    reference = (variant, result)
                else:
                    row[f"vs_{reference[0]}"] = compare(reference[1], result)
                if batch == 1:
                    from PIL import Image

                    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3),
                                                                                dtype=np.uint8))
                    row["e2e_ms"] = round(timed_ms(lambda: wrapper.inference(picture, PROMPT), 3, 1, device)[0], 1)
            except Exception as exc:  # noqa: BLE001 - one failed variant must not lose the others' numbers
                row["error"] = f"{type(exc).__name__}: {exc}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    set_kernel(model, "auto")
    if not args.no_parity:
        try:
            parity = parity_rows(args if not args.tiny else _tiny_parity(args), device, variants)
        except Exception as exc:  # noqa: BLE001
            parity = [{"parity": "failed", "error": f"{type(exc).__name__}: {exc}"}]
        for row in parity:
            print(json.dumps(row), flush=True)
        rows.extend(parity)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return rows


def _tiny_parity(args):
    """The parity check at a small input (the smoke run's CPU time)."""
    small = argparse.Namespace(**vars(args))
    small.resize, small.max_size = 256, 384
    return small


if __name__ == "__main__":
    main()
