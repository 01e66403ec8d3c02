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


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny random ChatRex model directory (UPN + MLLM + processor) saved with ``save_pretrained``."""
    import torch

    from chatrex.interfaces.pipeline import ChatRexPipeline
    from chatrex.upn.config import resolve_config
    from chatrex.upn.model import build_upn
    from chatrex.upn.wrapper import UPNWrapper
    from tests.mllm.conftest import build_tiny_tokenizer, make_model, make_processor

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = resolve_config("upn_tiny")
    upn = UPNWrapper.from_model(build_upn(cfg).eval(), cfg, resize=64, max_size=96)
    path = tmp_path_factory.mktemp("model") / "tiny"
    ChatRexPipeline(upn, make_model(tok), make_processor(tok)).save_pretrained(path)
    return path
