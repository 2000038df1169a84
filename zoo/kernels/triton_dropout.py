"""The dropout mask the Triton kernels share (zoo/kernels/triton_residual_norm.py,
triton_softmax_attention.py): each draws it again in its backward pass instead of keeping it, so the
rule that makes it lives in one place.

An element is kept when the uniform number Philox makes from the step's seed and the element's 64-bit
index (`tl.rand`) is at least p; the index counts the elements of the tensor the mask covers,
row-major. The seed comes from torch's CPU generator (torch.manual_seed reproduces it; no wait for
the GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# the mask's seed is a fresh integer each step: not specialised, or one in 16 (divisible by 16) and
# seed 1 would each compile the kernel again in the middle of training
per_step_seed = triton.jit(do_not_specialize=["seed"])


def new_seed() -> int:
    """A mask seed from torch's CPU generator, below 2³¹ so that Triton always passes it as an i32 (a
    larger one would compile the kernel again for an i64)."""
    return int(torch.randint(0, 2**31 - 1, (1,), device="cpu"))  # whatever the default device


@triton.jit
def kept(seed, index, p):
    """True where the element at `index` (int64) is kept at drop rate p."""
    return tl.rand(seed, index) >= p
