"""UPN checkpoints: the official ``{"model": state_dict}`` files and our safetensors directories.

* ``load_official_checkpoint(model, path, strict=True)``: ``torch.load(weights_only=True)`` of an
  official ``.pth``. Aliases of shared tensors (the box MLP under ``bbox_embed.{i}`` and
  ``transformer.decoder.bbox_embed.{i}``) may be present or absent; when several are present they
  must be identical. ``relative_position_index`` buffers may be absent; when present they must equal
  ours. Missing / unexpected / shape-mismatched keys raise ``CheckpointError`` naming them; with
  ``strict=False`` the matching part is loaded and what was skipped is returned and warned about.
* ``save_pretrained(model, cfg, dir)`` writes ``config.json`` and ``model.safetensors`` (every shared
  tensor stored once under its first name; sharded by ``huggingface_hub.save_torch_state_dict`` into
  ``model-0000i-of-0000n.safetensors`` files plus ``model.safetensors.index.json`` when larger than
  ``max_shard_size``). The folder is written beside the old one and then replaced
  (:func:`chatrex.utils.atomic.staged_directory`): a save that fails midway leaves the old checkpoint
  complete; files of the folder that are not the UPN's (a ``preprocessor_config.json``) are kept.
* ``read_pretrained_config(dir)`` / ``load_pretrained_weights(dir)`` read such a directory back;
  ``chatrex.upn.model.from_pretrained(dir, device=...)`` builds the model from them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chatrex.upn.config import ConfigError, UPNConfig, resolve_config
from chatrex.utils.atomic import staged_directory

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = 16 * 1024 * 1024  # bytes
FORMAT_NAME = "chatrex-upn"
FORMAT_VERSION = 1
#: the files a save writes (and replaces): the weights, single or sharded, their index and the config
_OWN_FILES = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|config\.json")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the problem."""


@dataclass
class LoadResult:
    """What a (possibly partial) load did not take. Keys are checkpoint names."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    loaded_keys: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.mismatched_keys)

    def describe(self, limit: int = 20) -> str:
        parts = []

        def names(items):
            shown = ", ".join(items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        if self.missing_keys:
            parts.append(f"{len(self.missing_keys)} missing key(s): {names(self.missing_keys)}")
        if self.unexpected_keys:
            parts.append(f"{len(self.unexpected_keys)} unexpected key(s): {names(self.unexpected_keys)}")
        if self.mismatched_keys:
            items = [f"{k} (checkpoint {list(a)} vs model {list(b)})" for k, a, b in self.mismatched_keys]
            parts.append(f"{len(items)} shape mismatch(es): {names(items)}")
        return "; ".join(parts) if parts else "all keys matched"


# -- helpers ----------------------------------------------------------------------------------------
def alias_groups(model: nn.Module) -> dict[str, list[str]]:
    """Canonical state_dict name -> all names of the same tensor (first name is the canonical one)."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return {names[0]: names for names in groups.values()}


def _is_relative_position_index(key: str) -> bool:
    return key.endswith("relative_position_index")


def _read_torch_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many kinds (KeyError, UnpicklingError, ...)
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        sd = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj  # a bare state_dict
    else:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"'{path}' is not a UPN checkpoint: expected {{'model': state_dict}} (or a bare state_dict), found {keys}"
        )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"'{path}': state_dict entries that are not tensors: {bad[:10]}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True,
                            source: str = "checkpoint") -> LoadResult:
    """Load ``state_dict`` into ``model`` with alias and buffer handling (see the module docstring)."""
    own = model.state_dict(keep_vars=True)
    groups = alias_groups(model)
    name_to_canonical = {n: c for c, names in groups.items() for n in names}
    result = LoadResult()
    result.unexpected_keys = [k for k in state_dict if k not in name_to_canonical]
    to_load: dict[str, torch.Tensor] = {}
    for canonical, names in groups.items():
        present = [n for n in names if n in state_dict]
        target = own[canonical]
        if not present:
            if _is_relative_position_index(canonical):
                continue  # a fixed function of the window size; ours is already right
            result.missing_keys.append(canonical)
            continue
        first = state_dict[present[0]]
        for other in present[1:]:
            t = state_dict[other]
            if t.shape != first.shape or not torch.equal(t, first):
                raise CheckpointError(
                    f"{source}: '{present[0]}' and '{other}' name the same shared tensor in the model but "
                    f"hold different values in the checkpoint"
                )
        if tuple(first.shape) != tuple(target.shape):
            result.mismatched_keys.append((present[0], tuple(first.shape), tuple(target.shape)))
            continue
        if _is_relative_position_index(canonical):
            if not torch.equal(first.to(target.device, target.dtype), target.detach()):
                raise CheckpointError(
                    f"{source}: '{present[0]}' differs from the relative position index of a "
                    f"{int(round(target.shape[0] ** 0.5))}x{int(round(target.shape[0] ** 0.5))} window "
                    f"(wrong window size or a corrupt checkpoint)"
                )
            continue
        if first.is_floating_point() != target.is_floating_point():
            result.mismatched_keys.append((present[0], tuple(first.shape), tuple(target.shape)))
            continue
        to_load[canonical] = first
    if not result.ok and strict:
        hint = ""
        if len(result.missing_keys) + len(result.unexpected_keys) + len(result.mismatched_keys) > 8:
            hint = " (it looks like a checkpoint of a different architecture: check the config)"
        raise CheckpointError(f"{source} does not fit the model{hint}: {result.describe()}")
    with torch.no_grad():
        for name, value in to_load.items():
            own[name].copy_(value)
    result.loaded_keys = len(to_load)
    if not result.ok:
        warnings.warn(f"partial load of {source}: {result.describe()}", stacklevel=3)
    return result


