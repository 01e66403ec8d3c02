"""A Gradio web demo of ChatRex: upload an image, pick a task, see the answer grounded to boxes.

:func:`build_demo` makes the app around a loaded :class:`~chatrex.interfaces.pipeline.ChatRexPipeline`::

    inputs   image (boxes drawn on it with gradio_image_annotation, else typed as x0,y0,x1,y1 lines),
             an optional region-mask image (each non-zero grey level one mask region, after the boxes),
             task + its text, the prompt (filled from chatrex.grounding.prompts, editable),
             proposal granularity, settings (min score, most boxes, longest answer)
    outputs  the model's text as it is generated, the parsed answer (phrase -> box indices), the image
             with the grounded boxes labelled (chatrex.grounding.draw_grounded), and the JSON record
             that ``chatrex predict --json`` writes

Only :func:`build_demo` imports gradio (the ``demo`` extra, installed beside everything else: the
project pins a Pillow that gradio accepts). Everything else here is plain Python: UI inputs -> :class:`DemoRequest`
(:func:`make_request`), request -> pipeline answer (:func:`stream_answer`), answer -> what the page
shows (:func:`render_result`). Bad input raises :class:`DemoInputError` (a ``ValueError``) with a
message meant for the user; the app shows it as a ``gr.Error``.

Example::

    pipe = ChatRexPipeline.from_pretrained("chatrex/assets/chatrex-small")
    build_demo(pipe).launch()
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

from PIL import Image

from chatrex.grounding import GroundedAnswer, build_prompt, draw_grounded, phrase_colors
from chatrex.interfaces.pipeline import (MAX_BOXES, OFFICIAL_MIN_SCORE, PipelineResult, validate_boxes,
                                        validate_regions)
from chatrex.utils.image import load_image

__all__ = [
    "DEMO_TASKS",
    "DemoTask",
    "DemoInputError",
    "DemoRequest",
    "DemoOutput",
    "INSTALL_HINT",
    "MAX_PROMPT_CHARS",
    "MAX_NEW_TOKENS",
    "error_message",
    "find_task",
    "task_prompt",
    "suggest_prompt",
    "parse_boxes_text",
    "annotation_boxes",
    "split_image_input",
    "count_boxes",
    "mask_regions",
    "make_request",
    "stream_answer",
    "answer_highlights",
    "result_record",
    "render_result",
    "import_gradio",
    "annotator_available",
    "build_demo",
]

#: What to install for the demo (printed when gradio is missing).
INSTALL_HINT = "the demo needs gradio: pip install 'chatrex[demo]'"
#: UPN proposal granularities offered (see ``ChatRexPipeline.__call__``).
DEMO_GRANULARITIES = ("fine", "coarse")
#: Generation default of the demo (the pipeline's own default).
DEFAULT_MAX_NEW_TOKENS = 512
#: The longest answer a request may ask for (the page's slider goes this far).
MAX_NEW_TOKENS = 1024
#: The longest prompt (and task text) a request may send, in characters.
MAX_PROMPT_CHARS = 2000


class DemoInputError(ValueError):
    """Input the demo cannot run on; the message tells the user what to change."""


@dataclass(frozen=True)
class DemoTask:
    """One entry of the task menu.

    Attributes:
        label: shown in the menu.
        task: the :func:`chatrex.grounding.build_prompt` task, or ``None`` when the text is the prompt.
        argument: what the text box holds: ``"categories"``, ``"expression"``, ``"question"``, ``"prompt"``
            (sent as written), ``None`` (nothing to type), or ``"regions"`` (the prompt names the user's
            boxes; nothing to type).
        hint: placeholder of the text box.
    """

    label: str
    task: Optional[str]
    argument: Optional[str]
    hint: str

    @property
    def needs_boxes(self) -> bool:
        """Whether the task is about the user's own boxes."""
        return self.argument == "regions"

    @property
    def needs_text(self) -> bool:
        """Whether the user must type something for this task."""
        return self.argument in ("categories", "expression", "question", "prompt")


