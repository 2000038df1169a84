"""Pretraining throughput: our DeepSpeed loop against a plain PyTorch loop on the same model and
data, in one process, interleaved; then the DeepSpeed loop on 1 and 2 ranks.

    python scripts/benchmarks/pretrain_throughput.py [--models roformer-v2-tiny,roformer-v2-base:2]
                                                     [--steps 8] [--rounds 5] [--seq-len 128] [--batch 32]
                                                     [--device auto]

`roformer-v2-base:2` is the base width (768, 12 heads, FFN 3072) with 2 layers. Both loops use the
same batches from pretrain.loader (embedded corpus, 15% masking), bf16 autocast, our LAMB, gradient
clipping 1.0, and the sparse MLM head; the DeepSpeed loop is `deepspeed.initialize` + engine
forward/backward/step at ZeRO stage 0 exactly as pretrain/trainer.py runs it. MFU uses the analytic
FLOPs per token (ecosystem.md §6.2, head on the masked 15%) against the bf16 matmul peak measured in
the same run. The 1 vs 2 rank comparison launches `deepspeed --num_gpus 2` on this script with
`--worker` (each rank one thread) and compares the total tokens/s with one rank using all threads.

Devices: both loops run where the trainer would (`--device auto`, the default: cuda:<LOCAL_RANK> when
CUDA is present, else the CPU), since DeepSpeed's engine places the model on its accelerator; a
`--device` other than that one is refused (hide the GPUs with CUDA_VISIBLE_DEVICES= to measure the
CPU). The timed batches are moved to the device once, before the rounds; every round is bracketed by
device synchronisations. On a GPU the MFU denominator is the datasheet bf16 peak of the device
(pretrain.metrics.mfu_peak; measured where the device is not in its table), the ranks comparison is
1 GPU against all of the machine's GPUs (`--num_gpus N`, skipped with one GPU), and both loops keep
our LAMB, whereas the trainer would use DeepSpeed's FusedLamb there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from zoo.runtime import DeviceError, Runtime, module_device, parse_device

ROOT = Path(__file__).resolve().parents[2]

CPU = Runtime(torch.device("cpu"), torch.bfloat16)


def build(spec: str):
    import zoo

    name, _, layers = spec.partition(":")
    overrides = {"num_hidden_layers": int(layers)} if layers else {}
    torch.manual_seed(0)
    return zoo.create(name, **overrides)


def stream(model, seq_len: int, batch: int, world: int = 1, rank: int = 0):
    import zoo
    from pretrain.data import build_corpus
    from pretrain.loader import PretrainingStream
    from pretrain.masking import MaskingPolicy
    from pretrain.recipe import DataSection

    tokenizer = zoo.default_tokenizer()
    data = DataSection(seq_len=seq_len)
    corpus = build_corpus(data, tokenizer)
    policy = MaskingPolicy.from_recipe(data.masking, tokenizer, model.config.vocab_size)
    return PretrainingStream(corpus.train, batch * world, batch, world, rank, 0, policy)


def ds_config(batch: int, world: int) -> dict:
    return {"train_batch_size": batch * world, "train_micro_batch_size_per_gpu": batch, "gradient_clipping": 1.0,
            "torch_autocast": {"enabled": True, "dtype": "bfloat16"}, "zero_optimization": {"stage": 0},
            "steps_per_print": 10**9}


def lamb(model):
    from pretrain.optim import Lamb, parameter_groups

    return Lamb(parameter_groups(model, 0.01), lr=1e-3, bias_correction=False)


class PlainLoop:
    """The model (moved to the runtime's device), our LAMB, bf16 autocast on that device."""

    def __init__(self, model, runtime: Runtime = CPU):
        self.runtime = runtime
        self.model, self.optimizer = model.to(runtime.device), lamb(model)

    def step(self, batch):
        with self.runtime.autocast():
            loss = self.model(**batch, masked_positions_only=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class DeepSpeedLoop:
    def __init__(self, model, batch: int, world: int = 1, runtime: Runtime = CPU):
        import deepspeed

        model = model.to(runtime.device)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=lamb(model), config=ds_config(batch, world))
        placed = module_device(self.engine.module)
        if placed != runtime.device:
            raise RuntimeError(f"DeepSpeed placed the model on {placed}, not on {runtime.device}")

    def step(self, batch):
        loss = self.engine(**batch, masked_positions_only=True).loss
        self.engine.backward(loss)
        self.engine.step()


def init_single_process():
    from pretrain.trainer import init_distributed

    return init_distributed()


def resolve_runtime(device: str) -> Runtime:
    """The device of both loops: `device`, which must be the one the trainer picks for this process
    (DeepSpeed's engine moves the model to its accelerator whatever we ask)."""
    runtime = Runtime.resolve(device, torch.bfloat16)
    trainer_device = parse_device("auto", int(os.environ.get("LOCAL_RANK", "0")))
    if runtime.device != trainer_device:
        hint = ("hide the GPUs with CUDA_VISIBLE_DEVICES= to measure the CPU" if runtime.device.type == "cpu"
                else f"select the GPU with CUDA_VISIBLE_DEVICES={runtime.device.index}")
        raise DeviceError(f"device {device!r}: the DeepSpeed loop runs where DeepSpeed and the trainer put this "
                          f"process, {trainer_device}; use --device auto ({hint})")
    return runtime


def peak_bf16(runtime: Runtime = CPU) -> tuple[float, str]:
    """The MFU denominator and where it comes from: on the CPU the bf16 matmul peak measured here (median
    of 3); on a GPU the trainer's (the datasheet's, or measured on a GPU missing from its table)."""
    from pretrain.metrics import measure_matmul_peak, mfu_peak

    if runtime.is_cuda:
        peak = mfu_peak(runtime, torch.bfloat16)
        return peak.per_rank, peak.description
    peak = statistics.median(measure_matmul_peak(torch.bfloat16, 4096, 3) for _ in range(3))
    return peak, f"bf16 matmul peak {peak / 1e9:.0f} GFLOP/s with {torch.get_num_threads()} threads"


def compare_loops(spec: str, args, peak: float, runtime: Runtime = CPU) -> dict:
    plain_model, ds_model = build(spec), build(spec)
    ds_model.load_state_dict(plain_model.state_dict())
    data = stream(plain_model, args.seq_len, args.batch)
    batches = [runtime.to_device(data.next_step()[0]) for _ in range(args.steps)]
    loops = {"plain PyTorch": PlainLoop(plain_model, runtime), "DeepSpeed": DeepSpeedLoop(ds_model, args.batch, 1, runtime)}
    for loop in loops.values():  # warm-up
        loop.step(batches[0])
    times = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            runtime.synchronize()
            start = time.perf_counter()
            for b in batches:
                loop.step(b)
            runtime.synchronize()
            times[name].append(time.perf_counter() - start)
    tokens = args.steps * args.batch * args.seq_len
    flops = plain_model.config.train_flops_per_token(args.seq_len, masked_fraction=0.15)
    row = {"model": spec, "params": plain_model.num_parameters()}
    for name, t in times.items():
        row[name] = {"tokens_per_s": tokens / statistics.median(t), "mfu": tokens / statistics.median(t) * flops / peak,
                     "min": tokens / max(t), "max": tokens / min(t)}
    row["overhead"] = row["plain PyTorch"]["tokens_per_s"] / row["DeepSpeed"]["tokens_per_s"] - 1
    return row


def worker(args) -> None:
    """One rank of the multi-rank measurement (launched by `deepspeed`)."""
    from pretrain.trainer import init_distributed

    rank, world, _, device = init_distributed()  # cuda:<local rank> when CUDA is present, else the CPU
    runtime = Runtime(device, torch.bfloat16)
    model = build(args.worker)
    data = stream(model, args.seq_len, args.batch, world, rank)
    loop = DeepSpeedLoop(model, args.batch, world, runtime)
    batches = [runtime.to_device(data.next_step()[0]) for _ in range(args.steps)]
    loop.step(batches[0])
    times = []
    for _ in range(args.rounds):
        runtime.synchronize()
        torch.distributed.barrier()
        start = time.perf_counter()
        for b in batches:
            loop.step(b)
        runtime.synchronize()
        torch.distributed.barrier()
        times.append(time.perf_counter() - start)
    if rank == 0:
        tokens = args.steps * args.batch * args.seq_len * world
        Path(args.result).write_text(json.dumps({"world": world, "tokens_per_s": tokens / statistics.median(times),
                                                 "threads_per_rank": torch.get_num_threads()}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def rank_counts(runtime: Runtime) -> tuple[int, ...]:
    """The rank counts compared: 1 and 2 CPU ranks; 1 GPU and every GPU of the machine (none with one)."""
    if not runtime.is_cuda:
        return (1, 2)
    gpus = torch.cuda.device_count()
    return (1, gpus) if gpus > 1 else ()


def ranks_comparison(spec: str, args, out: Path, counts: tuple[int, ...] = (1, 2)) -> dict:
    rows = {}
    for ranks in counts:
        result = out / f"ranks{ranks}.json"
        command = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(29600 + ranks), str(Path(__file__)),
                   "--worker", spec, "--result", str(result), "--steps", str(args.steps), "--rounds", str(args.rounds),
                   "--seq-len", str(args.seq_len), "--batch", str(args.batch // ranks)]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        rows[ranks] = json.loads(result.read_text())
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="roformer-v2-tiny,roformer-v2-base:2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto",
                        help="auto (default: CUDA when present, else the CPU), or the device that picks: cpu, cuda, cuda:N")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts/benchmarks/results/pretrain_throughput")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    try:
        runtime = resolve_runtime(args.device)
    except DeviceError as error:
        sys.exit(f"pretrain_throughput.py: {error}")
    args.out.mkdir(parents=True, exist_ok=True)
    init_single_process()
    peak, description = peak_bf16(runtime)
    print(f"{runtime.describe()}: MFU against the {description}" if runtime.is_cuda else description)
    report = {"peak_gflops_bf16": peak / 1e9, "loops": [], "ranks": {}}
    if runtime.is_cuda:  # CPU runs keep the report the recorded results have
        report["device"] = runtime.describe()
        report["peak_basis"] = description
    for spec in args.models.split(","):
        row = compare_loops(spec, args, peak, runtime)
        report["loops"].append(row)
        print(f"{spec}: plain {row['plain PyTorch']['tokens_per_s']:,.0f} tok/s (MFU {row['plain PyTorch']['mfu']:.1%}), "
              f"DeepSpeed {row['DeepSpeed']['tokens_per_s']:,.0f} tok/s (MFU {row['DeepSpeed']['mfu']:.1%}), "
              f"DeepSpeed overhead {row['overhead']:+.1%}", flush=True)
    torch.distributed.destroy_process_group()
    spec = args.models.split(",")[0]
    counts = rank_counts(runtime)
    report["ranks"] = ranks_comparison(spec, args, args.out, counts)
    if not counts:
        print(f"{spec}: ranks comparison skipped: this machine has one GPU")
    elif runtime.is_cuda:
        many = counts[-1]
        one, all_ = report["ranks"][1]["tokens_per_s"], report["ranks"][many]["tokens_per_s"]
        print(f"{spec}: DeepSpeed 1 GPU {one:,.0f} tok/s; {many} GPUs {all_:,.0f} tok/s ({all_ / one:.2f}×)")
    else:
        one, two = report["ranks"][1]["tokens_per_s"], report["ranks"][2]["tokens_per_s"]
        print(f"{spec}: DeepSpeed 1 rank × {report['ranks'][1]['threads_per_rank']} threads {one:,.0f} tok/s; "
              f"2 ranks × {report['ranks'][2]['threads_per_rank']} thread {two:,.0f} tok/s ({two / one:.2f}×)")
    (args.out / "pretrain_throughput.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
