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
Each cell: 3 warm-up steps, then `--steps` timed steps between device synchronisations; peak memory is
the CUDA allocator's peak over the cell. Variants of ours: selective recomputation, the fused kernels
switched off, every attention through cuDNN's kernel, and GAU-α with its score matrix in memory (the
explicit attention: Triton's softmax between cuBLAS products); each family compiled. Also: GAU-α's
attention alone (one wide head through sdpa vs heads sharing q/k, through cuDNN's kernel alone among
others, vs the explicit attention), and the bare loop at the
published recipe's micro-batch (64 × 512, LAMB every 8 micro-batches) to set beside `python -m
pretrain`'s tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
# inference with the weights in bf16 (a model loaded with torch_dtype=bf16), no autocast: nothing is cast
# per forward pass, where autocast casts every fp32 weight each pass (48 of RoFormerV2-base's 207 launches)
BF16_WEIGHTS = ", bf16 weights"
INFER_MODELS = list(OURS) + ["zoo GAU-α-base, explicit attention", "transformers BERT-base (sdpa)"]
# the compiled training cells (S = 512), most important first: the budget may skip the last ones
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


def timed(runtime: Runtime, step, steps: int, warmup: int = 3) -> tuple[float, float]:
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
    model = build(name, dry).to(runtime.device).train()
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
    model = build(name.removesuffix(BF16_WEIGHTS), dry).to(runtime.device).eval()
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
    "heads sharing q/k, v slices of 2×s": (2, ("EFFICIENT_ATTENTION", "MATH"), 0.1),
    "heads sharing q/k, v slices of 2×s, cuDNN only": (2, ("CUDNN_ATTENTION",), 0.125),
    "heads sharing q/k, v slices of 4×s": (4, ("EFFICIENT_ATTENTION", "MATH"), 0.1),
}


# GAU's one head with its score matrix in memory: what `attention_backend="matmul"` runs (on CUDA the Triton
# softmax and dropout between cuBLAS products, zoo/kernels/triton_softmax_attention.py; on the CPU the blocked kernel)
EXPLICIT = "explicit scores (attention_backend=matmul)"


def attention_backends(names, runtime: Runtime):
    """sdpa restricted to the named backends for a block (None: unrestricted). On the CPU (the dry run)
    cuDNN is replaced by the math backend, so that the cell checks the script."""
    if names is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not runtime.is_cuda:
        names = ["MATH" if name == "CUDNN_ATTENTION" else name for name in names]
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
    model = build("zoo RoFormerV2-base", dry).to(runtime.device).train()
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

    seconds, peak = timed(runtime, step, steps, warmup=2)
    tokens = micro * length * accumulation
    fpt = flops_config("zoo RoFormerV2-base", dry).train_flops_per_token(length, masked_fraction=MASK_RATE)
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "model_tflops": tokens * fpt / seconds / 1e12,
            "peak_mb": peak}


def plan(args) -> list[tuple[str, str, int, int, dict]]:
    """(section, model, length, batch, options) of every cell, most important first."""
    train = {k: v for k, v in TRAIN_SHAPES.items()} if not args.dry else {64: 4, 128: 2}
    infer = {k: v for k, v in INFER_SHAPES.items()} if not args.dry else {32: 8, 64: 4, 128: 2}
    cells = []
    # the budget skips the last cells: first what the goals are measured by (ours, BERT as the yardstick,
    # GAU-α's explicit attention) at both lengths, then the compiled cells, then the other variants
    first_variants = [name for name in VARIANTS if name.startswith("zoo GAU-α-base, explicit attention")]
    for length, batch in train.items():
        for name in list(OURS) + ["transformers BERT-base (sdpa)"] + first_variants:
            cells.append(("train", name, length, batch, {}))
    first = next(iter(train))
    if not args.no_compile:
        for name in COMPILED:
            cells.append(("train", name + " compiled", first, train[first], {"compile": True}))
    for length, batch in train.items():
        for name in [name for name in VARIANTS if name not in first_variants] + ["transformers RoFormer (eager)"]:
            cells.append(("train", name, length, batch, {}))
    for length, batch in train.items():
        for variant in ("one wide head", "heads sharing q/k (copies)", *SHARED_QK_VARIANTS, EXPLICIT):
            cells.append(("gau_attention", variant, length, batch, {}))
    cells.append(("bare_loop", "zoo RoFormerV2-base, recipe shape, LAMB", 64 if args.dry else 512, 64, {}))
    for length, batch in infer.items():
        for name in INFER_MODELS + [name + BF16_WEIGHTS for name in INFER_MODELS]:
            cells.append(("infer", name, length, batch, {}))
    return cells


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("scripts/benchmarks/results/gpu"))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per cell")
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no cell after this many seconds")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile cells")
    parser.add_argument("--sections", default="train,gau_attention,bare_loop,infer",
                        help="which sections to run, in this order (default: all)")
    parser.add_argument("--dry", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing")
    parser.add_argument("--replot", type=Path, default=None, help="write the table and PNG again from DIR/gpu.json")
    args = parser.parse_args(argv)
    if args.replot is not None:
        payload = json.loads((args.replot / "gpu.json").read_text())
        report(payload, args.replot)
        return 0
    normalize_cuda_arch_list()  # the bare loop builds DeepSpeed's FusedLamb
    runtime = Runtime.resolve("cpu" if args.dry else "cuda", torch.bfloat16)
    started = time.perf_counter()
    device_name = torch.cuda.get_device_name(runtime.device) if runtime.is_cuda else "CPU (dry run)"
    sheet = datasheet_tflops(device_name, torch.bfloat16) if runtime.is_cuda else None
    measured = measure_matmul_peak(torch.bfloat16, 8192 if runtime.is_cuda else 256, device=runtime.device)
    payload = {"device": device_name, "torch": torch.__version__, "datasheet_tflops": sheet,
               "measured_matmul_tflops": measured / 1e12, "dry": args.dry, "cells": []}
    print(f"{device_name}: datasheet {sheet} TFLOP/s, measured 8192³ bf16 matmul {measured / 1e12:.0f} TFLOP/s",
          flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    order = [s.strip() for s in args.sections.split(",")]
    cells = sorted((c for c in plan(args) if c[0] in order), key=lambda c: order.index(c[0]))
    for section, name, length, batch, options in cells:
        cell = {"section": section, "model": name, "seq_len": length, "batch": batch}
        if time.perf_counter() - started > args.budget_s:
            cell["error"] = "skipped: time budget"
        else:
            try:
                steps = max(2, args.steps // 4) if options.get("compile") or section == "bare_loop" else args.steps
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
            except Exception as error:  # one failed cell (an OOM, a compile error) must not lose the others
                cell["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            finally:
                if runtime.is_cuda:
                    torch.cuda.empty_cache()
        payload["cells"].append(cell)
        print(json.dumps(cell), flush=True)
        (args.out / "gpu.json").write_text(json.dumps(payload, indent=1))
    report(payload, args.out)
    return 0


def rows(payload: dict) -> list[list[str]]:
    table = []
    for c in payload["cells"]:
        if "error" in c:
            table.append([c["section"], c["model"], str(c["seq_len"]), str(c["batch"]), c["error"], "", "", ""])
            continue
        mfu = f"{c['mfu']:.1%}" if c.get("mfu") is not None else "–"
        table.append([c["section"], c["model"], str(c["seq_len"]), str(c["batch"]), f"{c['tokens_per_s']:,.0f}",
                      f"{c['model_tflops']:.1f}", mfu, f"{c['peak_mb'] / 1024:.1f}"])
    return table


def report(payload: dict, out: Path) -> None:
    header = ["section", "model", "S", "batch", "tokens/s", "model TFLOP/s", "MFU", "peak GB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(payload)]
    lines += ["", f"{payload['device']}, torch {payload['torch']}: datasheet {payload['datasheet_tflops']} TFLOP/s "
                  f"(dense bf16), measured 8192³ bf16 matmul {payload['measured_matmul_tflops']:.0f} TFLOP/s."]
    ratios = ratio_lines(payload)
    text = "\n".join(lines + [""] + ratios) + "\n"
    (out / "gpu.md").write_text(text)
    print(text)
    with contextlib.suppress(ImportError):
        plot(payload, out / "gpu.png")


def _cell(payload, section, model, length):
    for c in payload["cells"]:
        if (c["section"], c["model"], c["seq_len"]) == (section, model, length) and "error" not in c:
            return c
    return None


def ratio_lines(payload: dict) -> list[str]:
    """The issue's goals as ratios of this run's cells."""
    out = []
    for length in sorted({c["seq_len"] for c in payload["cells"] if c["section"] == "train"}):
        bert = _cell(payload, "train", "transformers BERT-base (sdpa)", length)
        bert_c = _cell(payload, "train", "transformers BERT-base (sdpa) compiled", length)
        best = max((c for c in (bert, bert_c) if c), key=lambda c: c["tokens_per_s"], default=None)
        rof = _cell(payload, "train", "zoo RoFormerV2-base", length)
        gau = _cell(payload, "train", "zoo GAU-α-base", length)
        for name in list(OURS) + list(VARIANTS) + [name + " compiled" for name in COMPILED if name in OURS]:
            ours = _cell(payload, "train", name, length)
            if ours and best:
                out.append(f"- S={length}: {name} / best BERT = {ours['tokens_per_s'] / best['tokens_per_s']:.2f}×")
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
        rof_c, gau_c = (_cell(payload, "train", name + " compiled", length) for name in ("zoo RoFormerV2-base",
                                                                                        "zoo GAU-α-base"))
        if rof_c and gau_c:
            out.append(f"- S={length}: compiled, GAU-α / RoFormerV2 tokens/s = "
                       f"{gau_c['tokens_per_s'] / rof_c['tokens_per_s']:.2f}×, MFU ratio "
                       f"{gau_c['model_tflops'] / rof_c['model_tflops']:.2f}×, "
                       f"peak memory {gau_c['peak_mb'] / rof_c['peak_mb']:.2f}×")
        for label, cell in (("GAU-α", gau), *((name.removeprefix("zoo "), _cell(payload, "train", name, length))
                                               for name in VARIANTS if name not in KERNELS_OFF)):
            if rof and cell:
                out.append(f"- S={length}: {label} / RoFormerV2 tokens/s = {cell['tokens_per_s'] / rof['tokens_per_s']:.2f}×, "
                           f"MFU ratio {cell['model_tflops'] / rof['model_tflops']:.2f}×, "
                           f"peak memory {cell['peak_mb'] / rof['peak_mb']:.2f}×")
    for length in sorted({c["seq_len"] for c in payload["cells"] if c["section"] == "infer"}):
        for weights in ("", BF16_WEIGHTS):
            bert = _cell(payload, "infer", "transformers BERT-base (sdpa)" + weights, length)
            for name in [name for name in INFER_MODELS if name.startswith("zoo")]:
                ours = _cell(payload, "infer", name + weights, length)
                if ours and bert:
                    out.append(f"- inference S={length}: {name}{weights} / BERT-base{weights} = "
                               f"{ours['tokens_per_s'] / bert['tokens_per_s']:.2f}× tokens/s")
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
