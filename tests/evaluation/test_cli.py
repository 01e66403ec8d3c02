"""evaluate() and the eval commands with a stand-in predictor: JSON + markdown, summary, errors."""

import json

import pytest
import typer
from typer.testing import CliRunner

from chatrex.evaluation.evaluate import TASKS, evaluate
from chatrex.evaluation.report import json_safe, metrics_markdown, scalar_metrics, summary_markdown
from chatrex.interfaces.cli import build_app
from chatrex.interfaces.commands.eval import run_eval_command
from tests.evaluation.standins import ScriptedPipeline, ScriptedUPN, write_coco, write_world


def _perfect_detector(q, given):
    if "dog; person" in q:
        return "<ground>dog</ground><objects><obj1></objects><ground>person</ground><objects><obj0></objects>", \
            [[0, 0, 20, 40], [30, 20, 50, 40]], [0.9, 0.8]
    return "<ground>person</ground><objects><obj0></objects><ground>car</ground><objects><obj1></objects>", \
        [[10, 5, 30, 35], [35, 10, 55, 30]], [0.9, 0.8]


def test_evaluate_writes_json_and_markdown(tmp_path):
    ann = write_coco(tmp_path)
    out = tmp_path / "results" / "detection.json"
    result = evaluate("detection", ScriptedPipeline(_perfect_detector), ann, out=out, batch_size=2, progress=False,
                      model_name="stand-in")
    saved = json.loads(out.read_text())
    assert saved["task"] == "detection" and saved["config"]["model"] == "stand-in"
    assert saved["metrics"]["precision"] == 1.0 and saved["metrics"]["recall"] == 1.0
    assert saved["metrics"]["mAP"] == pytest.approx(1.0)
    assert len(saved["predictions"]) == 3 and saved["predictions"][0]["detections"]
    md = out.with_suffix(".md").read_text()
    assert md.startswith("# detection") and "| precision | 1.0000 |" in md and "| mAP | 1.0000 |" in md
    assert result["files"]["markdown"].endswith("detection.md")


def test_evaluate_rejects_unknown_task_and_option(tmp_path):
    ann = write_coco(tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        evaluate("segmentation", None, ann)
    with pytest.raises(ValueError, match="does not take option"):
        evaluate("detection", None, ann, kind="brief")
    assert set(TASKS) == {"detection", "proposals", "referring", "region", "grounded-caption", "counting", "pope",
                          "object-tokens", "retrieval"}


def test_run_eval_command_and_summary_merge(tmp_path, capsys):
    world = write_world(tmp_path)
    det_out = tmp_path / "res" / "detection.json"

    def respond(q, given):
        return "<ground>car</ground><objects><obj0></objects>", [[2, 2, 30, 20]], [0.9]

    run_eval_command("detection", ScriptedPipeline(respond), world, None, det_out, None, 4, model_name="m1",
                     progress=False)
    printed = capsys.readouterr().out
    assert "precision" in printed and "detection.json" in printed
    upn = ScriptedUPN({((64, 48), "fine"): [([2, 2, 30, 20], 0.9)]})
    prop_out = tmp_path / "res" / "proposals.json"
    run_eval_command("proposals", upn, world, None, prop_out, None, 2, model_name="m1", progress=False,
                     kind="instances", granularities=["fine"])
    summary = tmp_path / "summary.md"
    res = CliRunner().invoke(build_app(), ["eval", "summary", str(det_out), str(prop_out), "--out", str(summary)])
    assert res.exit_code == 0, res.output
    text = summary.read_text()
    assert "| detection | m1 | val.jsonl | precision |" in text
    assert "| proposals | m1 | val.jsonl | fine/AR@900 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3 + 4  # header, 3 detection rows (P, R, mAP), 4 proposal rows (AR@k)


def test_run_eval_command_reports_bad_data_cleanly(tmp_path, capsys):
    bad = tmp_path / "broken.json"
    bad.write_text("[1, 2")
    with pytest.raises(typer.Exit) as exc:
        run_eval_command("detection", ScriptedPipeline(_perfect_detector), bad, None, tmp_path / "o.json", None, 1,
                         progress=False)
    assert exc.value.exit_code == 1
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(typer.Exit):
        run_eval_command("referring", ScriptedPipeline(_perfect_detector), write_coco(tmp_path), None,
                         tmp_path / "o.json", None, 1, progress=False)
    assert "referring needs" in capsys.readouterr().err


def test_cli_errors_before_loading_a_model(tmp_path):
    runner = CliRunner()
    res = runner.invoke(build_app(), ["eval", "detection", "--model", str(tmp_path), "--data", str(tmp_path / "x.json")])
    assert res.exit_code == 1 and "does not exist" in res.output
    res = runner.invoke(build_app(), ["eval", "summary", str(tmp_path / "none.json")])
    assert res.exit_code == 1 and "not found" in res.output
    not_result = tmp_path / "plain.json"
    not_result.write_text("{}")
    res = runner.invoke(build_app(), ["eval", "summary", str(not_result)])
    assert res.exit_code == 1 and "not an evaluation result" in res.output
    res = runner.invoke(build_app(), ["eval", "--help"])
    assert res.exit_code == 0 and all(t in res.output for t in TASKS)
    # an --out that cannot be written is refused before the model loads (the model folder here is empty)
    data = write_world(tmp_path / "world")
    res = runner.invoke(build_app(), ["eval", "referring", "--model", str(tmp_path), "--data", str(data),
                                      "--out", str(not_result / "referring.json")])
    assert res.exit_code == 1 and "is a file, not a folder" in " ".join(res.output.split())
    res = runner.invoke(build_app(), ["eval", "proposals", "--model", str(tmp_path), "--data", str(data),
                                      "--out", str(not_result / "proposals.json")])
    assert res.exit_code == 1 and "is a file, not a folder" in " ".join(res.output.split())


def test_report_helpers():
    import numpy as np

    assert json_safe({"a": np.float32(0.5), "b": float("nan"), "c": (1, np.int64(2))}) == {"a": 0.5, "b": None, "c": [1, 2]}
    flat = scalar_metrics({"x": 1, "skipped": {"phrase": "skipped: no phrase"}, "ious": [0.1]})
    assert flat == {"x": 1, "skipped/phrase": "skipped: no phrase"}
    md = metrics_markdown({"task": "t", "metrics": {"a": None, "b": 0.25}, "config": {"level": "instance"}})
    assert "| a | – |" in md and "| b | 0.2500 |" in md and "level: `instance`" in md
    table = summary_markdown([("r.json", {"task": "t", "metrics": {"a": 1.0, "b": 2}, "headline": ["b"]})])
    assert "| t | – | – | b | 2 | r.json |" in table and "| a |" not in table
