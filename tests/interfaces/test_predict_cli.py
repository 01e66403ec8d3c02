"""``chatrex predict`` on a tiny random model directory (upn/ + chatrex/ + pipeline_config.json).

The model is random, so the answer is random text: the tests check that the command runs, writes the
picture and the JSON with the documented fields, honours --max-boxes and --boxes, and fails cleanly."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from chatrex.interfaces.cli import build_app
from chatrex.interfaces.pipeline import DEFAULT_MODEL_DIR
from tests.mllm.conftest import random_image

FAST = ["--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def model_dir(tiny_pipeline_dir):
    return tiny_pipeline_dir


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(random_image(3, 80, 60)).save(path)
    return path


def _run(*args):
    return CliRunner().invoke(build_app(), [str(a) for a in args])


def test_help_lists_predict():
    res = _run("--help")
    assert res.exit_code == 0 and "predict" in res.output


def test_predict_writes_picture_and_json(model_dir, image_path, tmp_path):
    out = tmp_path / "vis.jpg"
    res = _run("predict", image_path, "Find every dog in this image.", "--model", model_dir, "--out", out,
               "--min-score", "0", "--max-boxes", "3", *FAST)
    assert res.exit_code == 0, res.output
    assert Image.open(out).size == (80, 60)
    record = json.loads(out.with_suffix(".json").read_text())
    assert {"image", "width", "height", "question", "answer", "raw_text", "boxes", "scores"} <= set(record)
    assert set(record["answer"]) == {"text", "groundings", "dropped"}
    assert record["question"] == "Find every dog in this image." and record["width"] == 80
    assert 1 <= len(record["boxes"]) <= 3 and len(record["scores"]) == len(record["boxes"])
    assert all(i < len(record["boxes"]) for g in record["answer"]["groundings"] for i in g["indices"])
    assert "boxes from UPN fine-grained proposals" in res.output


def test_predict_with_user_boxes_inline_and_from_file(model_dir, image_path, tmp_path):
    js = tmp_path / "a.json"
    res = _run("predict", image_path, "What is <obj1>?", "--model", model_dir, "--json", js,
               "--boxes", "[[1, 2, 30, 40], [5, 5, 60, 50]]", *FAST)
    assert res.exit_code == 0, res.output
    record = json.loads(js.read_text())
    assert record["boxes"] == [[1, 2, 30, 40], [5, 5, 60, 50]] and record["scores"] is None
    boxes_file = tmp_path / "props.json"  # the shape `chatrex propose` writes
    boxes_file.write_text(json.dumps({"boxes": [[0, 0, 10, 10]], "scores": [0.9]}))
    res = _run("predict", image_path, "What is <obj0>?", "--model", model_dir, "--json", js, "--boxes", boxes_file, *FAST)
    assert res.exit_code == 0, res.output
    assert json.loads(js.read_text())["boxes"] == [[0, 0, 10, 10]]


def test_predict_stream(model_dir, image_path):
    res = _run("predict", image_path, "Describe the image.", "--model", model_dir, "--stream", "--granularity",
               "coarse", "--min-score", "0", "--max-boxes", "2", *FAST)
    assert res.exit_code == 0, res.output
    assert "boxes from UPN coarse-grained proposals" in res.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--boxes", "[[1, 2, 3]"], "not valid JSON"),
        (["--boxes", "[[1, 2, 3]]"], "expected [x0, y0, x1, y1]"),
        (["--boxes", "[[1, 2, 30, 40]]", "--json", "{tmp}/x.json"], None),
        (["--boxes", "nope.json"], "neither inline JSON nor an existing JSON file"),
        (["--out", "{tmp}/vis.xyz"], "cannot write a picture"),
        (["--max-boxes", "0"], "--max-boxes"),
        (["--device", "cuda:7"], "could not load the model"),
    ],
)
def test_predict_bad_input(model_dir, image_path, tmp_path, extra, message):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    res = _run("predict", image_path, "What is <obj3>?", "--model", model_dir, *extra, *FAST)
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    # the <obj3> question is refused when only one box is given
    assert (message or "refers to <obj3>") in " ".join(res.output.split())


def test_predict_missing_model_and_image(tmp_path, image_path, model_dir):
    res = _run("predict", image_path, "Hi", "--model", tmp_path / "nothing")
    assert res.exit_code == 1 and "does not exist" in res.output
    res = _run("predict", tmp_path / "none.jpg", "Hi", "--model", model_dir)
    assert res.exit_code == 1 and "does not exist" in res.output
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    res = _run("predict", bad, "Hi", "--model", model_dir)
    assert res.exit_code == 1 and "bad.png" in res.output and "Traceback" not in res.output
    if not DEFAULT_MODEL_DIR.is_dir():
        res = _run("predict", image_path, "Hi")
        assert res.exit_code == 1 and "--model" in res.output


def test_answer_markup_colours_phrases_like_the_picture():
    from chatrex.grounding import parse_grounded, phrase_colors
    from chatrex.interfaces.commands.predict import answer_markup

    ans = parse_grounded("A <ground>dog</ground><objects><obj0><obj2></objects> near a <ground>cat</ground><objects></objects>.")
    text = answer_markup(ans)
    assert text.plain == "A dog[0,2] near a cat[]."
    styles = {text.plain[s.start : s.end]: str(s.style) for s in text.spans}
    r, g, b = phrase_colors(ans)["dog"]
    assert styles["dog"] == f"bold rgb({r},{g},{b})" and styles["[0,2]"] == "dim"
    assert styles["cat"] != styles["dog"]


# -- a new user's mistakes: refused before the model loads, in one line ------------------------------------
@pytest.fixture()
def no_loading(monkeypatch):
    """Loading the model fails the test: these inputs must be refused before it."""
    from chatrex.interfaces.pipeline import ChatRexPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the input was bad")

    monkeypatch.setattr(ChatRexPipeline, "from_pretrained", refuse)


def test_a_question_with_bytes_that_are_not_utf8_is_refused_up_front(model_dir, image_path, no_loading):
    # what Python makes of the byte 0xE9 (Latin-1 "é") in a UTF-8 command line
    res = _run("predict", image_path, "What is the caf\udce9 sign?", "--model", model_dir)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "not valid UTF-8 text (byte 0xe9 at character 16)" in " ".join(res.output.split())


def test_a_very_long_question_is_refused_up_front(model_dir, image_path, no_loading):
    res = _run("predict", image_path, "dog; " * 4000, "--model", model_dir)
    assert res.exit_code == 1
    assert "the question has 20,000 characters, more than the limit of 4,000" in " ".join(res.output.split())


def test_an_unwritable_out_is_refused_up_front(model_dir, image_path, tmp_path, no_loading):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = _run("predict", image_path, "Hi", "--model", model_dir, "--out", blocker / "vis.jpg")
    assert res.exit_code == 1 and f"'{blocker}' is a file, not a folder" in " ".join(res.output.split())
    res = _run("predict", image_path, "Hi", "--model", model_dir, "--json", blocker / "sub" / "a.json")
    assert res.exit_code == 1 and "cannot write the JSON" in res.output
    res = _run("predict", image_path, "Hi", "--model", model_dir, "--out", tmp_path / "no-suffix")
    assert res.exit_code == 1
    assert "neither an existing folder nor a picture file name" in " ".join(res.output.split())
    assert not list(tmp_path.glob(".*probe"))


def test_out_naming_a_folder_writes_the_picture_inside(model_dir, image_path, tmp_path):
    res = _run("predict", image_path, "Describe the image.", "--model", model_dir, "--out", tmp_path, *FAST)
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "scene-predict.png").size == (80, 60)
    assert json.loads((tmp_path / "scene-predict.json").read_text())["question"] == "Describe the image."


def test_internal_errors_keep_their_traceback_and_debug_shows_bad_input_ones(model_dir, image_path, monkeypatch):
    from chatrex.interfaces.pipeline import ChatRexPipeline

    res = _run("predict", image_path, "Hi", "--model", model_dir, "--device", "cuda:7")
    assert res.exit_code == 1 and "could not load the model" in res.output and res.exception is not None
    assert isinstance(res.exception, SystemExit)
    res = _run("--debug", "predict", image_path, "Hi", "--model", model_dir, "--device", "cuda:7")
    assert isinstance(res.exception, ValueError) and "cuda:7" in str(res.exception)

    def bug(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'config'")

    monkeypatch.setattr(ChatRexPipeline, "from_pretrained", bug)
    res = _run("predict", image_path, "Hi", "--model", model_dir)
    assert isinstance(res.exception, AttributeError)  # not turned into "could not load the model"
    assert "could not load the model" not in res.output


def test_the_shipped_tokenizer_does_not_ask_for_bpe_space_cleanup():
    """transformers warns at every decode when a BPE tokenizer's config asks for the WordPiece clean-up."""
    from transformers import AutoTokenizer

    if not DEFAULT_MODEL_DIR.is_dir():
        pytest.skip("the shipped model is not installed")
    config = json.loads((DEFAULT_MODEL_DIR / "chatrex" / "tokenizer_config.json").read_text())
    assert config["clean_up_tokenization_spaces"] is False
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR / "chatrex")
    assert tok.decode(tok("A dog , a cat .")["input_ids"]) == "A dog , a cat ."


