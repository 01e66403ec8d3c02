"""Evaluation spread over processes (chatrex.evaluation.sharding): each process answers its block, the
merged answers equal one process's, and the results file is written once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from chatrex.evaluation.sharding import Shard, current_shard


@pytest.mark.parametrize("n,world", [(0, 3), (1, 2), (7, 3), (8, 4), (5, 8)])
def test_blocks_cover_every_item_once_in_order(n, world):
    items = list(range(n))
    blocks = [Shard(r, world).take(items) for r in range(world)]
    assert [i for b in blocks for i in b] == items
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert Shard().take(items) == items and Shard().gather(items) == items
    assert current_shard() == Shard()  # no process group: one process
    with pytest.raises(ValueError, match="does not fit"):
        Shard(2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from chatrex.evaluation.evaluate import evaluate
    from tests.evaluation.standins import ScriptedPipeline

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pipe = ScriptedPipeline(lambda q, given: (f"<ground>{q[-12:]}</ground><objects><obj0></objects>", given, None))
        out = Path(folder) / "sharded.json"
        result = evaluate("referring", pipe, Path(folder) / "val.jsonl", out=out, batch_size=2, progress=False,
                          boxes="gt")
        asked = [q for c in pipe.calls for q in c["questions"]]
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(
            {"asked": asked, "predictions": result["predictions"], "metrics": result["metrics"],
             "wrote": "files" in result}))
    finally:
        dist.destroy_process_group()


def test_two_processes_answer_their_blocks_and_merge_to_one_process_result(tmp_path):
    from chatrex.evaluation.evaluate import evaluate
    from tests.evaluation.standins import ScriptedPipeline, write_world

    data = write_world(tmp_path)
    assert Path(data) == tmp_path / "val.jsonl"
    pipe = ScriptedPipeline(lambda q, given: (f"<ground>{q[-12:]}</ground><objects><obj0></objects>", given, None))
    alone = evaluate("referring", pipe, data, batch_size=2, progress=False, boxes="gt")
    all_questions = [q for c in pipe.calls for q in c["questions"]]
    assert len(all_questions) >= 3
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # each process asked its own block; together every question once, in order
    assert ranks[0]["asked"] + ranks[1]["asked"] == all_questions and all(r["asked"] for r in ranks)
    for r in ranks:  # every process holds the whole, merged result: the single process's
        assert r["predictions"] == alone["predictions"] and r["metrics"] == alone["metrics"]
    assert [r["wrote"] for r in ranks] == [True, False]  # written once, by process 0
    assert json.loads((tmp_path / "sharded.json").read_text())["predictions"] == alone["predictions"]


@pytest.mark.slow
def test_chatrex_eval_under_torchrun_writes_the_single_process_result(tiny_pipeline_dir, tmp_path):
    from tests.evaluation.standins import write_world

    data = write_world(tmp_path)
    chatrex = Path(sys.executable).with_name("chatrex")
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["eval", "referring", "--model", str(tiny_pipeline_dir), "--data", str(data), "--batch-size", "2",
              "--device", "cpu", "--max-new-tokens", "4", "--min-score", "0.0", "--max-boxes", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([str(chatrex), *common, "--out", str(tmp_path / "one.json")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "--no-python",
                          str(chatrex), *common, "--out", str(tmp_path / "two.json")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert b["predictions"] == a["predictions"] and b["metrics"] == a["metrics"]
    assert two.stdout.count("wrote ") == 1  # the table and the file, once
