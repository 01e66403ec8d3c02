"""UPNWrapper's speed options: bf16 autocast (``precision="bf16"``) stays close to fp32 on the shipped trained
UPN, and ``compile`` gives the uncompiled outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from chatrex.upn.config import resolve_config
from chatrex.upn.model import build_upn
from chatrex.upn.wrapper import UPNWrapper

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_UPN = ROOT / "chatrex" / "assets" / "chatrex-small" / "upn"
IMAGE = ROOT / "examples" / "world_test_0000003.jpg"


@pytest.mark.slow
def test_bf16_keeps_the_trained_upns_proposals():
    results = {p: UPNWrapper(SHIPPED_UPN, precision=p, resize=256, max_size=384).inference(IMAGE, "fine")
               for p in ("fp32", "bf16")}
    fp32, bf16 = results["fp32"], results["bf16"]
    diff = np.abs(fp32["scores"] - bf16["scores"]).max()
    assert 0 < diff <= 0.05  # bf16 did run (the numbers moved), by rounding only
    kept = UPNWrapper.filter(fp32, min_score=0.3, nms_value=0.8)["original_xyxy_boxes"][0]
    near = UPNWrapper.filter(bf16, min_score=0.25, nms_value=0.8)["original_xyxy_boxes"][0]
    assert len(kept) >= 2
    iou = box_iou(torch.tensor(kept, dtype=torch.float32), torch.tensor(near, dtype=torch.float32))
    assert (iou.max(1).values >= 0.9).all()  # every confident fp32 proposal has its bf16 twin


@pytest.mark.slow
def test_compiled_passes_give_the_same_outputs():
    torch.manual_seed(0)
    cfg = resolve_config("upn_tiny")
    model = build_upn(cfg).eval()
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    plain = UPNWrapper.from_model(model, cfg, resize=64, max_size=96).inference(image)
    traced = UPNWrapper.from_model(model, cfg, resize=64, max_size=96, compile={"backend": "eager"}).inference(image)
    np.testing.assert_array_equal(traced["scores"], plain["scores"])
    np.testing.assert_array_equal(traced["original_xyxy_boxes"], plain["original_xyxy_boxes"])


def test_unknown_precision_is_refused():
    cfg = resolve_config("upn_tiny")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        UPNWrapper.from_model(build_upn(cfg), cfg, precision="fp16")


@pytest.mark.slow
def test_upn_speed_benchmark_runs_on_the_tiny_shape():
    import importlib.util

    spec = importlib.util.spec_from_file_location("upn_inference_speed", ROOT / "benchmarks" / "upn_inference_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    head, *rows = bench.main(["--tiny", "--device", "cpu", "--variants", "fp32-pytorch,bf16-pytorch", "--batches", "1",
                              "--iters", "1", "--warmup", "0"])
    assert head["config"] == "upn_tiny" and [r.get("variant") for r in rows[:2]] == ["fp32-pytorch", "bf16-pytorch"]
    assert all("error" not in r for r in rows) and rows[0]["ms"] > 0
    parity = rows[2]
    assert parity["score_0.3_count"] > 0 and parity["max_sorted_score_diff"] < 0.05
