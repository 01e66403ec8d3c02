"""ChatRexPipeline end to end on tiny random parts: a tiny UPN, a tiny ChatRex model and processor."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from chatrex.interfaces.pipeline import ChatRexPipeline, PipelineResult
from chatrex.grounding import parse_grounded
from chatrex.upn.config import resolve_config
from chatrex.upn.model import build_upn
from chatrex.upn.wrapper import UPNWrapper
from chatrex.utils.image import ImageLoadError
from tests.mllm.conftest import build_tiny_tokenizer, make_model, make_processor, random_image

GEN = dict(max_new_tokens=6)


@pytest.fixture(scope="module")
def parts():
    tok = build_tiny_tokenizer()
    processor = make_processor(tok)
    model = make_model(tok)
    torch.manual_seed(0)
    cfg = resolve_config("upn_tiny")
    upn = UPNWrapper.from_model(build_upn(cfg).eval(), cfg, resize=64, max_size=96)
    return upn, model, processor


@pytest.fixture(scope="module")
def pipe(parts):
    return ChatRexPipeline(*parts)


@pytest.fixture(scope="module")
def images():
    return [Image.fromarray(random_image(s, w, h)) for s, (w, h) in enumerate([(80, 60), (50, 70), (64, 64)])]


class ForceText:
    """A logits processor that makes generate emit fixed token ids, then EOS."""

    def __init__(self, ids, eos, prompt_len):
        self.ids, self.eos, self.prompt_len = list(ids), eos, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        target = self.ids[step] if step < len(self.ids) else self.eos
        forced = torch.full_like(scores, -float("inf"))
        forced[:, target] = 0.0
        return forced


def test_batched_upn_results(pipe, images):
    results = pipe(images, "Find every dog in this image.", min_score=0.0, max_boxes=5, batch_size=2, **GEN)
    assert len(results) == 3
    for r, im in zip(results, images):
        assert isinstance(r, PipelineResult) and isinstance(r.raw_text, str)
        assert 1 <= len(r.boxes) <= 5 and len(r.scores) == len(r.boxes)
        assert r.scores == sorted(r.scores, reverse=True)
        for x0, y0, x1, y1 in r.boxes:
            assert 0 <= x0 <= x1 <= im.width and 0 <= y0 <= y1 <= im.height
        assert all(i < len(r.boxes) for g in r.answer.groundings for i in g.indices)
        assert r.answer == parse_grounded(r.raw_text, num_boxes=len(r.boxes))
        json.dumps(r.to_dict())


def test_min_score_filters_everything(pipe, images):
    r = pipe(images[0], "Describe this image.", min_score=1.0, **GEN)[0]
    assert r.boxes == [] and r.scores == [] and r.answer.indices == []


def test_user_boxes_skip_the_upn_and_batching_matches_single(parts, images):
    _, model, processor = parts
    no_upn = ChatRexPipeline(None, model, processor)
    boxes = [[[1, 2, 30, 40], [5, 5, 60, 50]], [[0, 0, 49, 69]], [[10, 10, 20, 20], [0, 0, 64, 64], [3, 3, 9, 9]]]
    batched = no_upn(images, ["What is <obj0>?"] * 3, boxes=boxes, batch_size=3, **GEN)
    for im, b, r in zip(images, boxes, batched):
        assert r.scores is None and r.boxes == [[float(v) for v in box] for box in b]
        single = no_upn(im, "What is <obj0>?", boxes=b, **GEN)[0]
        assert single.raw_text == r.raw_text
    with pytest.raises(ValueError, match="no UPN"):
        no_upn(images[0], "What is this?", **GEN)


def test_pointer_model_names_only_its_boxes_and_batches_like_single(parts, images):
    """A model with the object pointer (object_pointer_dim) through the pipeline: every index it writes is one
    of the image's own boxes, whatever the other images of the batch have."""
    import re

    from tests.mllm.test_object_pointer import _pointer_model

    _, model, processor = parts
    pointer = ChatRexPipeline(None, _pointer_model(model), processor)
    boxes = [[[1, 2, 30, 40], [5, 5, 60, 50]], [[0, 0, 49, 69]], [[10, 10, 20, 20], [0, 0, 64, 64], [3, 3, 9, 9]]]
    batched = pointer(images, ["Find every dog."] * 3, boxes=boxes, batch_size=3, max_new_tokens=8)
    for im, b, r in zip(images, boxes, batched):
        named = [int(k) for k in re.findall(r"<obj(\d+)>", r.raw_text)]
        assert named and max(named) < len(b), r.raw_text
        assert pointer(im, "Find every dog.", boxes=b, max_new_tokens=8)[0].raw_text == r.raw_text