# -- official checkpoints ---------------------------------------------------------------------------
def load_official_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadResult:
    """Load an official UPN checkpoint (``{"model": state_dict}``, e.g. ``upn_large.pth``) into ``model``.

    Raises ``CheckpointError`` if the file is not a checkpoint or (with ``strict=True``) any key is
    missing, unexpected or of the wrong shape. With ``strict=False`` the matching tensors are loaded,
    the rest is returned in the ``LoadResult`` and a warning is issued.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"UPN checkpoint '{path}' does not exist or is not a file")
    sd = _unwrap_state_dict(_read_torch_file(path), path)
    return load_state_dict_checked(model, sd, strict=strict, source=f"checkpoint '{path}'")


# -- our format -------------------------------------------------------------------------------------
def _unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    return {canonical: own[canonical].detach().contiguous().cpu() for canonical in alias_groups(model)}


def save_pretrained(model: nn.Module, cfg: UPNConfig | None, save_directory: str | os.PathLike,
                    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write ``config.json`` and the weights (safetensors, shared tensors once) to ``save_directory``.

    Weights larger than ``max_shard_size`` bytes in total are split into several files (a tensor is
    never split; one larger than the limit gets a file of its own) with an index
    ``model.safetensors.index.json`` mapping every key to its file. The folder is replaced only once
    everything is written (see the module docstring). Returns the directory.
    """
    from huggingface_hub import save_torch_state_dict

    cfg = cfg if cfg is not None else getattr(model, "config", None)
    if not isinstance(cfg, UPNConfig):
        raise ConfigError("save_pretrained needs the model's UPNConfig")
    if max_shard_size < 1:
        raise ValueError("max_shard_size must be positive")
    out = Path(save_directory)
    config = {"model_type": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": cfg.to_dict()}
    with staged_directory(out, keep=lambda name: not _OWN_FILES.fullmatch(name)) as staging:
        save_torch_state_dict(_unique_state_dict(model), staging, filename_pattern="model{suffix}.safetensors",
                              max_shard_size=max_shard_size, metadata={"producer": FORMAT_NAME})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def read_pretrained_config(directory: str | os.PathLike) -> UPNConfig:
    """The ``UPNConfig`` stored in a ``save_pretrained`` directory."""
    d = Path(directory)
    path = d / CONFIG_NAME
    if not d.is_dir():
        raise CheckpointError(f"'{d}' is not a directory written by save_pretrained")
    if not path.is_file():
        raise CheckpointError(f"'{d}' has no {CONFIG_NAME}: not a chatrex UPN checkpoint directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("model_type") != FORMAT_NAME or "config" not in data:
        raise CheckpointError(f"'{path}' is not a chatrex UPN config (model_type must be '{FORMAT_NAME}')")
    try:
        return resolve_config(data["config"])
    except ConfigError as exc:
        raise CheckpointError(f"'{path}': {exc}") from exc


def load_pretrained_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a ``save_pretrained`` directory (single file or shards) on CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    single, index = d / WEIGHTS_NAME, d / INDEX_NAME
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"'{index}' is not a valid shard index: {exc}") from exc
            tensors: dict[str, torch.Tensor] = {}
            for fname in sorted(set(weight_map.values())):
                shard_path = d / fname
                if not shard_path.is_file():
                    raise CheckpointError(f"shard '{shard_path}' listed in {INDEX_NAME} is missing")
                shard = load_file(str(shard_path))
                tensors.update(shard)
            absent = sorted(set(weight_map) - set(tensors))
            if absent:
                raise CheckpointError(f"keys listed in {INDEX_NAME} are absent from the shards: {absent[:10]}")
            return tensors
    except SafetensorError as exc:
        raise CheckpointError(f"'{d}': corrupt safetensors file: {exc}") from exc
    raise CheckpointError(f"'{d}' has neither {WEIGHTS_NAME} nor {INDEX_NAME}")

