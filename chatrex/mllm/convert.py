"""Convert model folders between the official RexSeek / ChatRex layout and ours.

* :func:`convert_official_to_chatrex` — an official folder → our ``save_pretrained`` layout (``config.json``
  of :class:`~chatrex.mllm.configuration_chatrex.ChatRexConfig`, our tensor names, the official input mode
  written into ``processor_config.json`` / ``preprocessor_config.json``).
* :func:`convert_chatrex_to_official` — one of our paper-layout models (``object_trunk_dim`` 0,
  ``object_pointer_dim`` 0) → the official layout, so that it can be published and loaded by the official code
  (which builds ConvNeXt-L and the CLIP tower named in ``mm_vision_tower``: models of other shapes need the
  official code's sizes changed, as the fixture's README describes).

Tensors are renamed only (same dtypes, same values), one weight file in memory at a time, and the tokenizer
and generation files are copied byte for byte, so a round trip gives back the same tensors and config. The
output folder is written next to its destination and moved into place at the end
(:func:`chatrex.utils.atomic.staged_directory`); an existing non-empty destination is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from chatrex.mllm.official import (
    KNOWN_CLIP_TOWERS,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    OfficialCheckpointError,
    check_official_checkpoint,
    checkpoint_files,
    chatrex_to_official_key,
    is_official_dir,
    official_config_from_chatrex,
    official_to_chatrex_key,
    read_checkpoint_shapes,
    read_config_dict,
    resolve_clip_tower,
)
from chatrex.utils.atomic import staged_directory

#: Files copied unchanged in both directions (whichever exist).
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                "generation_config.json")
#: Our processor's files (written by ChatRexProcessor.save_pretrained besides the tokenizer).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
#: Folder of the CLIP tower written beside an official checkpoint when no hub id names it.
CLIP_TOWER_DIR = "clip_vision_tower"


def _check_destination(dst: Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"'{dst}' exists and is not an empty folder; choose a new output folder")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(os.fspath(path))
    sd = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    return {k: v.clone() for k, v in sd.items()}  # safetensors refuses tensors that share storage


def _read_prefixed(files: list[Path], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of ``files`` whose names start with ``prefix`` (only those are read)."""
    out: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(os.fspath(path), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
        else:
            out.update({k: v for k, v in _read_file(path).items() if k.startswith(prefix)})
    return out


def _rewrite_weights(files: list[Path], out: Path, rename: Callable[[str], str | None]) -> list[str]:
    """Write ``files``' tensors renamed by ``rename`` (None drops one) as ``model.safetensors`` or shards
    ``model-0000i-of-0000n.safetensors`` with their index; returns the written names."""
    from safetensors.torch import save_file

    names = (["model.safetensors"] if len(files) == 1 else
             [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))])
    weight_map: dict[str, str] = {}
    total = 0
    for src, name in zip(files, names):
        tensors = {}
        for key, value in _read_file(src).items():
            new = rename(key)
            if new is not None:
                tensors[new] = value.contiguous()
        save_file(tensors, os.fspath(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return names


def _copy_files(src: Path, out: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)


def convert_official_to_chatrex(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the official folder ``src`` in our ``save_pretrained`` layout at ``dst``.

    Raises:
        OfficialCheckpointError: ``src`` is not an official folder, its config cannot be converted, or its keys
            do not match (named).
        FileExistsError: ``dst`` exists and is not empty.
    """
    from chatrex.mllm.configuration_chatrex import ChatRexConfig
    from chatrex.mllm.processing_chatrex import PROCESSOR_FILE, ChatRexProcessor

    src, dst = Path(src), Path(dst)
    if not is_official_dir(src):
        raise OfficialCheckpointError(f"'{src}' is not an official checkpoint folder (its config.json has no "
                                      "mm_vision_tower)")
    shapes = read_checkpoint_shapes(src)
    config = ChatRexConfig.from_pretrained(src)
    check_official_checkpoint(src, config, shapes)
    processor = ChatRexProcessor.from_pretrained(src)
    _check_destination(dst)
    with staged_directory(dst) as staging:
        _rewrite_weights(checkpoint_files(src), staging, official_to_chatrex_key)
        config.save_pretrained(staging)
        _copy_files(src, staging, COPIED_FILES)
        if (src / PROCESSOR_FILE).is_file():  # a model of ours published in the official layout
            _copy_files(src, staging, PROCESSOR_FILES)
        else:
            processor.image_processor.save_pretrained(staging)
            (staging / PROCESSOR_FILE).write_text(json.dumps(processor.to_dict(), indent=2) + "\n", encoding="utf-8")
    return dst


def _tower_resolves(name: str, dst: Path) -> bool:
    if name in KNOWN_CLIP_TOWERS:
        return True
    path = Path(name) if os.path.isabs(name) else Path(os.path.normpath(dst / name))
    return (path / "config.json").is_file()


def _same_clip(config, hub_id: str) -> bool:
    known = KNOWN_CLIP_TOWERS[hub_id]
    return all(getattr(config.vision_config, k, None) == v for k, v in known.items())


def _write_clip_tower(state: dict[str, torch.Tensor], config, processor, out: Path) -> None:
    """A transformers ``CLIPVisionModel`` folder (config, weights, CLIPImageProcessor config) for the official
    code, which loads the tower named in ``mm_vision_tower`` before the checkpoint's weights replace it."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig

    out.mkdir()
    prefix = "vision_tower.vision_tower."
    tensors = {"vision_model." + k[len(prefix):]: v.contiguous() for k, v in state.items()}
    save_file(tensors, os.fspath(out / "model.safetensors"), metadata={"format": "pt"})
    vc = CLIPVisionConfig(**config.vision_config.to_dict())
    vc.architectures = ["CLIPVisionModel"]
    vc.save_pretrained(out)
    size = int(config.vision_config.image_size)
    mean = list(processor.image_processor.image_mean) if processor is not None else None
    std = list(processor.image_processor.image_std) if processor is not None else None
    pre = {"crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
           "do_normalize": True, "do_rescale": True, "do_resize": True,
           "image_mean": mean or list(OPENAI_CLIP_MEAN), "image_std": std or list(OPENAI_CLIP_STD),
           "image_processor_type": "CLIPImageProcessor", "resample": 3, "rescale_factor": 1 / 255,
           "size": {"shortest_edge": size}}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n", encoding="utf-8")


def convert_chatrex_to_official(src: str | os.PathLike, dst: str | os.PathLike,
                                vision_tower: str | None = None) -> Path:
    """Write our paper-layout model folder ``src`` in the official layout at ``dst``.

    Args:
        vision_tower: ``mm_vision_tower`` to write. Default: the one of the official checkpoint the model came
            from, when it resolves from ``dst``; else a known hub id when the CLIP tower has its shape
            (``openai/clip-vit-large-patch14-336``); else the tower is written to ``dst/clip_vision_tower``.
    Raises:
        OfficialCheckpointError: the model is not in the paper's layout or its LLM is neither Qwen2 nor Llama.
        FileExistsError: ``dst`` exists and is not empty.
    """
    from chatrex.mllm.configuration_chatrex import ChatRexConfig
    from chatrex.mllm.delta import is_delta_dir
    from chatrex.mllm.processing_chatrex import PROCESSOR_FILE, ChatRexProcessor

    src, dst = Path(src), Path(dst)
    if is_delta_dir(src):
        raise OfficialCheckpointError(
            f"'{src}' is a delta over a base LLM; load it (chatrex.mllm.delta.load_delta) and save_pretrained the "
            "full model first")
    if is_official_dir(src) or read_config_dict(src) is None:
        raise OfficialCheckpointError(f"'{src}' is not one of our saved models (config.json of model_type chatrex)")
    config = ChatRexConfig.from_pretrained(src)
    processor = ChatRexProcessor.from_pretrained(src) if (src / PROCESSOR_FILE).is_file() else None
    original = (config.official_config or {}).get("mm_vision_tower")
    write_tower = False
    if vision_tower is None:
        if isinstance(original, str) and _tower_resolves(original, dst):
            vision_tower = original
        else:
            vision_tower = next((h for h in sorted(KNOWN_CLIP_TOWERS) if _same_clip(config, h)), None)
            if vision_tower is None:
                vision_tower, write_tower = CLIP_TOWER_DIR, True
    flat = official_config_from_chatrex(config, vision_tower)
    _check_destination(dst)
    with staged_directory(dst) as staging:
        _rewrite_weights(checkpoint_files(src), staging, chatrex_to_official_key)
        (staging / "config.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _copy_files(src, staging, COPIED_FILES)
        if config.official_config is None:  # ours: keep our processor for the way back
            _copy_files(src, staging, PROCESSOR_FILES)
        if write_tower:
            _write_clip_tower(_read_prefixed(checkpoint_files(src), "vision_tower.vision_tower."), config, processor,
                              staging / CLIP_TOWER_DIR)
        # the written folder must load back: names, shapes and config
        check_official_checkpoint(staging, ChatRexConfig.from_pretrained(staging), read_checkpoint_shapes(staging))
        resolve_clip_tower(vision_tower, staging)
    return dst


__all__ = ["convert_official_to_chatrex", "convert_chatrex_to_official", "COPIED_FILES", "CLIP_TOWER_DIR"]
