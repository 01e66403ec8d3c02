"""Greedy decoding with a static KV cache, a compiled decode step and CUDA graphs.

``model.generate`` (transformers' default) runs Python for every token: input preparation, a dynamic
cache that grows, logits processors, stopping criteria. On a GPU with a 7B model at batch 1 that
overhead, not the memory bandwidth, sets the speed. :class:`StaticGenerator` does the same greedy
decoding with:

* one prefill pass over the whole multimodal prompt (image and object embeddings merged once, by the
  model's own ``forward``) into a :class:`transformers.StaticCache` of fixed length;
* a decode step of fixed shapes (token (B, 1), the cache, a (B, C) attention mask, the pointer's keys
  padded to ``config.max_boxes``) that updates its own state on the device: the next token, the
  position, the mask slot, the finished rows, the output buffer;
* optionally that step compiled with ``torch.compile`` (inductor) and, on CUDA, captured once in a
  CUDA graph per (batch, cache length) and replayed: one launch per token, no host work between
  tokens except an occasional check whether every row has finished.

The tokens are those of ``model.generate(..., do_sample=False)``: the same prompt positions, left
padding, EOS handling (a finished row gets ``pad_token_id``), and the same output (B, L + T) with T the
step at which every row had finished or ``max_new_tokens``. Models with the object pointer
(``config.object_pointer_dim`` > 0) score every cached step against the keys the prefill returned.

Only plain greedy decoding is done here; :meth:`StaticGenerator.unsupported` names what is not (sampling,
beams, logits processors, ...), and callers fall back to ``model.generate`` for it.

Example::

    gen = StaticGenerator(model, compile=True)          # CUDA graphs by default on CUDA
    out = gen.generate(**inputs, max_new_tokens=64)     # == model.generate(**inputs, max_new_tokens=64)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from chatrex.mllm.modeling_chatrex import distinct_images
from chatrex.mllm.object_pointer import point_logits

__all__ = ["StaticGenerator", "GENERATION_BACKENDS", "PrefixPlan", "resolve_backend", "shared_prefixes"]

#: ``generation`` settings the pipeline takes: ``"default"`` = ``model.generate``; ``"static"`` = static
#: cache, eager step; ``"compiled"`` = static cache, ``torch.compile``d step and (on CUDA) CUDA graphs;
#: ``"auto"`` = ``"compiled"`` on CUDA, ``"static"`` elsewhere (no compilation; shared prefixes, the same
#: tokens as ``"default"``).
GENERATION_BACKENDS = ("auto", "default", "static", "compiled")

#: Generation settings whose defaults leave greedy decoding unchanged; any other value is not supported here.
_NEUTRAL: dict[str, Any] = {
    "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None,
    "min_length": 0, "min_new_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None, "guidance_scale": None,
    "stop_strings": None, "max_time": None, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "return_dict_in_generate": False, "output_scores": False,
    "output_logits": False, "output_attentions": False, "output_hidden_states": False,
    "prompt_lookup_num_tokens": None, "assistant_model": None, "penalty_alpha": None, "dola_layers": None,
    "watermarking_config": None, "token_healing": False,
}
#: ``generate`` keyword arguments this class accepts besides the generation settings.
#: Most EOS ids a call may give.
_MAX_EOS = 8
_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "pixel_values_aux", "boxes", "region_masks",
               "region_mask_indices")


@dataclass
class PrefixPlan:
    """How a batch's prompts split into shared prefixes and own suffixes (:func:`shared_prefixes`).

    Attributes:
        first: the first row of each distinct prefix (U ≤ B rows). inverse: (B,) long, each row's prefix
            as a position in ``first``.
        prefix_ids / prefix_mask: (B, P) each row's prefix (its prompt up to and including its last
            placeholder), left padded to the longest.
        suffix_ids / suffix_mask: (B, S) the rest of each row's prompt, left padded to the longest.
    """

    first: list[int]
    inverse: torch.Tensor
    prefix_ids: torch.Tensor
    prefix_mask: torch.Tensor
    suffix_ids: torch.Tensor
    suffix_mask: torch.Tensor


def _same(a: Optional[list[torch.Tensor]], i: int, j: int) -> bool:
    return a is None or (a[i].shape == a[j].shape and torch.equal(a[i], a[j]))


def shared_prefixes(input_ids: torch.Tensor, attention_mask: torch.Tensor, placeholder_ids: tuple[int, ...],
                    pixel_values: torch.Tensor, pixel_values_aux: torch.Tensor,
                    boxes: Optional[list[torch.Tensor]] = None, region_masks: Optional[list[torch.Tensor]] = None,
                    region_mask_indices: Optional[list[torch.Tensor]] = None) -> Optional[PrefixPlan]:
    """Find rows of a left-padded multimodal batch that only differ after their image and object tokens.

    A row's prefix is its prompt up to and including its last placeholder (``placeholder_ids``: the
    ``<image>`` and ``<objfeat>`` ids); two rows share it when the prefix ids, both image inputs, the
    boxes and the region masks are equal. Everything a prefix's keys and values depend on is then equal,
    so one prefill of it serves every row that has it.

    Args:
        input_ids / attention_mask: (B, L), left padded.
        pixel_values: (B, 3, S, S); pixel_values_aux: (B, 3, S', S'); boxes: B tensors (K_i, 4);
            region_masks / region_mask_indices: B tensors or None.
    Returns:
        a :class:`PrefixPlan`, or None when no two rows share a prefix (or a row has no placeholder).
    """
    batch = input_ids.shape[0]
    ids = [row[m.bool()] for row, m in zip(input_ids, attention_mask)]
    is_placeholder = [torch.isin(r, torch.tensor(placeholder_ids, device=r.device)) for r in ids]
    if not all(bool(p.any()) for p in is_placeholder):
        return None
    cut = [int(p.nonzero()[-1]) + 1 for p in is_placeholder]
    image_of = distinct_images(pixel_values, pixel_values_aux)[1].tolist()
    first: list[int] = []
    inverse: list[int] = []
    for i in range(batch):
        for u, j in enumerate(first):
            if (image_of[i] == image_of[j] and cut[i] == cut[j] and torch.equal(ids[i][: cut[i]], ids[j][: cut[j]])
                    and _same(boxes, i, j) and _same(region_masks, i, j) and _same(region_mask_indices, i, j)):
                inverse.append(u)
                break
        else:
            inverse.append(len(first))
            first.append(i)
    if len(first) == batch or any(len(r) == c for r, c in zip(ids, cut)):
        return None  # nothing shared, or a prompt that ends at a placeholder (no suffix to read a token from)

    def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        out = input_ids.new_zeros(batch, width)
        mask = attention_mask.new_zeros(batch, width)
        for k, r in enumerate(rows):
            if len(r):
                out[k, width - len(r):] = r
                mask[k, width - len(r):] = 1
        return out, mask

    prefix_ids, prefix_mask = left_pad([r[:c] for r, c in zip(ids, cut)])
    suffix_ids, suffix_mask = left_pad([r[c:] for r, c in zip(ids, cut)])
    return PrefixPlan(first, torch.tensor(inverse, dtype=torch.long, device=input_ids.device), prefix_ids,
                      prefix_mask, suffix_ids, suffix_mask)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``"auto"`` → ``"compiled"`` on CUDA, else ``"static"``; other names are checked and returned."""
    if backend not in GENERATION_BACKENDS:
        raise ValueError(f"generation must be one of {', '.join(GENERATION_BACKENDS)}; got {backend!r}")
    if backend == "auto":
        return "compiled" if torch.device(device).type == "cuda" else "static"
    return backend


