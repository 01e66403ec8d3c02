"""``chatrex convert SRC DST``: an official ChatRex / RexSeek MLLM folder to our layout, or back."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from chatrex.interfaces.commands.common import fail as _fail


class Target(str, Enum):
    auto = "auto"
    chatrex = "chatrex"
    official = "official"


def convert(
    src: Path = typer.Argument(..., help="An official checkpoint folder (ChatRex-7B, RexSeek), or one of our saved "
                               "chatrex/ model folders in the paper's layout."),
    dst: Path = typer.Argument(..., help="Output folder (must not exist, or be empty)."),
    to: Target = typer.Option(Target.auto, "--to", help="chatrex: official → ours; official: ours → official; "
                              "auto: the other layout than SRC's."),
    vision_tower: Optional[str] = typer.Option(
        None, "--vision-tower", help="--to official: mm_vision_tower to write (a hub id or a folder relative to DST); "
        "default: the original's, a known hub id of the same shape, or the tower written to DST/clip_vision_tower."),
) -> None:
    """Convert an MLLM folder between the official layout and ours (tensors renamed only; the round trip is exact)."""
    from rich.console import Console

    from chatrex.mllm.convert import convert_chatrex_to_official, convert_official_to_chatrex
    from chatrex.mllm.official import OfficialCheckpointError, is_official_dir

    if not src.is_dir():
        _fail(f"'{src}' is not a folder")
    official = is_official_dir(src)
    target = to.value if to is not Target.auto else ("chatrex" if official else "official")
    if target == "chatrex" and not official:
        _fail(f"'{src}' is not an official checkpoint folder (its config.json has no mm_vision_tower)")
    if target == "official" and official:
        _fail(f"'{src}' is already in the official layout")
    if vision_tower is not None and target != "official":
        _fail("--vision-tower applies to --to official only")
    console = Console(stderr=True)
    with console.status(f"converting {src} to the {target} layout"):
        try:
            if target == "chatrex":
                out = convert_official_to_chatrex(src, dst)
            else:
                out = convert_chatrex_to_official(src, dst, vision_tower=vision_tower)
        except (OfficialCheckpointError, FileExistsError, FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
    console.print(f"{target} layout -> {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
