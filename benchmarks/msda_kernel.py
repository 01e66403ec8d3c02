"""Deformable attention alone: PyTorch (grid_sample) against the fused Triton kernel, on the GPU.

    python benchmarks/msda_kernel.py [--batch 6] [--height 544 --width 672] [--queries encoder|900]

Shapes follow the UPN encoder: 5 levels at strides 4, 8, 16, 32, 64 of the image, 8 heads of 32
channels, 4 points. With ``--queries encoder`` every token queries (encoder self-attention);
a number gives decoder cross-attention with that many queries. Checks that both implementations
agree (forward and every gradient; for the location gradient also the share of elements that
differ, see the comment in ``main``), then times forward and forward+backward with CUDA events
(median of ``--iters``) and reports peak memory.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from chatrex.upn.ms_deform_attn import multi_scale_deformable_attention


def timed(fn, iters: int) -> tuple[float, float]:
    """Median ms of ``fn`` and its peak memory (GiB) above what was allocated before it."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2], (torch.cuda.max_memory_allocated() - base) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--height", type=int, default=544)
    ap.add_argument("--width", type=int, default=672)
    ap.add_argument("--queries", default="encoder")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    dev = torch.device("cuda")
    shapes = [(math.ceil(args.height / s), math.ceil(args.width / s)) for s in (4, 8, 16, 32, 64)]
    S = sum(h * w for h, w in shapes)
    B, M, D, L, P = args.batch, args.heads, args.channels, len(shapes), args.points
    Lq = S if args.queries == "encoder" else int(args.queries)
    g = torch.Generator(device=dev).manual_seed(0)
    value = torch.randn(B, S, M, D, device=dev, generator=g).to(getattr(torch, args.dtype))
    loc = torch.rand(B, Lq, M, L, P, 2, device=dev, generator=g) * 1.1 - 0.05
    w = torch.rand(B, Lq, M, L, P, device=dev, generator=g).softmax(-1)
    grad = torch.randn(B, Lq, M * D, device=dev, generator=g).to(value.dtype)

    # agreement (fp32 inputs, so that only the kernels differ)
    res = {}
    for impl in ("pytorch", "triton"):
        v, lo, a = (t.float().clone().requires_grad_() for t in (value, loc, w))
        out = multi_scale_deformable_attention(v, shapes, lo, a, implementation=impl)
        out.backward(grad.float())
        res[impl] = [out.detach(), v.grad, lo.grad, a.grad]
    err = {name: float((p - t).abs().max() / p.abs().max().clamp_min(1e-6))
           for name, p, t in zip(("out", "grad_value", "grad_loc", "grad_weights"), res["pytorch"], res["triton"])}
    # the location gradient jumps at pixel edges (bilinear weights are not differentiable there); points
    # within float rounding of an edge can take either side, so also count how many elements disagree
    gl_p, gl_t = res["pytorch"][2], res["triton"][2]
    err["grad_loc_share_off"] = float(((gl_p - gl_t).abs() > 1e-3 * gl_p.abs().max()).float().mean())
    del res

    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": B, "levels": shapes,
              "queries": Lq, "dtype": args.dtype, "max_rel_err": err}
    for impl in ("pytorch", "triton"):
        v, lo, a = (t.clone().requires_grad_() for t in (value, loc, w))

        def fwd():
            with torch.no_grad():
                multi_scale_deformable_attention(v, shapes, lo, a, implementation=impl)

        def fwd_bwd():
            out = multi_scale_deformable_attention(v, shapes, lo, a, implementation=impl)
            out.backward(grad)
            v.grad = lo.grad = a.grad = None

        try:
            f_ms, f_mem = timed(fwd, args.iters)
            fb_ms, fb_mem = timed(fwd_bwd, args.iters)
            result[impl] = {"fwd_ms": round(f_ms, 3), "fwd_bwd_ms": round(fb_ms, 3),
                            "fwd_bwd_peak_gib": round(fb_mem, 3)}
        except torch.OutOfMemoryError:
            result[impl] = "out of memory"
            torch.cuda.empty_cache()
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
