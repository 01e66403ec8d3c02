"""``chatrex predict``: ask ChatRex a question about one image; print the grounded answer, draw it, save JSON."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from chatrex.interfaces.commands.common import (
    check_question,
    check_writable,
    model_load_errors,
    picture_formats,
    picture_path,
)
from chatrex.interfaces.commands.common import fail as _fail

#: Longest question ``chatrex predict`` takes by default (``--max-question-chars``).
MAX_QUESTION_CHARS = 4000


class Granularity(str, Enum):
    fine = "fine"
    coarse = "coarse"


def _read_json_list(spec: str, option: str, key: str, what: str) -> tuple[list, str, Path]:
    """Inline JSON, or the path of a JSON file, holding a list or an object with a ``key`` list.

    Returns ``(the list, where it came from for messages, the folder relative paths in it start from)``;
    every problem ends the command with a message naming ``option`` or the file.
    """
    text, source, base = spec, option, Path.cwd()
    if not spec.lstrip().startswith(("[", "{")):
        path = Path(spec)
        if not path.is_file():
            _fail(f"{option} '{spec}' is neither inline JSON nor an existing JSON file")
        try:
            text = path.read_text()
        except OSError as exc:
            _fail(f"could not read the {key} file '{path}': {exc}")
        source, base = f"{key} file '{path}'", path.parent
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"{source} is not valid JSON: {exc}")
    if isinstance(data, dict):
        if key not in data:
            _fail(f"{source} is a JSON object without a '{key}' list")
        data = data[key]
    if not isinstance(data, list):
        _fail(f"{source} must be a list of {what}, got {type(data).__name__}")
    return data, source, base


def _read_boxes(spec: str) -> list:
    """``--boxes``: inline JSON (``[[x0,y0,x1,y1], ...]``) or a JSON file holding such a list or an object
    with a ``"boxes"`` list (e.g. the JSON ``chatrex propose`` writes)."""
    return _read_json_list(spec, "--boxes", "boxes", "[x0, y0, x1, y1] boxes")[0]


def _read_regions(spec: str) -> list:
    """``--regions``: inline JSON or a JSON file holding a list (or an object with a ``"regions"`` list) whose
    entries are boxes ``[x0, y0, x1, y1]``, COCO RLE ``{"size": [H, W], "counts": ...}``, COCO polygons
    ``[[x0, y0, x1, y1, x2, y2, ...], ...]``, or ``{"mask": "mask.png"}`` (a binary mask image: 0 / 255 or
    0 / 1, the image's size; a relative path is taken from the JSON file's folder, else the current one)."""
    import numpy as np
    from PIL import Image

    data, source, base = _read_json_list(spec, "--regions", "regions", "regions (boxes, RLE masks, polygons)")
    out = []
    for k, region in enumerate(data):
        if isinstance(region, dict) and "mask" in region and "counts" not in region:
            if not isinstance(region["mask"], str):
                _fail(f"{source}: region {k}: 'mask' must be the path of a mask image")
            path = Path(region["mask"])
            path = path if path.is_absolute() else base / path
            try:
                with Image.open(path) as im:
                    region = np.asarray(im.convert("L") if im.mode not in ("1", "L") else im)
            except (OSError, ValueError) as exc:
                _fail(f"{source}: region {k}: could not read the mask image '{path}': {exc}")
        out.append(region)
    return out


def answer_markup(answer: Any) -> "Any":
    """The answer's text as a rich ``Text`` with each grounded phrase in its drawing colour, followed by
    its box indices (dim)."""
    from rich.text import Text

    from chatrex.grounding.visualize import phrase_colors

    colors = phrase_colors(answer)
    out = Text()
    pos = 0
    for g in sorted(answer.groundings, key=lambda g: g.span):
        start, end = g.span
        out.append(answer.text[pos:start])
        r, gg, b = colors[g.phrase]
        out.append(answer.text[start:end], style=f"bold rgb({r},{gg},{b})")
        out.append("[" + ",".join(str(i) for i in g.indices) + "]", style="dim")
        pos = end
    out.append(answer.text[pos:])
    return out


def predict(
    image: Path = typer.Argument(..., help="Image file to ask about."),
    question: str = typer.Argument(..., help="The question or task prompt (see chatrex.grounding.build_prompt)."),
    model: Optional[Path] = typer.Option(
        None, "--model", "-m", help="Model directory with upn/ and chatrex/ (default: the shipped chatrex/assets/chatrex-small), "
        "or an MLLM folder alone: an official ChatRex-7B / RexSeek checkpoint or a saved chatrex/ folder (with --upn or --boxes)."
    ),
    upn: Optional[Path] = typer.Option(
        None, "--upn", help="UPN checkpoint for the proposals: an official .pth (upn_large.pth) or a saved UPN folder "
        "(default: the model directory's upn/)."
    ),
    granularity: Granularity = typer.Option(
        Granularity.fine, "--granularity", "-g", help="UPN proposals: fine (parts, small objects) or coarse (whole objects)."
    ),
    boxes: Optional[str] = typer.Option(
        None, "--boxes", "-b", help="Your own boxes instead of UPN proposals: inline JSON [[x0,y0,x1,y1],...] or a JSON file."
    ),
    regions: Optional[str] = typer.Option(
        None, "--regions", "-r",
        help="Your own regions, boxes and masks mixed, instead of UPN proposals: inline JSON or a JSON file with a "
             "list of [x0,y0,x1,y1], COCO RLE {\"size\": [H, W], \"counts\": ...}, COCO polygons [[x,y,x,y,...]] "
             "or {\"mask\": \"mask.png\"}.",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Picture to write with the grounded boxes drawn (.jpg, .png); an existing folder "
        "gets IMAGE-predict.<suffix>."
    ),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="JSON result to write (default: the picture's path with .json when --out is given)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="MLLM dtype: float32, bfloat16, float16 (default: as saved; official checkpoints: "
        "bfloat16 on a GPU, float32 on the CPU)."),
    min_score: Optional[float] = typer.Option(
        None, "--min-score", help="Keep UPN proposals with score >= this (default: the model's pipeline_config.json, else 0.3)."
    ),
    nms: Optional[float] = typer.Option(
        None, "--nms", help="NMS IoU threshold of the proposals, <= 0 turns NMS off (default: the model's, else 0.8)."
    ),
    max_boxes: int = typer.Option(100, "--max-boxes", help="Most boxes given to the model (1..100)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Longest answer, in tokens."),
    stream: bool = typer.Option(False, "--stream", help="Print the raw answer while it is generated."),
    max_question_chars: int = typer.Option(
        MAX_QUESTION_CHARS, "--max-question-chars", min=1, help="Refuse longer questions (they make answers slow)."
    ),
) -> None:
    """Answer a question about an image with every mentioned object grounded to a box."""
    from rich.console import Console

    from chatrex.interfaces.pipeline import DEFAULT_MODEL_DIR
    from chatrex.utils.image import ImageLoadError, load_image

    console = Console(stderr=True)
    model_dir = model if model is not None else DEFAULT_MODEL_DIR
    if not model_dir.is_dir():
        hint = " (the shipped default model is not installed; pass --model DIR)" if model is None else ""
        _fail(f"model directory '{model_dir}' does not exist{hint}")
    if not image.is_file():
        _fail(f"image '{image}' does not exist or is not a file")
    check_question(question, max_question_chars)
    if not 1 <= max_boxes <= 100:
        _fail(f"--max-boxes must be in 1..100, got {max_boxes}")
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        _fail(f"--min-score must be in [0, 1], got {min_score}")
    if max_new_tokens < 1:
        _fail(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if out is not None:
        out = picture_path(out, image, "predict")
    if json_path is None and out is not None:
        json_path = out.with_suffix(".json")
    if out is not None and json_path is not None and json_path.resolve() == out.resolve():
        _fail(f"--json and --out are the same file '{out}'")
    if boxes is not None and regions is not None:
        _fail("pass --boxes or --regions, not both (--regions takes boxes and masks)")
    if out is not None:  # before the model loads, not after the answer
        check_writable(out, "the picture")
    if json_path is not None:
        check_writable(json_path, "the JSON")
    user_boxes = _read_boxes(boxes) if boxes is not None else None
    user_regions = _read_regions(regions) if regions is not None else None
    if upn is not None and not upn.exists():
        _fail(f"UPN checkpoint '{upn}' does not exist")
    if upn is None and user_boxes is None and user_regions is None and (model_dir / "config.json").is_file():
        _fail(f"'{model_dir}' is an MLLM folder without a UPN: pass --upn (e.g. upn_large.pth), --boxes or --regions")

    try:
        picture = load_image(image)
    except ImageLoadError as exc:
        _fail(str(exc))

    from chatrex.interfaces.pipeline import ChatRexPipeline, validate_boxes, validate_regions

    if user_boxes is not None:
        try:
            validate_boxes(user_boxes, picture.width, picture.height, max_boxes, where="--boxes")
        except ValueError as exc:
            _fail(str(exc))
    if user_regions is not None:
        try:  # masks decoded once, before the model loads
            user_regions = validate_regions(user_regions, picture.width, picture.height, max_boxes,
                                            where="--regions")[0]
        except ValueError as exc:
            _fail(str(exc))
    with console.status(f"loading the model from {model_dir}"):
        try:
            pipe = ChatRexPipeline.from_pretrained(model_dir, device=device, dtype=dtype, upn=upn)
        except model_load_errors() as exc:  # a bad directory / device / dtype; anything else is a bug: traced
            _fail(f"could not load the model from '{model_dir}': {type(exc).__name__}: {exc}", exc)
    from chatrex.interfaces.model_card import model_card_line

    card_line = model_card_line(pipe)
    if card_line:  # e.g. the shipped model: it knows only the procedural world
        from rich.markup import escape

        console.print(f"[yellow]model:[/yellow] {escape(card_line)}", highlight=False)

    kwargs = dict(boxes=user_boxes, regions=user_regions, granularity=granularity.value, min_score=min_score,
                  nms=nms, max_boxes=max_boxes, max_new_tokens=max_new_tokens)
    try:
        if stream:
            streaming = pipe.stream(picture, question, **kwargs)
            for piece in streaming:
                console.print(piece, end="", markup=False, highlight=False)
            console.print()
            result = streaming.result()
        else:
            with console.status("proposing boxes and generating the answer"):
                result = pipe([picture], question, boxes=None if user_boxes is None else [user_boxes],
                              regions=None if user_regions is None else [user_regions],
                              **{k: v for k, v in kwargs.items() if k not in ("boxes", "regions")})[0]
    except ValueError as exc:  # bad boxes or masks, a question naming a missing <objK>, ...
        _fail(str(exc), exc)

    stdout = Console()
    stdout.print(answer_markup(result.answer))
    for note in result.answer.dropped:
        console.print(f"[yellow]note:[/yellow] {note}", markup=True, highlight=False)
    if user_regions is not None:
        n_masks = sum(m is not None for m in (result.masks or []))
        source = f"your regions ({n_masks} masks)"
    else:
        source = "your boxes" if user_boxes is not None else f"UPN {granularity.value}-grained proposals"
    console.print(
        f"{len(result.boxes)} boxes from {source}; {len(result.answer.groundings)} groundings", highlight=False
    )

    if out is not None:
        from chatrex.grounding.visualize import draw_grounded
        from chatrex.utils.atomic import open_atomic

        try:
            with open_atomic(out, "wb") as handle:
                drawn = draw_grounded(picture, result.answer, result.boxes, masks=result.masks)
                drawn.save(handle, format=picture_formats()[out.suffix.lower()])
        except OSError as exc:
            _fail(f"could not write the picture '{out}': {exc}", exc)
        console.print(f"picture -> {out}", highlight=False)
    if json_path is not None:
        record = {
            "image": str(image),
            "width": picture.width,
            "height": picture.height,
            "question": question,
            "model": str(model_dir),
            "model_card": card_line,
            "granularity": granularity.value if user_boxes is None and user_regions is None else None,
            **result.to_dict(),
        }
        from chatrex.utils.atomic import atomic_write_text

        try:
            atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
        except OSError as exc:
            _fail(f"could not write the JSON '{json_path}': {exc}", exc)
        console.print(f"json -> {json_path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
