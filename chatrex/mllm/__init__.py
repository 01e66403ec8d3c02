"""The ChatRex multimodal LLM (model, towers, object encoder, tokens, processor).

Importing this package registers ``ChatRexConfig`` (``model_type="chatrex"``) with ``AutoConfig`` and
``ChatRexForConditionalGeneration`` with ``AutoModelForCausalLM`` and ``AutoModelForImageTextToText``; the
official flat configs (``model_type`` ``rexseek_qwen`` / ``rexseek_llama``) are registered too, and the Auto
model classes load them as ``ChatRexForConditionalGeneration`` (:mod:`chatrex.mllm.official`).
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from chatrex.mllm.configuration_chatrex import ChatRexConfig
from chatrex.mllm.modeling_chatrex import (
    ChatRexForConditionalGeneration,
    ChatRexPreTrainedModel,
    LoadReport,
    apply_key_mapping,
    load_state_dict_report,
)
from chatrex.mllm.image_processing import ChatRexImageProcessor
from chatrex.mllm.official import OfficialCheckpointError, RexSeekLlamaConfig, RexSeekQwenConfig
from chatrex.mllm.presets import build_chatrex_from_llm, chatrex_7b, chatrex_small, chatrex_tiny, load_smollm2
from chatrex.mllm.processing_chatrex import ChatRexProcessor
from chatrex.mllm.tokens import add_chatrex_tokens
from chatrex.mllm.vision_towers import ConvNeXtTowerConfig

AutoConfig.register("chatrex", ChatRexConfig, exist_ok=True)
AutoModelForCausalLM.register(ChatRexConfig, ChatRexForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(ChatRexConfig, ChatRexForConditionalGeneration, exist_ok=True)
for _official in (RexSeekQwenConfig, RexSeekLlamaConfig):
    AutoConfig.register(_official.model_type, _official, exist_ok=True)
    # ``register`` insists that the model's config_class be the one registered; ours converts the official
    # flat config while loading (ChatRexForConditionalGeneration.from_pretrained), so map it directly
    for _auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        _auto._model_mapping.register(_official, ChatRexForConditionalGeneration, exist_ok=True)

__all__ = [
    "ChatRexConfig",
    "ChatRexForConditionalGeneration",
    "OfficialCheckpointError",
    "RexSeekQwenConfig",
    "RexSeekLlamaConfig",
    "ChatRexPreTrainedModel",
    "ConvNeXtTowerConfig",
    "LoadReport",
    "apply_key_mapping",
    "load_state_dict_report",
    "add_chatrex_tokens",
    "ChatRexProcessor",
    "ChatRexImageProcessor",
    "chatrex_7b",
    "chatrex_small",
    "chatrex_tiny",
    "load_smollm2",
    "build_chatrex_from_llm",
]
