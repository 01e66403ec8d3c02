import json
import math
import os
import pickle
import socket

import pytest
import torch
import torch.multiprocessing as mp

from chatrex.training.config import TrainConfig, load_recipe
from chatrex.data.seeded_index import SeededIndex
from chatrex.training.sampler import ResumableBatchSampler
from chatrex.training.trainer import Trainer, find_latest_checkpoint, lr_lambda
from tests.training.toy_task import ToyTask


def _cfg(tmp_path, name, **kw):
    base = dict(output_dir=str(tmp_path / name), max_steps=12, batch_size=4, grad_accum=2, lr=1e-2,
                warmup_steps=2, save_every=5, log_every=1, num_workers=0, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = Trainer(ToyTask(), _cfg(tmp_path, "full"), device="cpu", progress=False).fit()
    # Interrupted after 7 steps (checkpoint at 7), then resumed to the end from the latest checkpoint.
    Trainer(ToyTask(), _cfg(tmp_path, "cut"), device="cpu", progress=False).fit(stop_after=7)
    assert find_latest_checkpoint(tmp_path / "cut").name == "step_0000007"
    resumed = Trainer(ToyTask(), _cfg(tmp_path, "cut"), device="cpu", progress=False).fit()
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The metrics file of the resumed run has one line per step, no duplicates.
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    assert (tmp_path / "cut" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "cut" / "final" / "model.pt").exists()


def test_export_every_writes_the_latest_model_while_training(tmp_path):
    """export_every = 3 over 7 steps: ``latest`` holds the step-6 weights (the same as a run of that schedule
    stopped at 6), ``final`` the step-7 ones, and no half-written folder is left behind."""
    full = Trainer(ToyTask(), _cfg(tmp_path, "e", max_steps=7, export_every=3), device="cpu", progress=False).fit()
    at6 = Trainer(ToyTask(), _cfg(tmp_path, "s", max_steps=7), device="cpu", progress=False).fit(stop_after=6)
    latest = torch.load(tmp_path / "e" / "latest" / "model.pt")
    final = torch.load(tmp_path / "e" / "final" / "model.pt")
    for k, v in _weights(at6).items():
        assert torch.equal(latest[k], v), k
    for k, v in _weights(full).items():
        assert torch.equal(final[k], v), k
    assert any(not torch.equal(latest[k], final[k]) for k in final)
    assert not list((tmp_path / "e").glob(".*partial"))
    assert not (tmp_path / "s" / "latest").exists()
    with pytest.raises(ValueError, match="export_every"):
        _cfg(tmp_path, "x", export_every=-1)


def test_resume_with_frozen_parameters_saves_only_trainable(tmp_path):
    Trainer(ToyTask(frozen_first=True), _cfg(tmp_path, "f"), device="cpu", progress=False).fit(stop_after=5)
    state = torch.load(find_latest_checkpoint(tmp_path / "f") / "trainer_state.pt", weights_only=False)
    assert set(state["model"]) == {"3.weight", "3.bias"}
    full = Trainer(ToyTask(frozen_first=True), _cfg(tmp_path, "g"), device="cpu", progress=False).fit()
    resumed = Trainer(ToyTask(frozen_first=True), _cfg(tmp_path, "f"), device="cpu", progress=False).fit()
    for k, v in _weights(full).items():
        assert torch.equal(v, _weights(resumed)[k]), k


def test_training_reduces_loss(tmp_path):
    cfg = _cfg(tmp_path, "l", max_steps=200, grad_accum=1, save_every=200, lr=3e-2, batch_size=8)
    Trainer(ToyTask(), cfg, device="cpu", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "l" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rows[:10]) / 10
    last = sum(r["loss"] for r in rows[-10:]) / 10
    assert last < 0.3 * first


def test_sampler_is_a_partition_per_epoch_and_resumable():
    s = ResumableBatchSampler(10, batch_size=2, world_size=2, rank=0, seed=3, num_micro_steps=5)
    r = ResumableBatchSampler(10, batch_size=2, world_size=2, rank=1, seed=3, num_micro_steps=5)
    b0, b1 = list(s), list(r)
    # two steps per epoch (10 // 4); each epoch's 8 indices are distinct across ranks
    epoch0 = [x.index for b in b0[:2] + b1[:2] for x in b]
    assert len(set(epoch0)) == 8
    late = list(ResumableBatchSampler(10, 2, 2, 0, seed=3, start_micro_step=3, num_micro_steps=5))
    assert late == b0[3:]
    assert all(isinstance(x, SeededIndex) for b in b0 for x in b)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(3, 2, 2, 0)


def test_lr_schedule_and_config_validation(tmp_path):
    f = lr_lambda(warmup=4, total=20, min_ratio=0.1)
    assert f(0) == pytest.approx(0.25) and f(3) == pytest.approx(1.0)
    assert f(20) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="unknown training options: lr_typo"):
        TrainConfig.from_dict({"lr_typo": 1})
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"task": {"a": 1}, "train": {"lr": 1.0}}))
    assert load_recipe(p, {"train.lr": 2.0})["train"]["lr"] == 2.0
    with pytest.raises(ValueError, match="train.lr"):
        load_recipe(p, {"lr": 3})


