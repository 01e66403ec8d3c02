"""The ChatRex multimodal LLM: two vision towers, two projectors and a causal LM.

Parameter layout (LLaVA / RexSeek style)::

    model.*                  the LLM body (e.g. LlamaModel / Qwen2Model)
    lm_head.*                the LLM's output projection
    vision_tower.*           CLIP ViT (vision_tower.vision_tower.{embeddings,pre_layrnorm,encoder,post_layernorm}.*)
    vision_tower_aux.*       ConvNeXt trunk (vision_tower_aux.trunk.*)
    mm_projector.{0,2}.*     Linear(C_clip + C_last → H), GELU, Linear(H → H)
    mm_object_projector.{0,2}.*  Linear(C_total → H), GELU, Linear(H → H)
    mm_object_trunk.{0,2}.*  only with ``config.object_trunk_dim`` D > 0 (ours, not in official checkpoints):
                             Linear(C_total → D), GELU, LayerNorm(D) before ``mm_object_projector``,
                             which then reads D channels
    mm_mask_adapter.{norm,fc1,fc2}.*  only with ``config.mask_adapter_dim`` > 0 (ours): a residual MLP on
                             mask-pooled region features (:class:`chatrex.mllm.object_encoder.MaskAdapter`)

Official checkpoints (RexSeek / ChatRex-7B, :mod:`chatrex.mllm.official`) load with ``from_pretrained`` as
they are: their flat config is converted, their keys are mapped strictly, and the model keeps their
vocabulary; the two placeholder ids then lie just above it (they are never looked up in the embedding).

Sequence layout: the processor writes g² ``<image>`` placeholders (one per image token) and one
``<objfeat>`` placeholder per box; :meth:`ChatRexForConditionalGeneration.merge_multimodal_embeddings`
replaces them with the projected image tokens and object tokens, once, before the LLM runs (at the
prefill step during generation).

The LLM is any transformers causal LM whose ``*ForCausalLM`` class is a base model plus a linear
``lm_head`` (Llama, Qwen2, Mistral, …); model-specific logit post-processing (e.g. Gemma's soft-capping)
is not applied.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from chatrex.mllm.configuration_chatrex import ChatRexConfig
from chatrex.mllm.object_encoder import MaskAdapter, encode_objects, validate_boxes
from chatrex.mllm.object_pointer import ObjectPointer, point_logits
from chatrex.mllm.vision_towers import CLIPVisionTower, ConvNeXtTower, ConvNeXtTowerConfig

#: Maps an open_clip ConvNeXt checkpoint (``visual.trunk.*``) onto the high-resolution tower.
OPEN_CLIP_CONVNEXT_KEY_MAPPING: dict[str, str] = {r"^visual\.trunk\.": "vision_tower_aux.trunk."}
#: Maps a transformers ``CLIPVisionModel`` checkpoint (old ``vision_model.*`` or new flat keys) onto the CLIP tower.
HF_CLIP_KEY_MAPPING: dict[str, str] = {r"^(vision_model\.)?": "vision_tower.vision_tower."}

KeyMapping = Mapping[str, str] | Callable[[str], str | None] | None


def apply_key_mapping(state_dict: Mapping[str, torch.Tensor], key_mapping: KeyMapping) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys.

    ``key_mapping`` is either a dict ``{regex: replacement}`` (applied in order with ``re.sub``, the first
    pattern that matches wins) or a callable ``key -> new key`` (return ``None`` to drop the key).
    """
    if key_mapping is None:
        return dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if callable(key_mapping):
            new = key_mapping(key)
        else:
            new = key
            for pattern, repl in key_mapping.items():
                if re.search(pattern, key):
                    new = re.sub(pattern, repl, key)
                    break
        if new is not None:
            out[new] = value
    return out


