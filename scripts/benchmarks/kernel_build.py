"""How long the CPU kernels' first build takes (zoo/kernels: three C++ modules, each one compiler
process), one module after another as each is first called against all at once as
`zoo.kernels.build_cpu_kernels` builds them, side by side in one run.

Each way runs `--rounds` times, alternating, each time in a fresh process with an empty
TORCH_EXTENSIONS_DIR (a first build: nothing cached), and times the builds alone (not the process's
start or torch's import):

    python scripts/benchmarks/kernel_build.py [--rounds 2] [--out DIR]

Writes kernel_build.json and kernel_build.md to scripts/benchmarks/results/kernel_build/. Nothing
else may run meanwhile: the builds take the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "results" / "kernel_build"
WAYS = ("one at a time", "at once")

# run in the child: builds the modules one way and prints {"seconds": ..., "built": {name: bool}}
CHILD = """
import json, sys, time
import torch.utils.cpp_extension
from zoo import kernels
way = sys.argv[1]
start = time.perf_counter()
if way == "at once":
    built = kernels.build_cpu_kernels()
else:
    built = {name: kernels.build_module(name) for name in kernels.SOURCES}
print(json.dumps({"seconds": time.perf_counter() - start, "built": {k: v is not None for k, v in built.items()}}))
"""


def build_once(way: str) -> dict:
    """One first build of the three modules, `way`, in a fresh process with an empty extension cache."""
    with tempfile.TemporaryDirectory(prefix="zoo-kernel-build-") as cache:
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": cache}
        env.pop("ZOO_DISABLE_KERNELS", None)
        result = subprocess.run([sys.executable, "-c", CHILD, way], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"the {way!r} build failed:\n{result.stderr[-3000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    if not all(record["built"].values()):
        raise SystemExit(f"the {way!r} build left modules unbuilt (a compiler missing?): {record['built']}")
    return record


def cpu_model() -> str:
    """The CPU's model name as Linux gives it, or the machine type elsewhere."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def report(seconds: dict[str, list[float]], machine: str) -> str:
    """The table: each way's median build time, and one at a time / at once."""
    median = {way: statistics.median(times) for way, times in seconds.items()}
    lines = [f"First build of the three CPU kernel modules ({machine})", "",
             "| way | builds (s) | median (s) |", "| --- | --- | ---: |"]
    lines += [f"| {way} | {', '.join(f'{t:.1f}' for t in times)} | {median[way]:.1f} |" for way, times in seconds.items()]
    lines += ["", f"one at a time / at once: {median['one at a time'] / median['at once']:.2f}×"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="builds of each way, alternating (default 2)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    seconds = {way: [] for way in WAYS}
    for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
        for way in WAYS:
            seconds[way].append(build_once(way)["seconds"])
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    text = report(seconds, machine)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_build.md").write_text(text)
    (args.out / "kernel_build.json").write_text(json.dumps({"machine": machine, "seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
