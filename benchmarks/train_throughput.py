"""Training throughput of a whole run, data loading included: samples/s and how busy the GPU is.

    python benchmarks/train_throughput.py --kind upn --recipe recipes/upn_small.json \
        --data data/world/train.jsonl --steps 80 [--set train.batch_size=64 ...] [--json out.jsonl]

Runs ``chatrex train KIND RECIPE`` for ``--steps`` optimizer steps into a temporary folder (logging every
``--log-every`` steps), while ``nvidia-smi`` samples the GPU's utilisation (the share of time a kernel
was running) every 200 ms. Prints one JSON line: the median ``samples_per_s`` of the logged intervals
after the first ``--skip`` (compilation and worker start), and the mean utilisation over the same part
of the run. ``--python`` runs another checkout's CLI (e.g. a baseline): its folder goes first on
``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class GPUSampler:
    """Polls ``nvidia-smi`` for the first GPU's utilisation in a background thread."""

    def __init__(self, period_ms: int = 200) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._proc = None
        self.available = shutil.which("nvidia-smi") is not None
        self._period_ms = period_ms

    def __enter__(self) -> "GPUSampler":
        if self.available:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 f"-lms={self._period_ms}", "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append((time.time(), float(line.strip())))
            except ValueError:
                continue

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    def mean_between(self, t0: float, t1: float) -> float | None:
        vals = [u for t, u in self.samples if t0 <= t <= t1]
        return round(statistics.mean(vals), 1) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", required=True, choices=["upn", "chatrex", "vision"])
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--skip", type=int, default=2, help="logged intervals left out at the start")
    ap.add_argument("--set", action="append", default=[], help="more recipe overrides (key=value)")
    ap.add_argument("--python", default=None, help="a checkout whose package runs instead of this one")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, help="keep the run folder here")
    args = ap.parse_args()

    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="throughput_"))
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "chatrex.interfaces.cli", "train", args.kind, args.recipe,
           "--set", f"task.data.files={json.dumps([args.data])}", "--set", f"train.output_dir={out}",
           "--set", f"train.max_steps={args.steps}", "--set", f"train.log_every={args.log_every}",
           "--set", f"train.save_every={args.steps}", "--set", "train.time_budget_s=null"]
    for s in args.set:
        cmd += ["--set", s]
    env = dict(os.environ)
    if args.python:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.python).resolve()), env.get("PYTHONPATH", "")])
    t_start = time.time()
    with GPUSampler() as gpu:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"training failed with exit code {proc.returncode}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steady = rows[args.skip:] or rows
    rates = [r["samples_per_s"] for r in steady]
    # the logged intervals' wall-clock span, from the metrics file's modification times is not kept:
    # take the GPU samples of the run's second half, when compilation and worker start are over
    t_end = time.time()
    mid = t_start + (t_end - t_start) / 2
    result = {"label": args.label, "kind": args.kind, "recipe": args.recipe, "overrides": args.set,
              "steps": args.steps, "samples_per_s": round(statistics.median(rates), 2),
              "samples_per_s_all": [round(r, 1) for r in rates],
              "gpu_util_pct_second_half": gpu.mean_between(mid, t_end), "wall_s": round(t_end - t_start, 1),
              "final_loss": steady[-1].get("loss")}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
