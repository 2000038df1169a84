"""Norms: the parameter-free RMS norm of RoFormerV2/GAU-α, LayerNorm for DeepNet, GAU's ScaleOffset."""

from __future__ import annotations

import torch
from torch import nn

from .kernels import elementwise_kernels


class RMSNorm(nn.Module):
    """Norm(x) = x / √(mean(x², last dim) + ε), no γ and no β (architectures.md §1.1).

    bert4keras `LayerNormalization(zero_mean=False, scale=False, offset=False)`. Statistics are
    taken in float32 when the input is half precision.
    """

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and elementwise_kernels() is not None:
            return FusedRMSNorm.apply(x, self.eps)
        if x.dtype in (torch.float16, torch.bfloat16):
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, parameter-free"


class FusedRMSNorm(torch.autograd.Function):
    """RMSNorm's function as one pass each way on the CPU (zoo/kernels/elementwise_cpu.cpp): fp32
    statistics and arithmetic, one rounding to x's dtype; saves x and the per-row 1/rms.

    The kernel reads rows row-major, so x and the incoming gradient (a head reading one position, a
    transposed or expanded view) are made contiguous here, which is free when they already are.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        x = x.contiguous()
        y, rstd = elementwise_kernels().rms_norm_forward(x, eps)
        ctx.save_for_backward(x, rstd)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, rstd = ctx.saved_tensors
        return elementwise_kernels().rms_norm_backward(grad.to(x.dtype).contiguous(), x, rstd), None


class LayerNorm(nn.LayerNorm):
    """Standard LayerNorm with γ and β (DeepNet, §3.1); statistics in float32 for half inputs.

    Without autograd on the CPU, a bf16 input goes straight into ATen's kernel, which takes fp32 γ, β
    and keeps its statistics in fp32 (same result as the cast path, a fifteenth of its time here). With
    autograd the input is cast to fp32 first: that kernel's backward loses precision in dγ and dβ
    with a bf16 input (10% relative error measured against fp64).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled():
            with torch.autocast("cpu", enabled=False):
                return nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if x.dtype in (torch.float16, torch.bfloat16):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
        return super().forward(x)


class ScaleOffset(nn.Module):
    """Per-dimension scale γ (initialised to ones) and optional offset β: x ⊙ γ + β (GAU q/k, §2.1)."""

    def __init__(self, dim: int, offset: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if offset else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.weight.to(x.dtype)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


def make_norm(config, eps: float | None = None) -> nn.Module:
    """The residual-stream norm of `config`, with ε = `eps` if given, else `config.layer_norm_eps`."""
    eps = config.layer_norm_eps if eps is None else eps
    if config.norm_type == "rms":
        return RMSNorm(eps)
    return LayerNorm(config.hidden_size, eps=eps)
