"""Parity with the official UPN: the fixture's small random model, loaded from the reference
state_dict, fed the reference input tensors directly, must reproduce the reference outputs per query
(fp32, CPU) within ``TOL``. The backbone + encoder run once for the module; both prompts reuse them (the
encoder is prompt-independent).

The queries are the encoder's top-k proposals in score order; two of them whose scores are within
``TIE`` may come out in the other order on another machine, which swaps their slots. So each of our
queries is paired with the reference query of the same proposal, the pairs may only differ in slot
among near-tied proposals, and every paired value must agree within ``TOL`` (:mod:`tests.upn.near_ties`).
On the machine that made the fixture and on the CPU machine of these tests, the order is the
reference's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chatrex.upn.checkpoint import load_official_checkpoint
from chatrex.upn.config import config_from_official, upn_small
from chatrex.upn.model import UPN
from tests.conftest import SHARED
from tests.upn.near_ties import pair_near_ties

FIXTURES = SHARED / "fixtures" / "upn_small"
PROMPTS = ("fine_grained_prompt", "coarse_grained_prompt")
TOL = 1e-4
TIE = 1e-4  # top-k logits closer than this may swap slots between machines
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


def _slots(outs, intermediates, prompt) -> np.ndarray:
    """Per image of the batch, our slot of each reference slot (the same proposal; see the module doc)."""
    rec, out = intermediates[prompt], outs[prompt]
    perms = []
    for b in range(out["topk_index"].shape[0]):
        perms.append(pair_near_ties(rec["two_stage.topk_logits"][b].numpy(),
                                    rec["two_stage.topk_logits"][b].numpy()[:, None],
                                    out["enc_outputs"]["pred_logits"][b, :, 0].numpy()[:, None], TIE, TOL,
                                    want_ids=rec["two_stage.topk_index"][b].numpy(),
                                    got_ids=out["topk_index"][b].numpy()))
    return np.stack(perms)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_topk_selection_matches_reference(run, intermediates, prompt):
    """The same proposals, their order changed only among near-tied scores (and their scores within TOL)."""
    _, outs = run
    want = intermediates[prompt]["two_stage.topk_index"]
    assert outs[prompt]["topk_index"].shape == want.shape
    gap = float(intermediates[prompt]["two_stage.gap_kth_to_next"].min())
    assert gap > TIE  # the k-th and the next proposal are not tied: the selected set itself is determined
    assert sorted(outs[prompt]["topk_index"][0].tolist()) == sorted(want[0].tolist())
    _slots(outs, intermediates, prompt)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_outputs_match_reference_per_query(run, ref, intermediates, prompt):
    _, outs = run
    perm = _slots(outs, intermediates, prompt)
    logits = outs[prompt]["pred_logits"].numpy()
    boxes = outs[prompt]["pred_boxes"].numpy()
    want_logits = ref[f"{prompt}__pred_logits"]
    want_boxes = ref[f"{prompt}__pred_boxes_cxcywh"]
    assert logits.shape == want_logits.shape and boxes.shape == want_boxes.shape
    rows = np.arange(perm.shape[0])[:, None]
    np.testing.assert_allclose(logits[rows, perm], want_logits, atol=TOL, rtol=0)
    np.testing.assert_allclose(boxes[rows, perm], want_boxes, atol=TOL, rtol=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[rows, perm])), ref[f"{prompt}__scores_sigmoid"], atol=TOL,
                               rtol=0)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_aux_and_encoder_outputs_match_reference_intermediates(model, run, intermediates, prompt):
    _, outs = run
    rec = intermediates[prompt]
    perm = torch.from_numpy(_slots(outs, intermediates, prompt)[0])
    # encoder proposals of the selected tokens = sigmoid(the decoder's initial unsigmoided refs)
    enc = outs[prompt]["enc_outputs"]
    want_enc = rec["decoder.in.refpoints_unsigmoid"].sigmoid()
    torch.testing.assert_close(enc["pred_boxes"][:, perm], want_enc, atol=TOL, rtol=0)
    # decoder layer 0 (the only aux layer of the 2-layer model): heads on the normed output hs.0
    aux = outs[prompt]["aux_outputs"]
    assert len(aux) == 1
    with torch.no_grad():
        from chatrex.upn.deformable_transformer import inverse_sigmoid

        want_boxes = (model.bbox_embed[0](rec["decoder.hs.0"]) + inverse_sigmoid(rec["decoder.ref.0"])).sigmoid()
        prompt_vec = getattr(model.transformer, prompt).weight
        want_logits = rec["decoder.hs.0"] @ prompt_vec.T
    torch.testing.assert_close(aux[0]["pred_boxes"][:, perm], want_boxes, atol=TOL, rtol=0)
    torch.testing.assert_close(aux[0]["pred_logits"][:, perm], want_logits, atol=TOL, rtol=0)
