"""Writing a split of the world to disk: images plus one JSONL of records, with several processes.

``generate_split(out_dir, n, split)`` writes ``out_dir/images/<split>/<index>.<ext>`` (or, with
``shard_size``, ``out_dir/images/<split>/<shard>/<index>.<ext>``) and ``out_dir/<split>.jsonl`` in
scene order, plus ``out_dir/<split>.meta.json`` (the settings) and ``out_dir/vocabulary.json``.

The language pass (captions, phrases, referring expressions, conversations) is
``chatrex.data.world.language.annotate(record, random.Random(seed))``; ``language=False`` turns it off.

Generation is resumable: run it again with the same settings and a larger (or the same) ``n`` and it
continues after the last complete line; different settings are refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from chatrex.data.jsonl import dumps_record
from chatrex.data.schema import validate_record
from chatrex.data.world.catalog import Vocabulary
from chatrex.data.world.language import annotate
from chatrex.data.world.scene import WorldConfig, generate_scene
from chatrex.data.world.splits import record_id, split_config, split_seed

IMAGE_FORMATS = ("jpg", "png")
JPEG_QUALITY = 92
PNG_COMPRESS_LEVEL = 3


def image_relpath(split: str, index: int, image_format: str = "jpg", shard_size: Optional[int] = None) -> str:
    """Where scene ``index`` of ``split`` is written, relative to the output folder."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {list(IMAGE_FORMATS)}, got {image_format!r}")
    name = f"{index:07d}.{image_format}"
    if shard_size:
        return f"images/{split}/{index // shard_size:04d}/{name}"
    return f"images/{split}/{name}"


def save_image(image, path: Path, image_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image_format == "jpg":
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def make_record(
    split: str, index: int, config: WorldConfig, seed_offset: int = 0, image_format: str = "jpg",
    shard_size: Optional[int] = None, language: Optional[Callable] = None,
):
    """Scene ``index`` of ``split``: ``(PIL image, record)`` with the language pass applied if given."""
    seed = split_seed(split, index, seed_offset)
    image, record = generate_scene(
        seed, config, split=split, record_id=record_id(split, index),
        image_path=image_relpath(split, index, image_format, shard_size),
    )
    if language is not None:
        language(record, random.Random(seed))
    return image, record


@dataclass
class _Job:
    out_dir: str
    split: str
    config: WorldConfig
    seed_offset: int
    image_format: str
    shard_size: Optional[int]
    language: bool


_WORKER_JOB: Optional[_Job] = None
_WORKER_LANGUAGE: Optional[Callable] = None


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB, _WORKER_LANGUAGE  # per-process worker state, set once by the pool
    _WORKER_JOB = job
    _WORKER_LANGUAGE = annotate if job.language else None


def _render_chunk(indices: Sequence[int]) -> list[str]:
    """Pool task: render ``indices`` with the job the worker was initialised with."""
    if _WORKER_JOB is None:
        raise RuntimeError("world generation worker used before initialisation")
    return _render(_WORKER_JOB, _WORKER_LANGUAGE, indices)


def _render(job: _Job, language: Optional[Callable], indices: Sequence[int]) -> list[str]:
    """Render, check and save scenes ``indices``; their JSON lines in order."""
    lines = []
    for index in indices:
        image, record = make_record(job.split, index, job.config, job.seed_offset, job.image_format,
                                    job.shard_size, language)
        errors = validate_record(record)
        if errors:
            raise ValueError(f"generated record {record['id']} is invalid: {'; '.join(errors[:5])}")
        save_image(image, Path(job.out_dir) / record["image"], job.image_format)
        lines.append(dumps_record(record))
    return lines


def _settings(job: _Job) -> dict:
    return {"split": job.split, "seed_offset": job.seed_offset, "image_format": job.image_format,
            "shard_size": job.shard_size, "language": job.language, "config": job.config.to_dict()}


def _complete_lines(path: Path) -> int:
    """Count complete lines and cut off a trailing partial one (an interrupted write)."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
    return data[:end].count(b"\n")


def generate_split(
    out_dir: str | os.PathLike,
    n: int,
    split: str = "train",
    workers: int = 1,
    seed_offset: int = 0,
    language: bool = True,
    image_format: str = "jpg",
    shard_size: Optional[int] = None,
    config: Optional[WorldConfig] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Generate ``n`` scenes of ``split`` into ``out_dir``.

    Args:
        out_dir: output folder (created).
        n: number of scenes (scene indices ``0 .. n-1``).
        split: "train", "val", "test" or "test-comp" (see ``splits.py``).
        workers: processes (1: in this process).
        seed_offset: added to every seed (another disjoint sample of the same split).
        language: run the language pass (``chatrex.data.world.language.annotate``).
        image_format: "jpg" or "png".
        shard_size: images per sub-folder (None: one folder).
        config: base world config (the split's held-out pairs are applied on top).
        overwrite: start again even if the folder holds this split made with other settings.
        progress: show a progress bar.

    Returns:
        ``{"jsonl", "n", "written", "resumed_from", "language", "seconds"}``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {list(IMAGE_FORMATS)}, got {image_format!r}")
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    split_seed(split, max(n - 1, 0), seed_offset)  # validates split and range
    workers = max(1, int(workers))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    use_language = bool(language)
    job = _Job(str(out), split, split_config(split, config), seed_offset, image_format, shard_size, use_language)
    jsonl, meta = out / f"{split}.jsonl", out / f"{split}.meta.json"
    settings = json.loads(json.dumps(_settings(job)))  # as it reads back from disk

    if overwrite and jsonl.exists():
        jsonl.unlink()
    done = _complete_lines(jsonl)
    if done and meta.exists():
        previous = json.loads(meta.read_text())
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ValueError(f"{jsonl} was made with other settings ({', '.join(changed)}); "
                             "use overwrite=True (--overwrite) to start again")
    elif done:
        raise ValueError(f"{jsonl} exists without {meta.name}; use overwrite=True (--overwrite) to start again")
    meta.write_text(json.dumps(settings, indent=1))
    (out / "vocabulary.json").write_text(json.dumps(Vocabulary().to_dict(), indent=1))

    todo = list(range(done, n))
    start = time.time()
    chunk = max(1, min(32, len(todo) // (workers * 4) or 1))
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(f"world {split}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar, open(jsonl, "a", encoding="utf-8") as f:
        task = bar.add_task("generate", total=n, completed=done)

        def consume(results):
            for lines in results:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                bar.advance(task, len(lines))

        if workers == 1 or len(chunks) <= 1:
            consume(_render(job, annotate if job.language else None, c) for c in chunks)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
                consume(pool.imap(_render_chunk, chunks))
    return {"jsonl": str(jsonl), "n": n, "written": len(todo), "resumed_from": done,
            "language": use_language, "seconds": round(time.time() - start, 3)}
