"""UPN building blocks: the deformable-attention kernel, sine encodings, Swin pieces, proposals."""

from __future__ import annotations

import math

import pytest
import torch

from chatrex.upn.deformable_transformer import gen_encoder_output_proposals, inverse_sigmoid
from chatrex.upn.ms_deform_attn import MSDeformAttn, multi_scale_deformable_attention
from chatrex.upn.position_encoding import PositionEmbeddingSineHW, gen_sineembed_for_position
from chatrex.upn.swin import (
    PatchMerging,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_partition,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _bilinear_reference(vmap: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """vmap (D, H, W); (x, y) normalised; pixel centres at (i + 0.5) / size; zeros outside."""
    D, H, W = vmap.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(D)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out += wy * wx * vmap[:, yy, xx]
    return out


def test_msda_matches_a_loop_reference_and_chunking_is_exact():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 4)]
    B, M, D, Lq, P = 2, 2, 3, 9, 3
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, D, generator=g)
    loc = torch.rand(B, Lq, M, len(shapes), P, 2, generator=g) * 1.4 - 0.2  # some points outside
    w = torch.rand(B, Lq, M, len(shapes), P, generator=g)
    out = multi_scale_deformable_attention(value, torch.tensor(shapes), loc, w)
    assert out.shape == (B, Lq, M * D)
    starts = [0, shapes[0][0] * shapes[0][1]]
    for b in range(B):
        for q in range(Lq):
            for m in range(M):
                acc = torch.zeros(D)
                for lvl, (h, wd) in enumerate(shapes):
                    vmap = value[b, starts[lvl]:starts[lvl] + h * wd, m].T.reshape(D, h, wd)
                    for p in range(P):
                        x, y = loc[b, q, m, lvl, p].tolist()
                        acc += w[b, q, m, lvl, p] * _bilinear_reference(vmap, x, y)
                torch.testing.assert_close(out[b, q, m * D:(m + 1) * D], acc, atol=1e-5, rtol=1e-5)
    for chunk in (1, 4, 100):
        assert torch.equal(multi_scale_deformable_attention(value, shapes, loc, w, chunk_size=chunk), out)


def test_msda_computes_in_fp32_and_returns_the_input_dtype():
    g = torch.Generator().manual_seed(1)
    value = torch.randn(1, 12, 1, 4, generator=g)
    loc = torch.rand(1, 5, 1, 1, 2, 2, generator=g)
    w = torch.rand(1, 5, 1, 1, 2, generator=g)
    ref = multi_scale_deformable_attention(value, [(3, 4)], loc, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = multi_scale_deformable_attention(value.bfloat16(), [(3, 4)], loc.bfloat16(), w.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


def test_msda_rejects_inconsistent_shapes():
    value = torch.zeros(1, 12, 1, 4)
    with pytest.raises(ValueError, match="cover 11 tokens"):
        multi_scale_deformable_attention(value, [(1, 11)], torch.zeros(1, 2, 1, 1, 1, 2), torch.zeros(1, 2, 1, 1, 1))
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1)
    with pytest.raises(ValueError, match="2 or 4 coordinates"):
        attn(torch.zeros(1, 2, 8), torch.zeros(1, 2, 1, 3), torch.zeros(1, 12, 8), torch.tensor([[3, 4]]))


def test_msda_module_4d_reference_scales_offsets_by_box_size():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=1, n_points=1).eval()
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0]))  # offset +1 in x
    shapes = torch.tensor([[4, 4]])
    src = torch.randn(1, 16, 8)
    # box centre (0.25, 0.5), width 0.5: location x = 0.25 + 1/1 * 0.5 * 0.5 = 0.5
    out_box = attn(torch.zeros(1, 1, 8), torch.tensor([[[[0.25, 0.5, 0.5, 0.2]]]]), src, shapes)
    # the same location as a 2-d reference with no offset effect: x = 0.25 + 1/4 = 0.5
    out_pt = attn(torch.zeros(1, 1, 8), torch.tensor([[[[0.25, 0.5]]]]), src, shapes)
    torch.testing.assert_close(out_box, out_pt)
    # padded values are ignored (zeroed)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, :] = True
    out_masked = attn(torch.zeros(1, 1, 8), torch.tensor([[[[0.25, 0.5]]]]), src, shapes, mask)
    torch.testing.assert_close(out_masked, attn.output_proj.bias.expand(1, 1, 8))


