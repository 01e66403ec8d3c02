"""End-to-end parity: the fixture's small random UPN, loaded from the reference state_dict through
UPNWrapper, must reproduce the reference outputs on test_upn.jpeg (fp32, CPU).

One forward per prompt type for the whole module (the 800x1130 input is slow on CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chatrex.upn.wrapper import UPNWrapper
from tests.conftest import SHARED

FIXTURES = SHARED / "fixtures" / "upn_small"
IMAGE = SHARED / "images" / "test_upn.jpeg"
PROMPTS = ("fine_grained_prompt", "coarse_grained_prompt")
TOL = 1e-4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "upn_small_outputs.npz"))


@pytest.fixture(scope="module")
def results():
    torch.set_num_threads(2)
    upn = UPNWrapper(
        FIXTURES / "upn_small_state_dict.pt", config=FIXTURES / "upn_small_config.json", device="cpu"
    )
    assert next(upn.model.parameters()).dtype == torch.float32
    return {p: upn.inference(IMAGE, prompt_type=p) for p in PROMPTS}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_sorted_outputs_match_reference(results, ref, prompt):
    out = results[prompt]
    h, w = (int(v) for v in ref["image_sizes_hw"][0])
    assert (h, w) == (1590, 2246)
    ref_scores = ref[f"{prompt}__sorted_scores"][..., 0]
    ref_boxes = ref[f"{prompt}__sorted_original_xyxy_boxes"]
    assert out["scores"].shape == ref_scores.shape and out["original_xyxy_boxes"].shape == ref_boxes.shape
    score_diff = np.abs(out["scores"] - ref_scores).max()
    assert score_diff <= TOL, f"max score diff {score_diff}"
    scale = np.array([w, h, w, h], dtype=np.float64)
    box_diff = (np.abs(out["original_xyxy_boxes"] - ref_boxes) / scale).max()  # in normalised units
    assert box_diff <= TOL, f"max normalised box diff {box_diff}"


@pytest.mark.parametrize("prompt", PROMPTS)
def test_filtered_outputs_match_reference(results, ref, prompt):
    kept = UPNWrapper.filter(results[prompt], min_score=0.3, nms_value=0.8)
    assert len(kept["original_xyxy_boxes"]) == 1
    boxes = np.asarray(kept["original_xyxy_boxes"][0], dtype=np.int64)
    scores = np.asarray(kept["scores"][0], dtype=np.float32)
    ref_boxes = ref[f"{prompt}__filtered_boxes_img0"].astype(np.int64)
    ref_scores = ref[f"{prompt}__filtered_scores_img0"]
    assert boxes.shape == ref_boxes.shape, f"{len(boxes)} boxes kept, reference kept {len(ref_boxes)}"
    # A 1e-4 agreement can move a value across an integer (box truncation) or a 0.005 step (score
    # rounding) only when the reference value sits right at that boundary; anything else must be equal.
    assert np.abs(boxes - ref_boxes).max() <= 1
    assert np.abs(scores - ref_scores).max() <= 0.01 + 1e-6
    assert (boxes == ref_boxes).mean() >= 0.99
    assert (scores == ref_scores).mean() >= 0.95
