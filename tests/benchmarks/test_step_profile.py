"""scripts/benchmarks/step_profile.py: the kinds it sorts CUDA kernels into (names as an H100/H200 trace
shows them), the GPU's busy time as a union of intervals, the per-step summary, and the whole script in
its CPU dry mode, so that it does not fail for the first time in a GPU session's few minutes."""

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "benchmarks"))

import step_profile  # noqa: E402

# kernel names as torch 2.11 (cu130) and DeepSpeed name them on Hopper, with the kind each belongs to
CUDA_KERNELS = {
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, "
    "cutlass::bfloat16_t>, true, false, false, false, true, true, false>(Flash_fwd_params)": "attention",
    "fmha_cutlassB_bf16_aligned_64x64_k64_seqaligned_sm80(PyTorchMemEffAttention::AttentionBackwardKernel)": "attention",
    "nvjet_tst_192x192_64x4_1x2_h_bz_coopA_NTN": "matmul",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_"
    "kernel__5x_cublas": "matmul",
    "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_nn_align8>(Params)": "matmul",
    # a cast's functor is a lambda: "{lambda" must not read as the LAMB optimizer
    "void at::native::vectorized_elementwise_kernel<4, at::native::bfloat16_copy_kernel_cuda(at::TensorIteratorBase&)"
    "::{lambda(float)#1}, std::array<char*, 2ul> >(int, at::native::bfloat16_copy_kernel_cuda(at::TensorIteratorBase&)"
    "::{lambda(float)#1}, std::array<char*, 2ul>)": "copy / cast",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, "
    "at::native::sum_functor<float, float, float>::operator()(at::TensorIterator&)::{lambda(float, float)#1}>, "
    "unsigned int, float, 4, 4> >(at::native::ReduceOp<...>)": "reduction",
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
    "TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, "
    "(at::native::ADAM_MODE)1, false>, double*, double, double, double, double, double, bool, float*, float*>": "optimizer",
    "void lamb_cuda_kernel_part1<float, float>(int, int, float const*, float*)": "optimizer",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul> >"
    "(int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)": "elementwise",
    "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, false>(int, float, "
    "float const*, float const*, float const*, float*, float*, float*)": "norm",
    "void at::native::(anonymous namespace)::fused_dropout_kernel_vec<c10::BFloat16, float, unsigned int, 1, 4, bool>"
    "(at::cuda::detail::TensorInfo<...>, unsigned int, float, at::PhiloxCudaState)": "dropout",
    "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::native::"
    "(anonymous namespace)::LogSoftMaxForwardEpilogue>(float*, float const*, int)": "softmax / loss",
    "void at::native::(anonymous namespace)::indexing_backward_kernel_stride_1<c10::BFloat16>(long const*, "
    "long const*, c10::BFloat16 const*, c10::BFloat16*, long, long, long, long, bool)": "embedding / indexing",
    "void at::native::index_elementwise_kernel<128, 4, at::native::gpu_index_kernel<...> >(long, ...)": "embedding / indexing",
    "Memcpy HtoD (Pageable -> Device)": "copy / cast",
    "Memset (Device)": "copy / cast",
    "void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, false, false>"
    "(cublasSplitKParams<float>, __nv_bfloat16 const*, float const*, __nv_bfloat16*)": "matmul",
    "void at::native::(anonymous namespace)::masked_scale_kernel<c10::BFloat16, bool, float>(at::Tensor&, "
    "at::Tensor const&, at::Tensor const&, float)": "dropout",
    "triton_poi_fused__to_copy_add_mul_native_dropout_0": "compiled (inductor)",
    "triton_red_fused__fused_rms_norm_1": "compiled (inductor)",
}


@pytest.mark.parametrize("name, kind", CUDA_KERNELS.items(), ids=[k[:48] for k in CUDA_KERNELS])
def test_cuda_kernels_are_sorted_by_kind(name, kind):
    assert step_profile.kind_of(name) == kind


def test_every_zoo_triton_kernel_and_cpu_operator_is_ours():
    from zoo.kernels.triton_aot import kernels

    names = list(kernels()) + ["zoo::rope", "zoo::rms_norm_backward", "zoo::masked_scale"]
    assert len(names) >= 9
    assert {name: step_profile.kind_of(name) for name in names} == {name: "ours (Triton, C++)" for name in names}


