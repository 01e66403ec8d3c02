"""``chatrex propose`` on a tiny random UPN saved with save_pretrained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
import typer
from typer.testing import CliRunner

from chatrex.interfaces.commands.propose import register


def _app() -> typer.Typer:
    """A group app holding the propose command (as `chatrex` does once several areas register)."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """chatrex"""

    register(app)
    return app


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from chatrex.upn.checkpoint import save_pretrained
    from chatrex.upn.config import resolve_config
    from chatrex.upn.model import build_upn

    torch.manual_seed(0)
    cfg = resolve_config("upn_tiny")
    model = build_upn(cfg).eval()
    path = tmp_path_factory.mktemp("ckpt") / "upn_tiny"
    save_pretrained(model, cfg, path)
    return path


@pytest.fixture()
def image_path(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "scene.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def _run(*args):
    # a small model input keeps the tiny model's forward fast on CPU
    return CliRunner().invoke(_app(), [str(a) for a in args] + ["--resize", "64", "--max-size", "96"])


def test_propose_writes_picture_and_json(tiny_dir, image_path, tmp_path):
    out = tmp_path / "vis" / "boxes.jpg"
    res = _run("propose", image_path, "--checkpoint", tiny_dir, "--granularity", "coarse",
               "--min-score", "0.0", "--nms", "0.5", "--out", out)
    assert res.exit_code == 0, res.output
    assert out.is_file()
    with Image.open(out) as im:
        assert im.size == (64, 48)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["granularity"] == "coarse" and record["width"] == 64 and record["height"] == 48
    assert len(record["boxes"]) == len(record["scores"]) >= 1
    assert all(len(b) == 4 and all(isinstance(v, int) for v in b) for b in record["boxes"])
    assert record["scores"] == sorted(record["scores"], reverse=True)


def test_propose_json_path_and_nothing_kept(tiny_dir, image_path, tmp_path):
    out, js = tmp_path / "v.png", tmp_path / "other" / "kept.json"
    res = _run("propose", image_path, "-c", tiny_dir, "-g", "fine", "--min-score", "1.0",
               "--out", out, "--json", js)
    assert res.exit_code == 0, res.output
    assert out.is_file() and js.is_file()
    record = json.loads(js.read_text())
    assert record["boxes"] == [] and record["scores"] == []  # sigmoid < 1: nothing reaches 1.0


def test_propose_errors(tiny_dir, image_path, tmp_path):
    out = tmp_path / "v.jpg"
    res = _run("propose", tmp_path / "missing.jpg", "-c", tiny_dir, "--out", out)
    assert res.exit_code != 0 and "does not exist" in res.output
    res = _run("propose", image_path, "-c", tmp_path / "missing_ckpt", "--out", out)
    assert res.exit_code != 0 and "does not exist" in res.output
    bad_ckpt = tmp_path / "bad.pth"
    bad_ckpt.write_bytes(b"not a checkpoint")
    res = _run("propose", image_path, "-c", bad_ckpt, "--config", "upn_tiny", "--out", out)
    assert res.exit_code != 0 and "could not load the UPN checkpoint" in res.output
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"garbage")
    res = _run("propose", corrupt, "-c", tiny_dir, "--out", out)
    assert res.exit_code != 0 and "could not be decoded" in res.output
    res = _run("propose", image_path, "-c", tiny_dir, "--out", tmp_path / "v.notanimage")
    assert res.exit_code != 0 and "extension" in res.output
    res = _run("propose", image_path, "-c", tiny_dir, "-g", "medium", "--out", out)
    assert res.exit_code != 0
    assert not out.exists()
