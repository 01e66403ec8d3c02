"""Load test of ``chatrex serve`` on loopback: C concurrent clients send N requests in all, bounded in time.

Starts ``chatrex serve`` in a subprocess on a free 127.0.0.1 port (nothing else is ever contacted),
sends one warm-up request, then N ``POST /v1/ground`` requests from C concurrent clients (each client
sends its share one after the other), and reports:

* requests answered 200, lost (no 200 answer: error, timeout, or not sent within ``--time-limit``),
  duplicated (two answers for one request, or the server counting more answers than were received);
  each question carries its request's number and the answer must echo it;
* latency p50 / p90 / p99 / max (client side), throughput (requests/s and generated tokens/s);
* the server's mean batch size (``chatrex_batch_size``) and its memory: resident set before the load
  and its peak (``VmHWM`` of the server process);
* with ``--compare``: the same load with batching (``--max-batch-size``) and one request at a time
  (``--no-batching``), and the throughput ratio.

Exits 1 when a request was lost or duplicated. Examples::

    # CPU, the shipped model (about 5 minutes on 2 cores)
    python benchmarks/serve_load.py --clients 64 --requests 64 --max-tokens 8
    # GPU: batching against one request at a time
    python benchmarks/serve_load.py --device cuda --clients 64 --requests 512 --max-tokens 64 --compare
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Please detect fish; robot; car in this image. Answer the question with object indexes.",
    "How many objects are there in this image? Answer the question with object indexes.",
    "Please detect tree; house; person in this image. Answer the question with object indexes.",
    "What is in this image? Answer the question with object indexes.",
]


@dataclass
class Record:
    index: int
    status: int = 0
    seconds: float = 0.0
    tokens: int = 0
    echoed: Optional[int] = None
    error: str = ""


@dataclass
class RunResult:
    label: str
    batching: bool
    max_batch_size: int
    clients: int
    requests: int
    max_tokens: int
    ok: int = 0
    lost: int = 0
    duplicated: int = 0
    statuses: dict = field(default_factory=dict)
    wall_s: float = 0.0
    p50_s: float = 0.0
    p90_s: float = 0.0
    p99_s: float = 0.0
    max_s: float = 0.0
    requests_per_s: float = 0.0
    tokens_per_s: float = 0.0
    mean_batch: float = 0.0
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    errors: list = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_url(path: Path) -> str:
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M):
        total += float(m.group(1))
    return total


def _labelled(text: str, name: str, labels: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _proc_kib(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def start_server(args: argparse.Namespace, batching: bool, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "chatrex.interfaces.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--device", args.device, "--max-tokens", str(args.max_tokens), "--max-queue", str(max(args.clients, 1)),
           "--timeout", str(args.time_limit), "--batch-wait-ms", str(args.batch_wait_ms), "--log-level", "warning"]
    if args.model:
        cmd += ["--model", str(args.model)]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    cmd += (["--max-batch-size", str(args.max_batch_size), "--upn-batch-size", str(args.upn_batch_size)] if batching
            else ["--no-batching"])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    log = None if args.verbose else tempfile.TemporaryFile()  # read back if the server fails to start
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def wait_ready(proc: subprocess.Popen, url: str, limit_s: float) -> None:
    import httpx

    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            err = ""
            if proc.log is not None:
                proc.log.seek(0)
                err = proc.log.read().decode(errors="replace")
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{err[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {limit_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.log is not None:
        proc.log.close()


async def drive(url: str, images: list[str], n: int, clients: int, max_tokens: int, deadline: float) -> list[Record]:
    import httpx

    records = [Record(i) for i in range(n)]
    todo: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        todo.put_nowait(i)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(None, connect=30)) as http:
        async def client() -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except asyncio.QueueEmpty:
                    return
                rec = records[i]
                if time.monotonic() >= deadline:
                    rec.error = "not sent: time limit"
                    continue
                body = {"image": images[i % len(images)], "max_tokens": max_tokens,
                        "question": f"{QUESTIONS[i % len(QUESTIONS)]} (request {i})"}
                start = time.perf_counter()
                try:
                    r = await asyncio.wait_for(http.post("/v1/ground", json=body), max(deadline - time.monotonic(), 0.1))
                    rec.status = r.status_code
                    data = r.json()
                    if r.status_code == 200:
                        m = re.search(r"\(request (\d+)\)$", data.get("question", ""))
                        rec.echoed = int(m.group(1)) if m else None
                        rec.tokens = int(data.get("usage", {}).get("completion_tokens", 0))
                    else:
                        rec.error = data.get("error", {}).get("message", r.text)[:200]
                except asyncio.TimeoutError:
                    rec.error = "no answer within the time limit"
                except Exception as exc:  # noqa: BLE001 - a transport error is a lost request, reported
                    rec.error = f"{type(exc).__name__}: {exc}"[:200]
                rec.seconds = time.perf_counter() - start

        await asyncio.gather(*(client() for _ in range(clients)))
    return records


def run_once(args: argparse.Namespace, batching: bool) -> RunResult:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    images = [_data_url(p) for p in sorted(Path(args.images).glob("*.jpg"))[: args.max_images]]
    if not images:
        raise SystemExit(f"no .jpg images in {args.images}")
    result = RunResult("batching" if batching else "one at a time", batching,
                       args.max_batch_size if batching else 1, args.clients, args.requests, args.max_tokens)
    proc = start_server(args, batching, port)
    try:
        wait_ready(proc, url, args.start_limit)
        warm = httpx.post(url + "/v1/ground", json={"image": images[0], "question": QUESTIONS[0], "max_tokens": 2},
                          timeout=args.time_limit)
        if warm.status_code != 200:
            raise RuntimeError(f"the warm-up request failed: {warm.status_code} {warm.text[:300]}")
        before = httpx.get(url + "/metrics", timeout=30).text
        result.rss_before_mib = _proc_kib(proc.pid, "VmRSS") / 1024
        start = time.perf_counter()
        records = asyncio.run(drive(url, images, args.requests, args.clients, args.max_tokens,
                                    time.monotonic() + args.time_limit))
        result.wall_s = time.perf_counter() - start
        after = httpx.get(url + "/metrics", timeout=30).text
        result.rss_peak_mib = _proc_kib(proc.pid, "VmHWM") / 1024
    finally:
        stop_server(proc)

    ok = [r for r in records if r.status == 200]
    echoed = [r.echoed for r in ok]
    result.ok = len(ok)
    result.lost = len(records) - len(ok) + sum(1 for r in ok if r.echoed != r.index)
    served = (_labelled(after, "chatrex_requests_total", 'endpoint="/v1/ground",status="200"')
              - _labelled(before, "chatrex_requests_total", 'endpoint="/v1/ground",status="200"'))
    result.duplicated = (len(echoed) - len(set(echoed))) + max(0, int(served) - len(ok))
    for r in records:
        result.statuses[str(r.status or "none")] = result.statuses.get(str(r.status or "none"), 0) + 1
    result.errors = sorted({r.error for r in records if r.error})[:5]
    lat = sorted(r.seconds for r in ok)
    if lat:
        q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
        result.p50_s, result.p90_s, result.p99_s, result.max_s = q[49], q[89], q[98], lat[-1]
    result.requests_per_s = len(ok) / result.wall_s if result.wall_s else 0.0
    result.tokens_per_s = sum(r.tokens for r in ok) / result.wall_s if result.wall_s else 0.0
    count = _labelled(after, "chatrex_batch_size_count", 'stage="generate"') - _labelled(
        before, "chatrex_batch_size_count", 'stage="generate"')
    total = _labelled(after, "chatrex_batch_size_sum", 'stage="generate"') - _labelled(
        before, "chatrex_batch_size_sum", 'stage="generate"')
    result.mean_batch = total / count if count else 0.0
    return result


def table(results: list[RunResult]) -> str:
    head = ("| run | clients | requests | max_tokens | ok | lost | dup | p50 s | p90 s | p99 s | req/s | tokens/s "
            "| mean batch | server RSS before → peak MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = [f"| {r.label} (max batch {r.max_batch_size}) | {r.clients} | {r.requests} | {r.max_tokens} | {r.ok} | "
            f"{r.lost} | {r.duplicated} | {r.p50_s:.2f} | {r.p90_s:.2f} | {r.p99_s:.2f} | {r.requests_per_s:.3f} | "
            f"{r.tokens_per_s:.2f} | {r.mean_batch:.2f} | {r.rss_before_mib:.0f} → {r.rss_peak_mib:.0f} |"
            for r in results]
    return "\n".join([head, *rows])


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--images", type=Path, default=REPO / "examples", help="folder of .jpg images to send")
    p.add_argument("--max-images", type=int, default=16)
    p.add_argument("--clients", type=int, default=64, help="concurrent clients")
    p.add_argument("--requests", type=int, default=64, help="requests in all")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--upn-batch-size", type=int, default=4)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--no-batching", action="store_true", help="serve one request at a time")
    p.add_argument("--compare", action="store_true", help="run with batching, then without, and compare")
    p.add_argument("--time-limit", type=float, default=1200.0, help="seconds for the load (also the request timeout)")
    p.add_argument("--start-limit", type=float, default=600.0, help="seconds for the server to load the model")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--verbose", action="store_true", help="show the server's output")
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.max_tokens < 1:
        p.error("--clients, --requests and --max-tokens must be >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    modes = [True, False] if args.compare else [not args.no_batching]
    results = []
    for batching in modes:
        res = run_once(args, batching)
        results.append(res)
        print(json.dumps(asdict(res)), flush=True)
    print()
    print(f"command: python benchmarks/serve_load.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(table(results))
    if args.compare and results[1].requests_per_s > 0:
        print(f"\nbatching / one at a time, requests/s: {results[0].requests_per_s / results[1].requests_per_s:.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 1 if any(r.lost or r.duplicated for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
