"""The length-extrapolation study of issue 7 (extrapolation.md B.6), end to end on a CPU:

    python scripts/benchmarks/extrapolation_study.py                 # train what is missing, evaluate, summarise
    python scripts/benchmarks/extrapolation_study.py --retrain       # pretrain every checkpoint again
    python scripts/benchmarks/extrapolation_study.py --summary-only  # rebuild summary.md / comparison.png
    bash scripts/benchmarks/extrapolation_study.sh                   # the same as the first line

1. Pretrains five tiny models at N = 64 on the embedded corpus with `python -m pretrain`
   (pretrain/recipes/extrapolation-*.yaml): RoFormerV2 plain, RoFormerV2 with log-n attention
   (softmax_plus, base 512 as Su's Attention-E), RoFormerV2 with Ruoss random positions (sorted ids from [0, 16N)),
   RoFormerV2 with Su's equal-mean random positions + log n, and GAU-α (built-in softmax_plus).
2. Runs `python -m evaluate extrapolation` on each export folder at 1, 2, 4, 8, 16 × N: the whole
   variant grid on the natural set (<checkpoint>/natural/), a core grid on the repeated and
   fixed-target sets (<checkpoint>/retrieval/); the same masks for every variant.
3. Runs `python -m evaluate robustness` on the plain (L = N, 4N, 16N) and the Ruoss random-position
   checkpoint (1–16 N, plus uniformly spaced positions over its training span, `uniform_span`).
4. Writes summary.md (Su's 8823 MLM table next to ours) and comparison.png.

Everything lands in scripts/benchmarks/results/extrapolation/ (one folder per evaluation, logs/).
Each step is one subprocess with OMP_NUM_THREADS=1 (on a shared 2-core machine one thread per
process is several times faster than two contended ones). Existing exports and complete result
files are reused unless --retrain / --reevaluate. On a machine with CUDA every step runs on the GPU
without an option here: `python -m pretrain` and `python -m evaluate extrapolation|robustness` both
pick CUDA when it is present (their own `--device` defaults to auto).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "scripts" / "benchmarks" / "results" / "extrapolation"
N = 64
LENGTHS = "1,2,4,8,16"
SU_LENGTHS = [64, 128, 256, 512, 1024]
SU_TABLE = {  # kexue.fm/archives/8823, small RoFormer, MLM, trained at 64 (extrapolation.md B.2)
    "Su: Attention-O (1/√d)": [43.27, 36.53, 23.02, 15.12, 11.54],
    "Su: Attention-E (log₅₁₂ n/√d)": [43.11, 41.17, 34.04, 20.15, 13.58],
}

# Variant grids (zoo.positions names). Checkpoints trained with log n keep their own scale in every
# variant, so they get no logn_dagger rows.
GRID_SOFTMAX = [
    "baseline", "logn_dagger", "window_half", "window_full", "window_lambda", "window_half+logn_dagger",
    "pi", "ntk", "ntk_fixed", "ntk_mixed", "ntk_mixed+logn_dagger", "ntk_dynamic", "yarn",
    "rerope_w16", "rerope_w32", "rerope_w16+logn_dagger", "leaky_rerope_w16_k16",
]
GRID_LOGN = [
    "baseline", "window_half", "window_full", "window_lambda", "pi", "ntk", "ntk_fixed", "ntk_mixed",
    "ntk_dynamic", "yarn", "rerope_w16", "rerope_w32", "leaky_rerope_w16_k16",
]
# The repeated and fixed-target sets (long-range retrieval, "longer context") get a core grid: on a
# shared 2-core CPU the whole grid on all three sets would take ~30 minutes per checkpoint.
CORE_SOFTMAX = ["baseline", "logn_dagger", "window_half", "ntk_mixed", "ntk_mixed+logn_dagger", "yarn",
                "rerope_w16", "rerope_w16+logn_dagger"]
CORE_LOGN = ["baseline", "window_half", "ntk_mixed", "yarn", "rerope_w16"]

MODELS = {  # key: (recipe run name, natural-set grid, repeated/fixed-target grid, robustness arguments or None)
    "roformer-v2-plain": ("extrapolation-roformer-v2-plain", GRID_SOFTMAX, CORE_SOFTMAX, ["--lengths", "1,4,16"]),
    "roformer-v2-logn": ("extrapolation-roformer-v2-logn", GRID_LOGN, CORE_LOGN, None),
    "roformer-v2-randpos": ("extrapolation-roformer-v2-randpos", GRID_SOFTMAX, CORE_SOFTMAX,
                            ["--lengths", LENGTHS, "--train-span", str(16 * N)]),
    "roformer-v2-equalmean-logn": ("extrapolation-roformer-v2-equalmean-logn", GRID_LOGN, CORE_LOGN, None),
    "gau-alpha-plain": ("extrapolation-gau-alpha-plain", GRID_LOGN, CORE_LOGN, None),
}
LABELS = {
    "roformer-v2-plain": "RoFormerV2 plain",
    "roformer-v2-logn": "RoFormerV2 trained log n",
    "roformer-v2-randpos": "RoFormerV2 Ruoss random positions",
    "roformer-v2-equalmean-logn": "RoFormerV2 equal-mean positions + log n",
    "gau-alpha-plain": "GAU-α (softmax_plus)",
}


def sh(command: list[str], log: Path) -> None:
    """Run one step, its output in `log`; stop the study if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TQDM_MININTERVAL", "10")
    started = time.time()
    print(f"$ {' '.join(command)}   (log: {log.relative_to(ROOT)})", flush=True)
    with log.open("w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    print(f"  {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.time() - started:.0f} s", flush=True)
    if code != 0:
        sys.exit(f"step failed; see {log}")


def export_dir(run_name: str) -> Path:
    return ROOT / "checkpoints" / "runs" / run_name / "export"


def complete(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("complete", False)
    except (OSError, ValueError):
        return False


def pretrain(key: str, retrain: bool) -> None:
    run_name = MODELS[key][0]
    if export_dir(run_name).is_dir() and not retrain:
        print(f"{key}: reusing {export_dir(run_name).relative_to(ROOT)}")
    else:
        sh([sys.executable, "-m", "pretrain", "--config", f"pretrain/recipes/{run_name}.yaml", "--restart"],
           OUT / "logs" / f"pretrain-{key}.log")
    metrics = ROOT / "checkpoints" / "runs" / run_name / "metrics.jsonl"
    if metrics.is_file():  # keep the training record next to the results
        (OUT / "logs" / f"metrics-{key}.jsonl").write_text(metrics.read_text(encoding="utf-8"), encoding="utf-8")


def extrapolation(key: str, args) -> None:
    run_name, grid, core, _ = MODELS[key]
    for part, sets, variants in (("natural", "natural", grid), ("retrieval", "repeated,fixed_target", core)):
        out = OUT / key / part
        if complete(out / "results.json") and not args.reevaluate:
            print(f"{key}: reusing {out.relative_to(ROOT)}/results.json")
            continue
        sh([sys.executable, "-m", "evaluate", "extrapolation", "--model", str(export_dir(run_name)),
            "--train-length", str(N), "--lengths", LENGTHS, "--sets", sets, "--variants", ",".join(variants),
            "--max-tokens", str(args.max_tokens), "--targets", str(args.targets), "--out", str(out), "--quiet"],
           OUT / "logs" / f"extrapolation-{key}-{part}.log")


def robustness(key: str, args) -> None:
    run_name, _, _, extra = MODELS[key]
    if extra is None:
        return
    out = OUT / f"robustness-{key}"
    if complete(out / "results.json") and not args.reevaluate:
        print(f"{key}: reusing {out.relative_to(ROOT)}/results.json")
        return
    sh([sys.executable, "-m", "evaluate", "robustness", "--model", str(export_dir(run_name)), "--train-length", str(N),
        "--max-tokens", str(args.max_tokens), "--out", str(out), "--quiet", *extra],
       OUT / "logs" / f"robustness-{key}.log")


# ------------------------------------------------------------------------------ summary


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def row(cells: dict, lengths=SU_LENGTHS) -> list[float | None]:
    return [100 * cells[str(L)]["accuracy"] if str(L) in cells and cells[str(L)]["accuracy"] is not None else None
            for L in lengths]


def fmt(values, digits=2) -> str:
    return " | ".join("—" if v is None else f"{v:.{digits}f}" for v in values)


def ratios(values):
    first = values[0]
    return [None if v is None or not first else v / first for v in values]


def summarize() -> str:
    results = {}
    for key in MODELS:
        parts = [load(OUT / key / part / "results.json") for part in ("natural", "retrieval")]
        parts = [p for p in parts if p]
        if parts:
            merged = dict(parts[0])
            merged["results"] = {name: cells for p in parts for name, cells in p["results"].items()}
            results[key] = merged
    robust = {key: load(OUT / f"robustness-{key}" / "results.json") for key in MODELS}
    header = "| | " + " | ".join(str(L) for L in SU_LENGTHS) + " |\n|---|" + "---|" * len(SU_LENGTHS) + "\n"
    lines = ["# Length extrapolation study (issue 7): summary", "",
             f"Models pretrained at N = {N}; natural held-out set; masked-token accuracy (%) at L = 64 … 1024.", ""]
    rows: dict[str, list] = dict(SU_TABLE)
    for key, res in results.items():
        natural = res["results"].get("natural", {})
        for name in ("baseline", "logn_dagger"):
            if name in natural and not (key == "roformer-v2-randpos" and name != "baseline"):
                rows[f"{LABELS[key]}: {name}"] = row(natural[name])
    for key, res in robust.items():
        if res and "uniform_span" in res["results"]:  # a random-position checkpoint read with spread-out positions
            rows[f"{LABELS[key]}: uniform positions over [0, {res['train_span'] - 1}]"] = row(res["results"]["uniform_span"])
            if "stride_4" in res["results"]:
                rows[f"{LABELS[key]}: positions 0, 4, 8, …"] = row(res["results"]["stride_4"])
    lines += ["## Against Su's MLM table (archives/8823)", "", header.rstrip("\n")]
    lines += [f"| {name} | {fmt(values)} |" for name, values in rows.items()]
    lines += ["", "Relative to the accuracy at L = N (shape of the curve, comparable across model sizes):", "",
              header.rstrip("\n")]
    lines += [f"| {name} | {fmt(ratios(values), 3)} |" for name, values in rows.items()]
    # best variants per checkpoint and set
    for set_name in ("natural", "repeated", "fixed_target"):
        lines += ["", f"## Best inference variants per checkpoint: {set_name} set (accuracy %, L = 64 … 1024)", "",
                  "| checkpoint | variant | " + " | ".join(str(L) for L in SU_LENGTHS) + " |",
                  "|---|---|" + "---|" * len(SU_LENGTHS)]
        for key, res in results.items():
            if set_name not in res["results"]:
                continue
            cells = res["results"][set_name]
            ranked = sorted(cells, key=lambda v: -_mean_long(cells[v]))
            keep = list(dict.fromkeys(["baseline"] + ranked[:4]))
            for name in keep:
                lines.append(f"| {LABELS[key]} | {name} | {fmt(row(cells[name]))} |")
    lines += ["", "Ranking: mean accuracy over L = 4N … 16N. Full tables: `<checkpoint>/results.md`; "
              "plots `<checkpoint>/{natural,retrieval}/accuracy.png`, `<checkpoint>/natural/entropy.png`, `comparison.png`."]
    for key, res in robust.items():
        if res:
            lines += ["", f"## Robustness probes: {LABELS[key]} (accuracy %, change vs natural positions in pp)", ""]
            lengths = [str(L) for L in res["lengths"]]
            lines += ["| probe | " + " | ".join(lengths) + " |", "|---|" + "---|" * len(lengths)]
            for probe, cells in res["results"].items():
                values = []
                for L in lengths:
                    c = cells.get(L)
                    if c is None:
                        values.append("—")
                    elif probe == "natural":
                        values.append(f"{100 * c['accuracy']:.2f}")
                    else:
                        values.append(f"{100 * c['accuracy']:.2f} ({100 * c['accuracy_change']:+.2f})")
                lines.append(f"| {probe} | " + " | ".join(values) + " |")
    text = "\n".join(lines) + "\n"
    (OUT / "summary.md").write_text(text, encoding="utf-8")
    plot(rows)
    return text


def _mean_long(cells: dict) -> float:
    values = [cells[str(L)]["accuracy"] for L in (4 * N, 8 * N, 16 * N) if str(L) in cells]
    return sum(values) / len(values) if values else -math.inf


def plot(rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.6))
    for name, values in rows.items():
        if name.startswith(LABELS["roformer-v2-randpos"] + ": baseline"):
            continue  # natural positions are off its training distribution: the uniform-span row stands for it
        su = name.startswith("Su")
        style = dict(linestyle="--" if su else "-", linewidth=2.2 if su else 1.3, marker="o", markersize=3)
        xs = [L for L, v in zip(SU_LENGTHS, values) if v is not None]
        left.plot(xs, [v for v in values if v is not None], label=name, **style)
        right.plot(xs, [v for v in ratios(values) if v is not None], label=name, **style)
    for axis, ylabel in ((left, "masked-token accuracy (%)"), (right, "accuracy / accuracy at L = N")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(SU_LENGTHS, [str(x) for x in SU_LENGTHS])
        axis.set_xlabel("sequence length L (trained at N = 64)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    left.set_title("natural set: absolute")
    right.set_title("natural set: relative to L = N")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "comparison.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)}")
    parser.add_argument("--retrain", action="store_true", help="pretrain even where an export folder exists")
    parser.add_argument("--reevaluate", action="store_true", help="evaluate even where complete results exist")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=16384, help="token budget per length and set (default 16384)")
    parser.add_argument("--targets", type=int, default=64, help="fixed targets in the fixed_target set (default 64)")
    args = parser.parse_args()
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = set(keys) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for key in keys:
            pretrain(key, args.retrain)
        for key in keys:
            extrapolation(key, args)
            robustness(key, args)
    print(summarize())
    print(f"wrote {OUT.relative_to(ROOT)}/summary.md and comparison.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
