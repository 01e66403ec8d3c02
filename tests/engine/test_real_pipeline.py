"""The ChatRex adapters on a real (tiny, random) pipeline saved to disk: the engine loads it in the
worker, asks it for captions, groundings and region captions, and finishes every image either as a
valid record or as a rejection with a reason (random weights say nothing useful, so only the plumbing
is checked here; the adapters' parsing is checked against canned answers in test_adapters_store.py)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chatrex.data.engine import StepsSpec, run_engine
from chatrex.data.jsonl import read_records
from chatrex.interfaces.cli import build_app
from tests.engine.script_data import IMAGES, build_script

NAMES = ["test_chatrex_install.jpg", "test_chatrex_grounded_caption.jpg"]


@pytest.fixture(scope="module")
def model_dir(tiny_pipeline_dir):
    return tiny_pipeline_dir


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for n in NAMES:
        (folder / n).write_bytes((IMAGES / n).read_bytes())
    return folder


def _outcomes(out):
    records = list(read_records(out / "records.jsonl"))  # validates every record
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    return records, rejected


@pytest.mark.slow
def test_all_model_stages_from_a_saved_pipeline(model_dir, images, tmp_path):
    spec = StepsSpec("chatrex.interfaces.engine_steps:build_chatrex_steps",
                     {"model_dir": str(model_dir), "max_new_tokens": 6, "min_score": 0.0})
    summary = run_engine(images, tmp_path / "out", spec, progress=False)
    assert summary.status == "finished" and summary.failed == 0
    records, rejected = _outcomes(tmp_path / "out")
    assert len(records) + len(rejected) == 2
    assert all(r["reason"] for r in rejected)


@pytest.mark.slow
def test_chatrex_region_captioner_and_grounder_per_stage(model_dir, images, tmp_path):
    script = build_script(NAMES)
    scripted = lambda stage: {"factory": "chatrex.data.engine.standins:build_scripted_stage",  # noqa: E731
                              "kwargs": {"stage": stage, "script": script}}
    chatrex = lambda stage: {"factory": "chatrex.interfaces.engine_steps:build_chatrex_stage",  # noqa: E731
                             "kwargs": {"stage": stage, "model_dir": str(model_dir), "max_new_tokens": 6,
                                        "min_score": 0.0}}
    # scripted boxes, ChatRex region captions: every scripted region comes back, captions checked by the filter
    steps = {"captioner": scripted("captioner"), "grounder": scripted("grounder"), "region_captioner": chatrex("region_captioner")}
    res = CliRunner().invoke(build_app(), ["engine", "run", str(images), "--out", str(tmp_path / "a"),
                                           "--steps", json.dumps(steps), "--no-progress"])
    assert res.exit_code == 0, res.output
    records, rejected = _outcomes(tmp_path / "a")
    assert len(records) == 2 and not rejected
    for rec in records:
        want = script[str(IMAGES / rec["engine"]["path"])]
        assert sorted(r["box"] for r in rec["regions"]) == sorted(r["box"] for r in want["regions"])
        for region in rec["regions"]:
            assert ("description" in region) == ("referring" in region)
    # ChatRex grounding among its own UPN proposals: whatever it answers, the run finishes cleanly
    steps = {"captioner": scripted("captioner"), "grounder": chatrex("grounder"), "region_captioner": scripted("region_captioner")}
    summary = run_engine(images, tmp_path / "b", StepsSpec.from_dict(steps), progress=False)
    assert summary.status == "finished" and summary.failed == 0 and summary.done + summary.rejected == 2
