"""The post-norm residual step y = RMSNorm(α·x + Dropout_p(f)) as one Triton kernel each way.

Forward, one program per row: read f (the branch output) and x (the residual stream), drop f's
elements with a counter-based mask (Philox of the seed and the element's index, `tl.rand`), scale the
kept ones by 1/(1 − p), add α·x, and normalise by the row's root mean square; fp32 arithmetic, one
rounding to the output's dtype (f's and x's promoted, as the reference's addition gives). Kept for the
backward pass: y and the row's 1/rms, no mask. Backward, one program per row: with x̂ = y,

    ds = (dy − y · mean(dy ⊙ y)) / rms,     dx = α · ds,     df = ds ⊙ M / (1 − p)

with the mask M made again from the seed. Under PyTorch operations the same step is a dropout kernel
(and its mask, kept), an addition, and the RMS norm forward; their three backward kernels; so this
saves launches and passes over memory, and the mask's byte per element.

The wrapper is an autograd Function used in eager mode only (zoo/residual.py), so that Triton's
interpreter can run it on CPU tensors in the test suite.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import zoo.kernels

MAX_WIDTH = 16384  # one row per program: wider rows take the PyTorch path


@triton.jit
def _residual_norm_forward(branch, residual, y, rstd, size, branch_stride, residual_stride, alpha, p, scale, eps,
                           seed, DROPOUT: tl.constexpr, SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, SIZE)
    live = col < size
    f = tl.load(branch + row * branch_stride + col, mask=live, other=0.0).to(tl.float32)
    x = tl.load(residual + row * residual_stride + col, mask=live, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = tl.rand(seed, (row * size + col).to(tl.uint32)) >= p
        f = tl.where(keep, f * scale, 0.0)
    s = alpha * x + f
    inverse = tl.rsqrt(tl.sum(s * s, axis=0) / size + eps)
    tl.store(y + row * size + col, (s * inverse).to(y.dtype.element_ty), mask=live)
    tl.store(rstd + row, inverse)


@triton.jit
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
        keep = tl.rand(seed, (row * size + col).to(tl.uint32)) >= p
        ds = tl.where(keep, ds * scale, 0.0)
    tl.store(grad_branch + row * size + col, ds.to(grad_branch.dtype.element_ty), mask=live)


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """t as rows of its last dimension read at unit stride with one stride between rows (a copy only
    where its layout is not), and that stride."""
    flat = t.reshape(-1, t.shape[-1]) if t.numel() else t.reshape(0, t.shape[-1])
    if flat.shape[-1] > 1 and flat.stride(-1) != 1:
        flat = flat.contiguous()
    return flat, flat.stride(0)


class ResidualNorm(torch.autograd.Function):
    """RMSNorm(α·residual + Dropout_p(branch)) with the one-pass kernels; p = 0 draws no mask."""

    @staticmethod
    def forward(ctx, branch: torch.Tensor, residual: torch.Tensor, alpha: float, p: float, eps: float, seed: int):
        size = residual.shape[-1]
        branch_rows, branch_stride = _rows(branch)
        residual_rows, residual_stride = _rows(residual)
        rows = residual_rows.shape[0]
        y = torch.empty(residual.shape, dtype=torch.promote_types(branch.dtype, residual.dtype), device=residual.device)
        rstd = torch.empty(rows, dtype=torch.float32, device=residual.device)
        scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
        if rows:
            with zoo.kernels.triton_launch("residual_norm_forward"):
                _residual_norm_forward[(rows,)](
                    branch_rows, residual_rows, y, rstd, size, branch_stride, residual_stride, float(alpha), float(p),
                    scale, float(eps), seed, DROPOUT=p > 0.0, SIZE=triton.next_power_of_2(size))
        ctx.save_for_backward(y, rstd)
        ctx.options = (branch.dtype, residual.dtype, float(alpha), float(p), scale, seed)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        y, rstd = ctx.saved_tensors
        branch_dtype, residual_dtype, alpha, p, scale, seed = ctx.options
        size = y.shape[-1]
        grad_rows, grad_stride = _rows(grad_y)
        grad_branch = torch.empty(y.shape, dtype=branch_dtype, device=y.device)
        grad_residual = torch.empty(y.shape, dtype=residual_dtype, device=y.device)
        if rstd.numel():
            with zoo.kernels.triton_launch("residual_norm_backward"):
                _residual_norm_backward[(rstd.numel(),)](
                    grad_rows, y, rstd, grad_branch, grad_residual, size, grad_stride, alpha, p, scale, seed,
                    DROPOUT=p > 0.0, SIZE=triton.next_power_of_2(size))
        return grad_branch, grad_residual, None, None, None, None