def test_query_sine_embedding_layout():
    pos = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    emb = gen_sineembed_for_position(pos, num_pos_feats=128)
    assert emb.shape == (1, 512)
    dim_t = 10000 ** (2 * (torch.arange(128) // 2) / 128)
    for block, coord in enumerate((0.2, 0.1, 0.3, 0.4)):  # order y, x, w, h
        e = coord * 2 * math.pi / dim_t
        part = emb[0, block * 128:(block + 1) * 128]
        torch.testing.assert_close(part[0::2], e[0::2].sin())
        torch.testing.assert_close(part[1::2], e[1::2].cos())
    assert gen_sineembed_for_position(pos[:, :2]).shape == (1, 256)


def test_image_sine_embedding_uses_valid_extent_and_temperature_20():
    mask = torch.zeros(1, 3, 5, dtype=torch.bool)
    mask[:, :, 4:] = True  # last column padded
    pos = PositionEmbeddingSineHW(num_pos_feats=8, temperature_h=20, temperature_w=20)(mask)
    assert pos.shape == (1, 16, 3, 5)
    # x of column j (valid width 4): (j+1)/4*2pi; channel 8 is x with dim_t = 1 -> sin
    for j in range(4):
        assert pos[0, 8, 0, j].item() == pytest.approx(math.sin((j + 1) / (4 + 1e-6) * 2 * math.pi), abs=1e-5)
    # y of row i (valid height 3), channel 3 = cos(e / 20**(2*1/8))
    for i in range(3):
        e = (i + 1) / (3 + 1e-6) * 2 * math.pi
        assert pos[0, 3, i, 0].item() == pytest.approx(math.cos(e / 20 ** (2 / 8)), abs=1e-5)


def test_relative_position_index_formula():
    ws = 3
    idx = relative_position_index(ws)
    assert idx.shape == (9, 9) and idx.dtype == torch.int64
    for i in range(9):
        for j in range(9):
            hi, wi, hj, wj = i // ws, i % ws, j // ws, j % ws
            assert idx[i, j] == (hi - hj + ws - 1) * (2 * ws - 1) + (wi - wj + ws - 1)


def test_shifted_window_mask_regions():
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window is one region
    # the bottom-right window holds 4 regions of 4 tokens: each token sees exactly 4 (its region)
    assert ((mask[3] == 0).sum(-1) == 4).all()


def _window_attention_reference(attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Swin's window attention written out: softmax(q k^T * scale + relative position bias [+ mask]) v."""
    B_, N, C = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(B_, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(N, N, h).permute(2, 0, 1)
    logits = logits + bias
    if mask is not None:
        nW = mask.shape[0]
        logits = (logits.view(B_ // nW, nW, h, N, N) + mask[None, :, None]).view(B_, h, N, N)
    return attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B_, N, C))


@pytest.mark.parametrize("shift", [0, 3])
def test_window_attention_equals_the_written_out_formula(shift):
    """F.scaled_dot_product_attention with the bias (and shifted-window mask) as attn_mask: same values and
    gradients as the explicit formula, in fp32, within 1e-5."""
    torch.manual_seed(0)
    ws, dim, heads, images = 7, 48, 3, 2
    attn = WindowAttention(dim, ws, heads).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0, 1.0)  # larger than the init, so a wrong bias shows
    grid = torch.randn(images, 14, 21, dim)
    x = window_partition(grid, ws).view(-1, ws * ws, dim).requires_grad_(True)
    mask = shifted_window_mask(14, 21, ws, shift) if shift else None
    out = attn(x, mask=mask)
    ref = _window_attention_reference(attn, x, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    (g_out,) = torch.autograd.grad(out.square().sum(), x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g_out, g_ref, atol=1e-5, rtol=0)


def test_patch_merging_order_and_odd_padding():
    pm = PatchMerging(1)
    with torch.no_grad():
        pm.norm.weight.fill_(1.0)
        pm.norm.bias.zero_()
    x = torch.arange(9, dtype=torch.float32).view(1, 9, 1)  # 3x3 grid
    captured = {}
    pm.norm.register_forward_hook(lambda mod, inp, out: captured.setdefault("in", inp[0]))
    out = pm(x, 3, 3)
    assert out.shape == (1, 4, 2)
    # first 2x2 cell: (0,0)=0, (1,0)=3, (0,1)=1, (1,1)=4 ; last cell padded with zeros: 8, 0, 0, 0
    assert captured["in"][0, 0].tolist() == [0.0, 3.0, 1.0, 4.0]
    assert captured["in"][0, 3].tolist() == [8.0, 0.0, 0.0, 0.0]


def test_encoder_proposals_validity_and_padding():
    shapes = torch.tensor([[4, 100]])
    mask = torch.zeros(1, 400, dtype=torch.bool)
    mask.view(1, 4, 100)[:, :, 50:] = True  # right half padded
    memory = torch.ones(1, 400, 2)
    out_mem, props = gen_encoder_output_proposals(memory, mask, shapes)
    grid = props.view(4, 100, 4)
    assert torch.isinf(grid[:, 50:]).all()  # padded
    assert torch.isinf(grid[:, 0]).all()  # cx = 0.5/50 = 0.01: not strictly inside (0.01, 0.99)
    assert torch.isfinite(grid[:, 1:49]).all()
    assert torch.isinf(grid[:, 49]).all()  # cx = 49.5/50 = 0.99
    torch.testing.assert_close(grid[0, 10, 0].sigmoid(), torch.tensor(10.5 / 50))
    torch.testing.assert_close(grid[0, 10, 2].sigmoid(), torch.tensor(0.05))
    assert (out_mem.view(4, 100, 2)[:, 50:] == 0).all() and (out_mem.view(4, 100, 2)[:, 0] == 0).all()
    assert (out_mem.view(4, 100, 2)[:, 1:49] == 1).all()


def test_inverse_sigmoid_clamps():
    x = torch.tensor([0.0, 0.5, 1.0, 2.0])
    y = inverse_sigmoid(x)
    assert y[1] == 0 and torch.isfinite(y).all()
    assert y[0] == pytest.approx(math.log(1e-3 / 1.0)) and y[2] == pytest.approx(math.log(1.0 / 1e-3))
