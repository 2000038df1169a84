"""Compiled CPU kernels, built on first use with torch's C++ extension loader.

- `dropout_cpu.cpp`: dropout whose keep-mask is a pure function of a per-call seed and the element
  index (splitmix64 of a counter, four 16-bit lanes per hash, `common.h`), so the forward pass draws
  no random tensor and the backward pass regenerates the mask instead of storing it;
- `attention_cpu.cpp`: softmax attention blocked over query rows (scores stay in cache, a vectorised
  exp, the same dropout mask), used by `zoo.attention` on the CPU;
- `elementwise_cpu.cpp`: the RMS norm and RoPE as one pass each way (`zoo.norms`, `zoo.rope`);
- `triton_rope.py`, `triton_scale_pair.py`, `triton_residual_norm.py`, `triton_softmax_attention.py`:
  CUDA kernels in Triton, RoPE (the CUDA implementation of the same operator), GAU's q/k scale pair
  (rotated by RoPE, q times its row factor, in the same kernel), the post-norm residual step
  Norm(α·x + Dropout(F(x))) with the RMS norm or LayerNorm, and the softmax with dropout between the
  explicit attention's cuBLAS products, one launch each way instead of a chain of PyTorch operations
  (Triton comes with torch's CUDA builds; the modules are imported on first use; `triton_dropout.py`
  holds the dropout mask rule and seed they share); `triton_aot.py` compiles them for CUDA GPUs on a
  machine without one, to check their code.

Each build needs a C++ compiler and takes about 20 s once (cached under TORCH_EXTENSIONS_DIR); the
first use of any of them builds the three at once (`build_cpu_kernels`). Where a build is not possible,
the loader returns None and callers use their PyTorch path.

`ops.py` wraps the kernels as PyTorch operators (torch.ops.zoo.*) that torch.compile traces through;
`registry.py` is the table of every op's implementations (these kernels, torch's, the references)
keyed by device type and dtype, through which zoo.norms, zoo.rope, zoo.dropout and zoo.attention
dispatch.

The kernels read raw row-major memory, so their entry points check device, dtype, contiguity and
shapes and raise naming the entry point and the argument ("attention_backward: grad_out must be
contiguous, ..."); the operators in `ops.py` make inputs and incoming gradients contiguous first (RoPE's
rows: unit stride), inside their bodies, which costs nothing when they are.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
KERNELS = Path(__file__).parent
LANES = 65536
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


@functools.cache
def cpu_tag() -> str:
    """A short digest of the CPU's model and instruction-set flags. Builds use -march=native, so the
    extension name carries it: a cache directory shared by different machines (a network home) then
    holds one build per CPU instead of handing one CPU's build to another."""
    import hashlib
    import platform

    described = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            described += "".join(sorted({line for line in info if line.startswith(("flags", "model name"))}))
    except OSError:
        pass
    return hashlib.sha1(described.encode()).hexdigest()[:8]


