"""Casts: one autocast copy of an input that several matrix products read, and fp32 at least for a loss.

(Attention makes its q, k and v products as one where the modules allow, zoo/projections.py; this is
how the modules run where they do not, and how a recomputed block's first product gets its input.)

Under autocast every `F.linear` casts its input to the autocast dtype by itself, and autograd keeps
each cast for the product's backward pass: the q, k and v projections of an attention block each keep
their own bf16 copy of the same fp32 hidden states. `cast_for_products(x, n)` casts once and hands the
copy out n times, so one copy is kept; its backward adds the n gradients in x's dtype, as the n
separate casts' backward passes do (a single shared cast would add them in bf16 instead): the first
cast to x's dtype, the others added into it in place, each widened inside the addition, which gives
the same sums bit for bit in one cast and n − 1 additions (three kernel launches for q, k and v where
the separate casts take five, and fewer bytes: the bf16 gradients are read once). The forward pass is
unchanged bit for bit; the gradients differ only by the order of those fp32 additions against the
residual's (≤ 1e-7 relative, tests/zoo/test_casting.py).
"""

from __future__ import annotations

import torch


class _CastForProducts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype, uses: int):
        ctx.input_dtype = x.dtype
        copy = x.to(dtype)
        # distinct tensors over one storage, so that each use's gradient reaches backward on its own
        return tuple(copy.detach() for _ in range(uses))

    @staticmethod
    def backward(ctx, *grads):
        total = None
        for grad in reversed(grads):  # the order autograd adds separate casts' gradients: last use first
            if grad is None:
                continue
            if total is None:
                total = grad.to(ctx.input_dtype, copy=True)  # a new tensor: the additions go into it
            else:
                total.add_(grad)  # widened inside the addition: the fp32 sum of the cast gradients
        return total, None, None


def cast_for_products(x: torch.Tensor, uses: int) -> tuple[torch.Tensor, ...]:
    """`uses` handles on x for matrix products: one copy in the autocast dtype when autocast would cast
    x (a floating tensor of another dtype), else x itself. Without a gradient to carry back (inference,
    or an x that needs none) the copy is a plain cast, made once where each product would make its own."""
    device = x.device.type
    if not (torch.is_autocast_enabled(device) and x.is_floating_point()):
        return (x,) * uses
    dtype = torch.get_autocast_dtype(device)
    if x.dtype in (dtype, torch.float64):  # autocast leaves fp64 as it is
        return (x,) * uses
    if not (torch.is_grad_enabled() and x.requires_grad):
        return (x.to(dtype),) * uses
    return _CastForProducts.apply(x, dtype, uses)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 where its dtype is narrower (bf16, fp16 logits), else x as it is: a loss or a score
    computed from it keeps fp64 in an fp64 model, where `.float()` would round it to fp32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
