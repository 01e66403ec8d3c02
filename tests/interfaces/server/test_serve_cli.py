"""``chatrex serve`` from the command line: refusals, and a real server process answering the openai client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from chatrex.interfaces.cli import build_app
from tests.interfaces.server.conftest import CARD, png_data_url

REPO = Path(__file__).resolve().parents[3]


def _run(*args):
    return CliRunner().invoke(build_app(), [str(a) for a in args])


def test_help_lists_serve():
    res = _run("serve", "--help")
    assert res.exit_code == 0 and "--api-key" in res.output and "--ray" in res.output


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--allow-local-files", "/nonexistent/folder"], "not a folder"),
    (["--upn", "/nonexistent/upn_large.pth"], "UPN checkpoint '/nonexistent/upn_large.pth' does not exist"),
    (["--ray", "--replicas", "3", "--max-replicas", "2"], "--max-replicas 2 is below --replicas 3"),
])
def test_refusals(carded_model_dir, args, message):
    full = ["serve", *args] if "--model" in args else ["serve", "--model", carded_model_dir, *args]
    res = _run(*full)
    assert res.exit_code == 1 and message in " ".join(res.output.split()), res.output


@pytest.mark.slow
def test_serve_process_answers_and_stops(carded_model_dir, tmp_path):
    openai = pytest.importorskip("openai")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CHATREX_API_KEY": "k1,k2",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chatrex.interfaces.cli", "serve", "--model", str(carded_model_dir),
                                 "--port", str(port), "--max-tokens", "6", "--log-level", "warning"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(1200):  # bounded: up to about 2 minutes to load
                if proc.poll() is not None:
                    break
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert proc.poll() is None, log.read_text()
            client = openai.OpenAI(base_url=url + "/v1", api_key="k2", max_retries=0, timeout=120)
            out = client.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(1)}}, {"type": "text", "text": "Find every dog."}]}])
            assert out.usage.completion_tokens <= 6 and out.model == "tiny-test"  # the card's name
            assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
            assert httpx.get(url + "/v1/models").status_code == 401
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    text = " ".join(log.read_text().split())
    assert f"model: {CARD['summary']}" in text and "API key required" in text
