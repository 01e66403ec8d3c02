"""Runners end to end with stand-in predictors on tiny COCO / RefCOCO / world data."""

import contextlib
import copy
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from chatrex.evaluation.datasets import EvalDataError, load_eval_data
from chatrex.evaluation.runners import (run_counting, run_detection, run_grounded_caption, run_pope, run_proposals,
                                        run_referring, run_region)
from chatrex.evaluation.runners.common import PredictorError, Query, run_queries
from chatrex.evaluation.runners.referring import WRONG_PICK_KINDS
from tests.evaluation.standins import ScriptedPipeline, ScriptedUPN, write_coco, write_image, write_world

PROPS_1 = ([[0, 0, 20, 40], [30, 20, 50, 40], [40, 0, 60, 10]], [0.9, 0.8, 0.5])
PROPS_2 = ([[10, 5, 30, 35], [35, 10, 55, 30]], [0.7, 0.6])


def _coco_detection_answers(question, boxes):
    if "dog; person" in question:  # image 1
        return ("<ground>dog</ground><objects><obj1></objects>\n<ground>people</ground><objects><obj0><obj2></objects>",
                *PROPS_1)
    if "car; person" in question:  # image 2: an index past the list, and a phrase naming no asked category
        return ("<ground>car</ground><objects><obj7></objects>\n<ground>giraffe</ground><objects><obj0></objects>",
                *PROPS_2)
    raise AssertionError(f"unexpected question {question!r}")


def test_detection_on_coco_macro_pr_and_map(tmp_path):
    data = load_eval_data(write_coco(tmp_path))
    pipe = ScriptedPipeline(_coco_detection_answers)
    result = run_detection(pipe, data, batch_size=1, progress=False)
    m = result["metrics"]
    # person: 2 predictions, 1 TP, 2 GT; dog: 1/1/1; car (crowd box ignored): 0 predictions, 1 GT
    assert m["precision"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["micro_precision"] == pytest.approx(2 / 3) and m["micro_recall"] == pytest.approx(2 / 4)
    assert m["num_images"] == 3 and m["num_queried"] == 2  # image 3 has no annotations: not asked
    # <obj7> of 2 boxes is dropped by the parser (noted); "giraffe" names no asked category
    assert m["unmatched_phrases"] == 1 and m["answers_with_dropped_markup"] == 1
    # mAP equals pycocotools on the same detections (UPN scores as confidences)
    results = [{"image_id": 1, "category_id": 2, "bbox": [30, 20, 20, 20], "score": 0.8},
               {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 40], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [40, 0, 20, 10], "score": 0.5}]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(json.loads((tmp_path / "ann.json").read_text()))
        for a in gt.dataset["annotations"]:
            a["area"] = a["bbox"][2] * a["bbox"][3]
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert m["mAP"] == pytest.approx(ev.stats[0])
    # the protocol's settings reached the predictor
    assert [c["granularity"] for c in pipe.calls] == ["fine", "fine"]
    assert all(c["min_score"] == 0.3 and c["max_boxes"] == 100 and c["boxes"] is None for c in pipe.calls)
    per_image = result["predictions"]
    assert per_image[0]["categories"] == ["dog", "person"] and per_image[2]["answer"] is None
    assert per_image[1]["unmatched_phrases"] == ["giraffe"]


def test_detection_on_world_records_perfect_and_limit(tmp_path):
    data = load_eval_data(write_world(tmp_path))
    boxes = {"car; tree": ([[2, 2, 30, 20], [40, 5, 60, 40]], [0.9, 0.8]),
             "car; person": ([[10, 10, 30, 30], [32, 10, 50, 30], [0, 0, 8, 30]], [0.9, 0.8, 0.7])}

    def respond(q, given):
        if "car; tree" in q:
            return "<ground>car</ground><objects><obj0></objects><ground>tree</ground><objects><obj1></objects>", *boxes["car; tree"]
        return "<ground>cars</ground><objects><obj0><obj1></objects><ground>man</ground><objects><obj2></objects>", *boxes["car; person"]

    pipe = ScriptedPipeline(respond)
    m = run_detection(pipe, data, batch_size=4, progress=False)["metrics"]
    assert m["precision"] == m["recall"] == pytest.approx(1.0)
    assert m["mAP"] == pytest.approx(1.0)
    assert pipe.calls[0]["n"] == 2  # both images in one batch
    one = run_detection(ScriptedPipeline(respond), data, limit=1, progress=False)["metrics"]
    assert one["num_images"] == 1 and one["num_ground_truth"] == 2
    parts = run_detection(ScriptedPipeline(lambda q, b: ("<ground>wheel</ground><objects></objects>", [], [])),
                          data, level="part", progress=False)["metrics"]
    assert parts["recall"] == 0.0 and parts["num_queried"] == 1 and parts["mAP"] == 0.0


