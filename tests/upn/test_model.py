"""UPN behaviour on a tiny random config: batching with padding, prompt handling, input checks,
training hooks (aux / encoder / denoising outputs), gradients and gradient checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch

from chatrex.upn.config import upn_tiny
from chatrex.upn.model import UPN, build_upn


def _perturbed_tiny(seed: int = 0) -> UPN:
    torch.manual_seed(seed)
    model = build_upn("upn_tiny").eval()
    with torch.no_grad():  # non-zero heads (their init is zero) so that boxes depend on the input
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread is fastest, and much faster than two on a busy shared machine
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny() -> UPN:
    return _perturbed_tiny()


def _padded_batch():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 72, 100, generator=g)
    b = torch.randn(3, 50, 64, generator=g)
    images = torch.zeros(2, 3, 72, 100)
    mask = torch.ones(2, 72, 100, dtype=torch.bool)
    images[0], mask[0] = a, False
    images[1, :, :50, :64], mask[1, :50, :64] = b, False
    return images, mask


def test_output_shapes_and_ranges(tiny):
    images, mask = _padded_batch()
    with torch.no_grad():
        out = tiny(images, mask, "fine_grained_prompt")
    Q = tiny.config.num_queries
    assert set(out) == {"pred_logits", "pred_boxes"}
    assert out["pred_logits"].shape == (2, Q, 1) and out["pred_boxes"].shape == (2, Q, 4)
    assert torch.isfinite(out["pred_logits"]).all()
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()


def test_padded_batch_equals_images_one_by_one(tiny):
    """Each image of a padded batch gives what it gives alone (same padded canvas and mask): masks,
    valid ratios and top-k are per image. Image 1 is really padded (valid ratios < 1)."""
    images, mask = _padded_batch()
    with torch.no_grad():
        state = tiny.forward_encoder(images, mask)
        assert (state.valid_ratios[1, :3] < 1).all() and (state.valid_ratios[0] == 1).all()
        for prompt in ("fine_grained_prompt", "coarse_grained_prompt"):
            batch = tiny.forward_decoder(state, prompt)
            for i in range(2):
                alone = tiny(images[i:i + 1], mask[i:i + 1], prompt)
                torch.testing.assert_close(batch["pred_logits"][i:i + 1], alone["pred_logits"], atol=1e-5, rtol=0)
                torch.testing.assert_close(batch["pred_boxes"][i:i + 1], alone["pred_boxes"], atol=1e-5, rtol=0)


def test_unpadded_image_without_mask(tiny):
    images, _ = _padded_batch()
    with torch.no_grad():
        a = tiny(images[:1], None, "coarse")
        b = tiny(images[:1], torch.zeros(1, 72, 100, dtype=torch.bool), "coarse_grained_prompt")
    assert torch.equal(a["pred_boxes"], b["pred_boxes"]) and torch.equal(a["pred_logits"], b["pred_logits"])


def test_forward_is_encoder_then_decoder(tiny):
    images, mask = _padded_batch()
    with torch.no_grad():
        full = tiny(images, mask, "fine")
        split = tiny.forward_decoder(tiny.forward_encoder(images, mask), "fine_grained_prompt")
    assert torch.equal(full["pred_boxes"], split["pred_boxes"])
    assert torch.equal(full["pred_logits"], split["pred_logits"])


def test_prompts_select_different_queries(tiny):
    images, mask = _padded_batch()
    with torch.no_grad():
        fine = tiny(images, mask, "fine_grained_prompt", return_aux=True)
        coarse = tiny(images, mask, "coarse_grained_prompt", return_aux=True)
    assert not torch.equal(fine["topk_index"], coarse["topk_index"])


@pytest.mark.parametrize("bad", ["fine_grained", "universal_prompt", "", None, 3])
def test_unknown_prompt_type_is_an_error(tiny, bad):
    images, mask = _padded_batch()
    with pytest.raises(ValueError, match="prompt_type"):
        tiny(images, mask, bad)


def test_bad_inputs_are_named():
    model = build_upn("upn_tiny").eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(3, 64, 64), None, "fine")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 64, 64), None, "fine")
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), None, "fine")
    with pytest.raises(ValueError, match="mask must have shape"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 63, dtype=torch.bool), "fine")
    with pytest.raises(ValueError, match="bool"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64), "fine")
    with pytest.raises(ValueError, match="top-left"):
        model(torch.zeros(1, 3, 64, 64), torch.ones(1, 64, 64, dtype=torch.bool), "fine")
    with pytest.raises(ValueError, match="fewer than"):  # 8x8 image: too few tokens for 20 queries
        model(torch.zeros(1, 3, 8, 8), None, "fine")


def test_odd_sizes_run(tiny):
    with torch.no_grad():
        out = tiny(torch.randn(1, 3, 61, 97), None, "fine")
    assert out["pred_boxes"].shape == (1, tiny.config.num_queries, 4)
    assert torch.isfinite(out["pred_boxes"]).all()


def test_return_aux_structure_and_inference_unchanged(tiny):
    images, mask = _padded_batch()
    with torch.no_grad():
        plain = tiny(images, mask, "fine")
        aux = tiny(images, mask, "fine", return_aux=True)
    assert torch.equal(plain["pred_boxes"], aux["pred_boxes"]) and torch.equal(plain["pred_logits"], aux["pred_logits"])
    Q = tiny.config.num_queries
    assert len(aux["aux_outputs"]) == tiny.config.decoder.num_layers - 1
    for o in aux["aux_outputs"] + [aux["enc_outputs"]]:
        assert o["pred_logits"].shape == (2, Q, 1) and o["pred_boxes"].shape == (2, Q, 4)
    # encoder outputs are the top-k tokens: their logits come sorted, descending, per image
    enc_logits = aux["enc_outputs"]["pred_logits"][..., 0]
    assert (enc_logits[:, :-1] >= enc_logits[:, 1:]).all()


def _dn_inputs(model: UPN, n_dn: int = 6, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    Q, d = model.config.num_queries, model.config.d_model
    content = torch.randn(2, n_dn, d, generator=g)
    refs = torch.randn(2, n_dn, 4, generator=g)
    attn = torch.zeros(n_dn + Q, n_dn + Q, dtype=torch.bool)
    attn[n_dn:, :n_dn] = True  # matching queries must not see the denoising queries
    attn[:3, 3:n_dn] = True  # two denoising groups that do not see each other
    attn[3:n_dn, :3] = True
    return content, refs, attn


def test_denoising_queries_are_split_and_do_not_leak(tiny):
    images, mask = _padded_batch()
    content, refs, attn = _dn_inputs(tiny)
    with torch.no_grad():
        plain = tiny(images, mask, "fine", return_aux=True)
        dn = tiny(images, mask, "fine", return_aux=True, dn_content=content, dn_refpoints=refs, dn_attn_mask=attn)
    Q, n = tiny.config.num_queries, content.shape[1]
    assert dn["dn_meta"] == {"num_dn": n}
    assert dn["pred_boxes"].shape == (2, Q, 4) and dn["dn_outputs"]["pred_boxes"].shape == (2, n, 4)
    assert len(dn["dn_outputs"]["aux_outputs"]) == len(dn["aux_outputs"]) == tiny.config.decoder.num_layers - 1
    # the matching queries cannot attend to the denoising ones: identical results
    torch.testing.assert_close(dn["pred_boxes"], plain["pred_boxes"], atol=1e-5, rtol=0)
    torch.testing.assert_close(dn["pred_logits"], plain["pred_logits"], atol=1e-5, rtol=0)
    # without the mask they do see them, and the results change
    with torch.no_grad():
        leaky = tiny(images, mask, "fine", dn_content=content, dn_refpoints=refs)
    assert not torch.allclose(leaky["pred_logits"], plain["pred_logits"], atol=1e-4)


def test_denoising_group_isolation(tiny):
    """Denoising group 0 (queries 0..2) blocked from group 1 gives the same outputs whatever group 1 holds."""
    images, mask = _padded_batch()
    content, refs, attn = _dn_inputs(tiny)
    content2, refs2 = content.clone(), refs.clone()
    content2[:, 3:] += 1.0
    refs2[:, 3:] -= 0.5
    with torch.no_grad():
        a = tiny(images, mask, "fine", dn_content=content, dn_refpoints=refs, dn_attn_mask=attn)["dn_outputs"]
        b = tiny(images, mask, "fine", dn_content=content2, dn_refpoints=refs2, dn_attn_mask=attn)["dn_outputs"]
    torch.testing.assert_close(a["pred_boxes"][:, :3], b["pred_boxes"][:, :3], atol=1e-5, rtol=0)
    assert not torch.allclose(a["pred_boxes"][:, 3:], b["pred_boxes"][:, 3:], atol=1e-4)


def test_bad_denoising_inputs(tiny):
    images, mask = _padded_batch()
    content, refs, attn = _dn_inputs(tiny)
    with pytest.raises(ValueError, match="dn_refpoints"):
        tiny(images, mask, "fine", dn_content=content)
    with pytest.raises(ValueError, match="dn_refpoints must be"):
        tiny(images, mask, "fine", dn_content=content, dn_refpoints=refs[:, :2])
    with pytest.raises(ValueError, match="dn_attn_mask must be"):
        tiny(images, mask, "fine", dn_content=content, dn_refpoints=refs, dn_attn_mask=attn[:-1])
    with pytest.raises(ValueError, match="without dn_content"):
        tiny(images, mask, "fine", dn_attn_mask=attn)


def _loss(out):
    total = out["pred_logits"].sigmoid().sum() + out["pred_boxes"].sum()
    for o in out["aux_outputs"] + [out["enc_outputs"], out["dn_outputs"]]:
        total = total + o["pred_logits"].sigmoid().sum() + o["pred_boxes"].sum()
    return total


def test_training_is_differentiable_and_checkpointing_gives_same_grads():
    base = _perturbed_tiny(seed=5)
    base.config.backbone.drop_path_rate = 0.0
    images, mask = _padded_batch()
    content, refs, attn = _dn_inputs(base)
    grads = []
    for ckpt in (False, True):
        model = copy.deepcopy(base).train()
        for m in model.modules():  # no stochastic depth, so both runs are deterministic
            if m.__class__.__name__ == "DropPath":
                m.p = 0.0
        if ckpt:
            model.gradient_checkpointing_enable()
        out = model(images, mask, "fine", return_aux=True, dn_content=content, dn_refpoints=refs, dn_attn_mask=attn)
        _loss(out).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, ckpt = grads
    names = set(plain)
    for must in ("backbone.model.backbone.patch_embed.proj.weight", "input_proj.4.0.weight",
                 "transformer.encoder.layers.0.self_attn.value_proj.weight", "transformer.tgt_embed.weight",
                 "transformer.enc_out_bbox_embed.layers.2.weight", "transformer.fine_grained_prompt.weight",
                 "transformer.decoder.bbox_embed.0.layers.2.weight", "transformer.level_embed",
                 "transformer.decoder.layers.1.self_attn.in_proj_weight"):
        assert must in names, must
        assert plain[must].abs().sum() > 0, must
    assert "transformer.coarse_grained_prompt.weight" not in names  # the other prompt is unused
    assert set(ckpt) == names
    for n in names:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-5, rtol=1e-4, msg=n)


def test_config_is_attached_and_presets_build():
    cfg = upn_tiny()
    model = UPN(cfg)
    assert model.config is cfg and model.num_queries == cfg.num_queries
    assert model.bbox_embed[0] is model.transformer.decoder.bbox_embed[-1]
    assert model.transformer.enc_out_bbox_embed is not model.bbox_embed[0]


def test_feature_stages_drop_the_stride_4_level():
    from chatrex.upn.config import ConfigError

    cfg = upn_tiny()
    cfg.feature_stages = [1, 2, 3]
    cfg.num_feature_levels = 4
    cfg.validate()
    torch.manual_seed(0)
    model = build_upn(cfg).eval()
    assert len(model.input_proj) == 4 and model.input_proj[0][0].in_channels == 32  # stage 1: 2 * embed_dim
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        state = model.forward_encoder(images)
        out = model.forward_decoder(state, "coarse_grained_prompt")
    # strides 8, 16, 32 and one extra level at 64 (the full model starts at stride 4: 16 x 24)
    assert state.spatial_shapes.tolist() == [[8, 12], [4, 6], [2, 3], [1, 2]]
    assert out["pred_boxes"].shape == (1, cfg.num_queries, 4)
    full = build_upn("upn_tiny")
    assert full.forward_encoder(images).spatial_shapes.tolist()[0] == [16, 24]
    for bad in ([0, 2], [1, 3, 2], [3, 3], []):
        cfg.feature_stages = bad
        with pytest.raises(ConfigError, match="feature_stages"):
            cfg.validate()
