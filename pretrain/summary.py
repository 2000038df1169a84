"""`python -m pretrain.summary RUN_DIR`: a run's loss and held-out accuracy, as a table and a PNG.

Reads RUN_DIR/metrics.jsonl; writes RUN_DIR/curves.png (training loss and held-out masked-token
accuracy against steps).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .metrics import read_metrics


def summarize(run_dir: Path) -> str:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    train, evals = read_metrics(metrics, "train"), read_metrics(metrics, "eval")
    lines = [f"run {run_dir}", "", "| step | held-out masked accuracy | held-out loss |", "| ---: | ---: | ---: |"]
    lines += [f"| {e['step']} | {e['mlm_accuracy']:.2%} | {e['mlm_loss']:.3f} |" for e in evals]
    if train:
        first, last = train[0], train[-1]
        lines += ["", f"training loss: {first['loss']:.3f} at step {first['step']} → {last['loss']:.3f} at step {last['step']}",
                  f"throughput: {last['tokens_per_s']:,.0f} tokens/s, MFU {last['mfu']:.1%}"]
    return "\n".join(lines)


def plot(run_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = run_dir / "metrics.jsonl"
    train, evals = read_metrics(metrics, "train"), read_metrics(metrics, "eval")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss")
    left.plot([r["step"] for r in evals], [r["mlm_loss"] for r in evals], "o-", label="held-out loss")
    left.set_xlabel("step")
    left.set_ylabel("MLM loss")
    left.legend()
    right.plot([r["step"] for r in evals], [100 * r["mlm_accuracy"] for r in evals], "o-", color="C2")
    right.set_xlabel("step")
    right.set_ylabel("held-out masked-token accuracy (%)")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.summary", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        print(summarize(args.run_dir))
        print(f"\nplot: {plot(args.run_dir, args.run_dir / 'curves.png')}")
    except FileNotFoundError as error:
        print(f"pretrain.summary: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