def disabled_by_environment(name: str) -> bool:
    """Whether ZOO_DISABLE_KERNELS switches the compiled module `name` off: "1" every one, Triton
    included; otherwise a comma-separated list of modules ("dropout", "attention", "elementwise",
    "triton"), "cpu" standing for the three C++ ones (a GPU machine that should not build them but
    keep its Triton kernels: ZOO_DISABLE_KERNELS=cpu)."""
    value = os.environ.get("ZOO_DISABLE_KERNELS", "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    names = {part.strip() for part in value.split(",") if part.strip()}
    unknown = names - set(SOURCES) - {"triton", "cpu"}
    if unknown:
        raise ValueError(f"ZOO_DISABLE_KERNELS={value!r}: unknown module(s) {sorted(unknown)}; use 1 (all), or a "
                         f"comma-separated list of {', '.join([*SOURCES, 'triton', 'cpu'])}")
    return name in names or ("cpu" in names and name in SOURCES)


def _build(name: str, source: str):
    try:
        from torch.utils.cpp_extension import load

        return load(
            name=f"{name}_{cpu_tag()}",
            sources=[str(KERNELS / source)],
            extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd"],
            extra_include_paths=[str(KERNELS)],
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, ...: fall back to the PyTorch path
        logger.warning("zoo: the CPU kernel %s could not be built (%s); using the slower PyTorch path", source, error)
        return None


SOURCES = {
    "dropout": "dropout_cpu.cpp",
    "attention": "attention_cpu.cpp",
    "elementwise": "elementwise_cpu.cpp",
}
_BUILT: dict[str, object] = {}  # name → the loaded module, or None where it could not be built


def _import_triton():
    """Triton, for the CUDA kernels written in it, or None where it cannot be imported."""
    try:
        import triton

        return triton
    except Exception as error:  # not installed (a CPU build of torch), or broken: the PyTorch path is used
        logger.info("zoo: Triton cannot be imported (%s); CUDA uses the PyTorch paths instead of its kernels", error)
        return None


_BUILDING = threading.Lock()  # one thread builds; another that needs a module meanwhile waits for it


@torch.compiler.disable
def _load(name: str):
    if name == "triton":
        if name not in _BUILT:
            _BUILT[name] = None if disabled_by_environment(name) else _import_triton()
    else:
        build_cpu_kernels()
    return _BUILT[name]


def build_cpu_kernels() -> dict[str, object]:
    """Build (or load from the cache) every C++ module not built yet in this process and not switched
    off by ZOO_DISABLE_KERNELS, all at once: each is one compiler process of about 20 s, and a model on
    the CPU uses all three in its first training step, so the first use of any of them starts the three
    (on two cores 35 s instead of 65: BENCHMARKS.md). Returns {name: module, or None where it could not be
    built or is switched off}."""
    with _BUILDING:
        _BUILT.update({name: None for name in SOURCES if name not in _BUILT and disabled_by_environment(name)})
        wanted = [name for name in SOURCES if name not in _BUILT]
        if wanted:
            import torch.utils.cpp_extension  # noqa: F401  imported here, not by the threads at once

            with concurrent.futures.ThreadPoolExecutor(len(wanted), thread_name_prefix="zoo-kernel-build") as pool:
                _BUILT.update(zip(wanted, pool.map(build_module, wanted)))
    return {name: _BUILT[name] for name in SOURCES}


def build_module(name: str):
    """Build (or load from the cache) the C++ module `name` ("dropout", "attention", "elementwise") alone,
    whether or not this process has it already; None where it cannot be built."""
    return _build(f"zoo_{name}_cpu", SOURCES[name])


def compiled(name: str):
    """The compiled module `name` ("dropout", "attention", "elementwise"), built on first use, or None;
    "triton": Triton itself, or None where it cannot be imported."""
    return _BUILT[name] if name in _BUILT else _load(name)


@torch.compiler.assume_constant_result
def available(name: str) -> bool:
    """Whether the compiled module `name` is built or can be built here. `torch.compile` calls this
    while tracing and keeps the answer as a constant, so the kernels' choice adds nothing to the graph
    (the first call builds them, before the traced code runs)."""
    return compiled(name) is not None


def dropout_kernels():
    """The compiled dropout module (masked_scale, softmax_dropout_backward), or None if it cannot be built."""
    return compiled("dropout")


def attention_kernels():
    """The compiled blocked attention (attention_forward, attention_backward), or None."""
    return compiled("attention")


def elementwise_kernels():
    """The compiled RMS norm and RoPE (rms_norm_forward/backward, rope), or None."""
    return compiled("elementwise")


def on_device(device: torch.device):
    """The context a kernel that is not an ATen operation (Triton's) is launched in on `device`: there,
    that GPU made the current CUDA device. ATen's operators switch to their tensors' GPU themselves (a
    device guard); a Triton launch goes to the current device and its stream, so a model on cuda:1 while
    cuda:0 is current would otherwise run its kernels on the wrong GPU, racing the right one's stream.
    Nothing on other devices (Triton's interpreter runs CPU tensors)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def triton_launch(kernel: str, device: torch.device):
    """The context a Triton kernel (named, for the record) is launched in: on `device` (`on_device`), with
    the dispatch modes set aside. A launch is no ATen operation, but Triton's interpreter (the test
    suite's, without a GPU) copies the arguments with ATen operations, which a mode such as selective
    recomputation's cache (zoo.recompute) would answer from its first run; on a GPU the launch makes no
    ATen call, so nothing changes there. `scripts/benchmarks/kernel_launches.py` counts launches through
    this function."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), on_device(device):
        yield


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last dimension is read at unit stride, else a contiguous copy: the RoPE
    kernel takes any strides across rows (q and k arrive as transposed views) but not within one."""
    if t.dim() == 0 or t.shape[-1] <= 1 or t.stride(-1) == 1:
        return t
    return t.contiguous() if t.numel() else t.new_empty(t.shape)  # an empty tensor counts as contiguous already


def empty_rows_like(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor like x whose rows (its last dimension, at unit stride) follow each other
    across the other dimensions in the order of x's strides. RoPE's CUDA entry writes q and k so
    (`keep_layout`): they arrive as transposed views of their [B, S, H, d] projections and stay sequence
    first. CUDA's flash attention allocates its output like q, so the output is then sequence first as
    well and merging its heads into [B, S, H·d] is a view, where a heads-first q costs a copy forward
    and one per q and k backward. The C++ kernel (elementwise_cpu.cpp) follows the same rule."""
    lead = sorted(range(x.dim() - 1), key=lambda i: -x.stride(i))  # stable: ties keep the logical order
    return torch.empty_permuted(x.shape, (*lead, x.dim() - 1), dtype=x.dtype, device=x.device)


def resident_programs(work: int, device: torch.device) -> int:
    """How many programs walk `work` items (rows, blocks of rows) in a Triton kernel that keeps a
    per-program share of a sum (a norm's or a scale's gradient): four per multiprocessor on CUDA, enough
    to fill the GPU with few shares to add up afterwards; four in Triton's interpreter."""
    per_device = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(work, per_device))


def threshold_for(p: float) -> int:
    """Lanes below round(p · 2¹⁶) are dropped: the realised rate is within 8e-6 of p. At most 2¹⁶ − 1, so that
    one lane in 2¹⁶ is kept: a rate in [1 − 2⁻¹⁷, 1) rounded to all of them, and its keep scale divided by 0
    (there the realised rate is within 1.6e-5 of p)."""
    return min(round(p * LANES), LANES - 1)


def keep_scale(p: float) -> float:
    """1 / (1 − realised rate): kept elements are scaled so the expectation is exact."""
    return LANES / (LANES - threshold_for(p))


def new_seed() -> int:
    """A mask seed drawn from torch's default generator, so torch.manual_seed reproduces masks."""
    return int(torch.randint(0, 2**62, (1,), device="cpu").item())  # no wait for a GPU


def reference_keep_mask(shape, p: float, seed: int) -> torch.Tensor:
    """The kernel's keep-mask computed independently in Python (for tests): element i is kept when
    16-bit lane i mod 4 of splitmix64(seed + (i // 4 + 1)·φ) is ≥ round(p · 2¹⁶)."""
    import numpy as np

    n = int(np.prod(shape))
    counters = np.arange(n // 4 + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (counters + np.uint64(1)) * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    lanes = z.view(np.uint16).reshape(-1, 4)[: (n + 3) // 4].reshape(-1)[:n]  # little-endian: lowest lane first
    return torch.from_numpy(lanes >= threshold_for(p)).reshape(shape)
