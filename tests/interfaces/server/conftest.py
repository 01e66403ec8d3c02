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
