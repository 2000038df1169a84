"""Dropout whose mask is cheap to draw on the CPU.

`torch.nn.functional.dropout` draws one Bernoulli variate per element; on this CPU that costs
about 5 ns each, which for attention probabilities (B·A·S² elements) costs more than the
attention matmuls themselves. Here the mask comes from 64-bit random words cut into 16-bit
lanes: element i is dropped when its lane is below round(p·2¹⁶) (so the realised rate is p to
within 8e-6), and kept elements are scaled by 1/(1 − p_realised), so the expectation is exact.
Random words come from torch's default generator: `torch.manual_seed` makes masks reproducible.
On CUDA the built-in dropout is already fast and is used unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LANES = 65536


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of `shape` with drop rate ≈ p, and the scale 1/(1 − realised p)."""
    threshold = round(p * _LANES)
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    lanes = words.view(torch.int16)[:numel].view(shape)
    keep = lanes >= threshold - _LANES // 2
    return keep, _LANES / (_LANES - threshold)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout; the CPU path draws its mask with `keep_mask`."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
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
