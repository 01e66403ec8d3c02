import pytest
import torch

from chatrex.mllm import ChatRexConfig, ChatRexForConditionalGeneration
from chatrex.mllm.presets import chatrex_7b, chatrex_small, chatrex_tiny


def test_mismatched_grids_fail_at_construction():
    with pytest.raises(ValueError, match="grid"):
        ChatRexConfig(vision_config=dict(image_size=336, patch_size=14),
                      aux_vision_config=dict(image_size=512))


def test_channels_not_divisible_by_four_fail():
    with pytest.raises(ValueError, match="divisible by 4"):
        ChatRexConfig(aux_vision_config=dict(dims=[8, 16, 32, 65], depths=[1, 1, 1, 1], image_size=768))


def test_unknown_convnext_key_fails():
    with pytest.raises(ValueError, match="unknown ConvNeXt"):
        ChatRexConfig(aux_vision_config=dict(widths=[1, 2, 3, 4]))


def test_presets_grids():
    for cfg in (chatrex_7b(), chatrex_small()):
        assert cfg.image_grid == 24 and cfg.num_image_tokens == 576
    assert chatrex_7b().object_feature_dim == 2880
    assert chatrex_7b().image_feature_dim == 2560
    assert chatrex_tiny().num_image_tokens == 16
    small = chatrex_small()
    assert small.tie_word_embeddings and small.text_config.hidden_size == 576


def _llama_params(v, h, inter, layers, heads, kv_heads):
    head_dim = h // heads
    attn = h * h + 2 * h * (kv_heads * head_dim) + h * h
    mlp = 3 * h * inter
    return v * h + layers * (attn + mlp + 2 * h) + h + v * h  # embed, layers, final norm, untied lm_head


def _clip_vit_params(width, layers, inter, patch, image):
    tokens = (image // patch) ** 2 + 1
    emb = 3 * patch * patch * width + width + tokens * width  # patch conv (no bias), class emb, pos emb
    layer = 4 * (width * width + width) + 2 * 2 * width + (width * inter + inter) + (inter * width + width)
    return emb + 2 * width + layers * layer + 2 * width  # pre-LN, layers, post-LN


def _convnext_params(depths, dims):
    total = 3 * 4 * 4 * dims[0] + dims[0] + 2 * dims[0]  # stem conv + LN
    for i, (depth, d) in enumerate(zip(depths, dims)):
        if i > 0:
            total += 2 * dims[i - 1] + dims[i - 1] * d * 4 + d  # LN + 2x2 conv
        block = (49 * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + d  # dw, LN, fc1, fc2, gamma
        total += depth * block
    return total


def test_7b_builds_on_meta_with_the_derived_parameter_count():
    with torch.device("meta"):
        model = ChatRexForConditionalGeneration(chatrex_7b())
    assert all(p.device.type == "meta" for p in model.parameters())
    llm = _llama_params(32000, 4096, 11008, 32, 32, 32)
    clip = _clip_vit_params(1024, 24, 4096, 14, 336)
    convnext = _convnext_params((3, 3, 27, 3), (192, 384, 768, 1536))
    proj = (2560 * 4096 + 4096 + 4096 * 4096 + 4096) + (2880 * 4096 + 4096 + 4096 * 4096 + 4096)
    expected = llm + clip + convnext + proj
    count = sum(p.numel() for p in model.parameters())
    assert llm == 6_738_415_616  # the well-known Llama-2-7B size
    assert count == expected
    assert count == 7_294_003_392  # 6.74B LLM + 303.5M CLIP + 196.2M ConvNeXt + 55.9M projectors


def test_registered_with_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    cfg = chatrex_tiny()
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ChatRexConfig)
    assert loaded.num_image_tokens == 16 and loaded.text_config.hidden_size == 64
    assert AutoModelForCausalLM._model_mapping[ChatRexConfig] is ChatRexForConditionalGeneration
    assert AutoModelForImageTextToText._model_mapping[ChatRexConfig] is ChatRexForConditionalGeneration
