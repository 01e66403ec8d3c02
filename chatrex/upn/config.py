"""Configuration of the Universal Proposal Network (UPN).

Plain dataclasses, no registries. ``UPNConfig`` nests one dataclass per part:

* ``SwinConfig``: the Swin Transformer backbone (``chatrex.upn.swin``).
* ``EncoderConfig`` / ``DecoderConfig``: the deformable transformer (``chatrex.upn.deformable_transformer``).

Presets (``PRESETS``): ``upn_large`` (the official model: Swin-L 384/22k, 6+6 layers, 900 queries),
``upn_small`` (the size of the parity fixture, ``fixtures/upn_small``) and ``upn_tiny`` (for tests).

``config_from_official(model_cfg)`` reads the official mmengine-style dict (``configs/upn_large.py`` of
IDEA-Research/ChatRex, or the ``model_cfg`` of a JSON file with the same schema) and
``resolve_config(x)`` accepts a preset name, a JSON file (ours or the official schema), a dict or a
``UPNConfig``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

#: Implementations of the deformable attention (``chatrex.upn.ms_deform_attn``).
MSDA_IMPLEMENTATIONS: tuple[str, ...] = ("auto", "pytorch", "triton")

#: The two prompt types of the official model (``UPN.forward(..., prompt_type=...)``).
PROMPT_TYPES: tuple[str, ...] = ("fine_grained_prompt", "coarse_grained_prompt")
#: Short names accepted for the prompt types.
PROMPT_ALIASES: dict[str, str] = {
    "fine": "fine_grained_prompt",
    "coarse": "coarse_grained_prompt",
}


class ConfigError(ValueError):
    """A UPN configuration is malformed or asks for something this implementation does not build."""


@dataclass
class SwinConfig:
    """Swin Transformer backbone (Liu et al. 2021), detection variant (any input size, padded windows)."""

    embed_dim: int = 192
    depths: list[int] = field(default_factory=lambda: [2, 2, 18, 2])
    num_heads: list[int] = field(default_factory=lambda: [6, 12, 24, 48])
    window_size: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 4
    in_chans: int = 3
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2

    @property
    def num_features(self) -> list[int]:
        """Channels of each output stage: embed_dim * 2**i."""
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    def validate(self) -> None:
        if len(self.depths) != len(self.num_heads):
            raise ConfigError(
                f"swin depths {self.depths} and num_heads {self.num_heads} must have the same length"
            )
        if len(self.depths) < 1:
            raise ConfigError("swin needs at least one stage")
        for i, (c, h) in enumerate(zip(self.num_features, self.num_heads)):
            if h <= 0 or c % h != 0:
                raise ConfigError(f"swin stage {i}: {c} channels are not divisible by {h} heads")
        if self.window_size < 2:
            raise ConfigError(f"swin window_size must be >= 2, got {self.window_size}")
        if self.patch_size < 1:
            raise ConfigError(f"swin patch_size must be >= 1, got {self.patch_size}")


@dataclass
class EncoderConfig:
    """Deformable encoder (post-norm layers: MSDeformAttn -> add & norm -> FFN -> add & norm)."""

    num_layers: int = 6
    d_ffn: int = 2048
    n_heads: int = 8
    n_points: int = 4
    dropout: float = 0.0


@dataclass
class DecoderConfig:
    """Deformable decoder (post-norm layers: self-attn -> deformable cross-attn -> FFN)."""

    num_layers: int = 6
    d_ffn: int = 2048
    n_heads: int = 8
    n_points: int = 4
    dropout: float = 0.0


@dataclass
class UPNConfig:
    """Everything needed to build a ``UPN`` (``build_upn(cfg)``).

    ``num_feature_levels`` is the number of backbone stages plus extra stride-2 levels built from the
    last stage (the official model: 4 Swin stages + 1 extra level = 5).
    ``pos_temperature`` is the temperature of the image sine embedding (20 in the official model;
    the query sine embedding always uses 10000). ``msda_chunk_size`` bounds how many queries the
    pure-PyTorch deformable-attention kernel samples at once (memory only; results do not change).
    ``msda_implementation`` picks the deformable-attention kernel: "auto" (fused Triton kernel on CUDA,
    PyTorch elsewhere), "pytorch" or "triton" (``chatrex.upn.ms_deform_attn``); it changes speed and
    memory, not results beyond float rounding.
    ``feature_stages`` picks the backbone stages that feed the encoder (like DINO's
    ``return_interm_indices``); ``None`` means all of them (the official UPN). ``[1, 2, 3]`` drops the
    stride-4 level, about three quarters of the encoder's tokens. It must end with the last stage,
    from which the extra levels are built.
    """

    backbone: SwinConfig = field(default_factory=SwinConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    d_model: int = 256
    num_queries: int = 900
    num_feature_levels: int = 5
    pos_temperature: float = 20.0
    prompt_types: list[str] = field(default_factory=lambda: list(PROMPT_TYPES))
    gradient_checkpointing: bool = False
    msda_chunk_size: int = 16384
    msda_implementation: str = "auto"
    feature_stages: Optional[list[int]] = None

    # -- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (nested dicts for the parts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UPNConfig":
        """Inverse of ``to_dict``; unknown keys raise ``ConfigError`` naming them."""
        if not isinstance(d, dict):
            raise ConfigError(f"a UPN config must be a dict, got {type(d).__name__}")
        parts = {"backbone": SwinConfig, "encoder": EncoderConfig, "decoder": DecoderConfig}
        kwargs: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown UPN config keys: {unknown} (known: {sorted(known)})")
        for key, value in d.items():
            if key in parts:
                sub = parts[key]
                if isinstance(value, sub):
                    kwargs[key] = value
                    continue
                if not isinstance(value, dict):
                    raise ConfigError(f"UPN config '{key}' must be a dict, got {type(value).__name__}")
                sub_known = {f.name for f in fields(sub)}
                bad = sorted(set(value) - sub_known)
                if bad:
                    raise ConfigError(f"unknown keys in UPN config '{key}': {bad} (known: {sorted(sub_known)})")
                kwargs[key] = sub(**value)
            else:
                kwargs[key] = value
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ConfigError`` for inconsistent settings."""
        self.backbone.validate()
        if self.d_model % 32 != 0:
            raise ConfigError(f"d_model must be a multiple of 32 (GroupNorm(32, d)), got {self.d_model}")
        if self.d_model % 2 != 0:
            raise ConfigError(f"d_model must be even, got {self.d_model}")
        for name, part in (("encoder", self.encoder), ("decoder", self.decoder)):
            if part.n_heads <= 0 or self.d_model % part.n_heads != 0:
                raise ConfigError(f"{name}: d_model {self.d_model} is not divisible by n_heads {part.n_heads}")
            if part.num_layers < 1 and name == "decoder":
                raise ConfigError("decoder needs at least one layer")
            if part.num_layers < 0:
                raise ConfigError(f"{name}.num_layers must be >= 0")
            if part.n_points < 1:
                raise ConfigError(f"{name}.n_points must be >= 1")
        n_stages = len(self.backbone.depths)
        stages = self.stages
        if list(stages) != sorted(set(stages)) or not stages or stages[0] < 0 or stages[-1] != n_stages - 1:
            raise ConfigError(f"feature_stages {self.feature_stages} must be increasing stage indices ending with "
                              f"the last stage ({n_stages - 1})")
        if self.num_feature_levels < len(stages):
            raise ConfigError(
                f"num_feature_levels ({self.num_feature_levels}) must be >= the number of backbone stages used "
                f"({len(stages)})"
            )
        if self.num_queries < 1:
            raise ConfigError(f"num_queries must be >= 1, got {self.num_queries}")
        if not self.prompt_types:
            raise ConfigError("prompt_types must name at least one prompt")
        if self.msda_chunk_size < 1:
            raise ConfigError("msda_chunk_size must be >= 1")
        if self.msda_implementation not in MSDA_IMPLEMENTATIONS:
            raise ConfigError(f"msda_implementation must be one of {MSDA_IMPLEMENTATIONS}, "
                              f"got {self.msda_implementation!r}")

    @property
    def stages(self) -> list[int]:
        """The backbone stages that feed the encoder (``feature_stages`` or all)."""
        n = len(self.backbone.depths)
        return list(range(n)) if self.feature_stages is None else [int(i) for i in self.feature_stages]

# -- presets ----------------------------------------------------------------------------------------
def upn_large() -> UPNConfig:
    """The official UPN (``configs/upn_large.py``): Swin-L 384/22k, 6+6 layers, 900 queries."""
    return UPNConfig(
        backbone=SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12),
        encoder=EncoderConfig(num_layers=6, d_ffn=2048),
        decoder=DecoderConfig(num_layers=6, d_ffn=2048),
        num_queries=900,
    )


def upn_small() -> UPNConfig:
    """The size of the parity fixture (``fixtures/upn_small``): Swin with 32 channels, 2+2 layers."""
    return UPNConfig(
        backbone=SwinConfig(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=12),
        encoder=EncoderConfig(num_layers=2, d_ffn=128),
        decoder=DecoderConfig(num_layers=2, d_ffn=128),
        num_queries=100,
    )


def upn_tiny() -> UPNConfig:
    """A very small UPN for unit tests (d_model 64, window 4, 20 queries)."""
    return UPNConfig(
        backbone=SwinConfig(
            embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.1
        ),
        encoder=EncoderConfig(num_layers=1, d_ffn=64, n_heads=4, n_points=2),
        decoder=DecoderConfig(num_layers=2, d_ffn=64, n_heads=4, n_points=2),
        d_model=64,
        num_queries=20,
        msda_chunk_size=64,
    )


PRESETS = {"upn_large": upn_large, "upn_small": upn_small, "upn_tiny": upn_tiny}

#: Swin variants named in the official code (``build_swin_transformer``).
SWIN_VARIANTS: dict[str, dict[str, Any]] = {
    "swin_T_224_1k": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "swin_B_224_22k": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7),
    "swin_B_384_22k": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12),
    "swin_L_224_22k": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=7),
    "swin_L_384_22k": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12),
}


# -- the official (mmengine-style) schema ----------------------------------------------------------
def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(f"unsupported official UPN config: {msg}")


def _swin_from_official(vb: dict[str, Any]) -> SwinConfig:
    bcfg = vb.get("backbone_cfg", vb.get("backbone"))
    if isinstance(bcfg, str):
        _require(bcfg in SWIN_VARIANTS, f"unknown swin variant '{bcfg}' (known: {sorted(SWIN_VARIANTS)})")
        return SwinConfig(**SWIN_VARIANTS[bcfg])
    _require(isinstance(bcfg, dict), "vision_backbone_cfg.backbone_cfg must be a dict or a swin variant name")
    btype = bcfg.get("type", "SwinTransformer")
    base: dict[str, Any] = {}
    if btype in SWIN_VARIANTS:
        base = dict(SWIN_VARIANTS[btype])
    else:
        _require(btype == "SwinTransformer", f"backbone type '{btype}' (only Swin is supported)")
    for key in ("embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "patch_size", "in_chans",
                "qkv_bias", "drop_rate", "attn_drop_rate", "drop_path_rate"):
        if key in bcfg:
            value = bcfg[key]
            base[key] = list(value) if isinstance(value, (list, tuple)) else value
    _require(not bcfg.get("ape", False), "absolute position embedding (ape=True)")
    _require(bcfg.get("qk_scale") is None, "qk_scale other than None")
    _require(bcfg.get("patch_norm", True), "patch_norm=False")
    _require(not bcfg.get("dilation", False), "dilation=True")
    cfg = SwinConfig(**base)
    n = len(cfg.depths)
    out = bcfg.get("out_indices", vb.get("return_interm_indices", list(range(n))))
    _require(list(out) == list(range(n)), f"out_indices {list(out)} (all {n} stages must be returned)")
    rii = vb.get("return_interm_indices")
    if rii is not None:
        _require(list(rii) == list(range(n)), f"return_interm_indices {list(rii)}")
    return cfg


