"""Memory of training records and of the data engine's resume at Rexverse-2M's size (CPU only).

Generates N small records (four regions, one grounded caption; about 700 bytes of JSON each) into a
work folder, then measures, each in a fresh process so that its peak is its own:

* ``index``: ``chatrex.data.jsonl.load_training_records`` over the file (what the UPN, vision and
  ChatRex datasets call): peak and final resident memory above the process's baseline, time, and the
  time of a random read;
* ``workers``: a DataLoader with ``--workers`` forked workers reading one epoch of the records in random
  order: each worker's private memory (USS: pages it does not share with the main process) at the end
  of the epoch, and the main process's resident memory;
* ``engine``: ``EngineStore.open`` of an engine output folder holding the same N records (the resume
  scan): peak resident memory above the baseline, time, and the number of finished keys.

Memory figures come from ``/proc`` (Linux). Usage::

    python benchmarks/records_memory.py --records 2000000 --workers 2
    python benchmarks/records_memory.py --records 20000 --workers 2   # a quick check

The same script measures an older checkout when run with that checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = ["car", "house", "tree", "dog", "person", "bicycle", "lamp", "bench", "sign", "cat"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black"]


def _record(i: int, rng: random.Random) -> dict:
    regions = []
    for k in range(4):
        x, y = rng.randint(0, 400), rng.randint(0, 300)
        cat = rng.choice(CATEGORIES)
        regions.append({"id": k, "box": [x, y, x + rng.randint(8, 200), y + rng.randint(8, 150)], "category": cat,
                        "level": "instance", "phrase": f"a {rng.choice(COLOURS)} {cat}"})
    text = f"{regions[0]['phrase'].capitalize()} next to {regions[1]['phrase']}."
    span = [0, len(regions[0]["phrase"])]
    return {"id": f"img{i:07d}", "image": f"images/{i:07d}.jpg", "width": 640, "height": 480, "regions": regions,
            "captions": [{"kind": "brief", "text": text,
                          "groundings": [{"span": span, "phrase": regions[0]["phrase"], "regions": [0]}]}]}


def generate(work: Path, n: int) -> dict:
    """``work/train.jsonl`` and ``work/engine/records.jsonl`` (the same records with the engine's keys)."""
    (work / "engine").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with open(work / "train.jsonl", "w") as train, open(work / "engine" / "records.jsonl", "w") as engine:
        for i in range(n):
            rec = _record(i, rng)
            train.write(json.dumps(rec, separators=(",", ":")) + "\n")
            rec["engine"] = {"path": rec["image"], "sha256": hashlib.sha256(rec["id"].encode()).hexdigest()}
            engine.write(json.dumps(rec, separators=(",", ":")) + "\n")
    return {"train_jsonl_bytes": (work / "train.jsonl").stat().st_size,
            "engine_records_bytes": (work / "engine" / "records.jsonl").stat().st_size}


def _status_kib(field: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _private_kib(pid: int) -> int:
    """Private (unshared) resident memory of ``pid``: its USS."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def phase_index(work: Path) -> dict:
    from chatrex.data.jsonl import load_training_records

    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    records = load_training_records([work / "train.jsonl"], "the benchmark set")
    built = time.perf_counter() - t0
    out = {"records": len(records), "build_s": round(built, 1),
           "peak_above_baseline_mib": _mib(_status_kib("VmHWM") - base),
           "held_above_baseline_mib": _mib(_status_kib("VmRSS") - base)}
    if hasattr(records, "nbytes"):
        out["index_mib"] = _mib(records.nbytes() / 1024)
    rng = random.Random(1)
    picks = [rng.randrange(len(records)) for _ in range(20_000)]
    t0 = time.perf_counter()
    for i in picks:
        records[i]
    out["random_read_us"] = round((time.perf_counter() - t0) / len(picks) * 1e6, 1)
    return out


class _Reader:
    """A dataset over the records: each item reads one record (as the training datasets do) and returns
    the worker's pid."""

    def __init__(self, records) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> int:
        record, _ = self.records[i]
        return os.getpid() + 0 * len(record["regions"])


def phase_workers(work: Path, workers: int) -> dict:
    import torch

    from chatrex.data.jsonl import load_training_records

    records = load_training_records([work / "train.jsonl"], "the benchmark set")
    main_before = _status_kib("VmRSS")
    loader = torch.utils.data.DataLoader(_Reader(records), batch_size=256, shuffle=True, num_workers=workers,
                                         multiprocessing_context="fork", collate_fn=list,
                                         generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    batches = iter(loader)
    n_batches, pids = len(loader), set()
    for k in range(n_batches - 2 * workers):  # the workers hold the last batches: they are still alive
        pids.update(next(batches))
    private = {pid: _private_kib(pid) for pid in sorted(pids)}
    for _ in batches:
        pass
    return {"records": len(records), "workers": workers, "epoch_s": round(time.perf_counter() - t0, 1),
            "main_rss_mib": _mib(main_before),
            "worker_private_mib": [_mib(v) for v in private.values()]}


def phase_engine(work: Path) -> dict:
    from chatrex.data.engine.store import EngineStore

    base = _status_kib("VmRSS")
    store = EngineStore(work / "engine", state_interval_s=1e9)
    t0 = time.perf_counter()
    done = store.open()
    took = time.perf_counter() - t0
    out = {"finished_keys": len(done), "open_s": round(took, 1),
           "peak_above_baseline_mib": _mib(_status_kib("VmHWM") - base),
           "held_above_baseline_mib": _mib(_status_kib("VmRSS") - base)}
    store.close("finished")
    return out


def _run_phase(name: str, work: Path, workers: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", name, "--work", str(work), "--workers", str(workers)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, deleted)")
    parser.add_argument("--phases", default="index,workers,engine")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        fn = {"index": lambda: phase_index(args.work), "workers": lambda: phase_workers(args.work, args.workers),
              "engine": lambda: phase_engine(args.work)}[args.phase]
        print(json.dumps(fn()))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="records_memory_"))
    try:
        import chatrex

        report = {"chatrex": os.path.dirname(chatrex.__file__), "records": args.records}
        t0 = time.perf_counter()
        if not (work / "train.jsonl").is_file():
            report.update(generate(work, args.records))
        report["generate_s"] = round(time.perf_counter() - t0, 1)
        for name in args.phases.split(","):
            report[name] = _run_phase(name, work, args.workers)
            print(json.dumps({name: report[name]}), file=sys.stderr, flush=True)
        print(json.dumps(report, indent=1))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
