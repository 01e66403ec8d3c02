"""ChatRex / UPN adapters (against fake callables) and the crash-safe store."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from chatrex.data.engine import EngineStoreError, Phrase, repair_jsonl
from chatrex.data.engine.adapters import (
    ChatRexCaptioner,
    ChatRexGrounder,
    ChatRexRegionCaptioner,
    UPNProposer,
    answer_parts,
    pipeline_asker,
)
from chatrex.data.engine.collect import ImageFilterConfig, reject_reason
from chatrex.grounding.parser import parse_grounded

IMAGE = Image.new("RGB", (100, 80), (30, 60, 90))
CAR = Phrase("red car", 2, 9, "car", "car")
TREE = Phrase("tall tree", 20, 29, "tree", "tree")


class FakeAsk:
    """Records the questions and answers with canned raw strings."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, image, question, boxes=None):
        self.calls.append((question, boxes))
        return self.answers.pop(0)


class FakeUPN:
    def __init__(self):
        self.prompts = []

    def inference(self, image, prompt_type):
        self.prompts.append(prompt_type)
        return {"original_xyxy_boxes": np.zeros((1, 3, 4), np.float32), "scores": np.zeros((1, 3), np.float32)}

    @staticmethod
    def filter(result, min_score=0.3, nms_value=0.8):
        return {"original_xyxy_boxes": [[[0, 0, 10, 10], [50, 40, 90, 78], [5, 5, 40, 70]]], "scores": [[0.5, 0.9, 0.7]]}


def test_captioner_strips_groundings_and_keeps_one_sentence():
    ask = FakeAsk("A <ground>red car</ground><objects><obj0></objects> is parked. It is sunny.")
    assert ChatRexCaptioner(ask).caption(IMAGE) == "A red car is parked."
    assert "briefly" in ask.calls[0][0].lower() or "brief" in ask.calls[0][0].lower()


def test_grounder_with_upn_proposals_maps_indices_to_boxes():
    upn = FakeUPN()
    proposer = UPNProposer(upn)
    # proposals come back sorted by score: [50,40,90,78] (0.9), [5,5,40,70] (0.7), [0,0,10,10] (0.5)
    ask = FakeAsk("<ground>red car</ground><objects><obj0></objects>\n<ground>tall tree</ground><objects><obj1><obj7></objects>")
    out = ChatRexGrounder(ask, proposer).ground(IMAGE, [CAR, TREE])
    assert out == [(CAR, [50.0, 40.0, 90.0, 78.0], 0.9), (TREE, [5.0, 5.0, 40.0, 70.0], 0.7)]  # obj7 is out of range
    question, boxes = ask.calls[0]
    assert "red car; tall tree" in question and len(boxes) == 3
    assert upn.prompts == ["coarse_grained_prompt"]


def test_grounder_with_pipeline_results_uses_their_boxes():
    result = SimpleNamespace(answer=parse_grounded("<ground>the red car</ground><objects><obj1></objects>"),
                             boxes=[[0, 0, 5, 5], [10, 10, 60, 50]], scores=[0.4, 0.8])
    out = ChatRexGrounder(FakeAsk(result)).ground(IMAGE, [CAR])
    assert out == [(CAR, [10.0, 10.0, 60.0, 50.0], 0.8)]  # "the red car" matches "red car"
    with pytest.raises(TypeError, match="return the boxes"):
        ChatRexGrounder(FakeAsk("<ground>red car</ground><objects><obj0></objects>")).ground(IMAGE, [CAR])


def test_region_captioner_conditions_on_phrase_and_box():
    ask = FakeAsk("<ground>A red car parked by the road.</ground><objects><obj0></objects>")
    text = ChatRexRegionCaptioner(ask).caption(IMAGE, [1, 2, 30, 40], CAR)
    assert text == "A red car parked by the road."
    question, boxes = ask.calls[0]
    assert "red car" in question and "<obj0>" in question and boxes == [[1.0, 2.0, 30.0, 40.0]]
    with pytest.raises(ValueError, match="phrase"):
        ChatRexRegionCaptioner(ask, question="Describe <obj0>.")


