"""The official ChatRex / RexSeek MLLM checkpoint layout, and how it maps onto ours.

The official code (IDEA-Research/RexSeek, and ChatRex-7B's code on the model hub) saves a LLaVA-style
folder: a *flat* ``config.json`` (the LLM's own fields plus ``mm_*`` fields, ``model_type``
``rexseek_qwen`` and the like) and one state dict with these keys::

    model.*, lm_head.*                                   the LLM (Qwen2 or Llama), as transformers names it
    vision_tower.vision_tower.vision_model.*             CLIP ViT (transformers CLIPVisionModel)
    vision_tower_aux.vision_stem.{0,1}.*                 ConvNeXt stem
    vision_tower_aux.vision_stages.S.downsample.{0,1}.*  ConvNeXt stages; the layer scale of a block is
    vision_tower_aux.vision_stages.S.blocks.B.*          named ``ramma`` (timm: ``gamma``)
    mm_projector.{0,2}.*, mm_object_projector.{0,2}.*    the two projectors

The config carries no CLIP or ConvNeXt shape: CLIP's comes from ``mm_vision_tower`` (a hub id or a
folder), ConvNeXt-L is fixed in the official code. Here the ConvNeXt shape is read from the checkpoint's
tensor shapes (the safetensors header, no weights loaded) and checked against ``mm_hidden_size`` and
``object_hidden_size``. In ``input_ids`` the official code writes one id ``-200`` for the image and one
``-300`` per box; our model uses g² image placeholders and one object placeholder per box, with ids just
above the LLM's vocabulary (never embedded, never predicted), so the checkpoint's vocabulary is kept as it is.

Everything that cannot be converted fails with :class:`OfficialCheckpointError` naming the field or keys;
nothing falls back to a default.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from transformers import LlamaConfig, Qwen2Config

#: Id of the image placeholder in the official ``input_ids`` (it stands for all g² image embeddings).
OFFICIAL_IMAGE_INDEX = -200
#: Id of a box placeholder in the official ``input_ids`` (the k-th one takes box k's object embedding).
OFFICIAL_OBJECT_INDEX = -300
#: The official user turn of one question, in each LLM family's chat format (``{input}`` is the prompt).
OFFICIAL_PROMPT_TEMPLATES = {
    "qwen2": "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
    "llama": "USER: {input} ASSISTANT:",
}
#: ``model_type`` of the official configs we know, and their LLM family. ChatRex-7B's own type (its code is
#: on the model hub only) is recognised by the flat ``mm_*`` fields; its family comes from the type's or the
#: architecture's name (``llama`` / ``vicuna`` / ``qwen``), and a flat config of type ``chatrex`` is Vicuna's.
OFFICIAL_MODEL_TYPES = {"rexseek_qwen": "qwen2", "rexseek_llama": "llama", "chatrex": "llama"}
#: The official architectures we write when converting back.
OFFICIAL_ARCHITECTURES = {"qwen2": "RexSeekQwenForCausalLM", "llama": "RexSeekLlamaForCausalLM"}
OFFICIAL_TYPE_OF_FAMILY = {"qwen2": "rexseek_qwen", "llama": "rexseek_llama"}

#: Hub ids of CLIP towers whose shape is known without downloading their config.
KNOWN_CLIP_TOWERS: dict[str, dict[str, Any]] = {
    "openai/clip-vit-large-patch14-336": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
        image_size=336, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "openai/clip-vit-large-patch14": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
        image_size=224, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
}
#: The official code's fixed ConvNeXt (LAION CLIP-convnext_large_d) and input size.
CONVNEXT_LARGE = dict(depths=[3, 3, 27, 3], dims=[192, 384, 768, 1536])
OFFICIAL_AUX_IMAGE_SIZE = 768
#: Image normalisation of the OpenAI CLIP processor (used when ``mm_vision_tower`` names no local folder).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Fields of the flat config that belong to the multimodal side (everything else is the LLM's).
MULTIMODAL_FIELDS = (
    "mm_vision_tower", "mm_hidden_size", "object_hidden_size", "mm_projector_type", "mm_vision_select_layer",
    "mm_vision_select_feature", "use_mm_proj", "vis_during_training_prob", "mm_patch_merge_type",
    "mm_use_im_start_end", "mm_use_im_patch_token", "image_aspect_ratio", "image_grid_pinpoints",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "mm_projector_lr", "mm_vision_tower_lr",
    "unfreeze_mm_vision_tower", "tokenizer_padding_side", "tokenizer_model_max_length", "chatrex_config",
)
#: Bookkeeping fields of a saved config that are not part of the LLM's shape.
_NOT_LLM_FIELDS = ("architectures", "model_type", "transformers_version", "auto_map", "_name_or_path")
#: Field of a flat config written by :func:`official_config_from_chatrex`: our full config, so that a model
#: converted to the official layout and back is the same model (the official code ignores the field).
CHATREX_CONFIG_FIELD = "chatrex_config"

#: Official key → our key (``re.sub`` in this order; several may apply to one key). Also transformers'
#: ``key_mapping`` in ``from_pretrained``.
OFFICIAL_KEY_MAPPING: dict[str, str] = {
    # LLaVA keeps the towers and projectors inside the LLM body; RexSeek at the top level: accept both
    r"^model\.(vision_tower|vision_tower_aux|mm_projector|mm_object_projector)\.": r"\1.",
    r"^vision_tower\.vision_tower\.vision_model\.": "vision_tower.vision_tower.",
    r"^vision_tower_aux\.vision_stem\.": "vision_tower_aux.trunk.stem.",
    r"^vision_tower_aux\.vision_stages\.": "vision_tower_aux.trunk.stages.",
    r"^(vision_tower_aux\.trunk\.stages\.\d+\.blocks\.\d+)\.ramma$": r"\1.gamma",
}
#: Our key → official key (the inverse of :data:`OFFICIAL_KEY_MAPPING`, RexSeek's top-level layout).
CHATREX_TO_OFFICIAL_KEY_MAPPING: dict[str, str] = {
    r"^(vision_tower_aux\.trunk\.stages\.\d+\.blocks\.\d+)\.gamma$": r"\1.ramma",
    r"^vision_tower_aux\.trunk\.stem\.": "vision_tower_aux.vision_stem.",
    r"^vision_tower_aux\.trunk\.stages\.": "vision_tower_aux.vision_stages.",
    r"^vision_tower\.vision_tower\.": "vision_tower.vision_tower.vision_model.",
}
#: Official modules that LLaVA's layout keeps inside the LLM body (``model.vision_tower.*``).
_NESTED_IN_LLAVA = ("vision_tower.", "vision_tower_aux.", "mm_projector.", "mm_object_projector.")
#: Our modules that the official layout has no place for.
NOT_OFFICIAL_PREFIXES = ("mm_object_trunk.", "mm_object_pointer.", "mm_mask_adapter.")


class OfficialCheckpointError(ValueError):
    """An official checkpoint (or its config) that cannot be converted or does not match its model."""


def _apply(mapping: Mapping[str, str], key: str) -> str:
    for pattern, repl in mapping.items():
        key = re.sub(pattern, repl, key)
    return key


def official_to_chatrex_key(key: str) -> str:
    """Our name of an official checkpoint key (LLM keys keep theirs)."""
    return _apply(OFFICIAL_KEY_MAPPING, key)


def chatrex_to_official_key(key: str) -> str:
    """The official name of one of our keys; ``OfficialCheckpointError`` for modules the official layout lacks."""
    if key.startswith(NOT_OFFICIAL_PREFIXES):
        raise OfficialCheckpointError(
            f"'{key}' has no place in the official layout (only models with object_trunk_dim 0 and "
            "object_pointer_dim 0, the paper's layout, can be written there)")
    return _apply(CHATREX_TO_OFFICIAL_KEY_MAPPING, key)


# ------------------------------------------------------------------------------------------------
# recognising the layout
# ------------------------------------------------------------------------------------------------
def is_official_config_dict(d: Mapping[str, Any]) -> bool:
    """True for a flat official config (``mm_vision_tower`` and no nested ``text_config``)."""
    return isinstance(d, Mapping) and "mm_vision_tower" in d and "text_config" not in d


def read_config_dict(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``folder/config.json`` as a dict, or None when the folder has none."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OfficialCheckpointError(f"'{path}' is not valid JSON: {err}") from err
    if not isinstance(d, dict):
        raise OfficialCheckpointError(f"'{path}' does not hold a JSON object")
    return d


def is_official_dir(folder: str | os.PathLike) -> bool:
    """True when ``folder`` is a local folder whose ``config.json`` is a flat official config."""
    if not os.path.isdir(folder):
        return False
    d = read_config_dict(folder)
    return d is not None and is_official_config_dict(d)


def llm_family(flat: Mapping[str, Any]) -> str:
    """``"qwen2"`` or ``"llama"``: the LLM of a flat official config (``OfficialCheckpointError`` if unclear)."""
    model_type = str(flat.get("model_type") or "")
    if model_type in OFFICIAL_MODEL_TYPES:
        return OFFICIAL_MODEL_TYPES[model_type]
    names = " ".join([model_type, *[str(a) for a in flat.get("architectures") or []]]).lower()
    qwen = "qwen" in names
    llama = "llama" in names or "vicuna" in names
    if qwen != llama:
        return "qwen2" if qwen else "llama"
    raise OfficialCheckpointError(
        f"cannot tell the language model of the official config (model_type {model_type!r}, architectures "
        f"{flat.get('architectures')!r}); known types: {sorted(OFFICIAL_MODEL_TYPES)}, or a type / architecture "
        "naming Qwen or Llama (Vicuna)")


# ------------------------------------------------------------------------------------------------
# checkpoint files
# ------------------------------------------------------------------------------------------------
def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files of a saved folder: the shards of ``model.safetensors.index.json``, else
    ``model.safetensors``, else ``pytorch_model.bin`` (or its index's shards)."""
    folder = Path(folder)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
                raise OfficialCheckpointError(f"'{index}' is not a valid weight index: {err}") from err
            files = [folder / f for f in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise OfficialCheckpointError(f"'{index}' names shard files that are missing: {missing}")
            return files
        if (folder / single).is_file():
            return [folder / single]
    raise OfficialCheckpointError(
        f"'{folder}' has no model weights (model.safetensors, its index, or pytorch_model.bin)")


def read_checkpoint_shapes(folder: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor of a saved folder, read from the file headers (no weights are loaded).

    Raises ``OfficialCheckpointError`` naming the file for an unreadable (e.g. truncated) file and naming
    the keys for a key stored twice.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, str] = {}
    for path in checkpoint_files(folder):
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(os.fspath(path), framework="pt") as f:
                    file_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            else:
                import torch

                sd = torch.load(os.fspath(path), map_location="meta", weights_only=True, mmap=True)
                file_shapes = {k: tuple(v.shape) for k, v in sd.items()}
        except Exception as err:  # noqa: BLE001 - any unreadable file: name it
            raise OfficialCheckpointError(f"cannot read checkpoint file '{path}' ({type(err).__name__}: {err}); "
                                          "is it complete?") from err
        twice = sorted(set(file_shapes) & set(shapes))
        if twice:
            raise OfficialCheckpointError(f"keys stored in both '{where[twice[0]]}' and '{path.name}': {twice[:10]}")
        shapes.update(file_shapes)
        where.update({k: path.name for k in file_shapes})
    return shapes


# ------------------------------------------------------------------------------------------------
# config conversion
# ------------------------------------------------------------------------------------------------
def convnext_shape_from_checkpoint(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[int]]:
    """ConvNeXt ``depths`` and ``dims`` read from official checkpoint keys (either layout prefix).

    A stage's depth is its highest block index + 1 (a block missing below it is then reported as missing
    keys). The widths of ConvNeXt-L mean ConvNeXt-L's depths, the only ConvNeXt the official code builds, so
    that a checkpoint missing the last blocks of a stage is reported, not read as a shallower model.
    """
    ours = {official_to_chatrex_key(k): s for k, s in shapes.items()}
    blocks = re.compile(r"^vision_tower_aux\.trunk\.stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.weight$")
    depth: dict[int, int] = {}
    dims: dict[int, int] = {}
    for key, shape in sorted(ours.items()):
        m = blocks.match(key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            depth[stage] = max(depth.get(stage, 0), block + 1)
            dims.setdefault(stage, int(shape[0]))
    absent = [s for s in range(4) if s not in depth]
    if absent:
        raise OfficialCheckpointError(
            "the checkpoint has no ConvNeXt blocks for stage(s) " + ", ".join(map(str, absent)) + ": keys "
            + ", ".join(f"vision_tower_aux.vision_stages.{s}.blocks.*" for s in absent) + " are missing")
    shape = {"depths": [depth[s] for s in range(4)], "dims": [dims[s] for s in range(4)]}
    if shape["dims"] == CONVNEXT_LARGE["dims"]:
        shape["depths"] = list(CONVNEXT_LARGE["depths"])
    return shape


def resolve_clip_tower(name: str, folder: str | os.PathLike | None) -> tuple[dict[str, Any], Path | None]:
    """CLIP vision config of ``mm_vision_tower`` and the local folder it came from (or None).

    Looked up as a folder (relative to the checkpoint folder first, then to the working directory), then
    in :data:`KNOWN_CLIP_TOWERS`, then through transformers (the Hugging Face cache or hub).
    """
    candidates = []
    if folder is not None and not os.path.isabs(name):
        candidates.append(Path(folder) / name)
    candidates.append(Path(name))
    for cand in candidates:
        if (cand / "config.json").is_file():
            d = json.loads((cand / "config.json").read_text(encoding="utf-8"))
            if d.get("model_type") == "clip" or "vision_config" in d:  # a full CLIP model's config
                d = d.get("vision_config") or {}
            return _clip_fields(d), cand.resolve()
    if name in KNOWN_CLIP_TOWERS:
        return dict(KNOWN_CLIP_TOWERS[name]), None
    try:
        from transformers import CLIPVisionConfig

        return _clip_fields(CLIPVisionConfig.from_pretrained(name).to_dict()), None
    except Exception as err:  # noqa: BLE001 - not found anywhere: say where we looked
        looked = ", ".join(str(c) for c in candidates)
        raise OfficialCheckpointError(
            f"cannot find the CLIP tower mm_vision_tower={name!r}: no config.json in {looked}, not one of "
            f"{sorted(KNOWN_CLIP_TOWERS)}, and transformers could not load it ({type(err).__name__}: {err})"
        ) from err


def _clip_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
            "patch_size", "image_size", "projection_dim", "hidden_act", "layer_norm_eps", "attention_dropout",
            "initializer_range", "initializer_factor")
    return {k: d[k] for k in keep if k in d}


def _check_supported(flat: Mapping[str, Any]) -> None:
    def fail(field: str, value: Any, why: str) -> None:
        raise OfficialCheckpointError(f"official config field {field}={value!r} is not supported: {why}")

    feature = flat.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        fail("mm_vision_select_feature", feature, "the image tokens are CLIP's patch tokens (CLS dropped)")
    if flat.get("mm_use_im_start_end"):
        fail("mm_use_im_start_end", True, "the image is not wrapped in start/end tokens")
    if flat.get("mm_patch_merge_type") not in (None, "flat"):
        fail("mm_patch_merge_type", flat.get("mm_patch_merge_type"), "one 336 px image per question")
    if flat.get("image_aspect_ratio") not in (None, "pad", "square"):
        fail("image_aspect_ratio", flat.get("image_aspect_ratio"), "images are padded to a square")
    # mm_projector_type is not checked: the official code builds Linear-GELU-Linear whatever it says (and
    # saves "linear" there in some runs); the checkpoint's projector keys decide


def chatrex_config_from_official(flat: Mapping[str, Any], folder: str | os.PathLike | None = None,
                                 shapes: Mapping[str, tuple[int, ...]] | None = None):
    """A :class:`~chatrex.mllm.configuration_chatrex.ChatRexConfig` for an official flat config.

    Args:
        flat: the official ``config.json``.
        folder: the checkpoint folder (relative ``mm_vision_tower`` paths resolve against it).
        shapes: the checkpoint's tensor shapes (:func:`read_checkpoint_shapes`); they give the ConvNeXt shape.
            Without them the official ConvNeXt-L is assumed.
    Returns:
        the config, with the flat config kept verbatim in ``official_config`` (converting back writes it
        again). ``image_token_id`` / ``objfeat_token_id`` are the two ids above the LLM's vocabulary.
    Raises:
        OfficialCheckpointError: an unknown LLM family, an unsupported field, a CLIP tower that cannot be
            found, or sizes that contradict each other (named).
    """
    from chatrex.mllm.configuration_chatrex import ChatRexConfig

    if not is_official_config_dict(flat):
        raise OfficialCheckpointError("not an official flat config (it has no mm_vision_tower, or it has a "
                                      "nested text_config)")
    _check_supported(flat)
    stored = flat.get(CHATREX_CONFIG_FIELD)
    if isinstance(stored, Mapping):  # written by official_config_from_chatrex: our model, exactly
        try:
            ours = ChatRexConfig.from_dict(copy.deepcopy(dict(stored)))
        except (TypeError, ValueError) as err:
            raise OfficialCheckpointError(f"the config's '{CHATREX_CONFIG_FIELD}' is not a valid ChatRex config: "
                                          f"{err}") from err
        _check_flat_matches(flat, ours)
        if shapes is not None:
            aux = convnext_shape_from_checkpoint(shapes)
            if [list(aux["depths"]), list(aux["dims"])] != [list(ours.aux_vision_config["depths"]),
                                                            list(ours.aux_vision_config["dims"])]:
                raise OfficialCheckpointError(f"the checkpoint's ConvNeXt {aux} differs from the config's "
                                              f"'{CHATREX_CONFIG_FIELD}' ({ours.aux_vision_config})")
        return ours
    family = llm_family(flat)
    text = {k: copy.deepcopy(v) for k, v in flat.items() if k not in MULTIMODAL_FIELDS + _NOT_LLM_FIELDS}
    text["model_type"] = family
    for field in ("vocab_size", "hidden_size"):
        if not isinstance(text.get(field), int):
            raise OfficialCheckpointError(f"official config lacks the LLM's {field}")
    clip, _ = resolve_clip_tower(str(flat["mm_vision_tower"]), folder)
    aux = convnext_shape_from_checkpoint(shapes) if shapes is not None else copy.deepcopy(CONVNEXT_LARGE)
    aux["image_size"] = OFFICIAL_AUX_IMAGE_SIZE
    image_dim = int(clip["hidden_size"]) + aux["dims"][-1]
    object_dim = sum(aux["dims"])
    source = "the checkpoint's ConvNeXt" if shapes is not None else "the official ConvNeXt-L"
    for field, want in (("mm_hidden_size", image_dim), ("object_hidden_size", object_dim)):
        if field in flat and int(flat[field]) != want:
            raise OfficialCheckpointError(
                f"official config says {field}={flat[field]} but CLIP ({clip['hidden_size']}) and {source} "
                f"(dims {aux['dims']}) give {want}")
    vocab = int(text["vocab_size"])
    kwargs = dict(
        vision_config=clip, aux_vision_config=aux, text_config=text,
        vision_feature_layer=int(flat.get("mm_vision_select_layer", -2)), projector_hidden_act="gelu",
        image_token_id=vocab, objfeat_token_id=vocab + 1, object_trunk_dim=0, object_pointer_dim=0,
        tie_word_embeddings=bool(flat.get("tie_word_embeddings", False)),
        official_config=copy.deepcopy(dict(flat)),
    )
    dtype = flat.get("torch_dtype") or flat.get("dtype")
    if isinstance(dtype, str):
        kwargs["dtype"] = dtype
    try:
        return ChatRexConfig(**kwargs)
    except (TypeError, ValueError) as err:
        raise OfficialCheckpointError(f"the official config does not make a valid ChatRex model: {err}") from err


def official_config_from_chatrex(config, mm_vision_tower: str) -> dict[str, Any]:
    """The flat official ``config.json`` of one of our paper-layout models.

    A model that came from an official checkpoint gets its original config back (when its sizes still match);
    otherwise the flat config is written from ours, with ``chatrex_config`` holding our full config.
    """
    mask_adapter_dim = getattr(config, "mask_adapter_dim", 0)
    if config.object_trunk_dim or config.object_pointer_dim or mask_adapter_dim:
        raise OfficialCheckpointError(
            f"the model has object_trunk_dim={config.object_trunk_dim}, object_pointer_dim="
            f"{config.object_pointer_dim} and mask_adapter_dim={mask_adapter_dim}; the official layout holds "
            "only the paper's (all 0)")
    if getattr(config, "image_token_pool", 1) != 1:
        raise OfficialCheckpointError(
            f"the model pools its image tokens (image_token_pool={config.image_token_pool}); the official layout "
            "has one token per grid cell (image_token_pool 1)")
    family = config.text_config.model_type
    if family not in OFFICIAL_TYPE_OF_FAMILY:
        raise OfficialCheckpointError(f"the official layout has Qwen2 or Llama language models, not {family!r}")
    original = getattr(config, "official_config", None)
    if isinstance(original, Mapping):
        try:
            _check_flat_matches(original, config)
            return {**copy.deepcopy(dict(original)), "mm_vision_tower": mm_vision_tower}
        except OfficialCheckpointError:
            pass  # the model changed since it was converted: write a fresh config
    text = config.text_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map"):
        text.pop(key, None)
    flat = {"architectures": [OFFICIAL_ARCHITECTURES[family]], **text}
    flat.update({
        "model_type": OFFICIAL_TYPE_OF_FAMILY[family],
        "mm_vision_tower": mm_vision_tower,
        "mm_hidden_size": config.image_feature_dim,
        "object_hidden_size": config.object_feature_dim,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": config.vision_feature_layer,
        "mm_vision_select_feature": "patch",
        "use_mm_proj": True,
        "vis_during_training_prob": 0.0,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        CHATREX_CONFIG_FIELD: config.to_dict(),
    })
    flat[CHATREX_CONFIG_FIELD].pop("official_config", None)
    return flat


def _check_flat_matches(flat: Mapping[str, Any], config) -> None:
    """``OfficialCheckpointError`` unless the flat config describes ``config``'s sizes."""
    tc = config.text_config
    want = {
        "vocab_size": tc.vocab_size, "hidden_size": tc.hidden_size, "intermediate_size": tc.intermediate_size,
        "num_hidden_layers": tc.num_hidden_layers, "num_attention_heads": tc.num_attention_heads,
        "mm_hidden_size": config.image_feature_dim, "object_hidden_size": config.object_feature_dim,
        "mm_vision_select_layer": config.vision_feature_layer,
    }
    diff = {k: (flat.get(k), v) for k, v in want.items() if flat.get(k) != v}
    if llm_family(flat) != tc.model_type:
        diff["family"] = (llm_family(flat), tc.model_type)
    if diff:
        raise OfficialCheckpointError(f"the stored official config differs from the model: {diff}")


# ------------------------------------------------------------------------------------------------
# strict key check
# ------------------------------------------------------------------------------------------------
def _show(items: list[str], limit: int = 20) -> str:
    head = ", ".join(items[:limit])
    return head + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def check_official_keys(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                        where: str, tied: Mapping[str, str] | None = None) -> None:
    """Raise ``OfficialCheckpointError`` naming every missing, unexpected, doubly mapped and mis-shaped key.

    Args:
        shapes: official key → shape (the checkpoint).
        expected: our key → shape (the model the config describes, e.g. built on the meta device).
        where: the checkpoint, for the message.
        tied: our tied keys (target → source); a target may be absent from the checkpoint.
    """
    tied = dict(tied or {})
    accepted: dict[str, str] = {}  # official name (RexSeek's, or LLaVA's under "model.") -> our key
    for ours in expected:
        name = _official_name(ours)
        accepted[name] = ours
        if name.startswith(_NESTED_IN_LLAVA):
            accepted["model." + name] = ours
    mapped: dict[str, str] = {}
    twice: list[str] = []
    unexpected: list[str] = []
    for key in shapes:
        ours = accepted.get(key)
        if ours is None:
            unexpected.append(key)
        elif ours in mapped:
            twice.append(f"{mapped[ours]} and {key}")
        else:
            mapped[ours] = key
    unexpected.sort()
    missing = sorted(_official_name(k) for k in expected
                     if k not in mapped and not (k in tied and tied[k] in mapped))
    mismatched = sorted(f"{k} checkpoint {tuple(shapes[k])} vs model {tuple(expected[ours])}"
                        for ours, k in mapped.items() if tuple(shapes[k]) != tuple(expected[ours]))
    if not (unexpected or missing or mismatched or twice):
        return
    lines = [f"the official checkpoint '{where}' does not match the model its config describes:"]
    if missing:
        lines.append(f"missing {len(missing)}: {_show(missing)}")
    if unexpected:
        lines.append(f"unexpected {len(unexpected)}: {_show(unexpected)}")
    if mismatched:
        lines.append(f"shape mismatch {len(mismatched)}: {_show(mismatched)}")
    if twice:
        lines.append(f"stored twice {len(twice)}: {_show(twice)}")
    raise OfficialCheckpointError("\n".join(lines))


def check_official_checkpoint(folder: str | os.PathLike, config, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Check an official folder's tensor names and shapes against the model ``config`` describes, built on the
    meta device (nothing allocated); ``OfficialCheckpointError`` naming every bad key."""
    import torch

    from chatrex.mllm.modeling_chatrex import ChatRexForConditionalGeneration

    shapes = read_checkpoint_shapes(folder) if shapes is None else shapes
    with torch.device("meta"):
        skeleton = ChatRexForConditionalGeneration(copy.deepcopy(config))
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    tied = dict(getattr(skeleton, "all_tied_weights_keys", None) or {})
    check_official_keys(shapes, expected, os.fspath(folder), tied)


def _official_name(key: str) -> str:
    try:
        return chatrex_to_official_key(key)
    except OfficialCheckpointError:
        return key


# ------------------------------------------------------------------------------------------------
# AutoConfig classes of the official model types
# ------------------------------------------------------------------------------------------------
class RexSeekQwenConfig(Qwen2Config):
    """The flat official config of a Qwen2-based RexSeek / ChatRex checkpoint (``model_type`` ``rexseek_qwen``).

    Registered with ``AutoConfig``; ``AutoModelForCausalLM`` maps it to
    :class:`~chatrex.mllm.modeling_chatrex.ChatRexForConditionalGeneration`, whose ``from_pretrained``
    converts it.
    """

    model_type = "rexseek_qwen"


class RexSeekLlamaConfig(LlamaConfig):
    """The flat official config of a Llama/Vicuna-based checkpoint (``model_type`` ``rexseek_llama``)."""

    model_type = "rexseek_llama"


__all__ = [
    "OFFICIAL_IMAGE_INDEX", "OFFICIAL_OBJECT_INDEX", "OFFICIAL_PROMPT_TEMPLATES", "OFFICIAL_MODEL_TYPES",
    "OFFICIAL_KEY_MAPPING", "CHATREX_TO_OFFICIAL_KEY_MAPPING", "KNOWN_CLIP_TOWERS", "CONVNEXT_LARGE",
    "OfficialCheckpointError", "RexSeekQwenConfig", "RexSeekLlamaConfig",
    "official_to_chatrex_key", "chatrex_to_official_key", "is_official_config_dict", "is_official_dir",
    "read_config_dict", "llm_family", "checkpoint_files", "read_checkpoint_shapes", "convnext_shape_from_checkpoint",
    "resolve_clip_tower", "chatrex_config_from_official", "official_config_from_chatrex", "check_official_keys",
    "check_official_checkpoint",
]
