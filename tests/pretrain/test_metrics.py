"""pretrain.metrics: the MFU denominator and the metrics log after a resume."""

import json

import pytest
import torch

from pretrain.metrics import MetricsLog, datasheet_tflops, mfu_peak, read_metrics
from zoo.runtime import Runtime


@pytest.mark.parametrize("name,dtype,expected", [
    ("NVIDIA H200", torch.bfloat16, 989.4),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756.5),
    ("NVIDIA H100 NVL", torch.bfloat16, 835.5),
    ("NVIDIA H200 NVL", torch.bfloat16, 835.5),  # not the SXM H200's 989.4
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
    ("NVIDIA A100 80GB PCIe", torch.float32, 19.5),
    ("NVIDIA A10", torch.bfloat16, 125.0),
    ("NVIDIA A10G", torch.bfloat16, None),  # not in the table: measured instead
    ("NVIDIA L40S", torch.float16, 362.1),
    ("NVIDIA L4", torch.bfloat16, 121.0),
    ("Tesla V100-SXM2-32GB", torch.bfloat16, None),  # no bf16 tensor cores
    ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165.2),
])
def test_datasheet_peaks_by_device_name(name, dtype, expected):
    assert datasheet_tflops(name, dtype) == expected


def test_recipe_override_and_measured_cpu_basis():
    runtime = Runtime.resolve("cpu", torch.bfloat16)
    override = mfu_peak(runtime, torch.bfloat16, 2.5)
    assert (override.per_rank, override.basis) == (2.5e12, "recipe")
    measured = mfu_peak(runtime, torch.float32)
    assert measured.basis == "measured" and measured.per_rank > 1e9
    assert measured.description.startswith("measured fp32 matmul peak (CPU")


def test_rewind_drops_what_the_killed_run_wrote_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 7):
        log.write("train", step, loss=float(step))
    log.write("checkpoint", 4, stage=0)
    log.write("growth", 4, stage=1)  # written after the step-4 checkpoint of stage 0
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "step": 7, "lo')  # the line the kill cut short
    assert log.rewind(4, stage=0) == 4
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in records] == [("train", s) for s in range(1, 5)] + [("checkpoint", 4)]
    assert log.rewind(4, stage=0) == 0
    assert all(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())


GPU_NAMES = ["NVIDIA H100 80GB HBM3", "NVIDIA B200"]  # in the datasheet table, and not


def _mixed_gpu_rank(rank, world):
    """This rank's MFU peak on a GPU named GPU_NAMES[rank], then the evaluation's sum over ranks."""
    import pretrain.metrics as metrics

    class GpuRuntime(Runtime):  # the CUDA branch of mfu_peak, on a CPU tensor device (gloo)
        is_cuda = True

    torch.cuda.get_device_name = lambda *args: GPU_NAMES[rank]
    metrics.measure_matmul_peak = lambda *args, **kwargs: 1.5e15  # what the B200 would measure
    runtime = GpuRuntime(torch.device("cpu"), torch.bfloat16)
    peak = metrics.mfu_peak(runtime, torch.bfloat16)
    total = runtime.sum_across_ranks([peak.per_rank])
    sums = runtime.sum_across_ranks(torch.tensor([10.0 * (rank + 1), 100.0, 5.0]))
    census = metrics.device_census(runtime)
    return {"basis": peak.basis, "per_rank": peak.per_rank, "total": float(total[0]), "sums": sums.tolist(),
            "census": census}


def test_mixed_gpu_types_make_the_same_collectives_on_every_rank():
    """A GPU of the datasheet table next to one that is not: only the second measures, but both ranks
    make the same collectives, so the sums that follow pair up (they timed out when only the measuring
    rank called the barrier)."""
    from .ranks import run_ranks

    h100, b200 = run_ranks(_mixed_gpu_rank, world=2, timeout_s=15)
    assert (h100["basis"], h100["per_rank"]) == ("datasheet", 989.4e12)
    assert (b200["basis"], b200["per_rank"]) == ("measured", 1.5e15)
    assert h100["total"] == b200["total"] == pytest.approx(989.4e12 + 1.5e15, rel=1e-6)  # summed in float32
    assert h100["sums"] == b200["sums"] == [30.0, 200.0, 10.0]
    # the run record counts every rank's GPU, not only rank 0's
    assert h100["census"] == b200["census"] == {"NVIDIA B200": 1, "NVIDIA H100 80GB HBM3": 1}


def test_matmul_peak_draws_its_inputs_whatever_the_default_device():
    """The inputs come from a CPU generator: drawn on the CPU, then moved, also when the default device
    is another (a CUDA default refuses a CPU generator; a meta default draws tensors with no data)."""
    from pretrain.metrics import measure_matmul_peak

    with torch.device("meta"):  # not set_default_device(None) after: torch 2.9's get_default_device then fails
        peak = measure_matmul_peak(torch.float32, size=64, repeats=1)
    assert peak > 0


@pytest.mark.parametrize("probe_flops, side", [(1e9, 256), (120e9, 1024), (3e12, 2048)])
def test_cpu_matmul_peak_fits_its_time_on_any_cpu(monkeypatch, probe_flops, side):
    """bf16 on an AVX2 CPU (no AVX-512) runs at about 1 GFLOP/s: 2048-wide products (6 of them,
    3 times per start) would take minutes per rank. The side shrinks until the products fit in
    CPU_MEASURE_SECONDS at the probe's rate: 256 there, 1024 for fp32 on AVX2, 2048 with AMX."""
    from pretrain import metrics

    timed = []

    def time_matmuls(dtype, size, repeats, device, generator):
        timed.append((size, repeats))
        return probe_flops

    monkeypatch.setattr(metrics, "_time_matmuls", time_matmuls)
    assert metrics.measure_matmul_peak(torch.bfloat16) == probe_flops
    assert timed == [(256, 1), (side, 5)]
    assert 2 * side**3 * 6 / probe_flops <= metrics.CPU_MEASURE_SECONDS < 2 * (2 * side) ** 3 * 6 / probe_flops or side == 2048
