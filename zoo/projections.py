"""Several linear projections of one input as one matrix product (attention's q, k and v).

    q, k, v = project(x, (q_proj, k_proj, v_proj))

The three `nn.Linear`s keep their parameters and names (checkpoints, converters, growth and weight
decay see no change); the forward pass concatenates their weights (and biases) and makes one product
x·[W_q; W_k; W_v]ᵀ, whose column blocks are q, k and v. Against three products under autocast that is,
per attention block, two products fewer each way and fewer casts: forward one cast of the concatenated
weights instead of three; backward one product for x's gradient (summed over the three inside it, in
fp32) instead of three and their two additions, one weight-gradient product and one cast back to fp32
instead of three each. The block's product is three times as wide, which suits a GPU better at
768-wide layers.

What stays in memory is unchanged: the product keeps the input's autocast copy and the concatenated
weight copy, as the three products kept one input copy (zoo/casting.py) and three weight copies; q and
k are views of the product's output that RoPE reads and does not keep; v, which attention keeps for its
backward pass, is copied out, so that the output's q and k columns are not kept alive with it. The
backward pass puts the three gradients side by side again in one operation (`_ColumnBlocks`), where
autograd's slices would fill a zero tensor per block and add them.

The one product stands in for the modules' own forward passes, so it applies only where nothing else
would see those (`runs_unwatched`): plain `nn.Linear`s (not a PEFT or quantised subclass), without hooks
of their own (DeepSpeed's ZeRO-3 gathers partitioned weights in them) or global module hooks or a forward
replaced on the instance (accelerate's offloading), with weights of one dtype and device (not "meta") and
biases on all or none. Elsewhere each module runs itself, on one shared autocast copy of the input
(`cast_for_products`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks

from .casting import cast_for_products


class _ColumnBlocks(torch.autograd.Function):
    """y [..., Σ widths] → its column blocks: views, except the last, a copy (attention keeps v, and a
    view would keep all of y); backward, the blocks' gradients side by side in one operation."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, widths: tuple[int, ...]):
        ctx.widths = widths
        *views, last = y.split(widths, dim=-1)
        return (*views, last.clone())

    @staticmethod
    def backward(ctx, *grads):
        like = next(g for g in grads if g is not None)
        blocks = [g if g is not None else like.new_zeros(like.shape[:-1] + (width,))
                  for g, width in zip(grads, ctx.widths)]
        return torch.cat(blocks, dim=-1), None


def runs_unwatched(module: nn.Module) -> bool:
    """Whether nothing but the module itself would see its forward pass run, so that reading its weights
    may stand in for calling it: no global module hooks, none of its own (DeepSpeed's ZeRO-3 gathers
    partitioned weights in the module's hooks), no forward replaced on the instance (accelerate's
    offloading, device_map with "cpu" or "disk", sets `_hf_hook` and wraps `forward`, which moves the
    weights in for the call while the module's own weight stays on "meta")."""
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks or \
            module_hooks._global_backward_hooks or module_hooks._global_backward_pre_hooks:
        return False
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or hasattr(module, "_hf_hook") or "forward" in vars(module))


def one_product_applies(linears) -> bool:
    """Whether `project` may make one product for these modules (see the module docstring)."""
    first = linears[0].weight
    with_bias = linears[0].bias is not None
    return first.device.type != "meta" and all(
        type(linear) is nn.Linear and runs_unwatched(linear) and linear.weight.dtype == first.dtype
        and linear.weight.device == first.device and (linear.bias is not None) == with_bias for linear in linears)


def project(x: torch.Tensor, linears) -> tuple[torch.Tensor, ...]:
    """(linear(x) for linear in linears), as one product where `one_product_applies`."""
    if not one_product_applies(linears):
        copies = cast_for_products(x, len(linears))
        return tuple(linear(copy) for linear, copy in zip(linears, copies))
    weight = torch.cat([linear.weight for linear in linears])
    bias = torch.cat([linear.bias for linear in linears]) if linears[0].bias is not None else None
    y = F.linear(x, weight, bias)
    widths = tuple(linear.out_features for linear in linears)
    if torch.is_grad_enabled() and y.requires_grad:
        return _ColumnBlocks.apply(y, widths)
    return tuple(y.split(widths, dim=-1))  # nothing is kept for a backward pass: views will do
