"""Run metrics: the JSONL log (plus TensorBoard when installed) and the MFU denominator."""

from __future__ import annotations

import collections
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


# Dense peak (no structured sparsity) of NVIDIA's datasheets, TFLOP/s per GPU, by a pattern of
# torch.cuda.get_device_name(). bf16/fp16 are tensor-core rates; fp32 is the CUDA-core rate, which is
# what PyTorch's fp32 matmuls use unless TF32 is switched on. First match wins.
DATASHEET_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"\bH100 PCIe\b", {"bf16": 756.5, "fp16": 756.5, "fp32": 51.2}),
    (r"\bH[12]00 NVL\b", {"bf16": 835.5, "fp16": 835.5, "fp32": 60.0}),  # H100 NVL, H200 NVL
    (r"\b(GH200|H200|H100|H800)\b", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),  # SXM
    (r"\b(A100|A800)\b", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    (r"\bL40S\b", {"bf16": 362.1, "fp16": 362.1, "fp32": 91.6}),
    (r"\bL4\b", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    (r"\bA10\b", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    (r"\bRTX 4090\b", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
    (r"\bV100\b", {"fp16": 125.0, "fp32": 15.7}),
)
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def datasheet_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet's dense peak for this GPU and dtype, or None for a device not in the table."""
    key = _DTYPE_NAMES.get(dtype)
    for pattern, peaks in DATASHEET_TFLOPS:
        if re.search(pattern, device_name):
            return peaks.get(key)
    return None


@dataclass(frozen=True)
class PeakFlops:
    """The MFU denominator of one rank, and where it comes from.

    basis: "datasheet" (a known GPU), "recipe" (training.peak_tflops) or "measured" (a dense matmul
    timed at start: CPUs, where no datasheet figure holds, and GPUs missing from the table).
    """

    per_rank: float
    basis: str
    description: str


def mfu_peak(runtime, dtype: torch.dtype, override_tflops: float | None = None) -> PeakFlops:
    """Every rank calls this together, and every rank makes the same collectives whatever its device:
    ranks of a mixed cluster (a GPU of the datasheet table next to one that is not) decide together
    whether any of them measures, and then all of them meet at the barrier before the measuring ranks
    time their matmuls at once (so that ranks sharing a CPU measure the share of it they will train with)."""
    dtype_name = _DTYPE_NAMES.get(dtype, str(dtype))
    if override_tflops:  # the recipe's, the same on every rank
        return PeakFlops(override_tflops * 1e12, "recipe", f"training.peak_tflops = {override_tflops:g} TFLOP/s per rank")
    datasheet = None
    if runtime.is_cuda:
        name = torch.cuda.get_device_name(runtime.device)
        tflops = datasheet_tflops(name, dtype)
        if tflops is not None:
            datasheet = PeakFlops(tflops * 1e12, "datasheet", f"{name} {dtype_name} dense datasheet peak, {tflops:g} TFLOP/s")
    if runtime.world_size > 1 and float(runtime.max_across_ranks([float(datasheet is None)])[0]):
        dist.barrier()
    if datasheet is not None:
        return datasheet
    measured = max(measure_matmul_peak(dtype, device=runtime.device) for _ in range(3))
    where = torch.cuda.get_device_name(runtime.device) if runtime.is_cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    return PeakFlops(measured, "measured", f"measured {dtype_name} matmul peak ({where}, all ranks at once), "
                                           f"{measured / 1e12:.3g} TFLOP/s per rank")


def device_census(runtime) -> dict[str, int]:
    """How many ranks run on each kind of device ({"NVIDIA H100 80GB HBM3": 16}, {"cpu": 2}), the same on
    every rank (every rank calls this together: one collective)."""
    name = torch.cuda.get_device_name(runtime.device) if runtime.is_cuda else runtime.device.type
    names = [name]
    if runtime.world_size > 1:
        names = [None] * runtime.world_size
        dist.all_gather_object(names, name)
    return dict(sorted(collections.Counter(names).items()))


CPU_MEASURE_SECONDS = 0.5  # the most one CPU measurement should spend, whatever the CPU
_CPU_PROBE_SIDE = 256


def measure_matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5, device="cpu") -> float:
    """Measured dense matmul throughput of this process (FLOP/s) for `dtype`.

    On a GPU the side is at least 8192. On the CPU `size` is the largest side: a CPU without native
    instructions for `dtype` (bf16 on an AVX2 CPU, without AVX-512: about 1 GFLOP/s, against 1-3 TFLOP/s
    with AMX) would spend minutes on 2048-wide products, so a 256-wide probe times the rate first
    and the side halves until the repeats fit in CPU_MEASURE_SECONDS."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)  # leave the global RNG (dropout) untouched
    if device.type != "cpu":
        size, repeats = max(size, 8192), max(repeats, 20)
    else:
        side = min(size, _CPU_PROBE_SIDE)
        size = cpu_matmul_side(_time_matmuls(dtype, side, 1, device, generator), side, size, repeats)
    return _time_matmuls(dtype, size, repeats, device, generator)


def cpu_matmul_side(probe_flops: float, probe_side: int, size: int, repeats: int) -> int:
    """The side, `size` halved as often as needed (not below the probe's), at which `repeats` products
    and a warm-up one take at most CPU_MEASURE_SECONDS at the probe's rate."""
    while size > probe_side and 2 * size**3 * (repeats + 1) / probe_flops > CPU_MEASURE_SECONDS:
        size //= 2
    return max(size, probe_side)


def _time_matmuls(dtype: torch.dtype, size: int, repeats: int, device: torch.device, generator) -> float:
    """FLOP/s of `repeats` products of two size × size matrices, after one untimed product."""
    # drawn on the generator's device (the CPU) whatever torch.set_default_device says, then moved
    a = torch.randn(size, size, generator=generator, device="cpu").to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator, device="cpu").to(device=device, dtype=dtype)
    a @ b
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


class MetricsLog:
    """Appends one JSON object per event to metrics.jsonl (rank 0 only); mirrors scalars to TensorBoard."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.writer = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def write(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def rewind(self, step: int, stage: int = 0) -> int:
        """Before a resume from the checkpoint at (`step`, growth `stage`): drop the records the killed
        run wrote after it (they are about to be written again), and a last line cut short by the kill.
        Rewrites the file atomically; returns how many records were dropped."""
        if not self.enabled or not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if record.get("step", 0) > step or (record.get("step") == step and record.get("stage", 0) > stage):
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        return dropped

    def set_aside(self) -> Path | None:
        """Before a fresh start in a folder that has a metrics.jsonl (an attempt that died before its first
        checkpoint, or a run whose checkpoints were deleted): move it to metrics.<time>.jsonl, so that this
        run's records are not mixed with those and nothing is lost. Returns the new path, or None."""
        if not self.enabled or not self.path.exists():
            return None
        kept = self.path.with_name(f"{self.path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{self.path.suffix}")
        os.replace(self.path, kept)
        return kept

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path, kind: str | None = None) -> list[dict]:
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]
