"""``chatrex eval`` end to end with a real (tiny, random) pipeline saved to disk: the commands load
it with ``ChatRexPipeline.from_pretrained`` / ``UPNWrapper`` and write their results."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from chatrex.interfaces.cli import build_app
from tests.evaluation.standins import write_world


@pytest.fixture(scope="module")
def model_dir(tiny_pipeline_dir):
    return tiny_pipeline_dir


@pytest.mark.slow
def test_eval_referring_and_proposals_with_saved_model(model_dir, tmp_path):
    data = write_world(tmp_path)
    runner = CliRunner()
    out = tmp_path / "res" / "referring.json"
    res = runner.invoke(build_app(), ["eval", "referring", "--model", str(model_dir), "--data", str(data),
                                      "--out", str(out), "--limit", "2", "--batch-size", "2", "--device", "cpu",
                                      "--max-new-tokens", "4", "--min-score", "0.0", "--max-boxes", "5"])
    assert res.exit_code == 0, res.output
    saved = json.loads(out.read_text())
    assert saved["metrics"]["num_samples"] == 2 and 0.0 <= saved["metrics"]["Acc@0.5"] <= 1.0
    assert all("raw_text" in p["answer"] for p in saved["predictions"])
    assert out.with_suffix(".md").is_file()
    assert saved["config"]["min_score"] == 0.0 and saved["config"]["nms"] == 0.8  # given; the model's (official)
    strict = tmp_path / "strict-model"  # a model directory whose pipeline_config.json keeps no proposal
    shutil.copytree(model_dir, strict)
    settings = json.loads((strict / "pipeline_config.json").read_text())
    (strict / "pipeline_config.json").write_text(json.dumps({**settings, "min_score": 1.0, "nms": 0.5}))
    res = runner.invoke(build_app(), ["eval", "referring", "--model", str(strict), "--data", str(data),
                                      "--out", str(out), "--limit", "2", "--batch-size", "2", "--device", "cpu",
                                      "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    saved = json.loads(out.read_text())
    assert (saved["config"]["min_score"], saved["config"]["nms"]) == (1.0, 0.5)
    assert saved["metrics"]["boxes_per_query"] == 0
    gt = tmp_path / "res" / "referring-gt.json"
    res = runner.invoke(build_app(), ["eval", "referring", "--model", str(model_dir), "--data", str(data),
                                      "--out", str(gt), "--batch-size", "2", "--device", "cpu",
                                      "--max-new-tokens", "4", "--boxes", "gt"])
    assert res.exit_code == 0, res.output
    saved = json.loads(gt.read_text())
    assert saved["config"]["boxes"] == "gt" and saved["metrics"]["boxes_per_query"] == 3
    assert saved["metrics"]["chance@0.5"] == pytest.approx(1 / 3)

    prop = tmp_path / "res" / "proposals.json"
    res = runner.invoke(build_app(), ["eval", "proposals", "--model", str(model_dir), "--data", str(data),
                                      "--out", str(prop), "--device", "cpu", "-g", "coarse"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(prop.read_text())["metrics"]
    assert metrics["num_ground_truth"] == 6
    assert set(metrics) >= {"coarse/AR@10", "coarse/R50@900"} and "fine/AR@10" not in metrics
    assert 0.0 <= metrics["coarse/AR@900"] <= 1.0
    filtered = tmp_path / "res" / "proposals-filtered.json"
    res = runner.invoke(build_app(), ["eval", "proposals", "--model", str(model_dir), "--data", str(data),
                                      "--out", str(filtered), "--device", "cpu", "-g", "coarse", "--min-score", "1.0",
                                      "--nms", "0.8"])
    assert res.exit_code == 0, res.output
    saved = json.loads(filtered.read_text())
    assert saved["config"]["min_score"] == 1.0 and saved["config"]["nms"] == 0.8
    assert all(p["coarse"]["num_proposals"] == 0 for p in saved["predictions"])  # nothing of a random UPN scores 1
    res = runner.invoke(build_app(), ["eval", "proposals", "--model", str(model_dir), "--data", str(data),
                                      "--out", str(filtered), "--device", "cpu", "-g", "coarse", "--nms", "0"])
    assert res.exit_code == 1 and "nms must be an IoU" in res.output and "Traceback" not in res.output


def test_eval_with_a_missing_model_is_a_clear_error(tmp_path):
    data = write_world(tmp_path)
    res = CliRunner().invoke(build_app(), ["eval", "counting", "--model", str(tmp_path / "none"), "--data", str(data),
                                           "--device", "cpu"])
    assert res.exit_code == 1 and "could not load the ChatRex model" in res.output
