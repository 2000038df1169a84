"""Speed on one GPU: our three families at base size against transformers' BERT-base and RoFormer, in one run.

    python scripts/benchmarks/gpu.py [--out DIR] [--budget-s 240] [--no-compile]
    python scripts/benchmarks/gpu.py --dry            # the whole script on the CPU with tiny shapes
    python scripts/benchmarks/gpu.py --replot DIR     # table and PNG again from DIR/gpu.json

Method (gpu.md §2): a training step is forward + MLM loss (15% of positions labelled) + backward +
fused AdamW step, bf16 autocast over fp32 weights, hidden and attention dropout 0.1, vocabulary
12,000. Ours compute the MLM head on the masked positions only (as the trainer does); transformers'
models compute every position's logits, as their users get them. Model FLOPs use one formula for every
model of a shape (zoo's `train_flops_per_token`: 6 × matmul weights + attention scores + the head on
15%), and MFU is against the GPU's dense bf16 datasheet peak (pretrain.metrics); the measured 8192³
bf16 matmul is reported beside it. Inference is a forward pass in eval mode, logits at every position,
under the same autocast, and again with the weights in bf16 (no autocast: no per-pass weight casts).
Each cell: 3 warm-up steps (2 for the bare loop), then `--steps` timed steps (a quarter of them, at
least 2, for the bare loop, whose step is 8 micro-batches) between device synchronisations, both counts
kept in the JSON; peak memory is the CUDA allocator's peak over the cell, less what was allocated before
it began (kept in the JSON; earlier cells should leave nothing). Variants of ours: selective
recomputation, the fused kernels switched off, every attention through cuDNN's kernel, and GAU-α with
its score matrix in memory (the explicit attention: Triton's softmax between cuBLAS products); each
family compiled. Also: GAU-α's attention alone (one wide head through sdpa vs heads sharing q/k,
through cuDNN's kernel alone among others, vs the explicit attention), and the bare loop at the
published recipe's micro-batch (64 × 512, LAMB every 8 micro-batches) to set beside `python -m
pretrain`'s tokens/s.

Cells run in the order of issue 15's goals, so that a budget cut leaves the rest: the eager training
steps the goals are measured by (ours, BERT, GAU-α's explicit attention) at both lengths and BERT
compiled (the yardstick is the faster BERT), inference of ours and BERT at the three lengths, the bare
loop, our compiled cells, then the other variants. The
report (written after every cell, so a run cut short still has one) ends with each goal, its threshold,
the figure and PASS, FAIL or NOT MEASURED. The pretraining loop's own figures come from its runs'
metrics.jsonl (scripts/gpu_checks.sh keeps them), added with `--pretrain-metrics`, on the GPU or later:

    python scripts/benchmarks/gpu.py --replot DIR --pretrain-metrics roformer-v2-base=RUN/metrics.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import zoo  # noqa: E402
from pretrain.cuda_arch import normalize_cuda_arch_list  # noqa: E402
from pretrain.metrics import datasheet_tflops, measure_matmul_peak  # noqa: E402
from zoo.kernels import registry  # noqa: E402
from zoo.presets import preset_config  # noqa: E402
from zoo.runtime import Runtime  # noqa: E402

OURS = {"zoo RoFormerV2-base": "roformer-v2-base", "zoo GAU-α-base": "gau-alpha-base", "zoo DeepNet-12": "deepnet-12"}
# training-only variants of ours: name → (the model it varies, config overrides)
VARIANTS = {"zoo GAU-α-base, explicit attention": ("zoo GAU-α-base", {"attention_backend": "matmul"}),
            "zoo GAU-α-base, explicit attention, recompute_elementwise": (
                "zoo GAU-α-base", {"attention_backend": "matmul", "recompute_elementwise": True}),
            "zoo GAU-α-base, recompute_elementwise": ("zoo GAU-α-base", {"recompute_elementwise": True}),
            "zoo DeepNet-12, recompute_elementwise": ("zoo DeepNet-12", {"recompute_elementwise": True}),
            "zoo RoFormerV2-base, unfused elementwise": ("zoo RoFormerV2-base", {}),
            "zoo GAU-α-base, unfused elementwise": ("zoo GAU-α-base", {}),
            "zoo RoFormerV2-base, cuDNN attention": ("zoo RoFormerV2-base", {"attention_probs_dropout_prob": 0.125}),
            "zoo GAU-α-base, cuDNN attention": ("zoo GAU-α-base", {"attention_probs_dropout_prob": 0.125})}
# variants that switch kernel-registry entries off (their PyTorch references then run): name → entries.
# "torch-fused": the RMS norm; "triton": RoPE, the post-norm residual step and GAU's q/k scale pair
KERNELS_OFF = {"zoo RoFormerV2-base, unfused elementwise": ("torch-fused", "triton"),
               "zoo GAU-α-base, unfused elementwise": ("torch-fused", "triton")}
# variants whose attention runs through one of sdpa's backends alone (a call it declines fails the cell,
# instead of falling back unseen): name → backends. cuDNN's attention comes after flash in torch 2.11's
# order and is reported as fast or faster on Hopper; it takes attention dropout only at multiples of 1/16
# (hence 0.125 in these variants, against 0.1: the same work) and value heads up to 256 wide on sm_90
SDPA_ONLY = {"zoo RoFormerV2-base, cuDNN attention": ("CUDNN_ATTENTION",),
             "zoo GAU-α-base, cuDNN attention": ("CUDNN_ATTENTION",)}
PEERS = {"transformers BERT-base (sdpa)": "bert", "transformers RoFormer (eager)": "roformer"}
BERT = "transformers BERT-base (sdpa)"  # the yardstick
# inference with the weights in bf16 (a model loaded with torch_dtype=bf16), no autocast: nothing is cast
# per forward pass, where autocast casts every fp32 weight each pass (48 of RoFormerV2-base's 207 launches)
BF16_WEIGHTS = ", bf16 weights"
INFER_MODELS = list(OURS) + ["zoo GAU-α-base, explicit attention", "transformers BERT-base (sdpa)"]
# the compiled training cells (S = 512), most important first: the budget may skip the last ones (BERT's runs
# with the training goals' cells, as the faster BERT is their yardstick)
COMPILED = ("zoo RoFormerV2-base", "transformers BERT-base (sdpa)", "zoo GAU-α-base", "zoo DeepNet-12")
TRAIN_SHAPES = {512: 32, 2048: 8}  # sequence length → batch
INFER_SHAPES = {128: 128, 512: 32, 2048: 8}
MASK_RATE = 0.15
DRY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def build(name: str, dry: bool):
    """A freshly initialised model of the cell's name, in train mode (on the CPU)."""
    if name in OURS or name in VARIANTS:
        base, options = VARIANTS.get(name, (name, {}))
        overrides = dict(DRY) if dry else {}
        if dry and "gau" in OURS[base]:
            overrides = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, attention_key_size=32)
        return zoo.create(OURS[base], **overrides, **options)
    from transformers import BertConfig, BertForMaskedLM, RoFormerConfig, RoFormerForMaskedLM

    shape = dict(DRY) if dry else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                        intermediate_size=3072)
    common = dict(vocab_size=12000, max_position_embeddings=2048, hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1, **shape)
    if PEERS[name] == "bert":
        return BertForMaskedLM._from_config(BertConfig(**common), attn_implementation="sdpa")
    return RoFormerForMaskedLM._from_config(RoFormerConfig(embedding_size=shape["hidden_size"], **common),
                                            attn_implementation="eager")


