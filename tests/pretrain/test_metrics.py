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
