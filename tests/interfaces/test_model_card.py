"""Model cards: reading model_card.json / README.md, the shipped model's card, and the line that
``chatrex predict`` and the pipeline show."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from chatrex.interfaces.cli import build_app
from chatrex.interfaces.model_card import ModelCard, load_model_card, model_card_line
from chatrex.interfaces.pipeline import DEFAULT_MODEL_DIR, ChatRexPipeline
from tests.mllm.conftest import random_image


def test_json_card(tmp_path):
    (tmp_path / "model_card.json").write_text(json.dumps({
        "name": "m", "summary": "  Knows   only\nsquares. ", "trained_on": "squares", "limitations": "no circles"}))
    card = load_model_card(tmp_path)
    assert card == ModelCard(name="m", summary="Knows only squares.", trained_on="squares",
                             limitations=("no circles",), source=str(tmp_path / "model_card.json"))
    assert card.to_dict()["limitations"] == ["no circles"]


def test_readme_card_takes_the_first_paragraph(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# Title\n\n![pic](a.png)\n\nFirst line\nof the summary.\n\nMore.\n")
    card = load_model_card(tmp_path)
    assert card.summary == "First line of the summary." and card.name == tmp_path.name
    assert load_model_card(tmp_path / "nothing") is None


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"summary": "x", "colour": "red"}', "unknown keys"),
    ('{"name": "x"}', "summary"),
    ('{"summary": "x", "limitations": [1]}', "limitations"),
])
def test_bad_json_card_is_named(tmp_path, content, message):
    (tmp_path / "model_card.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_model_card(tmp_path)


def test_shipped_model_card_says_it_knows_only_the_procedural_world():
    card = load_model_card(DEFAULT_MODEL_DIR)
    assert card is not None and card.name == "chatrex-small"
    assert "only the procedural world" in card.summary and "real photos" in card.summary
    assert (DEFAULT_MODEL_DIR / "README.md").read_text().count(card.summary.split(" (")[0]) == 1
    assert card.trained_on and card.intended_use and card.limitations


def test_pipeline_from_pretrained_carries_the_card(tiny_pipeline_dir, tmp_path):
    plain = ChatRexPipeline.from_pretrained(tiny_pipeline_dir)
    assert plain.model_card is None and model_card_line(plain) is None
    carded = tmp_path / "carded"
    shutil.copytree(tiny_pipeline_dir, carded)
    (carded / "model_card.json").write_text(json.dumps({"summary": "A random model for tests."}))
    pipe = ChatRexPipeline.from_pretrained(carded)
    assert model_card_line(pipe) == "A random model for tests." and pipe.model_card.name == "carded"


def test_predict_shows_the_card_line(tiny_pipeline_dir, tmp_path):
    carded = tmp_path / "carded"
    shutil.copytree(tiny_pipeline_dir, carded)
    line = "This model knows only the procedural world."
    (carded / "model_card.json").write_text(json.dumps({"summary": line}))
    image = tmp_path / "scene.png"
    Image.fromarray(random_image(3, 80, 60)).save(image)
    js = tmp_path / "out.json"
    res = CliRunner().invoke(build_app(), ["predict", str(image), "What is this?", "--model", str(carded),
                                           "--json", str(js), "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output
    assert f"model: {line}" in " ".join(res.output.split())
    assert json.loads(js.read_text())["model_card"] == line
