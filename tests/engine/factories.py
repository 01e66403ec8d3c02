"""Step factories used by the engine tests (importable by spawned workers)."""

from __future__ import annotations

import os

from chatrex.data.engine.standins import build_scripted_steps


def counting_steps(script: dict, log_path: str, **kwargs):
    """Scripted steps that append this process's id to ``log_path`` each time they are built."""
    with open(log_path, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    return build_scripted_steps(script, **kwargs)
