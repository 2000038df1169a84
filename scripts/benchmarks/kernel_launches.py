"""Kernel launches per training step and inference pass of the base models, as CUDA runs them in eager
mode, counted here.

    python scripts/benchmarks/kernel_launches.py [--out scripts/benchmarks/results/kernel_launches]

In eager mode every operation is a kernel launch whose cost is paid on the host (Python, the
dispatcher, autograd and autocast: about 10 µs each) and a trip through GPU memory. When the host
cannot queue kernels as fast as the GPU runs them, the GPU waits; either cost, launches or bytes, fits
what kept our eager models behind transformers' BERT on an H200 (gpu.md §2: compiled, the same
RoFormerV2 ran 2.1× faster), and step_profile.py measures which on a GPU. Which operations a step runs
depends on the implementations the kernel registry picks, not on the device's arithmetic, so the
launches can be counted on the CPU.

Counted with a TorchDispatchMode: every operation that reaches a backend during one training step of
the encoder (bf16-autocast forward, the sum of the last hidden state as the loss, backward), and of
one inference forward pass (eval mode, no_grad, bf16 autocast), except views and allocations, which
launch nothing. The count does not depend on the batch or the length (batch 2 × 16 tokens here). The
registry is set as CUDA resolves it (cuda_registry.py), in two settings:

- "reference": as CUDA ran until the fused entries came: the RMS norm, RoPE, the post-norm residual
  step (dropout, α·x +, norm) and GAU's q/k scales as PyTorch operations;
- "fused": one kernel each way for the RMS norm (torch's fused kernel on CUDA: the embeddings' norm)
  and for RoPE (the Triton kernel, the CUDA side of the operator zoo::rope), each counted here as our
  CPU operator, which is likewise one operator each way; the post-norm residual step and GAU's q/k
  scale pair (with RoPE's rotation and q's row factor in the same kernel) through their Triton kernels,
  run here in Triton's interpreter, each launch counted as one;
- in both: the attention through sdpa (GAU-α's wide head as heads sharing q/k), one kernel each way,
  without attention dropout; hidden dropout as torch's `native_dropout`, one kernel each way.

"zoo GAU-α-base, explicit attention" (`attention_backend="matmul"`, "fused" only) takes CUDA's explicit
attention instead: cuBLAS products around one Triton softmax kernel each way
(zoo/kernels/triton_softmax_attention.py).

Side by side: our three families, and transformers' BERT-base (sdpa) at the same shape, whose
LayerNorm, GELU, biases and dropout are one kernel each. The optimizer step (the same fused step for
every model) is not counted. Writes `kernel_launches.json`, `.md` and `.png` to --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path
from unittest import mock

if __name__ == "__main__":
    # everything here runs on the CPU, the Triton kernels too: in Triton's interpreter, which Triton reads
    # when it and a kernel are defined, so before anything imports it (imported as a module, by the test
    # suite, tests/conftest.py decides)
    os.environ["TRITON_INTERPRET"] = "1"

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cuda_registry import SETTINGS, MergedHeadsCopies, as_on_cuda  # noqa: E402

import zoo  # noqa: E402
import zoo.kernels  # noqa: E402

MODELS = {  # name → preset, or "bert"
    "zoo RoFormerV2-base": "roformer-v2-base",
    "zoo GAU-α-base": "gau-alpha-base",
    "zoo DeepNet-12": "deepnet-12",
    "zoo GAU-α-base, explicit attention": "gau-alpha-base",
    "transformers BERT-base (sdpa)": "bert",
}
BERT = "transformers BERT-base (sdpa)"
# config overrides; these run in the "fused" setting only (the explicit attention's Triton entry is one
# of CUDA's fused entries: in the "reference" setting it would be `SoftmaxAttention`, which CUDA never ran)
OVERRIDES = {"zoo GAU-α-base, explicit attention": {"attention_backend": "matmul"}}
VOCAB = 12000
# launch nothing, though not marked as views (_unsafe_view is reshape's view of a fresh copy); the last
# three run on the host on CUDA too: the Triton dropout's seed, drawn from the CPU generator and read
# as an int, and a dtype promotion
NO_KERNEL = {"detach.default", "_unsafe_view.default", "empty.memory_format", "empty_strided.default",
             "empty_like.default", "randint.low", "_local_scalar_dense.default", "promote_types.default"}


class Launches(TorchDispatchMode):
    """Counts the operations that launch a kernel (not views, not allocations), by name. The CPU's copy
    merging the heads of GAU's attention is not counted: on CUDA that merge is a view
    (cuda_registry.MergedHeadsCopies)."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.merged_heads = MergedHeadsCopies()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        merge = self.merged_heads.see(func, args, out)
        if not (func.is_view or func.__name__ in NO_KERNEL or merge):
            self.counts[str(func)] += 1
        return out

    def total(self) -> int:
        return sum(self.counts.values())


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if MODELS[name] == "bert":
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=VOCAB, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, max_position_embeddings=2048, attention_probs_dropout_prob=0.0)
        return BertModel._from_config(config, attn_implementation="sdpa", add_pooling_layer=False).train()
    return zoo.create(MODELS[name], task="base", attention_probs_dropout_prob=0.0,
                      **{"attention_backend": "sdpa", **OVERRIDES.get(name, {})}).train()


