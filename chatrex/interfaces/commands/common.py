"""What the commands share: one-line errors for bad input (a traceback for everything else), and output
paths checked before any work starts.

Only the errors that mean "what you gave cannot be used" (a missing or malformed file, a device that is not
here, a bad option) end in a one-line message with exit code 1; anything else is a bug and keeps its
traceback. ``chatrex --debug COMMAND ...`` shows the traceback of the one-line errors too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NoReturn, Optional

import typer


def debug_requested() -> bool:
    """Whether the command line started with ``chatrex --debug``."""
    try:  # newer typer releases run on their own copy of click
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context

    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def fail(message: str, exc: Optional[BaseException] = None) -> NoReturn:
    """Print ``error: message`` on stderr and exit with code 1; under ``--debug``, re-raise ``exc`` (the error
    that caused it) with its traceback instead."""
    if exc is not None and debug_requested():
        raise exc
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    raise typer.Exit(code=1)


def model_load_errors() -> tuple[type[BaseException], ...]:
    """The errors of loading a model that mean the directory, checkpoint, device or dtype given is unusable:
    a missing or unreadable file (``OSError``), a malformed or mismatched config, an unknown device or
    dtype (``ValueError``, which the config, delta and image errors derive from), a checkpoint that does not
    fit (``CheckpointError``) or a corrupt safetensors file."""
    from safetensors import SafetensorError

    from chatrex.upn.checkpoint import CheckpointError

    return (OSError, ValueError, CheckpointError, SafetensorError)


def check_question(question: str, max_chars: int) -> str:
    """``question`` if it is usable text of at most ``max_chars`` characters, else a one-line error.

    Bytes that are not UTF-8 reach Python as lone surrogates (``\\udcXX``); the tokenizer cannot encode
    them, so they are refused here, before the model loads, with the position of the first one.
    """
    if not question.strip():
        fail("the question is empty")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = question[exc.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"character U+{ord(bad):04X}"
        fail(f"the question is not valid UTF-8 text ({byte} at character {exc.start + 1}); "
             "check the terminal's or the file's encoding")
    if len(question) > max_chars:
        fail(f"the question has {len(question):,} characters, more than the limit of {max_chars:,} "
             "(--max-question-chars); a long prompt makes the answer slow and may not fit the model's context")
    return question


def check_writable(path: Path, what: str) -> None:
    """Fail now, before any work, when ``path`` cannot be written: its folder cannot be created or written
    to, or the path is a folder. A probe file is created in the folder and removed."""
    if path.is_dir():
        fail(f"{what} '{path}' is a folder; give a file name")
    folder = path.parent
    for above in (folder, *folder.parents):
        if above.exists():
            if not above.is_dir():
                fail(f"cannot write {what} '{path}': '{above}' is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        fail(f"cannot write {what} '{path}': {exc.strerror or exc}", exc)
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"cannot write {what} '{path}': the file exists and is read-only")


def picture_formats() -> dict[str, str]:
    """File suffix (lower case, with the dot) -> the Pillow format that writes it, for every format Pillow
    can save."""
    from PIL import Image

    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def picture_path(out: Path, image: Path, tag: str) -> Path:
    """The picture file ``--out`` names: ``out`` itself, or, when ``out`` is an existing folder,
    ``out/<image stem>-<tag><suffix>`` (the image's suffix when Pillow can write it, else ``.jpg``). A path
    without a picture suffix that is not a folder, and the input image itself, are refused (one-line errors)."""
    writable = picture_formats()
    if out.is_dir():
        suffix = image.suffix if image.suffix.lower() in writable else ".jpg"
        out = out / f"{image.stem}-{tag}{suffix}"
    elif not out.suffix:
        fail(f"--out '{out}' is neither an existing folder nor a picture file name; give e.g. '{out}.jpg' "
             f"or create the folder first")
    elif out.suffix.lower() not in writable:
        fail(f"cannot write a picture with extension '{out.suffix}' ('{out}'); use .jpg or .png")
    if image.exists() and out.exists() and out.resolve() == image.resolve():
        fail(f"--out '{out}' is the input image; it would be overwritten")
    return out


__all__ = ["check_question", "check_writable", "debug_requested", "fail", "model_load_errors", "picture_formats",
           "picture_path"]
