"""Norms: the parameter-free RMS norm of RoFormerV2/GAU-α, LayerNorm for DeepNet, GAU's ScaleOffset."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import ops
from .kernels.registry import FLOAT_KERNEL_DTYPES, dispatch, register
from .rope import apply_rope, fused_rope_applies


class RMSNorm(nn.Module):
    """Norm(x) = x / √(mean(x², last dim) + ε), no γ and no β (architectures.md §1.1).

    bert4keras `LayerNormalization(zero_mean=False, scale=False, offset=False)`. Statistics are
    taken in float32 when the input is half precision. Runs through the kernel registry ("rms_norm").
    """

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch("rms_norm", x, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, parameter-free"


@register("rms_norm", "cpu-kernel", device_types=("cpu",), dtypes=FLOAT_KERNEL_DTYPES, needs="elementwise")
def fused_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm's function as one pass each way on the CPU (zoo/kernels/elementwise_cpu.cpp, the operator
    zoo::rms_norm): fp32 statistics and arithmetic, one rounding to x's dtype; saves its output and the
    per-row 1/rms (dx = r·(dy − y·mean(dy·y)) needs no more). The kernel reads rows row-major, so the
    operator makes x contiguous (and the incoming gradient in the backward pass), which is free when it
    already is."""
    y, _ = ops.rms_norm(x, eps)
    return y


@register("rms_norm", "torch-fused", device_types=("cuda",))
def torch_fused_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """torch's RMS norm without a weight (`F.rms_norm`): on CUDA one fused kernel each way
    (aten::_fused_rms_norm and its backward) instead of the reference's five to seven operations and
    their autograd nodes. Same function: fp32 statistics for half inputs, one rounding to x's dtype.
    Autocast is switched off inside so that the output keeps x's dtype, as the reference's does,
    whatever autocast's policy for the operation."""
    with torch.autocast(x.device.type, enabled=False):
        return F.rms_norm(x, (x.shape[-1],), eps=eps)


@register("rms_norm", "reference")
def rms_norm_reference(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The same function in PyTorch operations (any device; fp32 statistics for half inputs)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class LayerNorm(nn.LayerNorm):
    """Standard LayerNorm with γ and β (DeepNet, §3.1); statistics in float32 for half inputs.

    Without autograd on the CPU, a bf16 input goes straight into ATen's kernel, which takes fp32 γ, β
    and keeps its statistics in fp32 (same result as the cast path, a fifteenth of its time here). With
    autograd the input is cast to fp32 first: that kernel's backward loses precision in dγ and dβ
    with a bf16 input (10% relative error measured against fp64).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch("layer_norm", x, self)


@register("layer_norm", "aten-bf16-inference", device_types=("cpu",), dtypes=(torch.bfloat16,),
          accepts=lambda x, norm: not torch.is_grad_enabled())
def layer_norm_bf16_inference(x: torch.Tensor, norm: LayerNorm) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        return nn.functional.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


@register("layer_norm", "fp32-statistics")
def layer_norm_fp32_statistics(x: torch.Tensor, norm: LayerNorm) -> torch.Tensor:
    if x.dtype in (torch.float16, torch.bfloat16):
        weight = None if norm.weight is None else norm.weight.float()
        bias = None if norm.bias is None else norm.bias.float()
        return nn.functional.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).to(x.dtype)
    return nn.functional.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


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


def scale_offset_pair(z: torch.Tensor, first: ScaleOffset, second: ScaleOffset, cos: torch.Tensor | None = None,
                      sin: torch.Tensor | None = None, row_scale: torch.Tensor | None = None,
                      q_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(first(z), second(z)): two scale-offsets of one input, GAU's q and k from z [B, S, s]; each rotated
    by RoPE's tables cos, sin [B or 1, 1, S, s/2] when they are given, and q multiplied by its per-row
    logit factor row_scale [B or 1, 1, S or 1, 1] · q_scale when that is given (softmax_plus's log n / log
    512 times 1/√s, as `zoo.attention.attention` would apply it); through the kernel registry
    ("scale_offset_pair")."""
    return dispatch("scale_offset_pair", z, first, second, cos, sin, row_scale, q_scale)


def triton_scale_pair_applies(z: torch.Tensor, first: ScaleOffset, second: ScaleOffset, cos=None, sin=None,
                              row_scale=None, q_scale=1.0) -> bool:
    """The Triton kernel's calls: z [B, S, s], scales without offsets, tables (if any) as the RoPE kernels
    take them, a row scale (if any) of one value per row or per sequence, in eager mode (under
    torch.compile inductor fuses the reference with its neighbours itself)."""
    return (not torch.compiler.is_compiling() and z.dim() == 3 and first.bias is None and second.bias is None
            and first.weight.shape == second.weight.shape == z.shape[-1:]
            and (cos is None or fused_rope_applies(z[:, None], cos, sin))
            and (row_scale is None or (row_scale.dim() == 4 and row_scale.device == z.device
                                       and row_scale.shape[0] in (1, z.shape[0])
                                       and row_scale.shape[1] == row_scale.shape[3] == 1
                                       and row_scale.shape[2] in (1, z.shape[1]) and not row_scale.requires_grad
                                       and row_scale.is_floating_point())))


@register("scale_offset_pair", "triton", device_types=("cuda",), dtypes=(torch.float32, torch.bfloat16, torch.float16),
          needs="triton", accepts=triton_scale_pair_applies)
def triton_scale_pair(z: torch.Tensor, first: ScaleOffset, second: ScaleOffset, cos=None, sin=None, row_scale=None,
                      q_scale=1.0):
    """Both products, RoPE and q's row scale when given, in one Triton kernel each way
    (zoo/kernels/triton_scale_pair.py): for GAU-α one launch forward instead of six (the pair, RoPE on
    q and on k, the row factor, its cast and the product with q) and two backward (the kernel and the
    sum of the scales' shares) instead of five, q and k written once; the reference pair alone takes
    thirteen under autocast. The same values forward to rounding (the scales rounded to z's dtype, the
    products rounded before they are rotated, as the reference; the row factor kept in fp32, where the
    reference rounds it to z's dtype), gradients in fp32 to one rounding."""
    from .kernels.triton_scale_pair import ScalePair

    return ScalePair.apply(z, first.weight, second.weight, cos, sin, row_scale, q_scale)


@register("scale_offset_pair", "reference")
def scale_offset_pair_reference(z: torch.Tensor, first: ScaleOffset, second: ScaleOffset, cos=None, sin=None,
                                row_scale=None, q_scale=1.0) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = first(z), second(z)
    if cos is not None:
        # (squeeze, not [:, 0]: its backward is a view, where select's writes zeros and the gradient)
        q, k = apply_rope(q[:, None], cos, sin).squeeze(1), apply_rope(k[:, None], cos, sin).squeeze(1)
    if row_scale is not None:
        q = q * (row_scale * q_scale).to(q.dtype).squeeze(1)
    return q, k
