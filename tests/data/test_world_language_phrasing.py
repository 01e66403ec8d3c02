"""English helpers of the scene language: articles, plurals, numbers, ordering, grounded text."""

from __future__ import annotations

import random

import pytest

from chatrex.data.world import catalog
from chatrex.data.world.language import (
    SceneIndex,
    annotate,
    plural_of,
    referring_expressions,
    refers_uniquely,
)
from chatrex.data.world.phrasing import (
    GroundedText,
    Ref,
    Seq,
    counted,
    indefinite_article,
    join_words,
    noun_phrase,
    number_word,
    ordinal_word,
    pluralize,
)


def test_articles():
    assert indefinite_article("orange cat") == "an"
    assert indefinite_article("red apple") == "a"
    assert indefinite_article("umbrella") == "an"
    assert indefinite_article("unicorn") == "a"
    assert indefinite_article("hour") == "an"
    assert indefinite_article("one-eyed robot") == "a"
    with pytest.raises(ValueError, match="non-empty"):
        indefinite_article(" ")


def test_plurals_numbers_and_lists():
    assert pluralize("bus") == "buses" and pluralize("cargo box") == "cargo boxes"
    assert pluralize("canopy") == "canopies" and pluralize("key") == "keys"
    assert pluralize("person") == "people" and pluralize("fish") == "fish"
    assert pluralize("knife") == "knives"
    for cat in catalog.CATEGORIES:  # the catalogue's own plurals win
        assert plural_of(cat.name) == cat.plural
    for part, plural in catalog.PARTS.items():
        assert plural_of(part) == plural
    assert number_word(0) == "zero" and number_word(3) == "three" and number_word(42) == "42"
    assert ordinal_word(1) == "first" and ordinal_word(2) == "second" and ordinal_word(22) == "22nd"
    assert ordinal_word(13) == "thirteenth" and ordinal_word(113) == "113th"
    with pytest.raises(ValueError):
        ordinal_word(0)
    assert counted(1, "red car", "red cars") == "a red car"
    assert counted(1, "orange car", "orange cars") == "an orange car"
    assert counted(3, "red car", "red cars") == "three red cars"
    assert join_words(["a"]) == "a" and join_words(["a", "b", "c"]) == "a, b and c"


def test_adjective_order_is_size_colour_pattern():
    attrs = {"pattern": "striped", "color": "red", "size": "small", "orientation": "facing left"}
    assert noun_phrase("car", attrs) == "small red striped car"
    assert noun_phrase("car", attrs, fields=("pattern", "color")) == "red striped car"
    assert noun_phrase("car", {**attrs, "pattern": "plain"}, silent=("plain",)) == "small red car"


def test_grounded_text_spans_and_capitals():
    t = GroundedText()
    t.sentence("{a} is {where}.", {"a": Ref("the red car", (3,)),
                                    "where": Seq(("left of ", Ref("the house", (1,))))})
    t.sentence("We see {items}.", {"items": [Ref("two cats", (4, 5)), "grass", Ref("a tree", (2,))]})
    assert t.text == "The red car is left of the house. We see two cats, grass and a tree."
    for g in t.groundings:
        s, e = g["span"]
        assert t.text[s:e] == g["phrase"]
    assert [g["phrase"] for g in t.groundings] == ["The red car", "the house", "two cats", "a tree"]
    assert t.groundings[2]["regions"] == [4, 5]
    with pytest.raises(KeyError, match="slot"):
        GroundedText().sentence("{missing}", {})


def test_real_world_scenes_if_the_renderer_is_there():
    scene = pytest.importorskip("chatrex.data.world.scene")
    from chatrex.data.schema import validate_record

    for seed in range(3):
        _, record = scene.generate_scene(seed)
        refs = referring_expressions(record, random.Random(seed))
        index = SceneIndex(record)
        for rid, ref in refs.items():
            if ref is not None:
                assert refers_uniquely(ref.spec, index) == [rid]
        assert sum(ref is not None for ref in refs.values()) >= 0.95 * len(refs)
        annotate(record, random.Random(seed))
        assert validate_record(record) == []
