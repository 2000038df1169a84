"""Where a computation reads a tensor's values back into Python, recorded on the CPU.

On a GPU each such read (`.item()`, `float(t)`, `int(t)`, `bool(t)`, `torch.nonzero`, indexing with a
boolean mask, `masked_select`) waits until the device has done all the work queued before it; on the
CPU nothing waits, so the tests/cuda checks (`torch.cuda.set_sync_debug_mode`) cannot run here. The
operators that make those reads are the same on both devices, and a dispatch mode sees them: `HostReads`
records each with the line of the project's code that asked for it. (Copies to the host are not seen:
a `.cpu()` of a CPU tensor is no operator at all.)
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
PROJECT = Path(__file__).resolve().parents[1]
CODE = tuple(str(PROJECT / package) for package in ("zoo", "pretrain", "evaluate"))
READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}


class HostReads(TorchDispatchMode):
    """`with HostReads() as reads: ...`; `reads.sites` lists "file:line (function)" of each read, the
    innermost frame in the project's code (zoo/, pretrain/, evaluate/), or "outside the project"."""

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    @property
    def functions(self) -> list[str]:
        """The name of the project's function that made each read, in order."""
        return [site.rsplit(" (", 1)[1][:-1] for site in self.sites]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if func in READS or boolean_index:
            self.sites.append(_caller())
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(CODE):
            return f"{Path(frame.filename).relative_to(PROJECT)}:{frame.lineno} ({frame.name})"
    return "outside the project"
