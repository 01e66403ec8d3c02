"""``chatrex world generate`` and ``chatrex world show``: the procedural scene world on disk."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

world_app = typer.Typer(help="The procedural scene world: generate splits with exact annotations, and look at them.",
                        no_args_is_help=True)


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"
    test_comp = "test-comp"


class ImageFormat(str, Enum):
    jpg = "jpg"
    png = "png"


def _fail(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    raise typer.Exit(code=1)


@world_app.command("generate")
def generate(
    n: int = typer.Option(..., "--n", min=0, help="Number of scenes."),
    out: Path = typer.Option(..., "--out", help="Output folder (images/ and <split>.jsonl)."),
    split: Split = typer.Option(Split.train, "--split", help="Which split (fixed, disjoint seed ranges)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes."),
    seed_offset: int = typer.Option(0, "--seed-offset", min=0, help="Added to every seed of the split."),
    image_format: ImageFormat = typer.Option(ImageFormat.jpg, "--format", help="Image file format."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", min=1, help="Images per sub-folder."),
    language: bool = typer.Option(True, "--language/--no-language", help="Run the language pass (captions, phrases, ...)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again instead of resuming."),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="Fixed square image size (default: 256-1024, aspect 0.5-2)."),
) -> None:
    """Generate N scenes of a split into OUT (resumes an interrupted run with the same settings)."""
    from rich.console import Console

    from chatrex.data.world.generate import generate_split
    from chatrex.data.world.scene import WorldConfig

    console = Console(stderr=True)
    config = WorldConfig(image_size=(size, size)) if size else None
    try:
        summary = generate_split(out, n, split.value, workers=workers, seed_offset=seed_offset,
                                 language=language, image_format=image_format.value, shard_size=shard_size,
                                 config=config, overwrite=overwrite)
    except ValueError as e:
        _fail(str(e))
        return
    rate = summary["written"] / summary["seconds"] if summary["seconds"] > 0 else float("nan")
    resumed = f" (resumed after {summary['resumed_from']})" if summary["resumed_from"] else ""
    console.print(f"wrote {summary['written']} scenes{resumed} to {summary['jsonl']} "
                  f"in {summary['seconds']:.1f} s ({rate:.1f} scenes/s), language pass: "
                  f"{'yes' if summary['language'] else 'no'}")


def _caption_of(record: dict) -> str:
    for c in record.get("captions") or []:
        if c.get("kind") == "brief" and c.get("text"):
            return c["text"]
    from collections import Counter

    counts = Counter(r.get("category") or "object" for r in record["regions"] if r.get("level", "instance") == "instance")
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(counts.items())) or "(no objects)"


def render_sample(record: dict, image, cell: int = 320):
    """One tile: the image with part boxes (thin, white) and instance boxes (labelled), the caption below."""
    import textwrap

    from PIL import Image, ImageDraw

    from chatrex.utils.visualize import draw_boxes, get_font

    parts = [r for r in record["regions"] if r.get("level") == "part"]
    instances = [r for r in record["regions"] if r.get("level") != "part"]
    drawn = draw_boxes(image, [r["box"] for r in parts], colors=[(255, 255, 255)] * len(parts), width=1)
    drawn = draw_boxes(drawn, [r["box"] for r in instances], [r.get("category") or "" for r in instances],
                       width=max(2, round(max(image.size) / 300)))
    drawn.thumbnail((cell, cell))
    font = get_font(12)
    lines = textwrap.wrap(_caption_of(record), width=max(10, cell // 7))[:4]
    line_h = 15
    tile = Image.new("RGB", (cell, cell + 6 + line_h * 4), (255, 255, 255))
    tile.paste(drawn, ((cell - drawn.width) // 2, (cell - drawn.height) // 2))
    draw = ImageDraw.Draw(tile)
    for k, line in enumerate(lines):
        draw.text((3, cell + 3 + k * line_h), line, fill=(0, 0, 0), font=font)
    return tile


@world_app.command("show")
def show(
    directory: Path = typer.Argument(..., help="A folder written by `chatrex world generate`."),
    out: Path = typer.Option(..., "--out", help="Contact sheet image to write (e.g. sheet.jpg)."),
    split: Split = typer.Option(Split.train, "--split"),
    n: int = typer.Option(16, "--n", min=1, help="Number of samples (the first N records)."),
    columns: int = typer.Option(4, "--columns", min=1),
    cell: int = typer.Option(320, "--cell", min=64, help="Tile size in pixels."),
) -> None:
    """Draw a contact sheet of samples with their boxes (instances labelled, parts thin and white)
    and each image's brief caption (or its category list)."""
    from itertools import islice

    from chatrex.data.jsonl import RecordError, read_records, resolve_image_path
    from chatrex.utils.image import ImageLoadError, load_image
    from chatrex.utils.visualize import contact_sheet

    jsonl = directory / f"{split.value}.jsonl"
    if not jsonl.is_file():
        _fail(f"no {split.value} split in {directory}: {jsonl} does not exist")
    tiles = []
    try:
        for record in islice(read_records(jsonl, validate=True, check_images=True), n):
            image = load_image(resolve_image_path(record, jsonl))
            tiles.append(render_sample(record, image, cell))
    except (RecordError, ImageLoadError) as e:
        _fail(str(e))
    if not tiles:
        _fail(f"{jsonl} holds no records")
    sheet = contact_sheet(tiles, columns=min(columns, len(tiles)), cell=max(t.height for t in tiles))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    typer.echo(f"wrote a contact sheet of {len(tiles)} samples to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")
