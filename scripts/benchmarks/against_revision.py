"""Training-step time of our three families: this working tree against an earlier revision, side by side.

    python scripts/benchmarks/against_revision.py --revision 48bab77 [--lengths 128,512] [--rounds 5]
                                                 [--steps 3] [--tokens 4096] [--dropout 0.1]
                                                 [--out scripts/benchmarks/results/against_revision]

For a change that should cost nothing (a refactor, a new dispatch layer): the revision is checked out
into a temporary git worktree, and rounds alternate between the two trees in ABBA order (revision
then working tree, then working tree then revision, ...), each round a fresh process per tree that builds speed.py's models (2 transformer layers
/ 4 GAU layers, hidden 768, vocabulary 12000, bf16 autocast on the CPU, dropout on), runs one warm-up
step and times `--steps` training steps (forward, MLM loss on 15% of positions, backward) per family and
length. Reported: the median seconds per step of each tree and their ratio (working tree / revision;
below 1 is faster). Each tree keeps its own TORCH_EXTENSIONS_DIR, so the CPU kernels are built once per
tree, not at every switch. Writes `against_revision.json`, `.md` and a PNG of the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FAMILIES = ("roformer-v2", "gau-alpha", "deepnet")


def worker(tree: str, lengths: list[int], steps: int, tokens: int, dropout: float) -> None:
    """In a fresh process: time the training steps of `tree`'s models; prints one JSON line."""
    sys.path.insert(0, tree)
    sys.path.insert(1, str(HERE))
    import speed  # this tree's shapes; `import zoo` inside it resolves to `tree`'s package
    import torch

    import zoo

    assert Path(zoo.__file__).resolve().is_relative_to(Path(tree).resolve()), zoo.__file__
    torch.manual_seed(0)
    times = {}
    for family in FAMILIES:
        model = speed.OurModel(family, dropout)
        model.model.train()
        for length in lengths:
            ids, labels = speed.batch(length, tokens)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model.train_step(ids, labels)  # warm-up: kernels loaded, caches filled
                model.model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                for _ in range(steps):
                    model.train_step(ids, labels)
                    model.model.zero_grad(set_to_none=True)
            times[f"{family}@{length}"] = (time.perf_counter() - start) / steps
    print(json.dumps(times))


def run_round(tree: Path, extensions: Path, args) -> dict:
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions), PYTHONPATH="")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), "--lengths", args.lengths,
               "--steps", str(args.steps), "--tokens", str(args.tokens), "--dropout", str(args.dropout)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    if result.returncode != 0:
        sys.exit(f"against_revision.py: the worker for {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revision", default="HEAD", help="the git revision to compare against")
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "against_revision")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.worker:
        worker(args.worker, lengths, args.steps, args.tokens, args.dropout)
        return 0

    commit = subprocess.run(["git", "rev-parse", "--short", args.revision], cwd=ROOT, capture_output=True, text=True)
    if commit.returncode != 0:
        sys.exit(f"against_revision.py: --revision {args.revision}: {commit.stderr.strip()}")
    commit = commit.stdout.strip()
    with tempfile.TemporaryDirectory(prefix="against-revision-") as scratch:
        scratch = Path(scratch)
        old_tree = scratch / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), commit], cwd=ROOT, check=True)
        try:
            trees = {commit: (old_tree, scratch / "extensions-revision"),
                     "working tree": (ROOT, Path(os.environ.get("TORCH_EXTENSIONS_DIR", scratch / "extensions-tree")))}
            samples = {label: [] for label in trees}
            with tqdm(total=args.rounds * len(trees), desc="rounds (one process per tree)") as bar:
                for round_index in range(args.rounds):
                    order = list(trees) if round_index % 2 == 0 else list(trees)[::-1]  # ABBA: no side goes first always
                    for label in order:
                        tree, extensions = trees[label]
                        samples[label].append(run_round(tree, extensions, args))
                        bar.update()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False)

    cells = list(samples[commit][0])
    rows = []
    for cell in cells:
        old = statistics.median(s[cell] for s in samples[commit])
        new = statistics.median(s[cell] for s in samples["working tree"])
        rows.append({"cell": cell, "revision_s": old, "tree_s": new, "ratio": new / old})
    payload = {"revision": commit, "rounds": args.rounds, "steps": args.steps, "tokens": args.tokens,
               "dropout": args.dropout, "threads": os.environ.get("OMP_NUM_THREADS", "default"),
               "rows": rows, "samples": samples}
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "against_revision.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, args.out / "against_revision.json")
    lines = [f"Training step (bf16 autocast, CPU), median of {args.rounds} alternating rounds of {args.steps} steps; "
             f"ratio = working tree / {commit}", "",
             f"| model @ S | {commit} s/step | working tree s/step | ratio |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['cell']} | {r['revision_s']:.4f} | {r['tree_s']:.4f} | {r['ratio']:.3f} |" for r in rows]
    markdown = "\n".join(lines)
    (args.out / "against_revision.md").write_text(markdown + "\n")
    plot(rows, commit, args.out / "against_revision.png")
    print(markdown)
    return 0


def plot(rows: list[dict], commit: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh([r["cell"] for r in rows], [r["ratio"] for r in rows], color="#4c72b0")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"step time, working tree / {commit} (below 1: faster)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
