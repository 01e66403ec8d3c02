"""Dynamic batching: one worker thread owns the pipeline and runs the queued requests in batches.

::

    submit(job) ─► bounded FIFO queue (full: QueueFull → 429; closed: SchedulerClosed → 503)
                     │  worker: take the first job, wait up to batch_wait for more (≤ max_batch_size)
                     ▼
    stage 1  UPN   every job without boxes, grouped by proposal settings: ChatRexPipeline.propose passes
                   of up to upn_batch_size images per group (propose jobs finish here)
    stage 2  LLM   the generate jobs, grouped by sampling settings: one ChatRexPipeline call (one batched
                   ``generate``) per group, with a streamer that hands each row's text to its job as it
                   is generated and a stopping criterion that ends each row at its own max_tokens, or
                   when its client went away or its time ran out (the other rows go on)

Batching is *at admission*: requests that arrive while a batch is generating wait for the next batch
(no continuous batching: the pipeline's generate runs a batch to its end). The generation goes
through the pipeline's public call, so a faster generate path there serves the server too; it must
keep honouring ``streamer`` (``put`` of the prompt, then of each step's (B,) tokens) and
``stopping_criteria`` (per-row booleans), as transformers' ``generate`` does.

A job's events reach the asyncio side through ``loop.call_soon_threadsafe``: ``("boxes", (boxes,
scores))``, ``("text", piece)`` …, then ``("done", JobOutcome)`` or ``("error", RequestFailed)``.
Bad input found in a batch (a ``ValueError`` from the pipeline) is retried one request at a time so
that only the request at fault fails; other errors fail the batch with 500 and are logged with their
traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, Sequence

import torch

from chatrex.interfaces.pipeline import MAX_BOXES, PipelineResult

__all__ = [
    "Scheduler",
    "Job",
    "JobOutcome",
    "ProposalSettings",
    "GenerationSettings",
    "RequestFailed",
    "QueueFull",
    "SchedulerClosed",
]

logger = logging.getLogger("chatrex.server")

_OBJ_REF = re.compile(r"<obj(\d+)>")


class RequestFailed(Exception):
    """A request that ends without an answer: ``status`` is the HTTP status the app answers with."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


class QueueFull(RequestFailed):
    def __init__(self, max_queue: int) -> None:
        super().__init__(429, f"the server is busy: {max_queue} requests are already waiting; retry later",
                         "rate_limit_error")


class SchedulerClosed(RequestFailed):
    def __init__(self) -> None:
        super().__init__(503, "the server is not accepting requests (starting or shutting down)", "server_error")


@dataclass(frozen=True)
class ProposalSettings:
    """How a job gets its boxes from the UPN (see ``ChatRexPipeline.propose``); jobs with equal settings
    share a UPN pass."""

    granularity: str = "fine"
    min_score: Optional[float] = None
    nms: Optional[float] = None
    max_boxes: int = MAX_BOXES


