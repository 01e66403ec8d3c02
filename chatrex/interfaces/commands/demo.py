"""``chatrex demo``: load a model and serve the Gradio web demo (:mod:`chatrex.interfaces.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from chatrex.interfaces.commands.common import fail as _fail
from chatrex.interfaces.commands.common import model_load_errors

#: Image files offered as examples from ``--examples DIR``.
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _example_images(folder: Optional[Path]) -> list[Path]:
    """The images directly in ``folder`` (sorted), or none without a folder."""
    if folder is None:
        return []
    if not folder.is_dir():
        _fail(f"--examples '{folder}' is not a folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES and p.is_file())
    if not images:
        _fail(f"--examples '{folder}' holds no {', '.join(EXAMPLE_SUFFIXES)} images")
    return images


def demo(
    model: Optional[Path] = typer.Option(
        None, "--model", "-m", help="Model directory with upn/ and chatrex/ (default: the shipped chatrex/assets/chatrex-small), "
        "or an MLLM folder alone (an official ChatRex-7B / RexSeek checkpoint) with --upn."
    ),
    upn: Optional[Path] = typer.Option(
        None, "--upn", help="UPN checkpoint: an official .pth (upn_large.pth) or a saved UPN folder (default: the model's upn/)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="MLLM dtype: float32, bfloat16, float16 (default: as saved)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (0.0.0.0: every interface)."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="Port (default: Gradio's, 7860 or the next free one)."),
    share: bool = typer.Option(False, "--share/--no-share", help="Also ask Gradio for a public share link."),
    examples: Optional[Path] = typer.Option(None, "--examples", help="Folder of example images shown under the image input."),
    generation: str = typer.Option("auto", "--generation", help="Decoding: auto (compiled static cache on CUDA, "
                                   "else the static cache uncompiled), default, static, compiled."),
) -> None:
    """Serve a web page to ask ChatRex about your images: tasks, your own boxes, the grounded answer drawn."""
    from chatrex.interfaces.pipeline import DEFAULT_MODEL_DIR

    model_dir = model if model is not None else DEFAULT_MODEL_DIR
    if not model_dir.is_dir():
        hint = " (the shipped default model is not installed; pass --model DIR)" if model is None else ""
        _fail(f"model directory '{model_dir}' does not exist{hint}")
    example_paths = _example_images(examples)
    if upn is not None and not upn.exists():
        _fail(f"UPN checkpoint '{upn}' does not exist")
    if upn is None and (model_dir / "config.json").is_file():
        _fail(f"'{model_dir}' is an MLLM folder without a UPN: pass --upn (e.g. upn_large.pth)")

    from chatrex.interfaces.demo import build_demo, import_gradio
    from chatrex.interfaces.model_card import model_card_line

    try:
        import_gradio()
    except ImportError as exc:
        _fail(str(exc))
    from rich.console import Console

    from chatrex.interfaces.pipeline import ChatRexPipeline

    with Console(stderr=True).status(f"loading the model from {model_dir}"):
        try:
            pipe = ChatRexPipeline.from_pretrained(model_dir, device=device, dtype=dtype, upn=upn, generation=generation)
        except model_load_errors() as exc:  # a bad directory / device / dtype; anything else is a bug: traced
            _fail(f"could not load the model from '{model_dir}': {type(exc).__name__}: {exc}", exc)
    app = build_demo(pipe, model_name=str(model_dir), examples=example_paths, model_card=model_card_line(pipe))
    app.launch(server_name=host, server_port=port, share=share)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