def test_mixed_user_boxes_and_proposals(pipe, images):
    res = pipe(images[:2], "What is this?", boxes=[None, [[0, 0, 200, 30]]], min_score=0.0, max_boxes=3, **GEN)
    assert res[0].scores is not None and len(res[0].boxes) == 3
    assert res[1].scores is None and res[1].boxes == [[0.0, 0.0, 50.0, 30.0]]  # clipped to the 50 px wide image


def test_forced_grounded_answer_is_parsed(pipe, images):
    tok = pipe.tokenizer
    answer = "<ground>dog</ground><objects><obj1><obj0></objects> and <obj7>"
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    inputs = pipe.processor(images=[images[0]], questions=["Find every dog."], boxes=[[[1, 2, 30, 40], [5, 5, 60, 50]]])
    force = ForceText(ids, tok.eos_token_id, inputs["input_ids"].shape[1])
    from transformers import LogitsProcessorList

    r = pipe(images[0], "Find every dog.", boxes=[[1, 2, 30, 40], [5, 5, 60, 50]], max_new_tokens=len(ids) + 3,
             logits_processor=LogitsProcessorList([force]))[0]
    assert r.raw_text == answer
    assert r.answer.text == "dog and"
    assert [(g.phrase, g.indices) for g in r.answer.groundings] == [("dog", [1, 0])]
    assert any("<obj7>" in d for d in r.answer.dropped)
    assert r.grounded_boxes() == [[[5.0, 5.0, 60.0, 50.0], [1.0, 2.0, 30.0, 40.0]]]
    d = r.to_dict()
    assert d["answer"]["groundings"][0]["boxes"] == [[5.0, 5.0, 60.0, 50.0], [1.0, 2.0, 30.0, 40.0]]


class EndRowAfter:
    """A logits processor: row r of the batch emits ``token`` r + 1 times, then EOS."""

    def __init__(self, token, eos):
        self.token, self.eos, self.start, self.step = token, eos, None, 0

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        self.step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, -float("inf"))
        for row in range(scores.shape[0]):
            forced[row, self.eos if self.step > row else self.token] = 0.0
        return forced


def test_on_answer_is_called_as_each_answer_of_a_batch_ends(pipe, images):
    from transformers import LogitsProcessorList

    tok = pipe.tokenizer
    force = EndRowAfter(tok.convert_tokens_to_ids("<obj0>"), tok.eos_token_id)
    ended_at = []
    results = pipe(images, "What is <obj0>?", boxes=[[[1, 2, 30, 40]]] * 3, batch_size=3, max_new_tokens=6,
                   logits_processor=LogitsProcessorList([force]), on_answer=lambda: ended_at.append(force.step))
    assert [r.raw_text for r in results] == ["<obj0>", "<obj0><obj0>", "<obj0><obj0><obj0>"]
    assert ended_at == [1, 2, 3]  # one call per answer, each at the step its EOS came
    ended_at.clear()
    pipe(images[:2], "Describe this image.", min_score=0.0, max_boxes=2, batch_size=2, max_new_tokens=2,
         on_answer=lambda: ended_at.append(1))
    assert len(ended_at) == 2  # answers cut by the token limit are reported when generation ends


def test_stream_matches_call(pipe, images):
    expected = pipe(images[1], "Describe this image.", min_score=0.0, max_boxes=4, **GEN)[0]
    streaming = pipe.stream(images[1], "Describe this image.", min_score=0.0, max_boxes=4, **GEN)
    assert streaming.boxes == expected.boxes  # known before any text
    pieces = list(streaming)
    result = streaming.result()
    assert "".join(pieces) == result.raw_text == expected.raw_text
    assert result.answer == expected.answer


def test_save_and_from_pretrained(pipe, images, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "pipeline_config.json").read_text()) == {
        "upn_resize": 64, "upn_max_size": 96, "min_score": 0.3, "nms": 0.8}
    loaded = ChatRexPipeline.from_pretrained(tmp_path / "model")
    a = pipe(images[2], "Find every cat.", min_score=0.0, max_boxes=5, **GEN)[0]
    b = loaded(images[2], "Find every cat.", min_score=0.0, max_boxes=5, **GEN)[0]
    assert a.boxes == b.boxes and a.raw_text == b.raw_text


