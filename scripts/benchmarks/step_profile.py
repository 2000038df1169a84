"""Where a step's time goes on one GPU: for our three families and transformers' BERT-base, training and
inference, the step's wall time, the host's share of it, how long the GPU was busy, and the GPU's time by
kind of kernel.

    python scripts/benchmarks/step_profile.py [--out DIR] [--steps 3]
    python scripts/benchmarks/step_profile.py --dry        # the CPU, tiny shapes: checks the script

gpu.py says how fast each model is; this says why. Eager mode pays every kernel launch on the host
(Python, the dispatcher, autograd, autocast), so a step is bound either by the host queueing kernels or
by the GPU running them, and the two call for different work: fewer launches and less Python per layer,
or fewer bytes and FLOPs. Each cell is the step gpu.py times (`training_step`, `inference_step`: bf16
autocast, dropout 0.1, vocabulary 12,000; training with the fused AdamW step), measured three ways:

- step: wall time per step, synchronised, as gpu.py measures it (3 warm-up steps first);
- host: the time `step()` takes to return when started on an idle GPU (median of the timed steps). No
  step here synchronises with the host (tests/cuda checks that for the training forward), so this is the
  time to queue the step's kernels. Host ≈ step with the GPU idle much of the step means the GPU waited
  for the host; host ≈ step with the GPU busy throughout can also mean the launch queue (about a
  thousand kernels deep) filled and made the host wait, so busy / step is the figure to judge by;
- GPU busy: the union of the step's kernel, copy and memset intervals under torch.profiler, and their time
  by kind (`kind_of`: matrix products, attention, our Triton kernels, copies and casts, norms, dropout,
  other elementwise work, reductions, the optimizer, ...), with the kernels that took longest.

With --dry (the CPU) there is no device: the kinds are the CPU operators' self time and "GPU busy" is
left empty. Writes step_profile.json, .md and .png to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gpu  # noqa: E402

from zoo.runtime import Runtime  # noqa: E402

MODELS = list(gpu.OURS) + ["zoo GAU-α-base, explicit attention", "transformers BERT-base (sdpa)"]
# (mode, S, batch): gpu.md §2's training shapes (at 2048 GAU-α's attention, which recomputes q·kᵀ for each
# of the 12 heads sharing q and k, took about half its step on the H200); the inference shape where
# RoFormerV2 ran at 0.39× BERT-base's tokens/s (BENCHMARKS.md)
CELLS = [("train", 512, 32), ("train", 2048, 8), ("infer", 128, 128)]
DRY_CELLS = [("train", 64, 4), ("train", 128, 2), ("infer", 32, 8)]
TOP = 8  # kernels listed per cell


def our_triton_kernels() -> tuple[str, ...]:
    """The names of zoo's Triton kernels (a compiled Triton kernel is named as its Python function)."""
    try:
        from zoo.kernels.triton_aot import kernels
    except ImportError:  # no Triton: none of ours can run
        return ()
    return tuple(name.lower() for name in kernels())


# (kind, lower-case substrings of a CUDA kernel's or a CPU operator's name), first match wins
KINDS = (
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("matmul", ("gemm", "cutlass", "xmma", "cublas", "nvjet", "wgmma", "splitkreduce", "aten::mm", "aten::addmm",
                "aten::bmm", "aten::_scaled_mm")),
    ("optimizer", ("multi_tensor", "fusedadam", "fused_adam", "lamb_cuda", "fusedlamb")),  # not "lamb": "{lambda"
    ("compiled (inductor)", ("triton_poi", "triton_red", "triton_per", "triton_tem")),
    ("ours (Triton, C++)", ("zoo::",) + our_triton_kernels()),
    ("copy / cast", ("copy", "memcpy", "memset", "aten::cat", "catarray", "clone", "fill")),
    ("norm", ("norm",)),
    ("dropout", ("dropout", "masked_scale")),  # torch's dropout backward on CUDA: masked_scale_kernel
    ("softmax / loss", ("softmax", "nll_loss", "cross_entropy")),
    ("embedding / indexing", ("embedding", "index", "gather", "scatter")),
    ("reduction", ("reduce", "aten::sum", "aten::mean")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "aten::")),
)
OTHER = "other"
KIND_NAMES = [kind for kind, _ in KINDS] + [OTHER]


