"""Task prompts and fixed-form answers."""

from __future__ import annotations

import random

import numpy as np
import pytest

from chatrex.grounding import (
    TASKS,
    build_answer,
    build_prompt,
    counting_answer,
    detection_answer,
    parse_grounded,
    pluralize,
    region_answer,
    templates,
)

ARGS = {
    "detection": dict(categories=["person", "pigeon"]),
    "referring": dict(expression="the man in a yellow shirt"),
    "region_category": dict(regions=[2, 5]),
    "region_phrase": dict(regions=[2]),
    "region_brief": dict(regions=[2]),
    "region_sentence": dict(regions=[2]),
    "counting": dict(categories="dog"),
    "caption_brief": {},
    "caption_detailed": {},
    "conversation": dict(question="What is the man holding?"),
    "region_classification": dict(regions=[7]),
    "region_relation": dict(regions=[1, 4]),
}


def test_every_task_has_at_least_ten_distinct_paraphrases():
    assert set(TASKS) == set(ARGS)
    for task in TASKS:
        fam = templates(task)
        assert len(fam) >= 10 and len(set(fam)) == len(fam), task
    cand = templates("region_classification", with_candidates=True)
    assert len(cand) >= 10 and all("{candidates}" in t for t in cand)


@pytest.mark.parametrize("task", sorted(ARGS))
def test_every_template_fills_its_arguments(task):
    for t in range(len(templates(task))):
        prompt = build_prompt(task, template=t, **ARGS[task])
        assert "{" not in prompt and "}" not in prompt
        if task == "detection":
            assert "person; pigeon" in prompt
        if task == "region_category":
            assert "<obj2>; <obj5>" in prompt
        if task == "conversation":
            assert prompt.endswith(" What is the man holding?")
        if task == "counting":
            assert "dog" in prompt
        if task == "referring":
            assert "the man in a yellow shirt" in prompt
        if task == "region_relation":
            assert prompt.index("<obj1>") < prompt.index("<obj4>")


def test_default_is_template_zero_and_rng_varies():
    for task, kw in ARGS.items():
        assert build_prompt(task, **kw) == build_prompt(task, template=0, **kw)
        assert build_prompt(task, rng=5, **kw) == build_prompt(task, rng=5, **kw)
        seen = {build_prompt(task, rng=random.Random(s), **kw) for s in range(60)}
        assert len(seen) >= 5, task
    got = build_prompt("detection", rng=np.random.default_rng(0), categories="cat")
    assert got in {t.format(categories="cat") for t in templates("detection")}


def test_region_classification_with_candidates():
    p = build_prompt("region_classification", regions=3, candidates=["cat", "dog", "traffic light"])
    assert "<obj3>" in p and "cat, dog, traffic light" in p


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task="nope"), "unknown task"),
        (dict(task="detection"), "needs categories"),
        (dict(task="detection", categories="cat", regions=[1]), "does not use regions"),
        (dict(task="detection", categories=[]), "empty"),
        (dict(task="detection", categories="cat; dog"), "contains ';'"),
        (dict(task="detection", categories="<obj3>"), "tag"),
        (dict(task="counting", categories=["cat", "dog"]), "one category"),
        (dict(task="region_phrase", regions=[100]), "outside 0..99"),
        (dict(task="region_phrase", regions=[]), "empty"),
        (dict(task="conversation", question="  "), "question is empty"),
        (dict(task="caption_brief", template=11), "out of range"),
    ],
)
def test_bad_arguments_have_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_prompt(**kwargs)


def test_detection_answer_round_trips_including_none():
    s = detection_answer({"person": [10, 14], "cat": []})
    assert s == "<ground>person</ground><objects><obj10><obj14></objects>\n<ground>cat</ground><objects></objects>"
    ans = parse_grounded(s, num_boxes=20)
    assert [(g.phrase, g.indices) for g in ans.groundings] == [("person", [10, 14]), ("cat", [])]
    assert ans.dropped == []
    assert build_answer("referring", detections={"the red car": [3]}) == (
        "<ground>the red car</ground><objects><obj3></objects>"
    )


