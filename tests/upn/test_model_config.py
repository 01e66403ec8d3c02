"""UPN configs: presets, (de)serialisation, the official schema, resolve_config inputs and errors."""

from __future__ import annotations

import json

import pytest

from chatrex.upn.config import (
    PRESETS,
    ConfigError,
    UPNConfig,
    canonical_prompt_type,
    config_from_official,
    resolve_config,
    upn_large,
)
from tests.conftest import SHARED

OFFICIAL = SHARED / "fixtures" / "upn_small" / "upn_small_config.json"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_dict_and_json(name, tmp_path):
    cfg = PRESETS[name]()
    assert UPNConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert resolve_config(path) == cfg
    assert resolve_config(name) == cfg
    assert resolve_config(cfg) is cfg


def test_large_preset_is_the_official_model():
    cfg = upn_large()
    assert cfg.backbone.embed_dim == 192 and cfg.backbone.depths == [2, 2, 18, 2]
    assert cfg.backbone.num_heads == [6, 12, 24, 48] and cfg.backbone.window_size == 12
    assert (cfg.encoder.num_layers, cfg.decoder.num_layers, cfg.encoder.d_ffn, cfg.num_queries) == (6, 6, 2048, 900)


def test_official_schema_from_file_and_dict():
    data = json.loads(OFFICIAL.read_text())
    a = resolve_config(OFFICIAL)
    b = resolve_config(data["model_cfg"])
    c = config_from_official(data)
    assert a == b == c == PRESETS["upn_small"]()


def test_official_schema_with_a_named_swin_variant():
    data = json.loads(OFFICIAL.read_text())["model_cfg"]
    data["vision_backbone_cfg"]["backbone_cfg"] = "swin_L_384_22k"
    cfg = config_from_official(data)
    assert cfg.backbone == upn_large().backbone


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("transformer_cfg", "two_stage_type"), "no", "two_stage_type"),
        (("transformer_cfg", "encoder_cfg", "encoder_layer_cfg", "activation"), "gelu", "activation"),
        (("dec_pred_bbox_embed_share",), False, "dec_pred_bbox_embed_share"),
        (("vision_backbone_cfg", "backbone_cfg", "type"), "ResNet", "ResNet"),
        (("vision_backbone_cfg", "backbone_cfg", "num_heads"), [1, 2, 4, 7], "not divisible"),
        (("vision_backbone_cfg", "position_embedding_cfg", "temperatureW"), 10000, "temperature"),
    ],
)
def test_unsupported_official_settings_are_named(path, value, message):
    data = json.loads(OFFICIAL.read_text())["model_cfg"]
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        config_from_official(data)


def test_bad_configs_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown UPN config keys: \\['colour'\\]"):
        UPNConfig.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match="unknown keys in UPN config 'backbone'"):
        UPNConfig.from_dict({"backbone": {"embed": 3}})
    with pytest.raises(ConfigError, match="neither a UPN preset"):
        resolve_config("upn_huge")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not a JSON config"):
        resolve_config(bad)
    with pytest.raises(ConfigError, match="d_model"):
        UPNConfig.from_dict({"d_model": 100})
    with pytest.raises(ConfigError, match="num_feature_levels"):
        UPNConfig.from_dict({"num_feature_levels": 3})
    py = tmp_path / "upn_large.py"
    py.write_text("model = dict()")
    with pytest.raises(ConfigError, match="not executed"):
        resolve_config(py)


def test_prompt_names():
    avail = ["fine_grained_prompt", "coarse_grained_prompt"]
    assert canonical_prompt_type("fine", avail) == "fine_grained_prompt"
    assert canonical_prompt_type("coarse_grained_prompt", avail) == "coarse_grained_prompt"
    with pytest.raises(ValueError, match="unknown prompt_type 'fine_grain'"):
        canonical_prompt_type("fine_grain", avail)
    with pytest.raises(ValueError, match="prompt_type must be one of"):
        canonical_prompt_type(None, avail)
