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
    return sorted(RECIPES.glob("*.json"))


def test_recipes_exist():
    names = {p.name for p in _recipes()}
    assert {"upn_small.json", "chatrex_small_stage0.json", "chatrex_small_stage1.json",
            "chatrex_small_stage2.json"} <= names


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: p.name)
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