def test_pipeline_asker_and_answer_forms():
    seen = {}

    def pipeline(images, questions, boxes=None, **kw):
        seen.update(images=images, questions=questions, boxes=boxes, kw=kw)
        return [SimpleNamespace(answer=parse_grounded("ok"), boxes=[], scores=None)]

    ask = pipeline_asker(pipeline, granularity="coarse")
    ask(IMAGE, "q?", [[0, 0, 1, 1]])
    assert seen["questions"] == "q?" and seen["boxes"] == [[0, 0, 1, 1]] and seen["kw"] == {"granularity": "coarse"}
    assert answer_parts("plain text")[0] == "plain text"
    with pytest.raises(TypeError, match="expected a string"):
        answer_parts(42)
    with pytest.raises(TypeError, match=r"\.inference"):
        UPNProposer(object())


def test_image_filter_reasons():
    cfg = ImageFilterConfig()
    assert reject_reason(Image.new("RGB", (50, 500)), cfg).startswith("too small")
    assert reject_reason(Image.new("RGB", (200, 200), (5, 5, 5)), cfg).startswith("near-empty")
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    assert reject_reason(noisy, cfg) is None
    # mostly one colour with a small speck: near-empty by the dominant-level rule
    arr = np.full((200, 200, 3), 200, np.uint8)
    arr[:2, :2] = 0
    assert reject_reason(Image.fromarray(arr), ImageFilterConfig(flat_std=0.0)).startswith("near-empty")


def test_repair_jsonl(tmp_path):
    path = tmp_path / "x.jsonl"
    good = [json.dumps({"id": i}) for i in range(3)]
    path.write_text("\n".join(good) + "\n")
    assert repair_jsonl(path) is None
    path.write_text("\n".join(good) + "\n" + '{"id": 3, "reg')
    assert "partial last line" in repair_jsonl(path)
    assert path.read_text() == "\n".join(good) + "\n"
    path.write_text("\n".join(good))  # complete, no newline
    assert "lacked its newline" in repair_jsonl(path)
    assert path.read_text() == "\n".join(good) + "\n"
    path.write_bytes(("\n".join(good) + "\n").encode() + b"\x00\x00\x00\n")  # zero-filled last line
    assert "unreadable last line" in repair_jsonl(path)
    assert path.read_text() == "\n".join(good) + "\n"
    path.write_text(good[0] + "\n{broken\n" + good[1] + "\n")
    with pytest.raises(EngineStoreError, match=r"x.jsonl:2"):
        repair_jsonl(path)


def test_repair_reads_back_past_a_long_last_line(tmp_path):
    """The repair reads the end of the file backwards in growing blocks: a cut last line longer than the
    first block is still dropped whole, and only it."""
    path = tmp_path / "x.jsonl"
    good = [json.dumps({"id": i, "text": "x" * 100_000}) for i in range(3)]
    path.write_text("\n".join(good) + "\n" + good[0][:90_000])
    seen = []
    assert "partial last line of 90000 bytes" in repair_jsonl(path, seen.append)
    assert path.read_text() == "\n".join(good) + "\n" and [d["id"] for d in seen] == [0, 1, 2]
    path.write_bytes(("\n".join(good) + "\n").encode() + b"\x00" * 200_000 + b"\n")
    assert "unreadable last line" in repair_jsonl(path)
    assert path.read_text() == "\n".join(good) + "\n"


def test_resume_keeps_the_keys_not_the_records(tmp_path):
    """Opening an output folder of 5,000 records (7 MB) streams them: what stays is the set of finished
    keys, and no copy of the file or of its records is held."""
    import hashlib
    import tracemalloc

    from chatrex.data.engine.store import RECORDS_FILE, EngineStore

    regions = [{"id": k, "box": [1, 2, 30, 40], "category": "thing", "phrase": "a thing " * 10} for k in range(8)]
    with open(tmp_path / RECORDS_FILE, "w") as f:
        for i in range(5_000):
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            f.write(json.dumps({"id": f"img{i}", "image": f"images/{i}.jpg", "regions": regions,
                                "engine": {"path": f"images/{i}.jpg", "sha256": sha}}) + "\n")
    assert (tmp_path / RECORDS_FILE).stat().st_size > 6_000_000
    store = EngineStore(tmp_path)
    tracemalloc.start()
    try:
        done = store.open()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        store.close("finished")
    assert len(done) == 5_000 and f"images/7.jpg#{hashlib.sha256(b'7').hexdigest()}" in done
    assert peak < 2_000_000, peak
