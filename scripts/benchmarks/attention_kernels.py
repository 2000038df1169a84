"""The attention alone: the blocked CPU kernel against the unblocked one it replaced and torch's sdpa.

    OMP_NUM_THREADS=1 python scripts/benchmarks/attention_kernels.py [--dtypes bf16,fp32] [--rounds 5]
                                                                    [--out scripts/benchmarks/results/attention_kernels]

12 heads of d = 64 at 4,096 tokens per call (batch = 4096 / S), no mask. "train" is forward + backward
with a fixed output gradient, "infer" a forward pass without autograd. The three implementations run
interleaved in every round (A, B, C, A, B, C, ...); cells are medians in milliseconds, and the ratios
are the previous kernel's and sdpa's times over the blocked kernel's, in the same run.

CPU only: the two kernels compared are the compiled CPU kernels of zoo/kernels, which have no CUDA
version (on CUDA the models use sdpa; scripts/benchmarks/speed.py times them there). `--device`
accepts cpu and auto (= cpu here) and refuses a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo.attention import SoftmaxAttention, blocked_softmax_attention
from zoo.runtime import DeviceError, parse_device

HEADS, HEAD_SIZE, TOKENS = 12, 64, 4096
IMPLEMENTATIONS = {
    "blocked": lambda q, k, v, p: blocked_softmax_attention(q, k, v, None, HEAD_SIZE**-0.5, p, None),
    "previous": lambda q, k, v, p: SoftmaxAttention.apply(q, k, v, None, HEAD_SIZE**-0.5, p, None),
    "sdpa": lambda q, k, v, p: F.scaled_dot_product_attention(q, k, v, dropout_p=p),
}


def time_cell(seq_len: int, dtype: torch.dtype, mode: str, dropout: float, rounds: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seq_len)
    shape = (TOKENS // seq_len, HEADS, seq_len, HEAD_SIZE)
    q, k, v = (torch.randn(shape, generator=generator).to(dtype).requires_grad_(mode == "train") for _ in range(3))
    grad = torch.randn(shape, generator=generator).to(dtype)

    def once(function):
        if mode == "train":
            function(q, k, v, dropout).backward(grad)
        else:
            with torch.no_grad():
                function(q, k, v, dropout)

    times = {name: [] for name in IMPLEMENTATIONS}
    for function in IMPLEMENTATIONS.values():
        once(function)  # warm-up
    for _ in range(rounds):
        for name, function in IMPLEMENTATIONS.items():
            start = time.perf_counter()
            once(function)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def check_device(device: str) -> None:
    """This benchmark runs on the CPU only: refuse any other device with one line."""
    if device == "auto":
        return  # the CPU kernels are what is compared, whatever else the machine has
    try:
        kind = parse_device(device).type
    except DeviceError as error:
        if not device.startswith("cuda"):
            sys.exit(f"attention_kernels.py: {error}")
        kind = "cuda"  # absent here; refused below for the same reason as a present one
    if kind != "cpu":
        sys.exit(f"attention_kernels.py: --device {device}: this benchmark compares the compiled CPU attention "
                 "kernels (zoo/kernels) and runs on the CPU only; use --device cpu (speed.py times the models on CUDA)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,512,2048")
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu (or auto, the same here); CUDA devices are refused")
    parser.add_argument("--out", type=Path, default=Path("scripts/benchmarks/results/attention_kernels"))
    args = parser.parse_args(argv)
    check_device(args.device)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for dtype_name in args.dtypes.split(","):
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        for mode, dropout in (("train", 0.0), ("train", 0.1), ("infer", 0.0)):
            for seq_len in (int(s) for s in args.lengths.split(",")):
                ms = time_cell(seq_len, dtype, mode, dropout, args.rounds)
                rows.append(dict(dtype=dtype_name, mode=mode, dropout=dropout, seq_len=seq_len, ms=ms))
                print(f"{dtype_name} {mode:5} p={dropout:<3} S={seq_len:<5} "
                      + "  ".join(f"{name} {value:8.1f} ms" for name, value in ms.items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "attention_kernels.json.tmp"
    tmp.write_text(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}, indent=2))
    os.replace(tmp, args.out / "attention_kernels.json")
    lines = ["| dtype | mode | attn dropout | S | blocked | previous | sdpa | previous ÷ blocked | sdpa ÷ blocked |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ms = r["ms"]
        lines.append(f"| {r['dtype']} | {r['mode']} | {r['dropout'] if r['mode'] == 'train' else '–'} | {r['seq_len']} | "
                     f"{ms['blocked']:,.1f} ms | {ms['previous']:,.1f} ms | {ms['sdpa']:,.1f} ms | "
                     f"{ms['previous'] / ms['blocked']:.2f}× | {ms['sdpa'] / ms['blocked']:.2f}× |")
    markdown = "\n".join(lines)
    (args.out / "attention_kernels.md").write_text(markdown + "\n")
    print("\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