def test_region_answer_drops_trailing_punctuation():
    s = region_answer({2: "A dog lying on a bed.", 5: "cat"})
    ans = parse_grounded(s)
    assert [(g.phrase, g.indices) for g in ans.groundings] == [("A dog lying on a bed", [2]), ("cat", [5])]
    assert build_answer("region_classification", captions=[(1, "zebra")]) == "<ground>zebra</ground><objects><obj1></objects>"


def test_counting_answer_forms():
    assert counting_answer("dog", [1, 4, 6]) == "There are 3 <ground>dogs</ground><objects><obj1><obj4><obj6></objects>."
    assert counting_answer("dog", [2]) == "There is 1 <ground>dog</ground><objects><obj2></objects>."
    none = counting_answer("bus", [])
    assert none == "There are no <ground>buses</ground><objects></objects>."
    ans = parse_grounded(none)
    assert ans.text == "There are no buses." and ans.groundings[0].indices == []
    with pytest.raises(ValueError, match="repeated"):
        counting_answer("dog", [1, 1])


def test_grounded_answer_via_build_answer():
    s = build_answer("caption_brief", text="A red car.", groundings=[{"span": [2, 9], "phrase": "red car", "regions": [0]}])
    assert s == "A <ground>red car</ground><objects><obj0></objects>."
    with pytest.raises(ValueError, match="missing groundings"):
        build_answer("conversation", text="hi")


def test_pluralize():
    cases = {"dog": "dogs", "bus": "buses", "box": "boxes", "person": "people", "traffic light": "traffic lights",
             "baby": "babies", "toy": "toys", "sheep": "sheep", "knife": "knives", "Person": "People"}
    for single, plural in cases.items():
        assert pluralize(single) == plural


def test_region_relation_prompt_and_answer_round_trip():
    from chatrex.grounding import REGIONGPT_TASKS, read_relation, relation_answer

    p = build_prompt("region_relation", regions=[3, 1])
    assert p.index("<obj3>") < p.index("<obj1>") and "relation" in p
    a = build_answer("region_relation", subject=3, predicate="in front of", object=1)
    assert a == relation_answer(3, "in front of", 1) == "<ground>in front of</ground><objects><obj3><obj1></objects>"
    rel = read_relation(a)
    assert (rel.subject, rel.predicate, rel.object) == (3, "in front of", 1)
    assert rel.to_dict() == {"subject": 3, "predicate": "in front of", "object": 1}
    for bad in ([1], [2, 2], [1, 2, 3]):
        with pytest.raises(ValueError, match="two different regions"):
            build_prompt("region_relation", regions=bad)
    with pytest.raises(ValueError, match="two different regions"):
        relation_answer(2, "left of", 2)
    assert set(REGIONGPT_TASKS.values()) <= set(TASKS)


def test_readers_turn_region_answers_into_data():
    from chatrex.grounding import read_classification, read_region_captions, read_relation

    captions = read_region_captions(build_answer("region_brief", captions={2: "the red car.", 0: "a tree"}))
    assert captions == {2: "the red car", 0: "a tree"}
    assert read_region_captions("no tags at all") == {}
    assert read_region_captions("<ground>x</ground><objects><obj9></objects>", num_boxes=3) == {}  # out of range
    cands = ["traffic light", "light", "car", "person"]
    assert read_classification(build_answer("region_classification", captions={0: "Traffic lights"}), cands) == "traffic light"
    assert read_classification("It is the car.", cands) == "car"
    assert read_classification("Two people.", cands) == "person"  # plural of a candidate
    assert read_classification("<ground>bus</ground><objects><obj0></objects>", cands) is None
    assert read_classification("", cands) is None and read_classification("car", []) is None
    rel = read_relation("<ground>it is left of</ground><objects><obj1><obj0></objects>", ["left of", "right of"])
    assert (rel.subject, rel.predicate, rel.object) == (1, "left of", 0)
    assert read_relation("<ground>far away</ground><objects><obj1><obj0></objects>", ["left of"]) is None
    assert read_relation("<ground>left of</ground><objects><obj1></objects>") is None  # one region only
    assert read_relation(None) is None
