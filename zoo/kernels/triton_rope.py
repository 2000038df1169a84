"""RoPE as one Triton kernel: the CUDA implementation of the operator zoo::rope (zoo/kernels/ops.py).

    (x_2i, x_2i+1) ↦ (x_2i·c_i − σ·x_2i+1·s_i,  x_2i+1·c_i + σ·x_2i·s_i)      σ = +1, or −1 for the inverse

with c, s the tables' cos and sin of the pair's angle. The backward pass is the inverse rotation of the
incoming gradient (the same kernel with σ = −1). Arithmetic in fp32, one rounding to x's dtype, like
the CPU kernel. The reference in PyTorch operations (zoo.rope.rope_reference) takes seven kernels
forward and about a dozen through autograd backward, each a trip through GPU memory and a launch
paid on the host; this is one each way.

x is [B, H, S, d], read at any strides across rows (q and k arrive as transposed views of their
projections) and at unit stride within a row; the tables are [B or 1, 1, S, d/2], read the same way.
The output is contiguous, or laid out as x is (`keep_layout`, which the CUDA entry of the registry
asks for: `zoo.kernels.empty_rows_like`, a sequence-first q stays sequence first, so that the flash
attention's output is too and merging its heads is a view). One program rotates `ROWS` rows, ROWS · d/2
pairs.

Triton's interpreter (TRITON_INTERPRET=1, set by the test suite where no GPU is present) runs the same
kernel on CPU tensors, which is how it is checked without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import zoo.kernels

# 8 pairs per thread of 4 warps: at most 62 registers per thread on sm_80/sm_90 (python -m
# zoo.kernels.triton_aot), where 2048 pairs took up to 122
PAIRS_PER_PROGRAM = 1024


@triton.jit
def _rope_rows(x, cos, sin, out, rows, seq, heads, half,
               x_stride_b, x_stride_h, x_stride_s, out_stride_b, out_stride_h, out_stride_s,
               cos_stride_b, cos_stride_s, sin_stride_b, sin_stride_s, sign, ROWS: tl.constexpr, HALF: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    pair = tl.arange(0, HALF)
    position = row % seq
    batch = row // seq // heads
    head = row // seq % heads
    live = (row < rows)[:, None] & (pair < half)[None, :]

    x_row = (batch * x_stride_b + head * x_stride_h + position * x_stride_s)[:, None] + 2 * pair[None, :]
    even = tl.load(x + x_row, mask=live, other=0.0).to(tl.float32)
    odd = tl.load(x + x_row + 1, mask=live, other=0.0).to(tl.float32)
    c = tl.load(cos + (batch * cos_stride_b + position * cos_stride_s)[:, None] + pair[None, :],
                mask=live, other=0.0).to(tl.float32)
    s = tl.load(sin + (batch * sin_stride_b + position * sin_stride_s)[:, None] + pair[None, :],
                mask=live, other=0.0).to(tl.float32) * sign

    out_row = (batch * out_stride_b + head * out_stride_h + position * out_stride_s)[:, None] + 2 * pair[None, :]
    tl.store(out + out_row, (even * c - odd * s).to(out.dtype.element_ty), mask=live)
    tl.store(out + out_row + 1, (odd * c + even * s).to(out.dtype.element_ty), mask=live)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float, keep_layout: bool = False) -> torch.Tensor:
    """The rotation of x [B, H, S, d] (unit stride in d) by tables [B or 1, 1, S, d/2] (unit stride in
    d/2); sign −1 rotates back. Returns a new tensor of x's dtype, contiguous or (`keep_layout`) in x's
    layout."""
    batch, heads, seq, dim = x.shape
    half = dim // 2
    out = zoo.kernels.empty_rows_like(x) if keep_layout else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = batch * heads * seq
    if rows == 0 or half == 0:
        return out
    pairs = triton.next_power_of_2(half)
    per_program = max(1, PAIRS_PER_PROGRAM // pairs)

    def batch_stride(table: torch.Tensor) -> int:
        return 0 if table.shape[0] == 1 else table.stride(0)

    with zoo.kernels.on_device(x.device):  # an operator (zoo::rope) but not ATen's: no device guard of its own
        _rope_rows[(triton.cdiv(rows, per_program),)](
            x, cos, sin, out, rows, seq, heads, half,
            x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
            batch_stride(cos), cos.stride(2), batch_stride(sin), sin.stride(2),
            float(sign), ROWS=per_program, HALF=pairs,
        )
    return out
