"""Boxes, text normalisation, detection P/R (macro vs micro), proposal recall, referring."""

import numpy as np
import pytest

from chatrex.evaluation.boxes import BoxError, as_boxes, box_iou, greedy_match, xywh_to_xyxy, xyxy_to_xywh
from chatrex.evaluation.detection import ImageDetections, ImageGroundTruth, precision_recall_per_class
from chatrex.evaluation.proposals import proposal_recall, recalled_at_k
from chatrex.evaluation.referring import first_grounded_index, referring_accuracy
from chatrex.evaluation.text import SynonymTable, normalize_phrase, singular


def test_box_iou_is_torchvisions_with_zero_for_empty_pairs():
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    from chatrex.data.engine.process import box_ious

    rng = np.random.default_rng(0)
    xy, wh = rng.random((7, 2)) * 50, rng.random((7, 2)) * 30
    a = np.concatenate([xy, xy + wh], 1)
    b = np.concatenate([a[:3] + 1.5, [[5.0, 5.0, 5.0, 5.0]]])  # the last one has no area
    got = box_iou(a, b)
    assert np.array_equal(got[:, :3], tv_box_iou(torch.from_numpy(a), torch.from_numpy(b[:3])).numpy())
    assert np.all(got[:, 3] == 0.0)
    assert box_iou([[5, 5, 5, 5]], [[5, 5, 5, 5]]).tolist() == [[0.0]]  # 0 / 0 is 0, not NaN
    assert box_ious(a[0].tolist(), b.tolist()) == got[0].tolist()
    assert box_ious([0, 0, 10, 10], [[5, 0, 15, 10], [5, 5, 5, 5]]) == [50 / 150, 0.0]
    assert box_ious([5, 5, 5, 5], [[5, 5, 5, 5]]) == [0.0] and box_ious([0, 0, 1, 1], []) == []


def test_box_iou_hand_values():
    a = [[0, 0, 10, 10]]
    b = [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]]
    iou = box_iou(a, b)
    assert iou.shape == (1, 4)
    np.testing.assert_allclose(iou[0], [50 / 150, 1.0, 0.0, 0.0])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


def test_as_boxes_errors_name_the_problem():
    with pytest.raises(BoxError, match="4 numbers"):
        as_boxes([[1, 2, 3]], "preds")
    with pytest.raises(BoxError, match="x1 < x0"):
        as_boxes([[5, 0, 1, 4]], "preds")
    with pytest.raises(BoxError, match="non-finite"):
        as_boxes([[0, 0, float("nan"), 1]], "preds")
    with pytest.raises(BoxError, match="cannot read"):
        as_boxes([["a", 0, 1, 1]], "preds")
    assert as_boxes(None).shape == (0, 4)
    assert as_boxes([1, 2, 3, 4]).shape == (1, 4)


def test_xywh_round_trip():
    b = np.array([[1.0, 2.0, 5.0, 9.0]])
    np.testing.assert_allclose(xyxy_to_xywh(b), [[1, 2, 4, 7]])
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(b)), b)


def test_greedy_match_is_one_to_one_in_row_order():
    iou = np.array([[0.9, 0.6], [0.8, 0.1], [0.7, 0.55]])
    # row 0 takes col 0; row 1's best (col 0) is taken and col 1 is below 0.5; row 2 takes col 1.
    assert greedy_match(iou, 0.5).tolist() == [0, -1, 1]


@pytest.mark.parametrize("text,expected", [
    ("The Red Cars.", "red car"), ("a bus", "bus"), ("boxes", "box"), ("Puppies!", "puppy"),
    ("traffic_light", "traffic light"), ("people", "person"), ("<ground>dogs</ground>", "dog"), ("glass", "glass"),
])
def test_normalize_phrase(text, expected):
    assert normalize_phrase(text) == expected


def test_singular_keeps_words_that_end_in_s():
    assert singular("bus") == "bus" and singular("grass") == "grass" and singular("cats") == "cat"


def test_synonym_table():
    table = SynonymTable(["person", "table", "dining table"], {"dining table": ["dinner table"]})
    assert table.lookup("Men") == "person"
    assert table.lookup("the tables") == "table"  # own name wins over the default synonym of dining table
    assert table.lookup("dinner tables") == "dining table"
    assert table.lookup("giraffe") is None
    assert table.same("women", "person") and not table.same("cat", "person")
    plain = SynonymTable(["person"], use_defaults=False)
    assert plain.lookup("man") is None


def _gt(boxes, labels):
    return ImageGroundTruth(boxes, labels)


