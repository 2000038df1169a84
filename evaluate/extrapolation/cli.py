"""`python -m evaluate extrapolation`: the B.6 protocol (extrapolation.md) for one checkpoint.

    python -m evaluate extrapolation --model roformer-v2-tiny-zh --train-length 64
    python -m evaluate extrapolation --model ./export --train-length 128 --lengths 1,2,4,8,16 \\
        --variants baseline,ntk_mixed,ntk_mixed+logn_dagger,rerope_w32 --corpus heldout.txt

For every test set (natural, repeated, fixed_target), length L = m·N and variant, scores masked-token
accuracy, loss, accuracy by position bucket (bins of N) and mean attention entropy per layer, on
the same masked windows for every variant. Writes OUT/results.json (updated after every cell),
OUT/results.md (one table per test set: variants × lengths), OUT/accuracy.png and OUT/entropy.png.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from tqdm.auto import tqdm

from zoo.errors import ZooError
from zoo.positions import default_variants, variant
from zoo.runtime import ieee_float32

from ..errors import EvaluateError, UsageError
from . import data, report
from .scoring import load_model, recorded_train_length, score


def parse_lengths(text: str, train_length: int) -> list[int]:
    """"1,2,4,8,16" (multiples of N) → sorted token lengths m·N; each must be a whole number ≥ N."""
    lengths = []
    for part in text.split(","):
        try:
            multiple = float(part)
        except ValueError:
            raise UsageError(f"--lengths: {part!r} is not a number (lengths are multiples of the training length)") from None
        length = multiple * train_length
        if multiple < 1 or abs(length - round(length)) > 1e-9:
            raise UsageError(f"--lengths: {part} × N = {length:g} must be a whole number of tokens ≥ N = {train_length}")
        lengths.append(int(round(length)))
    return sorted(set(lengths))


def resolve_train_length(given: int | None, loaded) -> int:
    if given is not None:
        if given < 4:
            raise UsageError(f"--train-length must be ≥ 4, got {given}")
        return given
    recorded = recorded_train_length(loaded.folder)
    if recorded is None:
        raise UsageError(f"--train-length is needed: the model card in {loaded.folder} does not record the "
                         "training sequence length")
    return recorded


def resolve_variants(text: str | None, train_length: int, config, shortest: int) -> list:
    """Parse and check every variant before any work starts (errors name the variant)."""
    if text in (None, "", "default", "all"):
        names = default_variants(train_length, logn=config.attention_normalization == "softmax")
        if config.position_embedding_type != "rope":  # only the window variants apply without RoPE
            names = [n for n in names if n.startswith("window") or n in ("baseline", "logn_dagger")]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    variants = []
    for name in dict.fromkeys(names):
        v = variant(name, train_length)
        v.check(config)
        for width in (v.window, v.rerope_window):
            if width is not None and width >= shortest:
                raise UsageError(f"position variant {name!r}: window {width} is larger than the shortest test "
                                 f"length {shortest} (relative distances go up to {shortest - 1})")
        variants.append(v)
    return variants


def default_out_dir(command: str, ref: str, train_length: int) -> Path:
    from zoo.registry import default_root

    slug = re.sub(r"[^A-Za-z0-9._@-]+", "_", Path(str(ref)).name or str(ref)).strip("_") or "model"
    return default_root().parent / "runs" / command / f"{slug}-N{train_length}"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with `python -m evaluate robustness`."""
    parser.add_argument("--model", required=True, help="registry name, name@version, model folder or Hub id")
    parser.add_argument("--train-length", type=int, default=None,
                        help="N, the sequence length the model was trained at (default: from the model card)")
    parser.add_argument("--corpus", default="embedded",
                        help="held-out text: 'embedded' (zoo.corpus held-out slice), a .txt file (one document "
                             "per line) or a .jsonl file (field 'text')")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="token budget per length (default: as much as the corpus holds at the longest length)")
    parser.add_argument("--seed", type=int, default=0, help="mask seed (masks depend on it, never on the variant)")
    parser.add_argument("--mask-rate", type=float, default=0.15)
    parser.add_argument("--whole-word", action="store_true", help="whole-word masking (jieba), as pretraining can")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="tokens per forward pass")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="query rows per attention block (default: from a 64 MiB score budget)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when present)")
    parser.add_argument("--registry", default=None, help="registry root (default $ZOO_REGISTRY or checkpoints/registry)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default checkpoints/runs/<command>/<model>-N<N>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--publish", metavar="NAME@VERSION", default=None,
                        help="after the run, publish --model again as this new registry version (in --registry) "
                             "with the results as metrics and the plots as figures")