def test_predict_with_mask_regions(model_dir, image_path, tmp_path):
    import numpy as np

    from chatrex.utils.masks import decode_mask, encode_rle

    m = np.zeros((60, 80), dtype=bool)
    m[10:40, 20:50] = True
    m[10:20, 20:30] = False
    Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    spec = tmp_path / "regions.json"  # a mask image (relative to the file), an RLE, a polygon and a box
    spec.write_text(json.dumps({"regions": [{"mask": "mask.png"}, encode_rle(m), [[5, 5, 30, 5, 30, 30]],
                                            [1, 2, 30, 40]]}))
    out = tmp_path / "vis.png"
    res = _run("predict", image_path, "What is <obj0>?", "--model", model_dir, "--regions", spec, "--out", out, *FAST)
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["boxes"][0] == record["boxes"][1] == [20.0, 10.0, 50.0, 40.0]
    assert record["masks"][3] is None and (decode_mask(record["masks"][0], 60, 80) == m).all()
    assert record["granularity"] is None and "your regions (3 masks)" in res.output
    assert Image.open(out).size == (80, 60)
    inline = _run("predict", image_path, "What is <obj0>?", "--model", model_dir,
                  "--regions", json.dumps([encode_rle(m)]), *FAST)
    assert inline.exit_code == 0, inline.output


@pytest.mark.parametrize("regions, message", [
    ('[{"size": [60, 80], "counts": [4800]}]', "--regions: region 0: the mask is empty"),
    ('[{"size": [10, 10], "counts": [0, 100]}]', "RLE mask is 10x10"),
    ('[{"mask": "missing.png"}]', "could not read the mask image"),
    ('{"boxes": []}', "without a 'regions' list"),
    ("[[[1, 2, 3, 4]]]", "at least 6"),
])
def test_predict_bad_regions(model_dir, image_path, regions, message):
    res = _run("predict", image_path, "What is this?", "--model", model_dir, "--regions", regions, *FAST)
    assert res.exit_code == 1 and message in res.output, res.output
    both = _run("predict", image_path, "q", "--model", model_dir, "--regions", "[[1, 2, 3, 4]]", "--boxes", "[[1, 2, 3, 4]]")
    assert both.exit_code == 1 and "not both" in both.output