def test_lr_schedule_changes_length_without_a_jump():
    f = lr_lambda(warmup=10, total=100, min_ratio=0.05)
    before = [f(s) for s in range(61)]
    f.set_total(60, 400)  # a time budget's later estimate: the run is longer than first thought
    after = [f(s) for s in range(60, 401)]
    assert after[0] == pytest.approx(before[60])  # no jump at the change
    assert before[61 - 1] - f(61) < before[59] - before[60]  # and the decay goes on, more slowly
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))  # never rises again
    assert f(400) == pytest.approx(0.05) and f(1000) == pytest.approx(0.05)
    assert f(399) > 0.05
    f.set_total(200, 250)  # then shorter: the rest of the decay is squeezed
    assert f(200) == pytest.approx(after[140]) and f(250) == pytest.approx(0.05)
    # the anchor is part of the scheduler's checkpoint
    model = torch.nn.Linear(1, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters(), lr=1.0), f)
    fresh = lr_lambda(warmup=10, total=100, min_ratio=0.05)
    sched2 = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters(), lr=1.0), fresh)
    sched2.load_state_dict(sched.state_dict())
    assert [fresh(s) for s in range(0, 300, 7)] == [f(s) for s in range(0, 300, 7)]
    # set during the warm-up, the decay starts from its beginning at the end of the warm-up
    g = lr_lambda(warmup=10, total=100, min_ratio=0.0)
    g.set_total(5, 50)
    assert g(9) == pytest.approx(1.0) and g(10) == pytest.approx(1.0) and g(30) == pytest.approx(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir, strategy):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = TrainConfig(output_dir=out_dir, max_steps=6, batch_size=2, lr=1e-2, warmup_steps=1, save_every=3,
                      log_every=1, num_workers=0, seed=1, strategy=strategy)
    try:
        model = Trainer(ToyTask(), cfg, device="cpu", progress=False).fit()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0 or strategy == "ddp":  # full state dicts are gathered on rank 0 only
            sd = sd if sd else model.state_dict()
            torch.save({k: v.detach().clone() for k, v in sd.items()}, os.path.join(out_dir, f"weights_rank{rank}.pt"))
    finally:
        from chatrex.training.distributed import cleanup

        cleanup()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_gloo(tmp_path, strategy):
    ctx = mp.get_context("spawn")
    # the free port can be taken between the probe and the rendezvous (seen once on a busy 2-core
    # machine): one more try on a fresh port and a fresh folder
    for attempt in range(2):
        out = tmp_path / f"{strategy}{attempt}"
        port = _free_port()
        procs = [ctx.Process(target=_worker, args=(r, 2, port, str(out), strategy)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        if all(p.exitcode == 0 for p in procs):
            break
    assert [p.exitcode for p in procs] == [0, 0]
    w0 = torch.load(out / "weights_rank0.pt")
    exported = torch.load(out / "final" / "model.pt")
    assert w0.keys() == exported.keys()
    for k in w0:
        assert torch.equal(w0[k], exported[k]), k
    if strategy == "ddp":
        w1 = torch.load(out / "weights_rank1.pt")
        for k in w0:
            assert torch.equal(w0[k], w1[k]), k  # replicas agree
    from chatrex.training.trainer import seed_everything

    seed_everything(1)
    init = ToyTask().build_model().state_dict()
    assert not torch.equal(w0["3.weight"], init["3.weight"])  # it trained
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert (out / "final" / "model.pt").exists()


def _resume_worker(rank, world, port, out_dir, die_rank, die_at):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), CHATREX_DIST_TIMEOUT_S="60")
    os.environ.pop("NCCL_NVLS_ENABLE", None)
    os.environ.pop("TORCH_SYMM_MEM_DISABLE_MULTICAST", None)
    torch.set_num_threads(1)
    from tests.training.toy_task import DyingToyTask

    task = DyingToyTask(die_at) if rank == die_rank else ToyTask()
    cfg = TrainConfig(output_dir=out_dir, max_steps=8, batch_size=2, lr=1e-2, warmup_steps=1, save_every=3,
                      log_every=1, num_workers=0, seed=1, strategy="ddp")
    try:
        model = Trainer(task, cfg, device="cpu", progress=False).fit()
        env = {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST")}
        torch.save({"weights": {k: v.detach().clone() for k, v in model.state_dict().items()}, "env": env},
                   os.path.join(out_dir, f"result_rank{rank}.pt"))
    finally:
        from chatrex.training.distributed import cleanup

        cleanup()


def _run_two(ctx, out, die_rank=-1, die_at=0):
    port = _free_port()
    procs = [ctx.Process(target=_resume_worker, args=(r, 2, port, str(out), die_rank, die_at)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    return [p.exitcode for p in procs]


def test_ddp_job_with_a_killed_rank_resumes_to_the_uninterrupted_weights(tmp_path):
    """Two gloo ranks, DDP, 8 steps, a checkpoint every 3: rank 1 dies abruptly in step 5; the job fails;
    the same job started again continues from step 3's checkpoint and ends with the same weights as an
    uninterrupted run. Every process set NVLink multicast off."""
    ctx = mp.get_context("spawn")
    assert _run_two(ctx, tmp_path / "full") == [0, 0]
    codes = _run_two(ctx, tmp_path / "cut", die_rank=1, die_at=5)
    assert codes[1] == 17 and codes[0] != 0  # the surviving rank fails (peer gone) rather than hanging
    assert find_latest_checkpoint(tmp_path / "cut").name == "step_0000003"
    assert _run_two(ctx, tmp_path / "cut") == [0, 0]
    full = torch.load(tmp_path / "full" / "result_rank0.pt")
    for rank in (0, 1):
        resumed = torch.load(tmp_path / "cut" / f"result_rank{rank}.pt")
        assert resumed["env"] == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
        for k, v in full["weights"].items():
            assert torch.equal(resumed["weights"][k], v), (rank, k)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_time_budget_shortens_the_schedule(tmp_path):
    cfg = _cfg(tmp_path, "b", max_steps=100000, grad_accum=1, save_every=100000, log_every=10, time_budget_s=1e-6)
    Trainer(ToyTask(), cfg, device="cpu", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    # the speed is measured over steps 20-40; the run stopped right after that estimate, with a final checkpoint
    assert rows[-1]["step"] == 41
    assert rows[-1]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_ratio)  # the schedule ended too
    assert (tmp_path / "b" / "final" / "model.pt").exists()
    assert find_latest_checkpoint(tmp_path / "b").name == "step_0000041"


class _SlowFirstStep(ToyTask):
    """A toy task on a fake clock: its first step takes 101 s (as a compiling step does), later ones 1 s."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def clock(self) -> float:
        return self.steps + (100.0 if self.steps else 0.0)

    def compute_loss(self, model, batch, device):
        self.steps += 1
        return super().compute_loss(model, batch, device)


def test_time_budget_leaves_the_first_steps_out_of_its_speed(tmp_path):
    # budget 1,000 s: at step 40, 140 s have gone, and steps 20-40 took 1 s each, so 860 more steps fit.
    # Counting the first step's 100 s in the speed (3.5 s/step) planned 285 steps.
    task = _SlowFirstStep()
    cfg = _cfg(tmp_path, "c", max_steps=100000, grad_accum=1, save_every=100000, log_every=100, time_budget_s=1000)
    Trainer(task, cfg, device="cpu", progress=False, clock=task.clock).fit()
    rows = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 900
    assert rows[-1]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_ratio)


class _FakeClockTask(ToyTask):
    """A toy task on a fake clock where every micro-step takes 1 s; the clock survives across Trainers."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def clock(self) -> float:
        return self.t

    def compute_loss(self, model, batch, device):
        self.t += 1.0
        return super().compute_loss(model, batch, device)


def test_stop_after_s_pauses_and_the_same_command_continues(tmp_path):
    """A run stopped by train.stop_after_s in slices ends with the weights of one that never stopped, and
    its time budget counts the slices together (the elapsed training time is checkpointed)."""
    full = Trainer(ToyTask(), _cfg(tmp_path, "full", max_steps=30, grad_accum=1, log_every=4, save_every=100),
                   device="cpu", progress=False).fit()
    task = _FakeClockTask()
    cfg = _cfg(tmp_path, "sliced", max_steps=30, grad_accum=1, log_every=4, save_every=100, stop_after_s=10)
    slices = []
    for _ in range(10):
        trainer = Trainer(task, cfg, device="cpu", progress=False, clock=task.clock)
        model = trainer.fit()
        slices.append(find_latest_checkpoint(tmp_path / "sliced").name)
        if trainer.completed:
            break
    # each slice stops at the first log step after 10 s: steps 12, 24, then the end
    assert slices == ["step_0000012", "step_0000024", "step_0000030"] and trainer.completed
    assert (tmp_path / "sliced" / "final").is_dir()
    for k, v in full.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    state = torch.load(tmp_path / "sliced" / "checkpoints" / "step_0000024" / "trainer_state.pt", weights_only=True)
    assert state["elapsed_s"] == pytest.approx(24.0)  # 12 fake seconds in each of the first two slices
    # a time budget over slices: 100 s in all at 1 s/step plans 100 steps; the second slice re-estimates
    # at step 90 with the first slice's 50 s counted (without them it would plan 150)
    task = _FakeClockTask()
    cfg = _cfg(tmp_path, "budget", max_steps=100000, grad_accum=1, log_every=5, save_every=100000,
               time_budget_s=100, stop_after_s=50)
    for _ in range(10):
        trainer = Trainer(task, cfg, device="cpu", progress=False, clock=task.clock)
        trainer.fit()
        if trainer.completed:
            break
    rows = [json.loads(x) for x in (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()]
    assert trainer.completed and rows[-1]["step"] == 100


def _reduce_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    from chatrex.training.distributed import all_reduce_mean, cleanup, init_distributed

    info = init_distributed("cpu")
    values = {"loss": 1.0 + rank, "only_rank1": 5.0} if rank else {"loss": 1.0, "only_rank0": 3.0}
    out = all_reduce_mean(values, info.device)
    with open(os.path.join(out_dir, f"r{rank}.json"), "w") as f:
        json.dump(out, f)
    cleanup()


def test_all_reduce_mean_with_different_keys(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_reduce_worker, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    for r in range(2):
        out = json.loads((tmp_path / f"r{r}.json").read_text())
        assert out == {"loss": 1.5, "only_rank0": 3.0, "only_rank1": 5.0}


class _FailingToyTask(ToyTask):
    """Raises ``error`` from the forward pass of micro-step ``at`` (counted from 0)."""

    def __init__(self, error: BaseException, at: int) -> None:
        super().__init__()
        self.error, self.at, self.calls = error, at, 0

    def compute_loss(self, model, batch, device):
        self.calls += 1
        if self.calls > self.at:
            raise self.error
        return super().compute_loss(model, batch, device)


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.11 GiB."),
    RuntimeError("Expected mha_graph.execute(handle, variant_pack, workspace_ptr.get()).is_good() to be true"),
])
def test_out_of_memory_names_the_fix_and_the_checkpoint(tmp_path, error):
    from chatrex.training.trainer import OutOfDeviceMemory

    cfg = _cfg(tmp_path, "oom", save_every=1, grad_accum=1)
    with pytest.raises(OutOfDeviceMemory) as info:
        Trainer(_FailingToyTask(error, at=3), cfg, device="cpu", progress=False).fit()
    msg = str(info.value)
    assert "out of device memory at step 3" in msg
    assert "train.batch_size (4)" in msg and "train.grad_accum (1)" in msg
    assert "train.gradient_checkpointing=true" in msg
    assert "step_0000003" in msg  # the work done so far is kept and named
    assert info.value.__cause__ is error


def test_other_runtime_errors_pass_through(tmp_path):
    error = RuntimeError("shape mismatch in the toy model")
    with pytest.raises(RuntimeError) as info:
        Trainer(_FailingToyTask(error, at=0), _cfg(tmp_path, "bug"), device="cpu", progress=False).fit()
    assert info.value is error


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    import subprocess
    import sys

    from chatrex.training.run_lock import LOCK_FILE, RunLockedError, acquire_run_lock, release_run_lock

    out = tmp_path / "busy"
    held = acquire_run_lock(out)
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        Trainer(ToyTask(), _cfg(tmp_path, "busy"), device="cpu", progress=False).fit()
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    # the lock is the holder's open file, not what its record says: a record naming a process this one
    # cannot see (another PID namespace, a reused pid) does not free it
    for name in (LOCK_FILE, LOCK_FILE + ".json"):
        (out / name).write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname(), "since": "then"}))
    with pytest.raises(RunLockedError):
        Trainer(ToyTask(), _cfg(tmp_path, "busy"), device="cpu", progress=False).fit()
    release_run_lock(held)
    Trainer(ToyTask(), _cfg(tmp_path, "busy"), device="cpu", progress=False).fit(stop_after=2)

    # a run killed while it holds the lock frees it with its death
    code = ("import os, sys; from chatrex.training.run_lock import acquire_run_lock; acquire_run_lock(sys.argv[1]); "
            "os.kill(os.getpid(), 9)")
    import chatrex

    root = os.path.dirname(os.path.dirname(chatrex.__file__))
    killed = subprocess.run([sys.executable, "-c", code, str(out)], env={**os.environ, "PYTHONPATH": root})
    assert killed.returncode == -9
    Trainer(ToyTask(), _cfg(tmp_path, "busy"), device="cpu", progress=False).fit()
    assert (out / "final" / "model.pt").exists()


