"""``chatrex train upn|vision|chatrex RECIPE``: one entry point for CPU, one GPU and ``torchrun`` (DDP/FSDP)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

#: Exit status of a run that stopped at ``train.stop_after_s`` before its end (EX_TEMPFAIL: try again).
PAUSED_EXIT_CODE = 75

train_app = typer.Typer(help="Train the UPN, the vision towers (stage 0) or a ChatRex stage from a recipe (recipes/*.json).", no_args_is_help=True)


def _overrides(items: Optional[list[str]]) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _run(kind: str, recipe: Path, sets: Optional[list[str]], device: Optional[str], resume: bool) -> None:
    from rich.console import Console

    from chatrex.training.config import TrainConfig, load_recipe
    from chatrex.training.distributed import cleanup
    from chatrex.training.run_lock import RunLockedError
    from chatrex.training.trainer import OutOfDeviceMemory, Trainer

    console = Console(stderr=True)
    try:
        spec = load_recipe(recipe, _overrides(sets))
        if kind == "upn":
            from chatrex.training.upn.task import UPNTask, UPNTaskConfig

            task = UPNTask(UPNTaskConfig.from_dict(spec["task"]))
        elif kind == "vision":
            from chatrex.training.vision_task import VisionTask, VisionTaskConfig

            task = VisionTask(VisionTaskConfig.from_dict(spec["task"]))
        else:
            from chatrex.training.chatrex_task import ChatRexTask, ChatRexTaskConfig

            task = ChatRexTask(ChatRexTaskConfig.from_dict(spec["task"]))
        cfg = TrainConfig.from_dict(spec["train"])
    except (ValueError, TypeError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2)
    try:
        trainer = Trainer(task, cfg, device=device)
        trainer.fit(resume=resume)
    except (OutOfDeviceMemory, RunLockedError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(3)
    finally:
        cleanup()
    if not trainer.completed:
        console.print(f"paused: {cfg.output_dir} holds a checkpoint; run the same command again to continue")
        raise typer.Exit(PAUSED_EXIT_CODE)
    console.print(f"done: {cfg.output_dir} (final model in {Path(cfg.output_dir) / 'final'})")


@train_app.command("upn")
def train_upn(
    recipe: Path = typer.Argument(..., help="recipe JSON, e.g. recipes/upn_small.json"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override, e.g. --set train.lr=1e-4"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)"),
    resume: bool = typer.Option(True, help="continue from the run folder's latest checkpoint"),
) -> None:
    """Train the Universal Proposal Network (both prompts)."""
    _run("upn", recipe, set_, device, resume)


@train_app.command("vision")
def train_vision(
    recipe: Path = typer.Argument(..., help="recipe JSON, e.g. recipes/chatrex_small_stage0.json"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override, e.g. --set train.batch_size=32"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)"),
    resume: bool = typer.Option(True, help="continue from the run folder's latest checkpoint"),
) -> None:
    """Stage 0: pretrain ChatRex's vision towers on the records' boxes and categories."""
    _run("vision", recipe, set_, device, resume)


@train_app.command("chatrex")
def train_chatrex(
    recipe: Path = typer.Argument(..., help="recipe JSON, e.g. recipes/chatrex_small_stage1.json"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override, e.g. --set task.init_from=runs/s1/final"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)"),
    resume: bool = typer.Option(True, help="continue from the run folder's latest checkpoint"),
) -> None:
    """Train one ChatRex stage (stage 1 alignment, stage 2 instruction tuning)."""
    _run("chatrex", recipe, set_, device, resume)


@train_app.command("plot")
def plot(run_dir: Path = typer.Argument(..., help="a run folder holding metrics.jsonl")) -> None:
    """Redraw a run's loss curves (loss.png) from its metrics.jsonl."""
    from chatrex.training.curves import plot_curves

    out = plot_curves(run_dir / "metrics.jsonl", run_dir / "loss.png", title=run_dir.name)
    if out is None:
        typer.echo(f"no metrics in {run_dir}", err=True)
        raise typer.Exit(1)
    typer.echo(str(out))


@train_app.command("assemble")
def assemble(
    upn_dir: Path = typer.Argument(..., help="exported UPN (runs/upn_small/final)"),
    chatrex_dir: Path = typer.Argument(..., help="exported ChatRex stage (runs/chatrex_stage2/final)"),
    out: Path = typer.Argument(..., help="model directory to write (e.g. chatrex/assets/chatrex-small)"),
    min_score: Optional[float] = typer.Option(None, "--min-score", min=0.0, max=1.0,
                                              help="proposal score threshold the pipeline uses (default: official 0.3)"),
    nms: Optional[float] = typer.Option(None, "--nms", min=0.0, max=1.0,
                                        help="proposal NMS IoU the pipeline uses, 0 = none (default: official 0.8)"),
) -> None:
    """Put a trained UPN and ChatRex together into one model directory for `chatrex predict`/`eval`.

    `--min-score` / `--nms` record the proposal filter chosen for this UPN (scripts/sweep_proposal_filter.py).
    Each part is copied into a temporary folder that then replaces the old one, so OUT may hold the
    sources themselves, and a copy that fails keeps the previous model."""
    import json
    import shutil

    from chatrex.interfaces.pipeline import CHATREX_SUBDIR, PIPELINE_CONFIG, UPN_SUBDIR
    from chatrex.upn.wrapper import PREPROCESSOR_CONFIG, recorded_input_size
    from chatrex.utils.atomic import atomic_write_text, staged_directory

    for part in (upn_dir, chatrex_dir):
        if not part.is_dir():
            typer.echo(f"error: {part} is not a directory", err=True)
            raise typer.Exit(2)
    settings = {}
    if (upn_dir / PREPROCESSOR_CONFIG).is_file():  # the input size the UPN was trained for
        try:
            settings = dict(zip(("upn_resize", "upn_max_size"), recorded_input_size(upn_dir)))
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
    settings.update({k: v for k, v in (("min_score", min_score), ("nms", nms)) if v is not None})
    out.mkdir(parents=True, exist_ok=True)
    for src, name in ((upn_dir, UPN_SUBDIR), (chatrex_dir, CHATREX_SUBDIR)):
        with staged_directory(out / name) as staging:
            shutil.copytree(src, staging, dirs_exist_ok=True)
    atomic_write_text(out / PIPELINE_CONFIG, json.dumps(settings, indent=2))
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
