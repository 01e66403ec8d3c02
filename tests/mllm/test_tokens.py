import pytest
import torch

from chatrex.mllm.tokens import (
    CHATREX_TOKENS, IMAGE_TOKEN, OBJFEAT_TOKEN, add_chatrex_tokens, chatrex_token_ids, obj_token,
)
from tests.mllm.conftest import build_tiny_tokenizer


def test_tokens_are_single_special_ids(tiny_tokenizer):
    ids = chatrex_token_ids(tiny_tokenizer)
    assert len(ids) == len(CHATREX_TOKENS) == 106
    text = "<ground>red car</ground><objects><obj3><obj99></objects>"
    enc = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert enc[0] == ids["<ground>"] and enc[-1] == ids["</objects>"]
    assert ids["<obj3>"] in enc and ids["<obj99>"] in enc
    assert tiny_tokenizer.decode(enc) == text
    with pytest.raises(ValueError, match="outside"):
        obj_token(100)


def test_add_is_idempotent_and_missing_tokens_named():
    tok = build_tiny_tokenizer()
    n = len(tok)
    assert add_chatrex_tokens(tok) == chatrex_token_ids(tok)
    assert len(tok) == n

    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")),
                                   unk_token="[UNK]")
    with pytest.raises(ValueError, match="add_chatrex_tokens"):
        chatrex_token_ids(bare)


@pytest.mark.parametrize("tie", [False, True])
def test_new_embedding_rows_are_the_mean_of_old_rows(tie):
    from chatrex.mllm import ChatRexForConditionalGeneration
    from chatrex.mllm.presets import chatrex_tiny
    from tests.mllm.conftest import CHAT_TEMPLATE
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "hello", "world", "car", "dog"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = ChatRexForConditionalGeneration(chatrex_tiny(vocab_size=len(vocab), tie_word_embeddings=tie))
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    ids = add_chatrex_tokens(tok, model)
    emb_in = model.get_input_embeddings().weight
    emb_out = model.get_output_embeddings().weight
    assert emb_in.shape[0] == len(tok) == len(vocab) + 106
    assert model.config.text_config.vocab_size == len(tok)
    torch.testing.assert_close(emb_in[: len(vocab)], old_in)
    for tid in (ids["<obj0>"], ids[IMAGE_TOKEN], ids[OBJFEAT_TOKEN]):
        torch.testing.assert_close(emb_in[tid], old_in.mean(0))
        torch.testing.assert_close(emb_out[tid], old_out.mean(0))
    assert (emb_out is emb_in) == tie
    assert model.config.image_token_id == ids[IMAGE_TOKEN]
    assert model.config.objfeat_token_id == ids[OBJFEAT_TOKEN]