def test_referring_world_and_refcoco(tmp_path):
    data = load_eval_data(write_world(tmp_path))

    def respond(q, given):
        if "red car" in q:
            return "<ground>the red car</ground><objects><obj0><obj1></objects>", [[40, 5, 60, 40], [2, 2, 30, 20]], [0.9, 0.5]
        if "tall tree" in q:
            return "<ground>tree</ground><objects></objects><ground>tree</ground><objects><obj0></objects>", [[40, 5, 60, 40]], [0.5]
        return "I don't know <obj", [[40, 40, 50, 48]], [0.9]  # malformed: no grounding; no box fits the person

    result = run_referring(ScriptedPipeline(respond), data, progress=False)
    m = result["metrics"]
    # red car: first grounded box is obj0 (the tree) → wrong; tall tree: first non-empty grounding → right
    assert m["num_samples"] == 3 and m["Acc@0.5"] == pytest.approx(1 / 3) and m["num_without_box"] == 1
    assert [p["correct"] for p in result["predictions"]] == [False, True, False]
    # a perfect pick among the given boxes: the red car and the tree are there, the person is not
    assert m["oracle@0.5"] == pytest.approx(2 / 3) and m["boxes_per_query"] == pytest.approx(4 / 3)
    assert [p["best_iou"] for p in result["predictions"]] == [1.0, 1.0, 0.0]
    # where the wrong picks went: the red car's to the tree, the person's nowhere; they add up with Acc to 1
    assert [p.get("wrong_pick") for p in result["predictions"]] == ["other_category", None, "no_box"]
    assert m["wrong/other_category"] == pytest.approx(1 / 3) and m["wrong/no_box"] == pytest.approx(1 / 3)
    assert m["wrong/same_category"] == 0.0 and m["wrong/no_region"] == 0.0

    write_image(tmp_path / "coco_imgs" / "x.png", (64, 48))
    ref = tmp_path / "refs.json"
    ref.write_text(json.dumps([{"image": "x.png", "expressions": ["the man", "a person"], "bbox": [0, 0, 20, 40]}]))
    refdata = load_eval_data(ref, images=tmp_path / "coco_imgs")
    ok = run_referring(ScriptedPipeline(lambda q, b: ("<ground>man</ground><objects><obj0></objects>", [[0, 0, 20, 38]], [0.8])),
                       refdata, progress=False)
    assert ok["metrics"]["num_samples"] == 2 and ok["metrics"]["Acc@0.5"] == 1.0
    assert not any(k.startswith("wrong/") for k in ok["metrics"])  # RefCOCO data has no other regions


def test_referring_wrong_picks_by_kind(tmp_path):
    """A pick of the other car is a same-category confusion; a box on no region is 'no_region'."""
    path = write_world(tmp_path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[1]["regions"][0]["referring"] = "the blue car"  # box [10, 10, 30, 30]; the green car is [32, 10, 50, 30]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def respond(q, given):
        if "blue car" in q:
            return "<ground>car</ground><objects><obj0></objects>", [[32, 10, 50, 30]], [0.9]
        if "person" in q:
            return "<ground>person</ground><objects><obj0></objects>", [[50, 32, 60, 40]], [0.9]
        return "<ground>it</ground><objects><obj0></objects>", [[2, 2, 30, 20], [40, 5, 60, 40]], [0.9, 0.9]

    result = run_referring(ScriptedPipeline(respond), load_eval_data(path), progress=False)
    kinds = {p["expression"]: p.get("wrong_pick") for p in result["predictions"]}
    assert kinds == {"the red car on the left": None, "the tall tree on the right": "other_category",
                     "the blue car": "same_category", "the person at the far left": "no_region"}
    m = result["metrics"]
    assert m["wrong/same_category"] == m["wrong/other_category"] == m["wrong/no_region"] == pytest.approx(1 / 4)
    assert m["Acc@0.5"] + sum(m[f"wrong/{k}"] for k in WRONG_PICK_KINDS) == pytest.approx(1.0)


def test_referring_per_region_level(tmp_path):
    """Expressions naming parts and instances: accuracy, oracle and counts per level; none when one level."""
    path = write_world(tmp_path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["regions"][1]["referring"] = "the wheel of the red car"  # a part, box [4, 14, 10, 20]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = load_eval_data(path)

    def respond(q, given):
        if "wheel" in q:  # no proposal fits the wheel; the answer names the car
            return "<ground>wheel</ground><objects><obj0></objects>", [[2, 2, 30, 20]], [0.9]
        if "red car" in q:
            return "<ground>car</ground><objects><obj0></objects>", [[2, 2, 30, 20]], [0.9]
        if "tall tree" in q:  # a fitting proposal, but the pick is the other box
            return "<ground>tree</ground><objects><obj1></objects>", [[40, 5, 60, 40], [2, 2, 30, 20]], [0.9, 0.8]
        return "<ground>person</ground><objects><obj0></objects>", [[0, 0, 8, 30]], [0.9]

    m = run_referring(ScriptedPipeline(respond), data, progress=False)["metrics"]
    assert m["num_samples"] == 4 and m["Acc@0.5"] == pytest.approx(2 / 4) and m["oracle@0.5"] == pytest.approx(3 / 4)
    assert m["num_samples/instance"] == 3 and m["num_samples/part"] == 1
    assert m["Acc@0.5/instance"] == pytest.approx(2 / 3) and m["oracle@0.5/instance"] == 1.0
    assert m["Acc@0.5/part"] == 0.0 and m["oracle@0.5/part"] == 0.0
    gt = run_referring(ScriptedPipeline(lambda q, g: ("<ground>it</ground><objects><obj0></objects>", [], [])),
                       data, boxes="gt", progress=False)["metrics"]
    assert gt["num_samples/part"] == 1 and "Acc@0.5/part" in gt and "oracle@0.5/part" not in gt
    one_level = run_referring(ScriptedPipeline(respond), load_eval_data(write_world(tmp_path / "plain")),
                              progress=False)["metrics"]
    assert not any("/" in k for k in one_level if not k.startswith("wrong/"))


def test_referring_on_ground_truth_boxes(tmp_path):
    """boxes="gt": the model gets the image's ground-truth regions (shuffled, the same every run, capped at
    max_boxes with the target kept) and the result reports the accuracy of a random index."""
    data = load_eval_data(write_world(tmp_path))
    targets = {"red car": [2.0, 2.0, 30.0, 20.0], "tall tree": [40.0, 5.0, 60.0, 40.0], "person": [0.0, 0.0, 8.0, 30.0]}

    def oracle(q, given):
        k = given.index(next(box for name, box in targets.items() if name in q))
        return f"<ground>it</ground><objects><obj{k}></objects>", [], []

    pipe = ScriptedPipeline(oracle)
    result = run_referring(pipe, data, boxes="gt", progress=False)
    m = result["metrics"]
    assert m["Acc@0.5"] == 1.0 and m["num_samples"] == 3
    assert m["chance@0.5"] == pytest.approx(1 / 3) and m["boxes_per_query"] == 3
    given = [b for call in pipe.calls for b in call["boxes"]]
    assert sorted(map(tuple, given[0])) == sorted(tuple(map(float, r)) for r in ([2, 2, 30, 20], [4, 14, 10, 20], [40, 5, 60, 40]))
    again = ScriptedPipeline(oracle)
    run_referring(again, data, boxes="gt", progress=False)
    assert [b for call in again.calls for b in call["boxes"]] == given  # the same order every run
    elsewhere = ScriptedPipeline(oracle)  # and wherever the data lives
    run_referring(elsewhere, load_eval_data(write_world(tmp_path / "moved")), boxes="gt", progress=False)
    assert [b for call in elsewhere.calls for b in call["boxes"]] == given
    first = run_referring(ScriptedPipeline(lambda q, g: ("<ground>it</ground><objects><obj0></objects>", [], [])),
                          data, boxes="gt", progress=False)
    assert first["metrics"]["Acc@0.5"] < 1.0 and first["config"]["boxes"] == "gt"

    with pytest.raises(ValueError, match="proposals' or 'gt'"):
        run_referring(pipe, data, boxes="upn", progress=False)
    capped = ScriptedPipeline(oracle)
    assert run_referring(capped, data, boxes="gt", max_boxes=2, progress=False)["metrics"]["Acc@0.5"] == 1.0
    assert all(len(b) == 2 for call in capped.calls for b in call["boxes"])  # the target is always kept
    write_image(tmp_path / "coco_imgs" / "x.png", (64, 48))
    ref = tmp_path / "refs.json"
    ref.write_text(json.dumps([{"image": "x.png", "expressions": ["the man"], "bbox": [0, 0, 20, 40]}]))
    with pytest.raises(EvalDataError, match="JSONL records"):
        run_referring(pipe, load_eval_data(ref, images=tmp_path / "coco_imgs"), boxes="gt", progress=False)


REGION_NAMES = {(2, 2, 30, 20): "cars", (4, 14, 10, 20): "tire", (40, 5, 60, 40): "tree",
                (10, 10, 30, 30): "automobile", (32, 10, 50, 30): "truck", (0, 0, 8, 30): "man"}


def _region_respond(q, given):
    box = tuple(int(v) for v in given[0])
    name = REGION_NAMES[box]
    if "category" in q:
        return f"<ground>{name}</ground><objects><obj0></objects>", None, None
    return f"<ground>a {name} in the picture</ground><objects><obj0></objects>", None, None


def _bag(texts):
    import numpy as np

    vocab = ["car", "cars", "tree", "man", "person", "wheel", "tire", "automobile", "truck"]
    return np.array([[t.split().count(w) + 1e-3 for w in vocab] for t in texts])


def test_region_world(tmp_path):
    data = load_eval_data(write_world(tmp_path))
    pipe = ScriptedPipeline(_region_respond)
    result = run_region(pipe, data, batch_size=3, sentence_encoder=_bag, use_java=False, progress=False)
    m = result["metrics"]
    assert m["num_regions"] == 6
    # correct: cars→car, tree, automobile→car (synonym), man→person; wrong: tire, truck
    assert m["category/accuracy"] == pytest.approx(4 / 6)
    assert 0 < m["category/S-IoU"] < 1 and 0 < m["category/SS"] <= 1
    assert m["phrase/num_samples"] == 6 - 1  # the wheel has no phrase
    assert m["brief/num_samples"] == 3 and m["sentence/num_samples"] == 2
    assert 0 <= m["phrase/BLEU-1"] <= 1 and m["phrase/METEOR"] == "skipped: java not on PATH"
    # the model got exactly the region's box and the question about <obj0>
    assert all(len(b) == 1 for c in pipe.calls for b in c["boxes"])
    assert "<obj0>" in pipe.calls[0]["questions"][0]
    assert result["predictions"][0]["predicted_category"] == "cars"

    # only the instances: the wheel (answered "tire") is no longer asked about
    inst = run_region(ScriptedPipeline(_region_respond), data, tasks=["category"], sentence_encoder=None,
                      use_java=False, progress=False, level="instance")
    assert inst["metrics"]["num_regions"] == 5 and inst["metrics"]["category/accuracy"] == pytest.approx(4 / 5)
    assert inst["config"]["level"] == "instance"
    parts = run_region(ScriptedPipeline(_region_respond), data, tasks=["category"], sentence_encoder=None,
                       use_java=False, progress=False, level="part")
    assert parts["metrics"]["num_regions"] == 1 and parts["metrics"]["category/accuracy"] == 0.0


def test_region_coco_category_only_and_ss_skip(tmp_path):
    data = load_eval_data(write_coco(tmp_path))
    names = {(0, 0, 20, 40): "person", (30, 20, 50, 40): "puppy", (10, 5, 30, 35): "woman", (35, 10, 55, 30): "car"}

    def respond(q, given):
        return f"<ground>{names[tuple(int(v) for v in given[0])]}</ground><objects><obj0></objects>", None, None

    result = run_region(ScriptedPipeline(respond), data, sentence_encoder=None, use_java=False, progress=False)
    m = result["metrics"]
    assert m["category/num_samples"] == 4 and m["category/accuracy"] == pytest.approx(3 / 4)
    assert m["category/SS"].startswith("skipped")
    assert set(m["skipped"]) == {"phrase", "brief", "sentence"}
    with pytest.raises(ValueError, match="unknown region task"):
        run_region(ScriptedPipeline(respond), data, tasks=["colour"], progress=False)


def test_grounded_caption_world(tmp_path):
    data = load_eval_data(write_world(tmp_path))

    def respond(q, given):
        if len(respond.seen) == 0:
            respond.seen.append(1)
            return ("A <ground>red car</ground><objects><obj0></objects> next to a <ground>tree</ground>"
                    "<objects><obj1></objects>.", [[2, 2, 30, 20], [40, 5, 60, 40]], [0.9, 0.9])
        return ("<ground>cars</ground><objects><obj0></objects> and <ground>a dog</ground><objects><obj1></objects>",
                [[10, 10, 30, 30], [0, 0, 8, 30]], [0.9, 0.9])

    respond.seen = []
    result = run_grounded_caption(ScriptedPipeline(respond), data, batch_size=1, use_java=False, progress=False)
    m = result["metrics"]
    assert (m["matched"], m["num_predicted"], m["num_ground_truth"]) == (3, 4, 5)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert 0 < m["text/BLEU-1"] <= 1
    with pytest.raises(EvalDataError, match="grounded-caption needs JSONL"):
        run_grounded_caption(ScriptedPipeline(respond), load_eval_data(write_coco(tmp_path)), progress=False)


def test_counting_world(tmp_path):
    data = load_eval_data(write_world(tmp_path))
    answers = iter([
        ("There is 1 <ground>car</ground><objects><obj0></objects>.", [[0, 0, 5, 5]], [0.9]),
        ("I see two trees <ground>trees</ground><objects><obj0></objects>", [[0, 0, 5, 5]], [0.9]),
        ("There are 2 <ground>cars</ground><objects><obj0><obj1></objects>.", [[0, 0, 5, 5], [5, 5, 9, 9]], [0.9, 0.8]),
        ("I can't tell", [], []),
    ])
    pipe = ScriptedPipeline(lambda q, b: next(answers))
    result = run_counting(pipe, data, progress=False)
    m = result["metrics"]
    assert [(p["category"], p["count"]) for p in result["predictions"]] == [("car", 1), ("tree", 1), ("car", 2), ("person", 1)]
    assert m["accuracy"] == pytest.approx(0.5) and m["num_unparsed"] == 1
    assert m["grounded_count_accuracy"] == pytest.approx(3 / 4)
    assert "Count the instances of car" in pipe.calls[0]["questions"][0]


def test_pope_world_always_yes(tmp_path):
    data = load_eval_data(write_world(tmp_path))
    pipe = ScriptedPipeline(lambda q, b: ("Yes, there is.", [], []))
    result = run_pope(pipe, data, progress=False)
    m = result["metrics"]
    for s in ("random", "popular", "adversarial"):
        # each image: 2 present categories and 1 absent (vocabulary car, person, tree)
        assert m[f"{s}/num_samples"] == 6
        assert m[f"{s}/accuracy"] == pytest.approx(4 / 6) and m[f"{s}/yes_ratio"] == 1.0
        assert m[f"{s}/recall"] == 1.0 and m[f"{s}/precision"] == pytest.approx(4 / 6)
    assert "Is there a" in pipe.calls[0]["questions"][0]
    limited = run_pope(ScriptedPipeline(lambda q, b: ("no", [], [])), data, limit=1, settings=["popular"], progress=False)
    assert limited["metrics"]["popular/num_samples"] == 3 and limited["metrics"]["popular/accuracy"] == pytest.approx(1 / 3)


def test_proposals_world_per_granularity(tmp_path):
    data = load_eval_data(write_world(tmp_path))
    a, b = (64, 48), (60, 40)
    upn = ScriptedUPN({
        (a, "fine"): [([4, 14, 10, 20], 0.5), ([2, 2, 30, 20], 0.9), ([40, 5, 60, 40], 0.7)],  # unsorted on purpose
        (a, "coarse"): [([2, 2, 30, 20], 0.9)],
        (b, "coarse"): [([10, 10, 30, 30], 0.9), ([32, 10, 50, 30], 0.8), ([0, 0, 8, 30], 0.7)],
    })
    result = run_proposals(upn, data, ks=[1, 2, 5], progress=False)
    m = result["metrics"]
    assert m["num_ground_truth"] == 6
    assert [m[f"fine/R50@{k}"] for k in (1, 2, 5)] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert [m[f"coarse/AR@{k}"] for k in (1, 2, 5)] == pytest.approx([2 / 6, 3 / 6, 4 / 6])
    assert upn.prompt_types == ["fine", "coarse"]
    inst = run_proposals(upn, data, kind="instances", ks=[5], granularities=["fine"], progress=False)["metrics"]
    assert inst["num_ground_truth"] == 5 and inst["fine/AR@5"] == pytest.approx(2 / 5)


def test_proposals_filtered_as_the_pipeline_gives_them_to_chatrex(tmp_path):
    data = load_eval_data(write_world(tmp_path))
    a = (64, 48)
    # the best box, a near-duplicate of it, two more hits, the last one below the official score threshold
    upn = ScriptedUPN({(a, "fine"): [([2, 2, 30, 20], 0.9), ([2, 2, 30, 21], 0.85), ([40, 5, 60, 40], 0.7),
                                     ([4, 14, 10, 20], 0.2)]})

    def recall(**kw):
        m = run_proposals(upn, data, ks=[1, 2, 5], granularities=["fine"], progress=False, **kw)["metrics"]
        return [m[f"fine/R50@{k}"] for k in (1, 2, 5)]

    assert recall() == pytest.approx([1 / 6, 1 / 6, 3 / 6])  # the duplicate takes the second place
    assert recall(nms=0.8) == pytest.approx([1 / 6, 2 / 6, 3 / 6])  # NMS drops it
    assert recall(min_score=0.3, nms=0.8) == pytest.approx([1 / 6, 2 / 6, 2 / 6])  # and the threshold the last hit
    result = run_proposals(upn, data, ks=[5], granularities=["fine"], min_score=0.3, nms=0.8, progress=False)
    assert result["config"]["min_score"] == 0.3 and result["config"]["nms"] == 0.8
    assert result["predictions"][0]["fine"]["num_proposals"] == 2
    with pytest.raises(ValueError, match="nms must be an IoU"):
        run_proposals(upn, data, nms=0.0, progress=False)


def test_run_queries_rejects_bad_predictor_output(tmp_path):
    img = write_image(tmp_path / "x.png")
    wrong_count = lambda images, questions, **kw: []  # noqa: E731
    with pytest.raises(PredictorError, match="0 results for 1 queries"):
        run_queries(wrong_count, [Query(img, "q")], progress=False)
    bad_boxes = ScriptedPipeline(lambda q, b: ("x", [], []))
    bad_boxes.respond = lambda q, b: ("<ground>a</ground><objects><obj0></objects>", [[5, 5, 1, 1]], [0.9])
    with pytest.raises(PredictorError, match="malformed boxes"):
        run_queries(bad_boxes, [Query(img, "q")], progress=False)


def test_run_queries_moves_the_progress_bar_per_answer(tmp_path, monkeypatch):
    """A predictor that reports each answer as it ends (the pipeline's ``on_answer``) moves the bar per answer;
    one that does not moves it per batch."""
    from chatrex.evaluation.runners import common

    updates: list = []

    class Bar:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            updates.append(n)

    monkeypatch.setattr(common, "progress_bar", lambda total, desc, enabled: Bar())
    img = write_image(tmp_path / "x.png")
    scripted = ScriptedPipeline(lambda q, b: ("an answer", [], []))
    seen_before_return: list = []

    def reporting(images, questions, boxes=None, granularity="fine", min_score=0.3, max_boxes=100, batch_size=8,
                  on_answer=None):
        for _ in questions[:-1]:  # the last answer of the batch is not reported: the runner counts it
            on_answer()
            seen_before_return.append(list(updates))
        return scripted(images, questions, boxes=boxes, granularity=granularity, min_score=min_score,
                        max_boxes=max_boxes)

    answers = run_queries(reporting, [Query(img, f"q{i}") for i in range(5)], batch_size=3)
    assert len(answers) == 5 and sum(updates) == 5
    assert updates == [1, 1, 1, 1, 1]
    assert seen_before_return[0] == [1]  # the bar moved during the predictor's call, not after it
    updates.clear()
    run_queries(scripted, [Query(img, f"q{i}") for i in range(5)], batch_size=3)
    assert updates == [3, 2]


def test_missing_image_is_a_clear_error(tmp_path):
    from chatrex.utils.image import ImageLoadError

    with pytest.raises(ImageLoadError, match="missing.png"):
        run_queries(ScriptedPipeline(lambda q, b: ("", [], [])), [Query(str(tmp_path / "missing.png"), "q")],
                    progress=False)


def test_load_eval_data_errors(tmp_path):
    with pytest.raises(EvalDataError, match="not found"):
        load_eval_data(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EvalDataError, match="not valid JSON"):
        load_eval_data(bad)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"hello": 1}))
    with pytest.raises(EvalDataError, match="unknown format"):
        load_eval_data(odd)
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps([{"image": "x.png", "expression": "", "box": [0, 0, 1, 1]}]))
    with pytest.raises(EvalDataError, match="item 0"):
        load_eval_data(refs)
    refs.write_text(json.dumps([{"image": "x.png", "expression": "a", "box": [5, 0, 1, 1]}]))
    with pytest.raises(EvalDataError, match="x1 < x0"):
        load_eval_data(refs)
    jl = tmp_path / "r.jsonl"
    jl.write_text('{"id": "a", "image": "a.png", "width": 10, "height": 10, "regions": [{"id": 0, "box": [0, 0, 20, 5]}]}\n')
    with pytest.raises(EvalDataError, match="r.jsonl:1"):
        load_eval_data(jl)
    with pytest.raises(EvalDataError, match="referring needs"):
        run_referring(ScriptedPipeline(lambda q, b: ("", [], [])), load_eval_data(write_coco(tmp_path)), progress=False)


