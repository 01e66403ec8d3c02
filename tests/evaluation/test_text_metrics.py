"""Region understanding, grounded caption F1, counting and POPE metrics on hand-computed cases."""

import math

import numpy as np
import pytest

from chatrex.evaluation.counting import counting_accuracy, parse_count
from chatrex.evaluation.grounded_caption import PhraseBox, match_phrase_boxes, phrase_box_f1
from chatrex.evaluation.pope import build_pope_questions, category_statistics, parse_yes_no, pope_metrics
from chatrex.evaluation.region import (caption_metrics, category_accuracy, java_available, osprey_scores,
                                       predicted_name, semantic_iou, semantic_similarity)


def test_category_accuracy_synonym_aware():
    preds = ["Dogs", "a man", "sofa", None, "the baseball bat"]
    cats = ["dog", "person", "couch", "cat", "baseball_bat"]
    acc = category_accuracy(preds, cats)
    assert acc["correct"] == 4 and acc["accuracy"] == pytest.approx(0.8)
    assert category_accuracy(["kitty"], ["cat"], {"cat": ["kitty"]})["correct"] == 1
    assert category_accuracy([], [])["accuracy"] is None


def test_semantic_iou_osprey_rule():
    assert semantic_iou("red car", "car") == pytest.approx(0.5)
    assert semantic_iou("Traffic-light.", "traffic light") == pytest.approx(1.0)
    assert semantic_iou("", "") == 0.0


def _bag_encoder(texts):
    vocab = ["red", "car", "dog", "tree", "blue"]
    return np.array([[t.split().count(w) for w in vocab] for t in texts], dtype=float)


def test_semantic_similarity_with_stand_in_encoder_and_skip():
    sims = semantic_similarity(["red car", "dog"], ["car", "tree"], _bag_encoder)
    assert sims[0] == pytest.approx(1 / math.sqrt(2)) and sims[1] == 0.0
    scores = osprey_scores(["red car", None], ["car", "dog"], _bag_encoder)
    assert scores["ss"] == pytest.approx((1 / math.sqrt(2)) / 2)
    assert scores["s_iou"] == pytest.approx(0.25)
    skipped = osprey_scores(["car"], ["car"], None, "skipped: not installed (sentence_transformers)")
    assert skipped["ss"].startswith("skipped: not installed") and skipped["s_iou"] == 1.0


def test_caption_bleu1_rouge_by_hand_without_java():
    scores = caption_metrics({"a": "A red car."}, {"a": ["a red car parked"]}, use_java=False)
    # unigram precision 3/3, brevity penalty exp(1 - 4/3)
    assert scores["BLEU-1"] == pytest.approx(math.exp(1 - 4 / 3), abs=1e-4)
    # ROUGE-L (beta 1.2): LCS 3, P = 1, R = 3/4
    p, r, beta = 1.0, 0.75, 1.2
    assert scores["ROUGE-L"] == pytest.approx((1 + beta**2) * p * r / (r + beta**2 * p), abs=1e-6)
    assert scores["METEOR"] == "skipped: java not on PATH"


def test_caption_cider_orders_better_captions_higher():
    refs = {"0": ["a red car on a road"], "1": ["a dog on the grass"], "2": ["a tall green tree"]}
    good = caption_metrics({"0": "a red car on a road", "1": "a dog on the grass", "2": "a tall green tree"},
                           refs, use_java=False)
    bad = caption_metrics({"0": "a dog", "1": "a tree", "2": "a car"}, refs, use_java=False)
    assert good["CIDEr"] > 1.0 > bad["CIDEr"]
    assert good["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same ids"):
        caption_metrics({"0": "x"}, {"1": ["x"]}, use_java=False)
    empty = caption_metrics({}, {}, use_java=False)
    assert empty["CIDEr"] is None


@pytest.mark.slow
@pytest.mark.skipif(not java_available(), reason="java not on PATH")
def test_caption_meteor_with_java():
    refs = {"0": ["A red car."], "1": ["a dog on grass"]}
    scores = caption_metrics({"0": "a red car", "1": "a dog on the grass"}, refs)
    assert isinstance(scores["METEOR"], float) and 0.5 < scores["METEOR"] < 1.0
    assert scores["BLEU-1"] > 0.7


def test_predicted_name():
    assert predicted_name("dog", ["dog"]) == "dog"
    assert predicted_name("It is a cat.", []) == "It is a cat"
    assert predicted_name("", ["", " "]) == ""


