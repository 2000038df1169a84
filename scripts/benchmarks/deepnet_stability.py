"""DeepNet stability study: Post-LN, Pre-LN and DeepNorm at equal width, learning rate and warmup.

    python scripts/benchmarks/deepnet_stability.py [--depths 12,100,200] [--deepnorm-extra 1000]
        [--steps 300] [--hidden 64] [--heads 1] [--ffn 256] [--seq-len 64] [--batch 32]
        [--lr 1e-3] [--warmup 100] [--device auto] [--out scripts/benchmarks/results/deepnet_stability]

Arms (architectures.md §3, the seeds' "increment explosion" argument):
    post-ln   x ← LN(x + f(x)), xavier_normal init with gain 1 everywhere (α = β = 1)
    pre-ln    x ← x + f(LN(x)), final LN, the same init
    deepnorm  x ← LN(α·x + f(x)), α = (2N)^¼, xavier_normal with gain β = (8N)^−¼ on v/out/fc1/fc2
Every arm trains the masked LM on the embedded corpus with the same data stream (pretrain.loader,
token-level 15% masking), AdamW, linear warm-up then constant lr, gradient clipping off (clipping
would hide the blow-up the study is about), bf16 autocast. Recorded per arm: the loss curve (the
arm stops at the first non-finite loss), the global gradient norm, per-layer gradient norms at
steps 1, 10 and 100, and the model update ‖ΔF‖ = ‖F(x; θ_t) − F(x; θ_0)‖ / ‖F(x; θ_0)‖ of the
final hidden states on a fixed batch for the first 20 updates. Writes results.json, a markdown table
and four PNG figures. Each arm also exists as a `python -m pretrain` recipe
(pretrain/recipes/deepnet-stability/), which reproduces its loss curve on DeepSpeed.
`--device auto` (default) trains on CUDA when present, else on the CPU (bf16 autocast on either).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import zoo
from zoo.families import model_class
from zoo.runtime import DeviceError, Runtime

ARMS = {
    "post-ln": dict(residual="post", initializer="deepnorm_paper", deepnorm_beta=1.0),
    "pre-ln": dict(residual="pre", initializer="deepnorm_paper", deepnorm_beta=1.0),
    "deepnorm": dict(residual="deepnorm", initializer="deepnorm_paper"),
}
GRAD_STEPS = (1, 10, 100)
DELTA_STEPS = 20


def build(arm: str, depth: int, args) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    config = zoo.DeepNetConfig(
        num_hidden_layers=depth, hidden_size=args.hidden, num_attention_heads=args.heads, intermediate_size=args.ffn,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **ARMS[arm],
    )
    return model_class(config, "masked-lm")(config)


def data_stream(args):
    from pretrain.data import build_corpus
    from pretrain.loader import PretrainingStream
    from pretrain.masking import MaskingPolicy
    from pretrain.recipe import DataSection

    tokenizer = zoo.default_tokenizer()
    data = DataSection(seq_len=args.seq_len)
    corpus = build_corpus(data, tokenizer)
    policy = MaskingPolicy.from_recipe(data.masking, tokenizer, 12000)
    return lambda: PretrainingStream(corpus.train, args.batch, args.batch, 1, 0, args.seed, policy)


def _grad_norm(parameters) -> float:
    """‖g‖₂ over the parameters' gradients: one float32 Σg² per tensor, read from the device at once,
    summed in float64 on the host."""
    squares = [p.grad.float().square().sum() for p in parameters if p.grad is not None]
    return math.sqrt(sum(torch.stack(squares).tolist())) if squares else 0.0


def layer_grad_norms(model) -> list[float]:
    return [_grad_norm(layer.parameters()) for layer in model.encoder.layers]


def run_arm(arm: str, depth: int, args, make_stream, runtime: Runtime | None = None) -> dict:
    runtime = runtime or Runtime(torch.device("cpu"), torch.bfloat16)
    model = build(arm, depth, args).to(runtime.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup))
    stream = make_stream()
    probe = runtime.to_device(stream.collate([(10**6, i, i) for i in range(8)]))  # a fixed batch outside the training order
    with torch.no_grad():
        model.eval()
        f0 = model.encoder(probe["input_ids"]).last_hidden_state.float()
        model.train()
    record = {"arm": arm, "depth": depth, "alpha": model.config.alpha, "beta": model.config.beta, "loss": [],
              "grad_norm": [], "layer_grad_norms": {}, "delta_f": [], "diverged_at": None}
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        (batch,) = stream.next_step()
        batch = runtime.to_device(batch)
        with runtime.autocast():
            loss = model(**batch, masked_positions_only=True).loss
        if not torch.isfinite(loss):
            record["diverged_at"] = step
            print(f"  {arm} L={depth}: non-finite loss at step {step}", flush=True)
            break
        loss.backward()
        grad_norm = _grad_norm(model.parameters())
        if step in GRAD_STEPS:
            record["layer_grad_norms"][step] = layer_grad_norms(model)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        record["loss"].append(loss.item())
        record["grad_norm"].append(grad_norm if math.isfinite(grad_norm) else None)
        if step <= DELTA_STEPS:
            with torch.no_grad():
                model.eval()
                f = model.encoder(probe["input_ids"]).last_hidden_state.float()
                model.train()
            record["delta_f"].append(((f - f0).norm() / f0.norm()).item())
        if step % 50 == 0:
            print(f"  {arm} L={depth} step {step}: loss {loss.item():.3f}, grad norm {grad_norm:.3g}", flush=True)
    runtime.synchronize()
    record["seconds"] = time.perf_counter() - start
    tail = record["loss"][-20:]
    record["final_loss"] = sum(tail) / len(tail) if tail and record["diverged_at"] is None else None
    return record


def verdict(r: dict) -> str:
    if r["diverged_at"] is not None:
        return f"diverged at step {r['diverged_at']}"
    loss = r["loss"]
    first = sum(loss[:10]) / 10
    if r["final_loss"] > first - 0.5:
        return "stalled"
    # After warm-up every arm reaches the unigram plateau (≈ 6.6 nats on this corpus); what tells the
    # arms apart is whether the loss keeps falling from there: the mean of the last 20 steps against
    # the mean of the 40 steps around 150 (the study runs 300 steps, warm-up 100).
    notes = []
    if len(loss) >= 200:
        plateau = sum(loss[130:170]) / 40
        notes.append("keeps falling" if plateau - r["final_loss"] >= 0.1 else "stalls at the plateau")
        spike = max(range(120, len(loss)), key=loss.__getitem__)
        if loss[spike] > plateau + 1.0:
            notes.append(f"spike to {loss[spike]:.1f} at step {spike + 1}")
    return ", ".join(notes) or "trains"


def markdown(records: list[dict]) -> str:
    lines = ["| arm | layers | α | β | loss at step 1 → mean of last 20 | grad norm step 1 | max ‖ΔF‖ (first 20 updates) | outcome |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in records:
        final = f"{r['final_loss']:.3f}" if r["final_loss"] is not None else "—"
        delta = f"{max(r['delta_f']):.3g}" if r["delta_f"] else "—"
        g1 = f"{r['grad_norm'][0]:.3g}" if r["grad_norm"] and r["grad_norm"][0] is not None else "—"
        lines.append(f"| {r['arm']} | {r['depth']} | {r['alpha']:.3f} | {r['beta']:.3f} | "
                     f"{r['loss'][0]:.3f} → {final} | {g1} | {delta} | {verdict(r)} |")
    return "\n".join(lines)


def plots(records: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"post-ln": "C3", "pre-ln": "C0", "deepnorm": "C2"}
    depths = sorted({r["depth"] for r in records})
    paths = []

    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.6), squeeze=False)
    for ax, depth in zip(axes[0], depths):
        for r in [r for r in records if r["depth"] == depth]:
            ax.plot(range(1, len(r["loss"]) + 1), r["loss"], color=colors[r["arm"]],
                    label=r["arm"] + (" (diverged)" if r["diverged_at"] else ""))
        ax.set_title(f"{depth} layers")
        ax.set_xlabel("step")
        ax.set_ylabel("MLM loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "loss_curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.6), squeeze=False)
    for ax, depth in zip(axes[0], depths):
        for r in [r for r in records if r["depth"] == depth]:
            norms = r["layer_grad_norms"].get(1) or r["layer_grad_norms"].get("1")
            if norms:
                ax.semilogy(range(len(norms)), norms, color=colors[r["arm"]], label=r["arm"])
        ax.set_title(f"{depth} layers: gradient norm per layer, step 1")
        ax.set_xlabel("layer")
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "layer_grad_norms.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.6), squeeze=False)
    for ax, depth in zip(axes[0], depths):
        for r in [r for r in records if r["depth"] == depth]:
            ax.semilogy(range(1, len(r["delta_f"]) + 1), r["delta_f"], "o-", ms=3, color=colors[r["arm"]], label=r["arm"])
        ax.set_title(f"{depth} layers: model update ‖ΔF‖")
        ax.set_xlabel("update")
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "model_update.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for r in records:
        clean = [g for g in r["grad_norm"] if g is not None]
        if clean:
            ax.semilogy(range(1, len(clean) + 1), clean, color=colors[r["arm"]], alpha=0.4 + 0.6 * (r["depth"] / max(depths)),
                        label=f"{r['arm']} L={r['depth']}")
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "grad_norms.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="12,100,200")
    parser.add_argument("--deepnorm-extra", default="1000", help="depths run for DeepNorm only ('' for none)")
    parser.add_argument("--arms", default="post-ln,pre-ln,deepnorm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--ffn", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when present)")
    parser.add_argument("--out", type=Path, default=Path("scripts/benchmarks/results/deepnet_stability"))
    parser.add_argument("--replot", action="store_true", help="only rewrite the table and figures from OUT/results.json")
    args = parser.parse_args(argv)
    if args.replot:
        args.out.mkdir(parents=True, exist_ok=True)
        return report(json.loads((args.out / "results.json").read_text())["records"], args.out)
    try:
        runtime = Runtime.resolve(args.device, torch.bfloat16)
    except DeviceError as error:
        sys.exit(f"deepnet_stability.py: {error}")
    args.out.mkdir(parents=True, exist_ok=True)
    if runtime.is_cuda:
        print(f"device: {runtime.describe()}", flush=True)
    make_stream = data_stream(args)
    runs = [(arm, int(d)) for d in args.depths.split(",") for arm in args.arms.split(",")]
    runs += [("deepnorm", int(d)) for d in args.deepnorm_extra.split(",") if d]
    records = []
    results = args.out / "results.json"
    for arm, depth in runs:
        print(f"{arm}, {depth} layers", flush=True)
        records.append(run_arm(arm, depth, args, make_stream, runtime))
        tmp = results.with_suffix(".tmp")
        tmp.write_text(json.dumps({"args": vars(args) | {"out": str(args.out), "device": str(runtime.device)},
                                   "records": records}))
        os.replace(tmp, results)
    return report(records, args.out)


def report(records: list[dict], out: Path) -> int:
    table = markdown(records)
    (out / "results.md").write_text(table + "\n")
    print(table)
    for path in plots(records, out):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
