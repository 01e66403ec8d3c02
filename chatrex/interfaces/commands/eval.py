"""``chatrex eval TASK``: the paper's evaluation protocols, and ``chatrex eval summary``.

Each task command loads the model (``ChatRexPipeline.from_pretrained``; the proposals task only the
UPN) and hands it to :func:`chatrex.evaluation.evaluate.evaluate`, which does the work and can be
called directly with any stand-in predictor.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from chatrex.interfaces.commands.common import check_writable, model_load_errors
from chatrex.interfaces.commands.common import fail as _fail


class Granularity(str, Enum):
    fine = "fine"
    coarse = "coarse"


class Level(str, Enum):
    instance = "instance"
    part = "part"
    all = "all"


class BoxKind(str, Enum):
    instances = "instances"
    parts = "parts"
    all = "all"


class ReferringBoxes(str, Enum):
    proposals = "proposals"
    gt = "gt"


class RegionKind(str, Enum):
    boxes = "boxes"
    masks = "masks"


class CaptionKind(str, Enum):
    brief = "brief"
    detailed = "detailed"


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def job_device(device: Optional[str]) -> str:
    """The device of this process: ``device`` (default cuda when available), or in a ``torchrun`` job
    (``WORLD_SIZE`` > 1) this process's GPU after joining the job's process group: the evaluation is
    then spread over the processes (:mod:`chatrex.evaluation.sharding`)."""
    import os

    device = device or _default_device()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from chatrex.training.distributed import init_distributed

        try:
            device = str(init_distributed(device).device)
        except (RuntimeError, ValueError) as exc:
            _fail(f"could not join the torchrun job: {type(exc).__name__}: {exc}", exc)
    return device


def load_pipeline(model: Path, device: Optional[str], upn: Optional[Path] = None) -> Any:
    """``ChatRexPipeline.from_pretrained(model, device=..., upn=...)`` with a clear error on failure."""
    from chatrex.interfaces.pipeline import ChatRexPipeline

    device = job_device(device)
    if upn is not None and not upn.exists():
        _fail(f"UPN checkpoint '{upn}' does not exist")
    try:
        return ChatRexPipeline.from_pretrained(model, device=device or _default_device(), upn=upn)
    except model_load_errors() as exc:  # a bad model dir / device; anything else is a bug: traced
        _fail(f"could not load the ChatRex model from '{model}': {type(exc).__name__}: {exc}", exc)


def load_upn(model: Path, device: Optional[str], config: str) -> Any:
    """The UPN of a ChatRex model directory (``model/upn``, input size from its
    ``pipeline_config.json``), a UPN directory, or an official ``.pth``."""
    import json

    from chatrex.upn.wrapper import UPNWrapper

    device = job_device(device)
    path = model / "upn" if (model / "upn").is_dir() else model
    size = {}
    settings = model / "pipeline_config.json"
    if model.is_dir() and settings.is_file():
        try:
            stored = json.loads(settings.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            _fail(f"'{settings}' is not valid JSON: {exc}")
        if "upn_resize" in stored:
            size["resize"] = stored["upn_resize"]
        if "upn_max_size" in stored:
            size["max_size"] = stored["upn_max_size"]
    try:
        return UPNWrapper(path, config=None if path.is_dir() else config, device=device or _default_device(), **size)
    except model_load_errors() as exc:  # a bad checkpoint / config / device; anything else is a bug: traced
        _fail(f"could not load the UPN from '{path}': {type(exc).__name__}: {exc}", exc)


def results_path(task: str, out: Optional[Path]) -> Path:
    """``--out`` (default ``results/<task>.json``), checked before any model loads: a ``.json`` file whose
    folder can be written (the markdown table goes beside it)."""
    out = out or Path("results") / f"{task}.json"
    if out.suffix.lower() != ".json":
        _fail(f"--out must be a .json file, got '{out}'")
    check_writable(out, "the results file")
    check_writable(out.with_suffix(".md"), "the results table")
    return out


def run_eval_command(
    task: str,
    predictor: Any,
    data: Path,
    images: Optional[Path],
    out: Optional[Path],
    limit: Optional[int],
    batch_size: int,
    model_name: Optional[str] = None,
    progress: bool = True,
    **options: Any,
) -> dict:
    """What every task command does once its model is loaded: evaluate, write, print the headline.

    Bad data, bad options and unreadable model output end with a one-line error (exit code 1).
    """
    from chatrex.evaluation.boxes import BoxError
    from chatrex.evaluation.coco import CocoFormatError
    from chatrex.evaluation.datasets import EvalDataError
    from chatrex.evaluation.evaluate import evaluate
    from chatrex.evaluation.runners.common import PredictorError
    from chatrex.evaluation.sharding import current_shard
    from chatrex.training.distributed import cleanup
    from chatrex.utils.image import ImageLoadError

    out = results_path(task, out)
    try:
        result = evaluate(task, predictor, data, images=images, out=out, limit=limit, batch_size=batch_size,
                          progress=progress, model_name=model_name, **options)
    except (EvalDataError, CocoFormatError, BoxError, ImageLoadError, PredictorError, ValueError, OSError) as exc:
        _fail(f"{task}: {exc}", exc)
    if current_shard().is_main:  # a torchrun job: the merged result, shown once
        show_result(f"{task} ({result['config'].get('data_kind')})", result)
    cleanup()
    return result


def show_result(title: str, result: dict) -> None:
    """Print a result's headline metrics as a table, and where it was written."""
    from rich.console import Console
    from rich.table import Table

    from chatrex.evaluation.report import format_value, scalar_metrics

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    flat = scalar_metrics(result["metrics"])
    for key in result.get("headline") or list(flat):
        if key in flat:
            table.add_row(key, format_value(flat[key]))
    console = Console()
    console.print(table)
    console.print(f"wrote {result['files']['json']} and {result['files']['markdown']}", highlight=False,
                  soft_wrap=True)


