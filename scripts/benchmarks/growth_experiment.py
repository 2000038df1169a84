"""Grow-and-continue vs from scratch at equal training compute (issue 4), on the embedded corpus.

    python scripts/benchmarks/growth_experiment.py [--scratch-steps 400] [--batch 32] [--small-fraction 0.3]
                                                   [--out scripts/benchmarks/results/growth] [--analyse-only]

Three runs of the pretraining stack (`python -m pretrain`, one process, bf16 autocast, LAMB, dropout 0):

- scratch: the target RoFormerV2 (hidden 128, 4 layers, 2 heads of 64, FFN 512, vocab 12000) for
  `--scratch-steps` steps; its training compute C = steps × batch × seq_len × train_flops_per_token
  (zoo/configuration.py, ecosystem.md §6.2; MLM head on the 15% masked tokens);
- grown: a recipe with `stages:` — a half-width, half-depth model (hidden 64, 2 layers, 1 head of 64,
  FFN 256) trained with `--small-fraction` of C, then grown inside the run with zoo.expand (hidden ×2,
  layers ×2 interleaved, heads ×2, FFN ×2, unequal splits, LAMB moments mapped, a short lr re-warm-up)
  to exactly the target's shape, and trained for the rest of C;
- small (control): the small model alone for the whole of C. At budgets this small a smaller model
  can be the better use of compute; growth is worth something only if it beats *both* from-scratch
  runs, so the grown run is also compared with the better of the two at every compute.

Both use the same data stream (seed), global batch, sequence length, held-out slice and a
warmup-linear schedule over their own number of steps. Held-out MLM loss (fixed masks) is logged
against the cumulative training FLOPs (`train_flops` in metrics.jsonl). Reported: loss at equal
compute, the compute the grown run needs to reach the scratch run's final loss (linear interpolation
between evaluations), and the held-out loss jump at the growth step. Writes results.json,
loss_vs_compute.png and the recipes into --out; run folders go under checkpoints/runs/.

Devices: each run is a `python -m pretrain` process, which trains on CUDA when it is present (there
the recipes' Lamb is DeepSpeed's FusedLamb) and on the CPU otherwise; `--threads` sets
OMP_NUM_THREADS, which matters on the CPU only. The recipes' `peak_tflops: 1.0` is nominal (it only
skips the start-up matmul measurement; the MFU it gives is not used here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TARGET = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, intermediate_size=512)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=256)
GROW = dict(hidden_size=128, num_layers=4, num_heads=2, intermediate_size=512, where="interleave", symmetry="split",
            seed=0)
MASK_RATE = 0.15


def flops_per_token(sizes: dict, seq_len: int) -> float:
    from zoo.presets import preset_config

    return preset_config("roformer-v2-tiny", **sizes).train_flops_per_token(seq_len, masked_fraction=MASK_RATE)


def recipe(name: str, sizes: dict, steps: int, args, run_root: Path, stages: list | None = None) -> dict:
    warmup = max(1, round(0.08 * (stages[0]["steps"] if stages else steps)))
    out = {
        "run_name": name,
        "seed": 42,
        "model": {"preset": "roformer-v2-tiny",
                  "config": {**sizes, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
        "data": {"sources": [{"type": "embedded"}], "seq_len": args.seq_len,
                 "masking": {"rate": MASK_RATE, "mask": 0.8, "random": 0.1, "whole_word": False},
                 "heldout": {"max_sequences": args.heldout}},
        "training": {"steps": steps, "lr_schedule": {"type": "warmup_linear", "warmup": warmup, "final": 0.1},
                     "eval_every": max(1, steps // args.evals), "checkpoint_every": steps, "keep_checkpoints": 2,
                     "log_every": 5, "peak_tflops": 1.0, "output_dir": str(run_root / name), "export": False},
        "deepspeed": {"train_batch_size": args.batch, "train_micro_batch_size_per_gpu": args.batch,
                      "gradient_clipping": 1.0, "torch_autocast": {"enabled": True, "dtype": "bfloat16"},
                      "zero_optimization": {"stage": 0},
                      "optimizer": {"type": "Lamb", "params": {"lr": args.lr, "betas": [0.9, 0.999], "eps": 1.0e-6,
                                                                "weight_decay": 0.01, "bias_correction": False}}},
    }
    if stages:
        out["stages"] = stages
    return out


def run(path: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pretrain", "--config", str(path), "--restart"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{result.stdout[-4000:]}")
    return time.perf_counter() - started


def read(run_dir: Path) -> dict:
    from pretrain.metrics import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    start = max(i for i, r in enumerate(records) if r["kind"] == "eval" and r["step"] == 0)
    records = records[start:]
    return {
        "eval": [(r["train_flops"], r["mlm_loss"], r["step"], r.get("stage", 0)) for r in records if r["kind"] == "eval"],
        "train": [(r["train_flops"], r["loss"], r["step"], r.get("stage", 0)) for r in records if r["kind"] == "train"],
        "growth": [r for r in records if r["kind"] == "growth"],
        "wall_s": records[-1]["time"] - records[0]["time"],
    }


def interpolate(curve: list[tuple], x: float) -> float | None:
    """Loss of a (flops, loss, ...) curve at compute x, linear between evaluations."""
    for (x0, y0, *_), (x1, y1, *_) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return None


def first_reach(curve: list[tuple], target: float) -> float | None:
    """The compute at which a curve first reaches `target` loss (linear between evaluations)."""
    for (x0, y0, *_), (x1, y1, *_) in zip(curve, curve[1:]):
        if y0 > target >= y1:
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    return None


def analyse(scratch: dict, grown: dict, plan: dict, small: dict) -> dict:
    s_eval, g_eval = scratch["eval"], grown["eval"]
    budget = s_eval[-1][0]
    final_scratch = s_eval[-1][1]
    final_grown = g_eval[-1][1]
    reach = first_reach(g_eval, final_scratch)
    growth = grown["growth"][0]
    g_train = grown["train"]
    at = growth["step"]
    before = [loss for _, loss, step, _ in g_train if at - 10 < step <= at]
    after = [loss for _, loss, step, _ in g_train if at < step <= at + 10]
    first_after = next(((f, loss, step) for f, loss, step, stage in g_eval if stage == 1 and step > at), None)
    equal = []
    for flops, loss, step, _ in s_eval[1:]:
        other = interpolate(g_eval, flops)
        if other is not None:
            equal.append({"train_flops": flops, "scratch_loss": loss, "grown_loss": other, "difference": other - loss})
    sm_eval = small["eval"]
    reach_small = first_reach(g_eval, sm_eval[-1][1])
    frontier = []  # the better from-scratch run at each of the grown run's evaluations
    for flops, loss, step, _ in g_eval[1:]:
        candidates = [v for v in (interpolate(s_eval, flops), interpolate(sm_eval, flops)) if v is not None]
        if candidates:
            frontier.append({"train_flops": flops, "grown_loss": loss, "best_scratch_loss": min(candidates),
                             "difference": loss - min(candidates)})
    best_final = min(final_scratch, sm_eval[-1][1])
    reach_best = first_reach(g_eval, best_final)
    return {
        "plan": plan,
        "budget_flops": budget,
        "small_scratch": {"final_loss": sm_eval[-1][1], "final_flops": sm_eval[-1][0], "wall_s": small["wall_s"],
                          "eval": sm_eval},
        "compute_to_reach_small_scratch_final_loss": None if reach_small is None else {
            "flops": reach_small, "fraction_of_budget": reach_small / budget, "saving": 1 - reach_small / budget},
        "versus_best_scratch": {
            "best_final_loss": best_final, "grown_minus_best_at_budget": final_grown - best_final,
            "compute_to_reach_best_final": None if reach_best is None else {
                "flops": reach_best, "fraction_of_budget": reach_best / budget, "saving": 1 - reach_best / budget},
            "along_the_curve": frontier},
        "scratch": {"final_loss": final_scratch, "final_flops": budget, "wall_s": scratch["wall_s"],
                    "eval": s_eval},
        "grown": {"final_loss": final_grown, "final_flops": g_eval[-1][0], "wall_s": grown["wall_s"], "eval": g_eval,
                  "growth_step": at, "growth_flops": growth["train_flops"]},
        "loss_at_equal_compute": {"scratch": final_scratch, "grown": final_grown, "difference": final_grown - final_scratch,
                                  "along_the_curve": equal},
        "compute_to_reach_scratch_final_loss": None if reach is None else {
            "flops": reach, "fraction_of_scratch": reach / budget, "saving": 1 - reach / budget},
        "growth_jump": {
            "heldout_loss_before": growth["loss_before"], "heldout_loss_after": growth["loss_after"],
            "heldout_jump": growth["loss_after"] - growth["loss_before"],
            "probe_max_abs_change": growth["probe_max_abs_change"],
            "train_loss_mean_10_before": sum(before) / len(before) if before else None,
            "train_loss_mean_10_after": sum(after) / len(after) if after else None,
            "first_eval_after": None if first_after is None else {"step": first_after[2], "loss": first_after[1]},
            "parameters": [growth["parameters_before"], growth["parameters_after"]],
        },
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, style in (("scratch", "target from scratch", "-o"), ("grown", "small → grown (staged)", "-s"),
                              ("small_scratch", "small model only (control)", "-^")):
        curve = result[key]["eval"]
        ax.plot([c[0] / 1e12 for c in curve[1:]], [c[1] for c in curve[1:]], style, ms=3, label=label)
    growth = result["grown"]["growth_flops"] / 1e12
    ax.axvline(growth, color="grey", ls=":", lw=1)
    ax.text(growth, ax.get_ylim()[1], " growth", va="top", fontsize=8, color="grey")
    ax.axhline(result["scratch"]["final_loss"], color="C0", ls="--", lw=0.8)
    reach = result["compute_to_reach_scratch_final_loss"]
    if reach:
        ax.axvline(reach["flops"] / 1e12, color="C1", ls="--", lw=0.8)
        ax.text(reach["flops"] / 1e12, result["scratch"]["final_loss"], f" {reach['saving']:.0%} less compute",
                va="bottom", fontsize=8, color="C1")
    ax.set_xlabel("training compute (TFLOPs, analytic)")
    ax.set_ylabel("held-out MLM loss")
    plan = result["plan"]
    ax.set_title(f"RoFormerV2 {plan['target']['hidden_size']}×{plan['target']['num_hidden_layers']}: grown from "
                 f"{plan['small']['hidden_size']}×{plan['small']['num_hidden_layers']} vs from scratch", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch-steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--small-fraction", type=float, default=0.3, help="share of the compute spent on the small model")
    parser.add_argument("--rewarm", type=int, default=10, help="lr re-warm-up steps after the growth")
    parser.add_argument("--evals", type=int, default=16, help="evaluations per run (plus step 0)")
    parser.add_argument("--heldout", type=int, default=160, help="held-out sequences per evaluation")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads; on a shared 2-core machine 1 is many times faster than 2")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts/benchmarks/results/growth")
    parser.add_argument("--runs", type=Path, default=ROOT / "checkpoints/runs")
    parser.add_argument("--analyse-only", action="store_true", help="re-read the runs' metrics, do not train")
    parser.add_argument("--only", default="scratch,grown,small",
                        help="comma-separated runs to train (the others are re-read from their metrics)")
    args = parser.parse_args(argv)

    f_big, f_small = flops_per_token(TARGET, args.seq_len), flops_per_token(SMALL, args.seq_len)
    tokens = args.batch * args.seq_len
    budget = args.scratch_steps * tokens * f_big
    small_steps = round(args.small_fraction * budget / (tokens * f_small))
    grown_steps = round((budget - small_steps * tokens * f_small) / (tokens * f_big))
    plan = {"target": TARGET, "small": SMALL, "grow": GROW, "seq_len": args.seq_len, "batch": args.batch,
            "scratch_steps": args.scratch_steps, "small_steps": small_steps, "grown_steps": grown_steps,
            "flops_per_token": {"target": f_big, "small": f_small}, "small_fraction": args.small_fraction,
            "lr": args.lr, "rewarm": args.rewarm, "optimizer": "LAMB (ZeRO 0), bf16 autocast, dropout 0",
            "heldout_sequences": args.heldout}
    args.out.mkdir(parents=True, exist_ok=True)
    stages = [{"name": "small", "steps": small_steps},
              {"name": "grown", "steps": grown_steps, "grow": GROW, "optimizer_state": "map",
               "lr_rewarm": min(args.rewarm, grown_steps)}]
    recipes = {
        "scratch": recipe("growth-experiment-scratch", TARGET, args.scratch_steps, args, args.runs),
        "grown": recipe("growth-experiment-grown", SMALL, small_steps + grown_steps, args, args.runs, stages),
        "small": recipe("growth-experiment-small", SMALL, round(budget / (tokens * f_small)), args, args.runs),
    }
    import yaml

    walls = {}
    for key, raw in recipes.items():
        path = args.out / f"recipe-{key}.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False))
        if not args.analyse_only and key in args.only.split(","):
            print(f"running {key}: {raw['training']['steps']} steps", flush=True)
            walls[key] = run(path, args.threads)
            print(f"  {walls[key]:.0f} s", flush=True)
    scratch = read(args.runs / recipes["scratch"]["run_name"])
    grown = read(args.runs / recipes["grown"]["run_name"])
    small = read(args.runs / recipes["small"]["run_name"])
    result = analyse(scratch, grown, plan, small)
    previous = {}
    if (args.out / "results.json").is_file():  # keep the record of runs this invocation did not train
        previous = json.loads((args.out / "results.json").read_text()).get("process_wall_s", {})
    result["command"] = ("python scripts/benchmarks/growth_experiment.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    result["process_wall_s"] = {**previous, **walls}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "loss_vs_compute.png")
    reach = result["compute_to_reach_scratch_final_loss"]
    print(json.dumps({k: result[k] for k in ("loss_at_equal_compute", "compute_to_reach_scratch_final_loss",
                                              "growth_jump")}, indent=2, default=str)[:3000])
    print(f"small-only final loss {result['small_scratch']['final_loss']:.4f}; grown vs the better from-scratch run "
          f"at the budget: {result['versus_best_scratch']['grown_minus_best_at_budget']:+.4f}")
    print(f"scratch final loss {result['scratch']['final_loss']:.4f}, grown {result['grown']['final_loss']:.4f}; "
          + (f"grown reaches the scratch final loss at {reach['fraction_of_scratch']:.0%} of the compute"
             if reach else "grown never reaches the scratch final loss"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
