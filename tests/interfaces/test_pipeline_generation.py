"""The pipeline's decoding backends (``generation=``) give the same answers; a streamed answer can be cancelled."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from chatrex.interfaces.pipeline import ChatRexPipeline
from chatrex.upn.config import resolve_config
from chatrex.upn.model import build_upn
from chatrex.upn.wrapper import UPNWrapper
from tests.mllm.conftest import build_tiny_tokenizer, make_model, make_processor, random_image


@pytest.fixture(scope="module")
def parts():
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = resolve_config("upn_tiny")
    upn = UPNWrapper.from_model(build_upn(cfg).eval(), cfg, resize=64, max_size=96)
    # larger random weights: answers vary token by token (see tests/mllm/test_fast_generation.py)
    return upn, make_model(tok, initializer_range=0.3), make_processor(tok)


@pytest.fixture(scope="module")
def images():
    return [Image.fromarray(random_image(s, w, h)) for s, (w, h) in enumerate([(80, 60), (50, 70), (64, 64)])]


QUESTIONS = ["Detect dog.", "What is <obj0>?", "Describe the image."]
BOXES = [None, [[2, 2, 30, 30], [10, 10, 40, 50]], None]


@pytest.mark.parametrize("generation", ["static", "compiled"])
def test_backends_give_the_answers_of_default_generate(parts, images, generation):
    default = ChatRexPipeline(*parts, generation="default")
    other = ChatRexPipeline(*parts, generation=generation)
    if generation == "compiled":  # on CPU: the traced step without inductor's C++ build (seconds, not minutes)
        from chatrex.mllm.fast_generation import StaticGenerator

        other._static_generator = StaticGenerator(other.model, compile={"backend": "eager", "fullgraph": True})
    kwargs = dict(boxes=BOXES, max_new_tokens=12, batch_size=3)
    want = [r.to_dict() for r in default(images, QUESTIONS, **kwargs)]
    assert len({r["raw_text"] for r in want}) == 3 and all(r["raw_text"] for r in want)
    assert [r.to_dict() for r in other(images, QUESTIONS, **kwargs)] == want
    assert other._static_generator is not None and other._static_generator._slots  # it did run
    streamed = other.stream(images[1], QUESTIONS[1], boxes=BOXES[1], max_new_tokens=12)
    pieces = list(streamed)
    assert "".join(pieces) == streamed.text == want[1]["raw_text"]
    assert streamed.result().to_dict() == want[1]


def test_sampling_falls_back_to_default_generate(parts, images):
    pipe = ChatRexPipeline(*parts, generation="static")
    torch.manual_seed(0)
    a = pipe(images[0], "Detect dog.", max_new_tokens=5, do_sample=True, top_k=5)[0].raw_text
    torch.manual_seed(0)
    b = ChatRexPipeline(*parts, generation="default")(images[0], "Detect dog.", max_new_tokens=5, do_sample=True,
                                                       top_k=5)[0].raw_text
    assert a == b
    assert pipe._static_generator is None  # never built: sampling went to model.generate


@pytest.mark.parametrize("generation", ["default", "static"])
def test_cancel_stops_the_generation_thread(parts, images, generation):
    pipe = ChatRexPipeline(*parts, generation=generation)
    # no EOS id to stop at: only the cancel (or the 400-token budget) can end it
    streamed = pipe.stream(images[0], "Describe the image.", max_new_tokens=400, eos_token_id=[])
    pieces = iter(streamed)
    next(pieces)
    streamed.cancel()
    list(pieces)  # ends once the generation thread has stopped
    assert streamed.cancelled and not streamed._thread.is_alive()
    assert 0 < streamed.num_tokens < 400
    assert streamed.text and streamed.result().raw_text == streamed.text


def test_unknown_generation_backend(parts):
    with pytest.raises(ValueError, match="generation must be one of"):
        ChatRexPipeline(*parts, generation="turbo")