# ------------------------------------------------------------------------------------------------
# Shared options
# ------------------------------------------------------------------------------------------------
_MODEL = typer.Option(..., "--model", "-m", help="Model directory (ChatRexPipeline.save layout: upn/ + chatrex/), or an "
                      "MLLM folder alone (an official ChatRex-7B / RexSeek checkpoint) with --upn.")
_UPN = typer.Option(None, "--upn", help="UPN checkpoint (official .pth or saved UPN folder) instead of the model's upn/.")
_DATA = typer.Option(..., "--data", "-d", help="JSONL records, a COCO annotation .json, or a RefCOCO-style .json.")
_IMAGES = typer.Option(None, "--images", help="Image folder for COCO/RefCOCO files (default: the data file's folder).")
_OUT = typer.Option(None, "--out", "-o", help="Results JSON (default results/TASK.json); a .md table is written beside it.")
_LIMIT = typer.Option(None, "--limit", min=0, help="Evaluate only N: the first N images (image tasks), or a fixed "
                      "random N samples spread over the data (referring, region, counting, retrieval).")
_BATCH = typer.Option(8, "--batch-size", "-b", min=1, help="Queries per inference call.")
_DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: cuda when available).")
_GRAN = typer.Option(Granularity.fine, "--granularity", "-g", help="UPN proposals: fine (paper default) or coarse.")
_MIN_SCORE = typer.Option(None, "--min-score", min=0.0, max=1.0,
                          help="UPN score threshold for proposals (default: the model's pipeline_config.json, else 0.3).")
_NMS = typer.Option(None, "--nms", min=0.0, max=1.0,
                    help="NMS IoU of the proposals, 0 = none (default: the model's pipeline_config.json, else 0.8).")
_MAX_BOXES = typer.Option(100, "--max-boxes", min=1, max=100, help="Most proposals given to the model.")
_TOKENS = typer.Option(None, "--max-new-tokens", min=1, help="Cap on generated tokens per answer (default: the model's).")
_LEVEL = typer.Option(Level.instance, "--level", help="World records: which regions count (instance, part, all).")


def _pipeline_task(task: str) -> Callable[..., dict]:
    """Common body of the commands that evaluate the full pipeline."""

    def body(model: Path, data: Path, images, out, limit, batch_size, device, max_new_tokens=None, upn=None,
             **options) -> dict:
        import functools

        if not data.is_file():
            _fail(f"data file '{data}' does not exist")
        results_path(task, out)
        pipe = load_pipeline(model, device, upn)
        if "min_score" in options:  # the filter the report records: the one the model's pipeline uses unless given
            options["min_score"] = pipe.min_score if options["min_score"] is None else options["min_score"]
            options["nms"] = pipe.nms if options.get("nms") is None else options["nms"]
        if max_new_tokens is not None:
            pipe = functools.partial(pipe, max_new_tokens=max_new_tokens)
        return run_eval_command(task, pipe, data, images, out, limit, batch_size, model_name=str(model), **options)

    return body


