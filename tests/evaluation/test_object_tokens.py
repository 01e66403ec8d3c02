"""Object-token diagnostics: the metrics on known vectors, and the runner / command on a tiny saved model."""

import json

import pytest
import torch
from typer.testing import CliRunner

from chatrex.evaluation.object_tokens import linear_probe_accuracy, majority_accuracy, mean_pairwise_cosine
from chatrex.interfaces.cli import build_app
from tests.evaluation.standins import write_world


def test_cosine_is_one_for_a_repeated_vector_and_zero_for_orthogonal_ones():
    same = torch.tensor([[1.0, 2.0, 3.0]] * 4) * torch.tensor([[1.0], [2.0], [0.5], [3.0]])
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(3)) == pytest.approx(0.0)


def test_cosine_groups_are_weighted_equally_and_singletons_skipped():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])  # group 0: all alike (1.0); group 1: orthogonal (0.0); 2: alone
    assert mean_pairwise_cosine(x, groups) == pytest.approx(0.5)
    assert mean_pairwise_cosine(torch.ones(3, 2), torch.tensor([0, 1, 2])) is None


def test_bad_features_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        mean_pairwise_cosine(torch.tensor([[1.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        mean_pairwise_cosine(torch.ones(3))
    with pytest.raises(ValueError, match="groups"):
        mean_pairwise_cosine(torch.ones(3, 2), torch.tensor([0, 1]))


def test_probe_reads_separable_classes_and_falls_to_majority_on_constant_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    centres = torch.randn(3, 8, generator=g) * 4
    x = centres[labels] + 0.1 * torch.randn(60, 8, generator=g)
    train = torch.arange(60) < 40
    assert linear_probe_accuracy(x, labels, train) == 1.0
    skewed = torch.tensor([0] * 30 + [1] * 10 + [0] * 12 + [2] * 8)
    constant = torch.ones(60, 8)
    assert majority_accuracy(skewed, train) == pytest.approx(0.6)
    assert linear_probe_accuracy(constant, skewed, train) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="held-out"):
        linear_probe_accuracy(x, labels, torch.ones(60, dtype=torch.bool))


def test_roi_features_without_the_box_embedding():
    from torchvision.ops import box_convert

    from chatrex.mllm.object_encoder import box_sine_embedding, encode_objects, xyxy_box_embedding

    g = torch.Generator().manual_seed(1)
    levels = [torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 8, 8, 8, generator=g)]
    boxes = [torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])]
    full = encode_objects(levels, boxes, 64)
    roi = encode_objects(levels, boxes, 64, box_embedding=False)
    expected = box_sine_embedding(box_convert(boxes[0], "xyxy", "cxcywh"), 3)
    torch.testing.assert_close(full - roi, expected)
    torch.testing.assert_close(xyxy_box_embedding(boxes[0], 3), expected)


@pytest.mark.slow
def test_runner_on_a_tiny_model_sees_a_collapsed_projector(tiny_pipeline_dir, tmp_path):
    from chatrex.evaluation.evaluate import evaluate
    from chatrex.interfaces.pipeline import ChatRexPipeline

    data = write_world(tmp_path)
    pipe = ChatRexPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")
    result = evaluate("object-tokens", pipe, data, progress=False)
    m = result["metrics"]
    assert (m["num_images"], m["num_boxes"], m["num_categories"]) == (2, 5, 3)  # instances: car, tree / car, car, person
    assert [p["num_boxes"] for p in result["predictions"]] == [2, 3]
    for key in ("cosine/roi", "cosine/pre_projector", "cosine/object_token", "cosine/image_token_between_images"):
        assert -1.0 <= m[key] <= 1.0
    assert m["cosine/object_token"] < 0.9999
    assert 0.0 <= m["probe/object_token"] <= 1.0 and m["probe/majority"] == pytest.approx(2 / 3)  # "car"

    # a projector that ignores its input gives one token for every box: cosine 1, probe at the majority rate
    last = pipe.model.mm_object_projector[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.5)
    m = evaluate("object-tokens", pipe, data, progress=False, level="all")["metrics"]
    assert m["num_boxes"] == 6 and m["cosine/object_token"] == pytest.approx(1.0)
    assert m["norm/object_token"] == pytest.approx(0.5 * last.bias.numel() ** 0.5, rel=1e-4)
    assert m["probe/object_token"] == pytest.approx(m["probe/majority"])


@pytest.mark.slow
def test_object_tokens_command_writes_results(tiny_pipeline_dir, tmp_path):
    data = write_world(tmp_path)
    out = tmp_path / "res" / "object-tokens.json"
    res = CliRunner().invoke(build_app(), ["eval", "object-tokens", "--model", str(tiny_pipeline_dir), "--data",
                                           str(data), "--out", str(out), "--device", "cpu", "--limit", "1"])
    assert res.exit_code == 0, res.output
    saved = json.loads(out.read_text())
    assert saved["task"] == "object-tokens" and saved["metrics"]["num_images"] == 1
    assert "probe/majority" not in saved["metrics"]  # one image: no held-out half
    assert out.with_suffix(".md").is_file()


def test_object_tokens_need_a_pipeline_and_labelled_data(tmp_path):
    from chatrex.evaluation.evaluate import evaluate
    from chatrex.evaluation.runners.common import PredictorError

    data = write_world(tmp_path)
    with pytest.raises(PredictorError, match="ChatRexPipeline"):
        evaluate("object-tokens", lambda images, questions: [], data, progress=False)
    res = CliRunner().invoke(build_app(), ["eval", "object-tokens", "--model", str(tmp_path), "--data",
                                           str(tmp_path / "missing.jsonl"), "--device", "cpu"])
    assert res.exit_code == 1 and "does not exist" in res.output
