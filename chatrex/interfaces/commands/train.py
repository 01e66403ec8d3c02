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


@train_app.command("mask-adapter")
def mask_adapter(
    model_dir: Path = typer.Argument(..., help="a model directory (upn/ + chatrex/) or its chatrex/ folder"),
    data: list[Path] = typer.Option(..., "--data", "-d", help="JSONL records whose regions carry masks (world data)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write a copy here (default: change MODEL_DIR in place)"),
    hidden: int = typer.Option(256, min=1, help="the adapter's hidden width"),
    epochs: int = typer.Option(30, min=1),
    images: int = typer.Option(0, min=0, help="use the first N records (0: all)"),
    levels: str = typer.Option("instance,part", help="regions to learn from"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda for the feature pass (default: cuda when available)"),
    features: Optional[Path] = typer.Option(None, help="cache of the extracted features (.pt): read if it exists, "
                                                      "else written; a cache of another model or data is not detected"),
) -> None:
    """Teach a model trained on box regions to read mask regions: add a mask adapter fitted to the model's own
    box tokens (chatrex.training.mask_adapter). Box answers stay exactly as they were."""
    import json
    import shutil

    import torch
    from rich.console import Console

    from chatrex.interfaces.commands.common import fail
    from chatrex.interfaces.pipeline import CHATREX_SUBDIR
    from chatrex.mllm.delta import DeltaError, add_module_to_delta, is_delta_dir, load_delta
    from chatrex.mllm.modeling_chatrex import ChatRexForConditionalGeneration
    from chatrex.mllm.official import is_official_dir
    from chatrex.mllm.processing_chatrex import ChatRexProcessor
    from chatrex.training.mask_adapter import (MaskAdapterConfig, RegionFeatures, extract_region_features,
                                               fit_mask_adapter)
    from chatrex.upn.wrapper import resolve_device
    from chatrex.utils.atomic import open_atomic, staged_directory

    console = Console(stderr=True)
    try:
        cfg = MaskAdapterConfig(hidden=hidden, epochs=epochs, images=images,
                                levels=tuple(x.strip() for x in levels.split(",") if x.strip()))
    except ValueError as exc:
        fail(str(exc), exc)
    source = model_dir / CHATREX_SUBDIR if (model_dir / CHATREX_SUBDIR).is_dir() else model_dir
    if is_official_dir(source):
        fail(f"{source} is an official checkpoint, which has no place for a mask adapter; convert it first "
             "(chatrex convert) and fit the adapter on the converted folder")
    root = out or model_dir
    if out is not None:
        if not model_dir.is_dir():
            fail(f"{model_dir} is not a directory")
        with staged_directory(out) as staging:
            shutil.copytree(model_dir, staging, dirs_exist_ok=True)
    mllm_dir = root / CHATREX_SUBDIR if (root / CHATREX_SUBDIR).is_dir() else root
    delta = is_delta_dir(mllm_dir)
    if not delta and not (mllm_dir / "config.json").is_file():
        fail(f"{mllm_dir} holds neither a ChatRex delta nor a saved ChatRex model")
    try:
        dev = resolve_device(device)
        model = (load_delta(mllm_dir)[0] if delta else ChatRexForConditionalGeneration.from_pretrained(mllm_dir))
        if getattr(model.config, "mask_adapter_dim", 0):
            console.print(f"{mllm_dir} already has a mask adapter: it is fitted again from scratch")
        processor = ChatRexProcessor.from_pretrained(mllm_dir)
        model = model.to(dev).eval()
        if features is not None and features.is_file():
            feats = RegionFeatures.from_state(torch.load(features, weights_only=True))
        else:
            feats = extract_region_features(
                model, processor, [str(d) for d in data], cfg,
                progress=lambda i, n: console.print(f"features: {i}/{n} images") if i % 500 == 0 or i == n else None)
            if features is not None:
                with open_atomic(features, "wb", encoding=None) as f:
                    torch.save(feats.state(), f)
        console.print(f"{len(feats)} regions of {feats.images} images")
        adapter, report = fit_mask_adapter(model, feats, cfg, log=console.print)
        tensors = {f"mm_mask_adapter.{k}": v for k, v in adapter.state_dict().items()}
        if delta:
            add_module_to_delta(mllm_dir, "mask_adapter", tensors, {"mask_adapter_dim": cfg.hidden})
        else:
            model.config.mask_adapter_dim = cfg.hidden
            model.mm_mask_adapter = adapter
            model.save_pretrained(mllm_dir)
    except (ValueError, FileNotFoundError, DeltaError) as exc:
        fail(str(exc), exc)
    console.print(json.dumps(report.as_dict()))
    typer.echo(str(mllm_dir))


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
