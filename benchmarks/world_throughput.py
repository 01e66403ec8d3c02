"""Throughput of the procedural world on one core: images per second at 512 x 512 px.

Stages, each timed on its own over the same scenes (train split, default world config):

* render + annotate: ``generate_scene`` (layout, background, sprites, compositing, visible boxes,
  parts, relations);
* language: ``chatrex.data.world.language.annotate`` (if the module exists);
* encode: JPEG (quality 92) and PNG (compress level 3) into memory, as ``generate_split`` writes them.

Times are CPU seconds of this process (``time.process_time``), so other load on the machine does not
count; wall-clock rates are printed beside them. Usage::

    python benchmarks/world_throughput.py --n 300 [--size 512] [--write-results]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## World throughput"


def run(n: int, size: int, warmup: int = 5) -> dict:
    from chatrex.data.world.generate import JPEG_QUALITY, PNG_COMPRESS_LEVEL
    from chatrex.data.world.language import annotate
    from chatrex.data.world.scene import WorldConfig, generate_scene
    from chatrex.data.world.splits import split_config, split_seed

    cfg = split_config("train", WorldConfig(image_size=(size, size)))
    seeds = [split_seed("train", i) for i in range(n)]
    for s in seeds[:warmup]:
        generate_scene(s, cfg)  # loads the photo textures, fills caches

    scenes, regions, relations = [], 0, 0
    c0, w0 = time.process_time(), time.perf_counter()
    for s in seeds:
        image, record = generate_scene(s, cfg)
        scenes.append((s, image, record))
    render_cpu, render_wall = time.process_time() - c0, time.perf_counter() - w0
    for _, _, r in scenes:
        regions += len(r["regions"])
        relations += len(r["relations"])

    annotate(dict(scenes[0][2], regions=[dict(x) for x in scenes[0][2]["regions"]]), random.Random(0))
    c0, w0 = time.process_time(), time.perf_counter()
    for s, _, record in scenes:
        annotate(record, random.Random(s))
    language_cpu, language_wall = time.process_time() - c0, time.perf_counter() - w0

    encode = {}
    for fmt, kwargs in (("JPEG", {"quality": JPEG_QUALITY}), ("PNG", {"compress_level": PNG_COMPRESS_LEVEL})):
        c0, w0 = time.process_time(), time.perf_counter()
        for _, image, _ in scenes:
            image.save(io.BytesIO(), format=fmt, **kwargs)
        encode[fmt] = (time.process_time() - c0, time.perf_counter() - w0)

    return {"n": n, "size": size, "render": (render_cpu, render_wall), "language": (language_cpu, language_wall),
            "encode": encode, "regions": regions / n, "relations": relations / n, "load": os.getloadavg()[0]}


def rows(res: dict) -> list[tuple[str, str, str]]:
    n = res["n"]

    def rate(t):
        return f"{n / t:.1f}" if t else "-"

    r_cpu, r_wall = res["render"]
    l_cpu, l_wall = res["language"]
    j_cpu, j_wall = res["encode"]["JPEG"]
    p_cpu, p_wall = res["encode"]["PNG"]
    out = [
        ("render + annotate", rate(r_cpu), rate(r_wall)),
        ("language pass alone", rate(l_cpu), rate(l_wall)),
        ("JPEG encode alone", rate(j_cpu), rate(j_wall)),
        ("PNG encode alone", rate(p_cpu), rate(p_wall)),
        ("render + annotate + language", rate(r_cpu + l_cpu), rate(r_wall + l_wall)),
        ("render + annotate + language + JPEG", rate(r_cpu + l_cpu + j_cpu), rate(r_wall + l_wall + j_wall)),
    ]
    return out


def markdown(res: dict, command: str) -> str:
    lines = [
        SECTION, "",
        f"`{command}` — {res['n']} train scenes at {res['size']} x {res['size']} px, one process, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}. "
        f"Mean {res['regions']:.1f} regions and {res['relations']:.1f} relations per scene. "
        "Images per second per core from CPU time (wall-clock beside it: the machine was shared, "
        f"load average {res['load']:.1f} on {os.cpu_count()} cores at the end of the run).",
        "",
        "| stage | images/s (CPU time) | images/s (wall) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows(res)]
    return "\n".join(lines) + "\n"


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="scenes to time")
    ap.add_argument("--size", type=int, default=512, help="square image side in px")
    ap.add_argument("--write-results", action="store_true", help=f"update the world section of {RESULTS.name}")
    args = ap.parse_args()
    res = run(args.n, args.size)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"world throughput, {args.size} px, {args.n} scenes, 1 core")
    for col in ("stage", "images/s (CPU)", "images/s (wall)"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in rows(res):
        table.add_row(*row)
    Console().print(table)
    print(f"mean regions/scene {res['regions']:.1f}, relations/scene {res['relations']:.1f}")
    if args.write_results:
        command = f"python benchmarks/world_throughput.py --n {args.n} --size {args.size}"
        write_results(markdown(res, command))
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
