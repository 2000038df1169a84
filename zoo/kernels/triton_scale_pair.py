"""GAU's two scale-offsets of one input, q = z ⊙ γ_q and k = z ⊙ γ_k, as one Triton kernel each way;
with RoPE's tables, both rotated in the same kernel, and with a row scale ρ, q also multiplied by its
row's logit factor ρ_i · c (softmax_plus: log n / log 512 times 1/√s), so that attention gets its q
and k from one launch.

Forward, one pass over z writes q and k. The scales are rounded to z's dtype first, as the reference
`ScaleOffset` casts them, so that the product (exact in fp32 for bf16 operands) rounds once to the
reference's value; with tables, those rounded products are rotated in fp32 (pairs (2i, 2i+1), as the
RoPE kernel does) and q is multiplied by ρ_i · c before the one rounding of the result. Backward, one
pass over the incoming dq and dk and the saved z: dq scaled by ρ_i · c and both rotated back (the
transpose of the rotation), then

    dz = dq ⊙ γ_q + dk ⊙ γ_k          (fp32, one rounding)
    dγ_q = Σ_rows dq ⊙ z,  dγ_k = Σ_rows dk ⊙ z      (fp32 partial sums per program, then one sum)

(each program walks a run of blocks of rows, four programs per multiprocessor, so few shares to sum);
so the pair costs three launches instead of the thirteen of two `ScaleOffset`s under autocast (two
weight casts and two products forward; two products, two products and sums, two casts and the sum of
the two dz backward), besides RoPE's four and the row factor's four. z is [B, S, s], read at any
strides across rows (it is the last s columns of swish's output) and at unit stride within a row; q,
k and dz are contiguous.

The wrapper is an autograd Function, not a torch.library operator: the registry uses it in eager
mode only (under torch.compile inductor fuses the reference itself), and as a Function it runs the
same on CPU tensors in Triton's interpreter, which is how the test suite checks it without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

import zoo.kernels

# elements per program forward, per block of rows backward (8 and 4 per thread of 4 warps): with the
# rotation and q's row factor they compile to at most 72 registers per thread, without spills, on
# sm_80/sm_90 with Triton 3.4 to 3.9 (`python -m zoo.kernels.triton_aot`); 8192 per program took up to
# 255, the most there is, before either was fused in
FORWARD_ELEMENTS = 1024
BACKWARD_ELEMENTS = 512


@triton.jit
def _scale_pair_forward(z, gamma_q, gamma_k, cos, sin, row_scale, q, k, rows, seq, size, z_stride_b, z_stride_s,
                        cos_stride_b, cos_stride_s, sin_stride_b, sin_stride_s, rs_stride_b, rs_stride_s, q_scale,
                        ROWS: tl.constexpr, HALF: tl.constexpr, ROTATE: tl.constexpr, SCALE_Q: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    pair = tl.arange(0, HALF)
    even, odd = 2 * pair, 2 * pair + 1
    live = (row < rows)[:, None] & (pair < (size + 1) // 2)[None, :]
    live_odd = live & (odd < size)[None, :]
    batch, position = row // seq, row % seq
    z_at = (batch * z_stride_b + position * z_stride_s)[:, None]
    x_even = tl.load(z + z_at + even[None, :], mask=live, other=0.0).to(tl.float32)
    x_odd = tl.load(z + z_at + odd[None, :], mask=live_odd, other=0.0).to(tl.float32)
    dtype = z.dtype.element_ty
    q_even = x_even * tl.load(gamma_q + even, mask=even < size, other=0.0).to(dtype).to(tl.float32)[None, :]
    q_odd = x_odd * tl.load(gamma_q + odd, mask=odd < size, other=0.0).to(dtype).to(tl.float32)[None, :]
    k_even = x_even * tl.load(gamma_k + even, mask=even < size, other=0.0).to(dtype).to(tl.float32)[None, :]
    k_odd = x_odd * tl.load(gamma_k + odd, mask=odd < size, other=0.0).to(dtype).to(tl.float32)[None, :]
    if ROTATE:
        c = tl.load(cos + (batch * cos_stride_b + position * cos_stride_s)[:, None] + pair[None, :], mask=live,
                    other=0.0).to(tl.float32)
        s = tl.load(sin + (batch * sin_stride_b + position * sin_stride_s)[:, None] + pair[None, :], mask=live,
                    other=0.0).to(tl.float32)
        # the products rounded to z's dtype, as the reference's scale-offsets hand them to the rotation
        q_even, q_odd = q_even.to(dtype).to(tl.float32), q_odd.to(dtype).to(tl.float32)
        k_even, k_odd = k_even.to(dtype).to(tl.float32), k_odd.to(dtype).to(tl.float32)
        q_even, q_odd = q_even * c - q_odd * s, q_odd * c + q_even * s
        k_even, k_odd = k_even * c - k_odd * s, k_odd * c + k_even * s
    if SCALE_Q:  # q's per-row logit factor, row_scale · q_scale
        factor = (tl.load(row_scale + batch * rs_stride_b + position * rs_stride_s, mask=row < rows,
                          other=0.0).to(tl.float32) * q_scale)[:, None]
        q_even, q_odd = q_even * factor, q_odd * factor
    out_at = (row * size)[:, None]
    tl.store(q + out_at + even[None, :], q_even.to(q.dtype.element_ty), mask=live)
    tl.store(q + out_at + odd[None, :], q_odd.to(q.dtype.element_ty), mask=live_odd)
    tl.store(k + out_at + even[None, :], k_even.to(k.dtype.element_ty), mask=live)
    tl.store(k + out_at + odd[None, :], k_odd.to(k.dtype.element_ty), mask=live_odd)


@triton.jit
def _scale_pair_backward(grad_q, grad_k, z, gamma_q, gamma_k, cos, sin, row_scale, grad_z, partial, rows, seq, size,
                         gq_stride_b, gq_stride_s, gk_stride_b, gk_stride_s, z_stride_b, z_stride_s,
                         cos_stride_b, cos_stride_s, sin_stride_b, sin_stride_s, rs_stride_b, rs_stride_s, q_scale,
                         blocks_per_program, ROWS: tl.constexpr, HALF: tl.constexpr, ROTATE: tl.constexpr,
                         SCALE_Q: tl.constexpr):
    program = tl.program_id(0)
    pair = tl.arange(0, HALF)
    even, odd = 2 * pair, 2 * pair + 1
    dtype = z.dtype.element_ty
    gq_even = tl.load(gamma_q + even, mask=even < size, other=0.0).to(dtype).to(tl.float32)[None, :]
    gq_odd = tl.load(gamma_q + odd, mask=odd < size, other=0.0).to(dtype).to(tl.float32)[None, :]
    gk_even = tl.load(gamma_k + even, mask=even < size, other=0.0).to(dtype).to(tl.float32)[None, :]
    gk_odd = tl.load(gamma_k + odd, mask=odd < size, other=0.0).to(dtype).to(tl.float32)[None, :]
    grad_gq_even = tl.zeros([ROWS, HALF], dtype=tl.float32)
    grad_gq_odd = tl.zeros([ROWS, HALF], dtype=tl.float32)
    grad_gk_even = tl.zeros([ROWS, HALF], dtype=tl.float32)
    grad_gk_odd = tl.zeros([ROWS, HALF], dtype=tl.float32)
    for block in range(0, blocks_per_program):  # this program's run of blocks of ROWS rows
        row = (program.to(tl.int64) * blocks_per_program + block) * ROWS + tl.arange(0, ROWS).to(tl.int64)
        live = (row < rows)[:, None] & (pair < (size + 1) // 2)[None, :]
        live_odd = live & (odd < size)[None, :]
        batch, position = row // seq, row % seq
        gq_at = (batch * gq_stride_b + position * gq_stride_s)[:, None]
        gk_at = (batch * gk_stride_b + position * gk_stride_s)[:, None]
        z_at = (batch * z_stride_b + position * z_stride_s)[:, None]
        dq_even = tl.load(grad_q + gq_at + even[None, :], mask=live, other=0.0).to(tl.float32)
        dq_odd = tl.load(grad_q + gq_at + odd[None, :], mask=live_odd, other=0.0).to(tl.float32)
        dk_even = tl.load(grad_k + gk_at + even[None, :], mask=live, other=0.0).to(tl.float32)
        dk_odd = tl.load(grad_k + gk_at + odd[None, :], mask=live_odd, other=0.0).to(tl.float32)
        if SCALE_Q:
            factor = (tl.load(row_scale + batch * rs_stride_b + position * rs_stride_s, mask=row < rows,
                              other=0.0).to(tl.float32) * q_scale)[:, None]
            dq_even, dq_odd = dq_even * factor, dq_odd * factor
        if ROTATE:  # the gradient rotated back: the transpose of the rotation
            c = tl.load(cos + (batch * cos_stride_b + position * cos_stride_s)[:, None] + pair[None, :], mask=live,
                        other=0.0).to(tl.float32)
            s = tl.load(sin + (batch * sin_stride_b + position * sin_stride_s)[:, None] + pair[None, :], mask=live,
                        other=0.0).to(tl.float32)
            dq_even, dq_odd = dq_even * c + dq_odd * s, dq_odd * c - dq_even * s
            dk_even, dk_odd = dk_even * c + dk_odd * s, dk_odd * c - dk_even * s
        x_even = tl.load(z + z_at + even[None, :], mask=live, other=0.0).to(tl.float32)
        x_odd = tl.load(z + z_at + odd[None, :], mask=live_odd, other=0.0).to(tl.float32)
        out_at = (row * size)[:, None]
        tl.store(grad_z + out_at + even[None, :], (dq_even * gq_even + dk_even * gk_even).to(grad_z.dtype.element_ty),
                 mask=live)
        tl.store(grad_z + out_at + odd[None, :], (dq_odd * gq_odd + dk_odd * gk_odd).to(grad_z.dtype.element_ty),
                 mask=live_odd)
        grad_gq_even += dq_even * x_even
        grad_gq_odd += dq_odd * x_odd
        grad_gk_even += dk_even * x_even
        grad_gk_odd += dk_odd * x_odd
    # this program's share of dγ_q and dγ_k: partial[program, 0 or 1, :]
    share = partial + program * 2 * size
    tl.store(share + even, tl.sum(grad_gq_even, axis=0), mask=even < size)
    tl.store(share + odd, tl.sum(grad_gq_odd, axis=0), mask=odd < size)
    tl.store(share + size + even, tl.sum(grad_gk_even, axis=0), mask=even < size)
    tl.store(share + size + odd, tl.sum(grad_gk_odd, axis=0), mask=odd < size)


def _launch_shape(size: int, elements: int) -> tuple[int, int]:
    """(padded number of pairs, rows per block) for rows `size` wide and blocks of about `elements`."""
    pairs = triton.next_power_of_2(max((size + 1) // 2, 1))
    return pairs, max(1, elements // (2 * pairs))


def _row_strides(table: torch.Tensor | None) -> tuple[int, int]:
    """(batch stride, position stride) of a [B or 1, 1, S or 1, ·] table (RoPE's cos and sin, q's row
    scale); 0 along a dimension of size 1, which every batch or position shares."""
    if table is None:
        return 0, 0
    return (0 if table.shape[0] == 1 else table.stride(0)), (0 if table.shape[2] == 1 else table.stride(2))


def scale_pair_forward(z: torch.Tensor, gamma_q: torch.Tensor, gamma_k: torch.Tensor, cos=None, sin=None,
                       row_scale=None, q_scale: float = 1.0):
    """(z ⊙ γ_q, z ⊙ γ_k) for z [B, S, s] with unit stride in s, each rotated by the tables [B or 1, 1, S,
    s/2] (unit stride in s/2) when they are given, and q multiplied by row_scale [B or 1, 1, S or 1, 1] ·
    q_scale when that is given; new contiguous tensors of z's dtype."""
    batch, seq, size = z.shape
    q, k = (torch.empty((batch, seq, size), dtype=z.dtype, device=z.device) for _ in range(2))
    rows = batch * seq
    if rows and size:
        pairs, per_program = _launch_shape(size, FORWARD_ELEMENTS)
        with zoo.kernels.triton_launch("scale_pair_forward", z.device):
            _scale_pair_forward[(triton.cdiv(rows, per_program),)](
                z, gamma_q, gamma_k, z if cos is None else cos, z if sin is None else sin,
                z if row_scale is None else row_scale, q, k, rows, seq, size, z.stride(0), z.stride(1),
                *_row_strides(cos), *_row_strides(sin), *_row_strides(row_scale), float(q_scale),
                ROWS=per_program, HALF=pairs, ROTATE=cos is not None, SCALE_Q=row_scale is not None)
    return q, k


