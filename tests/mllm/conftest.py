"""Tiny offline tokenizer, processor and model for the MLLM tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SENTENCES = [
    "What is the category name of the object? Answer the question with its category name.",
    "Please detect person; dog; red car in this image. Answer the question with object indexes.",
    "A small red car is parked next to a tree and a dog sits on the grass.",
    "How many dogs are there in this image? There are two dogs.",
]


def build_tiny_tokenizer(chatrex_tokens: bool = True):
    """A byte-level BPE tokenizer trained on a few sentences, with a ChatML template and (unless
    ``chatrex_tokens`` is False) the ChatRex tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from chatrex.mllm.tokens import add_chatrex_tokens

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    if chatrex_tokens:
        add_chatrex_tokens(fast)
    return fast


def random_image(seed: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


def make_processor(tokenizer, **kwargs):
    from chatrex.mllm.processing_chatrex import ChatRexProcessor

    return ChatRexProcessor(tokenizer, image_size=56, image_size_aux=128, **kwargs)


def make_model(tokenizer, text_model_type: str = "llama", seed: int = 0, **text_overrides):
    from chatrex.mllm import ChatRexForConditionalGeneration
    from chatrex.mllm.presets import chatrex_tiny
    from chatrex.mllm.tokens import add_chatrex_tokens

    torch.manual_seed(seed)
    cfg = chatrex_tiny(vocab_size=len(tokenizer), text_model_type=text_model_type, **text_overrides)
    cfg.text_config._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    model = ChatRexForConditionalGeneration(cfg).eval()
    add_chatrex_tokens(tokenizer, model)
    return model


@pytest.fixture(scope="session")
def tiny_processor(tiny_tokenizer):
    return make_processor(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_model(tiny_tokenizer)


def greedy_without_cache(model, inputs, steps: int) -> torch.Tensor:
    """Greedy decoding that re-runs the whole sequence (image and object embeddings merged again, no KV
    cache) at every step: the reference that cached ``generate`` must equal. Returns (B, L + steps) ids."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                       pixel_values_aux=inputs["pixel_values_aux"], boxes=inputs["boxes"], use_cache=False).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids
