"""GAU's two scale-offsets of one input, q = z ⊙ γ_q and k = z ⊙ γ_k, as one Triton kernel each way.

Forward, one pass over z writes q and k. The scales are rounded to z's dtype first, as the reference
`ScaleOffset` casts them, so that the product (exact in fp32 for bf16 operands) rounds once to the
reference's value. Backward, one pass over the incoming dq and dk and the saved z writes

    dz = dq ⊙ γ_q + dk ⊙ γ_k          (fp32, one rounding)
    dγ_q = Σ_rows dq ⊙ z,  dγ_k = Σ_rows dk ⊙ z      (fp32 partial sums per program, then one sum)

(each program walks a run of blocks of rows, four programs per multiprocessor, so few shares to sum);
so the pair costs three launches instead of the thirteen of two `ScaleOffset`s under autocast (two
weight casts and two products forward; two products, two products and sums, two casts and the sum of
the two dz backward). z is [B, S, s], read at any strides across rows (it is the last s columns of
swish's output) and at unit stride within a row; q, k and dz are contiguous.

The wrapper is an autograd Function, not a torch.library operator: the registry uses it in eager
mode only (under torch.compile inductor fuses the reference itself), and as a Function it runs the
same on CPU tensors in Triton's interpreter, which is how the test suite checks it without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import zoo.kernels

# elements per program forward, per block of rows backward: 16 and 8 per thread of 4 warps, which
# compile to at most 48 and 80 registers per thread on sm_80/sm_90 (`python -m zoo.kernels.triton_aot`);
# 8192 per program took 128 and up to 255, the most there is: two programs' worth of an SM's registers
FORWARD_ELEMENTS = 2048
BACKWARD_ELEMENTS = 1024


@triton.jit
def _scale_pair_forward(z, gamma_q, gamma_k, q, k, rows, seq, size, z_stride_b, z_stride_s,
                        ROWS: tl.constexpr, SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    col = tl.arange(0, SIZE)
    live = (row < rows)[:, None] & (col < size)[None, :]
    z_at = (row // seq * z_stride_b + row % seq * z_stride_s)[:, None] + col[None, :]
    x = tl.load(z + z_at, mask=live, other=0.0).to(tl.float32)
    gq = tl.load(gamma_q + col, mask=col < size, other=0.0).to(z.dtype.element_ty).to(tl.float32)
    gk = tl.load(gamma_k + col, mask=col < size, other=0.0).to(z.dtype.element_ty).to(tl.float32)
    out_at = (row * size)[:, None] + col[None, :]
    tl.store(q + out_at, (x * gq[None, :]).to(q.dtype.element_ty), mask=live)
    tl.store(k + out_at, (x * gk[None, :]).to(k.dtype.element_ty), mask=live)


@triton.jit
def _scale_pair_backward(grad_q, grad_k, z, gamma_q, gamma_k, grad_z, partial, rows, seq, size,
                         gq_stride_b, gq_stride_s, gk_stride_b, gk_stride_s, z_stride_b, z_stride_s, blocks_per_program,
                         ROWS: tl.constexpr, SIZE: tl.constexpr):
    program = tl.program_id(0)
    col = tl.arange(0, SIZE)
    gq = tl.load(gamma_q + col, mask=col < size, other=0.0).to(z.dtype.element_ty).to(tl.float32)
    gk = tl.load(gamma_k + col, mask=col < size, other=0.0).to(z.dtype.element_ty).to(tl.float32)
    grad_gq = tl.zeros([ROWS, SIZE], dtype=tl.float32)
    grad_gk = tl.zeros([ROWS, SIZE], dtype=tl.float32)
    for block in range(0, blocks_per_program):  # this program's run of blocks of ROWS rows
        row = (program.to(tl.int64) * blocks_per_program + block) * ROWS + tl.arange(0, ROWS).to(tl.int64)
        live = (row < rows)[:, None] & (col < size)[None, :]
        batch, position = row // seq, row % seq
        dq = tl.load(grad_q + (batch * gq_stride_b + position * gq_stride_s)[:, None] + col[None, :],
                     mask=live, other=0.0).to(tl.float32)
        dk = tl.load(grad_k + (batch * gk_stride_b + position * gk_stride_s)[:, None] + col[None, :],
                     mask=live, other=0.0).to(tl.float32)
        x = tl.load(z + (batch * z_stride_b + position * z_stride_s)[:, None] + col[None, :],
                    mask=live, other=0.0).to(tl.float32)
        dz = dq * gq[None, :] + dk * gk[None, :]
        tl.store(grad_z + (row * size)[:, None] + col[None, :], dz.to(grad_z.dtype.element_ty), mask=live)
        grad_gq += dq * x
        grad_gk += dk * x
    # this program's share of dγ_q and dγ_k: partial[program, 0 or 1, :]
    tl.store(partial + program * 2 * size + col, tl.sum(grad_gq, axis=0), mask=col < size)
    tl.store(partial + program * 2 * size + size + col, tl.sum(grad_gk, axis=0), mask=col < size)


def _launch_shape(size: int, elements: int) -> tuple[int, int]:
    """(padded row width, rows per block) for rows `size` wide and blocks of about `elements`."""
    padded = triton.next_power_of_2(max(size, 1))
    return padded, max(1, elements // padded)


def scale_pair_forward(z: torch.Tensor, gamma_q: torch.Tensor, gamma_k: torch.Tensor):
    """(z ⊙ γ_q, z ⊙ γ_k) for z [B, S, s] with unit stride in s; new contiguous tensors of z's dtype."""
    batch, seq, size = z.shape
    q, k = (torch.empty((batch, seq, size), dtype=z.dtype, device=z.device) for _ in range(2))
    rows = batch * seq
    if rows and size:
        padded, per_program = _launch_shape(size, FORWARD_ELEMENTS)
        with zoo.kernels.triton_launch("scale_pair_forward"):
            _scale_pair_forward[(triton.cdiv(rows, per_program),)](
                z, gamma_q, gamma_k, q, k, rows, seq, size, z.stride(0), z.stride(1), ROWS=per_program, SIZE=padded)
    return q, k