def check_publish(args: argparse.Namespace) -> None:
    """Refuse a --publish target before any work: NAME@VERSION, valid, not yet published."""
    if getattr(args, "publish", None):
        from zoo.publishing import check_new_version

        check_new_version(args.publish, args.registry)


def publish_results(args: argparse.Namespace, ref: str, metrics: dict, figures: dict, note: str) -> str | None:
    """Publish the evaluated model `ref` as args.publish with the finite `metrics` and `figures`."""
    if not getattr(args, "publish", None):
        return None
    import math

    import zoo

    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    published = zoo.publish_evaluation(ref, args.publish, metrics=metrics, figures=figures, registry=args.registry, note=note)
    print(f"published {published}")
    return published


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluate extrapolation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--lengths", default="1,2,4,8,16", help="test lengths as multiples of N (default 1,2,4,8,16)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variant names (zoo.positions; default: the whole B.6 grid)")
    parser.add_argument("--sets", default=",".join(data.SETS), help=f"test sets (default {','.join(data.SETS)})")
    parser.add_argument("--repeat-chunk", type=int, default=None, help="tokens per copy in the repeated set (default N/2)")
    parser.add_argument("--targets", type=int, default=64, help="number of fixed targets in the fixed_target set")
    return parser


@ieee_float32()  # fp32 without TF32 (B.6 item 8), and the caller's settings back afterwards
def run(args: argparse.Namespace) -> dict:
    check_publish(args)
    loaded = load_model(args.model, args.registry, args.device)
    train_length = resolve_train_length(args.train_length, loaded)
    lengths = parse_lengths(args.lengths, train_length)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    for name in sets:
        if name not in data.SETS:
            raise UsageError(f"--sets: unknown test set {name!r}; test sets: {', '.join(data.SETS)}")
    config = loaded.config
    if config.position_embedding_type == "learned" and max(lengths) > config.max_position_embeddings:
        raise UsageError(f"{loaded.ref} has learned positions for {config.max_position_embeddings} tokens; it cannot "
                         f"read {max(lengths)}-token windows")
    variants = resolve_variants(args.variants, train_length, config, min(lengths))
    if args.chunk_size is not None:
        variants = [variant(v, train_length, chunk_size=args.chunk_size) for v in variants]
    documents, description = data.read_documents(args.corpus)
    stream = data.token_stream(documents, loaded.tokenizer, args.whole_word, description)
    plan = data.make_plan(stream, train_length, lengths, args.max_tokens, args.repeat_chunk, args.targets)
    policy = data.masking_policy(loaded.tokenizer, loaded.config.vocab_size, rate=args.mask_rate, whole_word=args.whole_word)
    out_dir = args.out or default_out_dir("extrapolation", loaded.ref, train_length)

    test_sets = {(name, length): data.build_test_set(name, stream, length, plan, policy, args.seed)
                 for name in sets for length in lengths}
    results = {
        "command": "extrapolation",
        "created": report.timestamp(),
        "git": report.git_revision(),
        "model": loaded.describe(),
        "train_length": train_length,
        "lengths": lengths,
        "variants": [v.name for v in variants],
        "sets": sets,
        "corpus": {"source": description, "documents": stream.documents, "tokens": int(len(stream.ids)),
                   "budget_tokens_per_length": plan.budget_tokens, "repeat_chunk": plan.repeat_chunk,
                   "fixed_targets": len(data.fixed_target_spans(stream, plan)) if "fixed_target" in sets else None,
                   "fixed_target_tokens": train_length - 2},
        "masking": {"seed": args.seed, "rate": policy.rate, "mask": policy.mask, "random": policy.random,
                    "whole_word": policy.whole_word},
        "bucket_size": train_length,
        "device": str(loaded.model.device),  # where it ran, not what --device said ("auto")
        "complete": False,
        "results": {name: {v.name: {} for v in variants} for name in sets},
    }
    total = sum(ts.input_ids.shape[0] for ts in test_sets.values()) * len(variants)
    with tqdm(total=total, unit="window", disable=args.quiet, dynamic_ncols=True) as progress:
        for (name, length), test_set in test_sets.items():
            for v in variants:
                progress.set_description(f"{name} L={length} {v.name}")
                metrics = score(loaded, test_set, v, train_length, args.batch_tokens, progress=progress)
                results["results"][name][v.name][str(length)] = metrics.to_json()
                report.atomic_write_json(out_dir / "results.json", results)
    results["complete"] = True
    report.atomic_write_json(out_dir / "results.json", results)
    markdown = tables(results)
    report.atomic_write_text(out_dir / "results.md", markdown)
    plot_accuracy(results, out_dir / "accuracy.png")
    plot_entropy(results, out_dir / "entropy.png")
    print(markdown)
    print(f"wrote {out_dir / 'results.json'}, results.md, accuracy.png, entropy.png")
    metrics = {f"extrapolation/{name}/{v}/L={length}/accuracy": cell["accuracy"]
               for name, cells in results["results"].items() for v, by_length in cells.items()
               for length, cell in by_length.items()}
    results["published"] = publish_results(
        args, loaded.ref, metrics, {"extrapolation accuracy": out_dir / "accuracy.png",
                                    "extrapolation entropy": out_dir / "entropy.png"},
        f"length extrapolation (N = {train_length}, L = {', '.join(map(str, lengths))}, mask seed {args.seed})")
    return results


