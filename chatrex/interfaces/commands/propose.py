"""``chatrex propose``: run the Universal Proposal Network on one image, draw and save the kept boxes."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from chatrex.interfaces.commands.common import check_writable, model_load_errors, picture_formats, picture_path
from chatrex.interfaces.commands.common import fail as _fail


class Granularity(str, Enum):
    fine = "fine"
    coarse = "coarse"


def propose(
    image: Path = typer.Argument(..., help="Image file to propose boxes for."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", "-c", help="Official UPN .pth file or a save_pretrained directory "
        "(default: the shipped UPN, chatrex-small/upn in the package's assets folder)."
    ),
    config: str = typer.Option("upn_large", "--config", help="Preset name or config JSON (for .pth files)."),
    granularity: Granularity = typer.Option(
        Granularity.fine, "--granularity", "-g", help="fine: parts and small objects; coarse: whole objects."
    ),
    min_score: float = typer.Option(0.3, "--min-score", help="Keep boxes with score >= this."),
    nms: float = typer.Option(0.8, "--nms", help="NMS IoU threshold (<= 0 turns NMS off)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    resize: Optional[int] = typer.Option(
        None, "--resize", min=1, help="Short side of the model input (default: the checkpoint directory's, else 800)."
    ),
    max_size: Optional[int] = typer.Option(
        None, "--max-size", min=1, help="Bound on the input's long side (default: the checkpoint directory's, else 1333)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Picture to write, with each kept box labelled (.jpg, .png); an existing folder "
        "gets IMAGE-propose.<suffix>."
    ),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="JSON of kept boxes and scores (default: the picture's path with .json)."
    ),
) -> None:
    """Propose object boxes with UPN; write a labelled picture and a JSON of the kept boxes."""
    from rich.console import Console

    from chatrex.interfaces.pipeline import DEFAULT_MODEL_DIR, UPN_SUBDIR
    from chatrex.utils.image import ImageLoadError, load_image
    from chatrex.utils.visualize import draw_boxes

    console = Console(stderr=True)
    if not image.is_file():
        _fail(f"image '{image}' does not exist or is not a file")
    if checkpoint is None:
        checkpoint = DEFAULT_MODEL_DIR / UPN_SUBDIR
        if not checkpoint.is_dir():
            _fail(f"the shipped UPN '{checkpoint}' is not installed; pass --checkpoint (a .pth file or a directory)")
    if not checkpoint.exists():
        _fail(f"checkpoint '{checkpoint}' does not exist")
    if not 0.0 <= min_score <= 1.0:
        _fail(f"--min-score must be in [0, 1], got {min_score}")
    out = picture_path(out, image, "propose")
    json_path = json_path or out.with_suffix(".json")
    if json_path.resolve() == out.resolve():
        _fail(f"--json and --out are the same file '{out}'")
    check_writable(out, "the picture")  # before the model loads, not after the proposals
    check_writable(json_path, "the JSON")

    try:
        picture = load_image(image)
    except ImageLoadError as exc:
        _fail(str(exc))

    from chatrex.upn.wrapper import UPNWrapper

    with console.status(f"loading UPN from {checkpoint}"):
        try:
            size = {"resize": resize} | ({} if max_size is None else {"max_size": max_size})
            upn = UPNWrapper(checkpoint, config=config, device=device, **size)
        except model_load_errors() as exc:  # a bad checkpoint / config / device; anything else is a bug: traced
            _fail(f"could not load the UPN checkpoint '{checkpoint}': {type(exc).__name__}: {exc}", exc)
    with console.status(f"proposing {granularity.value}-grained boxes"):
        try:
            props = upn.inference(picture, prompt_type=granularity.value)
        except ValueError as exc:  # e.g. a --resize too small for the model's queries
            _fail(str(exc), exc)
        kept = upn.filter(props, min_score=min_score, nms_value=nms)
    boxes, scores = kept["original_xyxy_boxes"][0], kept["scores"][0]

    labels = [f"{i} {s:.2f}" for i, s in enumerate(scores)]
    drawn = draw_boxes(picture, boxes, labels=labels)
    from chatrex.utils.atomic import atomic_write_text, open_atomic

    try:
        with open_atomic(out, "wb") as handle:
            drawn.save(handle, format=picture_formats()[out.suffix.lower()])
    except OSError as exc:
        _fail(f"could not write the picture '{out}': {exc}", exc)
    record = {
        "image": str(image),
        "width": picture.width,
        "height": picture.height,
        "granularity": granularity.value,
        "min_score": min_score,
        "nms": nms,
        "boxes": boxes,
        "scores": scores,
    }
    try:
        atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        _fail(f"could not write the JSON '{json_path}': {exc}", exc)
    Console().print(f"{len(boxes)} boxes kept -> {out} and {json_path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("propose")(propose)
