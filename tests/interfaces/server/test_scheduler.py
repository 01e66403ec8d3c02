"""The scheduler on the tiny pipeline: requests that wait together run as one UPN pass and one
generate call, with the answers they get alone; each row stops at its own max_tokens or when its job
is cancelled; the queue is bounded; deadlines and bad input fail only their own request."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from chatrex.interfaces.server.metrics import ServerMetrics
from chatrex.interfaces.server.scheduler import (
    GenerationSettings,
    Job,
    ProposalSettings,
    QueueFull,
    RequestFailed,
    Scheduler,
    SchedulerClosed,
)
from tests.interfaces.server.conftest import GatedPipe
from tests.mllm.conftest import random_image

Q = "Find every dog in this image."


def image(seed: int, w: int = 72, h: int = 56) -> Image.Image:
    return Image.fromarray(random_image(seed, w, h))


@pytest.fixture
def gated(tiny_pipe):
    return GatedPipe(tiny_pipe)


def run(coro):
    return asyncio.run(coro)


async def wait_entered(gated: GatedPipe) -> None:
    assert await asyncio.to_thread(gated.entered.wait, 60)


def test_waiting_requests_run_as_one_batch_with_their_single_answers(tiny_pipe, gated):
    sched = Scheduler(gated, max_batch_size=4, batch_wait_s=0.0, max_queue=8)
    sched.start()

    async def main():
        first = Job(image(0), Q, generation=GenerationSettings(6))
        sched.submit(first)
        await wait_entered(gated)  # the worker holds `first`; the next four queue up behind it
        rest = [Job(image(s), Q, proposal=ProposalSettings(max_boxes=5), generation=GenerationSettings(6))
                for s in range(1, 4)]
        rest.append(Job(image(4), proposal=ProposalSettings(max_boxes=5)))  # proposals only
        for job in rest:
            sched.submit(job)
        assert sched.queue_depth == 4
        gated.gate.set()
        return await asyncio.gather(*(j.outcome() for j in [first, *rest])), [first, *rest]

    try:
        outcomes, jobs = run(main())
    finally:
        sched.stop()
    assert gated.calls == [("propose", 1), ("generate", 1), ("propose", 4), ("generate", 3)]
    for job, out in zip(jobs, outcomes):
        boxes, scores = tiny_pipe.propose([job.image], max_boxes=job.proposal.max_boxes)[0]
        assert out.boxes == boxes and out.scores == scores
        if job.kind == "generate":
            alone = tiny_pipe(job.image, Q, boxes=boxes, max_new_tokens=6)[0]
            assert out.result.raw_text == alone.raw_text and out.result.boxes == boxes
            assert out.finish_reason in ("stop", "length") and out.prompt_tokens > 0
        else:
            assert out.result is None


def test_each_row_stops_at_its_own_max_tokens(endless_pipe):
    gated = GatedPipe(endless_pipe)
    metrics = ServerMetrics()
    sched = Scheduler(gated, max_batch_size=3, batch_wait_s=0.0, max_queue=8, metrics=metrics)
    sched.start()

    async def main():
        hold = Job(image(0), proposal=ProposalSettings())
        sched.submit(hold)
        await wait_entered(gated)
        jobs = [Job(image(s), Q, boxes=[[0, 0, 20, 20]], generation=GenerationSettings(n)) for s, n in ((1, 2), (2, 7))]
        for job in jobs:
            sched.submit(job)
        gated.gate.set()
        await hold.outcome()
        return await asyncio.gather(*(j.outcome() for j in jobs))

    try:
        short, long = run(main())
    finally:
        sched.stop()
    assert ("generate", 2) in gated.calls
    assert (short.completion_tokens, long.completion_tokens) == (2, 7)
    assert short.finish_reason == long.finish_reason == "length"
    assert metrics.generated_tokens._value.get() == 9


def test_a_cancelled_row_stops_while_the_others_go_on(endless_pipe):
    metrics = ServerMetrics()
    gated = GatedPipe(endless_pipe)
    sched = Scheduler(gated, max_batch_size=2, batch_wait_s=0.0, max_queue=4, metrics=metrics)
    sched.start()

    async def main():
        hold = Job(image(0), proposal=ProposalSettings())
        sched.submit(hold)
        await wait_entered(gated)
        quitter = Job(image(1), Q, boxes=[[0, 0, 30, 30]], generation=GenerationSettings(400))
        stayer = Job(image(2), Q, boxes=[[0, 0, 30, 30]], generation=GenerationSettings(30))
        sched.submit(quitter)
        sched.submit(stayer)
        gated.gate.set()
        async for kind, _ in quitter.events():
            if kind == "text":
                quitter.cancel("client")
                break
        with pytest.raises(RequestFailed) as err:
            await quitter.outcome()
        return err.value, await stayer.outcome()

    try:
        error, stayed = run(main())
    finally:
        sched.stop()
    assert error.status == 499
    assert stayed.completion_tokens == 30
    # the batch ended well before the quitter's 400 tokens: its row stopped when it was cancelled
    assert metrics.generated_tokens._value.get() < 400
    assert metrics.rejected.labels(reason="cancelled")._value.get() == 1


def test_bounded_queue_and_stop(gated):
    sched = Scheduler(gated, max_batch_size=1, batch_wait_s=0.0, max_queue=2)
    sched.start()

    async def main():
        running = Job(image(0), proposal=ProposalSettings())
        sched.submit(running)
        await wait_entered(gated)
        queued = [Job(image(s), proposal=ProposalSettings()) for s in (1, 2)]
        for job in queued:
            sched.submit(job)
        with pytest.raises(QueueFull) as full:
            sched.submit(Job(image(3), proposal=ProposalSettings()))
        assert full.value.status == 429
        stopping = asyncio.create_task(asyncio.to_thread(sched.stop))
        for job in queued:  # stop() fails what is still queued ...
            with pytest.raises(SchedulerClosed):
                await job.outcome()
        gated.gate.set()  # ... and lets the running batch finish
        out = await running.outcome()
        await stopping
        with pytest.raises(SchedulerClosed):
            sched.submit(Job(image(4), proposal=ProposalSettings()))
        return out

    assert run(main()).boxes


def test_a_request_past_its_deadline_is_dropped(gated):
    sched = Scheduler(gated, max_batch_size=1, batch_wait_s=0.0, max_queue=4)
    sched.start()

    async def main():
        hold = Job(image(0), proposal=ProposalSettings())
        sched.submit(hold)
        await wait_entered(gated)
        late = Job(image(1), Q, generation=GenerationSettings(4), timeout_s=0.05)
        sched.submit(late)
        with pytest.raises(RequestFailed) as err:
            await late.outcome()  # its deadline passes while it waits
        gated.gate.set()
        await hold.outcome()
        return err.value

    try:
        error = run(main())
    finally:
        sched.stop()
    assert error.status == 504 and "time limit" in error.message
    assert late_generated(gated) == 0


def late_generated(gated: GatedPipe) -> int:
    return sum(n for kind, n in gated.calls if kind == "generate")


def test_bad_input_in_a_batch_fails_only_its_request(gated):
    sched = Scheduler(gated, max_batch_size=3, batch_wait_s=0.0, max_queue=4)
    sched.start()

    async def main():
        hold = Job(image(0), proposal=ProposalSettings())
        sched.submit(hold)
        await wait_entered(gated)
        box = [[0, 0, 20, 20]]
        jobs = [Job(image(1), Q, boxes=box, generation=GenerationSettings(3)),
                Job(image(2), "Look at <image> here.", boxes=box, generation=GenerationSettings(3)),  # refused by the pipeline
                Job(image(3), "What is <obj4>?", boxes=box, generation=GenerationSettings(3))]  # refused before
        for job in jobs:
            sched.submit(job)
        gated.gate.set()
        await hold.outcome()
        return await asyncio.gather(*(j.outcome() for j in jobs), return_exceptions=True)

    try:
        good, placeholder, bad_ref = run(main())
    finally:
        sched.stop()
    assert good.completion_tokens >= 1
    assert isinstance(placeholder, RequestFailed) and placeholder.status == 400 and "<image>" in placeholder.message
    assert isinstance(bad_ref, RequestFailed) and bad_ref.status == 400 and "<obj4>" in bad_ref.message
    # the batch of two was refused by the pipeline, then each was run alone
    assert [c for c in gated.calls if c[0] == "generate"] == [("generate", 2), ("generate", 1), ("generate", 1)]


class OutOfMemoryAbove(GatedPipe):
    """Runs out of device memory for generate calls of more than ``limit`` images."""

    def __init__(self, pipe, limit: int) -> None:
        super().__init__(pipe)
        self.limit = limit

    def __call__(self, images, *args, **kwargs):
        if len(images) > self.limit:
            self.calls.append(("oom", len(images)))
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().__call__(images, *args, **kwargs)


def test_out_of_memory_runs_the_batch_in_halves(tiny_pipe):
    pipe = OutOfMemoryAbove(tiny_pipe, limit=2)
    sched = Scheduler(pipe, max_batch_size=4, batch_wait_s=0.0, max_queue=8)
    sched.start()

    async def main():
        hold = Job(image(0), proposal=ProposalSettings())
        sched.submit(hold)
        await wait_entered(pipe)
        jobs = [Job(image(s), Q, boxes=[[0, 0, 20, 20]], generation=GenerationSettings(3)) for s in range(1, 5)]
        for job in jobs:
            sched.submit(job)
        pipe.gate.set()
        await hold.outcome()
        return await asyncio.gather(*(j.outcome() for j in jobs))

    try:
        outs = run(main())
    finally:
        sched.stop()
    assert all(o.completion_tokens >= 1 for o in outs)
    assert [c for c in pipe.calls if c[0] != "propose"] == [("oom", 4), ("generate", 2), ("generate", 2)]
