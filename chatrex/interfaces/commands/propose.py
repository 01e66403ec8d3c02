"""``chatrex propose``: run the Universal Proposal Network on one image, draw and save the kept boxes."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer


class Granularity(str, Enum):
    fine = "fine"
    coarse = "coarse"


def _fail(message: str) -> None:
    from rich.console import Console

    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    raise typer.Exit(code=1)


def propose(
    image: Path = typer.Argument(..., help="Image file to propose boxes for."),
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", "-c", help="Official UPN .pth file or a save_pretrained directory."
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
    out: Path = typer.Option(..., "--out", "-o", help="Picture to write, with each kept box labelled."),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="JSON of kept boxes and scores (default: the picture's path with .json)."
    ),
) -> None:
    """Propose object boxes with UPN; write a labelled picture and a JSON of the kept boxes."""
    from rich.console import Console

    from chatrex.utils.image import ImageLoadError, load_image
    from chatrex.utils.visualize import draw_boxes

    console = Console(stderr=True)
    if not image.is_file():
        _fail(f"image '{image}' does not exist or is not a file")
    if not checkpoint.exists():
        _fail(f"checkpoint '{checkpoint}' does not exist")
    if not 0.0 <= min_score <= 1.0:
        _fail(f"--min-score must be in [0, 1], got {min_score}")
    from PIL import Image

    if out.suffix.lower() not in Image.registered_extensions():
        _fail(f"cannot write a picture with extension '{out.suffix}' ('{out}'); use .jpg or .png")
    json_path = json_path or out.with_suffix(".json")
    if json_path.resolve() == out.resolve():
        _fail(f"--json and --out are the same file '{out}'")

    try:
        picture = load_image(image)
    except ImageLoadError as exc:
        _fail(str(exc))

    from chatrex.upn.wrapper import UPNWrapper

    with console.status(f"loading UPN from {checkpoint}"):
        try:
            size = {"resize": resize} | ({} if max_size is None else {"max_size": max_size})
            upn = UPNWrapper(checkpoint, config=config, device=device, **size)
        except Exception as exc:  # any failure here is a bad checkpoint/config/device: report, don't trace
            _fail(f"could not load the UPN checkpoint '{checkpoint}': {type(exc).__name__}: {exc}")
    with console.status(f"proposing {granularity.value}-grained boxes"):
        props = upn.inference(picture, prompt_type=granularity.value)
        kept = upn.filter(props, min_score=min_score, nms_value=nms)
    boxes, scores = kept["original_xyxy_boxes"][0], kept["scores"][0]

    labels = [f"{i} {s:.2f}" for i, s in enumerate(scores)]
    drawn = draw_boxes(picture, boxes, labels=labels)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        drawn.save(out)
    except (ValueError, OSError) as exc:
        _fail(f"could not write the picture '{out}': {exc}")
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
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        _fail(f"could not write the JSON '{json_path}': {exc}")
    Console().print(f"{len(boxes)} boxes kept -> {out} and {json_path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("propose")(propose)
