"""Training and inference speed of our families against the peers, side by side, in one run.

    python scripts/benchmarks/speed.py [--lengths 128,512,2048] [--dtypes fp32,bf16] [--dropouts 0.1,0]
                                       [--rounds 5] [--tokens 4096] [--peers all|none|a,b] [--out DIR]
                                       [--memory [--memory-lengths 2048]] [--device auto|cpu|cuda[:N]]
    python scripts/benchmarks/speed.py --replot scripts/benchmarks/results/speed   # table and PNG again

Shapes (ecosystem.md §8): 2 transformer layers (4 GAU layers for GAU-α), hidden 768, 12 heads,
FFN 3072, GAU expansion 1536 and key 128, vocabulary 12000, about `--tokens` tokens per step
(batch = tokens / S). A training step is forward + MLM loss (15% of positions labelled) + backward;
inference is a forward pass in eval mode without gradients. bf16 runs every model under
`torch.autocast` on the device. Each (length, dtype, dropout) cell times every model in interleaved
rounds (model A, B, C, A, B, C, ...) and reports the median; the matmul peak is measured in the
same run. FLOP/s count model FLOPs (ecosystem.md §6.2), the same formula for every model: a training
step with the MLM head on the masked tokens only, inference with the head on every position (every
model's forward computes all logits). Peak memory is the growth of resident
memory over one training step, measured in a fresh subprocess per model and cell (on a GPU: the
growth of allocated CUDA memory over that step, its peak reset just before it).

Device: `--device auto` (default) is CUDA when present, else the CPU; models, batches and the matmul
peak are on that device, and every timed call ends with a device synchronisation.

Peers: transformers' BERT (sdpa) and RoFormer (eager) always; JunnYu's roformer / gau_alpha and
bert4torch when importable (`pip install --no-deps -r scripts/benchmarks/requirements-peers.txt`;
their transformers-5 shims live in scripts/benchmarks/peers.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import zoo  # noqa: E402
from pretrain.metrics import measure_matmul_peak  # noqa: E402
from zoo.families import model_class  # noqa: E402
from zoo.runtime import DeviceError, Runtime  # noqa: E402

HIDDEN, HEADS, FFN, LAYERS, VOCAB = 768, 12, 3072, 2, 12000
GAU_LAYERS, GAU_E, GAU_S = 4, 1536, 128
MASK_RATE = 0.15


def ours(family: str, dropout: float, hidden_dropout: float = 0.1, **extra):
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, hidden_dropout_prob=hidden_dropout,
                  attention_probs_dropout_prob=dropout, **extra)
    if family == "gau-alpha":
        config = zoo.GAUAlphaConfig(num_hidden_layers=GAU_LAYERS, intermediate_size=GAU_E, attention_key_size=GAU_S, **common)
    elif family == "deepnet":
        config = zoo.DeepNetConfig(num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN, **common)
    else:
        config = zoo.RoFormerV2Config(num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN, **common)
    return model_class(config, "masked-lm")(config)


class OurModel:
    """Adapter: our MLM models train with the sparse head (logits on masked positions only)."""

    def __init__(self, family: str, dropout: float):
        self.model = ours(family, dropout)
        self.flops_config = self.model.config

    def train_step(self, ids, labels):
        out = self.model(input_ids=ids, labels=labels, masked_positions_only=True)
        out.loss.backward()

    def infer(self, ids):
        return self.model(input_ids=ids).logits


class PeerModel:
    def __init__(self, name: str, family: str, dropout: float, max_len: int):
        from peers import build_peer

        self.model = build_peer(
            name, family, vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=GAU_LAYERS if family == "gau-alpha" else LAYERS,
            num_heads=HEADS, intermediate_size=FFN, gau_expansion=GAU_E, gau_key_size=GAU_S, hidden_dropout=0.1,
            attention_dropout=dropout, max_len=max_len,
        )
        self.flops_config = ours(family, dropout).config  # same shapes → same model FLOPs

    def train_step(self, ids, labels):
        loss = _loss_of(self.model(input_ids=ids, labels=labels))
        loss.backward()

    def infer(self, ids):
        return self.model(input_ids=ids)


def _loss_of(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.loss


# name → (family, builder)
def candidates(peers: str) -> dict[str, tuple[str, object]]:
    table = {
        "zoo-roformer-v2": ("roformer-v2", lambda d, s: OurModel("roformer-v2", d)),
        "zoo-gau-alpha": ("gau-alpha", lambda d, s: OurModel("gau-alpha", d)),
        "zoo-deepnet": ("deepnet", lambda d, s: OurModel("deepnet", d)),
    }
    if peers == "none":
        return table
    from peers import available_peers

    available = available_peers()
    wanted = available if peers == "all" else {p: available.get(p, "unknown peer") for p in peers.split(",")}
    for name, reason in wanted.items():
        if reason is not None:
            print(f"[speed] skipping {name}: {reason}", file=sys.stderr)
            continue
        family = "gau-alpha" if "gau" in name else "roformer-v2"
        table[name] = (family, lambda d, s, n=name, f=family: PeerModel(n, f, d, max(s, 512)))
    return table


def batch(seq_len: int, tokens: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    size = max(1, tokens // seq_len)
    ids = torch.randint(104, VOCAB, (size, seq_len), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(ids.shape, generator=generator) < MASK_RATE
    chosen[:, 0] = chosen[:, -1] = False
    labels[chosen] = ids[chosen]
    return ids, labels


CPU = Runtime(torch.device("cpu"))


def place(model, runtime: Runtime):
    """An OurModel / PeerModel with its module on the runtime's device."""
    model.model.to(runtime.device)
    return model


