"""Softmax attention with the score matrix in memory, for CUDA: its products by cuBLAS (two forward, four
backward), the softmax and the dropout between them as one Triton kernel each way.

    forward:   S = (s·Q) Kᵀ + bias,  P = softmax(S),  O = (c · P ⊙ M) V
    backward:  dP̃ = dO Vᵀ,  dP = c · dP̃ ⊙ M,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),
               dV = (c · P ⊙ M)ᵀ dO,   dQ = s · dS K,   dK = dSᵀ (s·Q)

with M the keep-mask of rate 1 − p and c = 1/(1 − p). This is the function of `zoo.attention.
SoftmaxAttention` (the "matmul" backend) and of sdpa; what differs is where the time goes. A fused
(flash) kernel never writes S and recomputes it backward; it needs q, k and v of one width, so GAU's one
head (q, k 128 wide, v 1536) reaches it only as twelve heads that share q and k
(`zoo.attention.sdpa_shared_qk`), each recomputing q·kᵀ: 1.9× the attention's products forward at
S = 512. With one head the score matrix is small (S values per token, where a 12-head transformer has
12·S), so writing it costs little, and every product here is one large cuBLAS call at q's width or at
v's whole width.

Between the products, one program per row of S: forward it reads the row (in the products' dtype),
computes the softmax in fp32, writes P (kept for the backward pass) and c·P ⊙ M (only for the product
with V; the same as P without dropout), M drawn from the seed and the element's index (the Triton kernels'
shared rule, zoo/kernels/triton_dropout.py) and not stored. P goes to a new tensor, not over S: selective recomputation
(zoo/recompute.py) keeps the product S and runs the softmax again in the backward pass, which must
find S as the product made it. c·P ⊙ M is computed from the rounded P, so that the backward pass,
which makes it again from the kept P, gets the same values. Backward it reads dP̃ and P, makes M
again, writes dS over dP̃ and c·P ⊙ M over P, which the backward pass then no longer needs (so the
kept P is consumed: a second backward pass through the same graph is refused, as autograd refuses one
after any in-place change of a saved tensor). Against `SoftmaxAttention` on CUDA (softmax, a mask
drawn and kept, a `where`, a scale, each a pass over S; five more backward) that is two passes over S
forward and two backward, and no mask kept.

The wrapper is an autograd Function used in eager mode only (the registry's "triton" entry of
"softmax_attention", for `attention_backend="matmul"` on CUDA; under torch.compile `SoftmaxAttention`,
which inductor fuses itself), so that Triton's interpreter runs it on CPU tensors in the test suite.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

import zoo.kernels
from zoo.kernels.triton_dropout import kept, per_step_seed

MAX_WIDTH = 8192  # keys per row: one row per program; longer rows take `SoftmaxAttention`


@per_step_seed
def _softmax_dropout_forward(scores, probs, dropped, size, p, scale, seed, DROPOUT: tl.constexpr, SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, SIZE)
    live = col < size
    a = tl.load(scores + row * size + col, mask=live, other=-float("inf")).to(tl.float32)
    e = tl.exp(a - tl.max(a, axis=0))
    prob = (e / tl.sum(e, axis=0)).to(probs.dtype.element_ty)
    tl.store(probs + row * size + col, prob, mask=live)
    if DROPOUT:
        keep = kept(seed, row * size + col, p)
        tl.store(dropped + row * size + col, tl.where(keep, prob.to(tl.float32) * scale, 0.0)
                 .to(dropped.dtype.element_ty), mask=live)


@per_step_seed
def _softmax_dropout_backward(grad, probs, size, p, scale, seed, DROPOUT: tl.constexpr, SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, SIZE)
    live = col < size
    dp = tl.load(grad + row * size + col, mask=live, other=0.0).to(tl.float32)
    prob = tl.load(probs + row * size + col, mask=live, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = kept(seed, row * size + col, p)
        dp = tl.where(keep, dp * scale, 0.0)
        tl.store(probs + row * size + col, tl.where(keep, prob * scale, 0.0).to(probs.dtype.element_ty), mask=live)
    ds = prob * (dp - tl.sum(dp * prob, axis=0))
    tl.store(grad + row * size + col, ds.to(grad.dtype.element_ty), mask=live)


def _warps(size: int) -> int:
    """Warps per program for a row of `size` keys: 16 values or fewer per thread up to 4096 keys."""
    return min(16, max(4, triton.next_power_of_2(size) // 512))


def softmax_dropout(scores: torch.Tensor, p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row softmax P of the contiguous `scores`, and c·P ⊙ M for the product with V (P itself when p = 0)."""
    size = scores.shape[-1]
    rows = scores.numel() // size if size else 0
    probs = torch.empty_like(scores)
    dropped = torch.empty_like(scores) if p > 0.0 else probs
    if rows:
        with zoo.kernels.triton_launch("softmax_dropout_forward", scores.device):
            _softmax_dropout_forward[(rows,)](scores, probs, dropped, size, float(p), 1.0 / (1.0 - p), seed,
                                              DROPOUT=p > 0.0, SIZE=triton.next_power_of_2(size),
                                              num_warps=_warps(size))
    return probs, dropped


