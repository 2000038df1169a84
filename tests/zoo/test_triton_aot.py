"""The Triton kernels compiled for the GPUs users pretrain on, here without one (zoo/kernels/triton_aot.py).

The interpreter tests (test_triton_kernels.py) check the kernels' arithmetic; these check that each
kernel, as every preset launches it at every precision, compiles for sm_80 (A100) and sm_90 (H100,
H200), and what it takes there: no register spilled to local memory, and at most 128 registers per
thread, so that four programs of four warps fit in a multiprocessor's 65,536 registers (before the
scale pair's kernels were rebalanced its backward took up to 255, the most a thread can have).
Compiling needs a process without TRITON_INTERPRET, so the compiling runs in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from zoo.presets import preset_config
from zoo.rope import rope_reference

aot = pytest.importorskip("zoo.kernels.triton_aot", reason="Triton is not installed (pip install -e .[test])")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from zoo.kernels import triton_residual_norm, triton_rope, triton_softmax_attention  # noqa: E402

REGISTER_BUDGET = 128


def without_interpreter(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


# slow: compiling every launch for both targets took 68 s with Triton's cache empty, 38 s with it filled, on a
# 2-core CPU; .ci/run runs the two tests that take it after the default test run
@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    """One record per kernel launch variant and architecture, from the command line tool."""
    out = tmp_path_factory.mktemp("triton_aot") / "kernels.json"
    result = without_interpreter(["-m", "zoo.kernels.triton_aot", "--arch", "80", "90", "--json", str(out)])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "none spills" in result.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90(compiled):
    assert not [r for r in compiled if "error" in r]
    kernels = {(r["kernel"], r["arch"]) for r in compiled}
    assert kernels == {(name, arch) for name in aot.kernels() for arch in (80, 90)}
    # every precision of every family: the residual step in fp32 and in each autocast and weight dtype
    cases = {tuple(r["dtypes"][:2]) for r in compiled if r["kernel"] == "_residual_norm_forward"}
    assert {("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "bfloat16"),
            ("float16", "float32"), ("float16", "float16")} <= cases


@pytest.mark.slow
def test_no_kernel_spills_or_exceeds_the_register_budget(compiled):
    spilling = [r for r in compiled if r["stack"] or r["local"]]
    assert not spilling
    heavy = [(r["kernel"], r["arch"], r["registers"], r["case"]) for r in compiled if r["registers"] > REGISTER_BUDGET]
    assert not heavy
    # four warps, except the explicit attention's rows of up to 8192 keys: 16 values per thread at most
    assert all(r["num_warps"] == (triton_softmax_attention._warps(r["constexprs"]["SIZE"])
                                  if r["kernel"].startswith("_softmax_dropout") else 4) for r in compiled)
    assert {r["num_warps"] for r in compiled} == {4, 16}


def test_a_new_dropout_seed_compiles_nothing_new():
    """The residual step's mask seed changes every step; a seed divisible by 16 (or 1) must not take a
    new specialisation, a compilation in the middle of training."""
    code = textwrap.dedent("""
        import torch
        from zoo.kernels import triton_aot as aot, triton_residual_norm as trn
        for seed in (1234567, 16 * 77777, 1, 99):
            with aot.recording() as launches:
                f = torch.empty(4, 16, 768, dtype=torch.bfloat16, requires_grad=True)
                w, b = torch.empty(768, requires_grad=True), torch.empty(768, requires_grad=True)
                for weight, bias in ((None, None), (w, b)):
                    trn.ResidualNorm.apply(f, f.float(), 1.0, 0.1, 1e-6, seed, weight, bias).sum().backward()
            for launch in launches:
                aot.compile_launch(launch, 90)
        print([aot.compilations(k, 90) for k in (trn._residual_norm_forward, trn._residual_norm_backward,
                                                 trn._residual_layer_norm_backward)])
    """)
    result = without_interpreter(["-c", code], timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    # forward: RMS and LayerNorm; each backward once
    assert result.stdout.strip().splitlines()[-1] == "[2, 1, 1]"


def test_launches_follow_the_model_config():
    launches = aot.model_launches(preset_config("gau-alpha-base"), "bf16-autocast")
    by_kernel = {}
    for launch in launches:
        by_kernel.setdefault(launch.name, []).append(launch)
    assert sorted(by_kernel) == ["_residual_norm_backward", "_residual_norm_forward", "_rope_rows",
                                 "_scale_pair_backward", "_scale_pair_forward"]
    # RoPE on q and k of width s = 128, forward and backward (sign −1); the scale pair over s
    assert {launch.constexprs()["HALF"] for launch in by_kernel["_rope_rows"]} == {64}
    assert [launch.args[-1] for launch in by_kernel["_rope_rows"]] == [1.0, -1.0]
    # rotated and q times softmax_plus's row factor (a plain context), and neither (a position variant's)
    pair = by_kernel["_scale_pair_forward"]
    assert [(f.constexprs()["HALF"], f.constexprs()["ROTATE"], f.constexprs()["SCALE_Q"]) for f in pair] == [
        (64, True, True), (64, False, False)]
    # the residual step over the 768-wide stream (padded to 1024), with dropout in training and without
    # in evaluation; a bf16 branch onto the fp32 residual stream
    forward = by_kernel["_residual_norm_forward"]
    assert [(f.constexprs()["SIZE"], f.constexprs()["DROPOUT"], f.constexprs()["LAYER_NORM"]) for f in forward] == [
        (1024, True, False), (1024, False, False)]
    assert forward[0].dtypes()[:2] == ["bfloat16", "float32"]
    # with the explicit attention, its two kernels over rows of 512 keys and of the most a program takes,
    # in the products' dtype, with dropout and without
    explicit = aot.model_launches(preset_config("gau-alpha-base", attention_backend="matmul"), "bf16-autocast")
    softmax = [(launch.name, launch.constexprs()["SIZE"], launch.constexprs()["DROPOUT"], launch.dtypes()[0])
               for launch in explicit if launch.name.startswith("_softmax_dropout")]
    assert sorted(set(softmax)) == sorted((f"_softmax_dropout_{way}", size, dropout, "bfloat16") for way in
                                          ("forward", "backward") for size in (512, 8192) for dropout in (True, False))
    deepnet = aot.model_launches(preset_config("deepnet-12"), "fp32")
    assert {launch.name for launch in deepnet} == {"_rope_rows", "_residual_norm_forward",
                                                   "_residual_layer_norm_backward"}
    assert all(launch.constexprs().get("LAYER_NORM", True) for launch in deepnet)


def test_recording_leaves_the_kernels_as_they_were():
    x = torch.randn(1, 2, 5, 8)
    cos, sin = torch.rand(1, 1, 5, 4), torch.rand(1, 1, 5, 4)
    with aot.recording() as launches:
        unwritten = triton_rope.rope(x, cos, sin, 1.0)
    assert [launch.name for launch in launches] == ["_rope_rows"] and unwritten.shape == x.shape
    rotated = triton_rope.rope(x, cos, sin, 1.0)  # runs again (in the interpreter here)
    assert torch.allclose(rotated, rope_reference(x, cos, sin), atol=1e-6)
    assert all("run" not in vars(kernel) for kernel in aot.kernels().values())


def test_an_interpreted_kernel_is_refused_saying_how_to_compile():
    with aot.recording() as launches:
        triton_residual_norm.ResidualNorm.apply(torch.empty(2, 8), torch.empty(2, 8), 1.0, 0.0, 1e-6, 0, None, None)
    interpreted = aot.Launch(InterpretedFunction(launches[0].kernel.fn), launches[0].grid, launches[0].args,
                             launches[0].kwargs)
    with pytest.raises(RuntimeError, match="without TRITON_INTERPRET=1"):
        aot.compile_launch(interpreted, 90)
