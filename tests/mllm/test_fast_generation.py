"""StaticGenerator (chatrex.mllm.fast_generation) gives the tokens of transformers' default greedy generate."""

import threading

import pytest
import torch
from transformers import GenerationConfig, TextIteratorStreamer

from chatrex.mllm.fast_generation import StaticGenerator, resolve_backend
from chatrex.mllm import ChatRexForConditionalGeneration
from chatrex.mllm.presets import with_overrides
from tests.mllm.conftest import make_model, random_image

IMAGES = [(0, 40, 30), (1, 30, 50), (2, 50, 50)]
QUESTIONS = ["What is the category name of <obj1> in this image?", "Detect dog.",
             "Please detect dog; car in this image. Answer the question with object indexes."]
BOXES = [[[2, 3, 30, 25], [10, 5, 38, 28], [0, 0, 40, 30]], [[1, 1, 20, 20]], []]
# the traced step must hold no graph break (a CUDA graph captures one whole step)
TRACED = {"backend": "eager", "fullgraph": True}


@pytest.fixture(scope="module")
def lively_model(tiny_tokenizer):
    """The tiny model with larger random weights: its greedy answers vary from token to token (the default
    initialisation repeats one token), so a wrong position, mask or cache slot changes them."""
    return make_model(tiny_tokenizer, initializer_range=0.3)


@pytest.fixture(scope="module")
def pointer_model(lively_model):
    """``lively_model``'s shape with an object pointer, its LM biased towards index tokens so that answers
    name boxes."""
    torch.manual_seed(3)
    model = ChatRexForConditionalGeneration(with_overrides(lively_model.config, {"object_pointer_dim": 16})).eval()
    model.config.text_config._attn_implementation = "eager"
    with torch.no_grad():
        ids = torch.tensor(model.config.object_index_token_ids)
        model.lm_head.weight[ids] += 2.0 * model.lm_head.weight[ids].sign()
    return model


def _inputs(proc, idx=(0, 1)):
    return proc([random_image(*IMAGES[i]) for i in idx], [QUESTIONS[i] for i in idx], [BOXES[i] for i in idx])


def _reference(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, do_sample=False, **kwargs)


def test_greedy_tokens_equal_default_generate_on_a_left_padded_batch(lively_model, tiny_processor, tiny_tokenizer):
    b = _inputs(tiny_processor, (0, 1, 2))
    L = b["input_ids"].shape[1]
    assert (b["attention_mask"] == 0).any()  # rows of different lengths: left padding is exercised
    gen = StaticGenerator(lively_model, cache_multiple=16)
    pad = tiny_tokenizer.pad_token_id
    free = _reference(lively_model, b, max_new_tokens=10, pad_token_id=pad)[:, L:]
    assert len(free.unique()) > 10  # answers vary from step to step
    some = int(free[1, 4])  # row 1 stops at step 4 (or before); the others may run on
    every = [int(free[0, 3]), int(free[1, 5]), int(free[2, 2])]  # every row stops, at different steps
    for eos in (None, some, every):
        for new in (1, 3, 10):
            ref = _reference(lively_model, b, max_new_tokens=new, eos_token_id=eos, pad_token_id=pad)
            out = gen.generate(**b, max_new_tokens=new, eos_token_id=eos, pad_token_id=pad)
            assert out.shape == ref.shape and torch.equal(out, ref), (eos, new)
    assert L + 3 < out.shape[1] < L + 10 and (out[:, L:] == pad).any()  # stopped early, finished rows padded


