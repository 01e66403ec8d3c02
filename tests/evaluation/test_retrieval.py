"""Retrieval scores: the runner's arithmetic on stand-in models that know the answer or not, and the command on
a tiny saved model."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from chatrex.evaluation.evaluate import evaluate
from chatrex.interfaces.cli import build_app
from chatrex.mllm.tokens import OBJ_TOKENS
from tests.evaluation.standins import write_world
from tests.mllm.conftest import build_tiny_tokenizer, make_processor


class StandInModel(nn.Module):
    """Answers every position with one token. ``teacher``: the next label (it knows the answer); ``first``:
    ``<obj0>``, whatever the question (it knows nothing of the boxes)."""

    def __init__(self, vocab: int, mode: str, obj0: int) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace()
        self.vocab, self.mode, self.obj0 = vocab, mode, obj0
        self.seen_boxes = []

    def get_image_features(self, *args):
        raise AssertionError("not used by the runner")

    def project_objects(self, *args):
        raise AssertionError("not used by the runner")

    def forward(self, input_ids, labels, boxes, logits_at_labels=False, **kwargs):
        self.seen_boxes.append(boxes[0].shape[0])
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        positions = torch.arange(input_ids.shape[1] - 1)
        chosen = labels[0, 1:].clamp(min=0) if self.mode == "teacher" else torch.full_like(positions, self.obj0)
        logits[0, positions, chosen] = 30.0
        if logits_at_labels:  # as the real model: (N, V) at the positions that predict a label
            rows, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)
            logits = logits[rows, cols]
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def processor():
    return make_processor(build_tiny_tokenizer())


def _predictor(processor, mode):
    tok = processor.tokenizer
    return SimpleNamespace(model=StandInModel(len(tok), mode, tok.convert_tokens_to_ids(OBJ_TOKENS[0])),
                           processor=processor)


def test_a_model_that_knows_the_box_scores_one_and_a_blind_one_scores_chance(processor, tmp_path):
    data = write_world(tmp_path)  # three referring expressions, three regions in each image
    teacher = evaluate("retrieval", _predictor(processor, "teacher"), data, progress=False)["metrics"]
    assert teacher["num_samples"] == 3 and teacher["boxes_per_query"] == 3
    assert teacher["index_accuracy"] == 1.0 and teacher["index_nll"] < 1e-6
    assert teacher["index_nll/uniform"] == pytest.approx(math.log(3))
    assert teacher["index_accuracy/uniform"] == pytest.approx(1 / 3)

    blind = evaluate("retrieval", _predictor(processor, "first"), data, progress=False)
    preds = blind["predictions"]
    assert [p["predicted"] for p in preds] == [0, 0, 0]
    assert blind["metrics"]["index_accuracy"] == pytest.approx(sum(p["target"] == 0 for p in preds) / 3)
    # -log p: about 0 where the target is box 0, about 30 (the logit gap) where it is another box; the box
    # order is drawn from the image path, so which case each expression falls in varies with tmp_path
    expected = sum(0.0 if p["target"] == 0 else 30.0 for p in preds) / 3
    assert blind["metrics"]["index_nll"] == pytest.approx(expected, abs=1e-3)
    assert all(p["num_boxes"] == 3 for p in preds)


def test_max_boxes_caps_the_list_and_keeps_the_target(processor, tmp_path):
    data = write_world(tmp_path)
    pred = _predictor(processor, "teacher")
    res = evaluate("retrieval", pred, data, progress=False, max_boxes=2)
    assert pred.model.seen_boxes == [2, 2, 2]
    assert res["metrics"]["index_accuracy"] == 1.0 and res["metrics"]["index_nll/uniform"] == pytest.approx(math.log(2))


def test_retrieval_needs_a_pipeline_and_records(processor, tmp_path):
    from chatrex.evaluation.datasets import EvalDataError
    from chatrex.evaluation.runners.common import PredictorError

    with pytest.raises(PredictorError, match="retrieval"):
        evaluate("retrieval", SimpleNamespace(), write_world(tmp_path), progress=False)
    refcoco = tmp_path / "refcoco.json"
    refcoco.write_text(json.dumps([{"image": "images/a.png", "box": [0, 0, 5, 5], "expressions": ["x"]}]))
    with pytest.raises(EvalDataError):
        evaluate("retrieval", _predictor(processor, "teacher"), refcoco, progress=False)


@pytest.mark.slow
def test_retrieval_command_on_a_tiny_model(tiny_pipeline_dir, tmp_path):
    data = write_world(tmp_path)
    out = tmp_path / "res" / "retrieval.json"
    res = CliRunner().invoke(build_app(), ["eval", "retrieval", "--model", str(tiny_pipeline_dir), "--data", str(data),
                                           "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())["metrics"]
    assert m["num_samples"] == 3 and 0 <= m["index_accuracy"] <= 1 and m["index_nll"] > 0
    assert m["index_nll/uniform"] == pytest.approx(math.log(3))
    assert out.with_suffix(".md").is_file()