@dataclass(frozen=True)
class GenerationSettings:
    """A job's decoding: greedy when ``temperature`` is 0, else sampling. Jobs that decode alike share a
    ``generate`` call; ``max_new_tokens`` may differ between them (each row stops at its own)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def group_key(self) -> tuple:
        return (True, self.temperature, self.top_p) if self.do_sample else (False,)

    def generate_kwargs(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


@dataclass
class JobOutcome:
    """What a finished job returns.

    Attributes:
        boxes / scores: the boxes (original pixels) and their UPN scores (None for the request's own boxes).
        result: the parsed answer (generate jobs), with these boxes and scores.
        prompt_tokens / completion_tokens: tokens read and generated (generate jobs).
        finish_reason: "stop" (end of answer) or "length" (max_tokens reached).
    """

    boxes: list[list[float]]
    scores: Optional[list[float]]
    result: Optional[PipelineResult] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Optional[str] = None


class Job:
    """One request for the scheduler: proposals only (``generation`` None) or a generated answer.

    Create it on the event loop that will read its events (``events()`` / ``outcome()``). ``boxes``
    are the request's own boxes (already checked against the image), or None for UPN proposals.
    """

    def __init__(self, image: Any, question: Optional[str] = None, boxes: Optional[list[list[float]]] = None,
                 proposal: ProposalSettings = ProposalSettings(), generation: Optional[GenerationSettings] = None,
                 timeout_s: float = 300.0, loop: Optional[asyncio.AbstractEventLoop] = None,
                 regions: Optional[list[Any]] = None) -> None:
        if generation is not None and not question:
            raise ValueError("a generate job needs a question")
        self.id = uuid.uuid4().hex
        self.image = image
        self.question = question
        if regions is not None and (boxes is None or len(boxes) != len(regions)):
            raise ValueError("a job with regions needs their boxes, one per region")
        self.boxes = boxes
        self.regions = regions  # the request's regions (boxes and decoded masks), or None
        self.scores: Optional[list[float]] = None
        self.user_boxes = boxes is not None
        self.proposal = proposal
        self.generation = generation
        self.created = time.monotonic()
        self.deadline = self.created + float(timeout_s)
        self.loop = loop or asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        self._cancel = threading.Event()
        self.cancel_reason: Optional[str] = None
        self.finished = False  # worker side: done or failed was posted
        self._boxes_announced = False

    @property
    def kind(self) -> str:
        return "propose" if self.generation is None else "generate"

    # ------------------------------------------------------------------ either side
    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the worker to drop this job (``reason``: "client" when the client went away, "timeout")."""
        if not self._cancel.is_set():
            self.cancel_reason = reason
            self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def should_stop(self, now: Optional[float] = None) -> bool:
        """Cancelled, or past its deadline (then it is cancelled with reason "timeout")."""
        if self._cancel.is_set():
            return True
        if (time.monotonic() if now is None else now) >= self.deadline:
            self.cancel("timeout")
            return True
        return False

    def stop_error(self) -> RequestFailed:
        if self.cancel_reason == "timeout":
            return RequestFailed(504, "the request did not finish within the server's time limit", "timeout_error")
        return RequestFailed(499, "the request was cancelled", "cancelled")

    # ------------------------------------------------------------------ worker side
    def _post(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self._events.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def announce_boxes(self) -> None:
        """Post ``("boxes", (boxes, scores))`` once, when generation is about to start."""
        if not self._boxes_announced:
            self._boxes_announced = True
            self._post("boxes", (self.boxes, self.scores))

    def finish(self, outcome: JobOutcome) -> None:
        if not self.finished:
            self.finished = True
            self._post("done", outcome)

    def fail(self, error: RequestFailed) -> None:
        if not self.finished:
            self.finished = True
            self._post("error", error)

    # ------------------------------------------------------------------ asyncio side
    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """The job's events until ``("done", JobOutcome)``; a failure raises its ``RequestFailed``, and so
        does the deadline (504: the job is cancelled, the worker drops it or stops its row)."""
        while True:
            remaining = self.deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                kind, payload = await asyncio.wait_for(self._events.get(), remaining)
            except asyncio.TimeoutError:
                self.cancel("timeout")
                raise self.stop_error() from None
            if kind == "error":
                raise payload
            yield kind, payload
            if kind == "done":
                return

    async def outcome(self) -> JobOutcome:
        async for kind, payload in self.events():
            if kind == "done":
                return payload
        raise RuntimeError("the job's events ended without an outcome")  # pragma: no cover - events() always ends so


# ------------------------------------------------------------------------------------------------
# generation helpers: one streamer and one stopping criterion for a whole batch
# ------------------------------------------------------------------------------------------------
class _RowStreamer:
    """A transformers streamer for a batch of jobs: each row's new tokens → text pieces for its job.

    Text is decoded incrementally (a window from the last complete piece), so a step costs the same
    at token 5 and at token 500; a piece that ends in an incomplete character waits for the next token.
    """

    def __init__(self, jobs: Sequence[Job], decode: Callable[[list[int]], str], eos_ids: set[int],
                 pad_id: Optional[int]) -> None:
        n = len(jobs)
        self.jobs = list(jobs)
        self.decode = decode
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.limit = [j.generation.max_new_tokens for j in jobs]
        self.done = [False] * n
        self.saw_eos = [False] * n
        self.prompt_tokens = [0] * n
        self.text = [""] * n
        self._prefix = [0] * n
        self._read = [0] * n
        self._seen_prompt = False

    def stop_row(self, row: int) -> None:
        """The row ends after the token of this step (called by the stopping criterion before ``put``)."""
        self.limit[row] = min(self.limit[row], len(self.ids[row]) + 1)

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            if value.ndim == 2 and value.shape[0] == len(self.jobs):
                for r, row in enumerate(value.tolist()):
                    lead = 0
                    while lead < len(row) and self.pad_id is not None and row[lead] == self.pad_id:
                        lead += 1
                    self.prompt_tokens[r] = len(row) - lead
                return
        tokens = value.reshape(-1).tolist()
        for r, tok in enumerate(tokens[: len(self.jobs)]):
            if self.done[r]:
                continue
            if int(tok) in self.eos_ids:
                self.done[r] = self.saw_eos[r] = True
                continue
            self.ids[r].append(int(tok))
            if len(self.ids[r]) >= self.limit[r]:
                self.done[r] = True
            piece = self._piece(r)
            if piece and not self.jobs[r].cancelled:
                self.text[r] += piece
                self.jobs[r]._post("text", piece)

    def _piece(self, r: int) -> str:
        ids = self.ids[r]
        before = self.decode(ids[self._prefix[r]: self._read[r]])
        now = self.decode(ids[self._prefix[r]:])
        if len(now) > len(before) and not now.endswith("\ufffd") and now.startswith(before):
            self._prefix[r], self._read[r] = self._read[r], len(ids)
            return now[len(before):]
        return ""

    def end(self) -> None:
        pass  # the scheduler sends what is left from the pipeline's final text


class _RowStop:
    """Per-row stopping for transformers' ``generate``: a row is done at its own ``max_new_tokens``, or
    as soon as its job is cancelled or past its deadline (the batch goes on for the other rows)."""

    def __init__(self, jobs: Sequence[Job], streamer: _RowStreamer) -> None:
        self.jobs = list(jobs)
        self.streamer = streamer
        self.start: Optional[int] = None

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        if self.start is None:
            self.start = int(input_ids.shape[1]) - 1  # first call: one token generated
        generated = int(input_ids.shape[1]) - self.start
        now = time.monotonic()
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for r, job in enumerate(self.jobs):
            if generated >= job.generation.max_new_tokens:
                done[r] = True
            elif job.should_stop(now):
                done[r] = True
                self.streamer.stop_row(r)
        return done.to(input_ids.device)


def _group(jobs: Sequence[Job], key: Callable[[Job], Any]) -> list[list[Job]]:
    groups: dict[Any, list[Job]] = {}
    for job in jobs:
        groups.setdefault(key(job), []).append(job)
    return list(groups.values())


# ------------------------------------------------------------------------------------------------
# the scheduler
# ------------------------------------------------------------------------------------------------
class Scheduler:
    """Runs jobs on ``pipe`` (a :class:`~chatrex.interfaces.pipeline.ChatRexPipeline`) in batches.

    Args:
        max_batch_size: jobs per batch (1: one at a time).
        upn_batch_size: images per UPN pass (default ``max_batch_size``).
        batch_wait_s: how long the first job of a batch waits for company while fewer than
            ``max_batch_size`` are queued.
        max_queue: jobs that may wait beyond the running batch.
        metrics: a :class:`~chatrex.interfaces.server.metrics.ServerMetrics`, or None.
    """

    def __init__(self, pipe: Any, max_batch_size: int = 8, batch_wait_s: float = 0.01, max_queue: int = 64,
                 metrics: Any = None, upn_batch_size: Optional[int] = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or batch_wait_s < 0 or (upn_batch_size is not None and upn_batch_size < 1):
            raise ValueError("max_batch_size, upn_batch_size and max_queue must be >= 1 and batch_wait_s >= 0")
        self.pipe = pipe
        self.max_batch_size = int(max_batch_size)
        self.upn_batch_size = int(upn_batch_size or max_batch_size)
        self.batch_wait_s = float(batch_wait_s)
        self.max_queue = int(max_queue)
        self.metrics = metrics
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = True
        self._thread: Optional[threading.Thread] = None
        self._running = 0
        self.batches_run = 0
        tok = pipe.tokenizer
        eos = pipe.generation_config.eos_token_id
        self._eos_ids = {int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None}
        if tok.eos_token_id is not None:
            self._eos_ids.add(int(tok.eos_token_id))
        self._pad_id = pipe.generation_config.pad_token_id
        processor_decode = getattr(pipe.processor, "decode", None)
        self._decode = processor_decode if processor_decode is not None else (
            lambda ids: tok.decode(ids, skip_special_tokens=False))
        if metrics is not None:
            metrics.queue_depth.set_function(lambda: float(self.queue_depth))
            metrics.running.set_function(lambda: float(self._running))

    # ------------------------------------------------------------------ control
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closed = False
            self._thread = threading.Thread(target=self._loop, name="chatrex-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, fail the queued ones (503), let the running batch finish, join the worker."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            job.fail(SchedulerClosed())
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue ``job``. Raises QueueFull (429) or SchedulerClosed (503)."""
        with self._cond:
            if self._closed or self._thread is None or not self._thread.is_alive():
                raise SchedulerClosed()
            if len(self._queue) >= self.max_queue:
                if self.metrics is not None:
                    self.metrics.rejected.labels(reason="queue_full").inc()
                raise QueueFull(self.max_queue)
            self._queue.append(job)
            self._cond.notify()

    # ------------------------------------------------------------------ worker
    def _take_batch(self) -> list[Job]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            until = time.monotonic() + self.batch_wait_s
            while len(self._queue) < self.max_batch_size and not self._closed:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch_size))]

    def _loop(self) -> None:
        while True:
            jobs = self._take_batch()
            if not jobs:
                if self._closed:
                    return
                continue
            self._running = len(jobs)
            try:
                self._run_batch(jobs)
            except Exception:  # noqa: BLE001 - keep serving; every job of the batch gets an answer
                logger.exception("a batch of %d requests failed", len(jobs))
                for job in jobs:
                    job.fail(RequestFailed(500, "internal error while running the model (see the server log)",
                                           "server_error"))
            finally:
                self._running = 0
                self.batches_run += 1

    def _live(self, jobs: Sequence[Job]) -> list[Job]:
        """The jobs still wanted; the others are failed (timeout 504, cancelled 499)."""
        live = []
        now = time.monotonic()
        for job in jobs:
            if job.finished:
                continue
            if job.should_stop(now):
                if self.metrics is not None:
                    self.metrics.rejected.labels(reason="timeout" if job.cancel_reason == "timeout" else "cancelled").inc()
                job.fail(job.stop_error())
            else:
                live.append(job)
        return live

    def _run_batch(self, jobs: list[Job]) -> None:
        live = self._live(jobs)
        need = [j for j in live if j.boxes is None]
        for group in _group(need, lambda j: j.proposal):
            for start in range(0, len(group), self.upn_batch_size):
                self._propose(group[start:start + self.upn_batch_size])
        generate = [j for j in self._live(live) if j.kind == "generate"]
        for group in _group(generate, lambda j: j.generation.group_key()):
            self._generate(group)

    def _propose(self, group: list[Job]) -> None:
        s = group[0].proposal
        try:
            with torch.inference_mode():
                out = self.pipe.propose([j.image for j in group], s.granularity, s.min_score, s.nms, s.max_boxes)
        except ValueError as exc:  # bad input: find the request at fault
            if len(group) > 1:
                for job in group:
                    self._propose([job])
                return
            group[0].fail(RequestFailed(400, str(exc)))
            return
        except torch.OutOfMemoryError:
            self._out_of_memory(group, self._propose, started=False)
            return
        if self.metrics is not None:
            self.metrics.batch_size.labels(stage="upn").observe(len(group))
        for job, (boxes, scores) in zip(group, out):
            job.boxes, job.scores = boxes, scores
            if job.kind == "propose":
                job.finish(JobOutcome(boxes, scores))

    def _out_of_memory(self, group: list[Job], retry: Callable[[list[Job]], None], started: bool) -> None:
        """Out of device memory: run the group again in two halves; a single request (or one whose text
        was already sent) fails with 503."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(group) > 1 and not started:
            logger.warning("out of memory with a batch of %d; running it in two halves", len(group))
            half = len(group) // 2
            retry(group[:half])
            retry(group[half:])
            return
        for job in group:
            job.fail(RequestFailed(503, "the server ran out of device memory for this request; retry, or start the "
                                        "server with a smaller --max-batch-size", "server_error"))

    def _check_refs(self, job: Job) -> bool:
        """A question naming ``<objK>`` beyond the job's boxes fails now, not inside the batch."""
        for m in _OBJ_REF.finditer(job.question or ""):
            if int(m.group(1)) >= len(job.boxes):
                n = len(job.boxes)
                job.fail(RequestFailed(400, f"the question refers to {m.group(0)} but the image has "
                                            + (f"only {n} boxes (<obj0>..<obj{n - 1}>)" if n else "no boxes")))
                return False
        return True

    def _generate(self, group: list[Job]) -> None:
        group = [j for j in group if self._check_refs(j)]
        if not group:
            return
        streamer = _RowStreamer(group, self._decode, self._eos_ids, self._pad_id)
        stop = _RowStop(group, streamer)
        from transformers import StoppingCriteriaList

        settings = group[0].generation
        max_new = max(j.generation.max_new_tokens for j in group)
        for job in group:
            job.announce_boxes()
        start = time.perf_counter()
        try:
            if any(j.regions is not None for j in group):  # masks among them: every row as regions
                where = {"regions": [j.regions if j.regions is not None else j.boxes for j in group]}
            else:
                where = {"boxes": [j.boxes for j in group]}
            results = self.pipe(
                [j.image for j in group], [j.question for j in group], **where,
                batch_size=len(group), max_new_tokens=max_new, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([stop]), **settings.generate_kwargs(),
            )
        except ValueError as exc:  # bad input: find the request at fault
            if len(group) > 1 and not any(streamer.text):
                for job in group:
                    self._generate([job])
                return
            for job in group:
                job.fail(RequestFailed(400, str(exc)))
            return
        except torch.OutOfMemoryError:
            self._out_of_memory(group, self._generate, started=any(streamer.text))
            return
        seconds = time.perf_counter() - start
        generated = sum(len(ids) for ids in streamer.ids)
        if self.metrics is not None:
            self.metrics.batch_size.labels(stage="generate").observe(len(group))
            self.metrics.generated_tokens.inc(generated)
            self.metrics.prompt_tokens.inc(sum(streamer.prompt_tokens))
            if seconds > 0:
                self.metrics.decode_tps.set(generated / seconds)
        for r, (job, res) in enumerate(zip(group, results)):
            if job.should_stop():
                if self.metrics is not None:
                    self.metrics.rejected.labels(reason="timeout" if job.cancel_reason == "timeout" else "cancelled").inc()
                job.fail(job.stop_error())
                continue
            sent = streamer.text[r]
            if res.raw_text.startswith(sent):
                rest = res.raw_text[len(sent):]
                if rest:
                    job._post("text", rest)
            else:  # the incremental decoding disagreed with the final text (should not happen)
                logger.warning("streamed text %r is not a prefix of the final answer %r", sent, res.raw_text)
            result = PipelineResult(res.answer, res.raw_text, job.boxes, job.scores, res.masks)
            job.finish(JobOutcome(job.boxes, job.scores, result, streamer.prompt_tokens[r], len(streamer.ids[r]),
                                  "stop" if streamer.saw_eos[r] else "length"))