def test_generation_config_and_max_length_are_read_like_generate(lively_model, tiny_processor, tiny_tokenizer):
    b = _inputs(tiny_processor, (1,))
    L = b["input_ids"].shape[1]
    cfg = GenerationConfig(max_length=L + 5, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    out = StaticGenerator(lively_model).generate(**b, generation_config=cfg)
    assert torch.equal(out, _reference(lively_model, b, generation_config=cfg))
    assert out.shape[1] == L + 5


def test_pointer_keys_flow_into_the_cached_steps(pointer_model, tiny_processor, tiny_tokenizer):
    model = pointer_model
    ids = torch.tensor(model.config.object_index_token_ids)
    b = _inputs(tiny_processor, (0, 1))  # 3 boxes and 1 box: the keys are padded differently per row
    ref = _reference(model, b, max_new_tokens=8, pad_token_id=tiny_tokenizer.pad_token_id)
    new = ref[:, b["input_ids"].shape[1]:]
    assert torch.isin(new, ids).any()  # the answers do name boxes, so the pointer decides tokens
    for compile in (False, TRACED):
        out = StaticGenerator(model, compile=compile).generate(**b, max_new_tokens=8,
                                                                pad_token_id=tiny_tokenizer.pad_token_id)
        assert torch.equal(out, ref), compile
    assert not torch.isin(new[1], ids[1:]).any()  # row 1 has one box: only <obj0> can be named


def test_traced_step_has_no_graph_break_and_gives_the_same_tokens(lively_model, tiny_processor, tiny_tokenizer):
    b = _inputs(tiny_processor, (0, 1))
    pad = tiny_tokenizer.pad_token_id
    gen = StaticGenerator(lively_model, compile=TRACED, cache_multiple=16)
    eos = int(_reference(lively_model, b, max_new_tokens=8, pad_token_id=pad)[1, -3])
    for kwargs in (dict(max_new_tokens=8), dict(max_new_tokens=8, eos_token_id=eos)):
        assert torch.equal(gen.generate(**b, pad_token_id=pad, **kwargs), _reference(lively_model, b, pad_token_id=pad, **kwargs))


def test_caches_are_reused_across_calls_and_shapes(lively_model, tiny_processor, tiny_tokenizer):
    gen = StaticGenerator(lively_model, cache_multiple=64, max_shapes=2)
    pad = tiny_tokenizer.pad_token_id
    for idx in [(0, 1), (1, 0), (2,), (0, 1), (1, 2)]:
        b = _inputs(tiny_processor, idx)
        assert torch.equal(gen.generate(**b, max_new_tokens=6, pad_token_id=pad),
                           _reference(lively_model, b, max_new_tokens=6, pad_token_id=pad)), idx
    assert len(gen._slots) <= 2


def test_streamer_sees_the_prompt_then_each_token_and_should_stop_ends_early(lively_model, tiny_processor, tiny_tokenizer):
    b = _inputs(tiny_processor, (1,))
    pad = tiny_tokenizer.pad_token_id
    gen = StaticGenerator(lively_model)
    streamer = TextIteratorStreamer(tiny_tokenizer, skip_prompt=True)
    result = {}
    thread = threading.Thread(target=lambda: result.update(ids=gen.generate(**b, max_new_tokens=7, pad_token_id=pad,
                                                                            streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert torch.equal(result["ids"], _reference(lively_model, b, max_new_tokens=7, pad_token_id=pad))
    assert text == tiny_tokenizer.decode(result["ids"][0, b["input_ids"].shape[1]:])

    calls = []
    out = gen.generate(**b, max_new_tokens=50, pad_token_id=pad, should_stop=lambda: len(calls) >= 3 or calls.append(1))
    assert out.shape[1] == b["input_ids"].shape[1] + 4  # the prefill's token and three steps, then the stop


def test_settings_other_than_greedy_are_refused_with_the_reason(lively_model, tiny_processor):
    assert StaticGenerator.unsupported(GenerationConfig(max_new_tokens=5, do_sample=False)) is None
    assert StaticGenerator.unsupported(None, max_new_tokens=5, temperature=0.7) is None  # ignored when greedy
    assert "do_sample" in StaticGenerator.unsupported(GenerationConfig(do_sample=True))
    assert "num_beams" in StaticGenerator.unsupported(None, num_beams=3)
    assert "repetition_penalty" in StaticGenerator.unsupported(GenerationConfig(repetition_penalty=1.2))
    assert "logits_processor" in StaticGenerator.unsupported(None, logits_processor=[])
    with pytest.raises(ValueError, match="greedy decoding only.*num_beams"):
        StaticGenerator(lively_model).generate(**_inputs(tiny_processor, (1,)), num_beams=2)
    b = _inputs(tiny_processor, (1,))
    limit = lively_model.config.text_config.max_position_embeddings
    out = StaticGenerator(lively_model).generate(**b, max_new_tokens=10_000, eos_token_id=None)
    assert out.shape[1] == limit  # the answer ends at the LLM's last position
    too_long = {**b, "input_ids": b["input_ids"].repeat(1, limit // b["input_ids"].shape[1] + 1)}
    with pytest.raises(ValueError, match="positions"):
        StaticGenerator(lively_model).generate(**too_long, max_new_tokens=1)


def test_backend_names():
    assert resolve_backend("auto", "cpu") == "static"
    assert resolve_backend("auto", "cuda") == "compiled"
    assert resolve_backend("static", "cpu") == "static"
    with pytest.raises(ValueError, match="generation must be one of"):
        resolve_backend("fast", "cpu")


def test_generation_benchmark_runs_on_the_tiny_shape():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "generation_speed.py"
    spec = importlib.util.spec_from_file_location("generation_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    head, *rows = bench.main(["--tiny", "--device", "cpu", "--dtype", "float32", "--batches", "2",
                              "--variants", "default,static", "--new-tokens", "4", "--boxes", "3", "--repeats", "1"])
    assert head["decode_weight_bytes"] > 0 and [r["variant"] for r in rows] == ["default", "static"]
    assert all("error" not in r and r["tokens_per_s_batch"] > 0 for r in rows)
    assert rows[1]["same_tokens_as_default"] == [4, 4]  # the static path repeats default generate's tokens


def test_mask_regions_reach_the_prefill_and_give_the_tokens_of_generate(lively_model, tiny_processor, tiny_tokenizer):
    import numpy as np

    mask = np.zeros((30, 40), dtype=bool)
    mask[4:20, 6:30] = True
    mask[4:12, 6:14] = False
    images = [random_image(*IMAGES[0]), random_image(*IMAGES[1])]
    b = tiny_processor(images, QUESTIONS[:2], regions=[[[2, 3, 30, 25], mask], [[1, 1, 20, 20]]])
    assert "region_masks" in b
    pad = tiny_tokenizer.pad_token_id
    ref = _reference(lively_model, b, max_new_tokens=6, pad_token_id=pad)
    out = StaticGenerator(lively_model, cache_multiple=16).generate(**b, max_new_tokens=6, pad_token_id=pad)
    assert torch.equal(out, ref)
    boxes_only = _reference(lively_model, {k: v for k, v in b.items() if not k.startswith("region_")},
                            max_new_tokens=6, pad_token_id=pad)
    assert StaticGenerator.unsupported(None, **b) is None
    assert not torch.equal(boxes_only, ref)  # the mask changed the answer: it was not dropped


def _shared_batch(proc):
    """Rows 0, 1 and 3 ask different questions about one image with the same boxes (one shared prefix);
    row 2 shows another image. The questions differ in length, so the suffixes are padded too."""
    im0, im1 = random_image(*IMAGES[0]), random_image(*IMAGES[1])
    questions = ["What is the category name of <obj1> in this image?", "Detect dog.", QUESTIONS[1],
                 "Please detect dog; car in this image. Answer the question with object indexes."]
    return proc([im0, im0, im1, im0], questions, [BOXES[0], BOXES[0], BOXES[1], BOXES[0]])


def test_shared_prefixes_group_rows_of_one_image_and_boxes(lively_model, tiny_processor):
    from chatrex.mllm.fast_generation import shared_prefixes

    b = _shared_batch(tiny_processor)
    cfg = lively_model.config
    ph = (cfg.image_token_id, cfg.objfeat_token_id)
    plan = shared_prefixes(b["input_ids"], b["attention_mask"], ph, b["pixel_values"], b["pixel_values_aux"], b["boxes"])
    assert plan.first == [0, 2] and plan.inverse.tolist() == [0, 0, 1, 0]
    for i in range(4):  # prefix + suffix (padding dropped) is the row's prompt, and the prefix ends at a placeholder
        real = b["input_ids"][i][b["attention_mask"][i].bool()]
        pre = plan.prefix_ids[i][plan.prefix_mask[i].bool()]
        suf = plan.suffix_ids[i][plan.suffix_mask[i].bool()]
        assert torch.equal(torch.cat([pre, suf]), real) and int(pre[-1]) in ph and len(suf) > 0
    other_boxes = list(b["boxes"])
    other_boxes[1] = other_boxes[1] + 0.01  # the same image with other boxes: no longer shared
    plan = shared_prefixes(b["input_ids"], b["attention_mask"], ph, b["pixel_values"], b["pixel_values_aux"], other_boxes)
    assert plan.first == [0, 1, 2] and plan.inverse.tolist() == [0, 1, 2, 0]
    c = _inputs(tiny_processor, (0, 1, 2))  # three images: nothing to share
    assert shared_prefixes(c["input_ids"], c["attention_mask"], ph, c["pixel_values"], c["pixel_values_aux"], c["boxes"]) is None


@pytest.mark.parametrize("use_pointer", [False, True])
def test_a_shared_prefix_prefill_gives_the_tokens_of_separate_prefills(use_pointer, lively_model, pointer_model,
                                                                       tiny_processor, tiny_tokenizer):
    model = pointer_model if use_pointer else lively_model
    b = _shared_batch(tiny_processor)
    pad = tiny_tokenizer.pad_token_id
    ref = _reference(model, b, max_new_tokens=8, pad_token_id=pad)
    assert len({tuple(r) for r in ref[:, b["input_ids"].shape[1]:].tolist()}) == 4  # four different answers
    shared = StaticGenerator(model, cache_multiple=16)
    for compile in (False, TRACED):
        gen = StaticGenerator(model, cache_multiple=16, compile=compile)
        assert torch.equal(gen.generate(**b, max_new_tokens=8, pad_token_id=pad), ref), compile
    separate = StaticGenerator(model, cache_multiple=16, share_prefixes=False)
    assert torch.equal(separate.generate(**b, max_new_tokens=8, pad_token_id=pad), ref)
    # the shared path ran: the LLM read the image and objects of two prompts, not four
    rows = []
    merge = model.merge_multimodal_embeddings

    def counting(input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return merge(input_ids, *args, **kwargs)

    for gen, expected in ((shared, [2]), (separate, [4])):
        rows.clear()
        model.merge_multimodal_embeddings = counting
        try:
            gen.generate(**b, max_new_tokens=2, pad_token_id=pad)
        finally:
            del model.merge_multimodal_embeddings
        assert rows == expected
