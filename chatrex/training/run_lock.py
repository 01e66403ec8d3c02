"""One training run per output folder.

Two runs writing to the same folder interleave their metrics, overwrite each other's checkpoints and
export, and share the device's memory. :func:`acquire_run_lock` makes the second one stop at once.

The lock is the operating system's lock on ``output_dir/run.lock`` (``filelock``, ``flock`` on Unix):
it is held by an open file of the running process, so the system drops it when that process ends, in
whatever way, and two processes can never both hold it (there is no stale lock to take over). Who holds
it is written to ``run.lock.json`` beside it, for the message the second run prints.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from chatrex.utils.atomic import atomic_write_text

LOCK_FILE = "run.lock"
HOLDER_FILE = "run.lock.json"


class RunLockedError(RuntimeError):
    """Another live run holds the output folder."""


@dataclass
class RunLock:
    """A held lock (from :func:`acquire_run_lock`)."""

    lock: FileLock
    holder_path: Path


def acquire_run_lock(output_dir: str | os.PathLike) -> RunLock:
    """Take ``output_dir/run.lock`` for this process (without waiting).

    Raises:
        RunLockedError: another process holds it; the message names it.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(os.fspath(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = json.loads((folder / HOLDER_FILE).read_text())
        except (OSError, ValueError):
            holder = {}
        raise RunLockedError(
            f"another training run writes to '{folder}' (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')}). Give this run another train.output_dir, or wait for that one."
        ) from None
    holder_path = folder / HOLDER_FILE
    atomic_write_text(holder_path, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                               "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    return RunLock(lock, holder_path)


def release_run_lock(held: RunLock) -> None:
    """Release a lock taken by :func:`acquire_run_lock`."""
    held.holder_path.unlink(missing_ok=True)
    held.lock.release()


__all__ = ["HOLDER_FILE", "LOCK_FILE", "RunLock", "RunLockedError", "acquire_run_lock", "release_run_lock"]
