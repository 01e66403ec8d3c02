"""The recipe files under recipes/ parse into their task and train configs, and fit together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatrex.data.world.splits import split_seed
from chatrex.training.chatrex_task import ChatRexTaskConfig
from chatrex.training.config import TrainConfig, load_recipe
from chatrex.training.upn.task import UPNTaskConfig
from chatrex.training.vision_task import VisionTaskConfig

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PARSERS = {"upn": UPNTaskConfig, "vision": VisionTaskConfig, "chatrex": ChatRexTaskConfig}


def _recipes() -> list[Path]:
    return sorted(RECIPES.glob("*.json")) + sorted(RECIPES.glob("default/*.json"))


def test_recipes_exist():
    names = {p.name for p in _recipes()}
    assert {"upn_small.json", "chatrex_small_stage0.json", "chatrex_small_stage1.json",
            "chatrex_small_stage2.json"} <= names


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_parses(path: Path):
    spec = load_recipe(path)
    kind = spec["task"]["type"]
    assert kind in PARSERS, f"{path.name}: unknown task type {kind!r}"
    PARSERS[kind].from_dict(spec["task"])
    TrainConfig.from_dict(spec["train"])


@pytest.mark.parametrize("prefix", ["chatrex_small", "cpu_object_path"])
def test_chatrex_stages_fit_the_stage0_towers(prefix: str):
    """Stage 1, and stage 2 when stage 1 is skipped (``S1_BUDGET=0`` starts stage 2 fresh from the towers),
    build their towers from ``task.vision``: it must be stage 0's, or the pretrained towers do not load. An
    object trunk (``object_trunk_dim``) is loaded from stage 0's object head, so its width is ``head_dim``."""
    stage0 = load_recipe(RECIPES / f"{prefix}_stage0.json")["task"]
    stages = sorted(RECIPES.glob(f"{prefix}_stage[12].json"))
    assert stages
    for path in stages:
        vision = dict(ChatRexTaskConfig.from_dict(load_recipe(path)["task"]).vision)
        trunk = vision.pop("object_trunk_dim", 0)
        vision.pop("object_pointer_dim", None)  # a head on the LLM's output: not part of the towers
        assert vision == stage0["vision"], f"{path.name}: task.vision differs from {prefix}_stage0.json"
        assert trunk in (0, stage0.get("head_dim", 512)), f"{path.name}: object_trunk_dim is not stage 0's head_dim"


def test_default_chain_freezes_towers_and_spreads_object_rows():
    """The default ChatRex recipes train on frozen stage-0 towers, read the object features through the
    stage-0 trunk, and start the <objK> rows distinct (docs/object_path.md: without these the object
    tokens collapsed)."""
    for stage in ("stage1", "stage2"):
        task = ChatRexTaskConfig.from_dict(load_recipe(RECIPES / f"chatrex_small_{stage}.json")["task"])
        assert task.stage == stage
        assert task.vision_lr_mult == 0.0
        assert task.object_row_noise > 0
        assert task.vision["object_trunk_dim"] == load_recipe(RECIPES / "chatrex_small_stage0.json")["task"]["head_dim"]
    assert ChatRexTaskConfig.from_dict(load_recipe(RECIPES / "chatrex_small_stage2.json")["task"]).lora.enabled


def test_default_chain_points_at_boxes_in_both_stages():
    """The object pointer (docs/object_path.md, "The object pointer") is built in stage 1 and kept by stage 2;
    stage 2 started without stage 1 (S1_BUDGET=0) must build the same one."""
    dims = {stage: ChatRexTaskConfig.from_dict(load_recipe(RECIPES / f"chatrex_small_{stage}.json")["task"])
            .vision.get("object_pointer_dim", 0) for stage in ("stage1", "stage2")}
    assert dims["stage1"] > 0 and dims["stage1"] == dims["stage2"]


def test_stage2_recipe_can_continue_the_shipped_chatrex():
    """``S2_INIT=chatrex/assets/chatrex-small/chatrex`` (README, Training) continues the shipped LoRA factors,
    which needs the stage-2 recipe's LoRA rank and alpha to be the ones the shipped delta was trained with."""

    shipped = RECIPES.parent / "chatrex" / "assets" / "chatrex-small" / "chatrex" / "delta_config.json"
    saved = json.loads(shipped.read_text())["lora"]
    lora = ChatRexTaskConfig.from_dict(load_recipe(RECIPES / "chatrex_small_stage2.json")["task"]).lora
    assert lora.enabled and (lora.r, float(lora.alpha)) == (int(saved["r"]), float(saved["alpha"]))


