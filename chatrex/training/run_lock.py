"""One training run per output folder.

Two runs writing to the same folder interleave their metrics, overwrite each other's checkpoints and
export, and share the device's memory. :func:`acquire_run_lock` makes the second one stop at once. The
lock file records who holds it; a lock left by a process that no longer exists on this host is taken
over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another live run holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def acquire_run_lock(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir/run.lock`` for this process and return its path.

    Raises:
        RunLockedError: a live process (or one on another host, which cannot be checked) holds it.
    """
    path = Path(output_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
                pid, host = int(holder["pid"]), str(holder["host"])
            except (OSError, ValueError, KeyError, TypeError):
                holder, pid, host = {}, -1, "?"
            if host == me["host"] and (pid <= 0 or not _alive(pid)):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise RunLockedError(
                f"another training run writes to '{path.parent}' (pid {pid} on {host}, since "
                f"{holder.get('since', '?')}). Give this run another train.output_dir, or wait for that one; "
                f"if it no longer runs, delete {path}."
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise RunLockedError(f"could not take {path}: another run keeps creating it")


def release_run_lock(path: Path) -> None:
    """Remove the lock taken by :func:`acquire_run_lock` if it is still this process's."""
    try:
        if int(json.loads(path.read_text())["pid"]) == os.getpid():
            path.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass


__all__ = ["LOCK_FILE", "RunLockedError", "acquire_run_lock", "release_run_lock"]
