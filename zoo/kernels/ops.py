"""The compiled CPU kernels as PyTorch operators (`torch.ops.zoo.*`), so that `torch.compile` sees
through them.

Each kernel is a `torch.library.custom_op` with a fake implementation (the shapes and dtypes of its
outputs, computed without running it) and, where it is differentiated, its backward pass registered
with `register_autograd`. Dynamo then puts one node per kernel into the graph instead of breaking the
graph at an opaque C++ call, and AOTAutograd traces the backward through the registered formulas.

Randomness enters as a tensor: a dropout seed is an int64 tensor of one element drawn from torch's
generator (`seed_tensor`), read inside the operator, so no `.item()` reaches the traced program; the
backward pass regenerates the mask from the same seed.

The attention backward overwrites the saved probabilities with dS (declared as a mutation of
`probs`), so a second backward through the same graph fails; eager mode reports it as such, and
under compilation the functionalised graph keeps a copy instead.

Each operator makes its inputs as contiguous as its kernel reads them, inside its own body: the body
runs on the real tensors, where a `.contiguous()` before the call is dropped from a traced program
wherever the tensor it was traced with was contiguous already (a `torch.export` traced at batch 2
handed the kernel a strided view at batch 1, which `reshape` makes there). On contiguous tensors this
costs nothing. The operators exist for the CPU, except zoo::rope, which has a CUDA implementation
in Triton (zoo/kernels/triton_rope.py) beside the CPU one: the same operator, fake implementation and
backward formula on both devices. Other devices use the PyTorch paths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import attention_kernels, dropout_kernels, elementwise_kernels, empty_rows_like, unit_last_stride


def seed_tensor() -> Tensor:
    """A mask seed drawn from torch's default generator (torch.manual_seed reproduces it), as a tensor."""
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device="cpu")  # not a default device's


def _rows(x: Tensor):
    """The number of rows of x's last dimension, as the kernels count them (none when it is empty)."""
    return 0 if x.shape[-1] == 0 else x.numel() // x.shape[-1]


# ---- RMS norm --------------------------------------------------------------------------------


@torch.library.custom_op("zoo::rms_norm", mutates_args=(), device_types="cpu")
def rms_norm(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(y, rstd): y = x / √(mean(x²) + ε) in x's dtype, rstd fp32 per row."""
    y, rstd = elementwise_kernels().rms_norm_forward(x.contiguous(), eps)
    return y, rstd


@rms_norm.register_fake
def _(x: Tensor, eps: float):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((_rows(x),), dtype=torch.float32)


@torch.library.custom_op("zoo::rms_norm_backward", mutates_args=(), device_types="cpu")
def rms_norm_backward(grad: Tensor, y: Tensor, rstd: Tensor) -> Tensor:
    """dx = rstd · (grad − y · mean(grad · y)) from the forward pass's output and rstd."""
    return elementwise_kernels().rms_norm_backward(grad.contiguous(), y.contiguous(), rstd)


@rms_norm_backward.register_fake
def _(grad: Tensor, y: Tensor, rstd: Tensor):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _rms_norm_setup(ctx, inputs, output):
    # the output, not the input: in a post-norm residual step it is the next block's input, which that
    # block's recomputation keeps anyway (zoo/layers.py), where the sum that came in is dropped
    y, rstd = output
    ctx.save_for_backward(y, rstd)
    ctx.mark_non_differentiable(rstd)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for rstd


def _rms_norm_grad(ctx, grad_y, grad_rstd):
    y, rstd = ctx.saved_tensors
    return rms_norm_backward(grad_y.to(y.dtype), y, rstd), None


rms_norm.register_autograd(_rms_norm_grad, setup_context=_rms_norm_setup)


# ---- RoPE ------------------------------------------------------------------------------------


@torch.library.custom_op("zoo::rope", mutates_args=(), device_types="cpu")
def rope(x: Tensor, cos: Tensor, sin: Tensor, sign: float, keep_layout: bool) -> Tensor:
    """Rotation of x's interleaved pairs by the tables (sign −1: the inverse rotation); x, cos, sin
    read at unit stride in their last dimension (copied where theirs is not), the tables not
    differentiated. The output is contiguous, or with `keep_layout` laid out as x is
    (`empty_rows_like`): what CUDA's attention wants, whose output follows q's layout, where the CPU's
    blocked attention reads [B·H, S, d] rows."""
    return elementwise_kernels().rope(*map(unit_last_stride, (x, cos, sin)), sign, keep_layout)


@rope.register_fake
def _(x: Tensor, cos: Tensor, sin: Tensor, sign: float, keep_layout: bool):
    return empty_rows_like(unit_last_stride(x)) if keep_layout else x.new_empty(x.shape)  # as the kernel gets x


def _rope_setup(ctx, inputs, output):
    _, cos, sin, sign, keep_layout = inputs
    ctx.save_for_backward(cos, sin)
    ctx.sign, ctx.keep_layout = sign, keep_layout


def _rope_grad(ctx, grad):
    cos, sin = ctx.saved_tensors
    return rope(grad.to(cos.dtype), cos, sin, -ctx.sign, ctx.keep_layout), None, None, None, None


rope.register_autograd(_rope_grad, setup_context=_rope_setup)


@rope.register_kernel("cuda")
def _(x: Tensor, cos: Tensor, sin: Tensor, sign: float, keep_layout: bool):
    from .triton_rope import rope as triton_rope

    return triton_rope(*map(unit_last_stride, (x, cos, sin)), sign, keep_layout)


# ---- dropout ---------------------------------------------------------------------------------


@torch.library.custom_op("zoo::masked_scale", mutates_args=(), device_types="cpu")
def masked_scale(x: Tensor, seed: Tensor, threshold: int, scale: float) -> Tensor:
    """x ⊙ M · scale with the counter-based keep-mask M of (seed, row-major index)."""
    return dropout_kernels().masked_scale(x.contiguous(), int(seed.item()), threshold, scale)


@masked_scale.register_fake
def _(x: Tensor, seed: Tensor, threshold: int, scale: float):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _masked_scale_setup(ctx, inputs, output):
    x, seed, threshold, scale = inputs
    ctx.save_for_backward(seed)
    ctx.threshold, ctx.scale, ctx.dtype = threshold, scale, x.dtype


def _masked_scale_grad(ctx, grad):
    (seed,) = ctx.saved_tensors
    return masked_scale(grad.to(ctx.dtype), seed, ctx.threshold, ctx.scale), None, None, None


masked_scale.register_autograd(_masked_scale_grad, setup_context=_masked_scale_setup)


# ---- blocked softmax attention ---------------------------------------------------------------

# Scores per block of the CPU kernel (≈ 1 MB in bf16, about the L2 cache). Measured in bf16 at
# S = 128–2048 on one and two threads: within 4% of the best of 2^16 … 2^20.
BLOCK_ELEMENTS = 2**19


def block_shape(q_len: int, k_len: int, heads: int) -> tuple[int, int]:
    """(heads per block, query rows per block): whole rows of several heads while a head's scores are
    small, else blocks of rows of one head, about BLOCK_ELEMENTS scores each. Chosen inside the
    operators, from the real sizes: chosen before the call, the choice put a guard on the sequence
    length into every traced program (an exported one refused S ≥ 725) and a recompilation where S
    crossed it."""
    heads = max(heads, 1)  # an empty batch still needs a block
    if q_len * k_len == 0:  # no scores: any block will do
        return 1, max(q_len, 1)
    if q_len * k_len >= BLOCK_ELEMENTS:
        return 1, max(16, BLOCK_ELEMENTS // k_len)
    return min(heads, BLOCK_ELEMENTS // (q_len * k_len)), q_len


@torch.library.custom_op("zoo::blocked_attention", mutates_args=(), device_types="cpu")
def blocked_attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, heads: int, seed: Tensor, threshold: int, keep_probs: bool,
) -> tuple[Tensor, Tensor]:
    """(O, P) of softmax(q kᵀ + bias) with the counter-based dropout mask, for q [A, Sq, d] (already
    scaled), k [A, Sk, d], v [A, Sk, dv]; O without the 1/(1 − p) rescaling. P ([A, Sq, Sk]) is kept
    for the backward pass when `keep_probs`, else an empty tensor."""
    probs = q.new_empty((q.shape[0], q.shape[1], k.shape[1]) if keep_probs else (0,))
    group, rows = block_shape(q.shape[1], k.shape[1], q.shape[0])
    out = attention_kernels().attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), bias, heads,
                                                probs if keep_probs else None, int(seed.item()), threshold, group, rows)
    return out, probs