def detection_cmd(
    model: Path = _MODEL, upn: Optional[Path] = _UPN, data: Path = _DATA, images: Optional[Path] = _IMAGES, out: Optional[Path] = _OUT,
    limit: Optional[int] = _LIMIT, batch_size: int = _BATCH, device: Optional[str] = _DEVICE,
    max_new_tokens: Optional[int] = _TOKENS,
    level: Level = _LEVEL, granularity: Granularity = _GRAN, min_score: Optional[float] = _MIN_SCORE, nms: Optional[float] = _NMS,
    max_boxes: int = _MAX_BOXES,
) -> None:
    """Detection: ground-truth categories asked over UPN proposals; P/R@0.5 per class (macro) and mAP."""
    _pipeline_task("detection")(model, data, images, out, limit, batch_size, device, max_new_tokens, upn=upn, level=level.value,
                                granularity=granularity.value, min_score=min_score, nms=nms, max_boxes=max_boxes)


def proposals_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Model directory with upn/, a UPN directory, or a UPN .pth."),
    data: Path = _DATA, images: Optional[Path] = _IMAGES, out: Optional[Path] = _OUT,
    limit: Optional[int] = _LIMIT, batch_size: int = _BATCH, device: Optional[str] = _DEVICE,
    boxes: BoxKind = typer.Option(BoxKind.all, "--boxes", help="World records: instances, parts or all regions."),
    granularity: Optional[List[Granularity]] = typer.Option(None, "--granularity", "-g",
                                                            help="Repeatable; default both fine and coarse."),
    upn_config: str = typer.Option("upn_large", "--upn-config", help="Config preset for an official .pth."),
    min_score: Optional[float] = typer.Option(None, "--min-score", min=0.0, max=1.0,
                                              help="Keep proposals scoring at least this (default: all)."),
    nms: Optional[float] = typer.Option(None, "--nms", min=0.0, max=1.0,
                                        help="NMS at this IoU first (default: none). --min-score 0.3 --nms 0.8 "
                                             "counts what the pipeline gives ChatRex."),
) -> None:
    """Proposal recall of the UPN: AR@10/100/300/900 and recall@0.5, per granularity."""
    if not data.is_file():
        _fail(f"data file '{data}' does not exist")
    if not model.exists():
        _fail(f"model '{model}' does not exist")
    results_path("proposals", out)
    upn = load_upn(model, device, upn_config)
    grans = [g.value for g in granularity] if granularity else ["fine", "coarse"]
    run_eval_command("proposals", upn, data, images, out, limit, batch_size, model_name=str(model),
                     kind=boxes.value, granularities=grans, min_score=min_score, nms=nms)


def referring_cmd(
    model: Path = _MODEL, upn: Optional[Path] = _UPN, data: Path = _DATA, images: Optional[Path] = _IMAGES, out: Optional[Path] = _OUT,
    limit: Optional[int] = _LIMIT, batch_size: int = _BATCH, device: Optional[str] = _DEVICE,
    max_new_tokens: Optional[int] = _TOKENS,
    granularity: Granularity = _GRAN, min_score: Optional[float] = _MIN_SCORE, nms: Optional[float] = _NMS, max_boxes: int = _MAX_BOXES,
    boxes: ReferringBoxes = typer.Option(ReferringBoxes.proposals, "--boxes",
                                         help="proposals (UPN, the paper's protocol) or gt (world records: the "
                                              "image's ground-truth regions; reports chance@0.5 too)."),
) -> None:
    """Referring expressions: Acc@0.5 of the first grounded box, and the oracle (a fitting box given).

    World records: also per region level, and where wrong picks went (wrong/*; with Acc they sum to 1)."""
    _pipeline_task("referring")(model, data, images, out, limit, batch_size, device, max_new_tokens, upn=upn, granularity=granularity.value,
                                min_score=min_score, nms=nms, max_boxes=max_boxes, boxes=boxes.value)