def test_phrase_box_f1_hand_computed():
    truth = [[PhraseBox("red car", [0, 0, 10, 10], aliases=("car",)), PhraseBox("tree", [20, 0, 30, 10])]]
    predicted = [[
        PhraseBox("cars", [0, 0, 10, 9]),      # alias match, IoU 0.9 → correct
        PhraseBox("red car", [0, 0, 10, 10]),  # duplicate of the same GT → one-to-one: not counted
        PhraseBox("bush", [20, 0, 30, 10]),    # box right, phrase wrong
    ]]
    f1 = phrase_box_f1(predicted, truth)
    assert f1["matched"] == 1
    assert f1["precision"] == pytest.approx(1 / 3) and f1["recall"] == pytest.approx(1 / 2)
    assert f1["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_phrase_box_matching_maximises_pairs():
    # Greedy would give pred 0 to GT 0 (higher IoU) and leave pred 1 unmatched; the optimum pairs both.
    truth = [PhraseBox("dog", [0, 0, 10, 10]), PhraseBox("dog", [0, 0, 10, 6])]
    predicted = [PhraseBox("dog", [0, 0, 10, 8]), PhraseBox("dog", [0, 0, 10, 10])]
    assert len(match_phrase_boxes(predicted, truth)) == 2
    assert len(match_phrase_boxes([PhraseBox("dog", [0, 0, 10, 10])], truth)) == 1


def test_phrase_box_f1_empty_cases():
    none = phrase_box_f1([[]], [[PhraseBox("a", [0, 0, 1, 1])]])
    assert none["precision"] is None and none["recall"] == 0.0 and none["f1"] is None
    nothing = phrase_box_f1([[]], [[]])
    assert nothing["recall"] is None
    wrong = phrase_box_f1([[PhraseBox("b", [5, 5, 6, 6])]], [[PhraseBox("a", [0, 0, 1, 1])]])
    assert wrong["f1"] == 0.0


@pytest.mark.parametrize("text,expected", [
    ("There are 3 <ground>dogs</ground><objects><obj1><obj4><obj12></objects>.", 3),
    ("I count twenty-one birds", 21), ("three", 3), ("There is one cat.", 1), ("Exactly 1,200 people", 1200),
    ("There are no dogs.", 0), ("a dozen eggs", 12), ("I see a single cat", 1), ("no idea what that is", 0),
    ("<obj7><obj8>", None), ("lots of them", None), ("", None), ("There are no cats, just 2 dogs", 2),
])
def test_parse_count(text, expected):
    assert parse_count(text) == expected


def test_counting_accuracy():
    acc = counting_accuracy([3, None, 2, 5], [3, 1, 3, 5])
    assert acc["accuracy"] == pytest.approx(0.5) and acc["num_unparsed"] == 1
    assert acc["mae"] == pytest.approx(1 / 3)
    assert counting_accuracy([], [])["accuracy"] is None


@pytest.mark.parametrize("text,expected", [
    ("Yes, there is a cat.", True), ("No.", False), ("There is no dog in the image.", False),
    ("I think yes", True), ("<ground>cat</ground><objects><obj1></objects>", None), ("", None),
    ("There isn't one", False),
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


def test_pope_metrics_hand_computed():
    preds = [True, True, False, None, True, False]
    labels = [True, False, True, False, True, False]
    m = pope_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 6) and m["num_unparsed"] == 1


IMAGES = [{"car", "road"}, {"car", "tree"}, {"dog", "grass"}, {"car", "road", "tree"}, set()]


def test_pope_popular_and_adversarial_negatives():
    freq, pairs = category_statistics(IMAGES)
    assert freq["car"] == 3 and pairs[("car", "road")] == 2
    popular = build_pope_questions(IMAGES, "popular", num_per_image=1, seed=0)
    # image 2 (dog, grass): absent categories by frequency: car 3, road 2, tree 2 → car
    neg2 = [q.category for q in popular if q.image_index == 2 and not q.label]
    assert neg2 == ["car"]
    adversarial = build_pope_questions(IMAGES, "adversarial", num_per_image=2, seed=0)
    # image 0 (car, road): absent dog, grass, tree; co-occurrence with car/road: tree 2+1=3, dog 0, grass 0
    neg0 = [q.category for q in adversarial if q.image_index == 0 and not q.label]
    assert neg0 == ["tree", "dog"]  # tie dog/grass (0, freq 1) breaks by name
    assert all(q.image_index != 4 for q in adversarial)  # no categories: no questions
    for qs in (popular, adversarial):
        assert sum(q.label for q in qs) == sum(not q.label for q in qs)


def test_pope_random_negatives_are_absent_and_seeded():
    a = build_pope_questions(IMAGES, "random", num_per_image=2, seed=3)
    b = build_pope_questions(IMAGES, "random", num_per_image=2, seed=3)
    assert a == b
    for q in a:
        assert (q.category in IMAGES[q.image_index]) == q.label
    with pytest.raises(ValueError, match="setting"):
        build_pope_questions(IMAGES, "hard")
