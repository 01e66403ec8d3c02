"""parse_grounded on the official README's example outputs and on malformed answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chatrex.grounding import GroundedAnswer, Grounding, boxes_for, parse_grounded, render_grounded

# Example outputs of the released ChatRex-7B, verbatim from the README of IDEA-Research/ChatRex.
README_DETECTION = (
    "<ground>person</ground><objects><obj10><obj14><obj15><obj27><obj28><obj32><obj33><obj35><obj38>"
    "<obj47><obj50></objects>\n"
    "<ground>pigeon</ground><objects><obj0><obj1><obj2><obj3><obj4><obj5><obj6><obj7><obj8><obj9><obj11>"
    "<obj12><obj13><obj16><obj17><obj18><obj19><obj20><obj21><obj22><obj23><obj24><obj25><obj26><obj29>"
    "<obj31><obj37><obj39><obj40><obj41><obj44><obj49></objects>"
)
README_REGION_CAPTION = (
    "<ground>A brown dog is lying on a bed, appearing relaxed and comfortable</ground><objects><obj0></objects>"
)
README_GROUNDED_CAPTION = (
    "The image depicts a cozy living room with a <ground>plaid couch,</ground><objects><obj2></objects> a "
    "<ground>wooden TV stand</ground><objects><obj3></objects>holding a <ground>black television,</ground>"
    "<objects><obj1></objects> a <ground>red armchair,</ground><objects><obj4></objects> and a "
    "<ground>whiteboard</ground><objects><obj0></objects>with writing on the wall, accompanied by a "
    "<ground>framed poster</ground><objects><obj6></objects>of a <ground>couple.</ground><objects><obj9>"
    "<obj11></objects>"
)
README_CONVERSATION = (
    "Based on the items in the image, it can be inferred that the <ground>person</ground><objects><obj1>"
    "</objects> who owns this room has an interest in fitness and possibly enjoys reading. The presence of "
    "the <ground>dumbbell</ground><objects><obj2></objects> suggests a commitment to physical activity, "
    "while the <ground>book</ground><objects><obj3></objects> indicates a liking for literature or reading. "
    "The <ground>sneaker</ground><objects><obj0></objects>s and the <ground>plush toy</ground><objects><obj1>"
    "</objects> add a personal touch, suggesting that the <ground>person</ground><objects><obj1></objects> "
    "might also value comfort and perhaps has a playful or nostalgic side. However, without more context, it "
    "is not possible to accurately determine the individual's specific traits or <ground>person</ground>"
    "<objects><obj1></objects>ality."
)
README_INSTALL = (
    "<obj0> shows a brown dog lying on a bed. The dog is resting comfortably, possibly sleeping, and is "
    "positioned on the left side of the bed"
)


def _check_spans(ans: GroundedAnswer) -> None:
    for g in ans.groundings:
        assert ans.text[g.span[0] : g.span[1]] == g.phrase


def test_readme_detection():
    ans = parse_grounded(README_DETECTION, num_boxes=51)
    assert ans.text == "person\npigeon"
    assert ans.phrases == ["person", "pigeon"]
    assert ans.groundings[0].indices == [10, 14, 15, 27, 28, 32, 33, 35, 38, 47, 50]
    assert ans.groundings[1].indices[:3] == [0, 1, 2] and ans.groundings[1].indices[-1] == 49
    assert len(ans.groundings[1].indices) == 32
    assert ans.dropped == []
    _check_spans(ans)


def test_readme_region_caption():
    ans = parse_grounded(README_REGION_CAPTION, num_boxes=1)
    assert ans.text == "A brown dog is lying on a bed, appearing relaxed and comfortable"
    assert ans.groundings == [Grounding(ans.text, (0, len(ans.text)), [0])]
    assert ans.dropped == []


def test_readme_grounded_caption():
    ans = parse_grounded(README_GROUNDED_CAPTION, num_boxes=12)
    assert ans.phrases == [
        "plaid couch", "wooden TV stand", "black television", "red armchair", "whiteboard", "framed poster", "couple",
    ]
    assert [g.indices for g in ans.groundings] == [[2], [3], [1], [4], [0], [6], [9, 11]]
    assert ans.text.startswith("The image depicts a cozy living room with a plaid couch, a wooden TV stand")
    assert ans.text.endswith("of a couple.")  # trailing punctuation stays in the text, not in the phrase
    assert ans.dropped == []
    _check_spans(ans)


def test_readme_conversation():
    ans = parse_grounded(README_CONVERSATION, num_boxes=4)
    assert ans.phrases == ["person", "dumbbell", "book", "sneaker", "plush toy", "person", "person"]
    assert [g.indices for g in ans.groundings] == [[1], [2], [3], [0], [1], [1], [1]]
    assert "The sneakers and the plush toy add" in ans.text
    assert ans.text.endswith("specific traits or personality.")
    assert ans.indices == [1, 2, 3, 0]
    _check_spans(ans)


def test_readme_install_output_stray_index():
    ans = parse_grounded(README_INSTALL + "</s>")
    assert ans.text.startswith("shows a brown dog lying on a bed.")
    assert ans.groundings == []
    assert len(ans.dropped) == 1 and "<obj0>" in ans.dropped[0]


def test_eos_tokens_stripped_silently():
    for eos in ("</s>", "<|im_end|>", "<|endoftext|>"):
        ans = parse_grounded(f"<ground>dog</ground><objects><obj1></objects>{eos}{eos}")
        assert ans.text == "dog" and ans.groundings[0].indices == [1] and ans.dropped == []


def test_whitespace_between_ground_and_objects_tolerated():
    ans = parse_grounded("A <ground>cat</ground> \n <objects> <obj2>, <obj3> </objects> sleeps.")
    assert ans.text == "A cat sleeps."
    assert ans.groundings == [Grounding("cat", (2, 5), [2, 3])]
    assert ans.dropped == []


def test_empty_objects_block_means_none():
    ans = parse_grounded("<ground>cat</ground><objects></objects>")
    assert ans.groundings == [Grounding("cat", (0, 3), [])]
    assert ans.dropped == []


def test_out_of_range_and_repeated_indices_dropped():
    ans = parse_grounded("<ground>dog</ground><objects><obj1><obj5><obj1><obj2></objects>", num_boxes=3)
    assert ans.groundings[0].indices == [1, 2]
    assert any("<obj5>" in d and "out of range" in d for d in ans.dropped)
    assert any("<obj1>" in d and "repeated" in d for d in ans.dropped)


def test_huge_index_does_not_raise():
    ans = parse_grounded("<ground>a</ground><objects><obj" + "9" * 5000 + "></objects>")
    assert ans.groundings[0].indices == [] and "out of range" in ans.dropped[0]


def test_unclosed_and_stray_tags():
    ans = parse_grounded("x <ground>dog</ground> runs <objects><obj3></objects></objects><obj4> <ground>tail")
    assert ans.text == "x dog runs  tail"
    assert ans.groundings == []
    notes = " | ".join(ans.dropped)
    assert "'dog' has no <objects> block" in notes
    assert "no preceding <ground> phrase" in notes
    assert "stray </objects>" in notes and "stray <obj4>" in notes
    assert "not closed" in notes


def test_truncated_objects_block_dropped():
    ans = parse_grounded("<ground>person</ground><objects><obj1><obj2>")
    assert ans.text == "person" and ans.groundings == []
    assert "not closed by </objects>" in ans.dropped[0]


def test_missing_close_ground_recovered_at_objects():
    ans = parse_grounded("the <ground>dog<objects><obj0></objects> barks")
    assert ans.groundings == [Grounding("dog", (4, 7), [0])]
    assert len(ans.dropped) == 1


def test_leaked_placeholders_removed():
    ans = parse_grounded("<image>\n<objfeat>a <ground>cup</ground><objects><obj0></objects>")
    assert ans.text == "a cup"
    assert ans.groundings[0].phrase == "cup"
    assert sum("leaked placeholder" in d for d in ans.dropped) == 2


def test_non_string_inputs_never_raise():
    assert parse_grounded(None).text == ""
    ans = parse_grounded(12345)
    assert ans.text == "12345" and ans.dropped
    ans = parse_grounded("<ground>a</ground><objects><obj1></objects>", num_boxes="lots")
    assert ans.groundings[0].indices == [1] and "range check skipped" in ans.dropped[0]


def test_to_dict_is_json_and_round_trips():
    ans = parse_grounded(README_GROUNDED_CAPTION)
    data = json.loads(json.dumps(ans.to_dict()))
    assert set(data) == {"text", "groundings", "dropped"}
    assert data["groundings"][0] == {"phrase": "plaid couch", "span": list(ans.groundings[0].span), "indices": [2]}
    assert GroundedAnswer.from_dict(data) == ans


def test_render_is_inverse_of_parse_for_readme_examples():
    for s in (README_DETECTION, README_REGION_CAPTION, README_CONVERSATION, README_GROUNDED_CAPTION):
        ans = parse_grounded(s)
        assert parse_grounded(ans.to_tagged()) == ans


def test_render_accepts_schema_dicts_and_rejects_bad_spans():
    s = render_grounded("A red car.", [{"span": [2, 9], "phrase": "red car", "regions": [0, 4]}])
    assert s == "A <ground>red car</ground><objects><obj0><obj4></objects>."
    with pytest.raises(ValueError, match="outside the text"):
        render_grounded("abc", [Grounding("x", (2, 9), [0])])
    with pytest.raises(ValueError, match="overlaps"):
        render_grounded("abcdef", [Grounding("abc", (0, 3), [0]), Grounding("bcd", (1, 4), [1])])


def test_boxes_for():
    boxes = np.arange(20, dtype=float).reshape(5, 4)
    ans = parse_grounded("<ground>a</ground><objects><obj3><obj1></objects><ground>b</ground><objects></objects>")
    got = boxes_for(ans.groundings[0], boxes)
    assert [b.tolist() for b in got] == [boxes[3].tolist(), boxes[1].tolist()]
    per = boxes_for(ans, boxes.tolist())
    assert per == [[boxes[3].tolist(), boxes[1].tolist()], []]
    with pytest.raises(ValueError, match="only 2 boxes"):
        boxes_for(ans.groundings[0], boxes[:2])


def test_identical_notes_collapsed_with_count():
    ans = parse_grounded("<obj3><obj3><obj3> hi <obj4>")
    assert ans.text == "hi"
    assert ans.dropped == ["stray <obj3> (outside an <objects> block) removed (x3)",
                           "stray <obj4> (outside an <objects> block) removed"]