def test_the_lock_is_released_when_training_fails(tmp_path):
    from chatrex.training.run_lock import acquire_run_lock, release_run_lock

    with pytest.raises(RuntimeError):
        Trainer(_FailingToyTask(RuntimeError("boom"), at=2), _cfg(tmp_path, "f"), device="cpu", progress=False).fit()
    release_run_lock(acquire_run_lock(tmp_path / "f"))  # free: taken without waiting
    Trainer(ToyTask(), _cfg(tmp_path, "f"), device="cpu", progress=False).fit()  # the folder is free again


class _NonFiniteToyTask(ToyTask):
    """Returns a NaN loss (so NaN gradients) at the micro-steps in ``bad`` (counted from 0)."""

    def __init__(self, bad) -> None:
        super().__init__()
        self.bad, self.calls = set(bad), 0

    def compute_loss(self, model, batch, device):
        loss, logs = super().compute_loss(model, batch, device)
        call, self.calls = self.calls, self.calls + 1
        if call in self.bad:
            loss = loss * float("nan")
        return loss, logs


def test_one_non_finite_batch_skips_only_its_step(tmp_path):
    """One NaN batch at step 3 of 30, logged every 20 steps: only that step is skipped (the running sum of
    the log interval used to stay NaN, skipping every later step and stopping the run after 11)."""
    cfg = _cfg(tmp_path, "nan", max_steps=30, grad_accum=1, log_every=20, save_every=30)
    model = Trainer(_NonFiniteToyTask({2}), cfg, device="cpu", progress=False).fit()
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    rows = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 30]
    assert [r["skipped"] for r in rows] == [1, 0]
    assert all(math.isfinite(r["loss"]) for r in rows)  # the bad batch is not in the logged mean
    # the skipped step made no update: the same run without step 3's batch ends elsewhere than one with it
    clean = Trainer(ToyTask(), _cfg(tmp_path, "clean", max_steps=30, grad_accum=1, log_every=20, save_every=30),
                    device="cpu", progress=False).fit()
    assert any(not torch.equal(v, clean.state_dict()[k]) for k, v in model.state_dict().items())


