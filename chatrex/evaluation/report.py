"""Writing evaluation results: a JSON of metrics + per-sample predictions, a markdown table, and a
summary table merging several result files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np


class ResultFileError(ValueError):
    """A result JSON cannot be read for the summary."""


def json_safe(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, NaN/inf → None, tuples → lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def format_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def scalar_metrics(metrics: dict, prefix: str = "") -> dict:
    """Flatten nested metric dicts to ``{"a/b": scalar}``; lists are left out."""
    out: dict = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalar_metrics(value, name + "/"))
        elif not isinstance(value, (list, tuple)):
            out[name] = value
    return out


def metrics_markdown(result: dict) -> str:
    """A markdown page: title, the run's settings, and one row per metric."""
    lines = [f"# {result.get('task', 'evaluation')}", ""]
    config = result.get("config", {})
    if config:
        lines.append(", ".join(f"{k}: `{v}`" for k, v in config.items() if v is not None and not isinstance(v, dict)))
        lines.append("")
    lines += ["| metric | value |", "|---|---|"]
    for key, value in scalar_metrics(result.get("metrics", {})).items():
        lines.append(f"| {key} | {format_value(value)} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out: str | Path) -> tuple[Path, Path]:
    """Write ``result`` as JSON at ``out`` and as markdown beside it (``.md``), each atomically. Returns both
    paths."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"the results file must end in .json, got '{out}'")
    from chatrex.utils.atomic import atomic_write_text

    atomic_write_text(out, json.dumps(json_safe(result), indent=1, ensure_ascii=False) + "\n")
    md = out.with_suffix(".md")
    atomic_write_text(md, metrics_markdown(result))
    return out, md


def load_result(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultFileError(f"result file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "task" not in data or not isinstance(data.get("metrics"), dict):
        raise ResultFileError(f"{path}: not an evaluation result (needs 'task' and 'metrics')")
    return data


def summary_markdown(results: Sequence[tuple[str, dict]]) -> str:
    """One table over several results: a row per (result, headline metric).

    ``results`` are ``(name, result)`` pairs; each result's ``headline`` list picks its metrics (all
    scalar metrics when it has none).
    """
    lines = ["# Evaluation summary", "", "| task | model | data | metric | value | source |", "|---|---|---|---|---|---|"]
    for name, res in results:
        flat = scalar_metrics(res["metrics"])
        keys = [k for k in res.get("headline", []) if k in flat] or list(flat)
        config = res.get("config", {})
        model = config.get("model") or "–"
        data = Path(str(config.get("data"))).name if config.get("data") else "–"
        for key in keys:
            lines.append(f"| {res['task']} | {format_value(model)} | {format_value(data)} | {key} | "
                         f"{format_value(flat[key])} | {format_value(name)} |")
    return "\n".join(lines) + "\n"


def write_summary(paths: Iterable[str | Path], out: str | Path) -> Path:
    """Merge result JSON files into one markdown table at ``out``."""
    paths = list(paths)
    if not paths:
        raise ResultFileError("no result files given")
    results = [(Path(p).name, load_result(p)) for p in paths]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(summary_markdown(results), encoding="utf-8")
    return out
