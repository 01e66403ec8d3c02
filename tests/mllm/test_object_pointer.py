import pytest
import torch

from chatrex.mllm import ChatRexForConditionalGeneration
from chatrex.mllm.object_pointer import ObjectPointer, point_logits
from chatrex.mllm.presets import with_overrides
from tests.mllm.conftest import greedy_without_cache, random_image

IMAGES = [(0, 40, 30), (1, 30, 50)]
QUESTIONS = ["Please detect dog in this image.", "Detect dog."]
BOXES = [[[2, 3, 30, 25], [10, 5, 38, 28], [0, 0, 40, 30]], [[1, 1, 20, 20]]]


def _inputs(proc, idx=(0, 1)):
    return proc([random_image(*IMAGES[i]) for i in idx], [QUESTIONS[i] for i in idx], [BOXES[i] for i in idx])


def _pointer_model(tiny_model, seed=3, index_bias=8.0):
    """A tiny model with a pointer whose LM favours index tokens (so that generation names boxes)."""
    torch.manual_seed(seed)
    cfg = with_overrides(tiny_model.config, {"object_pointer_dim": 16})
    model = ChatRexForConditionalGeneration(cfg).eval()
    model.config.text_config._attn_implementation = "eager"
    model.config.vision_config._attn_implementation = "eager"
    with torch.no_grad():
        ids = torch.tensor(cfg.object_index_token_ids)
        model.lm_head.weight[ids] += index_bias * model.lm_head.weight[ids].sign()
    return model


def test_point_logits_factorises_an_index_into_any_and_which():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 20)
    ids = torch.tensor([11, 12, 13, 14, 15])
    scores = torch.randn(2, 3, 4)
    key_mask = torch.tensor([[True, True, True, False], [False, False, False, False]])
    out = point_logits(logits, scores, key_mask, ids)
    others = torch.ones(20, dtype=torch.bool)
    others[ids] = False
    assert torch.equal(out[..., others], logits[..., others])  # every other token keeps the LM's logit
    # sample 0: total index mass unchanged, split over its 3 boxes by the scores
    p_lm, p = logits[0].softmax(-1), out[0].softmax(-1)
    torch.testing.assert_close(p[:, ids].sum(-1), p_lm[:, ids].sum(-1))
    torch.testing.assert_close(p[:, ids[:3]] / p[:, ids[:3]].sum(-1, keepdim=True), scores[0, :, :3].softmax(-1))
    assert torch.isneginf(out[0][:, ids[3:]]).all()  # no box 3 or 4 in this prompt
    # sample 1 has no boxes: it can name none, and nothing is NaN
    assert torch.isneginf(out[1][:, ids]).all() and not out.isnan().any()
    # gradients stay finite through the masked rows
    scores.requires_grad_(True)
    target = torch.tensor([[11, 12, 0], [0, 1, 2]])
    loss = torch.nn.functional.cross_entropy(point_logits(logits, scores, key_mask, ids).flatten(0, 1),
                                             target.flatten())
    loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, :2, :3].abs().sum() > 0
    assert scores.grad[:, :, 3].abs().sum() == 0 and scores.grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match="index tokens"):
        point_logits(logits, torch.randn(2, 3, 6), torch.ones(2, 6, dtype=torch.bool), ids)


def test_pointer_keys_follow_the_objfeat_positions():
    torch.manual_seed(0)
    ptr = ObjectPointer(8, 4)
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    keys, key_mask = ptr.keys(hidden, mask)
    assert keys.shape == (2, 3, 4) and key_mask.tolist() == [[True, True, True], [True, False, False]]
    torch.testing.assert_close(keys[0], ptr.key(hidden[0, [1, 3, 4]]))
    torch.testing.assert_close(keys[1, 0], ptr.key(hidden[1, 2]))
    assert keys[1, 1:].abs().sum() == 0
    scores = ptr(hidden[:, -2:], keys)
    torch.testing.assert_close(scores[0, 1, 2], ptr.query(hidden[0, -1]) @ keys[0, 2] / 2.0)