@dataclass
class LoadReport:
    """What happened when a state dict was loaded."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        def show(keys):
            keys = list(keys)
            head = ", ".join(str(k) for k in keys[:limit])
            return head + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"missing {len(self.missing)} (left as initialised): {show(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected {len(self.unexpected)} (ignored): {show(self.unexpected)}")
        if self.mismatched:
            lines.append(
                f"shape mismatch {len(self.mismatched)} (not loaded): "
                + show(f"{k} checkpoint {a} vs model {b}" for k, a, b in self.mismatched)
            )
        return "\n".join(lines)


def _read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            files = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth")))
        if not files:
            raise FileNotFoundError(f"no .safetensors/.bin/.pt checkpoint files in folder '{path}'")
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(_read_checkpoint(os.path.join(path, f)))
        return out
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if path.endswith(".safetensors"):
        return load_file(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"cannot read checkpoint '{path}': {err}") from err
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"checkpoint '{path}' does not hold a state dict (got {type(sd).__name__})")
    return sd


@torch.no_grad()
def load_state_dict_report(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor] | str | os.PathLike,
    key_mapping: KeyMapping = None,
    strict: bool = False,
) -> LoadReport:
    """Load (part of) a checkpoint into ``model`` and report missing / unexpected / mismatched keys.

    Args:
        state_dict: tensors, or a path to a ``.safetensors`` / ``.bin`` file or a folder of them.
        key_mapping: see :func:`apply_key_mapping`.
        strict: raise ``ValueError`` with the report when anything is missing, unexpected or mismatched.
    Tensors with matching names and shapes are copied; nothing else is touched.
    """
    if not isinstance(state_dict, Mapping):
        state_dict = _read_checkpoint(state_dict)
    sd = apply_key_mapping(state_dict, key_mapping)
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for key, value in sd.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            to_load[key] = value
            report.loaded.append(key)
    tied = dict(getattr(model, "all_tied_weights_keys", {}) or {})  # target -> source
    report.missing = [k for k in own if k not in sd and not (k in tied and tied[k] in sd)]
    model.load_state_dict(to_load, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if strict and not report.ok:
        raise ValueError("checkpoint does not match the model:\n" + report.summary())
    return report


def _projector(in_dim: int, hidden: int, act: str) -> nn.Sequential:
    from transformers.activations import ACT2FN

    return nn.Sequential(nn.Linear(in_dim, hidden), ACT2FN[act], nn.Linear(hidden, hidden))


def object_trunk(in_dim: int, dim: int) -> nn.Sequential:
    """Linear(in_dim → dim), GELU, LayerNorm(dim): the stage-0 object head's trunk, and ``mm_object_trunk``."""
    return nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.LayerNorm(dim))


class ChatRexPreTrainedModel(PreTrainedModel):
    config_class = ChatRexConfig
    config: ChatRexConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False