@pytest.mark.parametrize("name, kind", [("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("aten::_to_copy", "copy / cast"),
                                        ("aten::native_layer_norm", "norm"), ("aten::add", "elementwise"),
                                        ("zoo::blocked_attention", "attention"),  # attention first, whoever's
                                        ("autograd::engine::evaluate_function: MmBackward0", "other")])
def test_cpu_operators_are_sorted_by_kind(name, kind):
    assert step_profile.kind_of(name) == kind


def test_busy_time_is_the_union_of_the_intervals():
    """Against counting the covered nanoseconds one by one: nested, touching, overlapping and disjoint
    intervals, in random order."""
    generator = random.Random(0)
    for _ in range(200):
        intervals = []
        for _ in range(generator.randint(0, 12)):
            start = generator.randint(0, 300)
            intervals.append((start, start + generator.randint(0, 60)))
        covered = set(itertools.chain.from_iterable(range(start, end) for start, end in intervals))
        assert step_profile.busy_ns(intervals) == len(covered)
    assert step_profile.busy_ns([(0, 10), (10, 20), (2, 5)]) == 20


class KinetoEvent:
    """The part of torch's `_KinetoEvent` that `device_records` reads; without `activity_type` where the
    torch it stands for does not bind it."""

    def __init__(self, name, device, activity, start, duration, bound=True):
        self._values = dict(name=name, device_type=device, start_ns=start, duration_ns=duration,
                            is_user_annotation=activity == "gpu_user_annotation")
        if bound:
            self._values["activity_type"] = activity

    def __getattr__(self, key):
        if key not in self._values:
            raise AttributeError(key)
        return lambda: self._values[key]


@pytest.mark.parametrize("bound", [True, False], ids=["activity_type", "without activity_type"])
def test_device_records_are_kernels_copies_and_memsets_only(bound):
    """Kineto files the optimizer's user-annotation range and synchronisation events under the CUDA device
    too: spans, not work, which would be counted as kernels and fill the busy time's gaps. Where torch
    binds no `activity_type`, the annotation says it is one and the synchronisations' names say so."""
    from torch.autograd import DeviceType

    cuda, cpu = DeviceType.CUDA, DeviceType.CPU
    rows = [("nvjet_tst_a", cuda, "kernel", 10, 5), ("Memcpy HtoD", cuda, "gpu_memcpy", 20, 2),
            ("Memset (Device)", cuda, "gpu_memset", 30, 1), ("Optimizer.step#AdamW.step", cuda, "gpu_user_annotation", 0, 100),
            ("cudaDeviceSynchronize", cuda, "cuda_sync", 40, 50), ("Context Sync", cuda, "cuda_sync", 60, 5),
            ("Stream Wait Event", cuda, "cuda_sync", 70, 5), ("aten::mm", cpu, "cpu_op", 5, 8),
            ("cudaLaunchKernel", cpu, "cuda_runtime", 6, 1), ("empty_kernel", cuda, "kernel", 50, 0)]
    events = [KinetoEvent(*row, bound=bound) for row in rows]
    assert step_profile.device_records(events) == [("nvjet_tst_a", 10, 5), ("Memcpy HtoD", 20, 2),
                                                   ("Memset (Device)", 30, 1)]


def test_the_summary_is_per_step():
    records = [("nvjet_tst_a", 0, 4_000_000), ("flash_fwd", 1_000_000, 2_000_000),  # overlaps the product
               ("nvjet_tst_a", 10_000_000, 4_000_000), ("Memset (Device)", 20_000_000, 1_000_000)]
    summary = step_profile.summarise(records, steps=2, device=True)
    assert summary["busy_ms"] == pytest.approx((4 + 4 + 1) / 2)
    assert summary["kernels_per_step"] == 2
    assert summary["by_kind_ms"] == pytest.approx({"attention": 1.0, "matmul": 4.0, "copy / cast": 0.5})
    assert list(summary["by_kind_ms"]) == ["attention", "matmul", "copy / cast"]  # KINDS' order
    assert [(t["name"], t["ms"], t["calls"]) for t in summary["top"]] == [
        ("nvjet_tst_a", 4.0, 1.0), ("flash_fwd", 1.0, 0.5), ("Memset (Device)", 0.5, 0.5)]
    on_the_cpu = step_profile.summarise(records, steps=2, device=False)
    assert on_the_cpu["busy_ms"] is None and on_the_cpu["kernels_per_step"] is None


def test_the_profile_runs_every_cell_in_its_dry_mode(tmp_path):
    result = subprocess.run([sys.executable, "scripts/benchmarks/step_profile.py", "--dry", "--steps", "2",
                             "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    payload = json.loads((tmp_path / "step_profile.json").read_text())
    assert payload["dry"]
    assert [c.get("error") for c in payload["cells"]] == [None] * 15
    assert {(c["mode"], c["seq_len"], c["model"]) for c in payload["cells"]} == {
        (mode, length, model) for mode, length, _ in step_profile.DRY_CELLS for model in step_profile.MODELS}
    for cell in payload["cells"]:
        assert cell["step_ms"] > 0 and cell["host_ms"] > 0 and cell["busy_ms"] is None
        assert cell["by_kind_ms"]["matmul"] > 0 and len(cell["top"]) == step_profile.TOP
    ours = [c for c in payload["cells"] if c["model"].startswith("zoo")]
    assert all(c["by_kind_ms"]["ours (Triton, C++)"] > 0 for c in ours)  # the CPU kernels ran
    report = (tmp_path / "step_profile.md").read_text()
    assert report.startswith("| mode | model | S | batch | step ms | host ms | GPU busy ms | kernels | attention |")
    assert "Longest kernels, train zoo GAU-α-base (S = 64):" in report
    assert (tmp_path / "step_profile.png").stat().st_size > 0


def test_an_unknown_model_is_refused_by_name(capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        step_profile.main(["--dry", "--out", str(tmp_path), "--models", "zoo RoFormerV2-base", "BERT-large"])
    assert stopped.value.code == 2
    assert "--models: unknown ['BERT-large']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
