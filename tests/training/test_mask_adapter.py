import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from chatrex.mllm.object_encoder import MaskAdapter, encode_objects
from chatrex.training.chatrex_task import ChatRexTask, ChatRexTaskConfig
from chatrex.training.mask_adapter import MaskAdapterConfig, RegionFeatures, fit_mask_adapter
from tests.training.test_chatrex_training import TINY_VISION, _save_tiny_base


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


@pytest.fixture()
def mask_data(tmp_path):
    """6 images with a red disc and a blue triangle; records carry their masks (RLE)."""
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(6):
        im = Image.new("RGB", (96, 64), (200, 200, 200))
        d = ImageDraw.Draw(im)
        x = 4 + 3 * i
        d.ellipse([x, 4, x + 36, 40], fill=(220, 20, 20))
        d.polygon([(60, 60), (92, 60), (76, 12 + i)], fill=(20, 20, 220))
        im.save(tmp_path / "images" / f"{i}.png")
        disc = np.zeros((64, 96), bool)
        tri = np.zeros((64, 96), bool)
        m = Image.new("L", (96, 64))
        ImageDraw.Draw(m).ellipse([x, 4, x + 36, 40], fill=1)
        disc[:] = np.asarray(m) > 0
        m = Image.new("L", (96, 64))
        ImageDraw.Draw(m).polygon([(60, 60), (92, 60), (76, 12 + i)], fill=1)
        tri[:] = np.asarray(m) > 0
        regions = []
        for k, (mask, cat) in enumerate(((disc, "ball"), (tri, "sail"))):
            ys, xs = np.nonzero(mask)
            regions.append({"id": k, "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                            "category": cat, "level": "instance", "visible": 1.0, "mask": _rle(mask)})
        regions.append({"id": 2, "box": [1, 1, 5, 5], "category": "dot", "level": "part", "visible": 1.0})  # no mask
        lines.append(json.dumps({"id": f"r{i}", "image": f"images/{i}.png", "width": 96, "height": 64,
                                 "regions": regions}))
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture()
def tiny_delta(tmp_path, mask_data):
    base = _save_tiny_base(tmp_path / "base")
    task = ChatRexTask(ChatRexTaskConfig.from_dict({"stage": "stage1", "base": str(base), "vision": TINY_VISION,
                                                    "data": {"files": [str(mask_data)]}}))
    model = task.build_model().eval()
    out = tmp_path / "delta"
    task.export(model, out)
    return out


def test_mask_adapter_starts_as_the_identity_and_never_touches_box_rows():
    torch.manual_seed(0)
    levels = [torch.randn(2, c, s, s) for c, s in ((4, 16), (8, 8), (8, 4), (12, 2))]
    boxes = [torch.tensor([[0.1, 0.1, 0.6, 0.7], [0.2, 0.3, 0.9, 0.8]]), torch.tensor([[0.0, 0.0, 0.5, 0.5]])]
    masks = [torch.zeros(1, 16, 16), torch.zeros(1, 16, 16)]
    masks[0][0, 4:10, 3:9] = 1
    masks[1][0, 0:8, 0:8] = 1
    idx = [torch.tensor([1]), torch.tensor([0])]
    adapter = MaskAdapter(32, 16)
    plain = encode_objects(levels, boxes, 64, masks=masks, mask_indices=idx)
    assert torch.equal(encode_objects(levels, boxes, 64, masks=masks, mask_indices=idx, mask_transform=adapter), plain)
    with torch.no_grad():
        adapter.fc2.bias.fill_(1.0)
    moved = encode_objects(levels, boxes, 64, masks=masks, mask_indices=idx, mask_transform=adapter)
    assert torch.equal(moved[0], plain[0])  # image 0's box region
    assert torch.allclose(moved[1], plain[1] + 1.0, atol=1e-5) and torch.allclose(moved[2], plain[2] + 1.0, atol=1e-5)


def test_fit_brings_students_to_their_teachers():
    from tests.mllm.conftest import build_tiny_tokenizer, make_model

    model = make_model(build_tiny_tokenizer())
    torch.manual_seed(0)
    c_total = model.config.object_feature_dim
    n = 300
    boxes = torch.rand(n, 2) * 0.5
    boxes = torch.cat([boxes, boxes + 0.2 + 0.3 * torch.rand(n, 2)], dim=1)
    box_feats = torch.randn(n, c_total)
    from chatrex.mllm.object_encoder import xyxy_box_embedding

    with torch.no_grad():
        teacher = model.project_objects(box_feats + xyxy_box_embedding(boxes, c_total // 4)).float()
    mask_feats = box_feats * 0.5 + 0.3  # what the adapter has to undo
    feats = RegionFeatures(mask_feats, boxes, teacher, images=n)
    adapter, report = fit_mask_adapter(model, feats, MaskAdapterConfig(hidden=64, epochs=60, batch_size=64, lr=3e-3))
    assert report.regions_val == 30 and report.regions_train == 270
    assert report.val_cosine_after > report.val_cosine_before + 0.02
    assert not any(p.requires_grad for p in model.parameters())


def test_cli_adds_the_adapter_to_a_delta_and_boxes_stay_exact(tmp_path, tiny_delta, mask_data):
    from chatrex.interfaces.cli import build_app
    from chatrex.mllm.delta import load_delta
    from chatrex.mllm.processing_chatrex import ChatRexProcessor

    before_files = {p.name: p.read_bytes() for p in tiny_delta.glob("delta-0*.safetensors")} or \
        {p.name: p.read_bytes() for p in tiny_delta.glob("delta*.safetensors")}
    old, _ = load_delta(tiny_delta)
    out = tmp_path / "with_adapter"
    result = CliRunner().invoke(build_app(), ["train", "mask-adapter", str(tiny_delta), "--data", str(mask_data),
                                              "--out", str(out), "--hidden", "8", "--epochs", "2", "--device", "cpu",
                                              "--features", str(tmp_path / "feats.pt")])
    assert result.exit_code == 0, result.output
    assert "12 regions of 6 images" in result.output  # 2 masked regions an image; the part without a mask is skipped
    meta = json.loads((out / "delta_config.json").read_text())
    assert meta["config"]["mask_adapter_dim"] == 8 and meta["files"][-1] == "delta-mask_adapter.safetensors"
    for name, data in before_files.items():  # the other tensor files are untouched
        assert (out / name).read_bytes() == data
    new, _ = load_delta(out)
    assert isinstance(new.mm_mask_adapter, MaskAdapter) and not hasattr(old, "mm_mask_adapter")

    proc = ChatRexProcessor.from_pretrained(out)
    rec = json.loads(mask_data.read_text().splitlines()[0])
    image = Image.open(mask_data.parent / rec["image"]).convert("RGB")
    regions = [rec["regions"][0]["mask"], rec["regions"][1]["box"]]
    inputs = proc([image], ["x"], regions=[regions])
    with torch.no_grad():
        levels = new.vision_tower_aux(inputs["pixel_values_aux"])
        tok_new = new.get_object_features(levels, inputs["boxes"], inputs["region_masks"], inputs["region_mask_indices"])
        tok_old = old.get_object_features(levels, inputs["boxes"], inputs["region_masks"], inputs["region_mask_indices"])
    assert torch.equal(tok_new[1], tok_old[1])  # the box region
    assert not torch.allclose(tok_new[0], tok_old[0])  # the mask region goes through the fitted adapter

    # the cache is read back instead of extracting again; the source delta was never changed
    again = CliRunner().invoke(build_app(), ["train", "mask-adapter", str(out), "--data", str(tmp_path / "missing.jsonl"),
                                             "--hidden", "8", "--epochs", "1", "--device", "cpu",
                                             "--features", str(tmp_path / "feats.pt")])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "delta_config.json").read_text())["files"].count("delta-mask_adapter.safetensors") == 1
    assert json.loads((tiny_delta / "delta_config.json").read_text())["config"].get("mask_adapter_dim", 0) == 0


def test_cli_fails_cleanly_without_masks(tmp_path, tiny_delta):
    from chatrex.interfaces.cli import build_app

    data = tmp_path / "boxes_only.jsonl"
    data.write_text(json.dumps({"id": "a", "image": "x.png", "width": 8, "height": 8,
                                "regions": [{"id": 0, "box": [0, 0, 4, 4], "category": "a", "level": "instance"}]}) + "\n")
    result = CliRunner().invoke(build_app(), ["train", "mask-adapter", str(tiny_delta), "--data", str(data), "--device", "cpu"])
    assert result.exit_code == 1
    assert "no region with a mask" in result.output


def test_cli_refuses_an_official_checkpoint(tmp_path, mask_data, shared_dir):
    from chatrex.interfaces.cli import build_app

    official = str(shared_dir / "fixtures" / "rexseek_tiny" / "checkpoint")
    result = CliRunner().invoke(build_app(), ["train", "mask-adapter", official, "--data", str(mask_data),
                                              "--out", str(tmp_path / "copy"), "--device", "cpu"])
    assert result.exit_code == 1 and "official checkpoint" in result.output
    assert not (tmp_path / "copy").exists()  # refused before anything was written


def test_add_module_to_delta_refuses_clashes_and_bad_names(tiny_delta):
    from chatrex.mllm.delta import DeltaError, add_module_to_delta

    with pytest.raises(DeltaError, match="lower-case"):
        add_module_to_delta(tiny_delta, "Bad-Name", {"x": torch.zeros(1)}, {})
    with pytest.raises(DeltaError, match="already in the delta"):
        add_module_to_delta(tiny_delta, "extra", {"mm_projector.0.weight": torch.zeros(1)}, {})
    with pytest.raises(DeltaError, match="not a ChatRex delta"):
        add_module_to_delta(tiny_delta / "nowhere", "extra", {}, {})


def test_config_and_official_layout_reject_a_mask_adapter():
    from chatrex.mllm.configuration_chatrex import ChatRexConfig
    from chatrex.mllm.official import OfficialCheckpointError, official_config_from_chatrex
    from chatrex.mllm.presets import chatrex_tiny
    from tests.mllm.conftest import build_tiny_tokenizer

    tiny_tokenizer = build_tiny_tokenizer()

    with pytest.raises(ValueError, match="mask_adapter_dim"):
        ChatRexConfig(mask_adapter_dim=-1)
    cfg = chatrex_tiny(vocab_size=len(tiny_tokenizer))
    cfg.mask_adapter_dim = 8
    with pytest.raises(OfficialCheckpointError, match="mask_adapter_dim=8"):
        official_config_from_chatrex(cfg, "openai/clip-vit-large-patch14-336")
