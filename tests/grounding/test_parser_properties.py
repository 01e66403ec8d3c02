"""Property tests: parse_grounded never raises, its spans are always consistent, and
parse(render(x)) == x for well-formed x."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chatrex.grounding import GroundedAnswer, Grounding, parse_grounded, render_grounded
from chatrex.grounding.parser import PHRASE_TRAILING_PUNCTUATION

TAGS = [
    "<ground>", "</ground>", "<objects>", "</objects>", "<objfeat>", "<image>", "</s>", "<|im_end|>",
    "<obj0>", "<obj1>", "<obj3>", "<obj7>", "<obj12>", "<obj99>", "<obj100>", "<obj007>",
]
_pieces = st.one_of(st.sampled_from(TAGS), st.text(max_size=8), st.sampled_from([" ", "\n", ",", ".", "<", ">", "<obj"]))
malformed = st.lists(_pieces, max_size=30).map("".join)

SETTINGS = settings(max_examples=300, deadline=None)


def _check_invariants(ans: GroundedAnswer, num_boxes):
    assert isinstance(ans.text, str)
    assert ans.text == ans.text.strip()
    for g in ans.groundings:
        start, end = g.span
        assert 0 <= start < end <= len(ans.text)
        assert ans.text[start:end] == g.phrase
        assert g.phrase == g.phrase.strip() and g.phrase
        assert all(type(i) is int and i >= 0 for i in g.indices)
        assert len(set(g.indices)) == len(g.indices)
        if num_boxes is not None:
            assert all(i < num_boxes for i in g.indices)
    assert all(isinstance(d, str) and d for d in ans.dropped)


@SETTINGS
@given(st.text(max_size=200), st.one_of(st.none(), st.integers(0, 120)))
def test_random_text_never_raises(text, num_boxes):
    _check_invariants(parse_grounded(text, num_boxes=num_boxes), num_boxes)


@SETTINGS
@given(malformed, st.one_of(st.none(), st.integers(0, 20)))
def test_malformed_tag_soup_never_raises(text, num_boxes):
    _check_invariants(parse_grounded(text, num_boxes=num_boxes), num_boxes)


# Well-formed answers: stripped text without '<' or '>', non-overlapping spans over phrases that have no
# surrounding whitespace and no trailing punctuation, unique indices below num_boxes.
_alphabet = st.characters(blacklist_characters="<>", blacklist_categories=("Cs",))
_plain = st.text(alphabet=_alphabet, max_size=12)
_phrase = st.text(alphabet=_alphabet, min_size=1, max_size=12).filter(
    lambda p: p == p.strip() and p[-1] not in PHRASE_TRAILING_PUNCTUATION and not p[-1].isspace()
)


@st.composite
def well_formed(draw):
    num_boxes = draw(st.integers(1, 100))
    parts = [draw(_plain)]
    groundings = []
    text = parts[0]
    for _ in range(draw(st.integers(0, 5))):
        phrase = draw(_phrase)
        indices = draw(st.lists(st.integers(0, num_boxes - 1), unique=True, max_size=6))
        groundings.append(Grounding(phrase, (len(text), len(text) + len(phrase)), indices))
        text += phrase + draw(_plain)
    stripped = text.strip()
    shift = len(text) - len(text.lstrip())
    groundings = [g for g in groundings if g.span[1] <= shift + len(stripped) and g.span[0] >= shift]
    groundings = [Grounding(g.phrase, (g.span[0] - shift, g.span[1] - shift), g.indices) for g in groundings]
    return GroundedAnswer(stripped, groundings, []), num_boxes


@SETTINGS
@given(well_formed())
def test_parse_of_render_is_identity(example):
    answer, num_boxes = example
    tagged = render_grounded(answer.text, answer.groundings)
    assert parse_grounded(tagged, num_boxes=num_boxes) == answer
    assert parse_grounded(tagged + "</s>") == answer
