"""`python -m evaluate robustness`: masked-token accuracy under shifted, strided and sampled position ids
(extrapolation.md B.6 item 7), reported as the change against natural positions 0 … L−1.

    python -m evaluate robustness --model roformer-v2-tiny-zh
    python -m evaluate robustness --model ./export --train-length 64 --lengths 1,4 --probes offset_1e5,jitter

Probes, for a window of L tokens (i = 0 … L−1) and training length N:
    offset_1, offset_N, offset_16N, offset_1e5   p = i + o: RoPE is shift-invariant in exact arithmetic, so
                                                 this tests numerics (tables are built in float64)
    stride_0.5, stride_2, stride_4               p = s·i (s < 1 compresses like PI; s > 1 leaves the trained range)
    subset_2L, subset_4L                         sorted sample without replacement from [0, s·L) (Ruoss test)
    uniform_0.5L, uniform_2L                     p = linspace(0, n', L) (Su's equal-mean evaluation)
    jitter                                       p = i + U(−½, ½)
    uniform_span                                 p = linspace(0, S − 1, L) with S = --train-span (models trained
                                                 with random positions; only when --train-span is given)
The natural set and its masks are those of `python -m evaluate extrapolation` (same seed, same windows);
random probes draw from a generator seeded per (seed, probe, length, window).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.errors import ZooError
from zoo.positions import sample_ruoss_positions, variant
from zoo.runtime import ieee_float32

from .errors import EvaluateError, UsageError
from .extrapolation import data, report
from .extrapolation.cli import (
    add_common_arguments, check_publish, default_out_dir, parse_lengths, publish_results, resolve_train_length,
)
from .extrapolation.scoring import load_model, score


def _subset(scale: float):
    def positions(length, train_length, rng):
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return sample_ruoss_positions(1, length, int(scale * length), generator=generator)[0].double().numpy()
    return positions


PROBES = {
    "natural": lambda L, N, rng: np.arange(L, dtype=np.float64),
    "offset_1": lambda L, N, rng: np.arange(L, dtype=np.float64) + 1,
    "offset_N": lambda L, N, rng: np.arange(L, dtype=np.float64) + N,
    "offset_16N": lambda L, N, rng: np.arange(L, dtype=np.float64) + 16 * N,
    "offset_1e5": lambda L, N, rng: np.arange(L, dtype=np.float64) + 100_000,
    "stride_0.5": lambda L, N, rng: 0.5 * np.arange(L, dtype=np.float64),
    "stride_2": lambda L, N, rng: 2.0 * np.arange(L, dtype=np.float64),
    "stride_4": lambda L, N, rng: 4.0 * np.arange(L, dtype=np.float64),
    "subset_2L": _subset(2),
    "subset_4L": _subset(4),
    "uniform_0.5L": lambda L, N, rng: np.linspace(0.0, L / 2, L),
    "uniform_2L": lambda L, N, rng: np.linspace(0.0, 2.0 * L, L),
    "jitter": lambda L, N, rng: np.arange(L, dtype=np.float64) + rng.uniform(-0.5, 0.5, L),
}
RANDOM_PROBES = ("subset_2L", "subset_4L", "jitter")


def probe_positions(name: str, length: int, count: int, train_length: int, seed: int,
                    train_span: int | None = None) -> np.ndarray:
    """Position ids [count, length] (float64) of probe `name` for `count` windows."""
    if name == "uniform_span":
        if train_span is None:
            raise UsageError("probe 'uniform_span' needs --train-span (the span random positions were drawn from)")
        row = np.linspace(0.0, train_span - 1, length)
        return np.tile(row, (count, 1))
    if name not in PROBES:
        raise UsageError(f"unknown probe {name!r}; probes: {', '.join(list(PROBES) + ['uniform_span'])}")
    code = list(PROBES).index(name)
    rows = [PROBES[name](length, train_length, np.random.default_rng([seed, 3, code, length, m]))
            for m in range(count if name in RANDOM_PROBES else 1)]
    out = np.stack(rows)
    return out if name in RANDOM_PROBES else np.tile(out, (count, 1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluate robustness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--lengths", default="1,4", help="test lengths as multiples of N (default 1,4)")
    parser.add_argument("--probes", default=None, help=f"comma-separated probes (default: all of {', '.join(PROBES)})")
    parser.add_argument("--variant", default="baseline", help="position variant to probe under (zoo.positions name)")
    parser.add_argument("--train-span", type=int, default=None,
                        help="span S of training-time random positions: adds the uniform_span probe")
    return parser


@ieee_float32()  # fp32 without TF32 (B.6 item 8), and the caller's settings back afterwards
def run(args: argparse.Namespace) -> dict:
    check_publish(args)
    loaded = load_model(args.model, args.registry, args.device)
    if loaded.config.position_embedding_type != "rope":
        raise UsageError(f"{loaded.ref}: robustness probes move RoPE positions, but the model has "
                         f"position_embedding_type={loaded.config.position_embedding_type!r}")
    train_length = resolve_train_length(args.train_length, loaded)
    lengths = parse_lengths(args.lengths, train_length)
    if args.probes:
        probes = list(dict.fromkeys(p.strip() for p in args.probes.split(",") if p.strip()))
    else:
        probes = list(PROBES) + (["uniform_span"] if args.train_span else [])
    probes = ["natural"] + [p for p in probes if p != "natural"]  # the reference every change is taken against
    for name in probes:  # fail before any work
        probe_positions(name, 4, 1, train_length, args.seed, args.train_span)
    position_variant = variant(args.variant, train_length,
                               **({"chunk_size": args.chunk_size} if args.chunk_size else {}))
    position_variant.check(loaded.config)
    documents, description = data.read_documents(args.corpus)
    stream = data.token_stream(documents, loaded.tokenizer, args.whole_word, description)
    plan = data.make_plan(stream, train_length, lengths, args.max_tokens)
    policy = data.masking_policy(loaded.tokenizer, loaded.config.vocab_size, rate=args.mask_rate, whole_word=args.whole_word)
    out_dir = args.out or default_out_dir("robustness", loaded.ref, train_length)
    test_sets = {length: data.natural_set(stream, length, plan, policy, args.seed) for length in lengths}

    results = {
        "command": "robustness",
        "created": report.timestamp(),
        "git": report.git_revision(),
        "model": loaded.describe(),
        "train_length": train_length,
        "lengths": lengths,
        "probes": probes,
        "variant": position_variant.name,
        "train_span": args.train_span,
        "corpus": {"source": description, "documents": stream.documents, "tokens": int(len(stream.ids)),
                   "budget_tokens_per_length": plan.budget_tokens},
        "masking": {"seed": args.seed, "rate": policy.rate, "mask": policy.mask, "random": policy.random,
                    "whole_word": policy.whole_word},
        "device": str(loaded.model.device),  # where it ran, not what --device said ("auto")
        "complete": False,
        "results": {name: {} for name in probes},
    }
    total = sum(ts.input_ids.shape[0] for ts in test_sets.values()) * len(probes)
    with tqdm(total=total, unit="window", disable=args.quiet, dynamic_ncols=True) as progress:
        for length, test_set in test_sets.items():
            count = test_set.input_ids.shape[0]
            for name in probes:
                progress.set_description(f"L={length} {name}")
                positions = probe_positions(name, length, count, train_length, args.seed, args.train_span)
                metrics = score(loaded, test_set, position_variant, train_length, args.batch_tokens,
                                position_ids=positions, progress=progress).to_json()
                natural = results["results"]["natural"].get(str(length), metrics)  # natural runs first
                metrics["accuracy_change"] = metrics["accuracy"] - natural["accuracy"]
                metrics["loss_change"] = metrics["loss"] - natural["loss"]
                metrics["positions_first"] = [float(x) for x in positions[0, :4]]
                metrics["positions_last"] = float(positions[0, -1])
                results["results"][name][str(length)] = metrics
                report.atomic_write_json(out_dir / "results.json", results)
    results["complete"] = True
    report.atomic_write_json(out_dir / "results.json", results)
    markdown = table(results)
    report.atomic_write_text(out_dir / "results.md", markdown)
    plot(results, out_dir / "robustness.png")
    print(markdown)
    print(f"wrote {out_dir / 'results.json'}, results.md, robustness.png")
    metrics = {}  # natural positions' accuracy, and every other probe's change against it
    for probe, by_length in results["results"].items():
        key = "accuracy" if probe == "natural" else "accuracy_change"
        metrics.update({f"robustness/{results['variant']}/{probe}/L={length}/{key}": cell[key]
                        for length, cell in by_length.items()})
    results["published"] = publish_results(
        args, loaded.ref, metrics, {"robustness": out_dir / "robustness.png"},
        f"position robustness (N = {train_length}, variant {results['variant']}, mask seed {args.seed})")
    return results


def table(results: dict) -> str:
    model = results["model"]
    lengths = [str(length) for length in results["lengths"]]
    cells = results["results"]

    def cell(probe, length):
        entry = cells[probe].get(length)
        if entry is None:
            return "—"
        if probe == "natural":
            return report.percent(entry["accuracy"])
        return f"{report.percent(entry['accuracy'])} ({100 * entry['accuracy_change']:+.2f})"

    head = (f"# Position robustness: {model['ref']}\n\nN = {results['train_length']}, variant {results['variant']}, "
            f"RoPE base {model['rope_base']}, d = {model['rope_dim']}; mask seed {results['masking']['seed']}; "
            f"git {results['git']['commit']}{' (dirty)' if results['git']['dirty'] else ''}.\n\n")
    body = report.markdown_table("masked-token accuracy (%) and change against natural positions (pp)",
                                 results["probes"], lengths, cell)
    counts = [str(cells["natural"].get(c, {}).get("masked_tokens", "—")) for c in lengths]
    return head + body + "| masked tokens | " + " | ".join(counts) + " |\n"


def plot(results: dict, path: Path) -> Path:
    """Accuracy change against natural positions, one bar per length for each probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = [p for p in results["probes"] if p != "natural"]
    lengths = [str(length) for length in results["lengths"]]
    fig, axis = plt.subplots(figsize=(max(6.0, 0.7 * len(probes) + 2), 4.2))
    width = 0.8 / max(1, len(lengths))
    for k, length in enumerate(lengths):
        values = [100 * results["results"][p][length]["accuracy_change"] for p in probes]
        xs = np.arange(len(probes)) + (k - (len(lengths) - 1) / 2) * width
        natural = 100 * results["results"]["natural"][length]["accuracy"]
        axis.bar(xs, values, width, label=f"L = {length} (natural {natural:.1f}%)")
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_xticks(np.arange(len(probes)), probes, rotation=40, ha="right")
    axis.set_ylabel("accuracy change vs natural positions (pp)")
    axis.set_title(f"{results['model']['ref']} (N = {results['train_length']}, {results['variant']})")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    report.atomic_save_figure(fig, path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (EvaluateError, ZooError, FileNotFoundError) as error:  # anything else keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
