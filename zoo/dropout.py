"""Dropout whose mask is cheap on the CPU.

`torch.nn.functional.dropout` draws one Bernoulli variate per element; on this CPU that costs more
than the attention matmuls it follows. Two faster paths, same distribution:

- the compiled kernel (zoo/kernels): element i is dropped when 16-bit lane i of a counter-based
  hash of (seed, i) is below round(p·2¹⁶); the backward pass regenerates the mask from the seed, so
  nothing mask-sized is stored;
- the PyTorch fallback (no compiler): the same 16-bit-lane rule applied to 64-bit words from torch's
  generator, with the boolean mask kept for the backward pass.

Either way the realised rate is p to within 8e-6 and kept elements are scaled by 1/(1 − realised
rate), so the expectation is exact, and masks come from torch's default generator (seeds are drawn
from it): `torch.manual_seed` makes them reproducible. On CUDA the built-in dropout is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import dropout_kernels, keep_scale, new_seed, threshold_for

_LANES = 65536


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of `shape` with drop rate ≈ p, and the scale 1/(1 − realised p)."""
    threshold = threshold_for(p)
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    lanes = words.view(torch.int16)[:numel].view(shape)
    keep = lanes >= threshold - _LANES // 2
    return keep, _LANES / (_LANES - threshold)


def fused_available(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and dropout_kernels() is not None


class FusedDropout(torch.autograd.Function):
    """out = x ⊙ M / (1 − p) with the counter-based mask; the backward regenerates M from the seed.

    The kernel draws element i's mask from its row-major index, so x and the incoming gradient are made
    contiguous (free when they are): any strides then see the same mask both ways. The output is
    contiguous whatever x's layout.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float):
        kernels = dropout_kernels()
        ctx.seed, ctx.threshold, ctx.scale, ctx.dtype = new_seed(), threshold_for(p), keep_scale(p), x.dtype
        return kernels.masked_scale(x.contiguous(), ctx.seed, ctx.threshold, ctx.scale)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.to(ctx.dtype).contiguous()
        return dropout_kernels().masked_scale(grad, ctx.seed, ctx.threshold, ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with the fast CPU mask."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    if fused_available(x):
        return FusedDropout.apply(x, p)
    keep, scale = keep_mask(x.shape, p, x.device)
    return x * (keep * scale).to(x.dtype)


class Dropout(nn.Module):
    """`nn.Dropout` with the fast CPU mask."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
