"""Loss curves: metrics are appended as JSON lines and plotted to a PNG.

Each line is appended with one ``write`` and ``fsync``-ed; rewriting the file (:func:`truncate_metrics`)
and the plot go through a temporary file renamed over the old one, so a crash leaves either the old or
the new file, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from chatrex.utils.atomic import atomic_write_text, open_atomic


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read metrics.jsonl, ignoring a torn last line."""
    rows = []
    if not Path(path).is_file():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(path: Path, max_step: int) -> None:
    """Drop lines logged after ``max_step`` (used when resuming from an earlier checkpoint)."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= max_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def plot_curves(metrics_path: Path, out_png: Path, title: str = "training") -> Path | None:
    """Plot every numeric ``loss*`` series (and the learning rate) against the step. Needs matplotlib."""
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k, v in r.items() if k.startswith("loss") and isinstance(v, (int, float))})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if pts:
            xs, ys = zip(*pts)
            axes[0].plot(xs, ys, label=k, linewidth=1.2 if k == "loss" else 0.8)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[0].set_title(title)
    lr = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    if lr:
        xs, ys = zip(*lr)
        axes[1].plot(xs, ys)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("learning rate")
    fig.tight_layout()
    try:
        with open_atomic(out_png, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out_png