def test_upn_input_size_without_pipeline_config(pipe, tmp_path):
    """No pipeline_config.json: the UPN directory's recorded size, else the official one."""
    pipe.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "pipeline_config.json").unlink()
    loaded = ChatRexPipeline.from_pretrained(tmp_path / "model")
    assert (loaded.upn.transform.size, loaded.upn.transform.max_size) == (800, 1333)
    (tmp_path / "model" / "upn" / "preprocessor_config.json").write_text(json.dumps({"resize": 72, "max_size": 100}))
    loaded = ChatRexPipeline.from_pretrained(tmp_path / "model")
    assert (loaded.upn.transform.size, loaded.upn.transform.max_size) == (72, 100)
    loaded = ChatRexPipeline.from_pretrained(tmp_path / "model", upn_resize=80, upn_max_size=None)
    assert (loaded.upn.transform.size, loaded.upn.transform.max_size) == (80, None)


def test_proposal_filter_from_pipeline_config(parts, images, tmp_path):
    """A model directory's min_score / nms are the calls' defaults; a call's own values still win."""
    upn = parts[0]
    props = upn.inference([images[0]], prompt_type="fine")
    threshold = float(props["scores"][0][9])  # the tenth-best score: about half the tiny UPN's 20 boxes pass
    tuned = ChatRexPipeline(*parts, min_score=threshold, nms=0.5)
    tuned.save_pretrained(tmp_path / "model")
    stored = json.loads((tmp_path / "model" / "pipeline_config.json").read_text())
    assert (stored["min_score"], stored["nms"]) == (threshold, 0.5)
    loaded = ChatRexPipeline.from_pretrained(tmp_path / "model")
    assert (loaded.min_score, loaded.nms) == (threshold, 0.5)
    expected = upn.filter(props, min_score=threshold, nms_value=0.5)["original_xyxy_boxes"][0]
    everything = upn.filter(props, min_score=0.0, nms_value=0.8)["original_xyxy_boxes"][0]
    assert 10 <= len(expected) < len(everything)
    r = loaded(images[0], "Describe this image.", **GEN)[0]
    assert r.boxes == [[float(v) for v in b] for b in expected]
    assert loaded(images[0], "Describe this image.", min_score=1.0, **GEN)[0].boxes == []
    s = loaded.stream(images[0], "Describe this image.", min_score=0.0, **GEN)
    list(s)
    assert len(s.result().boxes) == len(everything)
    (tmp_path / "model" / "pipeline_config.json").write_text(json.dumps({**stored, "min_score": 1.5}))
    with pytest.raises(ValueError, match="pipeline_config.json.*min_score must be in"):
        ChatRexPipeline.from_pretrained(tmp_path / "model")
    (tmp_path / "model" / "pipeline_config.json").write_text(json.dumps({**stored, "nms": "high"}))
    with pytest.raises(ValueError, match="pipeline_config.json"):
        ChatRexPipeline.from_pretrained(tmp_path / "model")