def run_cell(models: dict, seq_len: int, dtype: torch.dtype, tokens: int, rounds: int, mode: str,
             runtime: Runtime = CPU) -> dict[str, list[float]]:
    """Times every model (already on `runtime.device`) in interleaved rounds; bf16 cells run under
    autocast on that device."""
    cell = dataclasses.replace(runtime, compute_dtype=dtype)  # fp32: no autocast
    ids, labels = cell.to_device(batch(seq_len, tokens))
    timings = {name: [] for name in models}

    def once(model):
        if mode == "train":
            model.model.train()
            model.model.zero_grad(set_to_none=True)
            with cell.autocast():
                model.train_step(ids, labels)
        else:
            model.model.eval()
            with torch.no_grad(), cell.autocast():
                model.infer(ids)

    for model in models.values():  # warm-up (allocator, autocast caches)
        once(model)
    for _ in range(rounds):
        for name, model in models.items():
            cell.synchronize()
            start = time.perf_counter()
            once(model)
            cell.synchronize()
            timings[name].append(time.perf_counter() - start)
    return timings


def memory_cell(name: str, seq_len: int, dtype: str, dropout: float, tokens: int, peers: str,
                device: str = "cpu") -> float:
    """Peak memory growth (MB) over one training step, in a fresh process (`Runtime.peak_memory_mb`: on
    CUDA allocated device memory, on the CPU resident memory), its peak reset just before the step, so
    imports and model construction do not count."""
    code = f"""
import gc, sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
import speed
from zoo.runtime import Runtime
runtime = Runtime.resolve({device!r}, torch.bfloat16 if {dtype!r} == 'bf16' else torch.float32)
family, build = speed.candidates({peers!r})[{name!r}]
model = speed.place(build({dropout}, {seq_len}), runtime)
ids, labels = runtime.to_device(speed.batch({seq_len}, {tokens}))
gc.collect()
model.model.train()
runtime.synchronize()
if not runtime.reset_peak_memory():  # the peak becomes what is allocated (CUDA) or resident (CPU) now
    raise SystemExit('no peak memory to reset here (/proc/self/clear_refs): the step would not be measured')
before = runtime.peak_memory_mb()
with runtime.autocast():
    model.train_step(ids, labels)
runtime.synchronize()
print(runtime.peak_memory_mb() - before)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        return float("nan")
    return float(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,512,2048")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--dropouts", default="0.1,0")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--peers", default="all")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory growth (subprocess per cell)")
    parser.add_argument("--memory-lengths", default=None, help="measure memory only at these lengths (default: all)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when present)")
    parser.add_argument("--out", type=Path, default=Path("scripts/benchmarks/results/speed"))
    parser.add_argument("--replot", type=Path, default=None, metavar="DIR",
                        help="only redraw DIR/speed.md and DIR/speed.png from DIR/speed.json")
    args = parser.parse_args(argv)
    if args.replot is not None:
        payload = json.loads((args.replot / "speed.json").read_text())
        (args.replot / "speed.md").write_text(render_markdown(payload))
        plot(payload, args.replot / "speed.png")
        return 0

    try:
        runtime = Runtime.resolve(args.device)
    except DeviceError as error:
        sys.exit(f"speed.py: {error}")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if runtime.is_cuda:
        print(f"device: {runtime.describe()}")
    # pretrain's measurement, bounded in time on a CPU without native bf16 (4096-wide bf16 products took
    # minutes each on an AVX2 CPU); at least 8192 wide on a GPU
    peaks = {name: measure_matmul_peak(dtype, 4096, device=runtime.device)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    table = candidates(args.peers)
    results = []
    for mode in args.modes.split(","):
        dropouts = [float(d) for d in args.dropouts.split(",")] if mode == "train" else [0.0]
        for dropout in dropouts:
            for dtype_name in args.dtypes.split(","):
                dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
                for seq_len in [int(s) for s in args.lengths.split(",")]:
                    models = {name: place(build(dropout, seq_len), runtime) for name, (_, build) in table.items()}
                    timings = run_cell(models, seq_len, dtype, args.tokens, args.rounds, mode, runtime)
                    tokens = max(1, args.tokens // seq_len) * seq_len
                    for name, times in timings.items():
                        median = statistics.median(times)
                        config = models[name].flops_config
                        if mode == "infer":  # every model's forward computes the MLM logits at every position
                            flops = config.train_flops_per_token(seq_len) / 3
                        else:
                            flops = config.train_flops_per_token(seq_len, masked_fraction=MASK_RATE)
                        row = dict(mode=mode, model=name, family=table[name][0], seq_len=seq_len, dtype=dtype_name,
                                   attention_dropout=dropout, tokens_per_s=tokens / median,
                                   min_tokens_per_s=tokens / max(times), max_tokens_per_s=tokens / min(times),
                                   gflops=tokens / median * flops / 1e9,
                                   peak_fraction=tokens / median * flops / peaks[dtype_name])
                        if args.memory and mode == "train" and (
                                args.memory_lengths is None or str(seq_len) in args.memory_lengths.split(",")):
                            row["memory_mb"] = memory_cell(name, seq_len, dtype_name, dropout, args.tokens, args.peers,
                                                           str(runtime.device))
                        results.append(row)
                        print(f"{mode:5} S={seq_len:<5} {dtype_name} drop={dropout:<3} {name:26} "
                              f"{row['tokens_per_s']:>9,.0f} tok/s  {row['gflops']:>6.0f} GFLOP/s "
                              f"({row['peak_fraction']:.0%} of peak)" + (f"  mem {row['memory_mb']:.0f} MB" if "memory_mb" in row else ""),
                              flush=True)
                    del models
                    if runtime.is_cuda:
                        torch.cuda.empty_cache()  # the next cell's models start from an empty cache
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"peaks_gflops": {k: v / 1e9 for k, v in peaks.items()}, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "results": results}
    if runtime.is_cuda:  # CPU runs keep the payload the recorded results have
        payload["device"] = runtime.describe()
    tmp = args.out / "speed.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, args.out / "speed.json")
    markdown = render_markdown(payload)
    (args.out / "speed.md").write_text(markdown)
    plot(payload, args.out / "speed.png")
    print("\n" + markdown)
    return 0


def plot(payload: dict, path: Path) -> None:
    """One panel per (dtype, mode, attention dropout): tokens/s of every model at each length, ours solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["results"]
    panels = sorted({(r["dtype"], r["mode"], r["attention_dropout"]) for r in rows}, key=lambda k: (k[0], k[1] != "train", -k[2]))
    names = list(dict.fromkeys(r["model"] for r in rows))
    lengths = sorted({r["seq_len"] for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False)
    width = 0.8 / len(names)
    colors = plt.get_cmap("tab20")
    for ax, (dtype, mode, dropout) in zip(axes[0], panels):
        for i, name in enumerate(names):
            values = {r["seq_len"]: r["tokens_per_s"] for r in rows
                      if (r["dtype"], r["mode"], r["attention_dropout"], r["model"]) == (dtype, mode, dropout, name)}
            xs = [j + (i - (len(names) - 1) / 2) * width for j, n in enumerate(lengths) if n in values]
            ax.bar(xs, [values[n] for n in lengths if n in values], width, color=colors(i % 20),
                   label=name, edgecolor="black" if name.startswith("zoo-") else "none",
                   hatch=None if name.startswith("zoo-") else "//", alpha=1.0 if name.startswith("zoo-") else 0.6)
        ax.set_xticks(range(len(lengths)), [f"S = {n}" for n in lengths])
        title = f"{mode}, {dtype}" + (f", attention dropout {dropout:g}" if mode == "train" else "")
        ax.set_title(title)
        ax.set_ylabel("tokens/s")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=(len(names) + 1) // 2, fontsize=8)
    where = payload.get("device") or f"{payload['threads']} thread(s)"
    fig.suptitle(f"Our families (solid) against the peers (hatched): {where}, "
                 f"matmul peak fp32 {payload['peaks_gflops']['fp32']:.0f} / bf16 {payload['peaks_gflops']['bf16']:.0f} GFLOP/s")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_markdown(payload: dict) -> str:
    """Tokens/s per cell with each of our models' ratio to the best peer of its family (and BERT)."""
    rows = payload["results"]
    where = payload.get("device") or f"{payload['threads']} threads"
    lines = [f"matmul peak: fp32 {payload['peaks_gflops']['fp32']:.0f}, bf16 {payload['peaks_gflops']['bf16']:.0f} GFLOP/s; "
             f"{where}, torch {payload['torch']}", ""]
    cells = sorted({(r["mode"], r["attention_dropout"], r["dtype"], r["seq_len"]) for r in rows})
    names = list(dict.fromkeys(r["model"] for r in rows))
    lines.append("| mode | attn dropout | dtype | S | " + " | ".join(names) + " | ours ÷ best peer (same family) |")
    lines.append("| --- | --- | --- | ---: | " + " | ".join("---:" for _ in names) + " | --- |")
    for mode, dropout, dtype, seq_len in cells:
        cell = {r["model"]: r for r in rows if (r["mode"], r["attention_dropout"], r["dtype"], r["seq_len"]) == (mode, dropout, dtype, seq_len)}
        values = " | ".join(f"{cell[n]['tokens_per_s']:,.0f} ({cell[n]['peak_fraction']:.0%})" if n in cell else "–" for n in names)
        ratios = []
        for ours_name in [n for n in names if n.startswith("zoo-")]:
            family = cell[ours_name]["family"] if ours_name in cell else None
            peers = [r for n, r in cell.items()
                     if not n.startswith("zoo-") and (r["family"] == family or n.startswith("transformers-"))]
            if peers and ours_name in cell:
                best = max(peers, key=lambda r: r["tokens_per_s"])
                ratios.append(f"{ours_name[4:]} {cell[ours_name]['tokens_per_s'] / best['tokens_per_s']:.2f}× ({best['model']})")
        lines.append(f"| {mode} | {dropout} | {dtype} | {seq_len} | {values} | {'; '.join(ratios)} |")
    lines += ["", "Cells: median tokens/s (fraction of the measured matmul peak of that dtype)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
