"""Configuration of the ChatRex multimodal LLM.

A :class:`ChatRexConfig` holds three parts and the glue between them:

* ``vision_config`` — the low-resolution tower, a transformers ``CLIPVisionConfig``
  (ViT-L/14 at 336 px in the paper: a 24 x 24 grid of 1024-d patch tokens);
* ``aux_vision_config`` — the high-resolution ConvNeXt tower as a plain dict (see
  :class:`chatrex.mllm.vision_towers.ConvNeXtTowerConfig`; ConvNeXt-L at 768 px in the paper);
* ``text_config`` — any transformers causal-LM config (Llama by default, Qwen2 works).

The ConvNeXt's last level (stride 32) must have the same grid as the CLIP patch tokens because the two
are concatenated token by token; :meth:`ChatRexConfig.validate_towers` checks this at construction.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING, AutoConfig

from chatrex.mllm.vision_towers import ConvNeXtTowerConfig


def _clip_vision_config(**overrides: Any) -> PretrainedConfig:
    """CLIP ViT-L/14 at 336 px (the paper's low-resolution tower) unless overridden."""
    base = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                patch_size=14, image_size=336, projection_dim=768, hidden_act="quick_gelu")
    base.update(overrides)
    return CONFIG_MAPPING["clip_vision_model"](**base)