def build_on(runtime: Runtime, name: str, dry: bool):
    """`build` with its weights initialised on the device (the CPU's truncated-normal draws take seconds
    for a base model: 9 s for GAU-α-base on this project's CPUs, which the budget would pay in every cell);
    built on the CPU and moved where that fails, so that no cell is lost to it."""
    if runtime.is_cuda:
        try:
            with torch.device(runtime.device):
                return build(name, dry)
        except Exception as error:  # noqa: BLE001 - reported, then the CPU's way
            print(f"{name}: not built on {runtime.device} ({type(error).__name__}: {error}); built on the CPU",
                  flush=True)
    return build(name, dry).to(runtime.device)


def flops_config(name: str, dry: bool):
    """The config whose FLOP formula counts this model: ours, or RoFormerV2-base for BERT/RoFormer (same shape)."""
    if dry:
        return build(name if name in OURS or name in VARIANTS else "zoo RoFormerV2-base", True).config
    return preset_config(OURS.get(VARIANTS.get(name, (name,))[0], "roformer-v2-base"))


def make_batch(batch: int, length: int, device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(104, 12000, (batch, length), generator=generator)
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(batch, length, generator=generator) < MASK_RATE
    labels[chosen] = ids[chosen]
    return ids.to(device), labels.to(device), torch.nonzero(chosen.flatten()).flatten().to(device)


WARMUP = 3


def timed(runtime: Runtime, step, steps: int, warmup: int = WARMUP) -> tuple[float, float]:
    """(seconds per step, peak MB) of `step()` after `warmup` calls."""
    runtime.reset_peak_memory()
    for _ in range(warmup):
        step()
    runtime.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    runtime.synchronize()
    return (time.perf_counter() - start) / steps, runtime.peak_memory_mb()


def training_step(name: str, length: int, batch: int, runtime: Runtime, dry: bool, compile: bool = False):
    """One training step of the cell's model as a function (forward under autocast, MLM loss, backward,
    fused AdamW), on a fresh model and batch."""
    torch.manual_seed(0)
    model = build_on(runtime, name, dry).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=runtime.is_cuda)
    forward = torch.compile(model) if compile else model
    ids, labels, positions = make_batch(batch, length, runtime.device)
    ours = name in OURS or name in VARIANTS
    kwargs = {"masked_positions_only": True, "masked_positions": positions} if ours else {}

    def step():
        with runtime.autocast():
            loss = forward(input_ids=ids, labels=labels, **kwargs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_cell(name: str, length: int, batch: int, runtime: Runtime, steps: int, dry: bool, compile: bool = False) -> dict:
    step = training_step(name, length, batch, runtime, dry, compile)
    with registry.disabled(*KERNELS_OFF.get(name, ())), attention_backends(SDPA_ONLY.get(name), runtime):
        seconds, peak = timed(runtime, step, steps)
    fpt = flops_config(name, dry).train_flops_per_token(length, masked_fraction=MASK_RATE)
    return {"seconds": seconds, "tokens_per_s": batch * length / seconds, "model_tflops": batch * length * fpt / seconds / 1e12,
            "peak_mb": peak}


def inference_step(name: str, length: int, batch: int, runtime: Runtime, dry: bool):
    """One inference pass as a function: under bf16 autocast over fp32 weights, or, for a name ending in
    BF16_WEIGHTS, with the weights in bf16 and no autocast."""
    torch.manual_seed(0)
    bf16_weights = name.endswith(BF16_WEIGHTS)
    model = build_on(runtime, name.removesuffix(BF16_WEIGHTS), dry).eval()
    if bf16_weights:
        model = model.to(torch.bfloat16)
    ids, _, _ = make_batch(batch, length, runtime.device)

    @torch.no_grad()
    def step():
        with contextlib.nullcontext() if bf16_weights else runtime.autocast():
            model(input_ids=ids).logits

    return step


def infer_cell(name: str, length: int, batch: int, runtime: Runtime, steps: int, dry: bool) -> dict:
    seconds, peak = timed(runtime, inference_step(name, length, batch, runtime, dry), steps)
    fpt = flops_config(name.removesuffix(BF16_WEIGHTS), dry).train_flops_per_token(length) / 3
    return {"seconds": seconds, "tokens_per_s": batch * length / seconds, "model_tflops": batch * length * fpt / seconds / 1e12,
            "peak_mb": peak}


# GAU's attention as heads sharing q/k: variant → (v slice width in multiples of q's, sdpa backends allowed
# or None for sdpa's own choice, attention dropout). Fewer, wider slices recompute q·kᵀ fewer times, where
# a kernel takes a value head wider than q's (the memory-efficient kernel does; cuDNN's up to 256 on sm_90,
# with dropout at multiples of 1/16 only); a cell fails where the backends decline the call
SHARED_QK_VARIANTS = {
    "heads sharing q/k (expand)": (1, None, 0.1),
    "heads sharing q/k (expand), cuDNN only": (1, ("CUDNN_ATTENTION",), 0.125),
    "heads sharing q/k, v slices of 2×s": (2, ("EFFICIENT_ATTENTION",), 0.1),
    "heads sharing q/k, v slices of 2×s, cuDNN only": (2, ("CUDNN_ATTENTION",), 0.125),
    "heads sharing q/k, v slices of 4×s": (4, ("EFFICIENT_ATTENTION",), 0.1),
}


# GAU's one head with its score matrix in memory: what `attention_backend="matmul"` runs (on CUDA the Triton
# softmax and dropout between cuBLAS products, zoo/kernels/triton_softmax_attention.py; on the CPU the blocked kernel)
EXPLICIT = "explicit scores (attention_backend=matmul)"


def attention_backends(names, runtime: Runtime):
    """sdpa restricted to the named backends for a block (None: unrestricted). On the CPU (the dry run)
    the CUDA-only backends (cuDNN's, the memory-efficient one) are replaced by the math backend, so that
    the cell checks the script; on CUDA nothing is, so a call a backend declines fails its cell."""
    if names is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not runtime.is_cuda:
        names = ["MATH" if name in ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION") else name for name in names]
    return sdpa_kernel([getattr(SDPBackend, name) for name in names])


def gau_attention_cell(variant: str, length: int, batch: int, runtime: Runtime, steps: int, dry: bool) -> dict:
    """GAU-α's attention alone (q, k [B,1,S,128], v [B,1,S,1536], dropout 0.1, through cuDNN 0.125),
    forward and backward."""
    import torch.nn.functional as F

    from zoo.attention import attention, sdpa_shared_qk

    size, width = (32, 128) if dry else (128, 1536)
    q, k = (torch.randn(batch, 1, length, size, device=runtime.device, dtype=runtime.compute_dtype, requires_grad=True)
            for _ in range(2))
    v = torch.randn(batch, 1, length, width, device=runtime.device, dtype=runtime.compute_dtype, requires_grad=True)

    def step():
        if variant == "one wide head":
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
        elif variant == EXPLICIT:
            out, _ = attention(q, k, v, None, dropout_p=0.1, training=True, backend="matmul")
        elif variant == "heads sharing q/k (copies)":  # q and k materialised per head
            groups = width // size
            out = F.scaled_dot_product_attention(
                q.expand(batch, groups, length, size).contiguous(), k.expand(batch, groups, length, size).contiguous(),
                v.reshape(batch, length, groups, size).transpose(1, 2), dropout_p=0.1)
        else:  # heads sharing q/k (expanded), each with a slice of v `multiple` times q's width
            multiple, backends, dropout = SHARED_QK_VARIANTS[variant]
            with attention_backends(backends, runtime):
                out = sdpa_shared_qk(q, k, v, None, dropout, size**-0.5, value_width=multiple * size)
        out.sum().backward()

    seconds, peak = timed(runtime, step, steps)
    flops = 3 * 2 * batch * length * length * (size + width)  # forward + backward of the two products
    return {"seconds": seconds, "tokens_per_s": batch * length / seconds, "model_tflops": flops / seconds / 1e12,
            "peak_mb": peak}


def bare_loop_cell(runtime: Runtime, steps: int, dry: bool) -> dict:
    """RoFormerV2-base as `python -m pretrain --config roformer-v2-base` runs it, without DeepSpeed:
    micro-batch 64 × 512, bf16 autocast, the sparse head, LAMB (DeepSpeed's FusedLamb on CUDA) every 8."""
    micro, length, accumulation = (4, 64, 2) if dry else (64, 512, 8)
    torch.manual_seed(0)
    model = build_on(runtime, "zoo RoFormerV2-base", dry).train()
    if runtime.is_cuda:
        from deepspeed.ops.lamb import FusedLamb

        optimizer = FusedLamb(model.parameters(), lr=1.76e-3, bias_correction=False, weight_decay=0.01)
    else:
        from pretrain.optim import Lamb

        optimizer = Lamb(model.parameters(), lr=1.76e-3, bias_correction=False, weight_decay=0.01)
    batches = [make_batch(micro, length, runtime.device, seed) for seed in range(accumulation)]

    def step():
        for ids, labels, positions in batches:
            with runtime.autocast():
                loss = model(input_ids=ids, labels=labels, masked_positions_only=True, masked_positions=positions).loss
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds, peak = timed(runtime, step, steps, warmup=BARE_LOOP_WARMUP)
    tokens = micro * length * accumulation
    fpt = flops_config("zoo RoFormerV2-base", dry).train_flops_per_token(length, masked_fraction=MASK_RATE)
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "model_tflops": tokens * fpt / seconds / 1e12,
            "peak_mb": peak, "batch": micro, "accumulation": accumulation}


BARE_LOOP_WARMUP = 2


def plan(args) -> list[tuple[str, str, int, int, dict]]:
    """(section, model, length, batch, options) of every cell, in the order they run: the budget skips the
    last ones, so first what issue 15's goals are measured by, then what explains the figures."""
    train = dict(TRAIN_SHAPES) if not args.dry else {64: 4, 128: 2}
    infer = dict(INFER_SHAPES) if not args.dry else {32: 8, 64: 4, 128: 2}
    explicit = [name for name in VARIANTS if name.startswith("zoo GAU-α-base, explicit attention")]
    cells = []
    # the training goals: ours, BERT as the yardstick, and GAU-α's explicit attention (the other choice for
    # its CUDA default), at both lengths
    for length, batch in train.items():
        cells += [("train", name, length, batch, {}) for name in [*OURS, BERT, *explicit]]
    first = next(iter(train))
    if not args.no_compile:  # the yardstick is the faster of BERT eager and compiled: both before anything else
        cells.append(("train", BERT + " compiled", first, train[first], {"compile": True}))
    # the inference goal: ours and BERT under autocast, at the three lengths
    for length, batch in infer.items():
        cells += [("infer", name, length, batch, {}) for name in [*OURS, BERT]]
    # the loop goal's yardstick (its first run builds DeepSpeed's FusedLamb: about 40 s)
    cells.append(("bare_loop", "zoo RoFormerV2-base, recipe shape, LAMB", 64 if args.dry else 512, 64, {}))
    if not args.no_compile:
        cells += [("train", name + " compiled", first, train[first], {"compile": True}) for name in COMPILED
                  if name != BERT]
    for length, batch in train.items():
        cells += [("train", name, length, batch, {}) for name in [*VARIANTS, *PEERS] if name not in [*explicit, BERT]]
    for length, batch in infer.items():
        cells += [("infer", name, length, batch, {}) for name in INFER_MODELS + [n + BF16_WEIGHTS for n in INFER_MODELS]
                  if name not in [*OURS, BERT]]
    for length, batch in train.items():
        cells += [("gau_attention", variant, length, batch, {})
                  for variant in ("one wide head", "heads sharing q/k (copies)", *SHARED_QK_VARIANTS, EXPLICIT)]
    return cells


def attach_pretrain_metrics(payload: dict, specs: list[str]) -> None:
    """payload["pretrain"][NAME]: the median tokens/s and MFU of a `python -m pretrain` run's logged steps
    (NAME=PATH to its metrics.jsonl), the first logged interval left out (it holds the warm-up: the first
    steps, the optimizer op's load, a compilation), and the devices its run record names."""
    from pretrain.metrics import read_metrics

    for spec in specs:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--pretrain-metrics takes NAME=PATH, got {spec!r}")
        records = read_metrics(Path(path), "train")[1:]
        if not records:
            raise SystemExit(f"{path}: no logged training step after the first")
        runs = read_metrics(Path(path), "run")
        payload.setdefault("pretrain", {})[name] = {
            "path": str(path), "records": len(records), "steps": [r["step"] for r in records],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
            "mfu": statistics.median(r["mfu"] for r in records), "mfu_basis": records[-1].get("mfu_basis"),
            "devices": sorted(runs[-1].get("devices", {})) if runs else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("scripts/benchmarks/results/gpu"))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per cell")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no cell after this many seconds (default: 240 on the GPU, none in --dry)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile cells")
    parser.add_argument("--sections", default="train,gau_attention,bare_loop,infer",
                        help="which sections to run (default: all), each cell in the plan's order")
    parser.add_argument("--dry", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing")
    parser.add_argument("--replot", type=Path, default=None, help="write the table and PNG again from DIR/gpu.json")
    parser.add_argument("--pretrain-metrics", action="append", default=[], metavar="NAME=PATH",
                        help="a `python -m pretrain` run's metrics.jsonl (NAME: its recipe, e.g. roformer-v2-base) "
                             "for the goals measured in the pretraining loop; repeatable")
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = float("inf") if args.dry else 240.0
    if args.replot is not None:
        payload = json.loads((args.replot / "gpu.json").read_text())
        attach_pretrain_metrics(payload, args.pretrain_metrics)
        (args.replot / "gpu.json").write_text(json.dumps(payload, indent=1))
        report(payload, args.replot)
        return 0
    normalize_cuda_arch_list()  # the bare loop builds DeepSpeed's FusedLamb
    runtime = Runtime.resolve("cpu" if args.dry else "cuda", torch.bfloat16)
    started = time.perf_counter()
    device_name = torch.cuda.get_device_name(runtime.device) if runtime.is_cuda else "CPU (dry run)"
    sheet = datasheet_tflops(device_name, torch.bfloat16) if runtime.is_cuda else None
    side = 8192 if runtime.is_cuda else 256
    measured = measure_matmul_peak(torch.bfloat16, side, device=runtime.device)
    payload = {"device": device_name, "torch": torch.__version__, "datasheet_tflops": sheet,
               "measured_matmul_tflops": measured / 1e12, "matmul_side": side, "dry": args.dry,
               "train_lengths": list(TRAIN_SHAPES), "infer_lengths": list(INFER_SHAPES), "no_compile": args.no_compile,
               "cells": []}
    if args.dry:
        payload["train_lengths"], payload["infer_lengths"] = [64, 128], [32, 64, 128]
    attach_pretrain_metrics(payload, args.pretrain_metrics)
    print(f"{device_name}: datasheet {sheet} TFLOP/s, measured {side}³ bf16 matmul {measured / 1e12:.3g} TFLOP/s",
          flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = {s.strip() for s in args.sections.split(",")}
    for section, name, length, batch, options in [c for c in plan(args) if c[0] in sections]:
        cell = {"section": section, "model": name, "seq_len": length, "batch": batch}
        if time.perf_counter() - started > args.budget_s:
            cell["error"] = "skipped: time budget"
        else:
            # what an earlier cell left allocated is not this cell's: its peak is counted from here
            before_mb = torch.cuda.memory_allocated(runtime.device) / 2**20 if runtime.is_cuda else 0.0
            try:
                steps = max(2, args.steps // 4) if section == "bare_loop" else args.steps
                cell.update(steps=steps, warmup=BARE_LOOP_WARMUP if section == "bare_loop" else WARMUP)
                if section == "train":
                    cell.update(train_cell(name.removesuffix(" compiled"), length, batch, runtime, steps, args.dry,
                                           **options))
                elif section == "infer":
                    cell.update(infer_cell(name, length, batch, runtime, steps, args.dry))
                elif section == "gau_attention":
                    cell.update(gau_attention_cell(name, length, batch, runtime, steps, args.dry))
                else:
                    cell.update(bare_loop_cell(runtime, steps, args.dry))
                if sheet:
                    cell["mfu"] = cell["model_tflops"] / sheet
                if runtime.is_cuda:
                    cell.update(peak_mb=cell["peak_mb"] - before_mb, allocated_before_mb=before_mb)
            except Exception as error:  # one failed cell (an OOM, a compile error) must not lose the others
                cell["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            finally:
                if options.get("compile"):
                    torch._dynamo.reset()  # its caches hold the compiled model's graphs
                gc.collect()  # a compiled model can outlive its cell in a reference cycle: not in the next peak
                if runtime.is_cuda:
                    torch.cuda.empty_cache()
        payload["cells"].append(cell)
        print(json.dumps(cell), flush=True)
        (args.out / "gpu.json").write_text(json.dumps(payload, indent=1))
        report(payload, args.out, quiet=True)  # a run its time limit stops still leaves its report
    report(payload, args.out)
    return 0


def rows(payload: dict) -> list[list[str]]:
    table = []
    for c in payload["cells"]:
        batch = f"{c['batch']}×{c['accumulation']}" if c.get("accumulation") else str(c["batch"])
        if "error" in c:
            table.append([c["section"], c["model"], str(c["seq_len"]), batch, c["error"], "", "", ""])
            continue
        mfu = f"{c['mfu']:.1%}" if c.get("mfu") is not None else "–"
        peak = f"{c['peak_mb'] / 1024:.1f}" if not payload.get("dry") else "–"  # the CPU's is the process's RSS
        table.append([c["section"], c["model"], str(c["seq_len"]), batch, f"{c['tokens_per_s']:,.0f}",
                      f"{c['model_tflops']:.1f}", mfu, peak])
    return table


def report(payload: dict, out: Path, quiet: bool = False) -> None:
    """gpu.md (table, ratios, goals) and, unless `quiet` (the report after each cell), gpu.png and the text
    printed."""
    header = ["section", "model", "S", "batch", "tokens/s", "model TFLOP/s", "MFU", "peak GiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(payload)]
    side = payload.get("matmul_side", 8192)
    lines += ["", f"{payload['device']}, torch {payload['torch']}: datasheet {payload['datasheet_tflops']} TFLOP/s "
                  f"(dense bf16), measured {side}³ bf16 matmul {payload['measured_matmul_tflops']:.3g} TFLOP/s."]
    if payload.get("dry"):
        lines.append("Dry run: tiny shapes on the CPU, to check the script; no figure here measures anything.")
    for name, run in payload.get("pretrain", {}).items():
        lines.append(f"`python -m pretrain` {name}: {run['tokens_per_s']:,.0f} tokens/s, MFU {run['mfu']:.1%} "
                     f"({run['mfu_basis']}), median of the logged steps {run['steps']} ({run['path']}).")
    text = "\n".join(lines + ["", "Ratios:", ""] + ratio_lines(payload) + ["", "Goals (issue 15):", ""]
                     + goal_lines(payload)) + "\n"
    (out / "gpu.md").write_text(text)
    if quiet:
        return
    print(text)
    with contextlib.suppress(ImportError):
        plot(payload, out / "gpu.png")


def _cell(payload, section, model, length):
    for c in payload["cells"]:
        if (c["section"], c["model"], c["seq_len"]) == (section, model, length) and "error" not in c:
            return c
    return None


def best_bert(payload: dict, length: int) -> dict | None:
    """BERT-base's faster training cell at `length`, eager or compiled, its name in "model"."""
    cells = [c for c in (_cell(payload, "train", BERT, length), _cell(payload, "train", BERT + " compiled", length)) if c]
    return max(cells, key=lambda c: c["tokens_per_s"], default=None)


def ratio_lines(payload: dict) -> list[str]:
    """This run's cells against each other: ours against BERT and RoFormerV2, each variant against the
    model it varies, the fused kernels and backends on and off, inference against BERT's."""
    out = []
    for length in sorted({c["seq_len"] for c in payload["cells"] if c["section"] == "train"}):
        best = best_bert(payload, length)
        rof = _cell(payload, "train", "zoo RoFormerV2-base", length)
        gau = _cell(payload, "train", "zoo GAU-α-base", length)
        for name in list(OURS) + list(VARIANTS) + [name + " compiled" for name in COMPILED if name in OURS]:
            ours = _cell(payload, "train", name, length)
            if ours and best:
                out.append(f"- S={length}: {name} / best BERT ({best['model'].removeprefix('transformers ')}) = "
                           f"{ours['tokens_per_s'] / best['tokens_per_s']:.2f}×")
        for name, entries in KERNELS_OFF.items():
            fused, unfused = _cell(payload, "train", VARIANTS[name][0], length), _cell(payload, "train", name, length)
            if fused and unfused:
                out.append(f"- S={length}: {VARIANTS[name][0]} with its fused kernels / without ({', '.join(entries)} "
                           f"off) = {fused['tokens_per_s'] / unfused['tokens_per_s']:.2f}× tokens/s")
        for name, backends in SDPA_ONLY.items():
            plain, only = _cell(payload, "train", VARIANTS[name][0], length), _cell(payload, "train", name, length)
            if plain and only:
                out.append(f"- S={length}: {VARIANTS[name][0]} with its attention through {', '.join(backends)} / "
                           f"sdpa's choice = {only['tokens_per_s'] / plain['tokens_per_s']:.2f}× tokens/s")
        for name, (base, _) in VARIANTS.items():  # the other variants against the model they vary
            cell, base_cell = _cell(payload, "train", name, length), _cell(payload, "train", base, length)
            if cell and base_cell and name not in KERNELS_OFF and name not in SDPA_ONLY:
                out.append(f"- S={length}: {name.removeprefix('zoo ')} / {base.removeprefix('zoo ')} tokens/s = "
                           f"{cell['tokens_per_s'] / base_cell['tokens_per_s']:.2f}×, "
                           f"peak memory {cell['peak_mb'] / base_cell['peak_mb']:.2f}×")
        rof_c, gau_c = (_cell(payload, "train", name + " compiled", length) for name in ("zoo RoFormerV2-base",
                                                                                        "zoo GAU-α-base"))
        if rof_c and gau_c:
            out.append(f"- S={length}: compiled, GAU-α / RoFormerV2 tokens/s = "
                       f"{gau_c['tokens_per_s'] / rof_c['tokens_per_s']:.2f}×, MFU ratio "
                       f"{gau_c['model_tflops'] / rof_c['model_tflops']:.2f}×, "
                       f"peak memory {gau_c['peak_mb'] / rof_c['peak_mb']:.2f}×")
        gau_variants = [name for name in VARIANTS if name.startswith("zoo GAU-α-base") and name not in KERNELS_OFF]
        for label, cell in (("GAU-α", gau), *((name.removeprefix("zoo "), _cell(payload, "train", name, length))
                                               for name in gau_variants)):
            if rof and cell:
                out.append(f"- S={length}: {label} / RoFormerV2 tokens/s = {cell['tokens_per_s'] / rof['tokens_per_s']:.2f}×, "
                           f"MFU ratio {cell['model_tflops'] / rof['model_tflops']:.2f}×, "
                           f"peak memory {cell['peak_mb'] / rof['peak_mb']:.2f}×")
    for length in sorted({c["seq_len"] for c in payload["cells"] if c["section"] == "infer"}):
        for weights in ("", BF16_WEIGHTS):
            bert = _cell(payload, "infer", BERT + weights, length)
            for name in [name for name in INFER_MODELS if name.startswith("zoo")]:
                ours = _cell(payload, "infer", name + weights, length)
                if ours and bert:
                    out.append(f"- inference S={length}: {name}{weights} / BERT-base{weights} = "
                               f"{ours['tokens_per_s'] / bert['tokens_per_s']:.2f}× tokens/s")
    return out


# issue 15's thresholds
GOAL_MFU, GOAL_OVER_BERT, GOAL_GAU_MFU, GOAL_GAU_MEMORY, GOAL_INFERENCE, GOAL_LOOP = 0.45, 1.5, 1.0, 0.8, 1.2, 0.95
PRETRAIN_RUNS = {"zoo RoFormerV2-base": "roformer-v2-base", "zoo DeepNet-12": "deepnet-base"}  # model → recipe


def goal_lines(payload: dict) -> list[str]:
    """Each of issue 15's goals: PASS, FAIL or NOT MEASURED (a cell skipped or failed, a run not attached),
    the threshold and the figure, with where it comes from. In a dry run the lengths stand in for 512 and
    2048 (training) and 128, 512 and 2048 (inference)."""
    train = payload.get("train_lengths") or sorted({c["seq_len"] for c in payload["cells"] if c["section"] == "train"})
    infer = payload.get("infer_lengths") or sorted({c["seq_len"] for c in payload["cells"] if c["section"] == "infer"})
    out = []

    def goal(text: str, value: float | None, threshold: float, fmt: str, at_most: bool = False, source: str = ""):
        if value is None:
            verdict, shown = "NOT MEASURED", "–"
        else:
            verdict = "PASS" if (value <= threshold if at_most else value >= threshold) else "FAIL"
            shown = format(value, fmt)
        out.append(f"- [{verdict}] {text} {'≤' if at_most else '≥'} {format(threshold, fmt)}: {shown}"
                   + (f" ({source})" if source else ""))

    def ratio(a, b, key):
        return a[key] / b[key] if a and b else None

    short = train[0]
    for name in PRETRAIN_RUNS:
        run = payload.get("pretrain", {}).get(PRETRAIN_RUNS[name])
        cell = _cell(payload, "train", name, short)
        if run is not None:
            goal(f"{name} MFU in `python -m pretrain --config {PRETRAIN_RUNS[name]}`", run["mfu"], GOAL_MFU, ".1%",
                 source=run["path"])
        else:
            goal(f"{name} MFU at S={short}", cell["mfu"] if cell and "mfu" in cell else None, GOAL_MFU, ".1%",
                 source="this benchmark's training step; no pretraining run attached")
        best = best_bert(payload, short)
        value, source = ratio(cell, best, "tokens_per_s"), f"against {best['model']}" if best else ""
        if best and payload.get("no_compile"):
            source += ", eager only: --no-compile"
        elif best and not _cell(payload, "train", BERT + " compiled", short):
            # against eager BERT alone a PASS could be a FAIL against the compiled one (1.29× eager in gpu.md §2)
            value, source = None, "BERT-base compiled not measured" + (
                f"; against eager BERT-base {value:.2f}" if value is not None else "")
        goal(f"{name} / best BERT-base tokens/s, S={short}", value, GOAL_OVER_BERT, ".2f", source=source)
    rof_name = "zoo RoFormerV2-base"
    # GAU-α as it comes, and each choice a user can make for it (not the diagnostic switches)
    gau_names = ["zoo GAU-α-base"] + [name for name in VARIANTS if name.startswith("zoo GAU-α-base")
                                      and name not in KERNELS_OFF and name not in SDPA_ONLY]
    meets = {}  # GAU-α configuration → whether it meets both at every length (None: not every figure measured)
    for length in train:
        rof = _cell(payload, "train", rof_name, length)
        for name in gau_names:
            gau = _cell(payload, "train", name, length)
            label = name.removeprefix("zoo ")
            mfu, memory = ratio(gau, rof, "model_tflops"), ratio(gau, rof, "peak_mb")
            goal(f"{label} / RoFormerV2-base MFU, S={length}", mfu, GOAL_GAU_MFU, ".2f")
            goal(f"{label} / RoFormerV2-base peak memory, S={length}", memory, GOAL_GAU_MEMORY, ".2f", at_most=True)
            here = None if mfu is None or memory is None else mfu >= GOAL_GAU_MFU and memory <= GOAL_GAU_MEMORY
            meets[label] = here if length == train[0] else (
                False if False in (meets[label], here) else None if None in (meets[label], here) else True)
    # the goal is both in one configuration: an MFU met by one and the memory by another is not it
    passing = [label for label, met in meets.items() if met]
    verdict = "PASS" if passing else "NOT MEASURED" if None in meets.values() else "FAIL"
    out.append(f"- [{verdict}] GAU-α-base in one configuration: MFU ≥ {GOAL_GAU_MFU:.2f} and peak memory ≤ "
               f"{GOAL_GAU_MEMORY:.2f} of RoFormerV2-base's at S={' and '.join(map(str, train))}: "
               + (", ".join(passing) if passing else "none of " + ", ".join(
                   f"{label} ({'not measured' if met is None else 'no'})" for label, met in meets.items())))
    for length in infer:
        bert = _cell(payload, "infer", BERT, length)
        for name in OURS:
            goal(f"inference {name} / BERT-base tokens/s, S={length}",
                 ratio(_cell(payload, "infer", name, length), bert, "tokens_per_s"), GOAL_INFERENCE, ".2f")
    bare = next((c for c in payload["cells"] if c["section"] == "bare_loop" and "error" not in c), None)
    run = payload.get("pretrain", {}).get("roformer-v2-base")
    if run and run.get("devices") and not payload.get("dry") and run["devices"] != [payload.get("device")]:
        # the two calls of a GPU session can land on different machines (an H100, then an H200)
        goal("`python -m pretrain` roformer-v2-base / the bare loop, tokens/s", None, GOAL_LOOP, ".3f",
             source=f"not comparable: the run on {', '.join(run['devices'])}, the bare loop on {payload.get('device')}")
    else:
        goal("`python -m pretrain` roformer-v2-base / the bare loop, tokens/s",
             run["tokens_per_s"] / bare["tokens_per_s"] if run and bare else None, GOAL_LOOP, ".3f",
             source="" if run else "attach its metrics.jsonl with --pretrain-metrics roformer-v2-base=PATH")
    return out


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in payload["cells"] if c["section"] in ("train", "infer") and "error" not in c]
    if not cells:
        return
    sections = [s for s in ("train", "infer") if any(c["section"] == s for c in cells)]
    lengths = sorted({c["seq_len"] for c in cells})
    fig, axes = plt.subplots(len(sections), len(lengths), figsize=(5.2 * len(lengths), 3.2 * len(sections)),
                             squeeze=False)
    for row, section in zip(axes, sections):
        for axis, length in zip(row, lengths):
            chosen = [c for c in cells if (c["section"], c["seq_len"]) == (section, length)]
            if not chosen:
                axis.axis("off")
                continue
            colors = ["#4477aa" if c["model"].startswith("zoo") else "#bbbbbb" for c in chosen]
            axis.barh([c["model"] for c in chosen], [c["tokens_per_s"] / 1e3 for c in chosen], color=colors)
            axis.set_title(f"{'training' if section == 'train' else 'inference'}, S = {length}")
            axis.set_xlabel("thousand tokens/s")
            axis.invert_yaxis()
    fig.suptitle(f"{payload['device']} (bf16)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
