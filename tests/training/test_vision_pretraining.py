import json

import pytest
import torch
from PIL import Image, ImageDraw

from chatrex.data.seeded_index import SeededIndex
from chatrex.data.vision_dataset import (
    IGNORE,
    VisionDataConfig,
    VisionPretrainDataset,
    VisionVocabulary,
    dense_labels,
)
from chatrex.training.chatrex_task import ChatRexTask, ChatRexTaskConfig
from chatrex.training.config import TrainConfig
from chatrex.training.trainer import Trainer
from chatrex.training.vision_task import (
    VisionTask,
    VisionTaskConfig,
    load_pretrained_towers,
    load_vision_pretrain,
)
from tests.training.test_chatrex_training import TINY_VISION, base_dir  # noqa: F401  (fixture)

CAR, HOUSE, WHEEL = [4, 4, 40, 30], [50, 10, 90, 50], [8, 20, 18, 30]


def _record(i, car_colour):
    return {
        "id": f"v{i}", "image": f"images/{i}.png", "width": 96, "height": 64,
        "regions": [
            {"id": 0, "box": CAR, "category": "car", "level": "instance", "attributes": {"color": car_colour}},
            {"id": 1, "box": HOUSE, "category": "house", "level": "instance", "attributes": {"color": "blue"}},
            {"id": 2, "box": WHEEL, "category": "wheel", "level": "part", "parent": 0},
        ],
    }


@pytest.fixture()
def vision_data(tmp_path):
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(4):
        colour = ["red", "green"][i % 2]
        im = Image.new("RGB", (96, 64), (200, 200, 200))
        d = ImageDraw.Draw(im)
        d.rectangle(CAR, fill=(220, 20, 20) if colour == "red" else (20, 200, 20))
        d.rectangle(HOUSE, fill=(20, 20, 220))
        d.ellipse(WHEEL, fill=(10, 10, 10))
        im.save(tmp_path / "images" / f"{i}.png")
        lines.append(json.dumps(_record(i, colour)))
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_dense_labels_take_the_smallest_box_over_each_cell_centre():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 0.5]])  # a wide box and a small one inside it
    labels = dense_labels(boxes, torch.tensor([3, 7]), grid=4)
    assert labels.shape == (16,)
    grid = labels.reshape(4, 4)  # rows are y, columns x (row-major like image tokens)
    assert grid[:2, :2].eq(7).all()  # the small box wins where both hold the centre
    assert grid[:2, 2:].eq(3).all()
    assert grid[2:].eq(0).all()  # background
    assert dense_labels(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3).eq(0).all()


def test_dataset_labels_regions_attributes_and_background_boxes(vision_data):
    cfg = VisionDataConfig(files=[str(vision_data)], negatives=(20, 20), negative_iou=0.3)
    ds = VisionPretrainDataset(cfg)
    vocab = ds.vocabulary
    assert vocab.categories == ["background", "car", "house", "wheel"]
    assert vocab.attributes == {"color": ["blue", "green", "red"]}  # attributes no region has are left out
    item = ds[SeededIndex(1, 5)]
    k = item["regions"]
    assert k == 3 and len(item["boxes"]) > k
    names = [vocab.categories[c] for c in item["category"][:k].tolist()]
    assert sorted(names) == ["car", "house", "wheel"]
    colours = dict(zip(names, item["color"][:k].tolist()))
    assert colours["car"] == vocab.attributes["color"].index("green") and colours["wheel"] == IGNORE
    assert item["category"][k:].eq(0).all() and item["color"][k:].eq(IGNORE).all()
    from torchvision.ops import box_iou

    assert (box_iou(item["boxes"][k:], item["boxes"][:k]) < 0.3).all()  # background boxes overlap no region much
    again = ds[SeededIndex(1, 5)]
    assert torch.equal(again["boxes"], item["boxes"])  # deterministic per (index, seed)
    with pytest.raises(ValueError, match="negatives"):
        VisionDataConfig(negatives=(5, 2))


def _task(vision_data, **data):
    return VisionTask(VisionTaskConfig.from_dict({"vision": TINY_VISION, "data": {"files": [str(vision_data)], **data},
                                                  "head_dim": 32}))


def test_stage0_learns_exports_and_feeds_stage1(tmp_path, vision_data, base_dir):  # noqa: F811
    task = _task(vision_data, negatives=[2, 4])
    cfg = TrainConfig(output_dir=str(tmp_path / "s0"), max_steps=30, batch_size=4, lr=3e-3, warmup_steps=1,
                      save_every=30, log_every=5, num_workers=0)
    model = Trainer(task, cfg, device="cpu", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "s0" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    assert rows[-1]["acc_category"] > 0.9  # three regions, always in the same places: learnable in 30 steps

    final = tmp_path / "s0" / "final"
    reloaded = load_vision_pretrain(final)
    batch = task.collate([task.dataset[0], task.dataset[1]])
    pv = task.image_processor.normalize(batch["pixel_values"])
    pva = task.image_processor.normalize(batch["pixel_values_aux"], aux=True)
    model.eval()
    with torch.no_grad():
        a, b = model(pv, pva, batch["boxes"]), reloaded(pv, pva, batch["boxes"])
    for key in a:
        torch.testing.assert_close(a[key], b[key])

    s1 = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage1", "base": str(base_dir), "vision": TINY_VISION,
                                                  "vision_init": str(final), "data": {"files": [str(vision_data)]}}))
    chatrex = s1.build_model()
    for name, tensor in model.vision_tower_aux.state_dict().items():
        torch.testing.assert_close(chatrex.vision_tower_aux.state_dict()[name], tensor)
    for name, tensor in model.vision_tower.state_dict().items():
        torch.testing.assert_close(chatrex.vision_tower.state_dict()[name], tensor)


