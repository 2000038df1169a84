"""One table of the implementations of each operation, keyed by (op, device type, dtype).

Every implementation of an operation (the compiled CPU kernel, torch's fused attention, the PyTorch
reference, ...) is one `Kernel` entry: the devices and dtypes it takes, the compiled module it needs,
and, where it takes only some shapes or modes, a predicate on the call's arguments. A call goes to the
first entry, in registration order, that applies:

    @register("rms_norm", "cpu-kernel", device_types=("cpu",), dtypes=FLOAT_KERNEL_DTYPES, needs="elementwise")
    def fused_rms_norm(x, eps): ...

    @register("rms_norm", "reference")
    def rms_norm_reference(x, eps): ...

    y = dispatch("rms_norm", x, eps)       # on the CPU in fp32/bf16 the kernel, elsewhere the reference

A new implementation (a Triton kernel, another device's) is one more entry, registered ahead of the
ones it should win over (`before=`), instead of a new branch in every module that calls the op.
`disabled(...)` switches entries or whole compiled modules off for a block of code (tests, benchmarks,
a comparison against the reference); `ZOO_DISABLE_KERNELS=1` disables every compiled module, Triton
included, and `ZOO_DISABLE_KERNELS=cpu` the C++ ones (`zoo.kernels.disabled_by_environment`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from . import available

FLOAT_KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # what the compiled CPU kernels take


@dataclass(frozen=True)
class Kernel:
    """One implementation of `op`: `fn` takes the op's arguments, the first a tensor that decides the
    device and dtype. None in `device_types` / `dtypes` means any; `needs` names the compiled module
    it calls (zoo.kernels.compiled); `accepts(*args, **kwargs)` narrows it to the calls it takes."""

    op: str
    name: str
    fn: Callable
    device_types: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    needs: str | None = None
    accepts: Callable[..., bool] | None = None

    def takes(self, device_type: str, dtype: torch.dtype) -> bool:
        """Whether this entry is registered for the device type and dtype, and is switched on and built."""
        if self.device_types is not None and device_type not in self.device_types:
            return False
        if self.dtypes is not None and dtype not in self.dtypes:
            return False
        if self.name in DISABLED or f"{self.op}:{self.name}" in DISABLED:
            return False
        return self.needs is None or (self.needs not in DISABLED and available(self.needs))


_TABLE: dict[str, list[Kernel]] = {}
DISABLED: set[str] = set()  # switched-off names ("op:name", a name, a compiled module); see `disabled`


def register(op: str, name: str, *, device_types=None, dtypes=None, needs=None, accepts=None, before: str | None = None):
    """Decorator: add `fn` as the implementation `name` of `op` (after the existing ones, or just before
    the entry called `before`). Returns `fn` unchanged."""

    def add(fn: Callable) -> Callable:
        entries = _TABLE.setdefault(op, [])
        if any(entry.name == name for entry in entries):
            raise ValueError(f"kernel registry: {op} already has an implementation called {name!r}")
        kernel = Kernel(op, name, fn, None if device_types is None else tuple(device_types),
                        None if dtypes is None else tuple(dtypes), needs, accepts)
        names = [entry.name for entry in entries]
        if before is not None and before not in names:
            raise ValueError(f"kernel registry: {op} has no implementation {before!r} to go before; it has {names}")
        entries.insert(names.index(before) if before is not None else len(entries), kernel)
        return fn

    return add


@contextlib.contextmanager
def registered(op: str, name: str, fn: Callable, **options) -> Iterator[None]:
    """`register(op, name, **options)(fn)` for the block only (tests, trying out a new kernel)."""
    register(op, name, **options)(fn)
    try:
        yield
    finally:
        _TABLE[op] = [entry for entry in _TABLE[op] if entry.name != name]


@contextlib.contextmanager
def extended(name: str, device_type: str) -> Iterator[None]:
    """For the block, every entry called `name` (of any op) also takes tensors on `device_type`, tried
    just before the entry itself (so after the device's own entries ahead of it): this is how the suite
    and the benchmarks run the Triton entries, registered for CUDA, on CPU tensors in Triton's
    interpreter (RoPE's runs its operator's C++ kernel there, with CUDA's output layout)."""
    with contextlib.ExitStack() as stack:
        for op, entries in list(_TABLE.items()):
            for entry in list(entries):  # (the registration inserts into `entries`)
                if entry.name != name or entry.device_types is None or device_type in entry.device_types:
                    continue
                stack.enter_context(registered(op, f"{name}-on-{device_type}", entry.fn, device_types=(device_type,),
                                               dtypes=entry.dtypes, needs=entry.needs, accepts=entry.accepts,
                                               before=entry.name))
        yield


def implementations(op: str) -> list[Kernel]:
    """Every registered implementation of `op`, in the order calls try them."""
    if op not in _TABLE:
        raise KeyError(f"kernel registry: no operation {op!r}; registered: {sorted(_TABLE)}")
    return list(_TABLE[op])


def select(op: str, x: torch.Tensor, *args, **kwargs) -> Kernel:
    """The implementation a call `op(x, *args, **kwargs)` goes to: the first registered for x's device
    type and dtype, built and switched on, whose `accepts` (if any) takes the arguments."""
    for kernel in implementations(op):
        if kernel.takes(x.device.type, x.dtype) and (kernel.accepts is None or kernel.accepts(x, *args, **kwargs)):
            return kernel
    raise RuntimeError(f"kernel registry: no implementation of {op} takes a {x.dtype} tensor on {x.device.type} "
                       f"with these arguments (registered: {[k.name for k in _TABLE[op]]}, disabled: {sorted(DISABLED)})")


def dispatch(op: str, x: torch.Tensor, *args, **kwargs):
    """Run `op` through the implementation `select` picks."""
    return select(op, x, *args, **kwargs).fn(x, *args, **kwargs)


@contextlib.contextmanager
def disabled(*names: str) -> Iterator[None]:
    """Switch entries off inside the block: "op:name" (one entry), a name ("cpu-kernel": that name in
    every op) or a compiled module ("attention": every entry that needs it)."""
    added = [name for name in names if name not in DISABLED]
    DISABLED.update(added)
    try:
        yield
    finally:
        DISABLED.difference_update(added)


def describe() -> str:
    """The table as text: per op, its implementations in order with what they take."""
    lines = []
    for op, entries in sorted(_TABLE.items()):
        lines.append(op)
        for kernel in entries:
            devices = ",".join(kernel.device_types) if kernel.device_types else "any device"
            dtypes = ",".join(str(d).removeprefix("torch.") for d in kernel.dtypes) if kernel.dtypes else "any dtype"
            needs = f", needs the {kernel.needs} kernels" if kernel.needs else ""
            narrowed = ", some calls" if kernel.accepts else ""
            lines.append(f"  {kernel.name}: {devices}; {dtypes}{needs}{narrowed}")
    return "\n".join(lines)