@blocked_attention.register_fake
def _(q, k, v, bias, heads, seed, threshold, keep_probs):
    probs = q.new_empty((q.shape[0], q.shape[1], k.shape[1]) if keep_probs else (0,))
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2])), probs


@torch.library.custom_op("zoo::blocked_attention_backward", mutates_args=("probs",), device_types="cpu")
def blocked_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, probs: Tensor, seed: Tensor, threshold: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dQ, dK, dV) for dO already multiplied by 1/(1 − p); overwrites probs with dS. The blocks are the
    forward pass's: the same sizes choose them."""
    group, rows = block_shape(q.shape[1], k.shape[1], q.shape[0])
    grad_q, grad_k, grad_v = attention_kernels().attention_backward(  # probs: the forward's own output, as made
        grad_out.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), probs, int(seed.item()), threshold,
        group, rows)
    return grad_q, grad_k, grad_v


@blocked_attention_backward.register_fake
def _(grad_out, q, k, v, probs, seed, threshold):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, whatever q, k and v are


def _blocked_attention_setup(ctx, inputs, output):
    q, k, v, _, _, seed, threshold, keep_probs = inputs
    _, probs = output
    ctx.mark_non_differentiable(probs)
    ctx.set_materialize_grads(False)  # no zero-filled [A, Sq, Sk] gradient for the probabilities
    ctx.threshold, ctx.spent = threshold, False
    if keep_probs:
        ctx.save_for_backward(q, k, v, probs, seed)


def _blocked_attention_grad(ctx, grad_out, grad_probs):
    if ctx.spent:
        raise RuntimeError("the blocked attention's backward overwrites its saved probabilities and runs once; "
                           "retain_graph=True with a second backward is not supported (use attention_backend='sdpa')")
    ctx.spent = True
    q, k, v, probs, seed = ctx.saved_tensors
    grads = blocked_attention_backward(grad_out.to(v.dtype), q, k, v, probs, seed, ctx.threshold)
    return (*grads, None, None, None, None, None)


blocked_attention.register_autograd(_blocked_attention_grad, setup_context=_blocked_attention_setup)