def scale_pair_backward(grad_q, grad_k, z, gamma_q, gamma_k):
    """(dz, dγ_q, dγ_k): dz in z's dtype, the scales' gradients in fp32 then in their own dtype."""
    batch, seq, size = z.shape
    rows = batch * seq
    grad_z = torch.empty((batch, seq, size), dtype=z.dtype, device=z.device)
    if not rows or not size:
        zeros = torch.zeros(size, dtype=torch.float32, device=z.device)
        return grad_z, zeros.to(gamma_q.dtype), zeros.to(gamma_k.dtype)
    padded, per_block = _launch_shape(size, BACKWARD_ELEMENTS)
    blocks = triton.cdiv(rows, per_block)
    programs = zoo.kernels.resident_programs(blocks, z.device)
    partial = torch.empty((programs, 2, size), dtype=torch.float32, device=z.device)
    with zoo.kernels.triton_launch("scale_pair_backward"):
        _scale_pair_backward[(programs,)](
            grad_q, grad_k, z, gamma_q, gamma_k, grad_z, partial, rows, seq, size,
            grad_q.stride(0), grad_q.stride(1), grad_k.stride(0), grad_k.stride(1), z.stride(0), z.stride(1),
            triton.cdiv(blocks, programs), ROWS=per_block, SIZE=padded)
    grad_gamma = partial.sum(0)
    return grad_z, grad_gamma[0].to(gamma_q.dtype), grad_gamma[1].to(gamma_k.dtype)


class ScalePair(torch.autograd.Function):
    """(z ⊙ γ_q, z ⊙ γ_k) with the one-pass kernels each way; differentiates z and both scales."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, gamma_q: torch.Tensor, gamma_k: torch.Tensor):
        z = zoo.kernels.unit_last_stride(z)
        ctx.save_for_backward(z, gamma_q, gamma_k)
        return scale_pair_forward(z, gamma_q.contiguous(), gamma_k.contiguous())

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor):
        z, gamma_q, gamma_k = ctx.saved_tensors
        grad_q = torch.zeros_like(z) if grad_q is None else zoo.kernels.unit_last_stride(grad_q.to(z.dtype))
        grad_k = torch.zeros_like(z) if grad_k is None else zoo.kernels.unit_last_stride(grad_k.to(z.dtype))
        return scale_pair_backward(grad_q, grad_k, z, gamma_q.contiguous(), gamma_k.contiguous())