def _layer_cfg(part: dict[str, Any], layer_key: str, name: str) -> dict[str, Any]:
    layer = part.get(layer_key, {})
    _require(isinstance(layer, dict), f"{name}.{layer_key} must be a dict")
    act = layer.get("activation", "relu")
    _require(act == "relu", f"{name} activation '{act}'")
    return layer


def config_from_official(model_cfg: dict[str, Any]) -> UPNConfig:
    """Build a ``UPNConfig`` from the official mmengine-style ``model`` dict.

    Accepts either the dict itself (``{"type": "UPN", "vision_backbone_cfg": ..., "transformer_cfg":
    ...}``) or a wrapper with a ``model_cfg`` key. Settings the official code supports but UPN never
    uses (other two-stage types, unshared heads, other activations) raise ``ConfigError``.
    """
    if isinstance(model_cfg, dict) and "model_cfg" in model_cfg:
        model_cfg = model_cfg["model_cfg"]
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"official UPN config must be a dict, got {type(model_cfg).__name__}")
    _require(model_cfg.get("type", "UPN") == "UPN", f"model type '{model_cfg.get('type')}' (expected 'UPN')")
    vb = model_cfg.get("vision_backbone_cfg")
    tcfg = model_cfg.get("transformer_cfg")
    _require(isinstance(vb, dict), "missing 'vision_backbone_cfg'")
    _require(isinstance(tcfg, dict), "missing 'transformer_cfg'")
    swin = _swin_from_official(vb)

    pos = vb.get("position_embedding_cfg", {}) or {}
    ptype = pos.get("type", "PositionEmbeddingSineHW")
    _require(ptype == "PositionEmbeddingSineHW", f"position embedding '{ptype}'")
    _require(pos.get("normalize", True), "position embedding normalize=False")
    t_h, t_w = pos.get("temperatureH", 20), pos.get("temperatureW", 20)
    _require(t_h == t_w, f"temperatureH ({t_h}) != temperatureW ({t_w})")

    enc = tcfg.get("encoder_cfg", {})
    dec = tcfg.get("decoder_cfg", {})
    el = _layer_cfg(enc, "encoder_layer_cfg", "encoder")
    dl = _layer_cfg(dec, "decoder_layer_cfg", "decoder")
    d_model = int(el.get("d_model", enc.get("d_model", 256)))
    for name, v in (("decoder d_model", dl.get("d_model", d_model)), ("encoder_cfg.d_model", enc.get("d_model", d_model)),
                    ("decoder_cfg.d_model", dec.get("d_model", d_model))):
        _require(int(v) == d_model, f"{name} {v} != encoder d_model {d_model}")
    num_pos_feats = pos.get("num_pos_feats", d_model // 2)
    _require(num_pos_feats * 2 == d_model, f"num_pos_feats {num_pos_feats} (must be d_model/2)")

    levels = int(tcfg.get("num_feature_levels", 5))
    for name, layer in (("encoder", el), ("decoder", dl)):
        _require(int(layer.get("n_levels", levels)) == levels, f"{name} n_levels != num_feature_levels {levels}")
    two_stage = tcfg.get("two_stage_type", "standard")
    _require(two_stage == "standard", f"two_stage_type '{two_stage}'")
    for key in ("two_stage_bbox_embed_share", "two_stage_class_embed_share", "two_stage_keep_all_tokens",
                "two_stage_learn_wh", "random_refpoints_xy", "binary_query_selection"):
        _require(not tcfg.get(key, False), f"transformer_cfg.{key}=True")
    _require(tcfg.get("learnable_tgt_init", True), "learnable_tgt_init=False")
    _require(dec.get("rm_dec_query_scale", True), "rm_dec_query_scale=False")
    _require(dec.get("return_intermediate", True), "return_intermediate=False")
    _require(model_cfg.get("dec_pred_bbox_embed_share", True), "dec_pred_bbox_embed_share=False")
    _require(model_cfg.get("dec_pred_class_embed_share", True), "dec_pred_class_embed_share=False")
    nq_t, nq_m = tcfg.get("num_queries"), model_cfg.get("num_queries")
    if nq_t is not None and nq_m is not None:
        _require(int(nq_t) == int(nq_m), f"num_queries differ ({nq_t} vs {nq_m})")
    num_queries = int(nq_t if nq_t is not None else (nq_m if nq_m is not None else 900))

    cfg = UPNConfig(
        backbone=swin,
        encoder=EncoderConfig(
            num_layers=int(enc.get("num_layers", 6)),
            d_ffn=int(el.get("d_ffn", 2048)),
            n_heads=int(el.get("n_heads", 8)),
            n_points=int(el.get("n_points", 4)),
            dropout=float(el.get("dropout", 0.0)),
        ),
        decoder=DecoderConfig(
            num_layers=int(dec.get("num_layers", 6)),
            d_ffn=int(dl.get("d_ffn", 2048)),
            n_heads=int(dl.get("n_heads", 8)),
            n_points=int(dl.get("n_points", 4)),
            dropout=float(dl.get("dropout", 0.0)),
        ),
        d_model=d_model,
        num_queries=num_queries,
        num_feature_levels=levels,
        pos_temperature=float(t_h),
    )
    cfg.validate()
    return cfg


def _is_official(d: dict[str, Any]) -> bool:
    return "model_cfg" in d or d.get("type") == "UPN" or "vision_backbone_cfg" in d


def resolve_config(config: "str | Path | dict[str, Any] | UPNConfig") -> UPNConfig:
    """Turn a preset name, a JSON file path (ours or official schema), a dict or a ``UPNConfig`` into a
    validated ``UPNConfig``. A directory is read as ``<dir>/config.json`` (``save_pretrained`` output)."""
    if isinstance(config, UPNConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        if _is_official(config):
            return config_from_official(config)
        if "config" in config and isinstance(config["config"], dict) and "backbone" in config["config"]:
            return UPNConfig.from_dict(config["config"])
        return UPNConfig.from_dict(config)
    if isinstance(config, (str, Path)):
        name = str(config)
        if name in PRESETS:
            return PRESETS[name]()
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(
                f"'{name}' is neither a UPN preset ({sorted(PRESETS)}) nor an existing config file"
            )
        if path.suffix == ".py":
            raise ConfigError(f"{path}: Python config files are not executed; convert the 'model' dict to JSON")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a JSON config file ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a UPN config file must hold a JSON object")
        try:
            return resolve_config(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    raise ConfigError(f"cannot make a UPN config from {type(config).__name__}")


def canonical_prompt_type(prompt_type: str | None, available: list[str] | tuple[str, ...]) -> str:
    """Map a prompt name (or its short alias ``fine``/``coarse``) to the canonical name; unknown names
    raise ``ValueError`` listing the valid ones."""
    if not isinstance(prompt_type, str):
        raise ValueError(f"prompt_type must be one of {list(available)}, got {prompt_type!r}")
    name = PROMPT_ALIASES.get(prompt_type, prompt_type)
    if name not in available:
        raise ValueError(
            f"unknown prompt_type {prompt_type!r}; expected one of {list(available)} "
            f"(or the short forms {sorted(PROMPT_ALIASES)})"
        )
    return name
