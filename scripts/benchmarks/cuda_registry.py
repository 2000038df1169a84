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
  norm and the Triton RoPE kernel; here our CPU operators, one each way too, keeping tensors of the
  same sizes, RoPE's output laid out as CUDA's entry lays it out: q and k sequence first, so that the
  attention's output is too and merging its heads is a view), and the post-norm residual step and
  GAU's q/k scale pair through their Triton kernels, which run here in Triton's interpreter
  (TRITON_INTERPRET=1, set before Triton is first imported);
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
from torch.multiprocessing.reductions import StorageWeakRef

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
            # the Triton entries registered for the CPU too (RoPE's runs the CPU operator with CUDA's output
            # layout, so the CPU kernel's entry, contiguous for the CPU attention, steps aside)
            stack.enter_context(registry.extended("triton", "cpu"))
            stack.enter_context(registry.disabled("rope:cpu-kernel"))
        yield


class MergedHeadsCopies:
    """Recognises the one CPU artefact in these counts. Both torch's CPU flash kernel and CUDA's allocate
    their output in q's layout, so for a dense q (ours, sequence first; BERT's) merging the heads into
    [B, S, H·d] is a view on both, or a copy on both. GAU's q, expanded over the heads that share it
    (a zero stride), is where they part: the CPU kernel allocates like q, heads first, so merging copies,
    while CUDA's flash kernel allocates like q viewed [B, S, H, d] (dense in that order) and its
    memory-efficient kernel always sequence first, so the merge is a view. A TorchDispatchMode calls
    `see` with each operation's output; `is_copy(t)` then says whether t lives in such a copy."""

    def __init__(self):
        self.attention_outputs: dict[int, StorageWeakRef] = {}  # those sdpa outputs' storages by data pointer
        self.copies: dict[int, StorageWeakRef] = {}

    def see(self, func, args, out) -> bool:
        """Records the output of an sdpa forward pass with a q expanded over its heads, and a clone of
        one; True for such a clone."""
        if "scaled_dot_product" in func.__name__ and not func.__name__.endswith("backward.default"):
            query = args[0]
            if query.shape[1] > 1 and query.stride(1) == 0:
                storage = out[0].untyped_storage()
                self.attention_outputs[storage.data_ptr()] = StorageWeakRef(storage)
        elif func is torch.ops.aten.clone.default and self._alive_in(self.attention_outputs, args[0]):
            storage = out.untyped_storage()
            self.copies[storage.data_ptr()] = StorageWeakRef(storage)
            return True
        return False

    def is_copy(self, tensor: torch.Tensor) -> bool:
        return self._alive_in(self.copies, tensor)

    @staticmethod
    def _alive_in(storages: dict[int, StorageWeakRef], tensor: torch.Tensor) -> bool:
        ref = storages.get(tensor.untyped_storage().data_ptr())
        return ref is not None and not ref.expired()
