"""The Triton kernels compiled ahead of time for CUDA GPUs, on a machine without one.

Without a GPU the test suite runs the Triton kernels (zoo/kernels/triton_*.py) in Triton's interpreter,
which checks their arithmetic but never lowers them for a GPU: a kernel the interpreter runs may still
fail to compile for one, or compile to code that spills registers to local memory. Triton's compiler,
ptxas and cuobjdump ship in the Triton wheel and need no driver, so this module compiles each kernel
as the models launch it, for the CUDA architectures users pretrain on, and reads what each compiled
kernel takes from the cubin (registers per thread, spill stack, local and shared memory).

The launches are recorded, not run: each wrapper (RoPE, GAU's scale pair, the post-norm residual step,
forward and backward) is called on CPU tensors shaped as the model's call would shape them, with every
kernel's `run` replaced by a recorder; the recorded arguments then go through `JITFunction.run(...,
warmup=True)`, the path a GPU launch takes up to the compilation, with a stand-in driver that names the
target. So each kernel is specialised as on the GPU: the same dtypes, the same constexprs (row widths,
rows per program, dropout on or off), the same integer and alignment specialisations.

    python -m zoo.kernels.triton_aot                      # every preset's launches, sm_80 and sm_90
    python -m zoo.kernels.triton_aot --arch 90 --preset gau-alpha-base
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from tqdm.auto import tqdm
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction, KernelInterface

from . import triton_residual_norm, triton_rope, triton_scale_pair, triton_softmax_attention

KERNEL_MODULES = (triton_rope, triton_scale_pair, triton_residual_norm, triton_softmax_attention)
ARCHES = (80, 90)  # A100; H100 and H200
BATCH, SEQ = 8, 512  # the shape a recorded launch is made for (rows divisible by 16, as in training)
# (branch dtype, residual-stream dtype) of each way a model runs: fp32 weights; bf16 or fp16 autocast,
# where the branch is a product's output and the residual stream stays fp32; bf16 or fp16 weights
PRECISIONS = {
    "fp32": (torch.float32, torch.float32),
    "bf16-autocast": (torch.bfloat16, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp16-autocast": (torch.float16, torch.float32),
    "fp16": (torch.float16, torch.float16),
}


@dataclass
class Launch:
    """One recorded launch of `kernel` (a module's @triton.jit object)."""

    kernel: KernelInterface
    grid: tuple
    args: tuple
    kwargs: dict
    case: str = ""

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def constexprs(self) -> dict:
        return {name: value for name, value in self.kwargs.items() if name.isupper()}

    def dtypes(self) -> list[str]:
        """The dtypes of the tensor arguments, in order."""
        return [str(a.dtype).removeprefix("torch.") for a in self.args if isinstance(a, torch.Tensor)]


@dataclass
class CompiledLaunch:
    """What the compiled kernel of a launch takes on the target."""

    launch: Launch
    arch: int
    registers: int
    stack: int  # bytes per thread of the call stack (spilled registers among them)
    local: int  # bytes per thread of local memory (spills)
    shared: int  # bytes per program of shared memory
    num_warps: int

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0


def kernels() -> dict[str, KernelInterface]:
    """Every Triton kernel the zoo's kernel modules define, by name: not the helpers they import, such as
    triton_dropout.kept, nor those a module names in its DEVICE_FUNCTIONS, which are compiled into the
    kernels that call them."""
    return {name: value for module in KERNEL_MODULES for name, value in vars(module).items()
            if isinstance(value, KernelInterface) and value.fn.__module__ == module.__name__
            and name not in getattr(module, "DEVICE_FUNCTIONS", ())}


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Inside the block, kernel launches are appended to the yielded list instead of running (the
    wrappers' outputs are left unwritten)."""
    launches: list[Launch] = []
    patched = list(kernels().values())
    for kernel in patched:
        def record(*args, grid, warmup, _kernel=kernel, **kwargs):
            launches.append(Launch(_kernel, grid, args, kwargs))

        kernel.run = record
    try:
        yield launches
    finally:
        for kernel in patched:
            del kernel.run


def _rope_launches(heads: int, dim: int, dtype: torch.dtype, transposed: bool) -> None:
    """RoPE on q (and the same on k) forward, and the inverse rotation of its gradient backward."""
    if transposed:  # q as a [B, S, H·d] projection viewed as [B, H, S, d]
        x = torch.empty(BATCH, SEQ, heads, dim, dtype=dtype).transpose(1, 2)
    else:  # GAU's q: the scale pair's output [B, S, s] as [B, 1, S, s]
        x = torch.empty(BATCH, SEQ, dim, dtype=dtype)[:, None]
    cos = sin = torch.empty(1, 1, SEQ, dim // 2, dtype=dtype)
    triton_rope.rope(x, cos, sin, 1.0, True)
    triton_rope.rope(torch.empty_like(x), cos, sin, -1.0, True)  # the gradient, in q's layout as flash returns it


def _residual_norm_launches(size: int, branch_dtype, residual_dtype, layer_norm: bool, p: float) -> None:
    branch = torch.empty(BATCH, SEQ, size, dtype=branch_dtype, requires_grad=True)
    residual = torch.empty(BATCH, SEQ, size, dtype=residual_dtype, requires_grad=True)
    weight = torch.empty(size, requires_grad=True) if layer_norm else None
    bias = torch.empty(size, requires_grad=True) if layer_norm else None
    y = triton_residual_norm.ResidualNorm.apply(branch, residual, 1.0, p, 1e-6, 1234567, weight, bias)
    y.backward(torch.empty_like(y))


def _scale_pair_launches(config, dtype: torch.dtype) -> None:
    """GAU's q and k as a plain attention context has them made: rotated by the tables (RoPE) and q
    times its row factor (softmax_plus) in the same kernel; and as a position variant's context has
    them, neither (it rotates them itself)."""
    size = config.attention_key_size
    width = 2 * config.intermediate_size + size  # the gate x·W_i; z its last s columns
    z = torch.empty(BATCH, SEQ, width, dtype=dtype)[..., -size:].requires_grad_()
    gamma = torch.empty(size, requires_grad=True)
    rope = config.position_embedding_type == "rope"
    tables = (torch.empty(1, 1, SEQ, size // 2, dtype=dtype),) * 2 if rope else (None, None)
    # softmax_plus's log n / log 512 per row: float64, one per sequence of a padded batch
    row_scale = torch.empty(BATCH, 1, SEQ, 1, dtype=torch.float64) if config.attention_normalization == "softmax_plus" \
        else None
    for options in ((*tables, row_scale, size**-0.5), ()):
        q, k = triton_scale_pair.ScalePair.apply(z, gamma, gamma, *options)
        torch.autograd.backward((q, k), (torch.empty_like(q), torch.empty_like(k)))


def _softmax_attention_launches(config, dtype: torch.dtype, p: float) -> None:
    """The explicit attention (`attention_backend="matmul"`) forward and backward, with rows of SEQ keys
    (no padding, as in pretraining) and of the most one program takes (a padded batch's key mask: the
    kernels read the bias too)."""
    gau = config.block_type == "gau"
    heads = 1 if gau else config.num_attention_heads
    size = config.attention_key_size if gau else config.hidden_size // heads
    width = config.intermediate_size if gau else size
    for keys, padded in ((SEQ, False), (triton_softmax_attention.MAX_WIDTH, True)):
        q = torch.empty(1, heads, 4, size, dtype=dtype, requires_grad=True)
        k = torch.empty(1, heads, keys, size, dtype=dtype, requires_grad=True)
        v = torch.empty(1, heads, keys, width, dtype=dtype, requires_grad=True)
        bias = torch.empty(1, 1, 1, keys, dtype=dtype) if padded else None
        out = triton_softmax_attention.ExplicitSoftmaxAttention.apply(q, k, v, bias, size**-0.5, p, 1234567)
        out.backward(torch.empty_like(out))


def model_launches(config, precision: str) -> list[Launch]:
    """The Triton launches of a training step (dropout on) and of an evaluation pass (dropout off) of
    a model with `config`, at `precision` (a key of PRECISIONS)."""
    branch_dtype, residual_dtype = PRECISIONS[precision]
    with recording() as launches:
        gau = config.block_type == "gau"
        if config.position_embedding_type == "rope":
            if gau:  # (a position variant's context: the plain one rotates in the scale pair's kernel)
                _rope_launches(1, config.attention_key_size, branch_dtype, transposed=False)
            else:
                head = config.hidden_size // config.num_attention_heads
                _rope_launches(config.num_attention_heads, head, branch_dtype, transposed=True)
        if gau:
            _scale_pair_launches(config, branch_dtype)
        if config.residual in ("post", "deepnorm"):
            layer_norm = config.norm_type == "layernorm"
            for p in (config.hidden_dropout_prob, 0.0):
                _residual_norm_launches(config.hidden_size, branch_dtype, residual_dtype, layer_norm, p)
        if config.attention_backend == "matmul":
            for p in (config.attention_probs_dropout_prob, 0.0):
                _softmax_attention_launches(config, branch_dtype, p)
    return launches


class _CompileOnlyDriver(DriverBase):
    """A driver that only names the target: what `JITFunction.run(..., warmup=True)` asks of one to
    compile without launching."""

    def __init__(self, target: GPUTarget):
        self.target = target

    @classmethod
    def is_active(cls):
        return False

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return _device_key(self.target.arch)

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        raise RuntimeError("a compile-only target cannot run kernels")

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise RuntimeError("a compile-only target builds no launcher")


def _device_key(arch: int) -> str:
    """The stand-in device a target's compilations are cached under in each kernel (one per target)."""
    return f"cuda-{arch}"


@contextlib.contextmanager
def _target(arch: int) -> Iterator[None]:
    state = dict(vars(driver))  # which driver is active, as this Triton version keeps it (none made yet here)
    driver.set_active(_CompileOnlyDriver(GPUTarget("cuda", arch, 32)))
    try:
        yield
    finally:
        vars(driver).clear()
        vars(driver).update(state)


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers, stack, shared and local memory of the kernel in a cubin, as cuobjdump reports them."""
    cuobjdump = triton.knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        report = subprocess.run([cuobjdump, "--dump-resource-usage", handle.name], capture_output=True, text=True,
                                check=True).stdout
    found = _RESOURCES.search(report)
    if found is None:
        raise RuntimeError(f"cuobjdump reported no resource usage:\n{report}")
    return dict(zip(("registers", "stack", "shared", "local"), map(int, found.groups())))


def compile_launch(launch: Launch, arch: int) -> CompiledLaunch:
    """Compile the kernel of `launch` for sm_`arch` as a GPU launch with the same arguments would; the
    kernel keeps it in its cache (for the target), so a launch that specialises the same way reuses it."""
    if not isinstance(launch.kernel, JITFunction):
        raise RuntimeError("compiling Triton kernels for a GPU needs a process without TRITON_INTERPRET=1 (the "
                           "interpreter's kernels do not lower): run python -m zoo.kernels.triton_aot with it unset")
    with _target(arch):
        compiled = launch.kernel.run(*launch.args, grid=launch.grid, warmup=True, **launch.kwargs)
    cubin = compiled.asm["cubin"]
    return CompiledLaunch(launch, arch, num_warps=compiled.metadata.num_warps, **resource_usage(cubin))


def compilations(kernel: JITFunction, arch: int) -> int:
    """How many variants of `kernel` the launches compiled so far for sm_`arch` took."""
    device = _device_key(arch)
    return len(kernel.device_caches[device][0]) if device in kernel.device_caches else 0


def distinct(launches: list[Launch]) -> list[Launch]:
    """One launch per kernel, constexprs and argument dtypes (what decides the compiled code besides
    the integer specialisations, which the shapes here share)."""
    seen, kept = set(), []
    for launch in launches:
        key = (launch.name, tuple(sorted(launch.constexprs().items())), tuple(launch.dtypes()))
        if key not in seen:
            seen.add(key)
            kept.append(launch)
    return kept


def preset_launches(presets: list[str]) -> list[Launch]:
    """The distinct launches of every precision of the named presets, with the attention they are
    published with and with the explicit one (`attention_backend="matmul"`)."""
    from ..presets import preset_config

    launches = []
    for preset in presets:
        for backend in ("auto", "matmul"):
            config = preset_config(preset, attention_backend=backend)
            for precision in PRECISIONS:
                for launch in model_launches(config, precision):
                    launch.case = f"{preset} {precision}" + (", matmul attention" if backend == "matmul" else "")
                    launches.append(launch)
    return distinct(launches)


def main(argv: list[str] | None = None) -> int:
    from ..presets import PRESETS

    parser = argparse.ArgumentParser(prog="python -m zoo.kernels.triton_aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHES),
                        help="compute capabilities to compile for (default: 80 90)")
    parser.add_argument("--preset", nargs="+", default=list(PRESETS), choices=list(PRESETS), metavar="PRESET",
                        help="the presets whose launches to compile (default: all)")
    parser.add_argument("--json", type=Path, help="also write one record per compiled kernel to this file")
    args = parser.parse_args(argv)
    launches = preset_launches(args.preset)
    records, failed = [], 0
    print(f"{'kernel':30} {'arch':>4} {'regs':>4} {'spill':>5} {'smem':>5} {'warps':>5}  constexprs, dtypes (first case)")
    for launch in tqdm(launches, desc="compiling", unit="launch", file=sys.stderr, leave=False):
        dtypes = ",".join(launch.dtypes())
        for arch in args.arch:
            record = {"kernel": launch.name, "arch": arch, "case": launch.case, "dtypes": launch.dtypes(),
                      "constexprs": launch.constexprs()}
            try:
                c = compile_launch(launch, arch)
            except Exception as error:  # report every kernel, then fail
                failed += 1
                record["error"] = f"{type(error).__name__}: {error}"
                tqdm.write(f"{launch.name:30} {arch:>4}  FAILED ({launch.case}): {record['error']}")
            else:
                failed += c.spills
                record.update(registers=c.registers, stack=c.stack, local=c.local, shared=c.shared,
                              num_warps=c.num_warps)
                tqdm.write(f"{launch.name:30} {arch:>4} {c.registers:>4} {c.stack + c.local:>5} {c.shared:>5} "
                           f"{c.num_warps:>5}  {launch.constexprs()}, {dtypes} ({launch.case})")
            records.append(record)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    print(f"{len(records) - failed} of {len(records)} compiled without spills" if failed else
          f"all {len(records)} compiled, none spills")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
