"""The post-norm residual step y = Norm(α·x + Dropout_p(f)) as one Triton kernel each way, Norm the
parameter-free RMS norm (RoFormerV2, GAU-α) or LayerNorm with γ and β (DeepNet).

Forward, one program per row: read f (the branch output) and x (the residual stream), drop f's elements
with a counter-based mask (Philox of the seed and the element's index, zoo/kernels/triton_dropout.py),
scale the kept ones by 1/(1 − p), add α·x (s), and normalise: x̂ = s / rms(s), or x̂ = (s − mean(s)) /
std(s) and y = x̂ ⊙ γ + β; fp32 arithmetic, one rounding to the output's dtype (f's and x's promoted,
as the reference's addition gives). Kept for the backward pass: x̂ (for the RMS norm that is y itself)
and the row's 1/rms or 1/std, no mask. Backward, with dx̂ = dy (RMS) or dy ⊙ γ (LayerNorm),

    RMS:        ds = (dx̂ − x̂ · mean(dx̂ ⊙ x̂)) / rms
    LayerNorm:  ds = (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂)) / std,   dγ = Σ_rows dy ⊙ x̂,   dβ = Σ_rows dy
    dx = α · ds,     df = ds ⊙ M / (1 − p)

with the mask M made again from the seed: one program per row for the RMS norm; for LayerNorm a
program walks a run of rows, keeping its share of dγ and dβ in registers, and one sum of those
shares follows. Under PyTorch operations the same step is a dropout kernel (and its mask, kept), an
addition and the norm (with LayerNorm's casts to fp32 statistics and back), and their backward
kernels; so this saves launches and passes over memory, and the mask's byte per element.

The wrapper is an autograd Function used in eager mode only (zoo/residual.py), so that Triton's
interpreter can run it on CPU tensors in the test suite.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

import zoo.kernels
from zoo.kernels.triton_dropout import kept, per_step_seed

MAX_WIDTH = 16384  # one row per program: wider rows take the PyTorch path


@per_step_seed
def _residual_norm_forward(branch, residual, weight, bias, y, normed, rstd, size, branch_stride, residual_stride, alpha,
                           p, scale, eps, seed, DROPOUT: tl.constexpr, LAYER_NORM: tl.constexpr, SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, SIZE)
    live = col < size
    f = tl.load(branch + row * branch_stride + col, mask=live, other=0.0).to(tl.float32)
    x = tl.load(residual + row * residual_stride + col, mask=live, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = kept(seed, row * size + col, p)
        f = tl.where(keep, f * scale, 0.0)
    s = alpha * x + f
    if LAYER_NORM:
        s = tl.where(live, s - tl.sum(s, axis=0) / size, 0.0)
    inverse = tl.rsqrt(tl.sum(s * s, axis=0) / size + eps)
    tl.store(rstd + row, inverse)
    if LAYER_NORM:
        gamma = tl.load(weight + col, mask=live, other=0.0).to(tl.float32)
        beta = tl.load(bias + col, mask=live, other=0.0).to(tl.float32)
        tl.store(normed + row * size + col, (s * inverse).to(normed.dtype.element_ty), mask=live)
        tl.store(y + row * size + col, (s * inverse * gamma + beta).to(y.dtype.element_ty), mask=live)
    else:
        tl.store(y + row * size + col, (s * inverse).to(y.dtype.element_ty), mask=live)


@per_step_seed
def _residual_norm_backward(grad_y, y, rstd, grad_branch, grad_residual, size, grad_stride, alpha, p, scale, seed,
                            DROPOUT: tl.constexpr, SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, SIZE)
    live = col < size
    g = tl.load(grad_y + row * grad_stride + col, mask=live, other=0.0).to(tl.float32)
    normed = tl.load(y + row * size + col, mask=live, other=0.0).to(tl.float32)
    inverse = tl.load(rstd + row)
    ds = (g - normed * (tl.sum(g * normed, axis=0) / size)) * inverse
    tl.store(grad_residual + row * size + col, (alpha * ds).to(grad_residual.dtype.element_ty), mask=live)
    if DROPOUT:
        keep = kept(seed, row * size + col, p)
        ds = tl.where(keep, ds * scale, 0.0)
    tl.store(grad_branch + row * size + col, ds.to(grad_branch.dtype.element_ty), mask=live)


@per_step_seed
def _residual_layer_norm_backward(grad_y, normed, rstd, weight, grad_branch, grad_residual, partial, rows, size,
                                  grad_stride, rows_per_program, alpha, p, scale, seed, DROPOUT: tl.constexpr,
                                  SIZE: tl.constexpr):
    program = tl.program_id(0)
    col = tl.arange(0, SIZE)
    live = col < size
    gamma = tl.load(weight + col, mask=live, other=0.0).to(tl.float32)
    grad_gamma = tl.zeros([SIZE], dtype=tl.float32)
    grad_beta = tl.zeros([SIZE], dtype=tl.float32)
    first = program.to(tl.int64) * rows_per_program
    for i in range(0, rows_per_program):
        row = first + i
        here = live & (col * 0 + row < rows)  # a vector of the row's bound (a scalar `&` trips the interpreter)
        g = tl.load(grad_y + row * grad_stride + col, mask=here, other=0.0).to(tl.float32)
        n = tl.load(normed + row * size + col, mask=here, other=0.0).to(tl.float32)
        inverse = tl.load(rstd + tl.minimum(row, rows - 1))  # past the last row g = 0 and nothing is stored
        grad_gamma += g * n
        grad_beta += g
        dn = g * gamma
        ds = (dn - tl.sum(dn, axis=0) / size - n * (tl.sum(dn * n, axis=0) / size)) * inverse
        tl.store(grad_residual + row * size + col, (alpha * ds).to(grad_residual.dtype.element_ty), mask=here)
        if DROPOUT:
            keep = kept(seed, row * size + col, p)
            ds = tl.where(keep, ds * scale, 0.0)
        tl.store(grad_branch + row * size + col, ds.to(grad_branch.dtype.element_ty), mask=here)
    # this program's share of dγ and dβ: partial[program, 0 or 1, :]
    tl.store(partial + program * 2 * size + col, grad_gamma, mask=live)
    tl.store(partial + program * 2 * size + size + col, grad_beta, mask=live)


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """t as rows of its last dimension read at unit stride with one stride between rows (a copy only
    where its layout is not), and that stride."""
    flat = zoo.kernels.unit_last_stride(t.reshape(-1, t.shape[-1]) if t.numel() else t.reshape(0, t.shape[-1]))
    return flat, flat.stride(0)


class ResidualNorm(torch.autograd.Function):
    """Norm(α·residual + Dropout_p(branch)): the RMS norm when weight and bias are None, else LayerNorm
    with γ = weight and β = bias; p = 0 draws no mask."""

    @staticmethod
    def forward(ctx, branch: torch.Tensor, residual: torch.Tensor, alpha: float, p: float, eps: float, seed: int,
                weight: torch.Tensor | None, bias: torch.Tensor | None):
        layer_norm = weight is not None
        size = residual.shape[-1]
        branch_rows, branch_stride = _rows(branch)
        residual_rows, residual_stride = _rows(residual)
        rows = residual_rows.shape[0]
        y = torch.empty(residual.shape, dtype=torch.promote_types(branch.dtype, residual.dtype), device=residual.device)
        normed = torch.empty_like(y) if layer_norm else y
        rstd = torch.empty(rows, dtype=torch.float32, device=residual.device)
        scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
        if rows:
            with zoo.kernels.triton_launch("residual_norm_forward", residual.device):
                _residual_norm_forward[(rows,)](
                    branch_rows, residual_rows, weight if layer_norm else y, bias if layer_norm else y, y, normed, rstd,
                    size, branch_stride, residual_stride, float(alpha), float(p), scale, float(eps), seed,
                    DROPOUT=p > 0.0, LAYER_NORM=layer_norm, SIZE=triton.next_power_of_2(size))
        ctx.save_for_backward(normed, rstd, weight, bias)
        ctx.options = (branch.dtype, residual.dtype, float(alpha), float(p), scale, seed)
        return y

    @staticmethod
    @once_differentiable  # the kernels write outside autograd: a double backward is refused, not wrong
    def backward(ctx, grad_y: torch.Tensor):
        normed, rstd, weight, bias = ctx.saved_tensors
        branch_dtype, residual_dtype, alpha, p, scale, seed = ctx.options
        rows, size = rstd.numel(), normed.shape[-1]
        grad_rows, grad_stride = _rows(grad_y)
        grad_branch = torch.empty(normed.shape, dtype=branch_dtype, device=normed.device)
        grad_residual = torch.empty(normed.shape, dtype=residual_dtype, device=normed.device)
        if weight is None:
            if rows:
                with zoo.kernels.triton_launch("residual_norm_backward", normed.device):
                    _residual_norm_backward[(rows,)](
                        grad_rows, normed, rstd, grad_branch, grad_residual, size, grad_stride, alpha, p, scale, seed,
                        DROPOUT=p > 0.0, SIZE=triton.next_power_of_2(size))
            return grad_branch, grad_residual, None, None, None, None, None, None
        programs = zoo.kernels.resident_programs(rows, normed.device)
        fresh = torch.empty if rows else torch.zeros  # with rows, each program writes its share
        partial = fresh((programs, 2, size), dtype=torch.float32, device=normed.device)
        if rows:
            with zoo.kernels.triton_launch("residual_layer_norm_backward", normed.device):
                _residual_layer_norm_backward[(programs,)](
                    grad_rows, normed, rstd, weight, grad_branch, grad_residual, partial, rows, size, grad_stride,
                    triton.cdiv(rows, programs), alpha, p, scale, seed, DROPOUT=p > 0.0,
                    SIZE=triton.next_power_of_2(size))
        grad_weight, grad_bias = partial.sum(0)
        return (grad_branch, grad_residual, None, None, None, None, grad_weight.to(weight.dtype),
                grad_bias.to(bias.dtype))
