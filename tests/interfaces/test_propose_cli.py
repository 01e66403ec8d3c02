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


def test_propose_defaults_to_the_shipped_upn(image_path, tmp_path):
    from chatrex.interfaces.pipeline import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "upn").is_dir():
        pytest.skip("the shipped model is not installed")
    too_small = _run("propose", image_path, "--out", tmp_path)  # 64 px: fewer encoder tokens than queries
    assert too_small.exit_code == 1 and "fewer than the 300 queries" in too_small.output
    size = ["--resize", "160", "--max-size", "224"]
    # --out a folder (here the image's own): the picture is named after the image, which stays as it was
    before = image_path.read_bytes()
    res = CliRunner().invoke(_app(), ["propose", str(image_path), "--out", str(tmp_path), *size])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "scene-propose.json").read_text())
    assert (tmp_path / "scene-propose.png").is_file() and record["width"] == 64
    assert image_path.read_bytes() == before
    from chatrex.upn.wrapper import UPNWrapper

    upn = UPNWrapper(DEFAULT_MODEL_DIR / "upn", resize=160, max_size=224)
    kept = upn.filter(upn.inference(Image.open(image_path).convert("RGB"), prompt_type="fine"),
                      min_score=0.3, nms_value=0.8)
    assert record["boxes"] == kept["original_xyxy_boxes"][0]


def test_propose_checks_outputs_before_loading_and_traces_internal_errors(tiny_dir, image_path, tmp_path, monkeypatch):
    from chatrex.upn import wrapper

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    loads = []
    monkeypatch.setattr(wrapper.UPNWrapper, "__init__", lambda self, *a, **k: loads.append(a) or None)
    res = _run("propose", image_path, "-c", tiny_dir, "--out", blocker / "v.jpg")
    assert res.exit_code == 1 and "is a file, not a folder" in " ".join(res.output.split()) and not loads
    res = _run("propose", image_path, "-c", tiny_dir, "--out", image_path)
    assert res.exit_code == 1 and "is the input image" in " ".join(res.output.split()) and not loads

    def bug(self, *args, **kwargs):
        raise KeyError("an internal bug")

    monkeypatch.setattr(wrapper.UPNWrapper, "__init__", bug)
    res = _run("propose", image_path, "-c", tiny_dir, "--out", tmp_path / "v.jpg")
    assert isinstance(res.exception, KeyError) and "could not load" not in res.output
