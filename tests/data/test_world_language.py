"""The scene language: referring expressions, captions, conversations, all derived from the graph."""

from __future__ import annotations

import copy
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatrex.data.schema import validate_record
from chatrex.data.world import catalog
from chatrex.data.world.language import (
    SYNONYMS,
    LanguageError,
    SceneIndex,
    annotate,
    referring_expressions,
    refers_uniquely,
)
from chatrex.data.world.templates import TEMPLATES
from tests.data.test_world_language_scenes import random_scene

NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}


def _region(rid, box, category, level="instance", parent=None, **attributes):
    return {"id": rid, "box": list(box), "category": category, "level": level, "parent": parent,
            "attributes": attributes}


def _record(regions, relations=(), width=400, height=300):
    return {"id": "t", "image": "t.png", "width": width, "height": height, "regions": list(regions),
            "relations": list(relations)}


def _all_groundings(record):
    for c in record["captions"]:
        yield c["text"], c["groundings"]
    for qa in record["conversations"]:
        yield qa["answer"], qa.get("groundings", [])


# ------------------------------------------------------------------------------ referring expressions


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 25),
       pool=st.sampled_from([None, ("car", "cat"), ("star",), ("cup", "house", "tree")]))
def test_every_referring_expression_resolves_to_exactly_its_region(seed, n, pool):
    record = random_scene(seed, n, categories=pool)
    refs = referring_expressions(record, random.Random(seed))
    index = SceneIndex(record)
    for region in record["regions"]:
        ref = refs[region["id"]]
        if ref is None:
            continue
        assert refers_uniquely(ref.spec, record) == [region["id"]], (ref.spec, ref.text)
        assert index.resolve(ref.spec) == [region["id"]]
    # instances of distinct boxes are (nearly) always referable; parts of this generator can overlap
    instances = [r for r in record["regions"] if r["level"] == "instance"]
    missing = [r["id"] for r in instances if refs[r["id"]] is None]
    assert len(missing) <= max(1, len(instances) // 10)


def test_annotate_writes_the_texts_of_those_expressions():
    record = random_scene(11, 12)
    refs = referring_expressions(copy.deepcopy(record), random.Random(3))
    annotate(record, random.Random(3))
    for region in record["regions"]:
        ref = refs[region["id"]]
        assert region["referring"] == (ref.text if ref else None)


def test_fewest_attributes_then_plain_category():
    record = _record([
        _region(0, (10, 10, 60, 50), "car", color="red", pattern="plain", size="small"),
        _region(1, (200, 10, 250, 50), "car", color="blue", pattern="plain", size="small"),
        _region(2, (100, 100, 150, 200), "tree", color="green", pattern="plain", size="medium"),
    ])
    refs = referring_expressions(record, random.Random(0))
    assert refs[0].spec == {"category": "car", "level": "instance", "attributes": {"color": "red"}}
    assert refs[1].spec["attributes"] == {"color": "blue"}
    assert refs[2].spec == {"category": "tree", "level": "instance"}
    assert refs[2].text == "the tree"
    assert refs[0].text in ("the red car", "the red automobile")


def test_two_attributes_when_one_is_not_enough():
    a = dict(pattern="plain", size="small")
    record = _record([
        _region(0, (10, 10, 50, 50), "cup", color="red", **{**a, "pattern": "striped"}),
        _region(1, (100, 10, 140, 50), "cup", color="red", **a),
        _region(2, (200, 10, 240, 50), "cup", color="blue", **{**a, "pattern": "striped"}),
    ])
    refs = referring_expressions(record, random.Random(0))
    assert refs[0].spec["attributes"] == {"color": "red", "pattern": "striped"}
    assert "red striped" in refs[0].text  # colour before pattern
    assert len(refs[1].spec["attributes"]) == 1


def test_relation_when_attributes_do_not_tell_apart():
    same = dict(color="white", pattern="plain", size="small")
    record = _record([
        _region(0, (10, 100, 40, 130), "cup", **same),
        _region(1, (300, 100, 330, 130), "cup", **same),
        _region(2, (60, 80, 140, 160), "house", color="blue", pattern="plain", size="medium"),
    ], relations=[{"subject": 0, "predicate": "left of", "object": 2}])
    refs = referring_expressions(record, random.Random(0))
    assert refs[0].spec["relation"] == {"predicate": "left of",
                                        "object": {"category": "house", "level": "instance"}}
    assert refs[0].text.endswith("the house") or refs[0].text.endswith("the building")
    assert refs[1].spec.get("ordinal") is not None  # no relation of its own: an ordinal
    assert refers_uniquely(refs[1].spec, record) == [1]


def test_ordinals_over_a_row_of_identical_objects():
    same = dict(color="red", pattern="plain", size="small")
    record = _record([_region(i, (20 + 70 * i, 20 + 10 * i, 60 + 70 * i, 60 + 10 * i), "cat", **same)
                      for i in range(5)], width=400, height=200)
    refs = referring_expressions(record, random.Random(0))
    for i in range(5):
        assert refs[i].spec["ordinal"]["rank"] in (1, 2, 3)
        assert refers_uniquely(refs[i].spec, record) == [i]
    assert refers_uniquely({"category": "cat", "ordinal": {"order": "left", "rank": 2}}, record) == [1]
    assert refers_uniquely({"category": "cat", "ordinal": {"order": "bottom", "rank": 1}}, record) == [4]
    assert refers_uniquely({"category": "cat", "ordinal": {"order": "left", "rank": 9}}, record) == []
    middle = refs[2]
    assert re.search(r"\b(third|second)\b", middle.text), middle.text


def test_ties_are_never_unique():
    same = dict(color="red", pattern="plain", size="small")
    record = _record([_region(0, (10, 10, 50, 50), "star", **same),
                      _region(1, (10, 10, 50, 50), "star", **same)])
    refs = referring_expressions(record, random.Random(0))
    assert refs[0] is None and refs[1] is None
    assert refers_uniquely({"category": "star", "ordinal": {"order": "largest", "rank": 1}}, record) == [0, 1]
    annotate(record, random.Random(0))
    assert record["regions"][0]["referring"] is None
    assert validate_record(record) == []


def test_parts_are_referred_to_through_their_parent():
    record = _record([
        _region(0, (10, 10, 110, 60), "car", color="red", pattern="plain", size="small",
                orientation="facing left"),
        _region(1, (15, 45, 35, 60), "wheel", "part", 0, color="black"),
        _region(2, (80, 45, 100, 60), "wheel", "part", 0, color="black"),
        _region(3, (200, 10, 300, 60), "car", color="blue", pattern="plain", size="small",
                orientation="facing right"),
        _region(4, (210, 45, 230, 60), "wheel", "part", 3, color="black"),
    ])
    annotate(record, random.Random(1))
    regions = {r["id"]: r for r in record["regions"]}
    refs = referring_expressions(record, random.Random(1))
    for pid in (1, 2, 4):
        spec = refs[pid].spec
        assert spec["level"] == "part" and spec["parent"] == refs[regions[pid]["parent"]].spec
        assert refers_uniquely(spec, record) == [pid]
    assert refs[4].spec.get("ordinal") is None  # the blue car has one wheel
    assert refs[1].spec["ordinal"]["order"] in ("left", "right", "largest", "smallest")
    assert regions[1]["phrase"] == "the black wheel of the red car"
    assert regions[4]["phrase"] == "the black wheel of the blue car"
    for pid in (1, 2, 4):
        parent_ref = regions[regions[pid]["parent"]]["referring"]
        assert parent_ref in regions[pid]["description"]
        assert regions[pid]["referring"].endswith(" of " + parent_ref)


def test_bad_specs_and_records_are_named():
    record = _record([_region(0, (0, 0, 10, 10), "cat", color="red")])
    with pytest.raises(LanguageError, match="unknown keys"):
        refers_uniquely({"category": "cat", "colour": "red"}, record)
    with pytest.raises(LanguageError, match="order"):
        refers_uniquely({"category": "cat", "ordinal": {"order": "widest"}}, record)
    with pytest.raises(LanguageError, match="category"):
        refers_uniquely({"attributes": {"color": "red"}}, record)
    with pytest.raises(LanguageError, match="no category"):
        annotate(_record([{"id": 0, "box": [0, 0, 5, 5]}]), random.Random(0))
    with pytest.raises(LanguageError, match="width"):
        annotate({"id": "x", "regions": []}, random.Random(0))
    with pytest.raises(LanguageError, match="empty"):
        annotate(_record([_region(0, (5, 5, 5, 9), "cat")]), random.Random(0))
    with pytest.raises(LanguageError, match="relation"):
        annotate(_record([_region(0, (0, 0, 5, 5), "cat")], relations=[{"subject": 0, "object": 0}]),
                 random.Random(0))
    with pytest.raises(LanguageError, match="unknown region"):
        annotate(_record([_region(0, (0, 0, 5, 5), "cat")],
                         relations=[{"subject": 0, "predicate": "above", "object": 9}]), random.Random(0))
    with pytest.raises(LanguageError, match="random.Random"):
        annotate(_record([]), 3)
    with pytest.raises(LanguageError, match="missing parent"):
        annotate(_record([_region(0, (0, 0, 5, 5), "wheel", "part", 7)]), random.Random(0))


# ------------------------------------------------------------------------------ captions + conversations


@pytest.mark.parametrize("seed", range(25))
def test_spans_are_exact_and_records_validate(seed):
    record = annotate(random_scene(seed, 1 + seed % 14), random.Random(seed))
    assert validate_record(record) == []
    ids = {r["id"] for r in record["regions"]}
    for text, groundings in _all_groundings(record):
        for g in groundings:
            s, e = g["span"]
            assert text[s:e] == g["phrase"] and g["phrase"].strip() == g["phrase"]
            assert g["regions"] and set(g["regions"]) <= ids
    kinds = [c["kind"] for c in record["captions"]]
    assert kinds == ["brief", "detailed"]


@pytest.mark.parametrize("seed", range(25))
def test_counts_in_captions_and_answers_equal_the_real_counts(seed):
    record = annotate(random_scene(seed, 1 + seed % 12, categories=("car", "cat", "star", "tree")),
                      random.Random(seed))
    by_cat = {}
    for r in record["regions"]:
        if r["level"] == "instance":
            by_cat.setdefault(r["category"], set()).add(r["id"])
    regions = {r["id"]: r for r in record["regions"]}
    for text, groundings in _all_groundings(record):
        for g in groundings:
            first = g["phrase"].split()[0].lower()
            if first in NUMBER_WORDS:
                assert NUMBER_WORDS[first] == len(g["regions"]), g
            if first in ("a", "an"):
                assert len(g["regions"]) == 1, g
    detailed = record["captions"][1]
    for cat, ids in by_cat.items():  # the first sentence counts every category
        match = [g for g in detailed["groundings"] if set(g["regions"]) == ids]
        assert match, (cat, detailed["text"])
        word = match[0]["phrase"].split()[0].lower()
        assert (NUMBER_WORDS.get(word) == len(ids)) or (word in ("a", "an") and len(ids) == 1)
    for qa in record["conversations"]:
        if qa["kind"] == "count":
            (g,) = qa["groundings"]
            cats = {regions[i]["category"] for i in g["regions"]}
            assert len(cats) == 1 and set(g["regions"]) == by_cat[cats.pop()]
            assert NUMBER_WORDS[g["phrase"].split()[0].lower()] == len(g["regions"])


def test_brief_caption_names_main_objects_with_counts():
    regions = [_region(i, (10 + 30 * i, 10, 35 + 30 * i, 40), "tree", color="green", pattern="plain",
                       size="small") for i in range(3)]
    regions.append(_region(3, (10, 100, 60, 150), "cat", color="orange", pattern="plain", size="small",
                           orientation="facing left"))
    record = annotate(_record(regions), random.Random(0))
    brief = record["captions"][0]
    phrases = {g["phrase"]: g["regions"] for g in brief["groundings"]}
    assert phrases["three green trees"] == [0, 1, 2]
    assert phrases["an orange cat"] == [3]


@pytest.mark.parametrize("seed", range(15))
def test_existence_negatives_are_really_absent(seed):
    record = annotate(random_scene(seed, 1 + seed % 10), random.Random(seed))
    present = {r["category"] for r in record["regions"]}
    nouns = {c: (c, catalog.CATEGORY_BY_NAME[c].plural, *SYNONYMS.get(c, ())) for c in catalog.CATEGORY_NAMES}
    negatives = [qa for qa in record["conversations"] if qa["kind"] == "exist_no"]
    assert negatives
    for qa in negatives:
        asked = [c for c, words in nouns.items()
                 if any(re.search(rf"\b{re.escape(w)}\b", qa["question"]) for w in words)]
        assert asked and not (set(asked) & present), (qa, present)
        assert qa["answer"].startswith(("No", "There is no")) and not qa.get("groundings")
    for qa in record["conversations"]:
        if qa["kind"] == "exist_yes":
            assert qa["answer"].startswith(("Yes", "Indeed"))


def test_relation_answers_list_exactly_the_related_subjects():
    checked = 0
    for seed in range(20):
        record = annotate(random_scene(seed, 8, with_parts=False), random.Random(seed))
        regions = {r["id"]: r for r in record["regions"]}
        for qa in record["conversations"]:
            if qa["kind"] != "relation":
                continue
            checked += 1
            # the object is the definite referring expression, the subjects are indefinite phrases
            (obj,) = [g for g in qa["groundings"] if g["phrase"].lower().startswith("the ")]
            subjects = set().union(*(set(g["regions"]) for g in qa["groundings"] if g is not obj))
            (o,) = obj["regions"]
            assert obj["phrase"].lower() == regions[o]["referring"].lower()
            predicates = {rel["predicate"] for rel in record["relations"]
                          if rel["object"] == o and rel["subject"] in subjects}
            assert any(subjects == {rel["subject"] for rel in record["relations"]
                                    if rel["object"] == o and rel["predicate"] == p} for p in predicates)
    assert checked >= 10


def test_colour_and_attribute_answers_are_true():
    for seed in range(20):
        record = annotate(random_scene(seed, 6), random.Random(seed))
        regions = {r["id"]: r for r in record["regions"]}
        for qa in record["conversations"]:
            if qa["kind"] in ("color", "pattern", "size"):
                field = qa["kind"]
                (rid,) = qa["groundings"][0]["regions"]
                assert re.search(rf"\b{regions[rid]['attributes'][field]}\b", qa["answer"]), qa


def test_descriptions_use_attributes_pose_and_a_relation():
    record = _record([
        _region(0, (10, 100, 60, 130), "car", color="red", pattern="striped", size="small",
                orientation="facing left"),
        _region(1, (200, 50, 260, 140), "house", color="blue", pattern="plain", size="medium",
                orientation="upright"),
    ], relations=[{"subject": 0, "predicate": "left of", "object": 1}])
    seen_facing = set()
    for seed in range(20):
        r = annotate(copy.deepcopy(record), random.Random(seed))
        desc = r["regions"][0]["description"]
        assert re.search(r"small red striped (car|automobile)", desc), desc
        assert "house" in desc or "building" in desc
        seen_facing.add(any(w in desc for w in ("facing left", "to the left", "turned to the left")))
        assert r["regions"][0]["phrase"] == "a small red striped car"
        house = r["regions"][1]["description"]
        assert "upright" not in house  # a house only comes upright: nothing to say
        assert "right of" in house or "right side of" in house  # the inverse relation
    assert seen_facing == {True}


def test_determinism_and_variety():
    base = random_scene(5, 10)
    a = annotate(copy.deepcopy(base), random.Random(42))
    b = annotate(copy.deepcopy(base), random.Random(42))
    c = annotate(copy.deepcopy(base), random.Random(43))
    assert a == b
    assert a != c
    briefs, counts, descriptions = set(), set(), set()
    for seed in range(60):
        r = annotate(random_scene(seed, 4), random.Random(seed))
        briefs.add(" ".join(r["captions"][0]["text"].split()[:2]))
        for qa in r["conversations"]:
            if qa["kind"] == "count":
                counts.add(qa["question"].split()[0])
        descriptions.add(r["regions"][0]["description"].split()[0])
    assert len(briefs) >= 5, briefs
    assert len(counts) >= 4, counts
    assert len(descriptions) >= 4, descriptions


def test_every_template_kind_has_five_distinct_paraphrases():
    for kind, templates in TEMPLATES.items():
        assert len(set(templates)) >= 5, kind


def test_synonyms_are_recorded_for_present_categories():
    seen_synonym = False
    for seed in range(30):
        r = annotate(random_scene(seed, 6, categories=("car", "bicycle", "star")), random.Random(seed))
        present = {x["category"] for x in r["regions"] if x["level"] == "instance"}
        assert set(r["synonyms"]) <= present
        for cat, words in r["synonyms"].items():
            assert tuple(words) == SYNONYMS[cat]
        texts = " ".join(c["text"] for c in r["captions"])
        seen_synonym |= bool(re.search(r"\b(automobile|bike)s?\b", texts))
    assert seen_synonym


def test_crowded_scene_of_sixty_objects():
    record = random_scene(7, 60, width=640, height=480)
    annotate(record, random.Random(7))
    assert validate_record(record) == []
    instances = [r for r in record["regions"] if r["level"] == "instance"]
    assert len(instances) == 60
    assert sum(r["referring"] is not None for r in instances) >= 57


def test_empty_scene():
    record = annotate(_record([]), random.Random(0))
    assert validate_record(record) == []
    assert record["captions"][0]["text"] and not record["captions"][0]["groundings"]
    assert any(qa["kind"] == "exist_no" for qa in record["conversations"])


def test_setting_from_background_or_free_text():
    base = _record([_region(0, (10, 10, 50, 50), "cat", color="red", pattern="plain", size="small",
                            orientation="facing left")])
    flat = annotate({**copy.deepcopy(base), "background": "flat"}, random.Random(0))
    assert re.search(r"(plain|single-colour|flat) (background|backdrop)", flat["captions"][0]["text"])
    park = annotate({**copy.deepcopy(base), "setting": "a sunny park"}, random.Random(0))
    assert "a sunny park" in park["captions"][0]["text"]
    plain = annotate(copy.deepcopy(base), random.Random(0))
    assert "background" not in plain["captions"][0]["text"]
    for r in (flat, park, plain):
        assert validate_record(r) == []
