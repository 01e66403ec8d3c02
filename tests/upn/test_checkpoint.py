"""UPN checkpoints: official {"model": state_dict} files (aliases, buffers, strictness, clear errors)
and our safetensors directories (round trip, sharding, bad directories)."""

from __future__ import annotations

import json

import pytest
import torch

from chatrex.upn.checkpoint import (
    INDEX_NAME,
    CheckpointError,
    load_official_checkpoint,
    save_pretrained,
)
from chatrex.upn.model import UPN, build_upn, from_pretrained

BOX_KEY = "bbox_embed.0.layers.2.weight"
ALIAS_KEY = "transformer.decoder.bbox_embed.1.layers.2.weight"
CANON_KEY = "transformer.decoder.bbox_embed.0.layers.2.weight"  # first name in state_dict order


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def source() -> UPN:
    torch.manual_seed(0)
    model = build_upn("upn_tiny").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(2))


def _outputs(model: UPN, image: torch.Tensor) -> dict:
    with torch.no_grad():
        return model.eval()(image, None, "fine_grained_prompt")


def _save(tmp_path, sd, name="ckpt.pth"):
    path = tmp_path / name
    torch.save({"model": sd}, path)
    return path


def test_official_layout_loads_and_reproduces_outputs(source, image, tmp_path):
    path = _save(tmp_path, source.state_dict())
    target = build_upn("upn_tiny")
    result = load_official_checkpoint(target, path)
    assert result.ok and result.missing_keys == [] and result.unexpected_keys == []
    a, b = _outputs(source, image), _outputs(target, image)
    assert torch.equal(a["pred_boxes"], b["pred_boxes"]) and torch.equal(a["pred_logits"], b["pred_logits"])


def test_aliases_and_position_index_may_be_absent(source, image, tmp_path):
    sd = {k: v for k, v in source.state_dict().items()
          if not k.startswith("transformer.decoder.bbox_embed.") and not k.endswith("relative_position_index")}
    assert BOX_KEY in sd and ALIAS_KEY not in sd
    target = build_upn("upn_tiny")
    assert load_official_checkpoint(target, _save(tmp_path, sd)).ok
    assert torch.equal(_outputs(source, image)["pred_boxes"], _outputs(target, image)["pred_boxes"])
    # only the alias name present (the canonical one absent) also works
    sd2 = dict(source.state_dict())
    for k in [k for k in sd2 if k.startswith("bbox_embed.") or k.startswith("transformer.decoder.bbox_embed.0.")]:
        del sd2[k]
    target2 = build_upn("upn_tiny")
    assert load_official_checkpoint(target2, _save(tmp_path, sd2, "b.pth")).ok
    assert torch.equal(target2.bbox_embed[0].layers[2].weight, source.bbox_embed[0].layers[2].weight)


def test_alias_mismatch_is_an_error(source, tmp_path):
    sd = dict(source.state_dict())
    sd[ALIAS_KEY] = sd[ALIAS_KEY] + 1.0
    with pytest.raises(CheckpointError, match=f"'{CANON_KEY}' and '{ALIAS_KEY}'.*different values"):
        load_official_checkpoint(build_upn("upn_tiny"), _save(tmp_path, sd))


def test_wrong_relative_position_index_is_an_error(source, tmp_path):
    sd = dict(source.state_dict())
    key = "backbone.model.backbone.layers.0.blocks.1.attn.relative_position_index"
    sd[key] = sd[key].flip(0)
    with pytest.raises(CheckpointError, match=key):
        load_official_checkpoint(build_upn("upn_tiny"), _save(tmp_path, sd))


@pytest.mark.parametrize("kind", ["missing", "unexpected", "shape"])
def test_key_problems_are_named(source, tmp_path, kind):
    sd = dict(source.state_dict())
    key = "transformer.enc_output.bias"
    if kind == "missing":
        del sd[key]
        pattern = f"1 missing key.*{key}"
    elif kind == "unexpected":
        key = "transformer.extra_head.weight"
        sd[key] = torch.zeros(3)
        pattern = f"1 unexpected key.*{key}"
    else:
        sd[key] = torch.zeros(7)
        pattern = rf"1 shape mismatch.*{key} \(checkpoint \[7\] vs model \[64\]\)"
    with pytest.raises(CheckpointError, match=pattern):
        load_official_checkpoint(build_upn("upn_tiny"), _save(tmp_path, sd))


def test_non_strict_load_reports_and_warns(source, tmp_path):
    sd = dict(source.state_dict())
    del sd["transformer.enc_output.bias"]
    sd["transformer.extra.weight"] = torch.zeros(2)
    sd["input_proj.0.0.bias"] = torch.zeros(5)
    target = build_upn("upn_tiny")
    before = target.input_proj[0][0].bias.detach().clone()
    with pytest.warns(UserWarning, match="partial load.*transformer.enc_output.bias"):
        result = load_official_checkpoint(target, _save(tmp_path, sd), strict=False)
    assert result.missing_keys == ["transformer.enc_output.bias"]
    assert result.unexpected_keys == ["transformer.extra.weight"]
    assert result.mismatched_keys == [("input_proj.0.0.bias", (5,), (64,))]
    assert torch.equal(target.input_proj[0][0].bias, before)  # skipped, untouched
    assert torch.equal(target.transformer.tgt_embed.weight, source.transformer.tgt_embed.weight)  # loaded