class ChatRexForConditionalGeneration(ChatRexPreTrainedModel, GenerationMixin):
    """ChatRex: answers questions about an image and a list of boxes, referring to boxes by ``<objK>``."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ChatRexConfig, llm: PreTrainedModel | None = None):
        """Build the model; ``llm`` (optional) is an existing causal LM whose body and head are used as they
        are (no copy, its weights kept) — its config must be ``config.text_config``'s shape."""
        super().__init__(config)
        if llm is None:
            llm = AutoModelForCausalLM.from_config(config.text_config)
        elif llm.config.hidden_size != config.text_config.hidden_size:
            raise ValueError(
                f"llm has hidden size {llm.config.hidden_size} but config.text_config says "
                f"{config.text_config.hidden_size}"
            )
        # share one text config object between ours and the LLM's (attention implementation, vocab size)
        config.text_config = llm.config
        body = getattr(llm, llm.base_model_prefix, None)
        head = llm.get_output_embeddings()
        if body is None or not isinstance(head, nn.Linear):
            raise ValueError(
                f"{type(llm).__name__} is not a base model + linear lm_head; ChatRex needs a causal LM shaped like "
                "LlamaForCausalLM / Qwen2ForCausalLM"
            )
        self.model = body
        self.lm_head = head
        emb = body.get_input_embeddings()
        emb_name = next(name for name, module in body.named_modules() if module is emb)
        if emb_name != "embed_tokens":
            self._tied_weights_keys = {"lm_head.weight": f"model.{emb_name}.weight"}

        self.vision_tower = CLIPVisionTower(config.vision_config, feature_layer=config.vision_feature_layer)
        self.vision_tower_aux = ConvNeXtTower(ConvNeXtTowerConfig.from_dict(config.aux_vision_config))
        hidden = config.text_config.hidden_size
        self.mm_projector = _projector(config.image_feature_dim, hidden, config.projector_hidden_act)
        if config.object_trunk_dim:
            self.mm_object_trunk = object_trunk(config.object_feature_dim, config.object_trunk_dim)
        self.mm_object_projector = _projector(config.object_projector_in_dim, hidden, config.projector_hidden_act)
        if config.object_pointer_dim:
            self.mm_object_pointer = ObjectPointer(hidden, config.object_pointer_dim)
        if config.mask_adapter_dim:
            self.mm_mask_adapter = MaskAdapter(config.object_feature_dim, config.mask_adapter_dim)
        self.post_init()

    # ---------------------------------------------------------------- embeddings (HF API)
    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self) -> nn.Module:
        return self.model

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings (B, L, H) of ``input_ids``; the ``<image>`` / ``<objfeat>`` placeholders are embedded
        as id 0 (:meth:`merge_multimodal_embeddings` replaces them), so their ids may lie outside the
        vocabulary, as they do for a model loaded from an official checkpoint."""
        ids = input_ids
        for placeholder in (self.config.image_token_id, self.config.objfeat_token_id):
            if placeholder is not None:
                ids = ids.masked_fill(ids == placeholder, 0)
        return self.get_input_embeddings()(ids)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any):
        """``PreTrainedModel.from_pretrained``, which also loads an official RexSeek / ChatRex folder as it is.

        An official folder (a flat ``config.json`` with ``mm_vision_tower``) is converted
        (:func:`chatrex.mllm.official.chatrex_config_from_official`), its tensor names and shapes are
        checked against the model the config describes before anything is allocated, and the weights are
        streamed from the checkpoint into a model initialised on the meta device (``dtype`` /
        ``torch_dtype`` and ``device_map`` work as usual, e.g. ``dtype=torch.bfloat16, device_map="cuda"``).

        Raises:
            chatrex.mllm.official.OfficialCheckpointError: a config that cannot be converted, or missing,
                unexpected or mis-shaped keys (named).
        """
        from chatrex.mllm.official import is_official_dir

        path = pretrained_model_name_or_path
        config = kwargs.get("config")
        flat_config = config is not None and not isinstance(config, (ChatRexConfig, str, os.PathLike)) \
            and hasattr(config, "mm_vision_tower")
        if flat_config or (isinstance(path, (str, os.PathLike)) and is_official_dir(path)):
            return cls._from_official(path, *model_args, **kwargs)
        if isinstance(path, str) and not os.path.isdir(path) and _is_official_on_hub(path, kwargs):
            from chatrex.mllm.official import OfficialCheckpointError

            raise OfficialCheckpointError(
                f"'{path}' is an official checkpoint on the model hub; download it to a local folder first (e.g. "
                f"`hf download {path} --local-dir DIR`) and load that folder")
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def _from_official(cls, path: Any, *model_args: Any, **kwargs: Any):
        from chatrex.mllm.official import (
            OFFICIAL_KEY_MAPPING,
            OfficialCheckpointError,
            chatrex_config_from_official,
            check_official_checkpoint,
            read_checkpoint_shapes,
            read_config_dict,
        )

        if not (isinstance(path, (str, os.PathLike)) and os.path.isdir(path)):
            raise OfficialCheckpointError(
                f"official checkpoints load from a local folder; '{path}' is not one (download it first, e.g. "
                "`hf download IDEA-Research/ChatRex-7B --local-dir DIR`)")
        for unsupported in ("key_mapping", "ignore_mismatched_sizes"):
            if kwargs.pop(unsupported, None):
                raise ValueError(f"{unsupported} cannot be combined with an official checkpoint, whose keys are "
                                 "mapped and checked strictly")
        if "torch_dtype" in kwargs:
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        want_info = kwargs.pop("output_loading_info", False)
        shapes = read_checkpoint_shapes(path)
        config = kwargs.pop("config", None)
        if not isinstance(config, ChatRexConfig):
            config = chatrex_config_from_official(read_config_dict(path), path, shapes)
        check_official_checkpoint(path, config, shapes)  # names and shapes, before anything is allocated
        model, info = super().from_pretrained(path, *model_args, config=config, key_mapping=OFFICIAL_KEY_MAPPING,
                                              output_loading_info=True, **kwargs)
        problems = {k: sorted(map(str, info.get(k) or ())) for k in ("missing_keys", "unexpected_keys",
                                                                     "mismatched_keys", "error_msgs")}
        problems = {k: v for k, v in problems.items() if v}
        if problems:
            raise OfficialCheckpointError(f"loading the official checkpoint '{path}' left {problems}")
        return (model, info) if want_info else model

    # ---------------------------------------------------------------- vision
    def get_image_features(
        self, pixel_values: torch.Tensor, pixel_values_aux: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image tokens and ConvNeXt levels.

        Args:
            pixel_values: (B, 3, S, S) for CLIP (S = 336 at full size).
            pixel_values_aux: (B, 3, S', S') for ConvNeXt (S' = 768).
        Returns:
            image_embeds (B, N, H) after ``mm_projector``, N = (g / ``config.image_token_pool``)² (g² without
            pooling); the four ConvNeXt levels (B, C_l, S'/s_l, S'/s_l).
        """
        if pixel_values.shape[0] != pixel_values_aux.shape[0]:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} images but pixel_values_aux has {pixel_values_aux.shape[0]}"
            )
        clip_tokens = self.vision_tower(pixel_values)  # (B, g², C_clip)
        levels = self.vision_tower_aux(pixel_values_aux)
        last = levels[-1].flatten(2).transpose(1, 2)  # (B, g², C_last), row-major like the ViT patches
        if last.shape[1] != clip_tokens.shape[1]:
            raise ValueError(
                f"CLIP gives {clip_tokens.shape[1]} tokens but the last ConvNeXt level has {last.shape[1]} cells"
            )
        feats = torch.cat([clip_tokens, last.to(clip_tokens.dtype)], dim=-1)  # (B, g², C)
        pool = int(self.config.image_token_pool)
        if pool > 1:  # average k x k cells: (B, g², C) -> (B, (g/k)², C)
            g = self.config.image_grid
            grid = feats.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], g, g)
            feats = nn.functional.avg_pool2d(grid, pool).flatten(2).transpose(1, 2)
        proj_dtype = self.mm_projector[0].weight.dtype
        return self.mm_projector(feats.to(proj_dtype)), levels

    def get_object_features(self, levels: list[torch.Tensor], boxes: list[torch.Tensor],
                            region_masks: list[torch.Tensor] | None = None,
                            region_mask_indices: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Object tokens (sum K_i, H) for ``boxes`` (B tensors (K_i, 4), xyxy normalised to the padded square).

        ``region_masks`` / ``region_mask_indices`` (optional, from the processor's ``regions`` input): B
        tensors (M_i, G, G) and (M_i,); the boxes they name are mask regions, pooled inside the mask
        (:func:`chatrex.mllm.object_encoder.mask_features`) instead of RoIAligned."""
        feats = encode_objects(levels, boxes, self.config.image_size_aux, self.config.roi_output_size,
                               masks=region_masks, mask_indices=region_mask_indices,
                               aligned=bool(getattr(self.config, "roi_aligned", False)),
                               mask_transform=getattr(self, "mm_mask_adapter", None))
        return self.project_objects(feats)

    def project_objects(self, feats: torch.Tensor) -> torch.Tensor:
        """Object tokens (N, H) from pooled object features (N, C_total) (:func:`encode_objects`' output):
        through ``mm_object_trunk`` when the model has one, then ``mm_object_projector``."""
        if self.config.object_trunk_dim:
            feats = self.mm_object_trunk(feats.to(self.mm_object_trunk[0].weight.dtype))
        return self.mm_object_projector(feats.to(self.mm_object_projector[0].weight.dtype))

    def merge_multimodal_embeddings(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        pixel_values: torch.Tensor | None,
        pixel_values_aux: torch.Tensor | None,
        boxes: list[torch.Tensor] | None,
        region_masks: list[torch.Tensor] | None = None,
        region_mask_indices: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Put image tokens on the ``<image>`` placeholders and object tokens on the ``<objfeat>`` ones.

        Args:
            input_ids: (B, L); inputs_embeds: (B, L, H) text embeddings of ``input_ids``.
            region_masks / region_mask_indices: optional mask regions (see :meth:`get_object_features`).
        Returns:
            (B, L, H). The k-th ``<objfeat>`` of sample i receives the object token of ``boxes[i][k]``.
        """
        cfg = self.config
        if cfg.image_token_id is None or cfg.objfeat_token_id is None:
            raise ValueError(
                "config.image_token_id / objfeat_token_id are not set; call "
                "chatrex.mllm.tokens.add_chatrex_tokens(tokenizer, model)"
            )
        batch = input_ids.shape[0]
        image_mask = input_ids == cfg.image_token_id
        obj_mask = input_ids == cfg.objfeat_token_id
        n_image = image_mask.sum(dim=1).tolist()
        n_obj = obj_mask.sum(dim=1).tolist()

        if pixel_values is None or pixel_values_aux is None:
            if any(n_image) or any(n_obj) or boxes is not None or region_masks is not None:
                raise ValueError(
                    "the input has <image>/<objfeat> placeholders, boxes or region masks but pixel_values and "
                    "pixel_values_aux were not both given"
                )
            return inputs_embeds
        if pixel_values.shape[0] != batch:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} images for a batch of {batch} sequences")
        expected = cfg.num_image_tokens
        for i, n in enumerate(n_image):
            if n != expected:
                raise ValueError(
                    f"sequence {i} has {n} <image> tokens but the model needs exactly {expected} "
                    f"({cfg.image_token_grid}², image_token_pool {cfg.image_token_pool}); build inputs with a "
                    "ChatRexProcessor of the model's settings, which expands <image>"
                )
        if boxes is None:
            boxes = [inputs_embeds.new_zeros((0, 4))] * batch
        validate_boxes(boxes, batch)
        for i, (n, b) in enumerate(zip(n_obj, boxes)):
            if n != b.shape[0]:
                raise ValueError(f"sequence {i} has {n} <objfeat> tokens but {b.shape[0]} boxes")

        if torch.is_grad_enabled():
            image_embeds, levels = self.get_image_features(pixel_values, pixel_values_aux)
        else:  # inference: rows showing the same image (several questions about it) share one tower pass
            first, inverse = distinct_images(pixel_values, pixel_values_aux)
            if len(first) == batch:
                image_embeds, levels = self.get_image_features(pixel_values, pixel_values_aux)
            else:
                image_embeds, levels = self.get_image_features(pixel_values[first], pixel_values_aux[first])
                image_embeds, levels = image_embeds[inverse], [lv[inverse] for lv in levels]
        image_embeds = image_embeds.to(inputs_embeds.dtype).reshape(-1, inputs_embeds.shape[-1])
        inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_embeds)
        if (region_masks is None) != (region_mask_indices is None):
            raise ValueError("region_masks and region_mask_indices go together: pass both or neither")
        if sum(n_obj):
            object_embeds = self.get_object_features(
                levels, list(boxes), None if region_masks is None else list(region_masks),
                None if region_mask_indices is None else list(region_mask_indices)).to(inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(obj_mask.unsqueeze(-1), object_embeds)
        return inputs_embeds

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_aux: torch.FloatTensor | None = None,
        boxes: list[torch.Tensor] | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        object_keys: torch.Tensor | None = None,
        object_key_mask: torch.Tensor | None = None,
        logits_at_labels: bool = False,
        region_masks: list[torch.Tensor] | None = None,
        region_mask_indices: list[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> "ChatRexCausalLMOutput":
        """Run ChatRex.

        Args:
            input_ids: (B, L) token ids with g² ``<image>`` and K_i ``<objfeat>`` placeholders per sample.
            attention_mask: (B, L), 1 for tokens, 0 for padding (left or right).
            pixel_values: (B, 3, 336, 336) CLIP input; pixel_values_aux: (B, 3, 768, 768) ConvNeXt input.
            boxes: B tensors (K_i, 4), xyxy normalised to [0, 1] of the padded square; K_i may be 0.
            region_masks / region_mask_indices: optional mask regions (the processor's ``regions`` input):
                B tensors (M_i, G, G) (each cell's covered fraction of the padded square) and (M_i,) (which
                of the image's boxes each mask is; its box is the mask's bounding box).
            labels: (B, L), -100 where no loss is wanted; shifted inside (next-token prediction).
                Placeholder positions (``<image>``, ``<objfeat>``) are always ignored.
            object_keys, object_key_mask: (B, K, P) and (B, K), the pointer's keys from an earlier call's
                output (models with ``object_pointer_dim``); a call that continues a KV cache needs them,
                since its ``input_ids`` hold no ``<objfeat>``. ``generate`` passes them on by itself.
            logits_at_labels: compute the logits only where a label is predicted (training): ``logits``
                is then (N, V), row n for the n-th True of ``labels[:, 1:] != -100`` in row-major order
                (:func:`labelled_positions`). The loss is the same; an answer of a few tokens after a
                prompt of hundreds no longer pays for (B, L, V) logits. Needs ``labels``.
        Returns:
            ``ChatRexCausalLMOutput`` with ``loss`` (mean over labelled tokens) when labels are given, and
            ``object_keys`` / ``object_key_mask`` when the model has a pointer.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
            if pixel_values is not None or pixel_values_aux is not None or boxes is not None:
                inputs_embeds = self.merge_multimodal_embeddings(
                    input_ids, inputs_embeds, pixel_values, pixel_values_aux, boxes, region_masks, region_mask_indices
                )
            elif region_masks is not None:
                raise ValueError("region_masks were given without pixel_values, pixel_values_aux and boxes")
            elif past_key_values is None or past_key_values.get_seq_length() == 0:
                # prefill without images: placeholders would silently stay text embeddings
                self.merge_multimodal_embeddings(input_ids, inputs_embeds, None, None, None)
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            past = 0 if past_key_values is None else past_key_values.get_seq_length()
            if past == 0 and attention_mask.shape[1] == inputs_embeds.shape[1]:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        outputs = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if labels is not None and input_ids is not None and labels.shape == input_ids.shape:
            # image and object positions carry embeddings, not tokens: never a target
            placeholders = (input_ids == self.config.image_token_id) | (input_ids == self.config.objfeat_token_id)
            labels = labels.masked_fill(placeholders, -100)
        rows = None
        if logits_at_labels:
            if labels is None or labels.shape != hidden.shape[:2]:
                raise ValueError("logits_at_labels needs labels of the input's shape (B, L)")
            rows, cols = labelled_positions(labels)
            head_hidden = hidden[rows, cols].unsqueeze(1)  # (N, 1, H): each labelled position, a sequence of one
        else:
            slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            head_hidden = hidden[:, slice_indices, :]
        logits = self.lm_head(head_hidden)
        if self.config.object_pointer_dim:
            if object_keys is None:
                if past_key_values is not None and hidden.shape[1] < past_key_values.get_seq_length():
                    raise ValueError("this call continues a KV cache: pass object_keys and object_key_mask from the "
                                     "output of the call that read the prompt")
                if input_ids is None:
                    raise ValueError("a model with the object pointer finds its boxes' keys at the <objfeat> ids: "
                                     "pass input_ids (or object_keys and object_key_mask), not only inputs_embeds")
                object_keys, object_key_mask = self.mm_object_pointer.keys(
                    hidden, input_ids == self.config.objfeat_token_id)
            elif object_key_mask is None:
                raise ValueError("object_keys were given without object_key_mask")
            keys, key_mask = (object_keys, object_key_mask) if rows is None else (object_keys[rows], object_key_mask[rows])
            scores = self.mm_object_pointer(head_hidden, keys)
            logits = point_logits(logits, scores, key_mask, self._index_token_ids(logits.device))
        loss = None
        if rows is not None:
            logits = logits.squeeze(1)
            loss = nn.functional.cross_entropy(logits.float(), labels[:, 1:][rows, cols])
        elif labels is not None:
            loss = causal_lm_loss(logits, labels)
        return ChatRexCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            object_keys=object_keys,
            object_key_mask=object_key_mask,
        )

    def _index_token_ids(self, device: torch.device) -> torch.Tensor:
        ids = self.config.object_index_token_ids
        if not ids:
            raise ValueError("config.object_index_token_ids is not set; call "
                             "chatrex.mllm.tokens.add_chatrex_tokens(tokenizer, model)")
        return torch.tensor(ids[: self.config.max_boxes], device=device)

    # ---------------------------------------------------------------- generation
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        *args: Any,
        boxes: list[torch.Tensor] | None = None,
        pixel_values_aux: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        region_masks: list[torch.Tensor] | None = None,
        region_mask_indices: list[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Standard preparation; ``pixel_values``, ``pixel_values_aux``, ``boxes`` and region masks go to the
        prefill step only (the merged embeddings then live in the KV cache). Boxes and masks are repeated
        per beam / sample when ``generate`` expanded the batch (``num_beams`` / ``num_return_sequences``)."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, *args, is_first_iteration=is_first_iteration, **kwargs
        )
        per_image = {"boxes": boxes, "region_masks": region_masks, "region_mask_indices": region_mask_indices}
        if is_first_iteration or not kwargs.get("use_cache", True):
            batch = input_ids.shape[0]
            for key, value in per_image.items():
                if value is None:
                    continue
                if len(value) != batch and len(value) and batch % len(value) == 0:
                    repeat = batch // len(value)
                    value = [v for v in value for _ in range(repeat)]
                model_inputs[key] = value
            model_inputs["pixel_values_aux"] = pixel_values_aux
        else:
            for key in (*per_image, "pixel_values_aux"):
                model_inputs.pop(key, None)
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The standard update, plus the pointer's keys: the prompt's ``<objfeat>`` positions are only seen by
        the prefill, so later steps score against the keys it returned."""
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if getattr(outputs, "object_keys", None) is not None:
            model_kwargs["object_keys"] = outputs.object_keys
            model_kwargs["object_key_mask"] = outputs.object_key_mask
        return model_kwargs


def _is_official_on_hub(repo_id: str, kwargs: dict) -> bool:
    """Whether the hub repo's ``config.json`` (from the cache or the hub) is an official flat config; False
    when it cannot be fetched (``from_pretrained`` then reports that itself)."""
    from chatrex.mllm.official import is_official_config_dict

    try:
        from transformers.utils import cached_file

        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
        path = cached_file(repo_id, "config.json", _raise_exceptions_for_missing_entries=False, **hub)
        if path is None:
            return False
        with open(path, encoding="utf-8") as f:
            return is_official_config_dict(json.load(f))
    except Exception:  # noqa: BLE001 - not a reachable hub repo: leave the error to from_pretrained
        return False


@dataclass
class ChatRexCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the object pointer's keys (B, K, P) and their mask (B, K), or None."""

    object_keys: torch.Tensor | None = None
    object_key_mask: torch.Tensor | None = None


def distinct_images(pixel_values: torch.Tensor, pixel_values_aux: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Which rows of a batch show the same image: both inputs equal, element for element.

    Args:
        pixel_values: (B, 3, S, S); pixel_values_aux: (B, 3, S', S').
    Returns:
        ``first``: the first row of each distinct image, in order (U ≤ B indices); ``inverse``: (B,) long on
        the inputs' device, the position in ``first`` of each row's image, so ``x[first][inverse]`` equals
        ``x`` for per-image results ``x``.
    """
    first: list[int] = []
    inverse: list[int] = []
    # a sum per row first (one device sync): only rows with equal sums are compared element for element
    sums = pixel_values_aux.flatten(1).float().sum(1).tolist()
    for i in range(pixel_values.shape[0]):
        for u, j in enumerate(first):
            if sums[i] == sums[j] and torch.equal(pixel_values_aux[i], pixel_values_aux[j]) \
                    and torch.equal(pixel_values[i], pixel_values[j]):
                inverse.append(u)
                break
        else:
            inverse.append(len(first))
            first.append(i)
    return first, torch.tensor(inverse, dtype=torch.long, device=pixel_values.device)


def labelled_positions(labels: torch.Tensor, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols), each (N,): the positions whose next token is a target, in row-major order.

    Position (rows[n], cols[n]) predicts ``labels[rows[n], cols[n] + 1]`` (next-token prediction).

    Args:
        labels: (B, L), ``ignore_index`` where there is no target.
    """
    return (labels[:, 1:] != ignore_index).nonzero(as_tuple=True)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy: logits[:, t] predicts labels[:, t + 1]; ``ignore_index`` is skipped."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but logits cover {tuple(logits.shape[:2])}")
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    return nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=ignore_index)


__all__ = [
    "ChatRexCausalLMOutput",
    "ChatRexPreTrainedModel",
    "ChatRexForConditionalGeneration",
    "LoadReport",
    "load_state_dict_report",
    "apply_key_mapping",
    "causal_lm_loss",
    "labelled_positions",
    "OPEN_CLIP_CONVNEXT_KEY_MAPPING",
    "HF_CLIP_KEY_MAPPING",
]