def tables(results: dict) -> str:
    """One accuracy table per test set (variants × lengths), then the loss tables and the run record."""
    lengths = [str(length) for length in results["lengths"]]
    model = results["model"]
    header = [
        f"# Length extrapolation: {model['ref']}",
        "",
        f"N = {results['train_length']}, RoPE base {model['rope_base']}, d = {model['rope_dim']}, "
        f"{model['attention_normalization']} attention; mask seed {results['masking']['seed']}; "
        f"corpus {results['corpus']['source']} ({results['corpus']['tokens']} tokens); "
        f"git {results['git']['commit']}{' (dirty)' if results['git']['dirty'] else ''}.",
        "",
    ]
    parts = ["\n".join(header)]
    for name in results["sets"]:
        cells = results["results"][name]
        variants = list(cells)

        def accuracy(row, column):
            cell = cells[row].get(column)
            return report.percent(cell["accuracy"]) if cell else "—"

        def loss(row, column):
            cell = cells[row].get(column)
            return f"{cell['loss']:.3f}" if cell and cell["loss"] is not None else "—"

        table = report.markdown_table(f"{name}: masked-token accuracy (%)", variants, lengths, accuracy)
        counts = [str(cells[variants[0]].get(c, {}).get("masked_tokens", "—")) for c in lengths]
        table += "| masked tokens | " + " | ".join(counts) + " |\n"
        parts.append(table)
        parts.append(report.markdown_table(f"{name}: masked-token loss (nats)", variants, lengths, loss))
    return "\n".join(parts)


def plot_accuracy(results: dict, path: Path) -> Path:
    """Accuracy vs length per variant, one panel per test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = results["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 4.4), squeeze=False)
    methods: dict[str, int] = {}
    for axis, name in zip(axes[0], sets):
        for v, cells in results["results"][name].items():
            xs = [int(length) for length in cells]
            ys = [100 * cells[length]["accuracy"] for length in cells]
            axis.plot(xs, ys, marker="o", markersize=3, label=v, **report.variant_style(v, methods))
        axis.set_xscale("log", base=2)
        axis.set_xticks(results["lengths"], [str(x) for x in results["lengths"]])
        axis.set_xlabel("context length L" if name == "fixed_target" else "sequence length L")
        axis.set_ylabel("masked-token accuracy (%)")
        axis.set_title(name.replace("_", "-"))
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.suptitle(f"{results['model']['ref']} (trained at N = {results['train_length']})")
    fig.tight_layout()
    report.atomic_save_figure(fig, path)
    plt.close(fig)
    return path


def plot_entropy(results: dict, path: Path) -> Path:
    """Mean attention entropy (over layers) vs length, and per layer at the longest length (natural set if run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = "natural" if "natural" in results["sets"] else results["sets"][0]
    cells_by_variant = results["results"][name]
    longest = str(max(results["lengths"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    methods: dict[str, int] = {}
    for v, cells in cells_by_variant.items():
        style = report.variant_style(v, methods)
        xs = [int(length) for length in cells]
        ys = [_mean(cells[length]["entropy_by_layer"]) for length in cells]
        left.plot(xs, ys, marker="o", markersize=3, label=v, **style)
        if longest in cells:
            per_layer = cells[longest]["entropy_by_layer"]
            right.plot(range(1, len(per_layer) + 1), per_layer, marker=".", label=v, **style)
    left.set_xscale("log", base=2)
    left.set_xticks(results["lengths"], [str(x) for x in results["lengths"]])
    left.set_xlabel("sequence length L")
    left.set_ylabel("mean attention entropy (nats)")
    left.set_title(f"{name}: mean over layers")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_xlabel("layer")
    right.set_ylabel("attention entropy (nats)")
    right.set_title(f"{name}: per layer at L = {longest}")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.tight_layout()
    report.atomic_save_figure(fig, path)
    plt.close(fig)
    return path


def _mean(values) -> float:
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (EvaluateError, ZooError, FileNotFoundError) as error:  # anything else keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
