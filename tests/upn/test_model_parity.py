"""Parity with the official UPN: the fixture's small random model, loaded from the reference
state_dict, fed the reference input tensors directly, must reproduce the reference outputs per query
slot (fp32, CPU). The backbone + encoder run once for the module; both prompts reuse them (the encoder
is prompt-independent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chatrex.upn.checkpoint import load_official_checkpoint
from chatrex.upn.config import config_from_official, upn_small
from chatrex.upn.model import UPN
from tests.conftest import SHARED

FIXTURES = SHARED / "fixtures" / "upn_small"
PROMPTS = ("fine_grained_prompt", "coarse_grained_prompt")
TOL = 1e-4
pytestmark = pytest.mark.slow  # an 800x1130 input through backbone + encoder (once per module)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "upn_small_outputs.npz"))


@pytest.fixture(scope="module")
def intermediates():
    return torch.load(FIXTURES / "upn_small_intermediates.pt", weights_only=False)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    cfg = config_from_official(json.loads((FIXTURES / "upn_small_config.json").read_text())["model_cfg"])
    m = UPN(cfg).eval()
    result = load_official_checkpoint(m, FIXTURES / "upn_small_state_dict.pt", strict=True)
    assert result.ok and result.loaded_keys > 0
    return m


@pytest.fixture(scope="module")
def run(model, ref):
    torch.set_num_threads(1)
    images = torch.from_numpy(ref["input_tensors"])
    mask = torch.from_numpy(ref["input_mask"])
    with torch.no_grad():
        state = model.forward_encoder(images, mask)
        outs = {p: model.forward_decoder(state, p, return_aux=True) for p in PROMPTS}
    return state, outs


def test_official_config_is_the_small_preset():
    cfg = config_from_official(json.loads((FIXTURES / "upn_small_config.json").read_text()))
    assert cfg == upn_small()


def _sampled(tensor: torch.Tensor, record: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return tensor.reshape(-1)[record["sample_flat_index"]], record["sample_values"]


def test_encoder_memory_matches_reference(run, intermediates):
    state, _ = run
    rec = intermediates["fine_grained_prompt"]
    assert list(state.memory.shape) == [int(s) for s in rec["encoder.memory"]["shape"]]
    got, want = _sampled(state.memory, rec["encoder.memory"])
    assert torch.allclose(got, want, atol=TOL, rtol=0), (got - want).abs().max()
    assert torch.equal(state.spatial_shapes, rec["flat.spatial_shapes"])
    assert torch.allclose(state.valid_ratios, rec["flat.valid_ratios"])
    assert torch.equal(state.mask_flatten, rec["flat.mask"])
    assert state.memory.double().sum().item() == pytest.approx(rec["encoder.memory"]["sum"], rel=1e-5)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_topk_selection_matches_reference(run, intermediates, prompt):
    _, outs = run
    assert torch.equal(outs[prompt]["topk_index"], intermediates[prompt]["two_stage.topk_index"])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_outputs_match_reference_per_slot(run, ref, prompt):
    _, outs = run
    logits = outs[prompt]["pred_logits"].numpy()
    boxes = outs[prompt]["pred_boxes"].numpy()
    want_logits = ref[f"{prompt}__pred_logits"]
    want_boxes = ref[f"{prompt}__pred_boxes_cxcywh"]
    assert logits.shape == want_logits.shape and boxes.shape == want_boxes.shape
    np.testing.assert_allclose(logits, want_logits, atol=TOL, rtol=0)
    np.testing.assert_allclose(boxes, want_boxes, atol=TOL, rtol=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), ref[f"{prompt}__scores_sigmoid"], atol=TOL, rtol=0)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_aux_and_encoder_outputs_match_reference_intermediates(model, run, intermediates, prompt):
    _, outs = run
    rec = intermediates[prompt]
    # encoder proposals of the selected tokens = sigmoid(the decoder's initial unsigmoided refs)
    enc = outs[prompt]["enc_outputs"]
    want_enc = rec["decoder.in.refpoints_unsigmoid"].sigmoid()
    torch.testing.assert_close(enc["pred_boxes"], want_enc, atol=TOL, rtol=0)
    # decoder layer 0 (the only aux layer of the 2-layer model): heads on the normed output hs.0
    aux = outs[prompt]["aux_outputs"]
    assert len(aux) == 1
    with torch.no_grad():
        from chatrex.upn.deformable_transformer import inverse_sigmoid

        want_boxes = (model.bbox_embed[0](rec["decoder.hs.0"]) + inverse_sigmoid(rec["decoder.ref.0"])).sigmoid()
        prompt_vec = getattr(model.transformer, prompt).weight
        want_logits = rec["decoder.hs.0"] @ prompt_vec.T
    torch.testing.assert_close(aux[0]["pred_boxes"], want_boxes, atol=TOL, rtol=0)
    torch.testing.assert_close(aux[0]["pred_logits"], want_logits, atol=TOL, rtol=0)