@dataclass
class _Slot:
    """Static buffers of one (batch, cache length) shape, reused across calls (CUDA graphs need fixed addresses).

    Attributes:
        cache: the StaticCache (B, heads, C, head_dim) per layer.
        mask: (B, C) attention mask over the cache slots (1 = a real token).
        token: (B, 1) the token fed to the next step. pos: (B, 1) its position id. slot: () its cache slot.
        finished: (B,) bool. tokens: (B, C) the generated tokens (column t = step t).
        step: () the next column of ``tokens``. eos: (_MAX_EOS,) the EOS ids, -1 padded. pad: () the pad id.
        keys / key_mask: (B, K_pad, P) / (B, K_pad) pointer keys.
        graph: the captured CUDA graph of one step, once captured.
    """

    cache: Any
    mask: torch.Tensor
    token: torch.Tensor
    pos: torch.Tensor
    slot: torch.Tensor
    finished: torch.Tensor
    tokens: torch.Tensor
    step: torch.Tensor
    eos: torch.Tensor
    pad: torch.Tensor
    keys: Optional[torch.Tensor]
    key_mask: Optional[torch.Tensor]
    graph: Any = None


class StaticGenerator:
    """Greedy generation for a ``ChatRexForConditionalGeneration`` with a static KV cache.

    Args:
        model: the ChatRex model (eval mode); its LLM must be a transformers decoder that accepts a
            ``StaticCache`` (Llama, Qwen2, Mistral, ...).
        compile: ``torch.compile`` the decode step (``True``: inductor; a dict: ``torch.compile``'s keyword
            arguments, e.g. ``{"backend": "eager", "fullgraph": True}``). The first call per shape compiles
            (tens of seconds at 7B on a GPU); later calls reuse it.
        cuda_graphs: capture the decode step in a CUDA graph (default: on when the model is on CUDA).
        cache_multiple: cache lengths are rounded up to a multiple of this, so prompts of similar length
            share one cache (and one compiled graph).
        max_shapes: most (batch, cache length) shapes whose caches and graphs are kept (least recently
            used dropped first).
        check_every: without a streamer or a stop signal, how many steps run between checks whether
            every row has finished (each check waits for the device).
        share_prefixes: rows whose prompts agree up to their last ``<image>`` / ``<objfeat>`` and show the
            same image with the same boxes (several questions about one image) share one prefill of that
            part (see :func:`shared_prefixes`); their tokens are those of separate prefills up to
            floating-point rounding.

    Calls are serialised with a lock (one cache per shape); run one generator per model.
    """

    def __init__(self, model: nn.Module, compile: bool | dict[str, Any] = False, cuda_graphs: Optional[bool] = None,
                 cache_multiple: int = 256, max_shapes: int = 8, check_every: int = 16,
                 share_prefixes: bool = True) -> None:
        if cache_multiple < 1 or max_shapes < 1 or check_every < 1:
            raise ValueError("cache_multiple, max_shapes and check_every must be positive")
        self.model = model
        self.config = model.config
        device = next(model.parameters()).device
        self.cuda_graphs = device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs needs the model on a CUDA device, not {device}")
        self.compile = dict(compile) if isinstance(compile, dict) else ({} if compile else None)
        self.cache_multiple = int(cache_multiple)
        self.max_shapes = int(max_shapes)
        self.check_every = int(check_every)
        self.share_prefixes = bool(share_prefixes)
        self._slots: "OrderedDict[tuple[int, int], _Slot]" = OrderedDict()
        self._lock = threading.Lock()
        self._pool = None
        self._index_ids: Optional[torch.Tensor] = None
        if self.config.object_pointer_dim:
            ids = self.config.object_index_token_ids
            if not ids:
                raise ValueError("config.object_index_token_ids is not set; call "
                                 "chatrex.mllm.tokens.add_chatrex_tokens(tokenizer, model)")
            self._index_ids = torch.tensor(ids[: self.config.max_boxes], device=device)
        self._step_fn: Callable[[_Slot], None] = self._step
        if self.compile is not None:
            self._step_fn = torch.compile(self._step, **self.compile)

    # ------------------------------------------------------------------------------------ checks
    @staticmethod
    def unsupported(generation_config: Any = None, **kwargs: Any) -> Optional[str]:
        """Why these settings need ``model.generate`` (a sentence), or ``None`` when greedy decoding here
        gives the same tokens.

        Args:
            generation_config: a ``transformers.GenerationConfig`` (or ``None``).
            **kwargs: the other keyword arguments a ``generate`` call would get (inputs included).
        """
        settings: dict[str, Any] = {}
        if generation_config is not None:
            settings.update({k: getattr(generation_config, k, _NEUTRAL[k]) for k in _NEUTRAL})
        for key, value in kwargs.items():
            if key in _INPUT_KEYS or key in ("max_new_tokens", "max_length", "eos_token_id", "pad_token_id",
                                             "streamer", "use_cache", "temperature", "top_k", "top_p"):
                continue
            if key not in _NEUTRAL:
                return f"the argument {key!r}"
            settings[key] = value
        for key, value in settings.items():
            neutral = _NEUTRAL[key]
            if value is not None and value != neutral and not (neutral is None and value in ((), [])):
                return f"{key}={value!r}"
        if settings.get("do_sample"):
            return "do_sample=True"
        if kwargs.get("use_cache") is False or (generation_config is not None
                                                 and getattr(generation_config, "use_cache", True) is False):
            return "use_cache=False"
        return None

    # ------------------------------------------------------------------------------------ the step
    def _step(self, s: _Slot) -> None:
        """One decode step on the slot's buffers (traceable: no host synchronisation, no data-dependent
        Python)."""
        model = self.model
        s.mask.index_fill_(1, s.slot.view(1), 1)  # the input token's own slot becomes visible
        embeds = model.get_input_embeddings()(s.token)
        out = model.model(inputs_embeds=embeds, attention_mask=s.mask, position_ids=s.pos,
                          past_key_values=s.cache, use_cache=True)
        hidden = out.last_hidden_state  # (B, 1, H)
        logits = model.lm_head(hidden)
        if s.keys is not None:
            scores = model.mm_object_pointer(hidden, s.keys)
            logits = point_logits(logits, scores, s.key_mask, self._index_ids)
        self._advance(s, logits[:, -1])

    def _advance(self, s: _Slot, logits: torch.Tensor) -> None:
        """Pick the next tokens from ``logits`` (B, V) and move every buffer one step on."""
        nxt = logits.float().argmax(-1)
        nxt = torch.where(s.finished, s.pad, nxt)
        s.finished.logical_or_(torch.isin(nxt, s.eos))
        s.tokens.index_copy_(1, s.step.view(1), nxt[:, None])
        s.token.copy_(nxt[:, None])
        s.pos.add_(1)
        s.slot.add_(1)
        s.step.add_(1)

    # ------------------------------------------------------------------------------------ buffers
    def _slot(self, batch: int, cache_len: int, device: torch.device) -> _Slot:
        key = (batch, cache_len)
        slot = self._slots.pop(key, None)
        if slot is None:
            from transformers import StaticCache

            while len(self._slots) >= self.max_shapes:
                self._slots.popitem(last=False)
            k_pad = self.config.max_boxes
            dim = self.config.object_pointer_dim
            dtype = self.model.lm_head.weight.dtype
            slot = _Slot(
                cache=StaticCache(config=self.config.text_config, max_cache_len=cache_len),
                mask=torch.zeros(batch, cache_len, dtype=torch.long, device=device),
                token=torch.zeros(batch, 1, dtype=torch.long, device=device),
                pos=torch.zeros(batch, 1, dtype=torch.long, device=device),
                slot=torch.zeros((), dtype=torch.long, device=device),
                finished=torch.zeros(batch, dtype=torch.bool, device=device),
                tokens=torch.zeros(batch, cache_len, dtype=torch.long, device=device),
                step=torch.zeros((), dtype=torch.long, device=device),
                eos=torch.full((_MAX_EOS,), -1, dtype=torch.long, device=device),
                pad=torch.zeros((), dtype=torch.long, device=device),
                keys=torch.zeros(batch, k_pad, dim, dtype=dtype, device=device) if dim else None,
                key_mask=torch.zeros(batch, k_pad, dtype=torch.bool, device=device) if dim else None,
            )
            text = self.config.text_config
            heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            slot.cache.early_initialization(batch, heads, head_dim, dtype, device)
            for t in (slot.mask, slot.token, slot.pos, slot.slot, slot.finished, slot.tokens, slot.step,
                      slot.eos, slot.pad, slot.keys, slot.key_mask):
                if t is not None:
                    torch._dynamo.mark_static_address(t)
            if self.cuda_graphs:
                self._capture(slot)
        self._slots[key] = slot
        return slot

    def _capture(self, s: _Slot) -> None:
        """Record one step of ``s`` in a CUDA graph, after warm-up runs on a side stream. Done on a fresh
        slot: the steps it runs write junk into the buffers, which every call resets."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step_fn(s)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (a server's UPN, another request's prefill) may use the GPU meanwhile
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            self._step_fn(s)
        s.graph = graph

    # ------------------------------------------------------------------------------------ prefill
    def _placeholder_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in (self.config.image_token_id, self.config.objfeat_token_id) if i is not None)

    def _set_keys(self, s: _Slot, keys: Optional[torch.Tensor], key_mask: Optional[torch.Tensor]) -> None:
        """Put the pointer's keys (B, K, P) / (B, K) from a prefill into the slot (models with a pointer)."""
        if s.keys is None:
            return
        k = keys.shape[1]
        if k > s.keys.shape[1]:
            raise ValueError(f"{k} boxes but the model names at most {s.keys.shape[1]}")
        s.keys.zero_()
        s.key_mask.zero_()
        s.keys[:, :k] = keys
        s.key_mask[:, :k] = key_mask

    def _shared_prefill(self, s: _Slot, plan: "PrefixPlan", pixel_values, pixel_values_aux, boxes, region_masks,
                        region_mask_indices) -> tuple[Any, int]:
        """Prefill with each distinct prefix read once: the U prefixes (images and boxes merged) into a
        temporary cache, their keys and values copied to the rows that share them (cache columns
        [0, P)), then the B suffixes (the questions) in one pass at columns [P, P + S).

        Returns the suffix pass's output (its last logits) and P + S, the columns the prompt uses."""
        from transformers import DynamicCache

        first, inverse = plan.first, plan.inverse
        prefix_len, suffix_len = plan.prefix_ids.shape[1], plan.suffix_ids.shape[1]
        scratch = DynamicCache(config=self.config.text_config)
        sel = torch.tensor(first, device=plan.prefix_ids.device)
        out = self.model(
            input_ids=plan.prefix_ids[sel], attention_mask=plan.prefix_mask[sel],
            pixel_values=pixel_values[sel], pixel_values_aux=pixel_values_aux[sel],
            boxes=None if boxes is None else [boxes[j] for j in first],
            region_masks=None if region_masks is None else [region_masks[j] for j in first],
            region_mask_indices=None if region_mask_indices is None else [region_mask_indices[j] for j in first],
            past_key_values=scratch, use_cache=True, logits_to_keep=1)
        for layer_idx, layer in enumerate(scratch.layers):
            s.cache.update(layer.keys[inverse], layer.values[inverse], layer_idx)
        del scratch
        keys = None if out.object_keys is None else out.object_keys[inverse]
        key_mask = None if out.object_key_mask is None else out.object_key_mask[inverse]
        self._set_keys(s, keys, key_mask)
        mask = torch.cat([plan.prefix_mask, plan.suffix_mask], dim=1)
        s.mask[:, : prefix_len + suffix_len] = mask
        position_ids = plan.prefix_mask.long().sum(-1, keepdim=True) + plan.suffix_mask.long().cumsum(-1) - 1
        out = self.model(input_ids=plan.suffix_ids, attention_mask=mask, position_ids=position_ids.clamp(min=0),
                         past_key_values=s.cache, use_cache=True, logits_to_keep=1,
                         object_keys=keys, object_key_mask=key_mask)
        return out, prefix_len + suffix_len

    # ------------------------------------------------------------------------------------ generate
    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        pixel_values_aux: Optional[torch.Tensor] = None,
        boxes: Optional[list[torch.Tensor]] = None,
        generation_config: Any = None,
        streamer: Any = None,
        should_stop: Optional[Callable[[], bool]] = None,
        region_masks: Optional[list[torch.Tensor]] = None,
        region_mask_indices: Optional[list[torch.Tensor]] = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Greedy generation; the arguments are those of ``model.generate``.

        Args:
            input_ids / attention_mask: (B, L), left padded (the processor's output).
            pixel_values / pixel_values_aux / boxes: the image inputs (see the model's ``forward``).
            region_masks / region_mask_indices: mask regions (the processor's ``regions=`` input), read by
                the prefill like the boxes.
            generation_config: greedy settings (``max_new_tokens`` or ``max_length``, ``eos_token_id``,
                ``pad_token_id``); keyword arguments override it.
            streamer: a transformers streamer (``put`` / ``end``), given the prompt first and then each step's
                tokens (B,), as ``generate`` does.
            should_stop: called between steps; ``True`` ends the generation early (e.g. the client left).
        Returns:
            (B, L + T) prompt and generated ids, as ``model.generate`` returns them.
        Raises:
            ValueError: settings that need ``model.generate`` (see :meth:`unsupported`), or a prompt that
                fills the LLM's positions (``max_position_embeddings``; answers are cut at the last one,
                where ``model.generate`` would go on past it).
        """
        reason = self.unsupported(generation_config, **kwargs)
        if reason is not None:
            raise ValueError(f"StaticGenerator does greedy decoding only; {reason} needs model.generate")
        settings = {}
        model_defaults = getattr(self.model, "generation_config", None)
        for key in ("max_new_tokens", "max_length", "eos_token_id", "pad_token_id"):
            # as generate reads them: the call's value, else the config's, else the model's own defaults
            value = kwargs.get(key)
            for source in (generation_config, model_defaults):
                if value is None and source is not None:
                    value = getattr(source, key, None)
            settings[key] = value
        batch, length = input_ids.shape
        max_new = settings["max_new_tokens"]
        if max_new is None:
            max_new = (settings["max_length"] or 20) - length
        max_new = int(max_new)
        eos = settings["eos_token_id"]
        eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        if len(eos_ids) > _MAX_EOS:
            raise ValueError(f"at most {_MAX_EOS} EOS ids are supported, got {len(eos_ids)}")
        pad = settings["pad_token_id"]
        if pad is None:
            pad = eos_ids[0] if eos_ids else 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if max_new <= 0:
            return input_ids
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is not None:
            if length >= limit:
                raise ValueError(f"the prompt ({length} tokens) fills the LLM's {limit} positions")
            max_new = min(max_new, limit - length)  # an answer ends at the LLM's last position
        with self._lock:
            return self._generate(input_ids, attention_mask, pixel_values, pixel_values_aux, boxes, max_new,
                                  eos_ids, int(pad), streamer, should_stop, region_masks, region_mask_indices)

    def _generate(self, input_ids, attention_mask, pixel_values, pixel_values_aux, boxes, max_new, eos_ids, pad,
                  streamer, should_stop, region_masks=None, region_mask_indices=None) -> torch.Tensor:
        device = input_ids.device
        batch, length = input_ids.shape
        need = length + max_new
        cache_len = -(-need // self.cache_multiple) * self.cache_multiple
        plan = None
        if self.share_prefixes and batch > 1 and pixel_values is not None:
            plan = shared_prefixes(input_ids, attention_mask, self._placeholder_ids(), pixel_values,
                                   pixel_values_aux, boxes, region_masks, region_mask_indices)
        if plan is not None:  # the prompt is laid out again: [prefix, left padded][suffix, left padded]
            need = plan.prefix_ids.shape[1] + plan.suffix_ids.shape[1] + max_new
            cache_len = -(-need // self.cache_multiple) * self.cache_multiple
        s = self._slot(batch, cache_len, device)
        s.eos.fill_(-1)
        if eos_ids:
            s.eos[: len(eos_ids)] = torch.tensor(eos_ids)
        s.pad.fill_(pad)
        s.cache.reset()
        s.mask.zero_()
        s.finished.zero_()
        s.tokens.fill_(pad)
        s.step.zero_()
        if streamer is not None:
            streamer.put(input_ids.cpu())

        if plan is None:
            # prefill: the whole prompt in one pass, images and boxes merged by the model's forward
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                             pixel_values_aux=pixel_values_aux, boxes=boxes, region_masks=region_masks,
                             region_mask_indices=region_mask_indices, past_key_values=s.cache, use_cache=True,
                             logits_to_keep=1)
            self._set_keys(s, out.object_keys, out.object_key_mask)
            used = length
            s.mask[:, :length] = attention_mask
        else:
            out, used = self._shared_prefill(s, plan, pixel_values, pixel_values_aux, boxes, region_masks,
                                             region_mask_indices)
        # the first new token comes from the prefill's logits; _advance moves position and slot one on, to
        # the token's own place (position = the row's real tokens, slot = the prompt's columns)
        s.pos.copy_(attention_mask.long().sum(-1, keepdim=True) - 1)
        s.slot.fill_(used - 1)
        self._advance(s, out.logits[:, -1])

        steps = 1
        if streamer is not None:
            streamer.put(s.tokens[:, 0].cpu())
        sync_each_step = streamer is not None or should_stop is not None
        done = bool(s.finished.all())
        while not done and steps < max_new:
            if should_stop is not None and should_stop():
                break
            if s.graph is not None:
                s.graph.replay()
            else:
                self._step_fn(s)
            steps += 1
            if streamer is not None:
                streamer.put(s.tokens[:, steps - 1].cpu())
            if sync_each_step or steps % self.check_every == 0:
                done = bool(s.finished.all())
        generated = s.tokens[:, :steps]
        if eos_ids and steps > 1:
            # the number of steps generate would have run: up to the step where the last row finished
            hit = torch.isin(generated, s.eos)
            first = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(hit[:, 0], steps, dtype=torch.long))
            steps = int(min(steps, int(first.max()) + 1))
            generated = generated[:, :steps]
        if streamer is not None:
            streamer.end()
        return torch.cat([input_ids, generated], dim=1)
