"""Shared test fixtures: where ../shared lives, and deterministic torch settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The shared folder beside the checkout (reference docs, fixtures, test images).
SHARED = Path(os.environ.get("CHATREX_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared folder is missing at {SHARED}; set CHATREX_SHARED")
    return SHARED


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)  # CI runs two pytest workers on two cores
    yield
