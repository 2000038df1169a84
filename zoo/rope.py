"""Rotary position embedding (RoPE), interleaved-pair layout of bert4keras (architectures.md §1.2).

θ_i = b^(−2i/d), i = 0 … d/2−1, and for the pair (2i, 2i+1) at position n:

    out[2i]   = x[2i]·cos(nθ_i) − x[2i+1]·sin(nθ_i)
    out[2i+1] = x[2i+1]·cos(nθ_i) + x[2i]·sin(nθ_i)

Angles are computed in float64 and only then cast to the compute dtype, so any position
(integers, floats, offsets of 1e5) is exact to the dtype's rounding and there is no length cap.
"""

from __future__ import annotations

import torch
from torch import nn

from .kernels import available, ops
from .kernels.registry import FLOAT_KERNEL_DTYPES, dispatch, register


def rope_inv_freq(dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """θ_i = base^(−2i/dim) for i = 0 … dim/2 − 1, in float64."""
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim
    return base**-exponent


def rope_cos_sin(
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    dtype: torch.dtype,
    mscale: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(nθ_i)·mscale and sin(nθ_i)·mscale for positions [..., S] → two tensors [..., S, d/2].

    The product n·θ_i and the trigonometric functions run in float64. A tensor mscale (YaRN's, a scalar
    on the tables' device) multiplies without being read back to decide.
    """
    angles = position_ids.to(torch.float64)[..., None] * inv_freq.to(device=position_ids.device, dtype=torch.float64)
    cos, sin = torch.cos(angles), torch.sin(angles)
    if isinstance(mscale, torch.Tensor) or mscale != 1.0:
        cos, sin = cos * mscale, sin * mscale
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs of x [..., S, d] by angles given as cos/sin [..., S, d/2]
    (through the kernel registry, "rope")."""
    return dispatch("rope", x, cos, sin)


def fused_rope_applies(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """The one-pass kernels (CPU and Triton) take x [B, H, S, d] with tables [B or 1, 1, S, d/2] of x's
    dtype that need no gradient (they differentiate x only); the registry adds the device, the dtypes
    and whether the kernel is built or importable."""
    if x.dim() != 4 or x.shape[3] % 2 or cos.requires_grad or sin.requires_grad:
        return False  # an odd width has no pairs to rotate: the reference refuses it by its shapes
    table = (x.shape[0], 1, x.shape[2], x.shape[3] // 2)
    for t in (cos, sin):
        # (a table on another device than x, e.g. another GPU's, is the reference's to refuse: the kernels
        # would read it through a pointer of the wrong device)
        if (t.device != x.device or t.dtype != x.dtype or t.dim() != 4 or t.shape[0] not in (1, table[0])
                or tuple(t.shape[1:]) != table[1:]):
            return False
    return True


@register("rope", "cpu-kernel", device_types=("cpu",), dtypes=FLOAT_KERNEL_DTYPES, needs="elementwise",
          accepts=fused_rope_applies)
def fused_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` as one pass on the CPU (zoo/kernels/elementwise_cpu.cpp, the operator zoo::rope),
    fp32 arithmetic and one rounding; the backward pass is the inverse rotation (the same kernel with
    −sin).

    The kernel takes any strides across rows (q and k are transposed views of a projection, an incoming
    gradient may be expanded) but reads each row at unit stride: the operator copies only the tensors
    whose last dimension is strided (`unit_last_stride`).
    """
    return ops.rope(x, cos, sin, 1.0, False)


def triton_rope_applies(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """The Triton kernel's calls, in eager mode: under torch.compile inductor writes its own kernel from
    the reference instead, free to fuse it with the operations around it. On CPU tensors (the entry
    extended to the CPU, `registry.extended`, as scripts/benchmarks/cuda_registry.py counts CUDA's step)
    the operator runs its C++ kernel, which must then be built and take x's dtype (not fp16, which the
    Triton kernel takes)."""
    if x.device.type == "cpu" and (x.dtype not in FLOAT_KERNEL_DTYPES or not available("elementwise")):
        return False
    return not torch.compiler.is_compiling() and fused_rope_applies(x, cos, sin)


@register("rope", "triton", device_types=("cuda",), dtypes=(torch.float32, torch.bfloat16, torch.float16),
          needs="triton", accepts=triton_rope_applies)
def layout_keeping_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` as one Triton kernel each way on CUDA (zoo/kernels/triton_rope.py, the CUDA side of
    the operator zoo::rope): fp32 arithmetic, one rounding, the backward pass the inverse rotation, where
    the reference's seven operations forward and its autograd nodes backward are each a kernel launch
    and a trip through GPU memory. The output keeps x's layout: q and k stay sequence first, so CUDA's
    flash attention, whose output follows q's layout, returns its output sequence first and merging
    the heads is a view (a heads-first q, as the CPU kernel's entry and the reference make it, costs a
    copy of the output forward, and one of q's and k's gradients backward). On the CPU the same call
    runs the C++ kernel, which is how scripts/benchmarks/cuda_registry.py counts CUDA's step here."""
    return ops.rope(x, cos, sin, 1.0, True)


@register("rope", "reference")
def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation in PyTorch operations (any device, dtype and layout; differentiates the tables too)."""
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x_even * cos - x_odd * sin, x_odd * cos + x_even * sin), dim=-1)
    return rotated.flatten(-2)


class RotaryEmbedding(nn.Module):
    """Produces the (cos, sin) tables for a batch of position ids; tables for 0 … S−1 are cached.

    Holds no parameters or persistent buffers: checkpoints carry nothing position-related.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.base = base
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def inv_freq(self, device=None) -> torch.Tensor:
        return rope_inv_freq(self.dim, self.base, device=device)

    def forward(
        self,
        seq_len: int,
        dtype: torch.dtype,
        device: torch.device,
        position_ids: torch.Tensor | None = None,
        inv_freq: torch.Tensor | None = None,
        mscale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables shaped [B or 1, 1, S, d/2] so they broadcast over heads.

        `position_ids` [B, S] (int or float) default to 0 … S−1; `inv_freq` and `mscale` let
        inference-time variants (NTK, YaRN, ...) change the frequencies without touching weights.
        """
        if position_ids is None and inv_freq is None and mscale == 1.0 and not torch.compiler.is_compiling():
            # (compiled, the tables are computed in the graph, which inductor folds into its kernels: a
            # cache filled while tracing would be a guard that fails, a recompilation, on the next call)
            # tables made under inference_mode are inference tensors, which a later training forward could
            # not save for its backward pass: kept apart
            key = (seq_len, dtype, device, torch.is_inference_mode_enabled())
            if key not in self._cache:
                if len(self._cache) > 16:
                    self._cache.clear()
                positions = torch.arange(seq_len, device=device)
                cos, sin = rope_cos_sin(positions, self.inv_freq(device), dtype)
                self._cache[key] = (cos[None, None], sin[None, None])
            return self._cache[key]
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=device)[None]
        if inv_freq is None:
            inv_freq = self.inv_freq(device)
        cos, sin = rope_cos_sin(position_ids, inv_freq, dtype, mscale)
        return cos[:, None], sin[:, None]