def test_from_pretrained_missing_parts(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ChatRexPipeline.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "m" / "chatrex").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="lacks 'upn/'"):
        ChatRexPipeline.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "upn").mkdir()
    with pytest.raises(FileNotFoundError, match="neither config.json nor delta_config.json"):
        ChatRexPipeline.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(questions="What is <obj2>?", boxes=[[0, 0, 10, 10], [1, 1, 5, 5]]), "refers to <obj2>"),
        (dict(questions="What is <image>?", boxes=[[0, 0, 10, 10]]), "placeholder"),
        (dict(questions="Hi", boxes=[[0, 0, 10]]), "expected \\[x0, y0, x1, y1\\]"),
        (dict(questions="Hi", boxes=[[10, 0, 5, 10]]), "empty or inverted"),
        (dict(questions="Hi", boxes=[[0, 0, float("nan"), 10]]), "non-finite"),
        (dict(questions="Hi", boxes=[[500, 500, 600, 600]]), "outside"),
        (dict(questions="Hi", boxes=[[0, 0, 5, 5]] * 101), "at most 100"),
        (dict(questions="Hi", granularity="medium"), "granularity"),
        (dict(questions="Hi", max_boxes=101), "max_boxes"),
        (dict(questions=["a", "b"]), "1 images but 2 questions"),
        (dict(questions="   "), "empty"),
    ],
)
def test_bad_input_has_clear_errors(pipe, images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(images[0], **kwargs, **GEN)


def test_corrupt_image(pipe, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageLoadError):
        pipe(str(bad), "What is this?", **GEN)


def test_one_upn_pass_per_distinct_image(parts, images):
    """Questions about one loaded image (the same object, as evaluation passes it) share one UPN pass, and
    get the proposals they would get alone."""
    upn, model, processor = parts
    seen = []

    class CountingUPN:
        def __init__(self, inner):
            self.inner = inner

        def inference(self, pils, **kw):
            seen.append(len(pils))
            return self.inner.inference(pils, **kw)

        def filter(self, *a, **kw):
            return self.inner.filter(*a, **kw)

    pipe = ChatRexPipeline(CountingUPN(upn), model, processor)
    batch = [images[0], images[1], images[0], images[0]]
    got = pipe.propose(batch, min_score=0.0, max_boxes=5)
    assert seen == [2]
    alone = pipe.propose([images[0], images[1]], min_score=0.0, max_boxes=5)  # the same padded pass
    assert seen == [2, 2]
    assert got == [alone[0], alone[1], alone[0], alone[0]]
    got[0][0].append([0, 0, 1, 1])  # each query gets its own lists
    assert got[2][0] == alone[0][0]
    # answering questions: still one UPN pass over the two distinct images, and one tower pass each
    towers = []
    get_image_features = model.get_image_features

    def counting(pv, aux):
        towers.append(pv.shape[0])
        return get_image_features(pv, aux)

    model.get_image_features = counting
    try:
        results = pipe(batch, ["What is this?"] * 4, min_score=0.0, max_boxes=5, batch_size=4, **GEN)
    finally:
        del model.get_image_features
    assert seen == [2, 2, 2] and towers == [2]
    assert [r.boxes for r in results] == [alone[0][0], alone[1][0], alone[0][0], alone[0][0]]


def _masks_for(images):
    import numpy as np

    from chatrex.utils.masks import encode_rle

    out = []
    for im in images:
        m = np.zeros((im.height, im.width), dtype=bool)
        m[5:25, 8:30] = True
        m[5:15, 8:18] = False
        out.append(m)
    return out, [encode_rle(m) for m in out]


def test_user_regions_mix_boxes_and_masks_and_batch_like_single(parts, images):
    _, model, processor = parts
    no_upn = ChatRexPipeline(None, model, processor)
    arrays, rles = _masks_for(images)
    poly = [[2, 2, 20, 2, 20, 20]]
    regions = [[[1, 2, 30, 40], arrays[0]], [rles[1]], [poly, [10, 10, 20, 20], rles[2]]]
    batched = no_upn(images, ["What is <obj0>?"] * 3, regions=regions, batch_size=3, **GEN)
    assert batched[0].boxes == [[1.0, 2.0, 30.0, 40.0], [8.0, 5.0, 30.0, 25.0]]  # a mask's box: its bounding box
    assert batched[0].masks[0] is None and batched[0].masks[1] == rles[0]
    from chatrex.utils.masks import decode_mask, mask_bbox

    triangle = decode_mask(poly, 64, 64)  # rasterised by pycocotools
    assert batched[2].masks[1] is None and batched[2].boxes[0] == [float(v) for v in mask_bbox(triangle)]
    for im, reg, r in zip(images, regions, batched):
        single = no_upn(im, "What is <obj0>?", regions=reg, **GEN)[0]
        assert single.raw_text == r.raw_text and single.masks == r.masks
        assert "masks" in r.to_dict()
    # boxes only: the same answers as boxes=, and no masks in the result
    as_boxes = no_upn(images[0], "What is <obj0>?", boxes=[[1, 2, 30, 40]], **GEN)[0]
    as_regions = no_upn(images[0], "What is <obj0>?", regions=[[1, 2, 30, 40]], **GEN)[0]
    assert as_boxes.raw_text == as_regions.raw_text and as_regions.masks is None
    assert "masks" not in as_regions.to_dict()
    streamed = no_upn.stream(images[0], "What is <obj0>?", regions=regions[0], **GEN).result()
    assert streamed.raw_text == batched[0].raw_text and streamed.masks == batched[0].masks


@pytest.mark.parametrize("regions, match", [
    ([[0, 0, 5, 5], "mask"], "region 1: a region must be a box .* got str"),
    ([[0, 0, 5, 5], [[0, 0, 5, 5, 9, "x"]]], "region 1: polygon 0 must hold numbers only"),
    ([{"size": [60, 80], "counts": [4800]}], "region 0: the mask is empty"),
    ([{"size": [61, 80], "counts": [0, 4880]}], "region 0: the RLE mask is 61x80"),
    ([{"size": [60, 80], "counts": "!!"}], "alphabet"),
    ([[[1, 2, 3]]], "at least 6"),
    ("not a list", "must be a list of boxes"),
])
def test_bad_regions_have_clear_errors(parts, images, regions, match):
    _, model, processor = parts
    with pytest.raises(ValueError, match=match):
        ChatRexPipeline(None, model, processor)(images[0], "What is <obj0>?", regions=regions, **GEN)


def test_boxes_and_regions_together_are_refused(pipe, images):
    with pytest.raises(ValueError, match="not both"):
        pipe(images[0], "q", boxes=[[0, 0, 5, 5]], regions=[[0, 0, 5, 5]], **GEN)
