"""``chatrex serve``'s app over real HTTP: uvicorn on a free loopback port, the real ``openai`` client for
chat completions (with an image, streaming) and httpx for the native endpoints; bad requests get
clear 4xx answers and the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import pytest
from PIL import Image

from tests.interfaces.server.conftest import CARD, ServerThread, png_data_url

openai = pytest.importorskip("openai")

KEY = "test-key"
QUESTION = "Find every dog in this image."


@pytest.fixture(scope="module")
def server(tiny_pipe):
    from chatrex.interfaces.server import ServerConfig, build_app

    config = ServerConfig(model_name="tiny-test", max_tokens=24, max_prompt_tokens=200, max_image_pixels=1_000_000,
                          api_keys=(KEY,))
    with ServerThread(build_app(tiny_pipe, config)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


def user_message(image_url: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                         {"type": "text", "text": text}]}]


def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid PNG header that claims width x height pixels, with almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


# ------------------------------------------------------------------------------------------------
def test_chat_completion_with_an_image(client, http):
    image = png_data_url(1)
    out = client.chat.completions.create(model="tiny-test", messages=user_message(image), max_tokens=12)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and out.model == "tiny-test"
    assert 0 < out.usage.completion_tokens <= 12 and out.usage.prompt_tokens > 16  # 16 image tokens at least
    ext = out.chatrex  # the extension field, kept by the client
    assert ext["boxes_from"] == "upn" and len(ext["boxes"]) == len(ext["scores"]) >= 1
    assert ext["width"] == 80 and ext["height"] == 60 and ext["notice"] == CARD["summary"]
    for g in ext["answer"]["groundings"]:
        assert all(i < len(ext["boxes"]) for i in g["indices"]) and len(g["boxes"]) == len(g["indices"])
    # the native endpoint answers the same (greedy) question with the same text
    native = http.post("/v1/ground", json={"image": image, "question": QUESTION, "max_tokens": 12}).json()
    assert native["raw_text"] == choice.message.content and native["boxes"] == ext["boxes"]


def test_streaming_gives_the_same_answer_piece_by_piece(client):
    image = png_data_url(2, 64, 64)
    full = client.chat.completions.create(model="tiny-test", messages=user_message(image), max_tokens=16)
    chunks = list(client.chat.completions.create(model="tiny-test", messages=user_message(image), max_tokens=16,
                                                 stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == full.choices[0].message.content
    assert sum(1 for p in pieces if p) == full.usage.completion_tokens or full.usage.completion_tokens >= 1
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    assert finals[0].chatrex["boxes"] == full.chatrex["boxes"]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_user_boxes_as_an_extension_field(client):
    boxes = [[1, 2, 30, 40], [5, 5, 200, 50]]
    out = client.chat.completions.create(model="x", messages=user_message(png_data_url(3), "What is <obj1>?"),
                                         max_tokens=6, extra_body={"boxes": boxes})
    assert out.chatrex["boxes"] == [[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 80.0, 50.0]]  # clipped to the 80 px image
    assert out.chatrex["scores"] is None and out.chatrex["boxes_from"] == "request"


def test_native_propose_and_ground(http):
    image = png_data_url(4, 90, 70)
    props = http.post("/v1/propose", json={"image": image, "max_boxes": 5, "min_score": 0.0}).json()
    assert props["width"] == 90 and props["height"] == 70 and 1 <= len(props["boxes"]) <= 5
    assert props["scores"] == sorted(props["scores"], reverse=True)
    assert all(0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 70 for x0, y0, x1, y1 in props["boxes"])
    bare = image.split(",", 1)[1]  # the native endpoints also take bare base64
    r = http.post("/v1/ground", json={"image": bare, "question": "Find every dog.", "boxes": props["boxes"],
                                      "max_tokens": 8})
    body = r.json()
    assert r.status_code == 200 and body["boxes"] == props["boxes"] and body["boxes_from"] == "request"
    assert set(body["answer"]) == {"text", "groundings", "dropped"} and body["notice"] == CARD["summary"]
    for g in body["answer"]["groundings"]:
        assert g["boxes"] == [props["boxes"][i] for i in g["indices"]]


def test_regions_with_masks_match_the_pipeline_and_come_back_as_rle(http, client, tiny_pipe):
    import numpy as np
    from pycocotools import mask as mask_utils

    image = png_data_url(6, 80, 60)
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[10:30, 5:40] = 1
    mask[30:50, 20:30] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle = {"size": [60, 80], "counts": rle["counts"].decode("ascii")}
    polygon = [[50, 5, 75, 5, 75, 40]]
    regions = [rle, [2, 2, 20, 20], polygon]
    question = "What is <obj0>?"
    r = http.post("/v1/ground", json={"image": image, "question": question, "regions": regions, "max_tokens": 8})
    body = r.json()
    assert r.status_code == 200, body
    assert body["boxes"] == [[5.0, 10.0, 40.0, 50.0], [2.0, 2.0, 20.0, 20.0], body["boxes"][2]]
    assert body["masks"][1] is None and body["masks"][0]["size"] == [60, 80]
    assert np.array_equal(mask_utils.decode({"size": [60, 80], "counts": body["masks"][0]["counts"].encode()}), mask)
    assert body["masks"][2] is not None and body["boxes_from"] == "request"
    # the same answer as the pipeline called directly with these regions
    pil = Image.open(io.BytesIO(base64.b64decode(image.split(",", 1)[1]))).convert("RGB")
    [ref] = tiny_pipe(pil, question, regions=[mask.astype(bool), [2, 2, 20, 20], polygon], max_new_tokens=8)
    assert body["raw_text"] == ref.raw_text
    # the OpenAI route takes them as an extension field too
    out = client.chat.completions.create(model="x", messages=user_message(image, question), max_tokens=8,
                                         extra_body={"regions": regions})
    assert out.choices[0].message.content == ref.raw_text and out.chatrex["masks"][0] == body["masks"][0]


def test_native_ground_stream(http):
    image = png_data_url(5)
    with http.stream("POST", "/v1/ground", json={"image": image, "question": QUESTION, "max_tokens": 10,
                                                 "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = []
        for block in r.read().decode().split("\n\n"):
            if block.strip():
                name, data = block.split("\n", 1)
                events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    names = [n for n, _ in events]
    assert names[0] == "boxes" and names[-1] == "result" and set(names[1:-1]) <= {"text"}
    result = events[-1][1]
    assert "".join(d["text"] for n, d in events if n == "text") == result["raw_text"]
    assert events[0][1]["boxes"] == result["boxes"]


def test_models_health_and_metrics(server, http):
    models = http.get("/v1/models").json()
    [entry] = models["data"]
    assert entry["id"] == "tiny-test" and entry["notice"] == CARD["summary"]
    assert entry["model_card"]["limitations"] == CARD["limitations"]
    assert http.get("/v1/models/tiny-test").json()["id"] == "tiny-test"
    assert http.get("/v1/models/other").status_code == 404
    health = httpx.get(server.url + "/health")  # no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok"
    http.post("/v1/propose", json={"image": png_data_url(6)})
    text = http.get("/metrics").text
    for name in ("chatrex_requests_total", "chatrex_request_latency_seconds_bucket", "chatrex_queue_depth",
                 "chatrex_batch_size_bucket", "chatrex_generated_tokens_total", "chatrex_gpu_memory_allocated_bytes",
                 "process_resident_memory_bytes"):
        assert name in text, name
    assert 'chatrex_requests_total{endpoint="/v1/propose",status="200"}' in text


# ------------------------------------------------------------------------------------------------
# bad requests: clear 4xx answers, and the server keeps serving
# ------------------------------------------------------------------------------------------------
def _chat(image_url=None, text=QUESTION, **extra):
    content = [{"type": "text", "text": text}]
    if image_url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    return {"model": "tiny-test", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def _ground(**fields):
    return {"image": png_data_url(7), "question": QUESTION, "max_tokens": 4, **fields}


BAD_REQUESTS = [
    # (endpoint, json body or raw bytes, status, words the message must hold)
    ("/v1/chat/completions", _chat(None), 400, "no image"),
    ("/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "Hi"}]}, 400, "no image"),
    ("/v1/chat/completions", _chat(data_url(b"this is not an image")), 400, "not a readable image"),
    ("/v1/chat/completions", _chat(data_url(huge_png())), 400, "too large"),
    ("/v1/chat/completions", _chat(data_url(huge_png(2_000, 1_000))), 400, "2000x1000 = 2,000,000 pixels"),
    ("/v1/ground", {"image": base64.b64encode(huge_png()).decode(), "question": "Hi"}, 400, "at most 1,000,000 pixels"),
    ("/v1/chat/completions", _chat("data:image/png;base64,@@@not-base64@@@"), 400, "not valid base64"),
    ("/v1/chat/completions", _chat("https://example.com/cat.jpg"), 400, "remote image URLs are not fetched"),
    ("/v1/chat/completions", _chat("file:///etc/hostname"), 400, "--allow-local-files"),
    ("/v1/chat/completions", _chat(png_data_url(), boxes=[[0, 0, 10, 10]] * 150), 400, "150 boxes"),
    ("/v1/ground", _ground(boxes=[[0, 0, 10, 10]] * 150), 400, "150 boxes"),
    ("/v1/ground", b'{"image": "%s", "question": "Hi", "boxes": [[0, 0, NaN, 10]]}' % png_data_url().encode(),
     400, "non-finite"),
    ("/v1/ground", _ground(boxes=[[30, 30, 10, 10]]), 400, "empty or inverted"),
    ("/v1/ground", _ground(boxes=[[0, 0, 10]]), 400, "has 3 values"),
    ("/v1/ground", _ground(regions=[{"size": [60, 80], "counts": "0"}]), 400, "region 0"),
    ("/v1/ground", _ground(regions=[{"size": [7, 7], "counts": "07"}]), 400, "region 0"),
    ("/v1/ground", _ground(regions=[[[1, 1, 2, 2]]]), 400, "region 0"),
    ("/v1/ground", _ground(regions=[[0, 0, 10, 10]] * 150), 400, "150 regions"),
    ("/v1/ground", _ground(boxes=[[0, 0, 10, 10]], regions=[[0, 0, 10, 10]]), 400, "not both"),
    ("/v1/chat/completions", _chat(png_data_url(), text="dog " * 100_000), 400, "at most 200 tokens"),
    ("/v1/ground", _ground(question="red car " * 120), 400, "tokens long; the server accepts at most 200"),
    ("/v1/ground", _ground(question="What is <obj5>?", boxes=[[0, 0, 10, 10]]), 400, "<obj5>"),
    ("/v1/ground", _ground(question="Look at <image> here"), 400, "<image>"),
    ("/v1/ground", _ground(question="   "), 400, "empty"),
    ("/v1/ground", _ground(max_tokens=10_000), 400, "at most 24 tokens"),
    ("/v1/ground", _ground(granularity="medium"), 400, "granularity"),
    ("/v1/ground", _ground(colour="red"), 400, "colour"),
    ("/v1/ground", {"question": "Hi"}, 400, "image"),
    ("/v1/propose", {"image": png_data_url(), "max_boxes": 500}, 400, "max_boxes"),
    ("/v1/ground", b"{not json", 400, "JSON"),
    ("/v1/chat/completions", {**_chat(png_data_url()), "messages": [{"role": "system", "content": "Be brief."},
                                                                  *_chat(png_data_url())["messages"]]}, 400, "one question"),
    ("/v1/chat/completions", _chat(png_data_url(), tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    ("/v1/chat/completions", _chat(png_data_url(), n=3), 400, "'n' must be 1"),
]


@pytest.mark.parametrize("endpoint, body, status, words", BAD_REQUESTS,
                         ids=[f"{i}-{b[2]}-{b[3][:20]}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_request_gets_a_clear_answer(http, endpoint, body, status, words):
    if isinstance(body, bytes):
        r = http.post(endpoint, content=body, headers={"Content-Type": "application/json"})
    else:
        r = http.post(endpoint, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words.lower() in error["message"].lower(), error["message"]
    assert error["code"] == status and error["type"]
    # and the server keeps serving
    assert http.post("/v1/propose", json={"image": png_data_url(9, 32, 32), "max_boxes": 1}).status_code == 200


def test_openai_client_sees_bad_requests_as_errors(client):
    with pytest.raises(openai.BadRequestError, match="no image"):
        client.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="150 boxes"):
        client.chat.completions.create(model="tiny-test", messages=user_message(png_data_url()),
                                       extra_body={"boxes": [[0, 0, 5, 5]] * 150})


def test_wrong_or_missing_api_key_is_refused(server):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        wrong.chat.completions.create(model="tiny-test", messages=user_message(png_data_url()))
    r = httpx.post(server.url + "/v1/ground", json=_ground())
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/metrics").status_code == 401
    ok = httpx.get(server.url + "/v1/models", headers={"X-API-Key": KEY})
    assert ok.status_code == 200


def test_body_over_the_limit_is_413(server, http):
    from chatrex.interfaces.server import ServerConfig

    limit = ServerConfig(max_tokens=24, max_prompt_tokens=200).max_request_bytes
    r = http.post("/v1/ground", content=b"x" * (limit + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "at most" in r.json()["error"]["message"]


def test_server_counts_bad_requests_and_keeps_serving(client, http):
    assert http.post("/v1/ground", json=_ground(boxes=[[0, 0, 10, 10]] * 150)).status_code == 400
    out = client.chat.completions.create(model="tiny-test", messages=user_message(png_data_url(8)), max_tokens=4)
    assert out.choices[0].message.content is not None
    assert http.get("/health").json()["status"] == "ok"
    metrics = http.get("/metrics").text
    assert 'chatrex_rejected_total{reason="bad_request"}' in metrics


def test_local_files_only_under_allowed_folders(tiny_pipe, tmp_path):
    from chatrex.interfaces.server import ServerConfig, build_app

    allowed = tmp_path / "images"
    allowed.mkdir()
    inside = allowed / "scene.png"
    Image.new("RGB", (40, 30), "white").save(inside)
    outside = tmp_path / "other.png"
    Image.new("RGB", (40, 30), "white").save(outside)
    (allowed / "link.png").symlink_to(outside)
    config = ServerConfig(model_name="tiny-test", max_tokens=4, allow_local_files=(allowed,))
    with ServerThread(build_app(tiny_pipe, config)) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        out = c.chat.completions.create(model="tiny-test", messages=user_message(inside.as_uri()))
        assert out.chatrex["width"] == 40
        for path in (outside, allowed / "link.png"):
            with pytest.raises(openai.BadRequestError, match="outside the folders"):
                c.chat.completions.create(model="tiny-test", messages=user_message(path.as_uri()))
        with pytest.raises(openai.BadRequestError, match="does not exist"):
            c.chat.completions.create(model="tiny-test", messages=user_message((allowed / "none.png").as_uri()))


def test_api_key_from_the_environment(tiny_pipe, monkeypatch):
    from chatrex.interfaces.server import API_KEY_ENV, ServerConfig

    config = ServerConfig().with_env_keys({API_KEY_ENV: "a, b"})
    assert config.api_keys == ("a", "b")
    assert ServerConfig(api_keys=("c",)).with_env_keys({API_KEY_ENV: "a"}).api_keys == ("c",)
    assert ServerConfig().with_env_keys({}).api_keys == ()
