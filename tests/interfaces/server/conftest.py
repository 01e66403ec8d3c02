"""Fixtures for the server tests: a tiny model directory with a model card, its pipeline, and a real
uvicorn server on a free loopback port in a background thread."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.mllm.conftest import random_image  # noqa: E402

CARD = {"name": "tiny-test", "summary": "tiny-test is random: its answers mean nothing.",
        "trained_on": "nothing", "intended_use": "tests", "limitations": ["random weights"]}


@pytest.fixture(scope="session")
def carded_model_dir(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """The tiny random model directory, with a model card."""
    path = tmp_path_factory.mktemp("served") / "tiny-test"
    shutil.copytree(tiny_pipeline_dir, path)
    (path / "model_card.json").write_text(json.dumps(CARD))
    return path


@pytest.fixture(scope="session")
def tiny_pipe(carded_model_dir):
    from chatrex.interfaces.pipeline import ChatRexPipeline

    return ChatRexPipeline.from_pretrained(carded_model_dir)


def png_data_url(seed: int = 0, width: int = 80, height: int = 60) -> str:
    buf = io.BytesIO()
    Image.fromarray(random_image(seed, width, height)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 at a free port, in a daemon thread; ``with`` starts and stops it."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


class GatedPipe:
    """A pipeline behind a gate: ``propose`` and ``__call__`` wait until ``gate`` is set, then run the real
    pipeline. Records each call's kind and batch size in ``calls``; ``entered`` is set at the first call."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[str, int]] = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def propose(self, images, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        self.calls.append(("propose", len(images)))
        return self._pipe.propose(images, *args, **kwargs)

    def __call__(self, images, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        self.calls.append(("generate", len(images)))
        return self._pipe(images, *args, **kwargs)


@pytest.fixture(scope="session")
def endless_pipe(tiny_pipe):
    """The tiny pipeline with EOS suppressed: every answer runs to its max_tokens."""
    from chatrex.interfaces.pipeline import ChatRexPipeline

    eos = tiny_pipe.tokenizer.eos_token_id
    pipe = ChatRexPipeline(tiny_pipe.upn, tiny_pipe.model, tiny_pipe.processor,
                           generation_config={"suppress_tokens": [eos]})
    pipe.model_card = tiny_pipe.model_card
    return pipe