class ChatRexConfig(PretrainedConfig):
    r"""Configuration of :class:`~chatrex.mllm.modeling_chatrex.ChatRexForConditionalGeneration`.

    Args:
        vision_config: CLIP vision config (object or dict). Default: ViT-L/14-336.
        aux_vision_config: ConvNeXt tower config (dict or ``ConvNeXtTowerConfig``). Default: ConvNeXt-L at 768.
        text_config: causal-LM config (object or dict with ``model_type``). Default: ``LlamaConfig()``.
        vision_feature_layer: hidden-state index of the CLIP features (-2 = penultimate layer).
        projector_hidden_act: activation between the two Linear layers of both projectors.
        image_token_id / objfeat_token_id: ids of the ``<image>`` and ``<objfeat>`` placeholders
            (set by :func:`chatrex.mllm.tokens.add_chatrex_tokens`).
        max_boxes: most boxes per image (the vocabulary has ``<obj0>`` … ``<obj{max_boxes-1}>``).
        roi_output_size: RoIAlign output size of the object encoder (7 in the paper).
        roi_aligned: RoIAlign's ``aligned`` flag. False (the official layout) reads each box half a stride-4
            cell up and to the left; True (ours) reads it where it lies, so that a box and its filled
            rectangle mask (mask pooling, :func:`chatrex.mllm.object_encoder.mask_features`) give close
            object tokens.
        object_trunk_dim: 0 (the paper's layout): the pooled object features enter ``mm_object_projector``
            directly. D > 0 (ours): they first pass ``mm_object_trunk`` = Linear(C_total → D), GELU,
            LayerNorm(D), the layout of the stage-0 object head's trunk, which it can be loaded from
            (``chatrex.training.vision_task.load_pretrained_towers``); the projector then reads D channels.
        object_pointer_dim: 0 (the paper's layout): the LM head's ``<objK>`` rows name boxes. P > 0 (ours):
            ``mm_object_pointer`` scores each answer position against the prompt's object tokens (queries
            and keys of width P) and the ``<objK>`` logits become "an index" x "which box"
            (:mod:`chatrex.mllm.object_pointer`).
        mask_adapter_dim: 0: mask regions' pooled features enter the trunk as they are. D > 0 (ours):
            they first pass ``mm_mask_adapter``, a residual MLP of hidden width D
            (:class:`chatrex.mllm.object_encoder.MaskAdapter`); box regions never do.
        image_token_pool: 1 (the paper's layout): one image token per cell of the g x g grid (576 at full
            size). k > 1 (ours, for fast training of small models): the concatenated CLIP + ConvNeXt features
            are averaged over k x k cells before ``mm_projector``, so ``<image>`` stands for (g/k)² tokens
            (144 at k = 2); g must be a multiple of k. Object tokens are unchanged (RoIAlign reads the
            ConvNeXt levels).
        object_index_token_ids: ids of ``<obj0>`` … ``<obj{max_boxes-1}>`` (set by ``add_chatrex_tokens``;
            the pointer needs them).
        official_config: the official flat ``config.json`` a model was converted from
            (:mod:`chatrex.mllm.official`), kept so that converting back writes it again; None otherwise.

    ``from_pretrained`` and ``from_dict`` also accept an official flat config (``mm_vision_tower`` and the
    LLM's fields at the top level) and convert it (:func:`chatrex.mllm.official.chatrex_config_from_official`).
    """

    model_type = "chatrex"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    vision_config: dict | PretrainedConfig | None = None
    aux_vision_config: dict | None = None
    text_config: dict | PretrainedConfig | None = None
    vision_feature_layer: int = -2
    projector_hidden_act: str = "gelu"
    image_token_id: int | None = None
    objfeat_token_id: int | None = None
    max_boxes: int = 100
    roi_output_size: int = 7
    roi_aligned: bool = False
    object_trunk_dim: int = 0
    object_pointer_dim: int = 0
    mask_adapter_dim: int = 0
    image_token_pool: int = 1
    object_index_token_ids: list[int] | None = None
    tie_word_embeddings: bool = False
    official_config: dict | None = None

    def __post_init__(self, **kwargs):
        if "mm_vision_tower" in kwargs and self.text_config is None:
            from chatrex.mllm.official import OfficialCheckpointError

            raise OfficialCheckpointError(
                "these are the fields of an official flat config (mm_vision_tower, ...); convert it with "
                "ChatRexConfig.from_pretrained(folder) or chatrex.mllm.official.chatrex_config_from_official")
        if isinstance(self.vision_config, dict):
            vc = dict(self.vision_config)
            vc.pop("model_type", None)
            self.vision_config = _clip_vision_config(**vc)
        elif self.vision_config is None:
            self.vision_config = _clip_vision_config()

        if isinstance(self.aux_vision_config, ConvNeXtTowerConfig):
            self.aux_vision_config = self.aux_vision_config.to_dict()
        elif self.aux_vision_config is None:
            self.aux_vision_config = ConvNeXtTowerConfig().to_dict()
        else:  # normalise (fills defaults, rejects unknown keys)
            self.aux_vision_config = ConvNeXtTowerConfig.from_dict(self.aux_vision_config).to_dict()

        if isinstance(self.text_config, dict):
            tc = dict(self.text_config)
            model_type = tc.pop("model_type", "llama")
            if model_type not in CONFIG_MAPPING:
                raise ValueError(f"text_config has unknown model_type '{model_type}'")
            self.text_config = CONFIG_MAPPING[model_type](**tc)
        elif self.text_config is None:
            self.text_config = CONFIG_MAPPING["llama"]()

        if self.text_config.tie_word_embeddings:
            self.tie_word_embeddings = True
        super().__post_init__(**kwargs)
        self.validate_towers()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        from chatrex.mllm.official import chatrex_config_from_official, is_official_config_dict

        if is_official_config_dict(config_dict):  # without its folder: the official ConvNeXt-L is assumed
            config = chatrex_config_from_official(config_dict)
            return (config, {}) if kwargs.get("return_unused_kwargs") else config
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        from chatrex.mllm.official import (
            chatrex_config_from_official,
            is_official_dir,
            read_checkpoint_shapes,
            read_config_dict,
        )

        path = pretrained_model_name_or_path
        if isinstance(path, (str, os.PathLike)) and is_official_dir(path):
            return chatrex_config_from_official(read_config_dict(path), path, read_checkpoint_shapes(path))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ------------------------------------------------------------------ derived sizes
    @property
    def aux_tower(self) -> ConvNeXtTowerConfig:
        return ConvNeXtTowerConfig.from_dict(self.aux_vision_config)

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def image_size_aux(self) -> int:
        return int(self.aux_vision_config["image_size"])

    @property
    def image_grid(self) -> int:
        """Side g of the image-token grid (24 at full size)."""
        return self.image_size // int(self.vision_config.patch_size)

    @property
    def image_token_grid(self) -> int:
        """Side of the image tokens' grid: g / ``image_token_pool`` (24 at full size without pooling)."""
        return self.image_grid // int(self.image_token_pool)

    @property
    def num_image_tokens(self) -> int:
        """Embeddings that one ``<image>`` stands for: (g / ``image_token_pool``)² (576 at full size)."""
        return self.image_token_grid**2

    @property
    def image_feature_dim(self) -> int:
        """Channels entering ``mm_projector``: CLIP width + last ConvNeXt level."""
        return int(self.vision_config.hidden_size) + int(self.aux_vision_config["dims"][-1])

    @property
    def object_feature_dim(self) -> int:
        """Channels of the pooled object features: all ConvNeXt levels (2880 at full size)."""
        return int(sum(self.aux_vision_config["dims"]))

    @property
    def object_projector_in_dim(self) -> int:
        """Channels entering ``mm_object_projector``: ``object_trunk_dim`` with a trunk, else C_total."""
        return int(self.object_trunk_dim) or self.object_feature_dim

    def validate_towers(self) -> None:
        """Raise ``ValueError`` when the two towers or the object encoder cannot fit together."""
        vc = self.vision_config
        if vc.image_size % vc.patch_size:
            raise ValueError(
                f"CLIP image_size {vc.image_size} is not a multiple of its patch_size {vc.patch_size}"
            )
        aux = self.aux_tower
        if aux.image_size % aux.strides[-1]:
            raise ValueError(
                f"ConvNeXt image_size {aux.image_size} is not a multiple of its last stride {aux.strides[-1]}"
            )
        g_clip = vc.image_size // vc.patch_size
        g_aux = aux.image_size // aux.strides[-1]
        if g_clip != g_aux:
            raise ValueError(
                f"the CLIP token grid ({vc.image_size}/{vc.patch_size} = {g_clip}) and the last ConvNeXt level "
                f"({aux.image_size}/{aux.strides[-1]} = {g_aux}) differ; their tokens are concatenated one by one, "
                f"so set the ConvNeXt image_size to {g_clip * aux.strides[-1]} or change the CLIP image/patch size"
            )
        if self.object_feature_dim % 4:
            raise ValueError(
                f"the ConvNeXt channels sum to {self.object_feature_dim}, which is not divisible by 4; the object "
                "encoder's box embedding needs C_total // 4 features per coordinate"
            )
        if not isinstance(self.object_trunk_dim, int) or self.object_trunk_dim < 0:
            raise ValueError(f"object_trunk_dim must be a non-negative integer (0: no trunk), got {self.object_trunk_dim!r}")
        if not isinstance(self.mask_adapter_dim, int) or isinstance(self.mask_adapter_dim, bool) or self.mask_adapter_dim < 0:
            raise ValueError(f"mask_adapter_dim must be a non-negative integer (0: no adapter), got {self.mask_adapter_dim!r}")
        if not isinstance(self.object_pointer_dim, int) or self.object_pointer_dim < 0:
            raise ValueError(
                f"object_pointer_dim must be a non-negative integer (0: no pointer), got {self.object_pointer_dim!r}")
        pool = self.image_token_pool
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1 or g_clip % pool:
            raise ValueError(f"image_token_pool must be a positive integer that divides the image grid ({g_clip}), "
                             f"got {pool!r}")
        if not 1 <= self.max_boxes:
            raise ValueError(f"max_boxes must be positive, got {self.max_boxes}")


__all__ = ["ChatRexConfig"]
