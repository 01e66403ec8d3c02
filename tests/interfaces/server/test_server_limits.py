"""The server under pressure, over real HTTP: a full queue answers 429, a slow request 504, and a client
that goes away has its request cancelled (it leaves the queue, or its generation stops)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from tests.interfaces.server.conftest import GatedPipe, ServerThread, png_data_url


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait_for_metric(url: str, name: str, at_least: float, limit_s: float = 60.0) -> float:
    """Poll /metrics (bounded) until ``name`` reaches ``at_least``; returns its last value."""
    value = 0.0
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        value = _metric(httpx.get(url + "/metrics").text, name)
        if value >= at_least:
            break
        time.sleep(0.05)
    return value


def _ground(seed: int = 0, **fields) -> dict:
    return {"image": png_data_url(seed), "question": "Find every dog.", "max_tokens": 4, **fields}


def test_full_queue_answers_429_and_recovers(tiny_pipe):
    from chatrex.interfaces.server import ServerConfig, build_app

    gated = GatedPipe(tiny_pipe)
    config = ServerConfig(model_name="t", max_batch_size=1, batch_wait_ms=0, max_queue=1, max_tokens=8)
    with ServerThread(build_app(gated, config)) as srv:
        async def main():
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as c:
                first = asyncio.create_task(c.post("/v1/ground", json=_ground(1)))
                assert await asyncio.to_thread(gated.entered.wait, 60)  # running, held at the gate
                second = asyncio.create_task(c.post("/v1/ground", json=_ground(2)))
                for _ in range(600):  # bounded: until the second one waits in the queue
                    if (await c.get("/health")).json()["queue_depth"] == 1:
                        break
                    await asyncio.sleep(0.05)
                refused = await c.post("/v1/ground", json=_ground(3))
                gated.gate.set()
                return refused, await first, await second

        refused, first, second = asyncio.run(main())
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "busy" in refused.json()["error"]["message"]
        assert first.status_code == 200 and second.status_code == 200
        assert httpx.post(srv.url + "/v1/ground", json=_ground(4)).status_code == 200
        assert _metric(httpx.get(srv.url + "/metrics").text, 'chatrex_rejected_total{reason="queue_full"}') == 1


def test_request_past_the_time_limit_gets_504(tiny_pipe):
    from chatrex.interfaces.server import ServerConfig, build_app

    gated = GatedPipe(tiny_pipe)
    config = ServerConfig(model_name="t", request_timeout_s=0.5, max_tokens=8)
    with ServerThread(build_app(gated, config)) as srv:
        r = httpx.post(srv.url + "/v1/ground", json=_ground(1), timeout=60)
        assert r.status_code == 504 and "time limit" in r.json()["error"]["message"]
        gated.gate.set()
        assert httpx.post(srv.url + "/v1/propose", json={"image": png_data_url(2)}, timeout=60).status_code == 200
    assert not [c for c in gated.calls if c[0] == "generate"]  # the late request was dropped, not generated


def test_client_that_goes_away_is_cancelled_before_generation(tiny_pipe):
    from chatrex.interfaces.server import ServerConfig, build_app

    gated = GatedPipe(tiny_pipe)
    with ServerThread(build_app(gated, ServerConfig(model_name="t", max_tokens=8))) as srv:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/ground", json=_ground(1), timeout=httpx.Timeout(60, read=0.5))
        # the client closed its connection while its request was held in the UPN stage
        assert _wait_for_metric(srv.url, "chatrex_client_disconnects_total", 1) == 1
        gated.gate.set()
        assert _wait_for_metric(srv.url, 'chatrex_rejected_total{reason="cancelled"}', 1) == 1
    assert ("propose", 1) in gated.calls and not [c for c in gated.calls if c[0] == "generate"]


def test_stream_closed_by_the_client_stops_generation(endless_pipe):
    from chatrex.interfaces.server import ServerConfig, build_app

    with ServerThread(build_app(endless_pipe, ServerConfig(model_name="t", max_tokens=400))) as srv:
        body = {"model": "t", "stream": True, "max_tokens": 400,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url(1)}},
                                                          {"type": "text", "text": "Describe the image."}]}]}
        with httpx.Client(timeout=60) as c, c.stream("POST", srv.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # the first piece of text: now hang up
        cancelled = _wait_for_metric(srv.url, 'chatrex_rejected_total{reason="cancelled"}', 1)
        assert cancelled == 1
        generated = _metric(httpx.get(srv.url + "/metrics").text, "chatrex_generated_tokens_total")
        assert 1 <= generated < 400  # the row stopped long before its 400 tokens
        # and the server goes on serving
        assert httpx.post(srv.url + "/v1/ground", json=_ground(2), timeout=60).status_code == 200