def region_cmd(
    model: Path = _MODEL, upn: Optional[Path] = _UPN, data: Path = _DATA, images: Optional[Path] = _IMAGES, out: Optional[Path] = _OUT,
    limit: Optional[int] = _LIMIT, batch_size: int = _BATCH, device: Optional[str] = _DEVICE,
    max_new_tokens: Optional[int] = _TOKENS,
    tasks: str = typer.Option("category,classification,phrase,brief,sentence", "--tasks",
                              help="Comma-separated: category, classification, phrase, brief, sentence."),
    level: Level = typer.Option(Level.all, "--level", help="World records: which regions are asked about."),
    regions: RegionKind = typer.Option(RegionKind.boxes, "--regions",
                                       help="Give the model each region's ground-truth box or its mask "
                                            "(records' regions[*].mask, a COCO file's segmentation)."),
    candidates: int = typer.Option(0, "--candidates", min=0,
                                   help="Classification: categories listed per question; 0 = the whole category "
                                        "list (RegionGPT's protocol), N = the true one and N-1 random others."),
) -> None:
    """Region understanding: category accuracy, SS / S-IoU, classification from the category list (top-1),
    caption BLEU/METEOR/ROUGE-L/CIDEr; on ground-truth boxes or masks."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    _pipeline_task("region")(model, data, images, out, limit, batch_size, device, max_new_tokens, upn=upn, tasks=names,
                             level=level.value, regions=regions.value, candidates=candidates)


def grounded_caption_cmd(
    model: Path = _MODEL, upn: Optional[Path] = _UPN, data: Path = _DATA, images: Optional[Path] = _IMAGES, out: Optional[Path] = _OUT,
    limit: Optional[int] = _LIMIT, batch_size: int = _BATCH, device: Optional[str] = _DEVICE,
    max_new_tokens: Optional[int] = _TOKENS,
    kind: CaptionKind = typer.Option(CaptionKind.brief, "--kind", help="brief or detailed captions."),
    granularity: Granularity = _GRAN, min_score: Optional[float] = _MIN_SCORE, nms: Optional[float] = _NMS, max_boxes: int = _MAX_BOXES,
) -> None:
    """Grounded captions: phrase–box F1 (IoU 0.5, same phrase or synonym) and caption text scores."""
    _pipeline_task("grounded-caption")(model, data, images, out, limit, batch_size, device, max_new_tokens, upn=upn, kind=kind.value,
                                       granularity=granularity.value, min_score=min_score, nms=nms, max_boxes=max_boxes)


def counting_cmd(
    model: Path = _MODEL, upn: Optional[Path] = _UPN, data: Path = _DATA, images: Optional[Path] = _IMAGES, out: Optional[Path] = _OUT,
    limit: Optional[int] = _LIMIT, batch_size: int = _BATCH, device: Optional[str] = _DEVICE,
    max_new_tokens: Optional[int] = _TOKENS,
    level: Level = _LEVEL, granularity: Granularity = _GRAN, min_score: Optional[float] = _MIN_SCORE, nms: Optional[float] = _NMS,
    max_boxes: int = _MAX_BOXES,
) -> None:
    """Counting: exact-match accuracy of the number stated in the answer."""
    _pipeline_task("counting")(model, data, images, out, limit, batch_size, device, max_new_tokens, upn=upn, level=level.value,
                               granularity=granularity.value, min_score=min_score, nms=nms, max_boxes=max_boxes)


def pope_cmd(
    model: Path = _MODEL, upn: Optional[Path] = _UPN, data: Path = _DATA, images: Optional[Path] = _IMAGES, out: Optional[Path] = _OUT,
    limit: Optional[int] = _LIMIT, batch_size: int = _BATCH, device: Optional[str] = _DEVICE,
    max_new_tokens: Optional[int] = _TOKENS,
    settings: str = typer.Option("random,popular,adversarial", "--settings", help="Comma-separated negative sampling."),
    per_image: int = typer.Option(3, "--per-image", min=1, help="Yes questions (and as many no questions) per image."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    level: Level = _LEVEL, granularity: Granularity = _GRAN,
) -> None:
    """POPE-style existence yes/no: accuracy, precision, recall, F1, yes-ratio per setting."""
    names = [s.strip() for s in settings.split(",") if s.strip()]
    _pipeline_task("pope")(model, data, images, out, limit, batch_size, device, max_new_tokens, upn=upn, settings=names,
                           num_per_image=per_image, seed=seed, level=level.value, granularity=granularity.value)


def object_tokens_cmd(
    model: Path = _MODEL, upn: Optional[Path] = _UPN, data: Path = _DATA, images: Optional[Path] = _IMAGES, out: Optional[Path] = _OUT,
    limit: Optional[int] = _LIMIT, device: Optional[str] = _DEVICE, level: Level = _LEVEL,
) -> None:
    """Diagnostics of the object path on ground-truth boxes: how alike the boxes' tokens are, and how much
    of their category a linear probe reads from them (no generation)."""
    if not data.is_file():
        _fail(f"data file '{data}' does not exist")
    pipe = load_pipeline(model, device, upn)
    run_eval_command("object-tokens", pipe, data, images, out, limit, 1, model_name=str(model), level=level.value)


def retrieval_cmd(
    model: Path = _MODEL, upn: Optional[Path] = _UPN, data: Path = _DATA, images: Optional[Path] = _IMAGES, out: Optional[Path] = _OUT,
    limit: Optional[int] = _LIMIT, device: Optional[str] = _DEVICE, max_boxes: int = _MAX_BOXES,
) -> None:
    """Retrieval without generation (world records): the index token's cross-entropy and accuracy on
    teacher-forced referring answers among the image's ground-truth regions, beside a uniform guess's."""
    if not data.is_file():
        _fail(f"data file '{data}' does not exist")
    pipe = load_pipeline(model, device, upn)
    run_eval_command("retrieval", pipe, data, images, out, limit, 1, model_name=str(model), max_boxes=max_boxes)


def towers_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="A stage-0 export (`chatrex train vision`'s final/)."),
    data: Path = typer.Option(..., "--data", "-d", help="JSONL records of a held-out split, e.g. data/world/test.jsonl."),
    out: Optional[Path] = _OUT, limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images."),
    batch_size: int = _BATCH, device: Optional[str] = _DEVICE,
) -> None:
    """Stage-0 towers on held-out data: category, background and attribute accuracy of the export's heads."""
    from chatrex.evaluation.report import write_results
    from chatrex.evaluation.towers import evaluate_towers
    from chatrex.training.vision_task import load_vision_pretrain
    from chatrex.utils.image import ImageLoadError

    out = results_path("towers", out)
    if not data.is_file():
        _fail(f"data file '{data}' does not exist")
    try:
        towers = load_vision_pretrain(model)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        _fail(f"could not load a stage-0 export from '{model}': {exc}")
    try:
        result = evaluate_towers(towers, data, limit=limit, batch_size=batch_size, device=device or _default_device())
    except (ValueError, OSError, ImageLoadError) as exc:
        _fail(f"towers: {exc}")
    result["config"]["model"] = str(model)
    json_path, md_path = write_results(result, out)
    result["files"] = {"json": str(json_path), "markdown": str(md_path)}
    show_result("towers (stage-0 heads, held out)", result)


