"""ChatRex vocabulary additions and the placeholder layout.

Tokens added as special tokens (never split, one id each):

* ``<obj0>`` … ``<obj99>`` — box indices, used in prompts and answers;
* ``<ground>``, ``</ground>``, ``<objects>``, ``</objects>`` — the grounded-answer markup;
* ``<image>`` — placeholder; the processor repeats it g² times (576 at full size) and the model puts the
  g² image embeddings there;
* ``<objfeat>`` — placeholder; the k-th one in a sample receives the k-th box's object embedding.

:func:`add_chatrex_tokens` adds them to a tokenizer and, given a model, grows its input and output
embeddings and sets the new rows to the mean of the existing rows.
"""

from __future__ import annotations

from typing import Any

import torch

MAX_OBJECTS = 100
IMAGE_TOKEN = "<image>"
OBJFEAT_TOKEN = "<objfeat>"
GROUND_START = "<ground>"
GROUND_END = "</ground>"
OBJECTS_START = "<objects>"
OBJECTS_END = "</objects>"


def obj_token(index: int) -> str:
    """``<obj{index}>``; ``index`` must be in [0, 100)."""
    if not 0 <= int(index) < MAX_OBJECTS:
        raise ValueError(f"object index {index} is outside [0, {MAX_OBJECTS})")
    return f"<obj{int(index)}>"


OBJ_TOKENS = [f"<obj{i}>" for i in range(MAX_OBJECTS)]
CHATREX_TOKENS = OBJ_TOKENS + [GROUND_START, GROUND_END, OBJECTS_START, OBJECTS_END, IMAGE_TOKEN, OBJFEAT_TOKEN]


def chatrex_token_ids(tokenizer, placeholders: bool = True) -> dict[str, int]:
    """Ids of all ChatRex tokens; ``ValueError`` if the tokenizer lacks any (call ``add_chatrex_tokens``).

    ``placeholders=False`` leaves out ``<image>`` and ``<objfeat>``, which official tokenizers do not have
    (the official code puts placeholder ids into ``input_ids`` itself)."""
    ids = {}
    missing = []
    for tok in CHATREX_TOKENS if placeholders else CHATREX_TOKENS[:-2]:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or tid == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(tid) != tok:
            missing.append(tok)
        else:
            ids[tok] = int(tid)
    if missing:
        raise ValueError(
            f"the tokenizer lacks {len(missing)} ChatRex tokens (e.g. {missing[:3]}); call "
            "chatrex.mllm.tokens.add_chatrex_tokens(tokenizer, model) first"
        )
    return ids


@torch.no_grad()
def _mean_init_rows(weight: torch.Tensor, new_ids: list[int], old_ids_limit: int) -> None:
    keep = torch.ones(min(old_ids_limit, weight.shape[0]), dtype=torch.bool, device=weight.device)
    new = torch.tensor([i for i in new_ids if i < keep.numel()], dtype=torch.long, device=weight.device)
    keep[new] = False
    if keep.any():
        mean = weight[: keep.numel()][keep].float().mean(dim=0)
    else:
        mean = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
    weight[torch.tensor(new_ids, dtype=torch.long, device=weight.device)] = mean.to(weight.dtype)


@torch.no_grad()
def spread_object_rows(tokenizer, model: Any, scale: float, base_vocab_size: int, seed: int = 0) -> None:
    """Make the ``<objK>`` rows distinct: add Gaussian noise with the base rows' per-dimension std x ``scale``.

    The paper starts every new row at the mean embedding, so ``<obj0>`` ... ``<obj99>`` are one vector
    until training separates them, and the LLM cannot match the index asked about with the one in the
    box list. Noise of the base rows' own spread gives each index a distinct embedding from the first
    step (input rows; output rows too when untied). ``scale = 0`` leaves the rows unchanged.

    Args:
        base_vocab_size: rows of the LLM before the ChatRex tokens were added (their std is used).
    """
    if scale < 0:
        raise ValueError(f"scale must be non-negative, got {scale}")
    if scale == 0:
        return
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(obj_token(k)) for k in range(MAX_OBJECTS)])
    gen = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    for weight in [emb] + ([out.weight] if out is not None and out.weight is not emb else []):
        std = weight[:base_vocab_size].float().std(dim=0)
        noise = torch.randn(len(ids), weight.shape[1], generator=gen) * std.cpu() * scale
        weight[ids.to(weight.device)] += noise.to(device=weight.device, dtype=weight.dtype)


def add_chatrex_tokens(tokenizer, model: Any = None) -> dict[str, int]:
    """Add the ChatRex special tokens to ``tokenizer`` (idempotent) and fit ``model`` to them.

    With a model (a ``ChatRexForConditionalGeneration`` or any transformers model with input/output
    embeddings): the embeddings are resized to cover every token id, the rows of the newly added tokens are
    set to the mean of the rows of the tokenizer's previous tokens (input and, when untied, output
    embeddings), and ``model.config.image_token_id`` / ``objfeat_token_id`` are set when the config has
    these fields.

    Returns:
        token → id for all ChatRex tokens.
    """
    old_len = len(tokenizer)
    vocab = tokenizer.get_vocab()  # a fresh dict of the whole vocabulary on every call (~20 ms): build it once
    missing = [t for t in CHATREX_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = chatrex_token_ids(tokenizer)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        return ids
    new_ids = sorted(ids[t] for t in missing)
    emb = model.get_input_embeddings()
    rows = emb.weight.shape[0]
    needed = max(len(tokenizer), max(ids.values()) + 1)
    if needed > rows:
        model.resize_token_embeddings(needed, mean_resizing=False)
        emb = model.get_input_embeddings()
    if new_ids:
        _mean_init_rows(emb.weight, new_ids, old_len)
        out = model.get_output_embeddings()
        if out is not None and out.weight is not emb.weight:
            _mean_init_rows(out.weight, new_ids, old_len)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "objfeat_token_id"):
        cfg.image_token_id = ids[IMAGE_TOKEN]
        cfg.objfeat_token_id = ids[OBJFEAT_TOKEN]
        if hasattr(cfg, "object_index_token_ids"):
            cfg.object_index_token_ids = [ids[t] for t in OBJ_TOKENS]
    return ids


__all__ = [
    "spread_object_rows",
    "MAX_OBJECTS", "IMAGE_TOKEN", "OBJFEAT_TOKEN", "GROUND_START", "GROUND_END", "OBJECTS_START", "OBJECTS_END",
    "OBJ_TOKENS", "CHATREX_TOKENS", "obj_token", "chatrex_token_ids", "add_chatrex_tokens",
]