#: The task menu, in order; the first is the default.
DEMO_TASKS: tuple[DemoTask, ...] = (
    DemoTask("Detection", "detection", "categories", "category names separated by ';', e.g. fish; robot"),
    DemoTask("Referring", "referring", "expression", "a description, e.g. the small green fish"),
    DemoTask("Counting", "counting", "categories", "one category name, e.g. fish"),
    DemoTask("Grounded caption (brief)", "caption_brief", None, "nothing to type"),
    DemoTask("Grounded caption (detailed)", "caption_detailed", None, "nothing to type"),
    DemoTask("Region category (your boxes)", "region_category", "regions", "nothing to type: draw boxes on the image"),
    DemoTask("Region caption, short phrase (your boxes)", "region_phrase", "regions",
             "nothing to type: draw boxes on the image"),
    DemoTask("Region caption, one sentence (your boxes)", "region_sentence", "regions",
             "nothing to type: draw boxes on the image"),
    DemoTask("Question (grounded answer)", "conversation", "question", "your question, e.g. What is the robot holding?"),
    DemoTask("Free prompt (sent as written)", None, "prompt", "the whole prompt; refer to boxes as <obj0>, <obj1>, ..."),
)


# ------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------
def find_task(label: str) -> DemoTask:
    """The menu entry called ``label``."""
    for task in DEMO_TASKS:
        if task.label == label:
            return task
    raise DemoInputError(f"unknown task {label!r}; choose one of: {', '.join(t.label for t in DEMO_TASKS)}")


def _split(text: str, separators: str) -> list[str]:
    parts = re.split(f"[{re.escape(separators)}]", text)
    return [p.strip() for p in parts if p.strip()]


def _missing_boxes(task: DemoTask, can_type: bool = True) -> DemoInputError:
    how = "draw at least one box on the image" + (" (or type x0,y0,x1,y1 lines)" if can_type else "")
    return DemoInputError(f"{task.label} asks about your own boxes: {how}")


def task_prompt(task: DemoTask, text: Optional[str], num_boxes: int = 0) -> str:
    """The prompt for ``task`` from the project's templates (template 0, as ``build_prompt`` gives it).

    Args:
        task: a :data:`DEMO_TASKS` entry.
        text: what the user typed (category names separated by ``;`` or ``,``; expressions by ``;``).
        num_boxes: how many boxes the user gave (region tasks ask about all of them).

    Raises:
        DemoInputError: the text or the boxes the task needs are missing or malformed.
    """
    text = (text or "").strip()
    if task.needs_text and not text:
        raise DemoInputError(f"{task.label}: type {task.hint}")
    if task.needs_boxes and num_boxes < 1:
        raise _missing_boxes(task)
    if task.task is None:
        return text
    kwargs: dict[str, Any] = {}
    if task.argument == "categories":
        kwargs["categories"] = _split(text, ";,")
    elif task.argument == "expression":
        kwargs["expression"] = _split(text, ";")
    elif task.argument == "question":
        kwargs["question"] = text
    elif task.argument == "regions":
        kwargs["regions"] = list(range(min(num_boxes, MAX_BOXES)))
    try:
        return build_prompt(task.task, **kwargs)
    except (ValueError, TypeError) as exc:
        raise DemoInputError(f"{task.label}: {exc}") from None


def suggest_prompt(label: str, text: Optional[str], num_boxes: int = 0) -> str:
    """:func:`task_prompt` for filling the prompt box while the user types: ``""`` instead of an error."""
    try:
        return task_prompt(find_task(label), text, num_boxes)
    except DemoInputError:
        return ""