def kind_of(name: str) -> str:
    """The kind of a CUDA kernel (by its name) or of a CPU operator (by its aten/zoo name)."""
    lowered = name.lower()
    for kind, patterns in KINDS:
        if any(pattern in lowered for pattern in patterns):
            return kind
    return OTHER


def busy_ns(intervals: list[tuple[int, int]]) -> int:
    """The length of the union of [start, end) intervals: the time at least one of them ran."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def summarise(records: list[tuple[str, int, int]], steps: int, device: bool) -> dict:
    """Per step: time by kind, the longest kernels and their calls, from (name, start ns, duration ns)
    records: a device's kernels (device=True: their union is the busy time) or CPU operators' self times."""
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, _, duration in records:
        by_kind[kind_of(name)] += duration
        by_name[name][0] += duration
        by_name[name][1] += 1
    top = sorted(by_name.items(), key=lambda item: -item[1][0])[:TOP]
    return {
        "busy_ms": busy_ns([(start, start + duration) for _, start, duration in records]) / steps / 1e6 if device else None,
        "kernels_per_step": len(records) / steps if device else None,
        "by_kind_ms": {kind: by_kind[kind] / steps / 1e6 for kind in KIND_NAMES if by_kind.get(kind)},
        "top": [{"name": name[:160], "kind": kind_of(name), "ms": total / steps / 1e6, "calls": calls / steps}
                for name, (total, calls) in top],
    }


DEVICE_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")  # kineto's names; not gpu_user_annotation ranges
# CUPTI's names of synchronisation events ("Context Sync", "Stream Wait Event", ...) and the runtime calls'
SYNCHRONISATION = re.compile(r"\bSync\b|Synchroni[sz]e|Stream Wait Event")


def is_device_work(event) -> bool:
    """A kernel, copy or memset: by its activity type where torch binds `activity_type` (this machine's 2.13
    does; the GPU image's 2.11 may not), else by what is not work: a user-annotation range, a synchronisation."""
    activity = getattr(event, "activity_type", None)
    if activity is not None:
        return activity() in DEVICE_ACTIVITIES
    return not event.is_user_annotation() and not SYNCHRONISATION.search(event.name())


def device_records(events) -> list[tuple[str, int, int]]:
    """(name, start ns, duration ns) of the GPU's kernels, copies and memsets among kineto's events. Kineto
    also files user-annotation ranges (the optimizer's step) and synchronisation events under the CUDA
    device: those are spans, not work, and are left out."""
    return [(e.name(), e.start_ns(), e.duration_ns()) for e in events
            if e.device_type() == DeviceType.CUDA and is_device_work(e) and e.duration_ns() > 0]


def profiled_records(prof, device: bool) -> list[tuple[str, int, int]]:
    """The device's kernels, copies and memsets, or, on the CPU, every operator with its self time."""
    if device:
        return device_records(prof.profiler.kineto_results.events())
    return [(e.name, int(e.time_range.start * 1e3), int(e.self_cpu_time_total * 1e3)) for e in prof.events()
            if e.device_type == DeviceType.CPU and e.self_cpu_time_total > 0]


def host_ms(runtime: Runtime, step, steps: int) -> float:
    """Median time `step()` takes to return, each started with the device idle."""
    times = []
    for _ in range(steps):
        runtime.synchronize()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    runtime.synchronize()
    return statistics.median(times) * 1e3


def profile_cell(mode: str, name: str, length: int, batch: int, runtime: Runtime, steps: int, dry: bool) -> dict:
    make = gpu.training_step if mode == "train" else gpu.inference_step
    step = make(name, length, batch, runtime, dry)
    seconds, peak = gpu.timed(runtime, step, steps)
    cell = {"step_ms": seconds * 1e3, "tokens_per_s": batch * length / seconds, "peak_mb": peak,
            "host_ms": host_ms(runtime, step, steps)}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runtime.is_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        runtime.synchronize()
    cell.update(summarise(profiled_records(prof, runtime.is_cuda), steps, runtime.is_cuda))
    return cell


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("scripts/benchmarks/results/step_profile"))
    parser.add_argument("--steps", type=int, default=3, help="timed and profiled steps per cell")
    parser.add_argument("--models", nargs="+", default=MODELS, metavar="MODEL",
                        help="the models to profile (each one argument), from: " + "; ".join(MODELS))
    parser.add_argument("--dry", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing")
    parser.add_argument("--replot", type=Path, default=None, help="write the table and PNG again from DIR/step_profile.json")
    args = parser.parse_args(argv)
    if args.replot is not None:
        report(json.loads((args.replot / "step_profile.json").read_text()), args.replot)
        return 0
    models = args.models
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {MODELS}")
    runtime = Runtime.resolve("cpu" if args.dry else "cuda", torch.bfloat16)
    device_name = torch.cuda.get_device_name(runtime.device) if runtime.is_cuda else "CPU (dry run)"
    payload = {"device": device_name, "torch": torch.__version__, "dry": args.dry, "cells": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for mode, length, batch in DRY_CELLS if args.dry else CELLS:
        for name in models:
            cell = {"mode": mode, "model": name, "seq_len": length, "batch": batch}
            try:
                cell.update(profile_cell(mode, name, length, batch, runtime, args.steps, args.dry))
            except Exception as error:  # one failed cell (an OOM) must not lose the others
                cell["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            finally:
                if runtime.is_cuda:
                    torch.cuda.empty_cache()
            payload["cells"].append(cell)
            print(json.dumps({k: v for k, v in cell.items() if k != "top"}), flush=True)
            (args.out / "step_profile.json").write_text(json.dumps(payload, indent=1))
            report(payload, args.out, quiet=True)  # a run stopped by its time limit still leaves the table
    report(payload, args.out)
    return 0


def report(payload: dict, out: Path, quiet: bool = False) -> None:
    cells = [c for c in payload["cells"] if "error" not in c]
    kinds = [kind for kind in KIND_NAMES if any(kind in c["by_kind_ms"] for c in cells)]
    header = ["mode", "model", "S", "batch", "step ms", "host ms", "GPU busy ms", "kernels"] + kinds
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in payload["cells"]:
        first = [c["mode"], c["model"], str(c["seq_len"]), str(c["batch"])]
        if "error" in c:
            lines.append("| " + " | ".join(first + [c["error"]] + [""] * (len(header) - 5)) + " |")
            continue
        busy = "–" if c["busy_ms"] is None else f"{c['busy_ms']:.1f} ({c['busy_ms'] / c['step_ms']:.0%})"
        launches = "–" if c["kernels_per_step"] is None else f"{c['kernels_per_step']:.0f}"
        row = first + [f"{c['step_ms']:.1f}", f"{c['host_ms']:.1f}", busy, launches]
        row += [f"{c['by_kind_ms'].get(kind, 0.0):.1f}" for kind in kinds]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"{payload['device']}, torch {payload['torch']}. Time by kind: ms per step "
                  + ("of GPU time." if not payload["dry"] else "of CPU operators' self time (dry run).")]
    for c in cells:
        lines += ["", f"Longest kernels, {c['mode']} {c['model']} (S = {c['seq_len']}):", ""]
        lines += [f"- {t['ms']:.2f} ms, {t['calls']:.0f}× per step, {t['kind']}: `{t['name']}`" for t in c["top"]]
    text = "\n".join(lines) + "\n"
    (out / "step_profile.md").write_text(text)
    if not quiet:
        print(text)
    with contextlib.suppress(ImportError):
        plot(payload, kinds, out / "step_profile.png")


def plot(payload: dict, kinds: list[str], path: Path) -> None:
    """One stacked bar per cell: time by kind, then the step's time the GPU was idle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in payload["cells"] if "error" not in c]
    if not cells:
        return
    labels = [f"{c['mode']} S={c['seq_len']}: {c['model']}" for c in cells]
    colors = plt.get_cmap("tab20").colors
    fig, axis = plt.subplots(figsize=(10, 0.45 * len(cells) + 1.8))
    left = [0.0] * len(cells)
    for index, kind in enumerate(kinds):
        widths = [c["by_kind_ms"].get(kind, 0.0) for c in cells]
        axis.barh(labels, widths, left=left, color=colors[index % len(colors)], label=kind)
        left = [a + b for a, b in zip(left, widths)]
    idle = [max(c["step_ms"] - c["busy_ms"], 0.0) if c["busy_ms"] is not None else 0.0 for c in cells]
    if any(idle):
        axis.barh(labels, idle, left=left, color="white", edgecolor="#999999", hatch="//", label="GPU idle")
    axis.invert_yaxis()
    axis.set_xlabel("ms per step" + (" (CPU operators' self time)" if payload["dry"] else ""))
    axis.set_title(f"Where a step's time goes: {payload['device']} (bf16 autocast)")
    axis.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
