"""The HTTP API of ``chatrex serve`` (FastAPI) around one loaded pipeline.

=========================  ====================================================================
``POST /v1/chat/completions``  OpenAI chat completions: one user message with one ``image_url``
                           part (data URL; ``file://`` under ``--allow-local-files``) and the
                           question; ``stream: true`` answers with server-sent events. Extension
                           fields: request ``boxes``, ``granularity``, ``min_score``, ``nms``,
                           ``max_boxes``; answer ``chatrex`` (groundings with boxes, proposals).
``POST /v1/ground``        image + question [+ boxes] → answer text, groundings (phrase, indices,
                           boxes in pixels), the boxes the model saw and their scores
                           (``stream: true``: events ``boxes``, ``text``…, ``result``)
``POST /v1/propose``       image → the UPN's proposals (boxes in pixels, scores)
``GET /v1/models``         the served model, with its model card
``GET /health``            200 while the scheduler runs (no key needed), else 503
``GET /metrics``           Prometheus text (:mod:`chatrex.interfaces.server.metrics`)
=========================  ====================================================================

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``: 400 bad request (the
message says what is wrong), 401 missing or wrong API key, 413 body too large, 429 queue full, 503 not
running, 504 past the request time limit, 500 internal (logged with its traceback). When a client
goes away, its request is cancelled: it leaves the queue, or its row of the running batch stops.

Example::

    pipe = ChatRexPipeline.from_pretrained("chatrex/assets/chatrex-small")
    app = build_app(pipe, ServerConfig(model_name="chatrex-small"))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatrex.interfaces.model_card import model_card_line
from chatrex.interfaces.pipeline import validate_boxes, validate_regions
from chatrex.interfaces.server.config import ServerConfig
from chatrex.interfaces.server.images import load_image_url
from chatrex.interfaces.server.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from chatrex.interfaces.server.scheduler import (
    GenerationSettings,
    Job,
    JobOutcome,
    ProposalSettings,
    RequestFailed,
    Scheduler,
)
from chatrex.interfaces.server.schemas import (
    ChatCompletionRequest,
    GroundRequest,
    ProposalOptions,
    ProposeRequest,
    chat_image_and_question,
    unsupported_fields,
)
from chatrex.mllm.tokens import IMAGE_TOKEN, OBJFEAT_TOKEN

__all__ = ["build_app", "error_body"]

logger = logging.getLogger("chatrex.server")

#: Paths that answer without an API key.
OPEN_PATHS = ("/health",)
#: A question longer than this many characters per allowed token is refused before it is tokenized.
CHARS_PER_TOKEN_BOUND = 16

_STATUS_KIND = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
                503: "server_error", 504: "timeout_error"}


def error_body(status: int, message: str, kind: Optional[str] = None, param: Optional[str] = None) -> dict:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": kind or _STATUS_KIND.get(status, "server_error"),
                      "param": param, "code": status}}


def _error_response(exc: RequestFailed) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(error_body(exc.status, exc.message, exc.kind), status_code=exc.status, headers=headers)


class _Gate:
    """Pure ASGI middleware in front of every HTTP request: the API key, the body size limit, and the
    request metrics (status and time to the last byte, also for streamed answers)."""

    def __init__(self, app: Any, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics

    async def _refuse(self, send: Callable, status: int, message: str) -> None:
        body = json.dumps(error_body(status, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _key_problem(self, headers: dict[bytes, bytes]) -> Optional[str]:
        if not self.config.api_keys:
            return None
        key = ""
        auth = headers.get(b"authorization", b"").decode("latin-1").strip()
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        key = key or headers.get(b"x-api-key", b"").decode("latin-1").strip()
        if not key:
            return "missing API key: send 'Authorization: Bearer KEY' (or 'X-API-Key: KEY')"
        if not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.config.api_keys):
            return "invalid API key"
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        state = {"status": 500, "observed": False}

        def observe() -> None:
            if not state["observed"]:
                state["observed"] = True
                self.metrics.observe_request(path, state["status"], time.perf_counter() - start)

        async def send_and_observe(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                observe()

        headers = dict(scope.get("headers") or [])
        try:
            problem = None if path in OPEN_PATHS else self._key_problem(headers)
            if problem:
                await self._refuse(send_and_observe, 401, problem)
                return
            limit = self.config.max_request_bytes
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                await self._refuse(send_and_observe, 413, f"the request body is {int(length):,} bytes; the server "
                                                          f"accepts at most {limit:,}")
                return
            received = 0

            async def limited_receive() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        # fastapi's HTTPException: the body parser passes it on (other errors become a 400)
                        raise HTTPException(413, f"the request body is over the limit of {limit:,} bytes")
                return message

            await self.app(scope, limited_receive, send_and_observe)
        finally:
            observe()


def _http_error_message(exc: StarletteHTTPException) -> str:
    detail = exc.detail
    return detail if isinstance(detail, str) else json.dumps(detail)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts[:10]) or "invalid request"


def build_app(pipe: Any, config: ServerConfig = ServerConfig(), scheduler: Optional[Scheduler] = None) -> FastAPI:
    """A FastAPI app serving ``pipe`` (a :class:`~chatrex.interfaces.pipeline.ChatRexPipeline`).

    The scheduler's worker starts with the app (lifespan) and stops with it. ``scheduler`` may be given
    (tests); by default it is built from ``config`` (``max_batch_size``, ``batch_wait_ms``, ``max_queue``).
    """
    metrics = ServerMetrics(getattr(pipe, "device", None))
    if scheduler is None:
        scheduler = Scheduler(pipe, config.max_batch_size, config.batch_wait_ms / 1000.0, config.max_queue, metrics,
                              upn_batch_size=config.upn_batch_size)
    card = getattr(pipe, "model_card", None)
    card_line = model_card_line(pipe)
    created = int(time.time())
    counter = _TokenCounter(pipe.tokenizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="ChatRex", version="1", lifespan=lifespan,
                  description="Grounded answers about images: OpenAI-compatible chat completions and native endpoints.")
    app.state.scheduler = scheduler
    app.state.metrics = metrics
    app.state.config = config
    app.state.pipe = pipe

    # ---------------------------------------------------------------- errors
    @app.exception_handler(RequestFailed)
    async def _failed(request: Request, exc: RequestFailed) -> JSONResponse:
        if exc.status == 400:
            metrics.rejected.labels(reason="bad_request").inc()
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.rejected.labels(reason="bad_request").inc()
        return JSONResponse(error_body(400, _validation_message(exc)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, _http_error_message(exc)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, f"internal error ({type(exc).__name__}); see the server log"),
                            status_code=500)

    # ---------------------------------------------------------------- helpers
    async def load_image(url: str, bare_base64: bool) -> Any:
        try:
            return await asyncio.to_thread(load_image_url, url, config.max_image_bytes, config.max_image_pixels,
                                           config.allow_local_files, bare_base64)
        except ValueError as exc:  # ImageLoadError
            raise RequestFailed(400, str(exc)) from None

    async def check_question(question: str) -> None:
        if not question or not question.strip():
            raise RequestFailed(400, "the question is empty")
        for placeholder in (IMAGE_TOKEN, OBJFEAT_TOKEN):
            if placeholder in question:
                raise RequestFailed(400, f"the question contains {placeholder}, which the server inserts itself; "
                                         "send the image as an image_url part (or 'image') and refer to boxes as <objK>")
        limit = config.max_prompt_tokens
        if len(question) > limit * CHARS_PER_TOKEN_BOUND:
            raise RequestFailed(400, f"the question is {len(question):,} characters long; the server accepts at most "
                                     f"{limit:,} tokens")
        n = await asyncio.to_thread(counter.count, question)
        if n > limit:
            raise RequestFailed(400, f"the question is {n:,} tokens long; the server accepts at most {limit:,} tokens")

    async def generate_job(image_url: str, question: str, opts: ProposalOptions, max_tokens: Optional[int],
                           temperature: float, top_p: float, bare_base64: bool) -> Job:
        max_new = config.max_tokens if max_tokens is None else int(max_tokens)
        if not 1 <= max_new <= config.max_tokens:
            raise RequestFailed(400, f"max_tokens is {max_new}; the server generates at most {config.max_tokens} tokens")
        if opts.boxes is not None and opts.regions is not None:
            raise RequestFailed(400, "give boxes or regions, not both (regions may hold boxes and masks)")
        for name, given in (("boxes", opts.boxes), ("regions", opts.regions)):
            if given is not None and len(given) > config.max_boxes:
                raise RequestFailed(400, f"{name}: {len(given)} {name} given but at most {config.max_boxes} are "
                                         "allowed (ChatRex reads at most 100)")
        await check_question(question)
        image = await load_image(image_url, bare_base64)
        boxes = regions = None
        if opts.regions is not None:
            try:  # masks are decoded and checked against the image (size, binary, RLE runs) off the event loop
                regions, boxes, _ = await asyncio.to_thread(
                    validate_regions, opts.regions, image.width, image.height, config.max_boxes, "regions")
            except ValueError as exc:
                raise RequestFailed(400, str(exc)) from None
        elif opts.boxes is not None:
            try:
                boxes = validate_boxes(opts.boxes, image.width, image.height, config.max_boxes, where="boxes")
            except ValueError as exc:
                raise RequestFailed(400, str(exc)) from None
            if getattr(pipe.processor, "official", False):  # as the pipeline does: official inputs keep boxes unclipped
                boxes = [[float(v) for v in box] for box in opts.boxes]
        return Job(image, question, boxes, ProposalSettings(opts.granularity, opts.min_score, opts.nms, opts.max_boxes),
                   GenerationSettings(max_new, float(temperature or 0.0), float(1.0 if top_p is None else top_p)),
                   timeout_s=config.request_timeout_s, regions=regions)

    async def run(request: Request, job: Job) -> JobOutcome:
        scheduler.submit(job)
        watcher = asyncio.create_task(_watch_disconnect(request, job, metrics))
        try:
            return await job.outcome()
        except asyncio.CancelledError:
            job.cancel("client")
            raise
        finally:
            watcher.cancel()

    def sse(request: Request, job: Job, frames: Callable[[Job], AsyncIterator[str]]) -> StreamingResponse:
        scheduler.submit(job)  # a full queue is answered 429 before the stream starts

        async def body() -> AsyncIterator[str]:
            watcher = asyncio.create_task(_watch_disconnect(request, job, metrics))
            try:
                async for frame in frames(job):
                    yield frame
            finally:
                watcher.cancel()
                job.cancel("client")  # a no-op once the job is done

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def image_size(job: Job) -> dict:
        return {"width": job.image.width, "height": job.image.height}

    def ground_body(job: Job, outcome: JobOutcome) -> dict:
        body = {"id": f"ground-{job.id}", "object": "chatrex.ground", "created": int(time.time()),
                "model": config.model_name, "question": job.question, **image_size(job),
                **outcome.result.to_dict(),
                "boxes_from": "request" if job.user_boxes else "upn",
                "finish_reason": outcome.finish_reason,
                "usage": _usage(outcome)}
        if card_line:
            body["notice"] = card_line
        return body

    def chatrex_extension(job: Job, outcome: JobOutcome) -> dict:
        ext = outcome.result.to_dict()
        ext.pop("raw_text", None)
        ext.update(image_size(job))
        ext["boxes_from"] = "request" if job.user_boxes else "upn"
        if card_line:
            ext["notice"] = card_line
        return ext

    # ---------------------------------------------------------------- endpoints
    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "ok" if scheduler.alive else "unavailable", "model": config.model_name,
                "queue_depth": scheduler.queue_depth, "max_queue": config.max_queue,
                "max_batch_size": config.max_batch_size}
        if card_line:
            body["notice"] = card_line
        return JSONResponse(body, status_code=200 if scheduler.alive else 503)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def model_entry() -> dict:
        return {"id": config.model_name, "object": "model", "created": created, "owned_by": "chatrex",
                "notice": card_line, "model_card": card.to_dict() if card is not None else None}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_entry()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        if model_id != config.model_name:
            raise RequestFailed(404, f"model '{model_id}' is not served here; this server serves '{config.model_name}'",
                                "not_found_error")
        return model_entry()

    @app.post("/v1/propose")
    async def propose(req: ProposeRequest, request: Request) -> dict:
        image = await load_image(req.image, bare_base64=True)
        job = Job(image, proposal=ProposalSettings(req.granularity, req.min_score, req.nms, req.max_boxes),
                  timeout_s=config.request_timeout_s)
        outcome = await run(request, job)
        body = {"id": f"propose-{job.id}", "object": "chatrex.proposals", "created": int(time.time()),
                "model": config.model_name, "granularity": req.granularity, **image_size(job),
                "boxes": outcome.boxes, "scores": outcome.scores}
        if card_line:
            body["notice"] = card_line
        return body

    @app.post("/v1/ground", response_model=None)
    async def ground(req: GroundRequest, request: Request) -> Any:
        job = await generate_job(req.image, req.question, req, req.max_tokens, req.temperature, req.top_p, True)
        if not req.stream:
            return ground_body(job, await run(request, job))

        async def frames(job: Job) -> AsyncIterator[str]:
            try:
                async for kind, payload in job.events():
                    if kind == "boxes":
                        yield _event("boxes", {"boxes": payload[0], "scores": payload[1]})
                    elif kind == "text":
                        yield _event("text", {"text": payload})
                    elif kind == "done":
                        yield _event("result", ground_body(job, payload))
            except RequestFailed as exc:
                yield _event("error", error_body(exc.status, exc.message, exc.kind))

        return sse(request, job, frames)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest, request: Request) -> Any:
        problems = unsupported_fields(req)
        if problems:
            raise RequestFailed(400, "; ".join(problems))
        try:
            image_url, question = chat_image_and_question(req.messages)
        except ValueError as exc:
            raise RequestFailed(400, str(exc)) from None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        job = await generate_job(image_url, question, req, max_tokens, req.temperature or 0.0, req.top_p, False)
        completion_id = f"chatcmpl-{job.id}"
        if not req.stream:
            outcome = await run(request, job)
            return {"id": completion_id, "object": "chat.completion", "created": int(time.time()),
                    "model": config.model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.result.raw_text},
                                 "finish_reason": outcome.finish_reason, "logprobs": None}],
                    "usage": _usage(outcome), "chatrex": chatrex_extension(job, outcome)}
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        created_at = int(time.time())

        def chunk(delta: dict, finish_reason: Optional[str] = None, **extra: Any) -> str:
            body = {"id": completion_id, "object": "chat.completion.chunk", "created": created_at,
                    "model": config.model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
                    **extra}
            return f"data: {json.dumps(body)}\n\n"

        async def frames(job: Job) -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for kind, payload in job.events():
                    if kind == "text":
                        yield chunk({"content": payload})
                    elif kind == "done":
                        yield chunk({}, payload.finish_reason, chatrex=chatrex_extension(job, payload))
                        if include_usage:
                            body = {"id": completion_id, "object": "chat.completion.chunk", "created": created_at,
                                    "model": config.model_name, "choices": [], "usage": _usage(payload)}
                            yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
            except RequestFailed as exc:
                yield f"data: {json.dumps(error_body(exc.status, exc.message, exc.kind))}\n\n"

        return sse(request, job, frames)

    app.add_middleware(_Gate, config=config, metrics=metrics)
    return app


def _usage(outcome: JobOutcome) -> dict:
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


async def _watch_disconnect(request: Request, job: Job, metrics: ServerMetrics) -> None:
    """Cancel ``job`` when the client goes away (the server reads ``http.disconnect`` once the body is in)."""
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                metrics.disconnects.inc()
                job.cancel("client")
                return
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a receive channel that cannot be read: nothing to watch
        return


class _TokenCounter:
    """Counts a question's tokens off the worker thread, with a tokenizer of its own (a fast tokenizer
    used from two threads at once may refuse: "Already borrowed")."""

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = copy.deepcopy(backend) if backend is not None else None
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        if self._backend is not None:
            return len(self._backend.encode(text, add_special_tokens=False).ids)
        with self._lock:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