def summary_cmd(
    results: List[Path] = typer.Argument(..., help="Result JSON files written by 'chatrex eval TASK'."),
    out: Path = typer.Option(Path("summary.md"), "--out", "-o", help="Markdown file to write."),
) -> None:
    """Merge result files into one markdown table (headline metrics of each)."""
    from rich.console import Console

    from chatrex.evaluation.report import ResultFileError, write_summary

    try:
        path = write_summary(results, out)
    except (ResultFileError, OSError) as exc:
        _fail(str(exc))
    Console().print(f"merged {len(results)} result file(s) -> {path}", highlight=False)


def build_eval_app() -> typer.Typer:
    """The ``eval`` command group: one command per task plus ``summary``."""
    eval_app = typer.Typer(
        name="eval",
        help="Evaluate a model with the paper's protocols; each task writes a JSON (metrics + predictions) "
        "and a markdown table.",
        no_args_is_help=True,
    )
    eval_app.command("detection")(detection_cmd)
    eval_app.command("proposals")(proposals_cmd)
    eval_app.command("referring")(referring_cmd)
    eval_app.command("region")(region_cmd)
    eval_app.command("grounded-caption")(grounded_caption_cmd)
    eval_app.command("counting")(counting_cmd)
    eval_app.command("pope")(pope_cmd)
    eval_app.command("object-tokens")(object_tokens_cmd)
    eval_app.command("retrieval")(retrieval_cmd)
    eval_app.command("towers")(towers_cmd)
    eval_app.command("summary")(summary_cmd)
    return eval_app


def register(app: typer.Typer) -> None:
    app.add_typer(build_eval_app(), name="eval")