def test_towers_of_another_shape_are_refused(tmp_path, vision_data):
    task = _task(vision_data)
    model = task.build_model()
    task.export(model, tmp_path / "s0")
    other = dict(TINY_VISION, aux_vision_config=dict(TINY_VISION["aux_vision_config"], dims=[8, 16, 32, 32]))
    wrong = VisionTask(VisionTaskConfig.from_dict({"vision": other, "data": {"files": [str(vision_data)]}})).build_model()
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained_towers(wrong, tmp_path / "s0")
    with pytest.raises(FileNotFoundError, match="stage-0 export"):
        load_pretrained_towers(wrong, tmp_path)
    assert load_pretrained_towers(model, tmp_path / "s0") > 0


def test_object_trunk_comes_from_stage0_and_follows_vision_lr_mult(tmp_path, vision_data, base_dir):  # noqa: F811
    """vision.object_trunk_dim = head_dim: stage 1 starts mm_object_trunk from the stage-0 head's trunk, frozen
    with the towers at vision_lr_mult 0; the stage-1 delta keeps it; another width is refused by name."""
    from chatrex.mllm.delta import load_delta

    first = _task(vision_data)
    trained = first.build_model()
    with torch.no_grad():
        for p in trained.object_trunk.parameters():
            p.add_(torch.randn_like(p))
    first.export(trained, tmp_path / "s0")

    def stage1(dim, lr_mult):
        spec = {"stage": "stage1", "base": str(base_dir), "vision": dict(TINY_VISION, object_trunk_dim=dim),
                "vision_init": str(tmp_path / "s0"), "vision_lr_mult": lr_mult, "data": {"files": [str(vision_data)]}}
        task = ChatRexTask(ChatRexTaskConfig.from_dict(spec))
        return task, task.build_model()

    task, model = stage1(32, 0.0)
    for name, tensor in trained.object_trunk.state_dict().items():
        torch.testing.assert_close(model.mm_object_trunk.state_dict()[name], tensor, msg=name)
    assert not any(p.requires_grad for p in model.mm_object_trunk.parameters())
    assert all(p.requires_grad for p in model.mm_object_projector.parameters())
    assert model.mm_object_projector[0].in_features == 32
    task.export(model, tmp_path / "s1")
    reloaded, _ = load_delta(tmp_path / "s1")
    assert reloaded.config.object_trunk_dim == 32
    torch.testing.assert_close(reloaded.mm_object_trunk[0].weight, trained.object_trunk[0].weight.bfloat16().float())  # stored as bf16

    task, model = stage1(32, 0.5)
    assert all(p.requires_grad for p in model.mm_object_trunk.parameters())
    trunk_group = [g for g in task.param_groups(model, TrainConfig(lr=1.0))
                   if any(p is model.mm_object_trunk[0].weight for p in g["params"])]
    assert trunk_group[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="object trunk of width 32"):
        stage1(16, 0.0)


def test_towers_and_trunk_come_from_a_trained_chatrex(tmp_path, vision_data, base_dir):  # noqa: F811
    """vision_init may name a ChatRex delta: its towers and trunk are copied, its projectors are not; a model
    with a pointer trains it, and a model without a trunk does not fit a source without one."""
    from chatrex.mllm.delta import load_delta

    def task_for(init, **vision):
        spec = {"stage": "stage1", "base": str(base_dir), "vision": dict(TINY_VISION, **vision),
                "vision_init": init, "vision_lr_mult": 1.0, "data": {"files": [str(vision_data)]}}
        return ChatRexTask(ChatRexTaskConfig.from_dict(spec))

    first = task_for(None, object_trunk_dim=24)
    source = first.build_model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    first.export(source, tmp_path / "s1")
    source, _ = load_delta(tmp_path / "s1")  # as stored (bf16-rounded)

    task = task_for(str(tmp_path / "s1"), object_trunk_dim=24, object_pointer_dim=8)
    model = task.build_model()
    for part in ("vision_tower", "vision_tower_aux", "mm_object_trunk"):
        for name, tensor in getattr(source, part).state_dict().items():
            torch.testing.assert_close(getattr(model, part).state_dict()[name], tensor, msg=f"{part}.{name}")
    assert not torch.equal(model.mm_object_projector[0].weight, source.mm_object_projector[0].weight)
    assert all(p.requires_grad for p in model.mm_object_pointer.parameters())
    task.export(model, tmp_path / "s1p")
    reloaded, _ = load_delta(tmp_path / "s1p")
    torch.testing.assert_close(reloaded.mm_object_pointer.key.weight, model.mm_object_pointer.key.weight.bfloat16().float())
    with pytest.raises(ValueError, match="do not fit"):  # the source has a 24-wide trunk
        task_for(str(tmp_path / "s1"), object_trunk_dim=16).build_model()


