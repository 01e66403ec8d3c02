"""Writing splits to disk (ordered, resumable, multiprocess) and the ``chatrex world`` commands."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from chatrex.data.jsonl import read_records, resolve_image_path
from chatrex.data.world.generate import generate_split
from chatrex.data.world.scene import WorldConfig
from chatrex.interfaces.cli import build_app

TINY = WorldConfig(image_size=(96, 80))


def _lines(path):
    return path.read_text().splitlines()


def test_generate_split_writes_images_and_valid_records(tmp_path):
    summary = generate_split(tmp_path, 3, "val", language=False, image_format="png", shard_size=2,
                             config=TINY, progress=False)
    assert summary["written"] == 3 and summary["language"] is False
    records = list(read_records(tmp_path / "val.jsonl", check_images=True))
    assert [r["id"] for r in records] == ["world-val-0000000", "world-val-0000001", "world-val-0000002"]
    assert records[2]["image"] == "images/val/0001/0000002.png"
    for r in records:
        im = Image.open(resolve_image_path(r, tmp_path / "val.jsonl"))
        assert im.size == (r["width"], r["height"]) == (96, 80)
        assert r["split"] == "val" and r["source"] == "world"
    assert "categories" in json.loads((tmp_path / "vocabulary.json").read_text())


def test_resume_continues_and_settings_must_match(tmp_path):
    generate_split(tmp_path, 2, "train", language=False, config=TINY, progress=False)
    first = _lines(tmp_path / "train.jsonl")
    # an interrupted write leaves a partial line: it is cut off and redone
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write('{"id": "world-train-00000')
    summary = generate_split(tmp_path, 4, "train", language=False, config=TINY, progress=False)
    assert summary["resumed_from"] == 2 and summary["written"] == 2
    lines = _lines(tmp_path / "train.jsonl")
    assert len(lines) == 4 and lines[:2] == first
    with pytest.raises(ValueError, match="other settings .*image_format"):
        generate_split(tmp_path, 5, "train", language=False, config=TINY, image_format="png", progress=False)
    generate_split(tmp_path, 1, "train", language=False, config=TINY, image_format="png", overwrite=True,
                   progress=False)
    assert len(_lines(tmp_path / "train.jsonl")) == 1


def test_workers_give_the_same_ordered_output(tmp_path):
    generate_split(tmp_path / "a", 4, "test", workers=1, language=False, config=TINY, progress=False)
    generate_split(tmp_path / "b", 4, "test", workers=2, language=False, config=TINY, progress=False)
    assert _lines(tmp_path / "a" / "test.jsonl") == _lines(tmp_path / "b" / "test.jsonl")
    for name in ("0000000.jpg", "0000003.jpg"):
        assert (tmp_path / "a/images/test" / name).read_bytes() == (tmp_path / "b/images/test" / name).read_bytes()


def test_language_pass_fills_texts(tmp_path):
    summary = generate_split(tmp_path, 2, "train", language=True, config=TINY, progress=False)
    assert summary["language"] is True
    for r in read_records(tmp_path / "train.jsonl"):
        assert r["captions"] and all("phrase" in reg for reg in r["regions"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        generate_split(tmp_path, 1, "dev", progress=False)
    with pytest.raises(ValueError, match="image_format"):
        generate_split(tmp_path, 1, "train", image_format="gif", progress=False)


def _output(result) -> str:
    out = result.output
    try:
        out += result.stderr
    except (ValueError, AttributeError):
        pass
    return out


def test_cli_generate_and_show(tmp_path):
    runner = CliRunner()
    app = build_app()
    out = tmp_path / "world"
    result = runner.invoke(app, ["world", "generate", "--n", "3", "--out", str(out), "--size", "96",
                                 "--no-language", "--split", "test-comp", "--format", "png"])
    assert result.exit_code == 0, _output(result)
    assert "wrote 3 scenes" in _output(result)
    assert len(_lines(out / "test-comp.jsonl")) == 3
    sheet = tmp_path / "sheet.jpg"
    result = runner.invoke(app, ["world", "show", str(out), "--split", "test-comp", "--n", "3", "--out", str(sheet),
                                 "--cell", "96"])
    assert result.exit_code == 0, _output(result)
    im = Image.open(sheet)
    assert im.width > 3 * 96 and im.height > 96


def test_cli_show_missing_split_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(build_app(), ["world", "show", str(tmp_path), "--out", str(tmp_path / "s.jpg")])
    assert result.exit_code == 1
    assert "train.jsonl does not exist" in _output(result)
