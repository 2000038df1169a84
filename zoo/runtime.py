"""Where a process computes: one object, built once, that the trainer, the CLUE fine-tuning and the
evaluators share instead of asking `torch.cuda.is_available()` at every turn.

    runtime = Runtime.resolve("auto", compute_dtype=torch.bfloat16)   # cuda:<LOCAL_RANK> if present, else cpu
    model.to(runtime.device)
    batch = runtime.to_device(batch)        # pinned host memory, non-blocking copies on CUDA
    with runtime.autocast():                # bf16 autocast on the runtime's device type (off for fp32)
        loss = model(**batch).loss
    totals = runtime.sum_across_ranks([correct, count])   # a tensor on the collective's device

Collectives reduce on the device their backend needs (NCCL: the GPU, gloo: the CPU), and return
tensors: reading them (`.tolist()`) is the caller's one host synchronisation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ZooError


class DeviceError(ZooError, ValueError):
    """A requested device that this machine does not have."""


def default_device(local_rank: int | None = None) -> torch.device:
    """cuda:<local rank> when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def parse_device(device: str | torch.device | None, local_rank: int | None = None) -> torch.device:
    """"auto"/None → `default_device`; otherwise the named device, refused clearly when it is absent."""
    if device is None or device == "auto":
        return default_device(local_rank)
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise DeviceError(f"device {device!r} is not a device name (use cpu, cuda, cuda:N or auto): {error}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} was asked for, but this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        index = parsed.index if parsed.index is not None else (local_rank or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        parsed = torch.device("cuda", index)
    return parsed


@dataclass(frozen=True)
class Runtime:
    """The device a process computes on and the dtype its matmuls run in (bf16 autocast or fp32)."""

    device: torch.device
    compute_dtype: torch.dtype = torch.float32

    @classmethod
    def resolve(cls, device: str | torch.device | None = "auto", compute_dtype: torch.dtype = torch.float32,
                local_rank: int | None = None) -> Runtime:
        runtime = cls(parse_device(device, local_rank), compute_dtype)
        if runtime.is_cuda:
            torch.cuda.set_device(runtime.device)
        return runtime

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        where = f"{self.device} ({torch.cuda.get_device_name(self.device)})" if self.is_cuda else str(self.device)
        precision = "fp32" if self.compute_dtype == torch.float32 else f"{_short(self.compute_dtype)} autocast"
        return f"{where}, {precision}"

    # -- compute
    def autocast(self):
        """Autocast to the compute dtype on this device type; for fp32, autocast off, so that an autocast
        the caller opened around us does not turn an fp32 run (CLUE's --no-bf16, an fp32 evaluation) into
        bf16 or fp16 (fp16 without a loss scale, in fine-tuning)."""
        if self.compute_dtype == torch.float32:
            if not torch.amp.is_autocast_available(self.device.type):  # meta: nothing to turn off
                return contextlib.nullcontext()
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    # -- data
    def pin(self, batch):
        """Page-locked copies of a batch's CPU tensors (CUDA only), so that `to_device` can copy them
        without blocking; safe to call from a prefetching thread."""
        if not self.is_cuda:
            return batch
        return map_tensors(batch, lambda t: t.pin_memory() if t.device.type == "cpu" and not t.is_pinned() else t)

    def to_device(self, batch):
        """A batch (tensor, or dict/list/tuple of them) on this device; pinned CPU tensors are copied
        asynchronously (the caching host allocator keeps them alive until the copy is done)."""
        device = self.device
        return map_tensors(batch, lambda t: t.to(device, non_blocking=t.is_pinned()) if t.device != device else t)

    # -- collectives
    @property
    def collective_device(self) -> torch.device:
        """Where all-reduced tensors must live: the GPU for NCCL, the CPU for gloo (or one process)."""
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def sum_across_ranks(self, values, op=None) -> torch.Tensor:
        """Σ over ranks of `values` (numbers or tensors), as one float64 tensor on the collective device.
        Nothing here waits for the device; reading the result does."""
        device = self.collective_device
        if isinstance(values, torch.Tensor):
            tensor = values.detach().to(device=device, dtype=torch.float64).reshape(-1).clone()
        else:
            tensor = torch.stack([torch.as_tensor(v).detach().to(device=device, dtype=torch.float64).reshape(())
                                  for v in values])
        if self.world_size > 1:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def mean_across_ranks(self, values) -> torch.Tensor:
        return self.sum_across_ranks(values) / self.world_size

    def max_across_ranks(self, values) -> torch.Tensor:
        return self.sum_across_ranks(values, op=dist.ReduceOp.MAX)

    # -- memory
    def reset_peak_memory(self) -> bool:
        """Start a new peak: from here on `peak_memory_mb` is the peak since this call. On the CPU this
        resets Linux's high-water mark of the resident set (VmHWM, through /proc/self/clear_refs). Returns
        whether it could: where it cannot, the CPU's peak stays the process's all-time peak."""
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # Linux >= 4.0: VmHWM becomes the current resident set
        except OSError:
            return False
        return True

    def peak_memory_mb(self) -> float:
        """Peak allocated CUDA memory of this process since the last `reset_peak_memory` (or since it
        started), or on the CPU its peak resident memory likewise (all-time where a reset failed)."""
        if self.is_cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        with contextlib.suppress(OSError, StopIteration, ValueError, IndexError):
            with open("/proc/self/status") as status:
                return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bf16_is_native(device: torch.device) -> bool:
    """Whether `device` runs bf16 matrix products in hardware. A GPU before Ampere (V100, T4: compute
    capability below 8.0) runs bf16 autocast emulated, with no tensor cores, far slower than fp16 and
    than fp32; torch's autocast takes it without a word. So does a CPU without oneDNN's bf16 kernels,
    which need AVX-512 (AMX is the fast case, where bf16 beats fp32 several times: BENCHMARKS.md): on
    an AVX2 CPU (AMD EPYC) bf16 products ran at about 1 GFLOP/s against fp32's 120, and a training step
    of roformer-v2-tiny 30 times slower under bf16 autocast than in fp32."""
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if device.type != "cuda":
        return True
    if torch.version.hip:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_capability(device) >= (8, 0)  # this device's, not the current one's


def _short(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}.get(dtype, str(dtype))


def map_tensors(obj, fn):
    """`obj` with `fn` applied to every tensor in it: dicts (transformers' BatchEncoding and ModelOutput
    too) become plain dicts, lists and tuples keep their type, a dataclass is replaced field by field,
    or is itself where no field changes (what it shares, like an entropy recorder, stays shared);
    anything else is itself."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init}
        if all(value is getattr(obj, name) for name, value in fields.items()):
            return obj
        return dataclasses.replace(obj, **fields)
    return obj


# the backends whose fp32 matrix products may run at a lower precision when a user or a library asks for
# it: TF32 tensor cores on CUDA, bf16 through oneDNN on CPUs
FP32_MATMUL_BACKENDS = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)


@contextlib.contextmanager
def ieee_float32():
    """fp32 computed as fp32 inside, whatever the caller set: no autocast (CUDA or CPU) and IEEE fp32 matrix
    products. For checks that claim fp32 exactness (a growth's function preservation):
    `torch.backends.cuda.matmul.allow_tf32 = True` or `torch.set_float32_matmul_precision("high")`, as many
    GPU users set, rounds the products' inputs to 10 mantissa bits.

    torch keeps two views of this setting, the legacy one (`set_float32_matmul_precision`, `allow_tf32`)
    and the backends' `fp32_precision`, and a CUDA product refuses to run while they disagree; so the
    legacy call sets both inside, and each is put back afterwards as the caller left it (the legacy one
    where it can be read: not after the caller used only the new one, which it then does not depend on)."""
    backends = {backend: backend.fp32_precision for backend in FP32_MATMUL_BACKENDS}
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller set `fp32_precision`, which now disagrees with the legacy view
        legacy = None
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        for backend, precision in backends.items():
            backend.fp32_precision = precision


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without parameters)."""
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")
