"""Crash-safe output of an engine run: append-only JSONL files plus a small state file.

Layout of ``OUT_DIR``::

    records.jsonl    one record per finished image (chatrex.data.schema format)
    rejected.jsonl   one line per image dropped on purpose (unreadable, tiny, flat, nothing grounded)
    errors.jsonl     one line per failure when on_error="log" (these images are retried next run)
    state.json       manifest: steps, config, counts, status (rewritten atomically)

Every line is written with a single ``write`` of ``line + "\\n"``, flushed and ``fsync``-ed before the
image counts as finished, so a crash or Ctrl-C loses at most the image in flight. On open, a partial
last line (no newline, or not valid JSON) is detected and cut off; a complete JSON object that only
lacks its newline is kept. An image is finished when its key (path relative to the image folder +
SHA-256 of its bytes) appears in ``records.jsonl`` or ``rejected.jsonl``; a changed file gets a new key
and is processed again.

Resuming reads each file once, as a stream: only the end of a file is held for the repair, and only the
finished keys are kept (not the records), so a folder of millions of records resumes in bounded memory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from chatrex.data.jsonl import dumps_record
from chatrex.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
REJECTED_FILE = "rejected.jsonl"
ERRORS_FILE = "errors.jsonl"
STATE_FILE = "state.json"
STATE_FORMAT = "chatrex-engine-state/1"


class EngineStoreError(RuntimeError):
    """The output folder holds something the engine cannot resume from (a corrupt line mid-file)."""


def repair_jsonl(path: str | os.PathLike, on_line: Optional[Callable[[dict], None]] = None) -> Optional[str]:
    """Make ``path`` end with a complete JSON line. Returns a note of what was repaired, or ``None``.

    * a last line without its newline that parses as a JSON object gets the newline back;
    * a last line that does not parse (cut by a crash, zero-filled) is removed.

    Only the end of the file is read for the repair; then the file is read once as a stream, every line
    is checked and passed (parsed) to ``on_line``.

    Raises:
        EngineStoreError: a line before the last one is not valid JSON (damage a crash cannot cause).
    """
    path = Path(path)
    if not path.exists():
        return None
    note = _repair_tail(path)
    with open(path, "rb") as handle:
        for i, line in enumerate(handle):
            if not line.strip():
                continue
            obj = _parse(line)
            if obj is None:
                raise EngineStoreError(
                    f"{path}:{i + 1}: not a valid JSON line in the middle of the file; the run cannot be resumed "
                    f"safely - fix or delete that line"
                )
            if on_line is not None:
                on_line(obj)
    return note


def _tail(path: Path, size: int) -> tuple[int, bytes]:
    """``(offset, data)``: the end of the file from the start of its last complete non-blank line (or the
    whole file when it has none), read backwards in growing blocks."""
    window = 1 << 16
    with open(path, "rb") as handle:
        while True:
            start = max(0, size - window)
            handle.seek(start)
            data = handle.read(size - start)
            if start == 0:
                return 0, data
            cut = data.find(b"\n")  # the block's first line may be cut: start after it
            if cut >= 0:
                body = data[cut + 1:]
                if any(line.strip() for line in body.split(b"\n")[:-1]):
                    return start + cut + 1, body
            window *= 4


def _repair_tail(path: Path) -> Optional[str]:
    size = path.stat().st_size
    if size == 0:
        return None
    base, data = _tail(path, size)
    lines = data.split(b"\n")
    tail = lines[-1]  # b"" when the file ends with a newline
    body_end = len(data) - len(tail)
    note = None
    if tail.strip():
        if _parses(tail):
            with open(path, "ab") as handle:
                handle.write(b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            return f"{path.name}: the last line lacked its newline; kept it"
        _truncate(path, base + body_end)
        note = f"{path.name}: dropped a partial last line of {len(tail)} bytes"
        lines = data[:body_end].split(b"\n")
    # the last complete line may itself be garbage (zero-filled blocks after a power cut)
    complete = [(i, line) for i, line in enumerate(lines[:-1]) if line.strip()]
    if complete:
        i_last, last = complete[-1]
        if not _parses(last):
            _truncate(path, base + sum(len(line) + 1 for line in lines[:i_last]))
            note = (note + "; " if note else "") + f"{path.name}: dropped an unreadable last line"
    return note


def _parse(line: bytes) -> Optional[dict]:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _parses(line: bytes) -> bool:
    return _parse(line) is not None


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class EngineStore:
    """The output folder of one engine run (see the module docstring).

    Use :meth:`open` before :meth:`append`, and :meth:`close` at the end (also after a failure).
    """

    def __init__(self, out_dir: str | os.PathLike, state_interval_s: float = 2.0) -> None:
        self.out_dir = Path(out_dir)
        self.records_path = self.out_dir / RECORDS_FILE
        self.rejected_path = self.out_dir / REJECTED_FILE
        self.errors_path = self.out_dir / ERRORS_FILE
        self.state_path = self.out_dir / STATE_FILE
        self.state_interval_s = float(state_interval_s)
        self.done_keys: set[str] = set()
        self.counts = {"done": 0, "rejected": 0, "failed": 0}
        self.repairs: list[str] = []
        self.state: dict[str, Any] = {}
        self._handles: dict[str, Any] = {}
        self._last_state = 0.0

    # -- opening / resuming ----------------------------------------------------------------------
    def open(self, run_info: Optional[Mapping[str, Any]] = None) -> set[str]:
        """Create or resume the folder: repair partial lines, load finished keys, start the state.

        Returns the set of finished keys (``path#sha256``): the store's own set, which grows as images
        finish.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)

        def record_key(rec: dict) -> None:
            meta = rec.get("engine") or {}
            if "path" not in meta or "sha256" not in meta:
                raise EngineStoreError(
                    f"{self.records_path}: record {rec.get('id')!r} has no 'engine' path/sha256; this file "
                    "was not written by the engine"
                )
            self.done_keys.add(f"{meta['path']}#{meta['sha256']}")

        rejected: set[str] = set()
        scans = ((self.records_path, record_key),
                 (self.rejected_path, lambda line: rejected.add(line["key"]) if "key" in line else None),
                 (self.errors_path, None))
        for path, on_line in scans:  # each file is read once, as a stream; only the keys are kept
            note = repair_jsonl(path, on_line)
            if note:
                logger.warning("engine output repaired: %s", note)
                self.repairs.append(note)
        self.counts["done"] = len(self.done_keys)
        self.counts["rejected"] = len(rejected - self.done_keys)
        self.done_keys |= rejected
        previous: dict[str, Any] = {}
        if self.state_path.exists():
            try:
                previous = json.loads(self.state_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                logger.warning("engine: %s is unreadable; starting a new one", self.state_path)
        info = dict(run_info or {})
        if previous.get("steps") and info.get("steps") and previous["steps"] != info["steps"]:
            logger.warning("engine: resuming %s with different steps than the earlier run", self.out_dir)
        runs = list(previous.get("runs") or [])
        runs.append({"started": _now(), "resumed_from": len(self.done_keys), "repairs": list(self.repairs)})
        self.state = {
            "format": STATE_FORMAT, **{k: v for k, v in previous.items() if k not in ("format", "runs", "status", "counts")},
            **info, "runs": runs, "status": "running",
        }
        self._files()
        self.write_state(force=True)
        return self.done_keys

    def _files(self) -> None:
        for name, path in (("done", self.records_path), ("rejected", self.rejected_path), ("failed", self.errors_path)):
            self._handles[name] = open(path, "a", encoding="utf-8")

    # -- writing ------------------------------------------------------------------------------
    def append(self, outcome: Mapping[str, Any]) -> None:
        """Persist one image's outcome (durably) before it counts as finished."""
        status = outcome.get("status")
        if status == "done":
            line = dumps_record(outcome["record"])
        elif status == "rejected":
            line = json.dumps({"key": outcome["key"], "path": outcome["path"], "sha256": outcome["sha256"],
                               "reason": outcome.get("reason")}, ensure_ascii=False)
        elif status == "failed":
            line = json.dumps({"key": outcome["key"], "path": outcome["path"], "sha256": outcome["sha256"],
                               "error": outcome.get("reason"), "time": _now()}, ensure_ascii=False)
        else:
            raise ValueError(f"unknown outcome status {status!r}")
        if status in ("done", "rejected") and outcome["key"] in self.done_keys:
            return  # never write an image twice
        handle = self._handles[status]
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        self.counts[status] += 1
        if status != "failed":
            self.done_keys.add(outcome["key"])
        self.write_state()

    def write_state(self, force: bool = False, **extra: Any) -> None:
        """Rewrite ``state.json`` (atomically), at most every ``state_interval_s`` unless ``force``."""
        now = time.monotonic()
        if not force and now - self._last_state < self.state_interval_s:
            return
        self.state.update(extra)
        self.state["counts"] = dict(self.counts)
        self.state["updated"] = _now()
        _write_json_atomic(self.state_path, self.state)
        self._last_state = now

    def close(self, status: str) -> None:
        """Close the files and record the final ``status`` ("finished", "interrupted", "failed")."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if self.state:
            self.state["runs"][-1]["ended"] = _now()
            self.state["runs"][-1]["status"] = status
            self.write_state(force=True, status=status)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
