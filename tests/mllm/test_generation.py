import threading

import torch

from tests.mllm.conftest import greedy_without_cache, random_image

IMAGES = [(0, 40, 30), (1, 30, 50)]
QUESTIONS = ["What is the category name of <obj1> in this image?", "Detect dog."]
BOXES = [[[2, 3, 30, 25], [10, 5, 38, 28], [0, 0, 40, 30]], []]


def _inputs(proc, idx=(0, 1)):
    return proc([random_image(*IMAGES[i]) for i in idx], [QUESTIONS[i] for i in idx], [BOXES[i] for i in idx])


@torch.no_grad()
def test_greedy_sampling_and_beams_run_on_a_left_padded_batch(tiny_model, tiny_processor):
    b = _inputs(tiny_processor)
    L = b["input_ids"].shape[1]
    vocab = tiny_model.config.text_config.vocab_size
    greedy = tiny_model.generate(**b, max_new_tokens=6, do_sample=False)
    assert greedy.shape == (2, L + 6) and torch.equal(greedy[:, :L], b["input_ids"])
    torch.manual_seed(0)
    sampled = tiny_model.generate(**b, max_new_tokens=6, do_sample=True, top_k=20, num_return_sequences=2)
    assert sampled.shape == (4, L + 6) and int(sampled.max()) < vocab
    beams = tiny_model.generate(**b, max_new_tokens=6, num_beams=3, do_sample=False)
    assert beams.shape[0] == 2 and beams.shape[1] <= L + 6


@torch.no_grad()
def test_batched_greedy_equals_single_greedy(tiny_model, tiny_processor):
    b = _inputs(tiny_processor)
    batch = tiny_model.generate(**b, max_new_tokens=8, do_sample=False)[:, b["input_ids"].shape[1]:]
    for i in range(2):
        s = _inputs(tiny_processor, (i,))
        single = tiny_model.generate(**s, max_new_tokens=8, do_sample=False)[:, s["input_ids"].shape[1]:]
        assert torch.equal(batch[i], single[0])


@torch.no_grad()
def test_cached_decoding_matches_full_recomputation(tiny_model, tiny_processor):
    s = _inputs(tiny_processor, (0,))
    calls = []
    hook = tiny_model.vision_tower_aux.register_forward_hook(lambda *a: calls.append(1))
    try:
        gen = tiny_model.generate(**s, max_new_tokens=6, do_sample=False)
    finally:
        hook.remove()
    assert len(calls) == 1  # image and object embeddings are merged once, at the prefill step
    assert torch.equal(gen, greedy_without_cache(tiny_model, s, 6))


@torch.no_grad()
def test_streaming_with_text_iterator_streamer(tiny_model, tiny_processor, tiny_tokenizer):
    from transformers import TextIteratorStreamer

    s = _inputs(tiny_processor, (0,))
    streamer = TextIteratorStreamer(tiny_tokenizer, skip_prompt=True)
    result = {}

    def run():
        result["ids"] = tiny_model.generate(**s, max_new_tokens=6, do_sample=False, streamer=streamer)

    thread = threading.Thread(target=run)
    thread.start()
    pieces = list(streamer)
    thread.join()
    new = result["ids"][0, s["input_ids"].shape[1]:]
    assert "".join(pieces) == tiny_tokenizer.decode(new)
    assert len(pieces) >= 1
