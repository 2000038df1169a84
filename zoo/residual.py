"""The post-norm residual step, x ← Norm(α·x + Dropout(F(x))) (RoFormerV2, GAU-α; DeepNorm with α),
through the kernel registry ("residual_norm").

On CUDA, with the parameter-free RMS norm or with LayerNorm (γ, β), one Triton kernel each way
(zoo/kernels/triton_residual_norm.py: the dropout mask drawn inside from a seed and made again in the
backward pass, nothing mask-sized kept); everywhere else, and under torch.compile (where inductor fuses
the reference itself), the three modules one after the other.
"""

from __future__ import annotations

import torch
from torch import nn

from .kernels.registry import dispatch, register
from .norms import LayerNorm, RMSNorm


def residual_norm(branch: torch.Tensor, residual: torch.Tensor, alpha: float, dropout: nn.Module,
                  norm: nn.Module) -> torch.Tensor:
    """norm(α·residual + dropout(branch)), `dropout` a module with `p` that drops only in training."""
    return dispatch("residual_norm", branch, residual, alpha, dropout, norm)


def triton_residual_norm_applies(branch, residual, alpha, dropout, norm) -> bool:
    """The Triton kernels' calls: the RMS norm, or LayerNorm with γ and β over the last dimension; branch
    and residual of one shape and a row that fits one program, in eager mode."""
    from .kernels.triton_residual_norm import MAX_WIDTH

    size = residual.shape[-1]
    norm_fits = isinstance(norm, RMSNorm) or (
        isinstance(norm, LayerNorm) and norm.weight is not None and norm.bias is not None
        and tuple(norm.normalized_shape) == (size,))
    return not torch.compiler.is_compiling() and norm_fits and branch.shape == residual.shape and 0 < size <= MAX_WIDTH


@register("residual_norm", "triton", device_types=("cuda",), dtypes=(torch.float32, torch.bfloat16, torch.float16),
          needs="triton", accepts=triton_residual_norm_applies)
def triton_residual_norm(branch, residual, alpha, dropout, norm):
    """One kernel each way; the mask's seed is drawn from torch's CPU generator (torch.manual_seed
    reproduces it; no wait for the GPU)."""
    from .kernels.triton_dropout import new_seed
    from .kernels.triton_residual_norm import ResidualNorm

    p = dropout.p if dropout.training else 0.0
    seed = new_seed() if p > 0.0 else 0
    weight, bias = (norm.weight, norm.bias) if isinstance(norm, LayerNorm) else (None, None)
    return ResidualNorm.apply(branch, residual, alpha, p, norm.eps, seed, weight, bias)


@register("residual_norm", "reference")
def residual_norm_reference(branch, residual, alpha, dropout, norm):
    """Dropout(F(x)) + α·x as one addition (DeepNorm's α·x is no separate multiplication), then the norm."""
    return norm(torch.add(dropout(branch), residual, alpha=alpha))