def test_precision_recall_macro_differs_from_micro():
    # Class "a": 4 GT, 4 correct predictions. Class "b": 1 GT, 1 prediction that misses it.
    a_boxes = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
    gts = [_gt(a_boxes + [[0, 50, 10, 60]], ["a"] * 4 + ["b"])]
    dets = [ImageDetections(a_boxes + [[100, 100, 110, 110]], ["a"] * 4 + ["b"], [0.9] * 5)]
    pr = precision_recall_per_class(gts, dets)
    # per class: a P=1 R=1; b P=0 R=0 → macro 0.5 / 0.5; micro 4/5 and 4/5
    assert pr.precision == pytest.approx(0.5) and pr.recall == pytest.approx(0.5)
    assert pr.micro_precision == pytest.approx(0.8) and pr.micro_recall == pytest.approx(0.8)
    assert pr.per_class["a"].true_positives == 4 and pr.per_class["b"].num_ground_truth == 1


def test_precision_recall_across_images_duplicates_and_iou():
    gts = [_gt([[0, 0, 10, 10]], ["cat"]), _gt([[0, 0, 10, 10], [50, 50, 60, 60]], ["cat", "dog"])]
    dets = [
        # two boxes on one GT: only one can match (the higher score); the other is a false positive
        ImageDetections([[0, 0, 10, 10], [1, 0, 10, 10]], ["cat", "cat"], [0.5, 0.9]),
        # IoU 0.5 exactly counts; the dog is missed
        ImageDetections([[0, 0, 10, 5]], ["cat"], [0.3]),
    ]
    pr = precision_recall_per_class(gts, dets)
    cat = pr.per_class["cat"]
    assert (cat.true_positives, cat.num_predictions, cat.num_ground_truth) == (2, 3, 2)
    assert pr.per_class["dog"].precision is None and pr.per_class["dog"].recall == 0.0
    assert pr.precision == pytest.approx(2 / 3)  # dog has no predictions: no precision
    assert pr.recall == pytest.approx((1.0 + 0.0) / 2)


def test_precision_recall_empty_predictions_and_images_without_annotations():
    gts = [_gt([], []), _gt([[0, 0, 5, 5]], ["x"])]
    dets = [ImageDetections([], []), ImageDetections([], [])]
    pr = precision_recall_per_class(gts, dets)
    assert pr.precision is None and pr.recall == 0.0 and pr.micro_precision is None
    empty = precision_recall_per_class([_gt([], [])], [ImageDetections([], [])])
    assert empty.precision is None and empty.recall is None
    with pytest.raises(ValueError, match="labels"):
        ImageGroundTruth([[0, 0, 1, 1]], [])


def test_proposal_recall_hand_computed():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    # rank 0 hits GT0 exactly; rank 1 overlaps GT1 with IoU 0.6 (6x10 / 10x10); rank 2 hits GT1 exactly.
    props = [[0, 0, 10, 10], [20, 20, 26, 30], [20, 20, 30, 30]]
    hits = recalled_at_k(gt, props, ks=[1, 2, 3], iou_thresholds=[0.5, 0.7])
    assert hits.tolist() == [[1, 2, 2], [1, 1, 2]]
    stats = proposal_recall([gt, []], [props, [[0, 0, 1, 1]]], ks=[1, 2, 3], iou_thresholds=[0.5, 0.7])
    assert stats["num_ground_truth"] == 2
    assert stats["AR@1"] == pytest.approx(0.5)
    assert stats["AR@2"] == pytest.approx((1.0 + 0.5) / 2)
    assert stats["R50@2"] == pytest.approx(1.0)
    assert stats["AR@3"] == pytest.approx(1.0)


def test_proposal_recall_default_thresholds_and_no_ground_truth():
    stats = proposal_recall([[[0, 0, 10, 10]]], [[[0, 0, 10, 9]]], ks=[10])  # IoU 0.9
    assert stats["AR@10"] == pytest.approx(9 / 10)  # thresholds 0.5..0.9 pass, 0.95 fails
    none = proposal_recall([[]], [[[0, 0, 1, 1]]], ks=[10])
    assert none["AR@10"] is None


def test_referring_accuracy():
    acc = referring_accuracy([[0, 0, 10, 10], None, [0, 0, 10, 4]], [[0, 0, 10, 10]] * 3)
    assert acc["correct"] == 1 and acc["num_without_box"] == 1
    assert acc["accuracy"] == pytest.approx(1 / 3)
    assert acc["ious"][2] == pytest.approx(0.4)
    assert referring_accuracy([], [])["accuracy"] is None


def test_first_grounded_index_skips_empty_groundings():
    class G:
        def __init__(self, indices):
            self.indices = indices

    assert first_grounded_index([G([]), G([4, 2])]) == 4
    assert first_grounded_index([G([])]) is None
