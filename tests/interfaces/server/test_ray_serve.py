"""``chatrex serve --ray``: the app as a Ray Serve deployment with two replicas, on a local Ray instance
on CPU (loopback only), driven with the openai client and httpx; and the deployment options."""

from __future__ import annotations

import os
import socket

import httpx
import pytest

from chatrex.interfaces.server.config import ServerConfig
from chatrex.interfaces.server.ray_app import deployment_options
from tests.interfaces.server.conftest import CARD, png_data_url


def test_deployment_options():
    config = ServerConfig(max_batch_size=4, max_queue=16)
    fixed = deployment_options(config, device="cuda", replicas=3)
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1}
    assert fixed["max_ongoing_requests"] == 20 and fixed["max_queued_requests"] == 16
    auto = deployment_options(config, device="cpu", replicas=1, max_replicas=4)
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4}
    assert "num_gpus" not in auto["ray_actor_options"] and "num_replicas" not in auto
    with pytest.raises(ValueError, match="max_replicas"):
        deployment_options(config, replicas=3, max_replicas=2)


@pytest.mark.slow
def test_two_replicas_on_a_local_ray(carded_model_dir, monkeypatch):
    serve = pytest.importorskip("ray.serve")
    import ray

    from chatrex.interfaces.server.ray_app import APP_NAME, build_deployment

    openai = pytest.importorskip("openai")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # the replicas import chatrex as this process does (an installed package, or PYTHONPATH)
    env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if os.environ.get("PYTHONPATH") else None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServerConfig(model_name="tiny-test", max_tokens=8)
        serve.run(build_deployment(carded_model_dir, config, replicas=2), name=APP_NAME, route_prefix="/")
        status = serve.status().applications[APP_NAME]
        assert status.deployments["ChatRex"].replica_states == {"RUNNING": 2}

        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url(1)}},
                                                 {"type": "text", "text": "Find every dog."}]}]
        full = client.chat.completions.create(model="tiny-test", messages=messages, max_tokens=6)
        assert full.chatrex["notice"] == CARD["summary"] and full.usage.completion_tokens >= 1
        pieces = [c.choices[0].delta.content or "" for c in
                  client.chat.completions.create(model="tiny-test", messages=messages, max_tokens=6, stream=True)
                  if c.choices]
        assert "".join(pieces) == full.choices[0].message.content
        with httpx.Client(base_url=url, timeout=120) as http:
            bad = http.post("/v1/ground", json={"image": png_data_url(2), "question": "Hi", "boxes": [[0, 0, 5, 5]] * 150})
            assert bad.status_code == 400 and "150 boxes" in bad.json()["error"]["message"]
            props = [http.post("/v1/propose", json={"image": png_data_url(s), "max_boxes": 3}) for s in range(4)]
            assert all(r.status_code == 200 and 1 <= len(r.json()["boxes"]) <= 3 for r in props)
            assert http.get("/v1/models").json()["data"][0]["notice"] == CARD["summary"]
            assert http.get("/health").json()["status"] == "ok"
    finally:
        serve.shutdown()
        ray.shutdown()