def scale_pair_backward(grad_q, grad_k, z, gamma_q, gamma_k, cos=None, sin=None, row_scale=None, q_scale: float = 1.0):
    """(dz, dγ_q, dγ_k): dz in z's dtype, the scales' gradients in fp32 then in their own dtype; dq and
    dk are the gradients of q and k as the forward pass made them (rotated, q scaled)."""
    batch, seq, size = z.shape
    rows = batch * seq
    grad_z = torch.empty((batch, seq, size), dtype=z.dtype, device=z.device)
    if not rows or not size:
        zeros = torch.zeros(size, dtype=torch.float32, device=z.device)
        return grad_z, zeros.to(gamma_q.dtype), zeros.to(gamma_k.dtype)
    pairs, per_block = _launch_shape(size, BACKWARD_ELEMENTS)
    blocks = triton.cdiv(rows, per_block)
    programs = zoo.kernels.resident_programs(blocks, z.device)
    partial = torch.empty((programs, 2, size), dtype=torch.float32, device=z.device)
    with zoo.kernels.triton_launch("scale_pair_backward", z.device):
        _scale_pair_backward[(programs,)](
            grad_q, grad_k, z, gamma_q, gamma_k, z if cos is None else cos, z if sin is None else sin,
            z if row_scale is None else row_scale, grad_z, partial, rows, seq, size,
            grad_q.stride(0), grad_q.stride(1), grad_k.stride(0), grad_k.stride(1), z.stride(0), z.stride(1),
            *_row_strides(cos), *_row_strides(sin), *_row_strides(row_scale), float(q_scale),
            triton.cdiv(blocks, programs), ROWS=per_block, HALF=pairs, ROTATE=cos is not None,
            SCALE_Q=row_scale is not None)
    grad_gamma = partial.sum(0)
    return grad_z, grad_gamma[0].to(gamma_q.dtype), grad_gamma[1].to(gamma_k.dtype)


