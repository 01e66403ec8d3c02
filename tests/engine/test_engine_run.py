"""End-to-end engine runs on the five shared photos with scripted stand-in models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chatrex.data.engine import (
    EngineConfig,
    EngineStoreError,
    ImageProcessingError,
    RuleBasedCaptionFilter,
    StepsSpec,
    run_engine,
)
from chatrex.data.engine.steps import Phrase
from chatrex.data.jsonl import read_records, resolve_image_path
from chatrex.data.schema import validate_record
from tests.engine.script_data import IMAGES, SCRIPT_FRACTIONS, build_script

FACTORY = "chatrex.data.engine.standins:build_scripted_steps"


@pytest.fixture(scope="module")
def script() -> dict:
    return build_script()


def _spec(script: dict, **kwargs) -> StepsSpec:
    return StepsSpec(FACTORY, {"script": script, **kwargs})


def _records(out: Path) -> list[dict]:
    return list(read_records(out / "records.jsonl"))


def _by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, script) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("engine") / "full"
    summary = run_engine(IMAGES, out, _spec(script), progress=False)
    assert summary.status == "finished"
    assert (summary.total, summary.done, summary.rejected, summary.failed) == (5, 5, 0, 0)
    return out, _records(out)


def test_every_stage_lands_in_valid_records(full_run, script):
    out, records = full_run
    assert len(records) == 5
    by_path = {r["engine"]["path"]: r for r in records}
    assert set(by_path) == set(SCRIPT_FRACTIONS)
    rewriter = RuleBasedCaptionFilter()
    for name, (caption, _) in SCRIPT_FRACTIONS.items():
        rec = by_path[name]
        assert validate_record(rec) == []
        assert rec["source"] == "engine"
        assert resolve_image_path(rec, out / "records.jsonl").resolve() == (IMAGES / name).resolve()
        # stage 2: the caption
        (cap,) = rec["captions"]
        assert cap["kind"] == "brief" and cap["text"] == caption
        # stage 3 + 4: groundings with exact spans, each pointing at regions of that phrase
        for g in cap["groundings"]:
            s, e = g["span"]
            assert cap["text"][s:e] == g["phrase"]
            for rid in g["regions"]:
                assert rec["regions"][rid]["phrase"] == g["phrase"]
        grounded_ids = sorted(i for g in cap["groundings"] for i in g["regions"])
        assert grounded_ids == list(range(len(rec["regions"])))
        # every scripted box comes back (inside the image, so no clipping here), with its score
        entry = script[str(IMAGES / name)]
        want = sorted((tuple(r["box"]), r["score"], r["description"]) for r in entry["regions"])
        got = sorted((tuple(r["box"]), r["score"]) for r in rec["regions"])
        assert got == [(b, s) for b, s, _ in want]
        for region in rec["regions"]:
            assert region["level"] == "instance"
            desc = next(d for b, _, d in want if list(b) == region["box"])
            phrase = next(p for p in _phrases_of(cap) if p.text == region["phrase"])
            expected = rewriter.rewrite(phrase, desc)
            # stage 5 + 6: description kept exactly when the rewriter accepts it
            if expected is None:
                assert "description" not in region and "referring" not in region
            else:
                assert region["description"] == desc
                assert region["referring"] == expected
                assert 5 <= len(expected.split()) <= 10


def _phrases_of(caption: dict) -> list[Phrase]:
    # head and category are not compared above; only text/span matter for the rewriter's head check
    out = []
    for g in caption["groundings"]:
        text = g["phrase"]
        out.append(Phrase(text, g["span"][0], g["span"][1], text.split()[-1], text.split()[-1].lower()))
    return out


def test_known_values_of_one_image(full_run):
    _, records = full_run
    rec = next(r for r in records if r["engine"]["path"] == "test_chatrex_grounded_caption.jpg")
    regions = {r["phrase"]: r for r in rec["regions"]}
    assert set(regions) == {"plaid couch", "small television", "wooden stand", "red armchair"}
    assert regions["plaid couch"]["category"] == "couch"
    assert regions["small television"]["category"] == "television"
    assert regions["red armchair"]["referring"] == "the armchair that is red"
    assert regions["small television"]["referring"] == "the small old television sitting on a wooden cabinet"
    assert regions["plaid couch"]["box"] == [260, 198.8, 500, 375]
    spans = {g["phrase"]: g["span"] for g in rec["captions"][0]["groundings"]}
    assert spans == {"plaid couch": [2, 13], "small television": [22, 38], "wooden stand": [44, 56], "red armchair": [66, 78]}
    # the hedging caption of the bed is rejected by the filter; the region stays without texts
    dogs = next(r for r in records if r["engine"]["path"] == "test_chatrex_install.jpg")
    bed = next(r for r in dogs["regions"] if r["phrase"] == "bed")
    assert "description" not in bed and bed["category"] == "bed"
    assert [r["category"] for r in dogs["regions"]].count("dog") == 2
    # "sand" is extracted but the script has no box for it: no grounding, no region
    pigeons = next(r for r in records if r["engine"]["path"] == "test_chatrex_detection.jpg")
    assert "sand" not in {g["phrase"] for g in pigeons["captions"][0]["groundings"]}


def test_state_file_describes_the_run(full_run):
    out, _ = full_run
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "finished"
    assert state["counts"] == {"done": 5, "rejected": 0, "failed": 0}
    assert state["steps"]["factory"] == FACTORY
    assert state["total"] == 5


@pytest.mark.parametrize("kind, exc", [("error", ImageProcessingError), ("interrupt", KeyboardInterrupt)])
def test_resume_after_a_crash_gives_the_uninterrupted_output(tmp_path, full_run, script, kind, exc):
    out = tmp_path / "out"
    with pytest.raises(exc):
        run_engine(IMAGES, out, _spec(script, crash_after=2, crash_kind=kind), progress=False)
    first = _records(out)
    assert len(first) == 2  # the two finished images are on disk
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == ("interrupted" if kind == "interrupt" else "failed")
    summary = run_engine(IMAGES, out, _spec(script), progress=False)
    assert (summary.skipped, summary.done) == (2, 3)
    resumed = _records(out)
    assert len(resumed) == 5 and len({r["id"] for r in resumed}) == 5
    assert resumed[:2] == first  # nothing rewritten
    _, full = full_run
    strip = lambda rs: {i: {k: v for k, v in r.items() if k != "image"} for i, r in _by_id(rs).items()}  # noqa: E731
    assert strip(resumed) == strip(full)
    # a third run has nothing left to do
    again = run_engine(IMAGES, out, _spec(script), progress=False)
    assert (again.skipped, again.done) == (5, 0)
    assert len(_records(out)) == 5


def test_truncated_last_line_is_dropped_and_redone(tmp_path, script):
    names = ["test_chatrex_install.jpg", "test_chatrex_grounded_caption.jpg"]
    images = tmp_path / "images"
    images.mkdir()
    for n in names:
        (images / n).write_bytes((IMAGES / n).read_bytes())
    spec = _spec(build_script(names))
    out = tmp_path / "out"
    run_engine(images, out, spec, progress=False)
    path = out / "records.jsonl"
    complete = path.read_bytes()
    lines = complete.splitlines(keepends=True)
    assert len(lines) == 2
    # a crash in the middle of writing the second line
    path.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])
    summary = run_engine(images, out, spec, progress=False)
    assert summary.done == 1 and summary.skipped == 1
    assert any("partial last line" in r for r in summary.repairs)
    assert path.read_bytes() == complete
    # a complete last line that only lost its newline is kept, not redone
    path.write_bytes(complete.rstrip(b"\n"))
    summary = run_engine(images, out, spec, progress=False)
    assert summary.done == 0 and summary.skipped == 2
    assert path.read_bytes() == complete
    # damage in the middle of the file is not guessed at
    path.write_bytes(b"{not json\n" + complete)
    with pytest.raises(EngineStoreError, match="records.jsonl:1"):
        run_engine(images, out, spec, progress=False)


def test_bad_images_are_rejected_once_with_reasons(tmp_path, script):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    (images / "good.jpg").write_bytes((IMAGES / "test_chatrex_install.jpg").read_bytes())
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(images / "tiny.png")
    Image.new("RGB", (300, 200), (128, 128, 128)).save(images / "flat.png")
    spec = _spec(build_script(["test_chatrex_install.jpg"]))  # stand-ins know images by their pixels
    out = tmp_path / "out"
    summary = run_engine(images, out, spec, progress=False)
    assert (summary.done, summary.rejected) == (1, 3)
    reasons = {json.loads(line)["path"]: json.loads(line)["reason"] for line in (out / "rejected.jsonl").read_text().splitlines()}
    assert reasons["corrupt.jpg"].startswith("unreadable")
    assert reasons["tiny.png"].startswith("too small")
    assert reasons["flat.png"].startswith("near-empty")
    again = run_engine(images, out, spec, progress=False)
    assert (again.skipped, again.done, again.rejected) == (4, 0, 0)


def test_failures_are_logged_and_retried_with_on_error_log(tmp_path, script):
    out = tmp_path / "out"
    config = EngineConfig(on_error="log")
    summary = run_engine(IMAGES, out, _spec(script, crash_after=3), config=config, progress=False)
    assert (summary.done, summary.failed, summary.status) == (3, 2, "finished")
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 2 and all("simulated crash" in e["error"] and "stage 'captioner'" in e["error"] for e in errors)
    summary = run_engine(IMAGES, out, _spec(script), config=config, progress=False)
    assert (summary.skipped, summary.done, summary.failed) == (3, 2, 0)


def test_multiprocess_run_equals_single_process(tmp_path):
    # three small photos and the script's own phrase list (no spaCy load per spawned worker) keep it quick
    names = ["test_chatrex_install.jpg", "test_chatrex_grounded_caption.jpg", "test_chatrex_detection.jpg"]
    spec = _spec(build_script(names), extractor="script")
    images = tmp_path / "images"
    images.mkdir()
    for n in names:
        (images / n).write_bytes((IMAGES / n).read_bytes())
    single = run_engine(images, tmp_path / "one", spec, workers=1, progress=False)
    multi = run_engine(images, tmp_path / "two", spec, workers=2, start_method="spawn", progress=False)
    assert single.done == multi.done == 3
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert _by_id(one) == _by_id(two)  # same depth of output folders: even the image paths agree


def test_steps_are_built_once_per_worker(tmp_path):
    names = ["test_chatrex_install.jpg", "test_chatrex_grounded_caption.jpg", "test_chatrex_detection.jpg"]
    images = tmp_path / "images"
    images.mkdir()
    for n in names:
        (images / n).write_bytes((IMAGES / n).read_bytes())
    log = tmp_path / "builds.txt"
    spec = StepsSpec("tests.engine.factories:counting_steps",
                     {"script": build_script(names), "log_path": str(log), "extractor": "script"})
    summary = run_engine(images, tmp_path / "out", spec, workers=2, progress=False)
    assert summary.done == 3
    pids = log.read_text().split()
    assert 1 <= len(pids) <= 2 and len(set(pids)) == len(pids)  # one build per worker process, not per image
    assert str(os.getpid()) not in pids  # never in the parent
    log.unlink()
    run_engine(images, tmp_path / "inline", spec, workers=1, progress=False)
    assert log.read_text().split() == [str(os.getpid())]


def test_ray_backend_without_ray_says_so(tmp_path, script):
    pytest.importorskip("chatrex")  # always there; Ray Data is not (Ray Serve may be: the serve extra)
    try:
        import ray.data  # noqa: F401

        pytest.skip("Ray Data is installed here")
    except ImportError:
        pass
    from chatrex.data.engine import EngineBackendError

    with pytest.raises(EngineBackendError, match="pip install 'ray\\[data\\]'"):
        run_engine(IMAGES, tmp_path / "out", _spec(script), backend="ray", progress=False)
    assert not (tmp_path / "out").exists()  # refused before touching the output
