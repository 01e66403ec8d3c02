"""The fused Triton deformable attention against the PyTorch one, both passes.

The kernel runs in Triton's interpreter on CPU (``TRITON_INTERPRET=1`` must be set before Triton
compiles anything, so the comparison runs in a child process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from chatrex.upn.ms_deform_attn import MSDeformAttn, multi_scale_deformable_attention, resolve_implementation

pytest.importorskip("triton")

CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from chatrex.upn.ms_deform_attn import MSDeformAttn, multi_scale_deformable_attention as msda

    def mx(t):
        return t.abs().max().item() if t.numel() else 0.0

    def compare(shapes, B, M, D, P, Lq, dtype, seed):
        g = torch.Generator().manual_seed(seed)
        L = len(shapes)
        S = sum(h * w for h, w in shapes)
        value = torch.randn(B, S, M, D, generator=g).to(dtype)
        # locations reach outside [0, 1] so that zero padding is exercised, weights are not normalised
        loc = torch.rand(B, Lq, M, L, P, 2, generator=g) * 1.6 - 0.3
        w = torch.rand(B, Lq, M, L, P, generator=g)
        grad = torch.randn(B, Lq, M * D, generator=g)
        res = {}
        for impl in ("pytorch", "triton"):
            v, l, a = (t.clone().requires_grad_() for t in (value, loc, w))
            out = msda(v, shapes, l, a, implementation=impl)
            out.float().backward(grad)
            res[impl] = (out.detach().float(), v.grad.float(), l.grad, a.grad, out.dtype)
        p, t = res["pytorch"], res["triton"]
        return {"out": mx(p[0] - t[0]), "value": mx(p[1] - t[1]), "loc": mx(p[2] - t[2]) / max(mx(p[2]), 1.0),
                "weights": mx(p[3] - t[3]), "same_dtype": p[4] == t[4] == dtype, "scale": mx(p[0])}

    out = {
        "levels": compare([(7, 5), (4, 3), (2, 2), (1, 1)], 2, 3, 8, 3, 11, torch.float32, 0),
        "odd_channels": compare([(5, 6), (3, 3)], 1, 2, 12, 2, 9, torch.float32, 1),
        "bf16_value": compare([(6, 6), (3, 3)], 2, 2, 16, 4, 5, torch.bfloat16, 2),
        "empty": compare([(3, 3)], 1, 2, 8, 2, 0, torch.float32, 3),
    }
    # whole module, both implementations on the same weights
    torch.manual_seed(0)
    mod = MSDeformAttn(32, n_levels=2, n_heads=4, n_points=2, implementation="pytorch")
    shapes = torch.tensor([[6, 5], [3, 3]])
    q, src = torch.randn(2, 7, 32), torch.randn(2, 39, 32)
    ref = torch.rand(2, 7, 2, 4) * 0.5 + 0.25
    a = mod(q, ref, src, shapes)
    mod.implementation = "triton"
    b = mod(q, ref, src, shapes)
    out["module"] = (a - b).abs().max().item()
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def child_result():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["levels", "odd_channels", "empty"])
def test_triton_matches_pytorch_fp32(child_result, case):
    r = child_result[case]
    assert r["same_dtype"]
    assert r["out"] < 1e-5
    assert r["value"] < 1e-5
    assert r["loc"] < 1e-4
    assert r["weights"] < 1e-5


def test_triton_matches_pytorch_bf16_values(child_result):
    r = child_result["bf16_value"]
    assert r["same_dtype"]  # output in the value's dtype, like the PyTorch path
    assert r["out"] <= 0.02 * max(r["scale"], 1.0)  # one bf16 rounding of the output
    assert r["value"] < 0.05 and r["loc"] < 1e-3 and r["weights"] < 1e-4


def test_module_agrees_across_implementations(child_result):
    assert child_result["module"] < 1e-5


def test_resolve_implementation():
    cpu = torch.device("cpu")
    assert resolve_implementation("auto", cpu) == "pytorch"
    assert resolve_implementation("pytorch", cpu) == "pytorch"
    with pytest.raises(ValueError, match="must be one of"):
        resolve_implementation("cuda", cpu)
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="CUDA tensors"):
            resolve_implementation("triton", cpu)


def test_bad_implementation_names_are_rejected_early():
    with pytest.raises(ValueError, match="implementation"):
        MSDeformAttn(32, 2, 4, 2, implementation="fast")
    with pytest.raises(ValueError, match="must be one of"):
        multi_scale_deformable_attention(torch.zeros(1, 1, 1, 4), [(1, 1)], torch.zeros(1, 1, 1, 1, 1, 2),
                                         torch.zeros(1, 1, 1, 1, 1), implementation="fast")