class ScalePair(torch.autograd.Function):
    """(z ⊙ γ_q, z ⊙ γ_k), rotated by RoPE's tables cos and sin when given, q multiplied by row_scale ·
    q_scale when row_scale is given (the tables and the scale are not differentiated), with the
    one-pass kernels each way; differentiates z and both scales."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, gamma_q: torch.Tensor, gamma_k: torch.Tensor, cos: torch.Tensor | None = None,
                sin: torch.Tensor | None = None, row_scale: torch.Tensor | None = None, q_scale: float = 1.0):
        z = zoo.kernels.unit_last_stride(z)
        if cos is not None:
            cos, sin = zoo.kernels.unit_last_stride(cos), zoo.kernels.unit_last_stride(sin)
        ctx.save_for_backward(z, gamma_q, gamma_k, cos, sin, row_scale)
        ctx.q_scale = q_scale
        return scale_pair_forward(z, gamma_q.contiguous(), gamma_k.contiguous(), cos, sin, row_scale, q_scale)

    @staticmethod
    @once_differentiable  # the kernel writes outside autograd: a double backward is refused, not wrong
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor):
        z, gamma_q, gamma_k, cos, sin, row_scale = ctx.saved_tensors
        grad_q = torch.zeros_like(z) if grad_q is None else zoo.kernels.unit_last_stride(grad_q.to(z.dtype))
        grad_k = torch.zeros_like(z) if grad_k is None else zoo.kernels.unit_last_stride(grad_k.to(z.dtype))
        grads = scale_pair_backward(grad_q, grad_k, z, gamma_q.contiguous(), gamma_k.contiguous(), cos, sin,
                                    row_scale, ctx.q_scale)
        return *grads, None, None, None, None
