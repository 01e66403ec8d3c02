"""The ``chatrex engine`` command and steps specs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chatrex.data.engine import EngineSteps, StepsSpec, StepsSpecError, parse_steps_spec
from chatrex.data.jsonl import read_records
from chatrex.interfaces.cli import build_app
from tests.engine.script_data import IMAGES, build_script

NAMES = ["test_chatrex_install.jpg", "test_chatrex_grounded_caption.jpg"]


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for n in NAMES:
        (folder / n).write_bytes((IMAGES / n).read_bytes())
    return folder


def _spec_file(tmp_path, data) -> str:
    path = tmp_path / "steps.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_cli_run_and_status(tmp_path, images):
    steps = _spec_file(tmp_path, {"factory": "chatrex.data.engine.standins:build_scripted_steps",
                                  "kwargs": {"script": build_script(NAMES), "extractor": "script"}})
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(build_app(), ["engine", "run", str(images), "--out", str(out), "--steps", steps,
                                         "--no-progress", "--split", "train"])
    assert result.exit_code == 0, result.output
    assert "2 image(s) annotated" in result.output
    records = list(read_records(out / "records.jsonl"))
    assert len(records) == 2 and all(r["split"] == "train" and r["source"] == "engine" for r in records)
    again = runner.invoke(build_app(), ["engine", "run", str(images), "--out", str(out), "--steps", steps, "--no-progress"])
    assert again.exit_code == 0 and "2 already finished" in again.output
    status = runner.invoke(build_app(), ["engine", "status", str(out)])
    assert status.exit_code == 0 and "done: 2" in status.output and "runs: 2" in status.output


def test_cli_per_stage_spec_with_default_extractor_and_filter(tmp_path, images):
    script = build_script(NAMES)
    stage = lambda name: {"factory": "chatrex.data.engine.standins:build_scripted_stage",  # noqa: E731
                          "kwargs": {"stage": name, "script": script}}
    # one entry per stage; extractor (spaCy) and caption filter (rules) come from the defaults
    steps = _spec_file(tmp_path, {"captioner": stage("captioner"), "grounder": stage("grounder"),
                                  "region_captioner": stage("region_captioner")})
    assert parse_steps_spec(steps).factory == "chatrex.data.engine.spec:compose_steps"
    runner = CliRunner()
    r = runner.invoke(build_app(), ["engine", "run", str(images), "--out", str(tmp_path / "a"), "--steps", steps, "--no-progress"])
    assert r.exit_code == 0, r.output
    whole = _spec_file(tmp_path, {"factory": "chatrex.data.engine.standins:build_scripted_steps", "kwargs": {"script": script}})
    r = runner.invoke(build_app(), ["engine", "run", str(images), "--out", str(tmp_path / "b"), "--steps", whole, "--no-progress"])
    assert r.exit_code == 0, r.output
    a = list(read_records(tmp_path / "a" / "records.jsonl"))
    b = list(read_records(tmp_path / "b" / "records.jsonl"))
    assert a == b and len(a) == 2
    missing = _spec_file(tmp_path, {"captioner": stage("captioner")})
    r = runner.invoke(build_app(), ["engine", "run", str(images), "--out", str(tmp_path / "c"), "--steps", missing, "--no-progress"])
    assert r.exit_code == 1 and "needs a factory for the stage(s) ['grounder', 'region_captioner']" in r.output


def test_cli_errors_are_clear(tmp_path, images):
    runner = CliRunner()
    app = build_app()
    r = runner.invoke(app, ["engine", "run", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--steps", "a:b"])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = runner.invoke(app, ["engine", "run", str(images), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "exactly one of --steps" in r.output
    r = runner.invoke(app, ["engine", "run", str(images), "--out", str(tmp_path / "o"), "--steps", "no_such_module_xyz:make"])
    assert r.exit_code == 1 and "cannot import module 'no_such_module_xyz'" in r.output
    bad = _spec_file(tmp_path, {"factory": "chatrex.data.engine.standins:build_scripted_steps", "kwarg": {}})
    r = runner.invoke(app, ["engine", "run", str(images), "--out", str(tmp_path / "o"), "--steps", bad])
    assert r.exit_code == 1 and "unknown key(s) ['kwarg']" in r.output
    try:
        import ray.data  # noqa: F401  (Ray Serve without Ray Data still gets the message)
    except ImportError:
        steps = _spec_file(tmp_path, {"factory": "chatrex.data.engine.standins:build_scripted_steps",
                                      "kwargs": {"script": build_script(NAMES)}})
        r = runner.invoke(app, ["engine", "run", str(images), "--out", str(tmp_path / "o"), "--steps", steps,
                                "--backend", "ray"])
        assert r.exit_code == 1 and "needs Ray Data" in r.output and "--backend local" in r.output


def test_spec_parsing_and_building(tmp_path):
    assert parse_steps_spec("pkg.mod:make") == StepsSpec("pkg.mod:make")
    inline = parse_steps_spec('{"factory": "pkg.mod:make", "kwargs": {"a": 1}}')
    assert inline.kwargs == {"a": 1}
    assert StepsSpec.from_dict(inline.to_dict()) == inline
    with pytest.raises(StepsSpecError, match="package.module:callable"):
        StepsSpec("no_colon")
    with pytest.raises(StepsSpecError, match="JSON-serialisable"):
        StepsSpec("pkg.mod:make", {"x": object()})
    with pytest.raises(StepsSpecError, match="does not exist"):
        parse_steps_spec(str(tmp_path / "missing.json"))
    with pytest.raises(StepsSpecError, match="unknown stage 'painter'|per-stage entries"):
        StepsSpec.from_dict({"painter": {"factory": "a:b"}})
    with pytest.raises(StepsSpecError, match="must return chatrex.data.engine.EngineSteps"):
        StepsSpec("chatrex.data.engine.rewrite:RuleBasedCaptionFilter").build()
    with pytest.raises(StepsSpecError, match="has no attribute 'nothing'"):
        StepsSpec("chatrex.data.engine.spec:nothing").check()
    steps = StepsSpec("chatrex.data.engine.standins:build_scripted_steps",
                      {"script": build_script(NAMES[:1]), "extractor": "script"}).build()
    assert isinstance(steps, EngineSteps)
    assert steps.description["factory"].endswith("build_scripted_steps")
    with pytest.raises(TypeError, match="EngineSteps.grounder must have a .ground"):
        EngineSteps(steps.captioner, steps.extractor, object(), steps.region_captioner, steps.caption_filter)
