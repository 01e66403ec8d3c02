"""Fused multi-scale deformable attention for GPUs, written in Triton (forward and backward).

One program handles ``BLOCK`` (query, head) rows and all ``D`` channels of a head. For every level and
point it computes the bilinear corners, gathers the four corner vectors straight from ``value``
(B, S, M, D) and accumulates them with the attention weight; nothing of size Lq x L x P x D is ever
written to memory. The backward pass recomputes the corners, scatters the value gradient with fp32
atomics and reduces the location and attention-weight gradients over the channels.

Semantics are those of ``chatrex.upn.ms_deform_attn.multi_scale_deformable_attention`` (bilinear,
zero padding, ``align_corners=False``, fp32 accumulation). ``tests/upn/test_ms_deform_attn_triton.py``
checks both passes against it through Triton's interpreter on CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# Sizes change with every batch (image sizes differ). Triton specialises integer arguments on their
# divisibility by 16, so each new combination compiled a new variant: the likely cause of the slow
# first minutes of training seen on the GPU (benchmarks/RESULTS.md). Not yet re-measured there.
_SIZES = ["n_rows", "S", "Lq"]


@triton.jit(do_not_specialize=_SIZES)
def _msda_fwd_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
                     n_rows, S, Lq,
                     M: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
                     BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)  # row = (b * Lq + q) * M + m
    row_ok = rows < n_rows
    m = rows % M
    b = rows // (Lq * M)
    d = tl.arange(0, DP)
    d_ok = d < D
    acc = tl.zeros([BLOCK, DP], dtype=tl.float32)
    for lvl in tl.static_range(L):
        H = tl.load(shapes_ptr + 2 * lvl)
        W = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        for pt in tl.static_range(P):
            idx = (rows * L + lvl) * P + pt
            lx = tl.load(loc_ptr + 2 * idx, mask=row_ok, other=0.0)
            ly = tl.load(loc_ptr + 2 * idx + 1, mask=row_ok, other=0.0)
            a = tl.load(attn_ptr + idx, mask=row_ok, other=0.0)
            # pixel coordinates (align_corners=False); clamping keeps the int cast finite and changes
            # nothing: every corner of a clamped point is outside the map.
            x = tl.minimum(tl.maximum(lx * W - 0.5, -2.0), W + 1.0)
            y = tl.minimum(tl.maximum(ly * H - 0.5, -2.0), H + 1.0)
            x0f = tl.floor(x)
            y0f = tl.floor(y)
            fx = x - x0f
            fy = y - y0f
            x0 = x0f.to(tl.int64)
            y0 = y0f.to(tl.int64)
            for corner in tl.static_range(4):
                dx = corner % 2
                dy = corner // 2
                xi = x0 + dx
                yi = y0 + dy
                wx = dx * fx + (1 - dx) * (1.0 - fx)
                wy = dy * fy + (1 - dy) * (1.0 - fy)
                ok = row_ok & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
                s = start + yi * W + xi
                offs = ((b * S + s) * M + m) * D
                v = tl.load(value_ptr + offs[:, None] + d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
                acc += (a * wx * wy)[:, None] * v.to(tl.float32)
    tl.store(out_ptr + rows[:, None] * D + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=_SIZES)
def _msda_bwd_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr,
                     grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
                     n_rows, S, Lq,
                     M: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
                     BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    row_ok = rows < n_rows
    m = rows % M
    b = rows // (Lq * M)
    d = tl.arange(0, DP)
    d_ok = d < D
    go = tl.load(grad_out_ptr + rows[:, None] * D + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    for lvl in tl.static_range(L):
        H = tl.load(shapes_ptr + 2 * lvl)
        W = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        for pt in tl.static_range(P):
            idx = (rows * L + lvl) * P + pt
            lx = tl.load(loc_ptr + 2 * idx, mask=row_ok, other=0.0)
            ly = tl.load(loc_ptr + 2 * idx + 1, mask=row_ok, other=0.0)
            a = tl.load(attn_ptr + idx, mask=row_ok, other=0.0)
            x = tl.minimum(tl.maximum(lx * W - 0.5, -2.0), W + 1.0)
            y = tl.minimum(tl.maximum(ly * H - 0.5, -2.0), H + 1.0)
            x0f = tl.floor(x)
            y0f = tl.floor(y)
            fx = x - x0f
            fy = y - y0f
            x0 = x0f.to(tl.int64)
            y0 = y0f.to(tl.int64)
            sample = tl.zeros([BLOCK, DP], dtype=tl.float32)
            dsx = tl.zeros([BLOCK, DP], dtype=tl.float32)  # d sample / d fx
            dsy = tl.zeros([BLOCK, DP], dtype=tl.float32)  # d sample / d fy
            gv = a[:, None] * go  # gradient reaching the sampled vector
            for corner in tl.static_range(4):
                dx = corner % 2
                dy = corner // 2
                xi = x0 + dx
                yi = y0 + dy
                wx = dx * fx + (1 - dx) * (1.0 - fx)
                wy = dy * fy + (1 - dy) * (1.0 - fy)
                sx = 2.0 * dx - 1.0
                sy = 2.0 * dy - 1.0
                ok = row_ok & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
                s = start + yi * W + xi
                offs = ((b * S + s) * M + m) * D
                mask2 = ok[:, None] & d_ok[None, :]
                v = tl.load(value_ptr + offs[:, None] + d[None, :], mask=mask2, other=0.0).to(tl.float32)
                sample += (wx * wy)[:, None] * v
                dsx += (sx * wy)[:, None] * v
                dsy += (sy * wx)[:, None] * v
                tl.atomic_add(grad_value_ptr + offs[:, None] + d[None, :], (wx * wy)[:, None] * gv, mask=mask2)
            tl.store(grad_attn_ptr + idx, tl.sum(sample * go, axis=1), mask=row_ok)
            tl.store(grad_loc_ptr + 2 * idx, tl.sum(dsx * gv, axis=1) * W, mask=row_ok)
            tl.store(grad_loc_ptr + 2 * idx + 1, tl.sum(dsy * gv, axis=1) * H, mask=row_ok)


BLOCK_ROWS = 64  # (query, head) rows per program


def _grid(n_rows: int) -> tuple[int]:
    return (triton.cdiv(n_rows, BLOCK_ROWS),)


class _MSDAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, shapes, starts, locations, weights):
        B, S, M, D = value.shape
        _, Lq, _, L, P, _ = locations.shape
        value = value.contiguous()
        locations = locations.float().contiguous()
        weights = weights.float().contiguous()
        out = torch.empty((B, Lq, M, D), device=value.device, dtype=torch.float32)
        n_rows = B * Lq * M
        if n_rows:
            _msda_fwd_kernel[_grid(n_rows)](value, shapes, starts, locations, weights, out, n_rows, S, Lq,
                                      M=M, D=D, DP=triton.next_power_of_2(D), L=L, P=P, BLOCK=BLOCK_ROWS)
        ctx.save_for_backward(value, shapes, starts, locations, weights)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        B, S, M, D = value.shape
        _, Lq, _, L, P, _ = locations.shape
        grad_out = grad_out.float().contiguous()
        grad_value = torch.zeros(value.shape, device=value.device, dtype=torch.float32)
        grad_loc = torch.empty_like(locations)
        grad_attn = torch.empty_like(weights)
        n_rows = B * Lq * M
        if n_rows:
            _msda_bwd_kernel[_grid(n_rows)](value, shapes, starts, locations, weights, grad_out,
                                      grad_value, grad_loc, grad_attn, n_rows, S, Lq,
                                      M=M, D=D, DP=triton.next_power_of_2(D), L=L, P=P, BLOCK=BLOCK_ROWS)
        else:
            grad_loc.zero_()
            grad_attn.zero_()
        return grad_value.to(value.dtype), None, None, grad_loc, grad_attn


def multi_scale_deformable_attention_triton(value: torch.Tensor, shapes: list[tuple[int, int]],
                                            sampling_locations: torch.Tensor,
                                            attention_weights: torch.Tensor) -> torch.Tensor:
    """Fused deformable attention. Shapes as in ``multi_scale_deformable_attention``.

    Returns:
        (B, Lq, M*D) float32.
    """
    B, S, M, D = value.shape
    Lq = sampling_locations.shape[1]
    dev = value.device
    shape_t = torch.tensor(shapes, dtype=torch.int64).reshape(-1, 2)
    starts = torch.cat([shape_t.new_zeros(1), (shape_t[:, 0] * shape_t[:, 1]).cumsum(0)[:-1]])
    out = _MSDAFunction.apply(value, shape_t.to(dev), starts.to(dev), sampling_locations, attention_weights)
    return out.view(B, Lq, M * D)