@torch.no_grad()
def test_pointer_model_names_only_its_boxes_and_generates_like_full_recomputation(tiny_model, tiny_processor):
    model = _pointer_model(tiny_model)
    b = _inputs(tiny_processor)
    out = model(**b)
    ids = torch.tensor(model.config.object_index_token_ids)
    assert out.object_keys.shape == (2, 3, 16) and out.object_key_mask.tolist() == [[True] * 3, [True, False, False]]
    assert torch.isneginf(out.logits[0][:, ids[3:]]).all() and torch.isneginf(out.logits[1][:, ids[1:]]).all()
    assert torch.isfinite(out.logits[0][:, ids[:3]]).all()

    s = _inputs(tiny_processor, (0,))
    gen = model.generate(**s, max_new_tokens=6, do_sample=False)
    new = gen[0, s["input_ids"].shape[1]:]
    assert torch.isin(new, ids[:3]).any()  # the biased LM does name boxes, and only the prompt's three
    assert not torch.isin(new, ids[3:]).any()
    assert torch.equal(gen, greedy_without_cache(model, s, 6))  # keys recomputed at every step there

    batch = model.generate(**b, max_new_tokens=6, do_sample=False)[:, b["input_ids"].shape[1]:]
    for i in range(2):  # left padding moves the keys' positions; the answers do not change
        single = _inputs(tiny_processor, (i,))
        assert torch.equal(batch[i], model.generate(**single, max_new_tokens=6, do_sample=False)[0, -6:])
    beams = model.generate(**b, max_new_tokens=4, num_beams=3, do_sample=False)
    assert beams.shape[0] == 2


@torch.no_grad()
def test_pointer_refuses_a_cache_continuation_without_keys(tiny_model, tiny_processor):
    model = _pointer_model(tiny_model)
    s = _inputs(tiny_processor, (0,))
    first = model(**s, use_cache=True)
    nxt = first.logits[:, -1:].argmax(-1)
    mask = torch.cat([s["attention_mask"], torch.ones_like(nxt)], dim=1)
    with pytest.raises(ValueError, match="object_keys"):
        model(input_ids=nxt, attention_mask=mask, past_key_values=first.past_key_values)
    with pytest.raises(ValueError, match="input_ids"):
        model(inputs_embeds=model.get_input_embeddings()(s["input_ids"]), attention_mask=s["attention_mask"])
    step = model(input_ids=nxt, attention_mask=mask, past_key_values=first.past_key_values,
                 object_keys=first.object_keys, object_key_mask=first.object_key_mask)
    assert torch.isneginf(step.logits[0, -1, torch.tensor(model.config.object_index_token_ids[3:])]).all()


def test_pointer_trains_from_an_index_answer_and_round_trips(tiny_model, tiny_processor, tmp_path):
    model = _pointer_model(tiny_model)
    b = tiny_processor([random_image(0, 40, 30)], [QUESTIONS[0]], [BOXES[0]],
                       answers=["<ground>dog</ground><objects><obj2></objects>"])
    loss = model(**b).loss
    loss.backward()
    for module in (model.mm_object_pointer.query, model.mm_object_pointer.key, model.mm_object_projector[0]):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "m")
    loaded = ChatRexForConditionalGeneration.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    assert loaded.config.object_pointer_dim == 16
    assert loaded.config.object_index_token_ids == model.config.object_index_token_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b).logits, model.eval()(**b).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="object_pointer_dim"):
        with_overrides(tiny_model.config, {"object_pointer_dim": -2})


@pytest.mark.parametrize("pointer", [False, True])
def test_logits_at_labels_give_the_full_logits_rows_the_same_loss_and_the_same_gradients(tiny_model, tiny_processor,
                                                                                        pointer):
    from chatrex.mllm.modeling_chatrex import labelled_positions

    model = _pointer_model(tiny_model) if pointer else tiny_model
    b = tiny_processor([random_image(*IMAGES[i]) for i in (0, 1)], QUESTIONS, BOXES,
                       answers=["<ground>dog</ground><objects><obj2><obj0></objects>", "<ground>dog</ground><objects><obj0></objects>"])
    labels = b["labels"].clone()
    labels[0, (labels[0] != -100).nonzero()[0, 0]] = -100  # rows with different numbers of targets

    def run(**kw):
        model.zero_grad(set_to_none=True)
        out = model(**{**b, "labels": labels}, **kw)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    full, full_grads = run()
    part, part_grads = run(logits_at_labels=True)
    rows, cols = labelled_positions(labels)
    assert part.logits.shape == (int((labels[:, 1:] != -100).sum()), full.logits.shape[-1]) == (rows.numel(), full.logits.shape[-1])
    torch.testing.assert_close(part.logits, full.logits[rows, cols], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part.loss, full.loss, atol=1e-6, rtol=1e-6)
    assert set(part_grads) == set(full_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(part_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    if pointer:  # the pointer's keys still come from every <objfeat> of the prompt
        torch.testing.assert_close(part.object_keys, full.object_keys)
        assert part_grads["mm_object_pointer.key.weight"].abs().sum() > 0
    with pytest.raises(ValueError, match="logits_at_labels needs labels"):
        model(**{k: v for k, v in b.items() if k != "labels"}, logits_at_labels=True)