def test_not_a_checkpoint_and_wrong_architecture(source, tmp_path):
    model = build_upn("upn_tiny")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_official_checkpoint(model, junk)
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3, "optimizer": {}}, other)
    with pytest.raises(CheckpointError, match=r"not a UPN checkpoint.*\{'model': state_dict\}"):
        load_official_checkpoint(model, other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_checkpoint(model, tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="different architecture"):
        load_official_checkpoint(build_upn("upn_small"), _save(tmp_path, source.state_dict()))


def test_bare_and_ddp_state_dicts_are_accepted(source, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, path)
    assert load_official_checkpoint(build_upn("upn_tiny"), path).ok


def test_safetensors_round_trip_is_exact(source, image, tmp_path):
    out = save_pretrained(source, source.config, tmp_path / "tiny")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    from safetensors.torch import load_file

    stored = load_file(str(out / "model.safetensors"))
    shared = [k for k in stored if "bbox_embed." in k and "enc_out" not in k]  # the shared MLP, once
    assert sorted(shared) == sorted(f"transformer.decoder.bbox_embed.0.layers.{i}.{w}"
                                    for i in range(3) for w in ("weight", "bias"))
    assert len(stored) == len({id(t) for t in source.state_dict(keep_vars=True).values()})
    loaded = from_pretrained(out)
    assert loaded.config == source.config and not loaded.training
    assert loaded.bbox_embed[0] is loaded.transformer.decoder.bbox_embed[1]
    a, b = _outputs(source, image), _outputs(loaded, image)
    assert torch.equal(a["pred_boxes"], b["pred_boxes"]) and torch.equal(a["pred_logits"], b["pred_logits"])
    again = UPN.from_pretrained(out)
    assert torch.equal(_outputs(again, image)["pred_logits"], a["pred_logits"])


def test_sharded_save_round_trip(source, image, tmp_path):
    out = save_pretrained(source, None, tmp_path / "sharded", max_shard_size=200_000)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    index = json.loads((out / INDEX_NAME).read_text())
    assert set(index["weight_map"].values()) == set(shards)
    from safetensors.torch import load_file

    for shard in shards:  # a shard holds at most the limit, unless it is one big tensor
        tensors = load_file(str(out / shard))
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= 200_000 or len(tensors) == 1
    loaded = from_pretrained(out)
    assert torch.equal(_outputs(source, image)["pred_boxes"], _outputs(loaded, image)["pred_boxes"])
    # saving again unsharded into the same folder removes the old shards
    save_pretrained(source, None, out)
    assert not list(out.glob("model-*.safetensors")) and not (out / INDEX_NAME).exists()
    # a missing shard is named
    out2 = save_pretrained(source, None, tmp_path / "sharded2", max_shard_size=200_000)
    victim = sorted(out2.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        from_pretrained(out2)


def test_a_save_that_fails_midway_keeps_the_old_checkpoint(source, image, tmp_path, monkeypatch):
    """The shard writer fails on the second shard (disk full, or the process is killed): the folder still
    holds the old checkpoint, whole, and no temporary folder is left."""
    import safetensors.torch

    out = save_pretrained(source, None, tmp_path / "ckpt", max_shard_size=200_000)
    (out / "preprocessor_config.json").write_text('{"resize": 64}')
    before = sorted(p.name for p in out.iterdir())
    torch.manual_seed(1)
    other = build_upn("upn_tiny").eval()
    real_save_file, written = safetensors.torch.save_file, []

    def fails_on_the_second_shard(tensors, filename, metadata=None):
        written.append(filename)
        if len(written) == 2:
            with open(filename, "wb") as handle:
                handle.write(b"half a shard")
            raise OSError(28, "No space left on device")
        real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fails_on_the_second_shard)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(other, None, out, max_shard_size=200_000)
    monkeypatch.setattr(safetensors.torch, "save_file", real_save_file)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert torch.equal(_outputs(from_pretrained(out), image)["pred_boxes"], _outputs(source, image)["pred_boxes"])
    # the same save without the failure replaces the UPN's files and keeps the others
    save_pretrained(other, None, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert torch.equal(_outputs(from_pretrained(out), image)["pred_boxes"], _outputs(other, image)["pred_boxes"])


def test_bad_pretrained_directories(source, tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        from_pretrained(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(empty)
    out = save_pretrained(source, None, tmp_path / "t")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        from_pretrained(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        from_pretrained(out)
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not a chatrex UPN config"):
        from_pretrained(out)
    # weights of another architecture under a config that does not match them
    small_dir = save_pretrained(source, None, tmp_path / "s")
    cfg = json.loads((small_dir / "config.json").read_text())
    cfg["config"]["decoder"]["num_layers"] = 3
    (small_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing key"):
        from_pretrained(small_dir)
