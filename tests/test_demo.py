"""The web demo (chatrex.interfaces.demo) and ``chatrex demo``.

CI has no gradio (it needs pillow<13), so everything but the app itself is tested as plain functions on
a tiny random model directory; the tests that build the Gradio app skip without gradio."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from chatrex.grounding import build_prompt, parse_grounded, phrase_colors
from chatrex.interfaces.cli import build_app
from chatrex.interfaces.demo import (
    DEMO_TASKS,
    INSTALL_HINT,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    DemoInputError,
    annotation_boxes,
    error_message,
    count_boxes,
    find_task,
    make_request,
    parse_boxes_text,
    render_result,
    result_record,
    split_image_input,
    stream_answer,
    suggest_prompt,
    task_prompt,
)
from chatrex.interfaces.pipeline import ChatRexPipeline, PipelineResult
from tests.mllm.conftest import random_image

HAS_GRADIO = importlib.util.find_spec("gradio") is not None
FAST = dict(max_new_tokens=4)
DETECTION = "Detection"
REGION = "Region category (your boxes)"
QUESTION = "Question (grounded answer)"
FREE = "Free prompt (sent as written)"


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return ChatRexPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(random_image(7, 80, 60))


def _result(text: str, boxes: list) -> PipelineResult:
    return PipelineResult(parse_grounded(text, num_boxes=len(boxes)), text, boxes, None)


# ------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------
def test_menu_names_project_tasks_once():
    from chatrex.grounding import TASKS

    labels = [t.label for t in DEMO_TASKS]
    assert len(set(labels)) == len(labels)
    assert all(t.task is None or t.task in TASKS for t in DEMO_TASKS)
    assert {"detection", "referring", "caption_brief", "region_category", "conversation"} <= {t.task for t in DEMO_TASKS}
    assert find_task(DETECTION).task == "detection"
    with pytest.raises(DemoInputError, match="unknown task"):
        find_task("Segmentation")


@pytest.mark.parametrize(
    "label, text, num_boxes, expected",
    [
        (DETECTION, "fish; robot", 0, build_prompt("detection", categories=["fish", "robot"])),
        (DETECTION, " fish , robot ", 0, build_prompt("detection", categories=["fish", "robot"])),
        ("Referring", "the fish, left of the key", 0, build_prompt("referring", expression="the fish, left of the key")),
        ("Counting", "fish", 0, build_prompt("counting", categories="fish")),
        ("Grounded caption (brief)", "", 0, build_prompt("caption_brief")),
        ("Grounded caption (detailed)", "ignored", 0, build_prompt("caption_detailed")),
        (REGION, "", 2, build_prompt("region_category", regions=[0, 1])),
        ("Region caption, one sentence (your boxes)", "", 1, build_prompt("region_sentence", regions=[0])),
        (QUESTION, " What is the robot holding? ", 0, build_prompt("conversation", question="What is the robot holding?")),
        (FREE, "What is <obj0>?", 1, "What is <obj0>?"),
    ],
)
def test_prompts_come_from_the_project_templates(label, text, num_boxes, expected):
    assert task_prompt(find_task(label), text, num_boxes) == expected
    assert suggest_prompt(label, text, num_boxes) == expected


@pytest.mark.parametrize(
    "label, text, num_boxes, match",
    [
        (DETECTION, "  ", 0, "Detection: type category names"),
        (QUESTION, "", 0, "type your question"),
        (FREE, None, 0, "type the whole prompt"),
        (REGION, "", 0, "draw at least one box"),
        ("Counting", "fish; dog", 0, "counting takes one category"),
        (DETECTION, "<obj1>", 0, "ChatRex tag"),
    ],
)
def test_incomplete_task_input_is_named(label, text, num_boxes, match):
    with pytest.raises(DemoInputError, match=match):
        task_prompt(find_task(label), text, num_boxes)
    assert suggest_prompt(label, text, num_boxes) == ""  # while typing: no prompt yet, no error


# ------------------------------------------------------------------------------------------------
# boxes and images
# ------------------------------------------------------------------------------------------------
def test_parse_boxes_text_forms():
    assert parse_boxes_text(None) is None and parse_boxes_text(" \n ") is None
    assert parse_boxes_text("1,2,30,40\n\n [5 6 70.5 50]\n(0; 0; 9; 9)") == [
        [1.0, 2.0, 30.0, 40.0], [5.0, 6.0, 70.5, 50.0], [0.0, 0.0, 9.0, 9.0]
    ]
    assert parse_boxes_text("[[1, 2, 30, 40], [5, 5, 60, 50]]") == [[1, 2, 30, 40], [5, 5, 60, 50]]


@pytest.mark.parametrize(
    "text, match",
    [
        ("1,2,30,40\n1,2,3", "line 2: '1,2,3' is not four numbers"),
        ("a,b,c,d", "line 1"),
        ("1,2,3,4,5", "line 1"),
        ("[[1, 2, 3, 4]", "not valid JSON"),
    ],
)
def test_parse_boxes_text_names_the_bad_line(text, match):
    with pytest.raises(DemoInputError, match=match):
        parse_boxes_text(text)


def test_annotation_boxes(image):
    value = {"image": image, "boxes": [{"xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40, "label": "region"}],
             "orientation": 0}
    got, boxes = annotation_boxes(value)
    assert got is image and boxes == [[1.0, 2.0, 30.0, 40.0]]
    assert annotation_boxes({"image": image, "boxes": []}) == (image, None)
    assert split_image_input(value, "ignored") == (image, [[1.0, 2.0, 30.0, 40.0]])
    assert count_boxes(value) == 1 and count_boxes(image, "1,2,3,4\n5,6,7,8") == 2 and count_boxes(image, "1,2") == 0
    with pytest.raises(DemoInputError, match="annotator"):
        annotation_boxes({"image": image, "boxes": [{"x": 1}]})


def test_annotation_turned_quarter_clockwise_turns_the_image(image):
    marked = np.zeros((60, 80, 3), np.uint8)
    marked[0, 0] = 255  # top-left pixel
    turned, _ = annotation_boxes({"image": marked, "boxes": [], "orientation": 1})
    assert turned.size == (60, 80)
    assert turned.getpixel((59, 0)) == (255, 255, 255)  # a quarter turn clockwise: top-left -> top-right
    assert annotation_boxes({"image": image, "boxes": [], "orientation": 2})[0].size == (80, 60)


def test_make_request_builds_and_checks(image):
    req = make_request(image, DETECTION, "fish; robot")
    assert req.prompt == build_prompt("detection", categories=["fish", "robot"]) and req.boxes is None
    assert req.image.size == (80, 60) and req.granularity == "fine"
    assert make_request(image, DETECTION, "fish", prompt="  Find the fish.  ").prompt == "Find the fish."
    req = make_request(np.asarray(image), REGION, "", boxes=[[1, 2, 30, 40], [-5, 5, 500, 50]], granularity="coarse")
    assert req.boxes == [[1, 2, 30, 40], [0, 5, 80, 50]]  # clipped to the image
    assert req.prompt == build_prompt("region_category", regions=[0, 1])
    assert req.pipeline_kwargs() == dict(boxes=req.boxes, granularity="coarse", min_score=0.3, max_boxes=100,
                                         max_new_tokens=512)
    assert make_request(image, DETECTION, "fish", boxes=[]).boxes is None  # no boxes: proposals


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image=None), "upload an image first"),
        (dict(image="/nonexistent/x.png"), "does not exist"),
        (dict(boxes=[[10, 10, 5, 20]]), r"your boxes: box 0 .* empty or inverted"),
        (dict(boxes=[[100, 100, 200, 200]]), "outside the 80x60 image"),
        (dict(boxes=[[1, 2, 3]]), "expected \\[x0, y0, x1, y1\\]"),
        (dict(boxes=[[0, 0, 5, 5]] * 3, max_boxes=2), "3 boxes given but at most 2"),
        (dict(task=REGION), "draw at least one box"),
        (dict(task=QUESTION, text="  "), "type your question"),
        (dict(granularity="medium"), "granularity"),
        (dict(min_score=1.5), "min proposal score"),
        (dict(max_boxes=0), "most boxes"),
        (dict(task="Nope"), "unknown task"),
    ],
)
def test_make_request_bad_input(image, kwargs, match):
    args = dict(image=image, task=DETECTION, text="fish")
    args.update(kwargs)
    with pytest.raises(DemoInputError, match=match):
        make_request(**args)


# ------------------------------------------------------------------------------------------------
# running and showing
# ------------------------------------------------------------------------------------------------
def test_stream_answer_matches_the_pipeline(pipe, image):
    req = make_request(image, DETECTION, "fish", min_score=0.0, max_boxes=4, max_new_tokens=6)
    steps = list(stream_answer(pipe, req))
    texts, results = [t for t, _ in steps], [r for _, r in steps]
    assert all(r is None for r in results[:-1]) and isinstance(results[-1], PipelineResult)
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # the text grows
    expected = pipe(image, req.prompt, min_score=0.0, max_boxes=4, max_new_tokens=6)[0]
    assert texts[-1] == results[-1].raw_text == expected.raw_text
    assert results[-1].boxes == expected.boxes and 1 <= len(expected.boxes) <= 4


def test_stream_answer_with_user_boxes_and_refused_prompt(pipe, image):
    req = make_request(image, REGION, "", boxes=[[1, 2, 30, 40], [5, 5, 60, 50]], max_new_tokens=4)
    *_, (_, result) = stream_answer(pipe, req)
    assert result.boxes == [[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 60.0, 50.0]] and result.scores is None
    req = make_request(image, FREE, "What is <obj5>?", boxes=[[1, 2, 30, 40]], max_new_tokens=4)
    with pytest.raises(DemoInputError, match=r"^the question refers to <obj5> but the image has only 1 boxes"):
        list(stream_answer(pipe, req))


def test_render_result_draws_and_records(image):
    boxes = [[5.0, 5.0, 30.0, 30.0], [40.0, 10.0, 75.0, 55.0]]
    req = make_request(image, DETECTION, "dog; cat", boxes=boxes)
    result = _result("<ground>dog</ground><objects><obj1></objects> and a <ground>cat</ground><objects></objects>. <obj9>",
                     boxes)
    out = render_result(req, result, model="tiny")
    assert out.text == "dog[1] and a cat[]."
    assert "".join(t for t, _ in out.highlights) == result.answer.text
    assert out.highlights[0] == ("dog", "obj 1") and ("cat", "no box") in out.highlights
    colors = phrase_colors(result.answer)
    assert out.color_map["obj 1"] == "#{:02x}{:02x}{:02x}".format(*colors["dog"])
    assert out.image.size == image.size and out.image.mode == "RGB"
    drawn = np.asarray(out.image).astype(int) - np.asarray(image).astype(int)
    assert np.abs(drawn[10:55, 40]).sum() > 0  # the left edge of the grounded box
    assert np.abs(drawn[5:30, 5]).sum() > 0  # the ungrounded box, thin and grey
    assert np.abs(drawn[40:50, 8:30]).sum() == 0  # away from every box
    assert "2 boxes from your boxes; 2 groundings" in out.summary and "<obj9>" in out.summary
    one = render_result(req, _result("<ground>dog</ground><objects><obj0></objects>", boxes[:1]))
    assert one.summary == "1 box from your boxes; 1 grounding"
    assert json.loads(json.dumps(out.record)) == out.record
    assert {"image", "width", "height", "question", "model", "granularity", "answer", "raw_text", "boxes",
            "scores"} <= set(out.record)  # what `chatrex predict --json` writes
    assert out.record["answer"]["groundings"][0]["boxes"] == [boxes[1]]
    assert out.record["granularity"] is None and out.record["model"] == "tiny" and out.record["task"] == DETECTION
    assert out.record["question"] == req.prompt and (out.record["width"], out.record["height"]) == (80, 60)


def test_end_to_end_on_tiny_model(pipe, image):
    req = make_request(image, "Grounded caption (brief)", "", granularity="coarse", min_score=0.0, max_boxes=3, **FAST)
    *_, (_, result) = stream_answer(pipe, req)
    out = render_result(req, result)
    record = json.loads(json.dumps(out.record))
    assert record["granularity"] == "coarse" and len(record["boxes"]) == len(record["scores"]) <= 3
    assert out.image.size == image.size and "UPN coarse-grained proposals" in out.summary
    assert result_record(req, result) == {**out.record, "model": None}


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def _run(*args):
    return CliRunner().invoke(build_app(), [str(a) for a in args])


def test_demo_help_without_gradio():
    res = _run("--help")
    assert res.exit_code == 0 and "demo" in res.output
    res = _run("demo", "--help")
    assert res.exit_code == 0, res.output
    assert all(opt in res.output for opt in ("--model", "--device", "--port", "--share", "--no-share"))


def test_demo_bad_model_and_examples(tmp_path, tiny_pipeline_dir):
    res = _run("demo", "--model", tmp_path / "nothing")
    assert res.exit_code == 1 and "does not exist" in res.output
    res = _run("demo", "--model", tiny_pipeline_dir, "--examples", tmp_path)
    assert res.exit_code == 1 and "holds no" in res.output and "Traceback" not in res.output


@pytest.mark.skipif(HAS_GRADIO, reason="checks the message shown when gradio is missing")
def test_demo_without_gradio_says_how_to_install(tiny_pipeline_dir):
    res = _run("demo", "--model", tiny_pipeline_dir)
    assert res.exit_code == 1 and "chatrex[demo]" in res.output and "Traceback" not in res.output
    from chatrex.interfaces.demo import build_demo

    with pytest.raises(ImportError, match=r"pip install 'chatrex\[demo\]'"):
        build_demo(None)
    assert INSTALL_HINT == "the demo needs gradio: pip install 'chatrex[demo]'"


# ------------------------------------------------------------------------------------------------
# the Gradio app (only where gradio is installed)
# ------------------------------------------------------------------------------------------------
def _handler(demo, name):
    fns = [f for f in demo.fns.values() if getattr(f, "name", None) == name]
    assert fns, f"no event handler named {name}"
    return fns[0].fn


@pytest.mark.parametrize("use_annotator", [False, True])
def test_build_demo_and_answer(pipe, image, use_annotator, tmp_path):
    gr = pytest.importorskip("gradio")
    if use_annotator:
        pytest.importorskip("gradio_image_annotation")
    from chatrex.interfaces.demo import build_demo

    example = tmp_path / "ex.png"
    image.save(example)
    demo = build_demo(pipe, model_name="tiny", examples=[example], use_annotator=use_annotator)
    assert isinstance(demo, gr.Blocks)
    answer = _handler(demo, "on_answer")
    if use_annotator:
        value = {"image": image, "boxes": [{"xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40}], "orientation": 0}
        extra = []
    else:
        value, extra = image, ["1,2,30,40"]
    steps = list(answer(value, REGION, "", "", "fine", 0.3, 100, 4, None, *extra))
    raw, highlighted, picture, summary, record = steps[-1]
    assert picture.size == image.size and record["boxes"] == [[1.0, 2.0, 30.0, 40.0]]
    assert raw == record["raw_text"] and summary.startswith("1 box from your boxes; ")
    with pytest.raises(gr.Error, match="upload an image first"):
        list(answer(None, DETECTION, "fish", "", "fine", 0.3, 100, 4, None, *extra))
    with pytest.raises(gr.Error, match="draw at least one box"):
        list(answer({"image": image, "boxes": []} if use_annotator else image, REGION, "", "", "fine", 0.3, 100, 4, None,
                    *[""] * len(extra)))
    on_input = _handler(demo, "on_input")
    assert on_input(DETECTION, "fish", value, None, *extra) == build_prompt("detection", categories="fish")
    assert on_input(REGION, "", value, None, *extra) == build_prompt("region_category", regions=[0])
    # a region mask: two grey levels are two more regions, numbered after the box; drawn filled
    mask = Image.new("L", image.size)
    mask.paste(200, (40, 10, 70, 50))
    mask.paste(90, (5, 45, 25, 58))
    assert on_input(REGION, "", value, mask, *extra) == build_prompt("region_category", regions=[0, 1, 2])
    *_, (raw, highlighted, picture, summary, record) = answer(value, REGION, "", "", "fine", 0.3, 100, 4, mask, *extra)
    assert record["boxes"] == [[1.0, 2.0, 30.0, 40.0], [5.0, 45.0, 25.0, 58.0], [40.0, 10.0, 70.0, 50.0]]
    assert record["masks"][0] is None and record["masks"][1]["size"] == [60, 80]
    assert summary.startswith("3 boxes from your regions (2 masks); ")
    [ref] = pipe(image, build_prompt("region_category", regions=[0, 1, 2]),
                 regions=[[1, 2, 30, 40], np.asarray(mask) == 90, np.asarray(mask) == 200], max_new_tokens=4)
    assert raw == ref.raw_text
    with pytest.raises(gr.Error, match="region mask is all black"):
        list(answer(value, REGION, "", "", "fine", 0.3, 100, 4, Image.new("L", image.size), *extra))
    with pytest.raises(gr.Error, match="the mask is 10x10 .* but the image is 60x80"):
        list(answer(value, REGION, "", "", "fine", 0.3, 100, 4, Image.new("L", (10, 10), 255), *extra))


# ------------------------------------------------------------------------------------------------
# request bounds, cancellation, messages, the model card line
# ------------------------------------------------------------------------------------------------
def test_prompt_length_and_answer_length_are_bounded(image):
    assert make_request(image, FREE, prompt="x" * MAX_PROMPT_CHARS, max_new_tokens=MAX_NEW_TOKENS).prompt
    with pytest.raises(DemoInputError, match=f"at most {MAX_PROMPT_CHARS} are allowed"):
        make_request(image, FREE, prompt="x" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(DemoInputError, match="the task text has"):
        make_request(image, DETECTION, text="fish;" * MAX_PROMPT_CHARS)
    with pytest.raises(DemoInputError, match=f"1..{MAX_NEW_TOKENS} tokens"):
        make_request(image, DETECTION, text="fish", max_new_tokens=MAX_NEW_TOKENS + 1)


def test_region_message_names_the_typed_field_only_where_the_page_has_one(image):
    with pytest.raises(DemoInputError, match=r"draw at least one box on the image \(or type"):
        make_request(image, REGION)
    with pytest.raises(DemoInputError) as err:
        make_request(image, REGION, can_type_boxes=False)
    assert "draw at least one box on the image" in str(err.value) and "type" not in str(err.value)


def test_abandoning_the_answer_cancels_the_generation(pipe, image):
    class Recording:  # the pipeline, keeping the answers it streams
        def __init__(self):
            self.answers = []

        def stream(self, *args, **kwargs):
            self.answers.append(pipe.stream(*args, **kwargs))
            return self.answers[-1]

    recording = Recording()
    answers = stream_answer(recording, make_request(image, FREE, prompt="Describe the image.", max_new_tokens=400))
    next(answers)
    answers.close()  # what Gradio does when the page goes away
    streaming = recording.answers[0]
    streaming._thread.join(timeout=60)
    assert streaming.cancelled and not streaming._thread.is_alive() and streaming.num_tokens < 400


def test_error_message_escapes_markup():
    assert error_message("refers to <obj7> & more") == "refers to &lt;obj7&gt; &amp; more"


def test_a_new_task_clears_the_previous_tasks_text_and_boxes(pipe, image):
    pytest.importorskip("gradio")
    from chatrex.interfaces.demo import build_demo

    for use_annotator in (False, True):
        if use_annotator:
            pytest.importorskip("gradio_image_annotation")
        demo = build_demo(pipe, use_annotator=use_annotator)
        on_task = _handler(demo, "on_task")
        if use_annotator:
            drawn = {"image": image, "boxes": [{"xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40}], "orientation": 0}
            field, prompt, image_value, mask_value = on_task(QUESTION, "what is this?", drawn, image)
            assert image_value["boxes"] == [] and image_value["image"] is image
        else:
            field, prompt, boxes_text, mask_value = on_task(QUESTION, "what is this?", image, image, "1,2,30,40")
            assert boxes_text == ""
        assert mask_value is None  # the region mask is cleared too
        assert field.value == "" and prompt == ""  # the question task waits for its own text


def test_an_undecodable_upload_reaches_the_loader(pipe, tmp_path):
    pytest.importorskip("gradio")
    from chatrex.interfaces.demo import build_demo, decode_upload, split_image_input

    bad = tmp_path / "photo.jpg"
    bad.write_text("not a picture")
    for use_annotator in (False, True):
        if use_annotator:
            pytest.importorskip("gradio_image_annotation")
        demo = build_demo(pipe, use_annotator=use_annotator)
        image_in = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "chatrex-image")
        file = {"path": str(bad), "orig_name": "photo.jpg", "meta": {"_type": "gradio.FileData"}}
        raw = {"image": file, "boxes": [], "orientation": 0} if use_annotator else file
        picture, boxes = split_image_input(decode_upload(image_in, raw))
        assert picture == str(bad) and boxes is None
        with pytest.raises(DemoInputError, match="could not be decoded"):
            make_request(picture, DETECTION, text="fish")
