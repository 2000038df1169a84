"""Softmax attention with the score matrix written but not kept, for CUDA: its products by cuBLAS (two
forward, five backward), the softmax and the dropout between them as one Triton kernel each way.

    forward:   S = (s·Q) Kᵀ,  P = softmax(S + bias),  O = (c · P ⊙ M) V
    backward:  S = (s·Q) Kᵀ and P = softmax(S + bias) again,  dP̃ = dO Vᵀ,  dP = c · dP̃ ⊙ M,
               dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dV = (c · P ⊙ M)ᵀ dO,  dQ = s · dS K,  dK = dSᵀ (s·Q)

with M the keep-mask of rate 1 − p and c = 1/(1 − p). This is the function of `zoo.attention.
SoftmaxAttention` (the "matmul" backend) and of sdpa; what differs is where the time goes. A fused
(flash) kernel never writes S and recomputes it backward; it needs q, k and v of one width, so GAU's one
head (q, k 128 wide, v 1536) reaches it only as twelve heads that share q and k
(`zoo.attention.sdpa_shared_qk`), each recomputing q·kᵀ: 1.9× the attention's products forward at
S = 512. With one head the score matrix is small (S values per token, where a 12-head transformer has
12·S), so writing it costs little, and every product here is one large cuBLAS call at q's width or at
v's whole width.

What is kept for the backward pass is q, k, v and the bias (a key mask of [B, 1, 1, Sk]), less than a
flash kernel keeps (one log-sum-exp per row and head), nothing of S values per row. Backward, q·kᵀ is
made again, one product of q's width (128 for GAU: 2.6% of the attention's products, where keeping P
would cost 2·S bytes per token and layer, 24 KiB per token for GAU-α-base at S = 512, 96 at 2048), and
the kernel, which holds a whole row, computes the row's softmax again exactly as the forward pass did
(its maximum and sum, not a stored log-sum-exp, which loses the sum against a masked row's −3.4e38).
Under `recompute_elementwise` that product is marked `recomputed_product`, so the cache keeps neither S
nor P; the backward pass's run of the layer makes q·kᵀ and the forward kernel again (one product of q's
width and one pass over S more, for nothing the backward pass reads: the run cannot stop inside this
Function, whose saved tensors autograd packs once it returns).

Between the products, one program per row of S: forward it reads the row (in the products' dtype), adds
the bias in fp32 (the dtype's minimum for a masked key: in fp16 it would round to −∞ when added in fp16,
and a row of masked keys to NaN), computes the softmax in fp32 and writes c·P ⊙ M (P without dropout) for
the product with V, M drawn from the seed and the element's index (the Triton kernels' shared rule,
zoo/kernels/triton_dropout.py) and never stored. Backward it reads the row of S again, the bias and dP̃,
makes P and M again, and writes dS over dP̃ and c·P ⊙ M over S, the left operand of dV's product: both
tensors of the backward pass's own, so a second backward pass through the same graph (retain_graph)
gives the same gradients. Against `SoftmaxAttention` on CUDA (the bias added, softmax, a mask drawn and
kept, a `where`, a scale, each a pass over S; five more backward), the softmax and the dropout are one
pass over S each way, and no mask is kept.

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
from zoo.recompute import recomputed_product

MAX_WIDTH = 8192  # keys per row: one row per program; longer rows take `SoftmaxAttention`
DEVICE_FUNCTIONS = ("_softmax_row",)  # called by the kernels, not launched (zoo.kernels.triton_aot)


@triton.jit
def _softmax_row(scores, bias, row, col, live, size, q_len, heads, bias_b, bias_h, bias_q, bias_k,
                 BIAS: tl.constexpr):
    """P's row `row` in fp32 (0 beyond the row's end), softmax(S + bias): the bias [B, H, Sq, Sk] read
    through its strides (0 along what it is broadcast over) and added in fp32, so that a masked key's
    dtype minimum never rounds to −∞ (in fp16 it would, and a row of them to NaN)."""
    a = tl.load(scores + row * size + col, mask=live, other=-float("inf")).to(tl.float32)
    if BIAS:
        query = row % q_len
        head = row // q_len % heads
        batch = row // q_len // heads
        a += tl.load(bias + batch * bias_b + head * bias_h + query * bias_q + col.to(tl.int64) * bias_k,
                     mask=live, other=0.0).to(tl.float32)
    e = tl.exp(a - tl.max(a, axis=0))
    return e / tl.sum(e, axis=0)


@per_step_seed
def _softmax_dropout_forward(scores, bias, dropped, size, q_len, heads, bias_b, bias_h, bias_q, bias_k, p, scale,
                             seed, DROPOUT: tl.constexpr, BIAS: tl.constexpr, SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, SIZE)
    live = col < size
    prob = _softmax_row(scores, bias, row, col, live, size, q_len, heads, bias_b, bias_h, bias_q, bias_k, BIAS)
    if DROPOUT:
        prob = tl.where(kept(seed, row * size + col, p), prob * scale, 0.0)
    tl.store(dropped + row * size + col, prob.to(dropped.dtype.element_ty), mask=live)


@per_step_seed
def _softmax_dropout_backward(scores, bias, grad, size, q_len, heads, bias_b, bias_h, bias_q, bias_k, p, scale, seed,
                              DROPOUT: tl.constexpr, BIAS: tl.constexpr, SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, SIZE)
    live = col < size
    prob = _softmax_row(scores, bias, row, col, live, size, q_len, heads, bias_b, bias_h, bias_q, bias_k, BIAS)
    dp = tl.load(grad + row * size + col, mask=live, other=0.0).to(tl.float32)
    dropped = prob
    if DROPOUT:
        keep = kept(seed, row * size + col, p)
        dp = tl.where(keep, dp * scale, 0.0)
        dropped = tl.where(keep, prob * scale, 0.0)
    ds = prob * (dp - tl.sum(dp * prob, axis=0))
    tl.store(grad + row * size + col, ds.to(grad.dtype.element_ty), mask=live)
    tl.store(scores + row * size + col, dropped.to(scores.dtype.element_ty), mask=live)


def _warps(size: int) -> int:
    """Warps per program for a row of `size` keys: 16 values or fewer per thread up to 4096 keys."""
    return min(16, max(4, triton.next_power_of_2(size) // 512))


def _launch_rows(kernel, name: str, scores: torch.Tensor, bias: torch.Tensor | None, written: torch.Tensor, p: float,
                 seed: int) -> None:
    """`kernel` (named `name`, for the record) over every row of the contiguous scores [B, H, Sq, Sk], one
    program per row, writing `written`; the bias read as a view expanded to the scores' shape (stride 0
    along what it is broadcast over)."""
    size = scores.shape[-1]
    rows = scores.numel() // size if size else 0
    if not rows:
        return
    bias_view = scores if bias is None else bias.expand(scores.shape)
    bias_strides = (0, 0, 0, 0) if bias is None else bias_view.stride()
    with zoo.kernels.triton_launch(name, scores.device):
        kernel[(rows,)](scores, bias_view, written, size, scores.shape[-2], scores.shape[-3], *bias_strides, float(p),
                        1.0 / (1.0 - p), seed, DROPOUT=p > 0.0, BIAS=bias is not None,
                        SIZE=triton.next_power_of_2(size), num_warps=_warps(size))


def softmax_dropout(scores: torch.Tensor, bias: torch.Tensor | None, p: float, seed: int) -> torch.Tensor:
    """c·P ⊙ M (P when p = 0) in the scores' dtype, P = softmax(S + bias), from the contiguous scores S
    [B, H, Sq, Sk] (q·kᵀ, before the bias)."""
    dropped = torch.empty_like(scores)
    _launch_rows(_softmax_dropout_forward, "softmax_dropout_forward", scores, bias, dropped, p, seed)
    return dropped


def softmax_dropout_backward(scores: torch.Tensor, bias: torch.Tensor | None, grad: torch.Tensor, p: float,
                             seed: int) -> torch.Tensor:
    """From the scores made again (contiguous, overwritten with c·P ⊙ M, or P when p = 0) and dP̃ (`grad`,
    contiguous, overwritten with dS): returns the scores' tensor, now the left operand of dV's product."""
    _launch_rows(_softmax_dropout_backward, "softmax_dropout_backward", scores, bias, grad, p, seed)
    return scores


class ExplicitSoftmaxAttention(torch.autograd.Function):
    """softmax(s·q·kᵀ + bias) with dropout p (mask from `seed`), times v; q, k [B, H, Sq, d], v [B, H, Sk, dv]
    of one dtype, bias broadcastable to [B, H, Sq, Sk] or None. Runs with autocast off, in v's dtype.
    Keeps q (scaled), k, v and the bias; makes q·kᵀ and the softmax again backward."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float, p: float, seed: int):
        if not q.dim() == k.dim() == v.dim() == 4:
            raise ValueError(f"ExplicitSoftmaxAttention needs q, k [B, H, S, d] and v [B, H, Sk, dv]; got q "
                             f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
        with torch.autocast(q.device.type, enabled=False):
            q_scaled = q * scale if scale != 1.0 else q
            with recomputed_product():  # under recompute_elementwise made again, not kept (module docstring)
                scores = torch.matmul(q_scaled, k.transpose(-1, -2)).contiguous()  # (matmul's output already is)
            dropped = softmax_dropout(scores, bias, p, seed)
            del scores
            out = torch.matmul(dropped, v)
        ctx.save_for_backward(q_scaled, k, v, bias)
        ctx.options = (scale, p, seed)
        return out

    @staticmethod
    @once_differentiable  # the kernels write outside autograd: a double backward is refused, not wrong
    def backward(ctx, grad_out):
        q_scaled, k, v, bias = ctx.saved_tensors
        scale, p, seed = ctx.options
        with torch.autocast(grad_out.device.type, enabled=False):
            grad_out = grad_out.to(v.dtype)
            scores = torch.matmul(q_scaled, k.transpose(-1, -2)).contiguous()
            grad_s = torch.matmul(grad_out, v.transpose(-1, -2)).contiguous()
            dropped = softmax_dropout_backward(scores, bias, grad_s, p, seed)  # grad_s becomes dS
            grad_v = torch.matmul(dropped.transpose(-1, -2), grad_out)
            del dropped, scores
            grad_q = torch.matmul(grad_s, k)
            if scale != 1.0:
                grad_q.mul_(scale)
            grad_k = torch.matmul(grad_s.transpose(-1, -2), q_scaled)
        return grad_q, grad_k, grad_v, None, None, None, None