def test_vocabulary_round_trips():
    v = VisionVocabulary(["background", "a"], {"color": ["red"]})
    assert VisionVocabulary.from_dict(json.loads(json.dumps(v.to_dict()))) == v


def test_stage0_continues_from_an_export(tmp_path, vision_data):
    first = _task(vision_data)
    trained = first.build_model()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # anything but the fresh initialisation
    first.export(trained, tmp_path / "s0")

    spec = {"vision": TINY_VISION, "data": {"files": [str(vision_data)]}, "head_dim": 32,
            "init_from": str(tmp_path / "s0")}
    resumed = VisionTask(VisionTaskConfig.from_dict(spec)).build_model()
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, msg=name)
    assert resumed.training

    with pytest.raises(ValueError, match="does not fit"):  # another head width
        VisionTask(VisionTaskConfig.from_dict(dict(spec, head_dim=16))).build_model()
    other = VisionVocabulary(["background", "kite"], {"color": ["red"]})
    meta = json.loads((tmp_path / "s0" / "vision_pretrain_config.json").read_text())
    (tmp_path / "s0" / "vision_pretrain_config.json").write_text(json.dumps(dict(meta, vocabulary=other.to_dict())))
    with pytest.raises(ValueError, match="another vocabulary"):
        VisionTask(VisionTaskConfig.from_dict(spec)).build_model()
    with pytest.raises(FileNotFoundError, match="stage-0 export"):  # when the task is made, not mid-run
        VisionTask(VisionTaskConfig.from_dict(dict(spec, init_from=str(tmp_path))))


def test_towers_evaluation_scores_held_out_data_with_the_exports_vocabulary(tmp_path, vision_data):
    from typer.testing import CliRunner

    from chatrex.evaluation.towers import evaluate_towers
    from chatrex.interfaces.cli import build_app

    task = _task(vision_data, negatives=[2, 4])
    untrained = task.build_model()
    task.export(untrained, tmp_path / "untrained")
    cfg = TrainConfig(output_dir=str(tmp_path / "s0"), max_steps=30, batch_size=4, lr=3e-3, warmup_steps=1,
                      save_every=30, log_every=5, num_workers=0)
    Trainer(task, cfg, device="cpu", progress=False).fit()

    # "held-out" data: the same scenes, plus a category the towers never saw (dropped, not mislabelled)
    held_out = tmp_path / "held_out.jsonl"
    records = [json.loads(line) for line in vision_data.read_text().splitlines()]
    for r in records:
        r["image"] = str(vision_data.parent / r["image"])
        r["regions"].append({"id": 3, "box": [60, 52, 70, 60], "category": "kite", "level": "instance"})
    held_out.write_text("\n".join(json.dumps(r) for r in records) + "\n")

    trained = evaluate_towers(load_vision_pretrain(tmp_path / "s0" / "final"), held_out, progress=False)
    before = evaluate_towers(load_vision_pretrain(tmp_path / "untrained"), held_out, progress=False)
    assert trained["metrics"]["category"]["count"] == 12  # 3 known regions x 4 images; the kites are left out
    assert trained["metrics"]["category"]["accuracy"] > 0.9
    assert before["metrics"]["category"]["accuracy"] < trained["metrics"]["category"]["accuracy"]
    assert trained["metrics"]["category"]["majority"] == pytest.approx(1 / 3)
    assert trained["metrics"]["color"]["count"] == 8  # cars and houses have a colour, wheels do not
    assert {"category/accuracy", "background/accuracy", "color/accuracy"} <= set(trained["headline"])

    runner = CliRunner()
    out = tmp_path / "res" / "towers.json"
    ok = runner.invoke(build_app(), ["eval", "towers", "--model", str(tmp_path / "s0" / "final"), "--data",
                                     str(held_out), "--limit", "2", "--device", "cpu", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["config"]["images"] == 2 and out.with_suffix(".md").exists()
    bad = runner.invoke(build_app(), ["eval", "towers", "--model", str(tmp_path), "--data", str(held_out)])
    assert bad.exit_code == 1 and "stage-0 export" in bad.output
    kites = tmp_path / "kites.jsonl"
    for r in records:
        r["regions"] = [x for x in r["regions"] if x["category"] == "kite"]
    kites.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    none = runner.invoke(build_app(), ["eval", "towers", "--model", str(tmp_path / "s0" / "final"), "--data", str(kites),
                                       "--device", "cpu", "--out", str(out)])
    assert none.exit_code == 1 and "no region of a category" in none.output