# ------------------------------------------------------------------------------------------------
# boxes and images
# ------------------------------------------------------------------------------------------------
def parse_boxes_text(text: Optional[str]) -> Optional[list[list[float]]]:
    """Typed boxes → ``[[x0, y0, x1, y1], ...]``; ``None`` when the text is blank.

    One box per line, four numbers separated by commas or spaces (brackets allowed), or a JSON list of
    boxes (what ``chatrex propose`` writes under ``"boxes"``). Only the form is checked here; the
    values are checked against the image by :func:`make_request`.

    Raises:
        DemoInputError: a line that is not four numbers (the message names the line).
    """
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.startswith("[["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DemoInputError(f"your boxes are not valid JSON: {exc}") from None
        if not isinstance(data, list):
            raise DemoInputError("your boxes must be a list of [x0, y0, x1, y1]")
        return data
    boxes = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = [f for f in re.split(r"[\s,;]+", line.strip("[]() ")) if f]
        try:
            values = [float(f) for f in fields]
        except ValueError:
            values = []
        if len(values) != 4:
            raise DemoInputError(f"your boxes, line {n}: {line!r} is not four numbers x0,y0,x1,y1")
        boxes.append(values)
    return boxes


#: ``Image.transpose`` turning an image as ``gradio_image_annotation`` shows it after ``k`` quarter turns clockwise.
_QUARTER_TURNS = {1: Image.Transpose.ROTATE_270, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_90}


def annotation_boxes(value: Mapping[str, Any]) -> tuple[Any, Optional[list[list[float]]]]:
    """A ``gradio_image_annotation`` value (``{"image": ..., "boxes": [{"xmin", "ymin", "xmax", "ymax",
    ...}], "orientation": k}``) → ``(image, boxes)``; boxes ``None`` when none were drawn.

    The annotator can turn the picture by ``k`` quarter turns clockwise; its boxes are then in the
    turned picture, so the image is returned turned the same way.
    """
    image = value.get("image")
    drawn = value.get("boxes") or []
    try:
        boxes = [[float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"])] for b in drawn]
    except (KeyError, TypeError, ValueError):
        raise DemoInputError(f"the drawn boxes are not in the annotator's form: {drawn!r}") from None
    turns = int(value.get("orientation") or 0) % 4
    if image is not None and turns:
        try:
            image = load_image(image).transpose(_QUARTER_TURNS[turns])
        except ValueError as exc:  # ImageLoadError
            raise DemoInputError(str(exc)) from None
    return image, (boxes or None)


def split_image_input(image_value: Any, boxes_text: Optional[str] = None) -> tuple[Any, Optional[list]]:
    """The image input of the page → ``(image, boxes or None)``: the annotator's value (a mapping: the
    image and the boxes drawn on it), or a plain image and the typed boxes."""
    if isinstance(image_value, Mapping):
        return annotation_boxes(image_value)
    return image_value, parse_boxes_text(boxes_text)


def count_boxes(image_value: Any, boxes_text: Optional[str] = None, mask_image: Any = None) -> int:
    """How many regions (boxes, and masks of ``mask_image``) the user has given so far (0 while what they
    typed is malformed)."""
    try:
        boxes = len(split_image_input(image_value, boxes_text)[1] or [])
    except DemoInputError:
        return 0
    try:
        return boxes + len(mask_regions(mask_image))
    except DemoInputError:
        return boxes


def mask_regions(mask_image: Any) -> list:
    """The mask regions of an uploaded mask image: each distinct non-zero grey level (after conversion to
    8-bit grey) is one region, in ascending order, so a black-and-white mask is one region. ``None`` → [].

    Raises:
        DemoInputError: the file is not a readable image, holds no non-zero pixel, or more than
            ``MAX_BOXES`` levels.
    """
    import numpy as np

    if mask_image is None:
        return []
    try:
        grey = np.asarray(load_image(mask_image).convert("L"))
    except ValueError as exc:  # ImageLoadError
        raise DemoInputError(f"the region mask: {exc}") from None
    levels = [int(v) for v in np.unique(grey) if v != 0]
    if not levels:
        raise DemoInputError("the region mask is all black: paint each region in a non-black grey level")
    if len(levels) > MAX_BOXES:
        raise DemoInputError(f"the region mask has {len(levels)} grey levels (regions); at most {MAX_BOXES} are allowed")
    return [grey == v for v in levels]


# ------------------------------------------------------------------------------------------------
# requests and results
# ------------------------------------------------------------------------------------------------
@dataclass
class DemoRequest:
    """One checked question for the pipeline.

    Attributes:
        image: the RGB image.
        prompt: the text sent to the model.
        task: the menu label it came from.
        boxes: the user's boxes in image pixels (clipped), or ``None`` for UPN proposals; with mask regions,
            each region's box (a mask's bounding box).
        granularity / min_score / max_boxes / max_new_tokens: as ``ChatRexPipeline.__call__`` takes them.
        regions: with mask regions: the boxes and then the masks (decoded), as ``regions=`` takes them;
            else ``None``.
    """

    image: Image.Image
    prompt: str
    task: str
    boxes: Optional[list[list[float]]] = None
    granularity: str = "fine"
    min_score: float = 0.3
    max_boxes: int = MAX_BOXES
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    regions: Optional[list[Any]] = None

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``ChatRexPipeline.stream`` / ``__call__`` after the image and prompt."""
        where = dict(regions=self.regions) if self.regions is not None else dict(boxes=self.boxes)
        return dict(**where, granularity=self.granularity, min_score=self.min_score,
                    max_boxes=self.max_boxes, max_new_tokens=self.max_new_tokens)


def make_request(
    image: Any,
    task: str,
    text: Optional[str] = None,
    prompt: Optional[str] = None,
    boxes: Optional[Sequence[Sequence[float]]] = None,
    granularity: str = "fine",
    min_score: float = 0.3,
    max_boxes: int = MAX_BOXES,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    can_type_boxes: bool = True,
    masks: Optional[Sequence[Any]] = None,
) -> DemoRequest:
    """Check the page's inputs and turn them into a :class:`DemoRequest`.

    Args:
        image: the uploaded image (PIL, array or path); ``None`` when nothing was uploaded.
        task: a :data:`DEMO_TASKS` label.
        text: what the user typed for the task (category names, a description, a question...).
        prompt: the prompt box; blank → written from ``task`` and ``text`` (:func:`task_prompt`).
        boxes: the user's boxes ``[[x0, y0, x1, y1], ...]`` in image pixels, or ``None`` for proposals.
        granularity: ``"fine"`` or ``"coarse"`` UPN proposals (unused when boxes are given).
        min_score / max_boxes / max_new_tokens: proposal score threshold, most boxes, longest answer
            (at most :data:`MAX_NEW_TOKENS`).
        can_type_boxes: whether the page has a field for typed boxes (the message for a region task
            without boxes mentions it only then).
        masks: mask regions ((H, W) binary arrays of the image's size, e.g. :func:`mask_regions`), asked
            about after the boxes (``<objK>`` numbering continues); ``None`` or empty: none.

    Raises:
        DemoInputError: no image, an unreadable image, bad boxes, a region task without boxes, an empty
            prompt or one longer than :data:`MAX_PROMPT_CHARS`, a bad setting.
    """
    if image is None:
        raise DemoInputError("upload an image first")
    try:
        picture = load_image(image)
    except ValueError as exc:  # ImageLoadError
        raise DemoInputError(str(exc)) from None
    menu = find_task(task)
    if granularity not in DEMO_GRANULARITIES:
        raise DemoInputError(f"proposal granularity must be one of {', '.join(DEMO_GRANULARITIES)}, got {granularity!r}")
    if not 1 <= int(max_boxes) <= MAX_BOXES:
        raise DemoInputError(f"most boxes must be in 1..{MAX_BOXES}, got {max_boxes}")
    if not 0.0 <= float(min_score) <= 1.0:
        raise DemoInputError(f"min proposal score must be in [0, 1], got {min_score}")
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise DemoInputError(f"longest answer must be 1..{MAX_NEW_TOKENS} tokens, got {max_new_tokens}")
    for name, value in (("the prompt", prompt), ("the task text", text)):
        if value is not None and len(value) > MAX_PROMPT_CHARS:
            raise DemoInputError(f"{name} has {len(value)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    checked = None
    if boxes is not None and len(boxes) > 0:
        try:
            checked = validate_boxes(boxes, picture.width, picture.height, int(max_boxes), where="your boxes")
        except ValueError as exc:
            raise DemoInputError(str(exc)) from None
    regions = None
    if masks is not None and len(masks) > 0:
        try:
            regions, boxes_of, _ = validate_regions([*(checked or []), *masks], picture.width, picture.height,
                                                    int(max_boxes), where="your regions")
        except ValueError as exc:
            raise DemoInputError(str(exc)) from None
        checked = boxes_of
    if menu.needs_boxes and checked is None:
        raise _missing_boxes(menu, can_type_boxes)
    question = (prompt or "").strip() or task_prompt(menu, text, len(checked or []))
    return DemoRequest(picture, question, menu.label, checked, granularity, float(min_score), int(max_boxes),
                       int(max_new_tokens), regions)


def stream_answer(pipeline: Any, request: DemoRequest) -> Iterator[tuple[str, Optional[PipelineResult]]]:
    """Run ``request`` with ``pipeline.stream``: yields ``(text so far, None)`` while the answer is
    generated, then ``(whole text, PipelineResult)`` once.

    When the caller stops iterating (e.g. Gradio closes the generator because the page was left), the
    generation is cancelled (``StreamingAnswer.cancel``) instead of running on to ``max_new_tokens``.

    Raises:
        DemoInputError: the pipeline refused the input (e.g. the prompt names ``<obj7>`` but there are
            fewer boxes).
    """
    try:
        streaming = pipeline.stream(request.image, request.prompt, **request.pipeline_kwargs())
    except ValueError as exc:  # the pipeline names the image of a batch: "image 0: ..."
        raise DemoInputError(str(exc).removeprefix("image 0: ")) from None
    text = ""
    try:
        for piece in streaming:
            text += piece
            yield text, None
        yield streaming.text, streaming.result()
    finally:  # the page went away (the generator was closed) or failed: stop generating
        cancel = getattr(streaming, "cancel", None)
        if cancel is not None:
            cancel()


def _hex(color: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def _indices_label(indices: Sequence[int]) -> str:
    return "obj " + ", ".join(str(i) for i in indices) if indices else "no box"


def answer_highlights(answer: GroundedAnswer) -> tuple[list[tuple[str, Optional[str]]], dict[str, str]]:
    """The answer as ``gr.HighlightedText`` segments: ``[(text, None), (phrase, "obj 0, 2"), ...]`` and a
    colour map from each label to its phrase's drawing colour (as in the picture)."""
    colors = phrase_colors(answer)
    segments: list[tuple[str, Optional[str]]] = []
    color_map: dict[str, str] = {}
    pos = 0
    for g in sorted(answer.groundings, key=lambda g: g.span):
        start, end = g.span
        if answer.text[pos:start]:
            segments.append((answer.text[pos:start], None))
        label = _indices_label(g.indices)
        segments.append((answer.text[start:end], label))
        color_map.setdefault(label, _hex(colors[g.phrase]))
        pos = end
    if answer.text[pos:]:
        segments.append((answer.text[pos:], None))
    return segments, color_map


def result_record(request: DemoRequest, result: PipelineResult, model: Optional[str] = None) -> dict[str, Any]:
    """The JSON record of one answer, with the fields ``chatrex predict --json`` writes (the uploaded
    image has no path, so ``"image"`` is ``None``) plus ``"task"``."""
    return {
        "image": None,
        "width": request.image.width,
        "height": request.image.height,
        "task": request.task,
        "question": request.prompt,
        "model": model,
        "granularity": request.granularity if request.boxes is None else None,
        **result.to_dict(),
    }


@dataclass
class DemoOutput:
    """What the page shows for one answer.

    Attributes:
        text: the answer with each grounded phrase followed by its box indices, e.g. ``"A dog[0,2]."``.
        highlights / color_map: the answer for ``gr.HighlightedText`` (see :func:`answer_highlights`).
        image: the input image with the grounded boxes labelled by their phrase, others thin and grey.
        record: the JSON record (:func:`result_record`).
        summary: one line on where the boxes came from, how many groundings, and what was dropped.
    """

    text: str
    highlights: list[tuple[str, Optional[str]]]
    color_map: dict[str, str]
    image: Image.Image
    record: dict[str, Any]
    summary: str


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def render_result(request: DemoRequest, result: PipelineResult, model: Optional[str] = None) -> DemoOutput:
    """Turn a pipeline result into what the page shows."""
    from chatrex.interfaces.commands.predict import answer_markup

    highlights, color_map = answer_highlights(result.answer)
    n_masks = sum(m is not None for m in (result.masks or []))
    if request.boxes is None:
        source = f"UPN {request.granularity}-grained proposals"
    else:
        source = f"your regions ({_count(n_masks, 'mask', 'masks')})" if n_masks else "your boxes"
    summary = f"{_count(len(result.boxes), 'box', 'boxes')} from {source}; " \
              f"{_count(len(result.answer.groundings), 'grounding', 'groundings')}"
    if result.answer.dropped:
        summary += "; dropped from the answer: " + "; ".join(result.answer.dropped)
    return DemoOutput(
        text=answer_markup(result.answer).plain,
        highlights=highlights,
        color_map=color_map,
        image=draw_grounded(request.image, result.answer, result.boxes, masks=result.masks),
        record=result_record(request, result, model),
        summary=summary,
    )


def error_message(text: str) -> str:
    """A message for the page's error toast, which renders HTML: ``<obj3>`` and the like escaped so they show."""
    return html.escape(str(text), quote=False)


# ------------------------------------------------------------------------------------------------
# the Gradio app
# ------------------------------------------------------------------------------------------------
def import_gradio() -> Any:
    """``import gradio``, or an ``ImportError`` that says how to install it."""
    try:
        import gradio
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return gradio


def annotator_available() -> bool:
    """Whether ``gradio_image_annotation`` (drawing boxes on the image) is installed."""
    return importlib.util.find_spec("gradio_image_annotation") is not None


#: What decoding a picture that cannot be read raises in PIL (handed on to the demo's own loader instead).
_UNDECODABLE = (OSError, ValueError, Image.DecompressionBombError, SyntaxError)


def decode_upload(component: Any, raw: Any) -> Any:
    """The value of the image input ``component`` from its raw payload (events run with ``preprocess=False``).

    The component decodes the upload itself (``component.preprocess``); an upload it cannot decode (a text
    file named .jpg, a picture over PIL's size limit) is handed on as its file path, so that the answer
    shows :func:`load_image`'s message instead of red "Error" badges and a server traceback.
    """
    if not isinstance(raw, Mapping) or not isinstance(raw.get("image", raw), Mapping):
        return raw  # nothing, or a value already decoded (a direct call of a handler)
    try:
        return component.preprocess(component.data_model.model_validate(raw))
    except _UNDECODABLE:
        if isinstance(raw.get("image"), Mapping) or "boxes" in raw:  # the annotator: {"image": file, "boxes": [...]}
            return {"image": (raw.get("image") or {}).get("path"), "boxes": [], "orientation": 0}
        return raw.get("path")


def _image_input(gr: Any, use_annotator: bool) -> tuple[Any, Any]:
    """The image input and, without the annotator, the text box for typed boxes (else ``None``)."""
    if use_annotator:
        from gradio_image_annotation import image_annotator

        image = image_annotator(label="Image: upload, then draw boxes for region tasks (optional otherwise)",
                                image_type="pil", label_list=["region"], single_box=False, elem_id="chatrex-image")
        return image, None
    image = gr.Image(type="pil", label="Image", elem_id="chatrex-image")
    boxes = gr.Textbox(label="Your boxes (optional; required for region tasks)", lines=3,
                       placeholder="one box per line in image pixels: x0,y0,x1,y1 (given boxes replace the proposals)")
    return image, boxes


def _example_values(examples: Sequence[Any], use_annotator: bool) -> list[list[Any]]:
    return [[{"image": str(p), "boxes": []} if use_annotator else str(p)] for p in examples]


def build_demo(
    pipeline: Any,
    model_name: Optional[str] = None,
    examples: Sequence[Any] = (),
    use_annotator: Optional[bool] = None,
    title: str = "ChatRex",
    model_card: Optional[str] = None,
) -> Any:
    """The Gradio ``Blocks`` app around ``pipeline`` (launch it with ``.launch()``).

    Args:
        pipeline: a loaded ``ChatRexPipeline`` (anything with its ``stream``).
        model_name: shown on the page and written into the JSON record (e.g. the model directory).
        examples: example image paths offered under the image.
        use_annotator: draw boxes with ``gradio_image_annotation``; ``None``: when it is installed,
            ``False``: type boxes instead.
        title: page title.
        model_card: one line on what the model is (:func:`chatrex.interfaces.model_card.model_card_line`),
            shown under the title.

    Raises:
        ImportError: gradio (or, with ``use_annotator=True``, gradio_image_annotation) is missing; the
            message says how to install it.
    """
    gr = import_gradio()
    if use_annotator is None:
        use_annotator = annotator_available()
    elif use_annotator and not annotator_available():
        raise ImportError("drawing boxes needs gradio_image_annotation: pip install 'chatrex[demo]'")

    # The image input's events run with preprocess=False and decode it with decode_upload (see there).
    def on_task(label: str, text: str, raw_image: Any, raw_mask: Any = None,
                boxes_text: Optional[str] = None) -> tuple[Any, ...]:
        """A new task starts clean: the text typed, the boxes drawn (or typed) and the region mask of the
        previous task are cleared, so they neither reach the new task's prompt nor replace its proposals
        unseen."""
        image_value = decode_upload(image_in, raw_image)
        task = find_task(label)
        field = gr.Textbox(value="", label=f"{task.label}: what to ask about", placeholder=task.hint,
                           interactive=task.needs_text, max_length=MAX_PROMPT_CHARS)
        if isinstance(image_value, Mapping):
            drawn = isinstance(image_value.get("image"), Image.Image) and image_value.get("boxes")
            image = {**image_value, "boxes": []} if drawn else gr.skip()
        else:
            image = "" if boxes_text is not None else gr.skip()
        return field, suggest_prompt(label, "", 0), image, None if raw_mask is not None else gr.skip()

    def on_input(label: str, text: str, raw_image: Any, raw_mask: Any = None, boxes_text: Optional[str] = None) -> str:
        return suggest_prompt(label, text, count_boxes(decode_upload(image_in, raw_image), boxes_text,
                                                       decode_upload(mask_in, raw_mask)))

    def on_answer(raw_image, label, text, prompt, granularity, min_score, max_boxes, max_new_tokens, raw_mask=None,
                  boxes_text=None):
        try:
            image, boxes = split_image_input(decode_upload(image_in, raw_image), boxes_text)
            masks = mask_regions(decode_upload(mask_in, raw_mask))
            request = make_request(image, label, text, prompt, boxes, granularity, min_score, max_boxes, max_new_tokens,
                                   can_type_boxes=not use_annotator, masks=masks)
            for raw, result in stream_answer(pipeline, request):
                if result is None:
                    yield raw, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    continue
                out = render_result(request, result, model_name)
                yield (raw, gr.HighlightedText(value=out.highlights, color_map=out.color_map), out.image,
                       out.summary, out.record)
        except DemoInputError as exc:
            raise gr.Error(error_message(exc)) from None
        except RuntimeError as exc:  # the generation thread failed
            raise gr.Error(error_message(f"the model failed: {exc}")) from None

    first = DEMO_TASKS[0]
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nEvery object the model names is grounded to one of the boxes it was given: "
                    "UPN proposals, or the boxes you draw." + (f"\n\nModel: `{model_name}`" if model_name else "")
                    + (f"\n\n**About this model:** {html.escape(model_card)}" if model_card else ""))
        with gr.Row():
            with gr.Column():
                image_in, boxes_in = _image_input(gr, use_annotator)
                if examples:
                    gr.Examples(_example_values(examples, use_annotator), inputs=[image_in])
                mask_in = gr.Image(type="pil", image_mode="L", elem_id="chatrex-mask", height=160,
                                   label="Region masks (optional): an image of the same size, each non-black grey "
                                         "level one region, numbered after your boxes")
                task_in = gr.Dropdown([t.label for t in DEMO_TASKS], value=first.label, label="Task", elem_id="chatrex-task")
                text_in = gr.Textbox(label=f"{first.label}: what to ask about", placeholder=first.hint,
                                     max_length=MAX_PROMPT_CHARS, elem_id="chatrex-text")
                prompt_in = gr.Textbox(label="Prompt sent to the model (filled from the task's template; editable)",
                                       lines=3, max_length=MAX_PROMPT_CHARS, elem_id="chatrex-prompt")
                granularity_in = gr.Radio(list(DEMO_GRANULARITIES), value="fine", label="Proposal granularity",
                                          info="UPN proposals when you give no boxes: fine = parts and small "
                                               "objects, coarse = whole objects")
                with gr.Accordion("Settings", open=False):
                    start = float(getattr(pipeline, "min_score", OFFICIAL_MIN_SCORE))  # the model's filter
                    min_score_in = gr.Slider(0.0, 1.0, value=start, step=0.05, label="Min proposal score")
                    max_boxes_in = gr.Slider(1, MAX_BOXES, value=MAX_BOXES, step=1, label="Most boxes given to the model")
                    tokens_in = gr.Slider(16, MAX_NEW_TOKENS, value=DEFAULT_MAX_NEW_TOKENS, step=16,
                                          label="Longest answer (tokens)")
                run = gr.Button("Answer", variant="primary", elem_id="chatrex-run")
            with gr.Column():
                raw_out = gr.Textbox(label="Model output (as it is generated)", lines=4, interactive=False)
                answer_out = gr.HighlightedText(label="Answer: phrase → box indices", combine_adjacent=False)
                image_out = gr.Image(type="pil", label="Grounded boxes", format="png", interactive=False,
                                     elem_id="chatrex-output-image")
                summary_out = gr.Markdown(elem_id="chatrex-summary")
                json_out = gr.JSON(label="Result JSON", elem_id="chatrex-json")

        extra = [boxes_in] if boxes_in is not None else []
        watch = [task_in, text_in, image_in, mask_in, *extra]
        raw = dict(preprocess=False)  # the handlers decode the image input themselves (decode_upload)
        quiet = dict(api_visibility="private", show_progress="hidden", **raw)  # prompt filling: page only
        task_in.change(on_task, watch, [text_in, prompt_in, boxes_in if boxes_in is not None else image_in, mask_in],
                       **quiet)
        for component in (text_in, image_in, mask_in, *extra):
            component.change(on_input, watch, prompt_in, **quiet)
        demo.load(on_input, watch, prompt_in, **quiet)
        inputs = [image_in, task_in, text_in, prompt_in, granularity_in, min_score_in, max_boxes_in, tokens_in, mask_in,
                  *extra]
        outputs = [raw_out, answer_out, image_out, summary_out, json_out]
        # one model: one answer at a time; clients call it as api_name="/answer"
        run.click(on_answer, inputs, outputs, api_name="answer", concurrency_limit=1, concurrency_id="answer", **raw)
        text_in.submit(on_answer, inputs, outputs, api_visibility="private", concurrency_limit=1, concurrency_id="answer",
                       **raw)
    return demo
