"""UPN post-processing against the reference fixture, plus the batch-keeping filter behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chatrex.upn.postprocess import cxcywh_to_xyxy, filter_proposals, postprocess
from tests.conftest import SHARED

FIXTURE = SHARED / "fixtures" / "upn_small" / "upn_small_outputs.npz"
PROMPTS = ("fine_grained_prompt", "coarse_grained_prompt")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_postprocess_matches_reference(ref, prompt):
    outputs = {
        "pred_logits": torch.from_numpy(ref[f"{prompt}__pred_logits"].copy()),
        "pred_boxes": torch.from_numpy(ref[f"{prompt}__pred_boxes_cxcywh"].copy()),
    }
    before = outputs["pred_boxes"].clone()
    out = postprocess(outputs, ref["image_sizes_hw"])
    assert torch.equal(outputs["pred_boxes"], before), "postprocess must not modify its input"
    assert out["original_xyxy_boxes"].dtype == np.float32 and out["scores"].dtype == np.float32
    assert out["scores"].shape == ref[f"{prompt}__sorted_scores"].shape[:2]
    np.testing.assert_array_equal(out["original_xyxy_boxes"], ref[f"{prompt}__sorted_original_xyxy_boxes"])
    np.testing.assert_array_equal(out["scores"], ref[f"{prompt}__sorted_scores"][..., 0])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_filter_matches_reference(ref, prompt):
    props = {
        "original_xyxy_boxes": ref[f"{prompt}__sorted_original_xyxy_boxes"],
        "scores": ref[f"{prompt}__sorted_scores"][..., 0],
    }
    out = filter_proposals(props, min_score=0.3, nms_value=0.8)
    assert len(out["original_xyxy_boxes"]) == 1 and len(out["scores"]) == 1
    boxes, scores = out["original_xyxy_boxes"][0], out["scores"][0]
    assert all(isinstance(v, int) for b in boxes for v in b)
    assert all(isinstance(s, float) for s in scores)
    np.testing.assert_array_equal(np.asarray(boxes, dtype=np.int32), ref[f"{prompt}__filtered_boxes_img0"])
    np.testing.assert_array_equal(np.asarray(scores, dtype=np.float32), ref[f"{prompt}__filtered_scores_img0"])
    # the official (B, Q, 1) score layout gives the same answer
    props["scores"] = ref[f"{prompt}__sorted_scores"]
    assert filter_proposals(props) == out


def test_cxcywh_to_xyxy_and_scaling_without_clipping():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.0, 1.0, 0.4, 0.2]]])
    assert torch.allclose(cxcywh_to_xyxy(boxes)[0, 0], torch.tensor([0.4, 0.3, 0.6, 0.7]))
    out = postprocess({"pred_logits": torch.tensor([[[0.0], [2.0]]]), "pred_boxes": boxes}, [(100, 200)])
    # sorted: the second query (logit 2) comes first; boxes stay outside the image (no clipping)
    np.testing.assert_allclose(out["scores"][0], [1 / (1 + np.exp(-2.0)), 0.5], rtol=1e-6)
    np.testing.assert_allclose(out["original_xyxy_boxes"][0, 0], [-40.0, 90.0, 40.0, 110.0], atol=1e-4)
    np.testing.assert_allclose(out["original_xyxy_boxes"][0, 1], [80.0, 30.0, 120.0, 70.0], atol=1e-4)


def _batch():
    boxes = np.array(
        [
            [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]],  # image 0: two overlapping boxes
            [[5.9, 5.9, 20.7, 20.7], [30, 30, 40, 40], [0, 0, 1, 1]],
        ],
        dtype=np.float32,
    )
    scores = np.array([[0.9, 0.8, 0.2], [0.25, 0.1, 0.05]], dtype=np.float32)
    return {"original_xyxy_boxes": boxes, "scores": scores}


def test_filter_keeps_batch_when_one_image_is_empty():
    out = filter_proposals(_batch(), min_score=0.3, nms_value=0.5)
    assert out["original_xyxy_boxes"] == [[[0, 0, 10, 10]], []]  # IoU 0.68 > 0.5: second box dropped
    assert out["scores"] == [[0.9], []]
    # the empty image may come first: the later image is still returned
    props = _batch()
    props = {k: v[::-1].copy() for k, v in props.items()}
    out = filter_proposals(props, min_score=0.3, nms_value=0.5)
    assert out["original_xyxy_boxes"] == [[], [[0, 0, 10, 10]]]


def test_filter_threshold_nms_switch_and_truncation():
    out = filter_proposals(_batch(), min_score=0.2, nms_value=0.0)  # NMS off
    assert out["original_xyxy_boxes"][0] == [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]
    assert out["scores"][0] == [0.9, 0.8, 0.2]  # >= min_score keeps the 0.2 box
    assert out["original_xyxy_boxes"][1] == [[5, 5, 20, 20]]  # truncated toward zero
    assert out["scores"][1] == [0.25]
    negative = {"original_xyxy_boxes": np.array([[[-3.7, -0.5, 4.2, 8.9]]], np.float32),
                "scores": np.array([[0.777]], np.float32)}
    out = filter_proposals(negative)
    assert out == {"original_xyxy_boxes": [[[-3, 0, 4, 8]]], "scores": [[0.78]]}


def test_bad_inputs_have_clear_errors():
    with pytest.raises(KeyError, match="pred_boxes"):
        postprocess({"pred_logits": torch.zeros(1, 3, 1)}, [(10, 10)])
    with pytest.raises(ValueError, match="pred_boxes"):
        postprocess({"pred_logits": torch.zeros(1, 3, 1), "pred_boxes": torch.zeros(1, 2, 4)}, [(10, 10)])
    with pytest.raises(ValueError, match="image sizes"):
        postprocess({"pred_logits": torch.zeros(2, 3, 1), "pred_boxes": torch.zeros(2, 3, 4)}, [(10, 10)])
    with pytest.raises(ValueError, match="positive"):
        postprocess({"pred_logits": torch.zeros(1, 3, 1), "pred_boxes": torch.zeros(1, 3, 4)}, [(0, 10)])
    with pytest.raises(KeyError, match="scores"):
        filter_proposals({"original_xyxy_boxes": np.zeros((1, 2, 4))})
    with pytest.raises(ValueError, match="expected boxes"):
        filter_proposals({"original_xyxy_boxes": np.zeros((1, 2, 4)), "scores": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="NaN"):
        filter_proposals({"original_xyxy_boxes": np.full((1, 1, 4), np.nan), "scores": np.ones((1, 1))})
