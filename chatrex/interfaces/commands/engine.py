"""``chatrex engine run`` and ``chatrex engine status``: the data engine for folders of real images."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

engine_app = typer.Typer(
    help="The data engine: caption, extract phrases, ground, caption regions and write referring "
    "expressions for a folder of real images (resumable).",
    no_args_is_help=True,
)


class Backend(str, Enum):
    local = "local"
    ray = "ray"


class OnError(str, Enum):
    raise_ = "raise"
    log = "log"


def _fail(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    raise typer.Exit(code=1)


@engine_app.command("run")
def run(
    images_dir: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: records.jsonl, rejected.jsonl, state.json."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker processes (local) or actors (ray)."),
    backend: Backend = typer.Option(Backend.local, "--backend", help="local: multiprocessing; ray: Ray Data."),
    steps: Optional[str] = typer.Option(
        None, "--steps",
        help="Steps spec: 'module:factory', a JSON file, or inline JSON ({'factory', 'kwargs'} or one entry "
        "per stage). See docs/data_engine.md.",
    ),
    model: Optional[Path] = typer.Option(
        None, "--model", help="Serve every model stage with a ChatRex pipeline directory (upn/ + chatrex/)."
    ),
    device: str = typer.Option("cpu", "--device", help="Device for --model (cpu, cuda, ...)."),
    min_score: float = typer.Option(0.0, "--min-score", help="Drop grounded boxes scoring below this."),
    min_side: int = typer.Option(64, "--min-side", min=1, help="Drop images with a shorter side below this."),
    on_error: OnError = typer.Option(
        OnError.raise_, "--on-error", help="raise: stop at the first failing image; log: record it and go on."
    ),
    split: Optional[str] = typer.Option(None, "--split", help="Split name written into every record."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Process at most this many pending images."),
    start_method: str = typer.Option("spawn", "--start-method", help="multiprocessing start method (spawn, fork, forkserver)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Annotate a folder of images into grounded records; rerun the same command to resume."""
    from rich.console import Console

    from chatrex.data.engine import (
        EngineBackendError,
        EngineConfig,
        EngineStoreError,
        ImageFilterConfig,
        ImageProcessingError,
        StepsSpec,
        StepsSpecError,
        parse_steps_spec,
        run_engine,
    )

    console = Console(stderr=True)
    if not images_dir.is_dir():
        _fail(f"image folder '{images_dir}' does not exist or is not a folder")
    if (steps is None) == (model is None):
        _fail("give exactly one of --steps (a steps spec) or --model (a ChatRex pipeline directory)")
    try:
        if model is not None:
            if not model.is_dir():
                _fail(f"model directory '{model}' does not exist")
            spec = StepsSpec("chatrex.interfaces.engine_steps:build_chatrex_steps",
                             {"model_dir": str(model.resolve()), "device": device})
        else:
            spec = parse_steps_spec(steps)
        spec.check()
    except StepsSpecError as exc:
        _fail(f"bad --steps: {exc}")
    config = EngineConfig(
        image_filter=ImageFilterConfig(min_side=min_side, min_pixels=min_side * min_side),
        min_score=min_score, on_error=on_error.value, split=split,
    )
    try:
        summary = run_engine(images_dir, out, spec, workers=workers, backend=backend.value, config=config,
                             progress=progress, limit=limit, start_method=start_method)
    except EngineBackendError as exc:
        _fail(str(exc))
    except (EngineStoreError, StepsSpecError) as exc:
        _fail(str(exc))
    except ImageProcessingError as exc:
        _fail(f"{exc}\nfinished images are saved in '{out}'; fix the problem and rerun to resume "
              "(or use --on-error log)")
    except KeyboardInterrupt:
        console.print(f"interrupted; finished images are saved in '{out}'. Rerun the same command to resume.")
        raise typer.Exit(code=130)
    for note in summary.repairs:
        console.print(f"[yellow]repaired:[/yellow] {note}")
    console.print(
        f"{summary.done} image(s) annotated, {summary.rejected} rejected, {summary.failed} failed, "
        f"{summary.skipped} already finished (of {summary.total}); records: {summary.records_path}"
    )


@engine_app.command("status")
def status(out: Path = typer.Argument(..., help="Output folder of an engine run.")) -> None:
    """Show the counts and status of an engine run."""
    import json

    from rich.console import Console

    state_path = out / "state.json"
    if not state_path.is_file():
        _fail(f"'{out}' holds no engine run (no state.json)")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        _fail(f"'{state_path}' is not valid JSON ({exc})")
    counts = state.get("counts", {})
    Console().print(
        f"status: {state.get('status')}  total: {state.get('total')}  done: {counts.get('done', 0)}  "
        f"rejected: {counts.get('rejected', 0)}  failed: {counts.get('failed', 0)}  runs: {len(state.get('runs', []))}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(engine_app, name="engine")
