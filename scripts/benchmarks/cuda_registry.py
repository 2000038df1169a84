"""The kernel registry as CUDA resolves it, set up on this CPU.

Which operations an eager training step runs, and which tensors it keeps for the backward pass,
depend on the implementations the kernel registry picks, not on the device's arithmetic; so
kernel_launches.py (what a CUDA step launches) and activation_memory.py (what it keeps) count them
here, with `as_on_cuda(setting)` around the model:

- attention through sdpa, GAU-α's wide head as heads sharing q/k (`sdpa_shared_qk`), not the CPU's
  blocked kernel. Callers turn attention dropout off: CUDA's fused kernels apply it inside, torch's
  CPU sdpa only on its unfused path, which keeps the probabilities;
- hidden dropout as torch's `native_dropout`, one kernel each way keeping a boolean mask, as on CUDA
  (`F.dropout` on the CPU takes three kernels and keeps its mask in the input's dtype);
- "fused", CUDA's entries now: the RMS norm and RoPE as one operator each way (on CUDA torch's fused RMS
  norm and the Triton RoPE kernel; here our CPU operators, one each way too, keeping the same
  tensors), and the post-norm residual step and GAU's q/k scale pair through their Triton kernels,
  which run here in Triton's interpreter (TRITON_INTERPRET=1, set before Triton is first imported);
- "reference", as CUDA ran before those entries: the RMS norm, RoPE, the residual step and the scale
  pair as PyTorch operations.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from zoo.attention import gau_wide_head, shared_qk_attention  # noqa: E402
from zoo.kernels import available, registry  # noqa: E402

SETTINGS = ("reference", "fused")


def native_dropout(x, p=0.5, training=True, inplace=False):
    """F.dropout as CUDA runs it: one `native_dropout` kernel (and one `native_dropout_backward`)."""
    return torch.ops.aten.native_dropout(x, p, training)[0] if training and p > 0 else x


@contextlib.contextmanager
def as_on_cuda(setting: str = "fused"):
    """The registry as CUDA resolves it (see the module docstring), for the block."""
    if setting not in SETTINGS:
        raise ValueError(f"as_on_cuda: setting must be one of {SETTINGS}, got {setting!r}")
    references = ("rms_norm:cpu-kernel", "rope:cpu-kernel") if setting == "reference" else ()
    with contextlib.ExitStack() as stack:
        stack.enter_context(registry.disabled("attention", "dropout:cpu-kernel", "cpu-lanes", *references))
        stack.enter_context(registry.registered("softmax_attention", "sdpa-shared-qk-on-cpu", shared_qk_attention,
                                                accepts=gau_wide_head, before="sdpa-requested"))
        stack.enter_context(mock.patch.object(F, "dropout", native_dropout))
        if setting == "fused":
            if not available("triton"):
                raise SystemExit("the CUDA registry on the CPU needs Triton for the fused residual norm and GAU's "
                                 "scale pair, run in its interpreter (pip install -e .[test])")
            # the Triton entries registered for the CPU too (RoPE's is the CPU operator already)
            stack.enter_context(registry.extended("triton", "cpu"))
        yield