def test_reproduce_data_step_draws_train_scenes_from_the_seed_offset(tmp_path: Path):
    """``TRAIN_SEED_OFFSET=K bash recipes/reproduce.sh data`` generates train scenes K, K + 1, … (another
    disjoint sample of the train split), and the test splits as always."""
    def generate(out: Path, offset: str) -> list[dict]:
        env = dict(os.environ, DATA=str(out), N_TRAIN="2", N_TEST="1", WORKERS="1", TRAIN_SEED_OFFSET=offset,
                   CHATREX=f"{sys.executable} -m chatrex.interfaces.cli")
        done = subprocess.run(["bash", str(RECIPES / "reproduce.sh"), "data"], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((out / "test.meta.json").read_text())["seed_offset"] == 0
        assert json.loads((out / "train.meta.json").read_text())["seed_offset"] == int(offset)
        return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]

    base, moved = generate(tmp_path / "a", "0"), generate(tmp_path / "b", "7")
    assert [r["seed"] for r in base] == [split_seed("train", i) for i in range(2)]
    assert [r["seed"] for r in moved] == [split_seed("train", i, 7) for i in range(2)]
    assert [r["regions"] for r in base] != [r["regions"] for r in moved]  # other scenes, not only other seeds


def test_default_recipes_fit_together():
    """recipes/default: stage 1 and 2 build stage 0's towers and keep one object pointer; the UPN decodes
    its batches on the device."""
    d = RECIPES / "default"
    stage0 = load_recipe(d / "stage0.json")["task"]
    dims = []
    for stage in ("stage1", "stage2"):
        task = ChatRexTaskConfig.from_dict(load_recipe(d / f"{stage}.json")["task"])
        vision = dict(task.vision)
        assert vision.pop("object_trunk_dim") == stage0["head_dim"]
        dims.append(vision.pop("object_pointer_dim"))
        assert vision == stage0["vision"] and task.stage == stage
    assert dims[0] == dims[1] > 0
    assert UPNTaskConfig.from_dict(load_recipe(d / "upn.json")["task"]).data.decode_on_device


def _train_default(tmp_path: Path, data: Path, runs: Path, upn_args: str, **env_extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, DATA=str(data), RUNS=str(runs), STAGES="upn", UPN_S="null", UPN_ARGS=upn_args,
               CHATREX=f"{sys.executable} -m chatrex.interfaces.cli", **env_extra)
    return subprocess.run(["bash", str(RECIPES / "train_default.sh")], env=env, capture_output=True, text=True,
                          timeout=600)


TINY_UPN = ("--set task.model=upn_tiny --set task.data.scales=[64] --set task.data.max_size=96 "
            "--set task.data.decode_on_device=true --set train.batch_size=2 --set train.num_workers=0 "
            "--set train.precision=fp32 --set train.warmup_steps=1 --set train.log_every=1 --set train.save_every=2 "
            "--set train.export_every=0 --set task.denoising.num_queries=8")


@pytest.mark.slow
def test_train_default_pauses_and_the_same_command_continues(tmp_path: Path):
    """``SLICE_S`` ends a call with checkpoints and status 75; the same command then continues, skips what
    is done, and ends with status 0."""
    data = tmp_path / "data"
    made = subprocess.run([sys.executable, "-m", "chatrex.interfaces.cli", "world", "generate", "--n", "6",
                           "--split", "train", "--out", str(data), "--workers", "1"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    runs = tmp_path / "runs"
    # a slice too short to start a stage: nothing runs
    done = _train_default(tmp_path, data, runs, TINY_UPN, SLICE_S="1", MARGIN_S="0")
    assert done.returncode == 75 and "not started" in done.stdout
    # the stage stops at its first log step (stop_after_s 0): paused, with a checkpoint
    done = _train_default(tmp_path, data, runs, TINY_UPN + " --set train.max_steps=4 --set train.stop_after_s=0")
    assert done.returncode == 75, done.stdout[-2000:]
    assert "upn: paused" in done.stdout and not (runs / "upn" / "final").exists()
    assert sorted(p.name for p in (runs / "upn" / "checkpoints").iterdir()) == ["step_0000001"]
    # the same command without the stop: it continues from step 1 and finishes
    done = _train_default(tmp_path, data, runs, TINY_UPN + " --set train.max_steps=4")
    assert done.returncode == 0, done.stdout[-2000:] + (runs / "upn" / "train.log").read_text()[-2000:]
    assert (runs / "upn" / "final").is_dir()
    steps = [json.loads(x)["step"] for x in (runs / "upn" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # and once more: the finished stage is skipped
    done = _train_default(tmp_path, data, runs, TINY_UPN + " --set train.max_steps=4")
    assert done.returncode == 0 and "upn: done already" in done.stdout
