"""`chatrex train assemble` writes each part through a temporary folder (it never deletes its sources)."""

import json

from typer.testing import CliRunner

from chatrex.interfaces.cli import build_app
from chatrex.interfaces.pipeline import CHATREX_SUBDIR, PIPELINE_CONFIG, UPN_SUBDIR


def _part(path, files):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)


def test_assemble_into_the_folder_that_holds_the_sources(tmp_path):
    model = tmp_path / "model"
    _part(model / UPN_SUBDIR, {"config.json": "upn config", "model.safetensors": "upn weights"})
    _part(model / CHATREX_SUBDIR, {"delta_config.json": "chatrex config"})
    result = CliRunner().invoke(build_app(), ["train", "assemble", str(model / UPN_SUBDIR),
                                              str(model / CHATREX_SUBDIR), str(model), "--nms", "0.5"])
    assert result.exit_code == 0, result.output
    assert (model / UPN_SUBDIR / "model.safetensors").read_text() == "upn weights"
    assert (model / CHATREX_SUBDIR / "delta_config.json").read_text() == "chatrex config"
    assert json.loads((model / PIPELINE_CONFIG).read_text()) == {"nms": 0.5}
    assert sorted(p.name for p in model.iterdir()) == sorted([UPN_SUBDIR, CHATREX_SUBDIR, PIPELINE_CONFIG])


def test_assemble_replaces_an_earlier_model(tmp_path):
    _part(tmp_path / "upn", {"config.json": "new upn"})
    _part(tmp_path / "chatrex", {"delta_config.json": "new chatrex"})
    model = tmp_path / "model"
    _part(model / UPN_SUBDIR, {"config.json": "old upn", "stale.safetensors": "old"})
    result = CliRunner().invoke(build_app(), ["train", "assemble", str(tmp_path / "upn"), str(tmp_path / "chatrex"),
                                              str(model)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (model / UPN_SUBDIR).iterdir()) == ["config.json"]
    assert (model / UPN_SUBDIR / "config.json").read_text() == "new upn"