def softmax_dropout_backward(grad: torch.Tensor, probs: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """From dP̃ (`grad`, contiguous, overwritten with dS) and the kept P (overwritten with c·P ⊙ M when p > 0):
    returns c·P ⊙ M, the left operand of dV's product."""
    size = probs.shape[-1]
    rows = probs.numel() // size if size else 0
    if rows:
        with zoo.kernels.triton_launch("softmax_dropout_backward", probs.device):
            _softmax_dropout_backward[(rows,)](grad, probs, size, float(p), 1.0 / (1.0 - p), seed, DROPOUT=p > 0.0,
                                               SIZE=triton.next_power_of_2(size), num_warps=_warps(size))
        if p > 0.0:
            torch.autograd.graph.increment_version(probs)  # a written saved tensor: a second backward is refused
    return probs


class ExplicitSoftmaxAttention(torch.autograd.Function):
    """softmax(s·q·kᵀ + bias) with dropout p (mask from `seed`), times v; q, k [B, H, Sq, d], v [B, H, Sk, dv]
    of one dtype, bias broadcastable to [B, H, Sq, Sk] or None. Runs with autocast off, in v's dtype."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float, p: float, seed: int):
        with torch.autocast(q.device.type, enabled=False):
            q_scaled = q * scale if scale != 1.0 else q
            scores = torch.matmul(q_scaled, k.transpose(-1, -2)).contiguous()  # (matmul's output already is)
            if bias is not None:
                scores.add_(bias)
            probs, dropped = softmax_dropout(scores, p, seed)
            del scores
            out = torch.matmul(dropped, v)
        ctx.save_for_backward(q_scaled, k, v, probs)
        ctx.options = (scale, p, seed)
        return out

    @staticmethod
    @once_differentiable  # the kernels write outside autograd: a double backward is refused, not wrong
    def backward(ctx, grad_out):
        q_scaled, k, v, probs = ctx.saved_tensors
        scale, p, seed = ctx.options
        with torch.autocast(grad_out.device.type, enabled=False):
            grad_out = grad_out.to(v.dtype)
            grad_s = torch.matmul(grad_out, v.transpose(-1, -2)).contiguous()
            dropped = softmax_dropout_backward(grad_s, probs, p, seed)  # grad_s becomes dS
            grad_v = torch.matmul(dropped.transpose(-1, -2), grad_out)
            del dropped
            grad_q = torch.matmul(grad_s, k)
            if scale != 1.0:
                grad_q.mul_(scale)
            grad_k = torch.matmul(grad_s.transpose(-1, -2), q_scaled)
        return grad_q, grad_k, grad_v, None, None, None, None
