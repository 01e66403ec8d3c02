"""End-to-end parity: the fixture's small random UPN, loaded from the reference state_dict through
UPNWrapper, must reproduce the reference outputs on test_upn.jpeg (fp32, CPU).

Sorted outputs agree within ``TOL`` item by item; items whose scores are within ``TIE`` may be in the
other order (:mod:`tests.upn.near_ties`). The filter is checked twice: on the reference's own raw
outputs it must give exactly the reference's filtered output, and on ours it may differ from it only
where one of our raw values lies within ``TOL`` of a boundary (a box coordinate next to an integer,
which truncation moves; a score next to a rounding step of 0.01).

One forward per prompt type for the whole module (the 800x1130 input is slow on CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from chatrex.upn.wrapper import UPNWrapper
from tests.conftest import SHARED
from tests.upn.near_ties import pair_near_ties

FIXTURES = SHARED / "fixtures" / "upn_small"
IMAGE = SHARED / "images" / "test_upn.jpeg"
PROMPTS = ("fine_grained_prompt", "coarse_grained_prompt")
TOL = 1e-4
TIE = 1e-4  # scores closer than this may come out in either order on another machine
MIN_SCORE, NMS = 0.3, 0.8

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
    scale = np.array([w, h, w, h], dtype=np.float64)
    # score and normalised box of each item; pairs within TOL, reordered only among near-tied scores
    want = np.concatenate([ref_scores[0, :, None], ref_boxes[0] / scale], axis=1)
    got = np.concatenate([out["scores"][0, :, None], out["original_xyxy_boxes"][0] / scale], axis=1)
    pair_near_ties(ref_scores[0], want, got, TIE, TOL)


def _kept_raw(result) -> tuple[np.ndarray, np.ndarray]:
    """The raw (float) boxes and scores the filter keeps, in its output order (the filter's own steps)."""
    boxes = torch.as_tensor(result["original_xyxy_boxes"][0])
    scores = torch.as_tensor(result["scores"][0]).reshape(-1)
    keep = scores >= MIN_SCORE
    boxes, scores = boxes[keep], scores[keep]
    kept = nms(boxes, scores, NMS)
    boxes, scores = boxes[kept].numpy(), scores[kept].numpy()
    order = np.argsort(scores)[::-1]
    return boxes[order].astype(np.float64), scores[order].astype(np.float64)


def _near_boundary(values: np.ndarray, step: float, offset: float, tol: float) -> np.ndarray:
    """Whether each value lies within ``tol`` of a boundary ``offset + k * step``."""
    r = np.mod(values - offset, step)
    return np.minimum(r, step - r) <= tol


@pytest.mark.parametrize("prompt", PROMPTS)
def test_filtered_outputs_match_reference(results, ref, prompt):
    ref_boxes = ref[f"{prompt}__filtered_boxes_img0"].astype(np.int64)
    ref_scores = ref[f"{prompt}__filtered_scores_img0"].astype(np.float64)
    # the filter itself: on the reference's raw outputs it gives exactly the reference's filtered output
    on_ref = UPNWrapper.filter({"original_xyxy_boxes": ref[f"{prompt}__sorted_original_xyxy_boxes"],
                                "scores": ref[f"{prompt}__sorted_scores"]}, min_score=MIN_SCORE, nms_value=NMS)
    assert np.array_equal(np.asarray(on_ref["original_xyxy_boxes"][0], dtype=np.int64), ref_boxes)
    assert np.array_equal(np.asarray(on_ref["scores"][0], dtype=np.float32), ref[f"{prompt}__filtered_scores_img0"])
    # on our outputs: the same boxes, paired among near-tied scores; where an integer coordinate or a
    # rounded score differs, our raw value must be within TOL of the boundary that flips it
    kept = UPNWrapper.filter(results[prompt], min_score=MIN_SCORE, nms_value=NMS)
    boxes = np.asarray(kept["original_xyxy_boxes"][0], dtype=np.int64)
    scores = np.asarray(kept["scores"][0], dtype=np.float64)
    assert boxes.shape == ref_boxes.shape, f"{len(boxes)} boxes kept, reference kept {len(ref_boxes)}"
    raw_boxes, raw_scores = _kept_raw(results[prompt])
    h, w = (int(v) for v in ref["image_sizes_hw"][0])
    box_tol = TOL * max(h, w)  # TOL is in normalised units
    want = np.concatenate([ref_boxes, ref_scores[:, None] / 0.01], axis=1)
    got = np.concatenate([boxes, scores[:, None] / 0.01], axis=1)
    perm = pair_near_ties(ref_scores, want, got, 0.01 + TIE, 1 + 1e-6)  # one step of truncation or rounding
    box_moved = boxes[perm] != ref_boxes
    assert _near_boundary(raw_boxes[perm], 1.0, 0.0, box_tol)[box_moved].all()
    score_moved = ~np.isclose(scores[perm], ref_scores)
    assert _near_boundary(raw_scores[perm], 0.01, 0.005, TOL)[score_moved].all()