def counted_launch(launch_context):
    """`zoo.kernels.triton_launch`, also counting one launch, "triton.<kernel>", in the active `Launches`
    mode (a Triton kernel is no ATen operation, so the mode would not see it)."""

    def counting(kernel: str, device: torch.device):
        mode = torch.utils._python_dispatch._get_current_dispatch_mode()
        if isinstance(mode, Launches):
            mode.counts[f"triton.{kernel}"] += 1
        return launch_context(kernel, device)

    return counting


def count(name: str, setting: str) -> dict:
    model = build(name)
    ids = torch.randint(104, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    layers = model.config.num_hidden_layers
    forward, backward, inference = Launches(), Launches(), Launches()
    counting = mock.patch.object(zoo.kernels, "triton_launch", counted_launch(zoo.kernels.triton_launch))
    with as_on_cuda(setting), counting:
        with torch.autocast("cpu", dtype=torch.bfloat16), forward:
            hidden = model(input_ids=ids).last_hidden_state
        with backward:
            hidden.float().sum().backward()
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), inference:
            model(input_ids=ids)
    total = forward.counts + backward.counts
    steps = forward.total() + backward.total()
    return {"model": name, "setting": setting, "layers": layers, "forward": forward.total(),
            "backward": backward.total(), "total": steps, "per_layer": steps / layers,
            "inference": inference.total(), "by_operation": dict(total.most_common()),
            "inference_by_operation": dict(inference.counts.most_common())}


def report(rows: list[dict]) -> str:
    bert = next(row for row in rows if row["model"] == BERT)
    lines = ["| model | elementwise | forward | backward | step | per layer | × BERT-base | inference | × BERT-base |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        setting = "–" if row["model"] == BERT else row["setting"]
        lines.append(f"| {row['model']} | {setting} | {row['forward']} | {row['backward']} | {row['total']} | "
                     f"{row['per_layer']:.1f} | {row['total'] / bert['total']:.2f}× | {row['inference']} | "
                     f"{row['inference'] / bert['inference']:.2f}× |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (train, infer) = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True, gridspec_kw={"width_ratios": [2, 1]})
    labels = [row["model"] if row["model"] == BERT else f"{row['model']}\n({row['setting']})" for row in rows]
    train.barh(labels, [row["forward"] for row in rows], label="forward", color="#4c72b0")
    train.barh(labels, [row["backward"] for row in rows], left=[row["forward"] for row in rows], label="backward",
               color="#dd8452")
    train.invert_yaxis()
    train.set_xlabel("per training step (12 or 24 layers, eager, bf16 autocast)")
    train.legend()
    infer.barh(labels, [row["inference"] for row in rows], color="#55a868")
    infer.set_xlabel("per inference forward (eval, no_grad)")
    fig.suptitle("Kernel launches as CUDA runs them, counted on the CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "benchmarks" / "results" / "kernel_launches")
    args = parser.parse_args(argv)
    cells = [(name, setting) for name in MODELS
             for setting in (SETTINGS[-1:] if name == BERT or name in OVERRIDES else SETTINGS)]
    rows = [count(name, setting) for name, setting in tqdm(cells, desc="kernel launches")]
    table = report(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_launches.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    (args.out / "kernel_launches.md").write_text(table + "\n")
    plot(rows, args.out / "kernel_launches.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