def test_to_answer_drops_indices_past_the_box_list_and_parses_raw_text():
    from chatrex.evaluation.runners.common import to_answer
    from chatrex.grounding.parser import parse_grounded
    from tests.evaluation.standins import StandInResult

    raw = "<ground>dog</ground><objects><obj0><obj5></objects>"
    unchecked = StandInResult(parse_grounded(raw), raw, [[0, 0, 4, 4]], [0.9])  # parsed without num_boxes
    ans = to_answer(unchecked)
    assert ans.groundings == [("dog", [0])] and ans.invalid_indices == 1
    no_answer = to_answer(StandInResult(None, raw, [[0, 0, 4, 4]], None))  # only raw text: parsed here
    assert no_answer.groundings == [("dog", [0])] and no_answer.dropped and no_answer.score_of(0) == 1.0
    with pytest.raises(PredictorError, match="2 scores"):
        to_answer(StandInResult(None, raw, [[0, 0, 4, 4]], [0.1, 0.2]))


def test_sample_items_is_a_fixed_spread_subset_in_data_order():
    from chatrex.evaluation.runners.common import sample_items

    items = [(image, k) for image in range(10) for k in range(40)]  # 10 images, 40 samples each
    picked = sample_items(items, 50)
    assert len(picked) == 50 and len(set(picked)) == 50
    assert picked == sorted(picked)  # data order kept
    assert len({image for image, _ in picked}) >= 8  # not the first image or two
    assert sample_items(items, 50) == picked  # the same every run
    assert sample_items(items, None) == items and sample_items(items, 1000) == items
    assert sample_items(items, 0) == []
    with pytest.raises(ValueError, match="non-negative"):
        sample_items(items, -1)


def test_limited_referring_asks_about_several_images(tmp_path):
    from chatrex.evaluation.runners.common import sample_items
    from chatrex.evaluation.runners.referring import referring_samples

    write_image(tmp_path / "images" / "a.png", (64, 48))
    regions = [{"id": i, "box": [i, 0, i + 10, 10], "category": "car", "level": "instance",
                "referring": f"car number {i}"} for i in range(30)]
    records = [{"id": f"w-{n}", "image": "images/a.png", "width": 64, "height": 48, "regions": regions}
               for n in range(6)]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = load_eval_data(path)
    asked = []

    def respond(question, boxes):
        asked.append(question)
        return "<ground>car</ground><objects><obj0></objects>", [[0, 0, 10, 10]], [0.9]

    result = run_referring(ScriptedPipeline(respond), data, limit=12, progress=False)
    assert result["metrics"]["num_samples"] == 12 and len(asked) == 12
    expected = sample_items(referring_samples(data), 12)
    assert [p["expression"] for p in result["predictions"]] == [s["expression"] for s in expected]
    assert len({p["record"] for p in result["predictions"]}) >= 4  # the first 12 would all be record w-0
