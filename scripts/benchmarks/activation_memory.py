"""Activation memory per token of the base models, as the GPU's implementations keep it, measured here.

    python scripts/benchmarks/activation_memory.py [--lengths 512] [--step-rounds 3]
                                                   [--out scripts/benchmarks/results/activation_memory]

What training keeps between the forward and the backward pass depends on the implementations each
operation runs, not on the device's arithmetic, so it can be counted on the CPU with the registry
choosing what CUDA chooses now (cuda_registry.py, "fused"): attention through sdpa, GAU's wide head as
heads sharing q/k (`sdpa_shared_qk`); torch's `native_dropout` with its boolean mask; the RMS norm
and RoPE as one operator each way (CUDA's fused RMS norm and Triton RoPE keep what our CPU operators
keep: the input and 1/rms, the tables); the post-norm residual step and GAU's q/k scale pair through
their Triton kernels, run in Triton's interpreter (the residual kernel keeps its output and 1/rms,
or x̂ and 1/std with LayerNorm, and no mask). Attention dropout is off: with dropout torch's CPU sdpa
falls back to a kernel that keeps the probabilities, while CUDA's flash kernel keeps only a
random-number state. One CPU artefact is left out (cuda_registry.MergedHeadsCopies): for GAU's q,
expanded over the heads that share it, torch's CPU flash kernel returns its output heads first, so
merging the heads copies it, where CUDA's kernels return it sequence first and the merge is a view;
such a copy is not counted. For a dense q both devices follow q's layout, which RoPE keeps sequence
first: no copy either way.

GAU-α with `attention_backend="matmul"` takes CUDA's explicit attention (cuBLAS products, the
softmax and dropout as Triton kernels, zoo/kernels/triton_softmax_attention.py, run in the interpreter
too): it keeps the probabilities P, S values per token and layer, where sdpa keeps a log-sum-exp per
row and head; its rows are the only ones here whose per-token figure grows with S (by 2 bytes per key
and layer in bf16: tests/benchmarks/test_activation_memory.py).

Counted: every storage an operation makes during a bf16-autocast forward pass of the encoder (the
MLM head is the same sparse tied head in every family) that is still alive when the pass returns,
whoever holds it (autograd's saved tensors, the selective-recomputation cache, the output). Each model
runs at batch 1 and 2; the difference per token is the activation memory per token, and what does
not grow with the batch (the bf16 copies of the weights) is reported apart. Compared side by side:
our three families, GAU-α and DeepNet with `recompute_elementwise`, GAU-α with the explicit attention
(with and without), and transformers' BERT-base (sdpa) at the same shape. Ratios are against RoFormerV2-base.

`--step-rounds N` also times a training step of GAU-α (4 layers) and DeepNet (2 layers) on this CPU
(its own kernels, bf16) with and without recomputation, alternating ABBA over N rounds: the price of
the recomputation here.
On a GPU, `scripts/benchmarks/gpu.py` measures peak memory and speed of the same configurations.

Writes `activation_memory.json`, `.md` and `.png` to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    # the Triton kernels run in Triton's interpreter, which Triton reads when it and a kernel are defined,
    # so before anything imports it (imported as a module, by the test suite, tests/conftest.py decides)
    os.environ["TRITON_INTERPRET"] = "1"

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cuda_registry import MergedHeadsCopies, as_on_cuda  # noqa: E402

import zoo  # noqa: E402

MODELS = {  # name → (preset or "bert", config overrides)
    "zoo RoFormerV2-base": ("roformer-v2-base", {}),
    "zoo DeepNet-12": ("deepnet-12", {}),
    "zoo DeepNet-12, recompute_elementwise": ("deepnet-12", {"recompute_elementwise": True}),
    "zoo GAU-α-base": ("gau-alpha-base", {}),
    "zoo GAU-α-base, recompute_elementwise": ("gau-alpha-base", {"recompute_elementwise": True}),
    "zoo GAU-α-base, explicit attention": ("gau-alpha-base", {"attention_backend": "matmul"}),
    "zoo GAU-α-base, explicit attention, recompute_elementwise": ("gau-alpha-base", {"attention_backend": "matmul",
                                                                                   "recompute_elementwise": True}),
    "transformers BERT-base (sdpa)": ("bert", {}),
}
REFERENCE = "zoo RoFormerV2-base"
VOCAB = 12000


class LiveStorages(TorchDispatchMode):
    """Records every storage an operation makes; `alive_bytes()` sums those still alive (each once).
    The CPU's copy merging the heads of GAU's attention (a view on CUDA) is not recorded."""

    def __init__(self):
        super().__init__()
        self.made = []
        self.merged_heads = MergedHeadsCopies()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.merged_heads.see(func, args, out)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and not self.merged_heads.is_copy(tensor):
                storage = tensor.untyped_storage()
                self.made.append((storage.data_ptr(), StorageWeakRef(storage), storage.nbytes()))
        return out

    def alive_bytes(self) -> int:
        gc.collect()
        return sum({ptr: size for ptr, ref, size in self.made if not ref.expired()}.values())


def build(name: str):
    preset, overrides = MODELS[name]
    if preset == "bert":
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=VOCAB, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, max_position_embeddings=2048, attention_probs_dropout_prob=0.0)
        return BertModel._from_config(config, attn_implementation="sdpa", add_pooling_layer=False).train()
    return zoo.create(preset, task="base", attention_probs_dropout_prob=0.0, **{"attention_backend": "sdpa", **overrides}
                      ).train()


def retained_bytes(model, batch: int, length: int) -> int:
    ids = torch.randint(104, VOCAB, (batch, length), generator=torch.Generator().manual_seed(batch))
    mode = LiveStorages()
    with as_on_cuda("fused"), torch.autocast("cpu", dtype=torch.bfloat16), mode:
        out = model(input_ids=ids).last_hidden_state
    retained = mode.alive_bytes()
    del out
    return retained


def measure(name: str, length: int) -> dict:
    model = build(name)
    one, two = retained_bytes(model, 1, length), retained_bytes(model, 2, length)
    per_token = (two - one) / length
    return {"model": name, "seq_len": length, "bytes_per_token": per_token, "per_forward_bytes": one - per_token * length}


TIMED = {"GAU-α": ("gau-alpha-base", 4), "DeepNet": ("deepnet-12", 2)}  # name → (preset, layers), speed.py's depths


def step_seconds(family: str, recompute: bool, length: int = 512, batch: int = 4, steps: int = 3) -> float:
    torch.manual_seed(0)
    preset, layers = TIMED[family]
    model = zoo.create(preset, num_hidden_layers=layers, recompute_elementwise=recompute).train()
    ids = torch.randint(104, VOCAB, (batch, length))
    labels = torch.where(torch.rand(batch, length) < 0.15, ids, -100)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels, masked_positions_only=True).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def report(rows: list[dict], timing: dict | None) -> str:
    lines = ["| model | S | activations per token | × RoFormerV2-base | at 32×512 / 8×2048 | per forward (weights) |",
             "|---|---|---|---|---|---|"]
    reference = {row["seq_len"]: row["bytes_per_token"] for row in rows if row["model"] == REFERENCE}
    for row in rows:
        tokens = 32 * 512 if row["seq_len"] == 512 else 8 * 2048 if row["seq_len"] == 2048 else None
        at_shape = f"{row['bytes_per_token'] * tokens / 2**30:.1f} GiB" if tokens else "–"
        lines.append(f"| {row['model']} | {row['seq_len']} | {row['bytes_per_token'] / 1024:.1f} KiB | "
                     f"{row['bytes_per_token'] / reference[row['seq_len']]:.2f}× | {at_shape} | "
                     f"{row['per_forward_bytes'] / 2**20:.0f} MiB |")
    if timing:
        lines += ["", f"Training step on this CPU (4×512, bf16, its own kernels), median of {timing['rounds']} ABBA rounds:", "",
                  "| model | plain s/step | recompute_elementwise s/step | ratio |", "|---|---|---|---|"]
        for family, (plain, recomputed) in timing["seconds"].items():
            preset, layers = TIMED[family]
            lines.append(f"| {family} ({layers} layers) | {plain:.3f} | {recomputed:.3f} | {recomputed / plain:.2f}× |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({row["seq_len"] for row in rows})
    names = list(dict.fromkeys(row["model"] for row in rows))
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.45 * len(names) * len(lengths)))
    height = 0.8 / len(lengths)
    for j, length in enumerate(lengths):
        values = [next(r["bytes_per_token"] for r in rows if r["model"] == name and r["seq_len"] == length) / 1024
                  for name in names]
        bars = ax.barh([i + j * height for i in range(len(names))], values, height, label=f"S = {length}")
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.margins(x=0.08)  # room for the labels
    ax.set_xlabel("activations kept for backward, KiB per token")
    ax.set_title("Activation memory per token\n(bf16 autocast, CUDA's implementations, counted on the CPU)", fontsize=10)
    if len(lengths) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # the count per token does not depend on S (no score matrix is kept; with the explicit attention it grows
    # by 2 bytes per key and layer, tested); other lengths cost interpreter time:
    # the Triton kernels run one row per program, a few ms each in the interpreter, minutes per model at 512
    parser.add_argument("--lengths", default="512")
    parser.add_argument("--step-rounds", type=int, default=3, help="ABBA rounds timing recomputation (0: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "benchmarks" / "results" / "activation_memory")
    args = parser.parse_args(argv)
    lengths = [int(s) for s in args.lengths.split(",")]
    cells = [(name, length) for length in lengths for name in MODELS]
    rows = [measure(name, length) for name, length in tqdm(cells, desc="activation memory")]
    timing = None
    if args.step_rounds:
        samples = {(family, flag): [] for family in TIMED for flag in (False, True)}
        for round_index in tqdm(range(args.step_rounds), desc="recompute timing"):
            order = (False, True) if round_index % 2 == 0 else (True, False)
            for family in TIMED:
                for flag in order:
                    samples[family, flag].append(step_seconds(family, flag))
        timing = {"rounds": args.step_rounds, "samples": {f"{f}, recompute={r}": v for (f, r), v in samples.items()},
                  "seconds": {f: (statistics.median(samples[f, False]), statistics.median(samples[f, True])) for f in TIMED}}
    args.out.mkdir(parents=True, exist_ok=True)
    table = report(rows, timing)
    print(table)
    (args.out / "activation_memory.json").write_text(json.dumps({"rows": rows, "timing": timing}, indent=2))
    (args.out / "activation_memory.md").write_text(table + "\n")
    plot(rows, args.out / "activation_memory.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