def test_consecutive_non_finite_steps_stop_the_run(tmp_path):
    # every other step bad: never 2 in a row, the run finishes
    cfg = _cfg(tmp_path, "alt", max_steps=10, grad_accum=1, log_every=5, max_bad_steps=2)
    Trainer(_NonFiniteToyTask(range(1, 10, 2)), cfg, device="cpu", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "alt" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["skipped"] for r in rows) == 5
    # from step 4 on every batch is bad: the third bad step in a row stops the run
    cfg = _cfg(tmp_path, "run", max_steps=20, grad_accum=2, log_every=5, save_every=2, max_bad_steps=3)
    with pytest.raises(FloatingPointError, match=r"3 steps in a row \(step 6; train.max_bad_steps = 3\)") as info:
        Trainer(_NonFiniteToyTask(range(6, 100)), cfg, device="cpu", progress=False).fit()
    assert "step_0000004" in str(info.value)
    with pytest.raises(ValueError, match="max_bad_steps"):
        _cfg(tmp_path, "x", max_bad_steps=0)


def test_checkpoints_load_without_unpickling_code(tmp_path):
    """Resuming reads trainer_state.pt and the RNG files with weights_only=True: a checkpoint that would
    run code when unpickled is refused, and ours hold tensors and plain values only."""
    Trainer(ToyTask(), _cfg(tmp_path, "w"), device="cpu", progress=False).fit(stop_after=5)
    ckpt = find_latest_checkpoint(tmp_path / "w")
    torch.load(ckpt / "trainer_state.pt", weights_only=True)
    rng = torch.load(ckpt / "rng_rank0.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in rng.values())

    marker = tmp_path / "ran"
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    state["payload"] = _RunsCode(str(marker))
    torch.save(state, ckpt / "trainer_state.pt")
    with pytest.raises(pickle.UnpicklingError):
        Trainer(ToyTask(), _cfg(tmp_path, "w"), device="cpu", progress=False).fit()
    assert not marker.exists()


class _RunsCode:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_rng_states_round_trip_through_tensors(tmp_path):
    """The RNG states survive their tensor form exactly (Python's Gaussian cache included), and an RNG
    file of an earlier version (pickled numpy state) still loads."""
    import random

    import numpy as np

    from chatrex.training.trainer import _load_rng_file, _rng_state, _set_rng_state

    random.seed(3)
    random.gauss(0, 1)  # leaves a cached second value
    np.random.seed(4)
    np.random.standard_normal()  # idem
    torch.manual_seed(5)
    torch.save(_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(), np.random.rand(), torch.rand(2))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    _set_rng_state(_load_rng_file(tmp_path / "rng.pt"))
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(), np.random.rand(), torch.rand(2))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])

    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
               tmp_path / "legacy.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    _set_rng_state(_load_rng_file(tmp_path / "legacy.pt"))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_a_failed_export_keeps_the_previous_one(tmp_path):
    """``latest`` is replaced only by a complete export: one that fails midway leaves the previous export
    and no half-written folder."""
    cfg = _cfg(tmp_path, "x", max_steps=9, export_every=3)
    with pytest.raises(OSError, match="disk full"):  # the export at step 6 fails
        Trainer(_ExportFailsTask(fail_at=2), cfg, device="cpu", progress=False).fit()
    at3 = Trainer(ToyTask(), _cfg(tmp_path, "s", max_steps=9), device="cpu", progress=False).fit(stop_after=3)
    latest = torch.load(tmp_path / "x" / "latest" / "model.pt")
    for k, v in _weights(at3).items():
        assert torch.equal(latest[k], v), k
    assert sorted(p.name for p in (tmp_path / "x").iterdir() if p.name.startswith(".")) == []


class _ExportFailsTask(ToyTask):
    """Its ``fail_at``-th export writes half a file and then fails."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at, self.exports = fail_at, 0

    def export(self, model, out_dir):
        self.exports += 1
        if self.exports == self.fail_at:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "model.pt").write_bytes(b"half a fi")
            raise OSError("disk full")
        super().export(model, out_dir)
