"""The pretraining loop: a plain loop over the DeepSpeed engine (ecosystem.md §7).

    engine, ... = deepspeed.initialize(model, model_parameters, optimizer, lr_scheduler, config)
    for step:   for each micro-batch: loss = engine(**batch).loss; engine.backward(loss); engine.step()

The trainer knows nothing of the model family: it builds the model from the recipe with zoo,
takes data from pretrain.data / pretrain.loader, and leaves ZeRO, mixed precision, gradient
accumulation and clipping to DeepSpeed. Single-process runs (`python -m pretrain`) and N ranks under
the `deepspeed` launcher run the same code; on CPU the backend is gloo.

With growth stages (pretrain/stages.py) the loop grows the model at each stage boundary (`grow`):
checkpoint, zoo.expand the model and map its optimizer state, re-initialise the engine, checkpoint.

Devices: one `zoo.runtime.Runtime` (the rank's device and compute dtype) moves every batch and holds
the collectives. The next steps are collated and pinned on a thread (`loader.Prefetcher`) while the
accelerator computes; losses stay on the device and are read once per optimizer step (the non-finite
check, before the update) and at the log interval.

Dropout is seeded per micro-batch from the run index of its first sample, so the masks, like the
data, do not depend on the number of ranks: a run resumed on another rank count follows the same
curve up to the order in which gradients are summed.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch.distributed import distributed_c10d
from tqdm.auto import tqdm

import zoo
from zoo.casting import at_least_fp32
from zoo.families import CONFIG_CLASSES, FAMILIES, model_class
from zoo.runtime import Runtime, bf16_is_native, parse_device

from . import checkpoint as ckpt
from . import rank_failure
from .cuda_arch import normalize_cuda_arch_list
from .data import build_corpus, default_cache_dir
from .errors import NonFiniteLossError, RunError
from .loader import PositionSampler, Prefetcher, PretrainingStream, heldout_passes
from .masking import MaskingPolicy
from .metrics import MetricsLog, device_census, mfu_peak, read_metrics
from .optim import Lamb, parameter_groups, schedule_multiplier
from .rank_zero import long_wait_s, on_rank0, start_run, store_key
from .recipe import Recipe
from .stages import Stage, lr_multiplier

logger = logging.getLogger("pretrain")

# A collective that waits longer than this has lost a peer (a killed node, a crashed rank): the
# process group raises instead of hanging. Override with ZOO_DIST_TIMEOUT_S.
DIST_TIMEOUT_S = 1800


@dataclass
class RunResult:
    step: int
    output_dir: Path
    export_dir: Path | None
    published: str | None
    final_eval: dict | None


# --------------------------------------------------------------------------- process setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The variables that launchers without torch's RANK/WORLD_SIZE/LOCAL_RANK give each process: name, then
# the variables of its global rank, world size, local rank and local size (deepspeed --launcher
# openmpi|mvapich|mpich|impi runs `mpirun ... python -m pretrain`; srun runs the command once per task).
LAUNCHER_VARIABLES = (
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("MVAPICH", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),
    ("MPICH / Intel MPI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    # srun's tasks: SLURM_STEP_NUM_TASKS is set by srun only, not in the batch script itself, whose
    # SLURM_NTASKS is the job's (a `python -m pretrain` run there directly is a world of one)
    ("SLURM", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
)
DEFAULT_MASTER_PORT = "29500"  # DeepSpeed's (TORCH_DISTRIBUTED_DEFAULT_PORT)


def _first_host(nodelist: str) -> str | None:
    """The first host of a SLURM node list ("gpu[03-05,09],cpu1" → "gpu03"); None for a form not read here."""
    match = re.fullmatch(r"([^,\[\]]+)(?:\[(\d+)[^\]]*\])?(?:,.*)?", nodelist.strip())
    return None if match is None else match.group(1) + (match.group(2) or "")


def launcher_variables(environ) -> dict[str, str] | None:
    """RANK, WORLD_SIZE, LOCAL_RANK (LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) for a process an MPI or
    SLURM launcher started as one of several; None when no such launcher did (RANK already set by torch's
    or DeepSpeed's launcher, or a lone process). MASTER_ADDR is the environment's, 127.0.0.1 when every
    rank is on this machine, the first host of SLURM's node list, or left to DeepSpeed's MPI discovery
    (rank 0's address, sent over MPI) when mpi4py is installed; a RunError says how to launch otherwise."""
    if "RANK" in environ:
        return None
    for name, rank_key, size_key, local_key, local_size_key in LAUNCHER_VARIABLES:
        if rank_key not in environ or size_key not in environ:
            continue
        try:
            rank, world = int(environ[rank_key]), int(environ[size_key])
        except ValueError:
            raise RunError(f"{name} launched this process with {rank_key}={environ[rank_key]!r} and "
                           f"{size_key}={environ[size_key]!r}, which are not numbers") from None
        if world <= 1:
            return None
        local_size = environ.get(local_size_key, "")
        local_size = int(local_size) if local_size.isdigit() else None
        one_machine = local_size == world
        if local_key in environ:
            local_rank = environ[local_key]
        elif one_machine:
            local_rank = str(rank)
        else:
            raise RunError(f"{name} launched this process as rank {rank} of {world} but did not say its rank on "
                           f"this machine ({local_key}): set LOCAL_RANK, or launch with scripts/launch_multi_node.sh")
        variables = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": local_rank,
                     "MASTER_PORT": environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)}
        if local_size is not None:
            variables["LOCAL_WORLD_SIZE"] = str(local_size)
        master = environ.get("MASTER_ADDR")
        if master is None and one_machine:
            master = "127.0.0.1"
        if master is None and name == "SLURM":
            master = _first_host(environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "")
        if master is not None:
            variables["MASTER_ADDR"] = master
        elif name == "SLURM" or importlib.util.find_spec("mpi4py") is None:
            raise RunError(
                f"{name} launched this process as rank {rank} of {world}, on several machines, but nothing says "
                "where rank 0 is: export MASTER_ADDR=<address of rank 0's machine> (and MASTER_PORT, default "
                f"{DEFAULT_MASTER_PORT}) to every rank (with deepspeed --launcher openmpi or mvapich: a line "
                "MASTER_ADDR=<address> in ./.deepspeed_env), or install mpi4py, or launch with "
                "scripts/launch_multi_node.sh (DeepSpeed's own pdsh or no-ssh launcher)")
        # else: DeepSpeed's init_distributed finds MASTER_ADDR missing and runs its MPI discovery
        return variables
    return None


def init_distributed() -> tuple[int, int, int, torch.device]:
    """(rank, world size, local rank, device); a lone `python -m pretrain` becomes a world of one, a process
    of an MPI or SLURM launch takes its rank from the launcher's variables (`launcher_variables`).
    NCCL on CUDA (each rank on cuda:<local rank>), gloo on the CPU."""
    import deepspeed

    launched = launcher_variables(os.environ)
    if launched is not None:
        os.environ.update(launched)
    elif "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local_rank >= torch.cuda.device_count():
        # DeepSpeed's engine puts each rank on cuda:<LOCAL_RANK> ("invalid device ordinal" here); wrapping
        # it round would put two ranks on one GPU, which NCCL refuses
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RunError(
            f"this process is rank {local_rank} on its machine (LOCAL_RANK) but sees {torch.cuda.device_count()} "
            f"GPU(s){f' (CUDA_VISIBLE_DEVICES={visible})' if visible is not None else ''}: each rank runs on "
            "cuda:<LOCAL_RANK>, so every rank must see all of its machine's GPUs, as deepspeed and torchrun "
            "arrange (under SLURM: --gpus-per-node, not --gpus-per-task or --gpu-bind)")
    device = parse_device("auto", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL starts, so each rank's communicator sits on its GPU
    raise_open_file_limit(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")))
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("ZOO_DIST_TIMEOUT_S", DIST_TIMEOUT_S)))
        # DeepSpeed builds its own groups (data parallel: the gradient all-reduce) with new_group(ranks),
        # which takes torch's default timeout (30 min gloo, 10 min NCCL), not this one: make it the default.
        distributed_c10d.default_pg_timeout = timeout
        if getattr(distributed_c10d, "default_pg_nccl_timeout", None) is not None:
            distributed_c10d.default_pg_nccl_timeout = timeout
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # ranks on one CPU share its cores; oversubscription makes every rank slower
        # (ranks on this machine: torchrun sets LOCAL_WORLD_SIZE, DeepSpeed's launcher LOCAL_SIZE)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or world)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return rank, world, local_rank, device


FILES_PER_RANK = 3  # on rank 0: the rendezvous store's connection from each rank, its failure watcher's, NCCL's bootstrap
FILES_BESIDES = 512  # libraries, CUDA, the corpus cache, the data loader, checkpoints


def raise_open_file_limit(world: int, rank: int) -> int:
    """Raise this process's soft limit on open files to its hard limit, and return it. Rank 0's process
    holds the rendezvous store, which keeps a connection from every rank and another from every rank's
    failure watcher (pretrain/rank_failure.py), and NCCL's bootstrap takes one more from every rank while
    it sets up a communicator: about FILES_PER_RANK per rank. Many systems start processes with a soft
    limit of 1024 under a far higher hard one; past the limit the store accepts no connection, and a rank's
    connect waits out its timeout (at 1024, from about 300 ranks on). Where the hard limit itself is short,
    rank 0 says how many it needs. (Under torchrun the store is its agent's, a process this does not reach.)"""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a hard limit above the kernel's nr_open: keep the soft one
            pass
    needed = FILES_PER_RANK * world + FILES_BESIDES
    if rank == 0 and world > 1 and soft != resource.RLIM_INFINITY and soft < needed:
        print(f"pretrain: rank 0 may hold about {needed} open files ({FILES_PER_RANK} per rank of {world}: the "
              f"rendezvous store's connections and NCCL's) but may open {soft}; where it runs out, "
              f"ranks wait for connections that time out. Raise the limit where the launcher starts rank 0 (`ulimit "
              f"-Hn {needed}` as root, LimitNOFILE= in a systemd unit, nofile in /etc/security/limits.conf)",
              file=sys.stderr, flush=True)
    return soft


def dropout_seed(seed: int, first_sample: int) -> int:
    """The torch seed of the micro-batch whose first sample is the run's `first_sample`-th."""
    return int(np.random.SeedSequence([seed, 0x0D0F, first_sample]).generate_state(1, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------- building blocks


def build_tokenizer(ref: str):
    if ref == "default":
        return zoo.default_tokenizer()
    if ref.endswith(".txt"):
        return zoo.tokenizer_from_vocab(ref)
    return zoo.load_tokenizer(ref)


def build_model(recipe: Recipe):
    model_section = recipe.model
    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    if model_section.preset:
        model = zoo.create(model_section.preset, task="masked-lm", **model_section.config)
    elif model_section.family:
        config = FAMILIES[model_section.family]["config"](**model_section.config)
        model = model_class(config, "masked-lm")(config)
    else:
        model = zoo.from_pretrained(model_section.init_from, task="masked-lm", **model_section.config)
    return with_activation_checkpointing(model, recipe)


def with_activation_checkpointing(model, recipe: Recipe):
    setting = recipe.model.activation_checkpointing
    if setting:
        every = 1 if setting is True else int(setting)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                              every_n_layers=every)
    return model


def model_from_config(config_dict: dict, recipe: Recipe):
    """A masked-LM model of the config stored in a checkpoint (its weights come from the checkpoint)."""
    config_class = CONFIG_CLASSES.get(config_dict.get("model_type"))
    if config_class is None:
        raise RunError(f"the checkpoint's model_type {config_dict.get('model_type')!r} is not a zoo family")
    config = config_class.from_dict(config_dict)
    torch.manual_seed(recipe.seed)
    return with_activation_checkpointing(model_class(config, "masked-lm")(config), recipe)


def deepspeed_config(recipe: Recipe, device: torch.device) -> tuple[dict, dict | None]:
    """The recipe's deepspeed section (torch_autocast in bf16 unless it names a dtype), and the optimizer
    block to run ourselves (Lamb off CUDA)."""
    config = copy.deepcopy(recipe.deepspeed)
    config.setdefault("steps_per_print", 10**9)  # our own log reports progress
    autocast = config.get("torch_autocast")
    if isinstance(autocast, dict) and autocast.get("enabled") and autocast.get("dtype") is None:
        # DeepSpeed hands torch.autocast dtype=None: bf16 on the CPU, but fp16 on CUDA, and then without a
        # loss scale (it makes one only for an explicit float16); the run's evaluation and MFU assume bf16
        autocast["dtype"] = "bfloat16"
    own_optimizer = None
    optimizer = config.get("optimizer")
    if optimizer and optimizer["type"].lower() == "lamb" and device.type != "cuda":
        own_optimizer = config.pop("optimizer")  # DeepSpeed's FusedLamb has no CPU kernel
    return config, own_optimizer


def _compute_dtype(config: dict) -> torch.dtype:
    """The dtype the run's matmuls use: bf16 or fp16 (DeepSpeed's mixed precision or torch_autocast), else fp32.
    Read as DeepSpeed reads the config, so every spelling it takes counts ("bf16", "half", "torch.float16", the
    old `bfloat16` block): a test of the names ("bfloat16" in the dtype) took "bf16" and "half" for fp32, and the
    MFU was then against the fp32 peak (15× too high on an H100) and evaluation ran without autocast."""
    from deepspeed.runtime.config import get_torch_autocast_dtype, get_torch_autocast_enabled
    from deepspeed.runtime.precision_config import get_bfloat16_config, get_float16_config

    if get_bfloat16_config(config).enabled:
        return torch.bfloat16
    if get_float16_config(config).enabled:
        return torch.float16
    if get_torch_autocast_enabled(config):
        return get_torch_autocast_dtype(config) or torch.bfloat16  # deepspeed_config names bf16 where none is given
    return torch.float32


def _gradient_norm(module: torch.nn.Module, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor | None:
    """‖g‖₂ over the module's gradients (already averaged over ranks at the accumulation boundary). With fp16
    autocast DeepSpeed scales the loss (`scaler`, its torch_autocast_z0_gradscaler) and unscales the
    gradients only in its step: they are read before it, so divided by the scale here (logged ×65536 before)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))
    if scaler is not None and scaler.is_enabled():
        norm = norm / scaler.get_scale()
    return norm


def _weight_decay(config: dict, own_optimizer: dict | None) -> float:
    block = own_optimizer or config.get("optimizer") or {}
    return float(block.get("params", {}).get("weight_decay", 0.0))


# --------------------------------------------------------------------------- the run


class Trainer:
    def __init__(self, recipe: Recipe, resume: str | None = None, restart: bool = False):
        self.recipe = recipe
        normalize_cuda_arch_list()  # before DeepSpeed builds an op (FusedLamb, FusedAdam) on Hopper
        self.rank, self.world, self.local_rank, device = init_distributed()
        self.output_dir = Path(recipe.training.output_dir or (default_cache_dir().parent / "runs" / recipe.run_name))
        self.checkpoint_dir = self.output_dir / "checkpoints"
        run = start_run()
        rank_failure.watch(self.rank, self.world, run, before_exit=self._before_exit_on_another_ranks_failure)
        self._check_shared_output_dir()
        self.resume_from = self._plan_resume(resume, restart)
        self.log = MetricsLog(self.output_dir / "metrics.jsonl", enabled=self.rank == 0)
        if self.resume_from is not None:
            dropped = self.log.rewind(self.resume_from.step, self.resume_from.stage)
            if dropped:
                self.status(f"metrics.jsonl: dropped {dropped} record(s) written after {self.resume_from.tag} by the "
                            "interrupted run; they are written again from here")
        elif (kept := self.log.set_aside()) is not None:  # a fresh start: not mixed with an earlier attempt's
            self.status(f"metrics.jsonl: an earlier attempt's records (no checkpoint of it is left) moved to {kept.name}; "
                        "the run starts afresh")
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), allow_unicode=True, sort_keys=False))

        self.stages: list[Stage] = list(recipe.growth_stages)
        self.stage = self.resume_from.stage if self.resume_from is not None else 0
        if self.stage and self.stage >= len(self.stages):
            raise RunError(f"checkpoint {self.resume_from.path} belongs to growth stage {self.stage}, but "
                           f"{recipe.source} lists {len(self.stages)} stages")
        self.tokenizer = build_tokenizer(recipe.data.tokenizer)
        if self.stage == 0:
            self.model = build_model(recipe)
        else:  # a checkpoint taken after a growth: build the grown model directly
            self.model = model_from_config(self.resume_from.meta["model_config"], recipe)
        if len(self.tokenizer) > self.model.config.vocab_size:
            raise RunError(f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocab_size is "
                           f"{self.model.config.vocab_size} (model section of {recipe.source})")
        config, _ = deepspeed_config(recipe, device)
        self.runtime = Runtime(device, _compute_dtype(config))
        if self.runtime.compute_dtype == torch.bfloat16 and not bf16_is_native(device):
            if self.runtime.is_cuda:
                self.status(f"{torch.cuda.get_device_name(device)} has no bf16 arithmetic: bf16 runs emulated, slower "
                            "than fp32; on it, train in fp16 (deepspeed.torch_autocast.dtype=float16: DeepSpeed scales "
                            "the loss)")
            else:
                self.status(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 arithmetic (oneDNN's "
                            "bf16 kernels need AVX-512): bf16 runs many times slower than fp32; on it, train in fp32 "
                            "(deepspeed.torch_autocast.enabled=false)")
        self.corpus = self._build_corpus()
        self.policy = MaskingPolicy.from_recipe(recipe.data.masking, self.tokenizer, self.model.config.vocab_size)
        self._init_engine()

    # -- setup
    def _before_exit_on_another_ranks_failure(self) -> None:
        """Before the process ends on another rank's failure (pretrain/rank_failure.py): rank 0 names the
        checkpoint to resume from, and a CPU rank removes its shared-memory buffer."""
        self.say_where_to_resume()
        _remove_shm_allreduce_buffer()

    def say_where_to_resume(self) -> None:
        """Rank 0's line on the checkpoint to resume from, as a run that stops unexpectedly ends."""
        if self.rank == 0:
            try:
                print(f"pretrain: {ckpt.resume_hint(self.checkpoint_dir)}", file=sys.stderr, flush=True)
            except Exception:
                pass  # the folder cannot be read (the error itself may be the file system's): the traceback says why

    def status(self, message: str) -> None:
        """A line on rank 0's console about what the run is doing (tokenising, compiling, resuming)."""
        if self.rank == 0:
            tqdm.write(f"pretrain: {message}")

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _build_corpus(self):
        """Rank 0 tokenises and fills the cache first; the other ranks then read it. They wait up to
        ZOO_RANK0_WAIT_S (pretrain/rank_zero.py): a first run on a large corpus tokenises for longer than
        the collectives' ZOO_DIST_TIMEOUT_S. An error on rank 0 (a data error above all) reaches every rank,
        so all of them stop with its message, not a peer's lost connection."""
        def build():
            self.status("reading, tokenising and packing the corpus (cached for later runs)")
            return build_corpus(self.recipe.data, self.tokenizer)

        corpus = on_rank0("corpus", build, wait_s=long_wait_s())
        if self.rank != 0:
            corpus = build_corpus(self.recipe.data, self.tokenizer)
        return corpus

    def _check_shared_output_dir(self) -> None:
        """Every rank must see training.output_dir as rank 0 sees it: each rank writes its part of a
        checkpoint there, rank 0 marks it COMPLETE and prunes, and resume and the export read it. On
        machines without a shared file system the saves succeeded, the other machines' checkpoints were
        never complete, and a resume or the export failed on some ranks while the others waited. Rank 0
        writes a word only this run knows (sent through the rendezvous store) to a file there; each rank
        reads it back, and all of them stop together, naming the ranks that did not, before anything is
        written or resumed."""
        if self.world == 1:
            return
        store, key = store_key("output-dir")
        probe = self.output_dir / f".seen-by-every-rank-{key.rsplit('/', 1)[1]}"
        if self.rank == 0:
            word = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
            self.output_dir.mkdir(parents=True, exist_ok=True)
            probe.write_text(word)
            store.set(key, word)
        else:
            word = store.get(key).decode()
        try:
            seen = probe.read_text() == word
        except OSError:
            seen = False
        found = [None] * self.world
        dist.all_gather_object(found, seen)
        dist.barrier()  # every rank has looked
        if self.rank == 0:
            probe.unlink(missing_ok=True)
        blind = [rank for rank, ok in enumerate(found) if not ok]
        if blind:
            raise RunError(
                f"training.output_dir {self.output_dir} is not one folder for every rank: rank(s) "
                f"{', '.join(map(str, blind))} did not find there the file rank 0 wrote. Each rank writes its part "
                "of every checkpoint there and a resume and the export read them all: set training.output_dir to a "
                "path on a file system every machine sees (NFS, Lustre, ...)")

    def _plan_resume(self, resume: str | None, restart: bool) -> ckpt.CheckpointInfo | None:
        """The checkpoint to resume from (None: a fresh start), chosen by rank 0 for every rank. Each rank
        listing the folder itself could choose another: a file system that caches listings (NFS does, up to a
        minute) can show a quickly requeued run's other machines a checkpoint folder without the COMPLETE
        marker written last, so that they resumed from the checkpoint before it."""
        def choose() -> dict | None:
            if restart:
                if self.output_dir.exists():
                    shutil.rmtree(self.output_dir)
                return None
            if resume == "auto":  # the newest if any, else a fresh start
                existing = ckpt.complete_checkpoints(self.checkpoint_dir)
                return existing[-1].to_dict() if existing else None
            if resume is None:
                existing = ckpt.complete_checkpoints(self.checkpoint_dir)
                if existing:
                    raise RunError(
                        f"{self.output_dir} already has checkpoints ({existing[-1].tag} is the newest): pass --resume "
                        "to continue the run, or --restart to delete it and start over")
                return None
            return ckpt.find_checkpoint(self.checkpoint_dir, resume).to_dict()

        chosen = on_rank0("resume", choose, wait_s=long_wait_s(), share=True)
        return None if chosen is None else ckpt.CheckpointInfo.from_dict(chosen)

    def _init_engine(self) -> None:
        recipe = self.recipe
        config, own_optimizer = deepspeed_config(recipe, self.runtime.device)
        self.zero_stage = int(config.get("zero_optimization", {}).get("stage", 0))
        # ZeRO 1/2 and DeepSpeed's bf16 and fp16 optimizers measure the gradient norm themselves, over the fp32
        # gradients they accumulate (the parameters' .grad holds at most one micro-batch's in bf16, a loss-scaled
        # sum in fp16); under ZeRO 0 without them (torch_autocast) the step measures it (_train_step)
        self.measures_grad_norm = self.zero_stage == 0 and not any(
            config.get(key, {}).get("enabled") for key in ("bf16", "bfloat16", "fp16"))
        global_batch = config.get("train_batch_size")
        if global_batch and len(self.corpus.train) < global_batch:  # before DeepSpeed builds its optimizer op
            raise RunError(f"the corpus has {len(self.corpus.train)} sequences of {recipe.data.seq_len} tokens, fewer "
                           f"than one global batch of {global_batch} (deepspeed.train_batch_size in {recipe.source})")
        load_tag = None
        if self.resume_from is not None:
            load_tag = self.resume_from.tag
            if self.resume_from.zero_stage > 0 and self.zero_stage == 0:
                # DeepSpeed's ZeRO-0 engine finds no whole optimizer state in a partitioned checkpoint (and
                # universal checkpoints do not load into ZeRO 0 either): it fails deep inside load_checkpoint
                stage = self.resume_from.zero_stage
                raise RunError(
                    f"checkpoint {self.resume_from.path} was written with ZeRO stage {stage}, but "
                    f"{recipe.source} asks for ZeRO stage 0, which cannot load a partitioned (ZeRO ≥ 1) checkpoint: "
                    f"resume with deepspeed.zero_optimization.stage: {stage} (on this or any other number of ranks)")
            if self.resume_from.world_size != self.world and self.zero_stage > 0:
                if self.resume_from.zero_stage != self.zero_stage:
                    raise RunError(f"cannot change the ZeRO stage ({self.resume_from.zero_stage} → {self.zero_stage}) "
                                   "and the number of ranks in one resume")
                load_tag = ckpt.to_universal(self.resume_from)
                config.setdefault("checkpoint", {})["load_universal"] = True
        self._build_engine(config, own_optimizer)
        positions = PositionSampler(recipe.data.positions.type, recipe.data.seq_len, recipe.data.positions.max_position)
        self.stream = PretrainingStream(self.corpus.train, self.global_batch, self.micro_batch, self.world, self.rank,
                                        recipe.seed, self.policy, positions)
        self.stream_state = self.stream.state_dict()  # after the last step trained (what a checkpoint records)
        self.step = 0
        self.train_flops = 0.0
        self._last_saved = None  # (step, stage) of the newest checkpoint this run wrote or resumed from
        self._update_flops_per_token()
        if self.resume_from is not None:
            same_topology = self.resume_from.world_size == self.world
            state = ckpt.load(self.engine, self.checkpoint_dir, load_tag, self.rank,
                              self.resume_from.path if same_topology else None)
            self.step = int(state["step"])
            self.stream.load_state_dict(state["stream"])
            self.stream_state = self.stream.state_dict()
            self.train_flops = float(state.get("train_flops", self.step * self.global_batch * recipe.data.seq_len
                                               * self.flops_per_token))
            self._last_saved = (self.step, self.stage)
            self._check_stage_at_resume()
            self.log.write("resume", self.step, tag=self.resume_from.tag, from_world_size=self.resume_from.world_size,
                           world_size=self.world, stage=self.stage)
            self.status(self._resume_message())
        self.peak = mfu_peak(self.runtime, self.runtime.compute_dtype, recipe.training.peak_tflops)
        self.total_peak_flops = float(self.runtime.sum_across_ranks([self.peak.per_rank])[0])
        devices = device_census(self.runtime)
        self.log.write("run", self.step, device=self.runtime.describe(), devices=devices, world_size=self.world,
                       mfu_basis=self.peak.basis, peak_description=self.peak.description,
                       peak_tflops_per_rank=self.peak.per_rank / 1e12)
        mixed = f" (all ranks: {', '.join(f'{n} × {name}' for name, n in devices.items())})" if len(devices) > 1 else ""
        self.status(f"{self.world} rank(s) on {self.runtime.describe()}{mixed}; MFU against the "
                    f"{self.peak.description}")

    def _resume_message(self) -> str:
        info = self.resume_from
        message = f"resumed from {info.tag} (step {self.step})"
        if info.world_size == self.world:
            return message + f" on the same {self.world} rank(s): the run continues exactly"
        message += (f" on {self.world} rank(s); it was written by {info.world_size}. The data order is the same "
                    f"(seed and global batch of {self.global_batch} sequences). ")
        micro = info.meta.get("micro_batch")
        if micro is not None and micro != self.micro_batch:
            message += (f"Dropout masks differ: they follow each micro-batch's first sample, and micro-batches now "
                        f"hold {self.micro_batch} sequences instead of {micro}. ")
        else:
            message += "Dropout masks are the same (they follow each micro-batch's first sample). "
        return message + ("Gradients are summed over ranks in another order, so losses follow the uninterrupted run "
                          "up to rounding (about 1e-3 relative with bf16 autocast).")

    def _build_engine(self, config: dict, own_optimizer: dict | None) -> None:
        """deepspeed.initialize over self.model, with the scheduler of the current growth stage."""
        import deepspeed

        groups = parameter_groups(self.model, _weight_decay(config, own_optimizer))
        optimizer = None
        if own_optimizer is not None:
            params = dict(own_optimizer.get("params", {}))
            params.pop("torch_adam", None)
            optimizer = Lamb(groups, **params)
        scheduler = None
        multiplier = self._lr_multiplier()
        if multiplier is not None:
            scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, multiplier)  # noqa: E731
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, model_parameters=groups, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        if self.recipe.training.compile:
            self.engine.compile()
        self.global_batch = self.engine.train_batch_size()
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()

    def _lr_multiplier(self):
        """The recipe's schedule (as a function of the global step), re-warmed after a growth."""
        training = self.recipe.training
        stage = self.stages[self.stage] if self.stage else None
        if training.lr_schedule is None and not (stage and stage.lr_rewarm):
            return None
        base = (schedule_multiplier(training.lr_schedule, training.steps) if training.lr_schedule is not None
                else (lambda step: 1.0))
        return lr_multiplier(base, stage)

    def _update_flops_per_token(self) -> None:
        recipe = self.recipe
        self.flops_per_token = self.model.config.train_flops_per_token(
            recipe.data.seq_len, masked_fraction=recipe.data.masking.rate if recipe.training.masked_positions_only else None
        )

    def _stage_field(self) -> dict:
        """{"stage": current growth stage} for metrics records of a staged run, {} otherwise."""
        return {"stage": self.stage} if self.stages else {}

    def _check_stage_at_resume(self) -> None:
        if not self.stages:
            return
        current, following = self.stages[self.stage], self.stages[self.stage + 1:]
        if self.step < current.start or (following and self.step > following[0].start):
            raise RunError(
                f"checkpoint {self.resume_from.path} holds stage {self.stage} ({current.name!r}) at step {self.step}, "
                f"but {self.recipe.source} runs that stage over steps {current.start}–{current.end}; the stages "
                "changed since the checkpoint was written"
            )

    @property
    def prefetch_depth(self) -> int:
        setting = self.recipe.training.prefetch_steps
        if setting is not None:
            return setting
        # on the CPU every core already computes: a collating thread would only take cores from it
        return 2 if self.runtime.is_cuda else 0

    def _build_cpu_kernels(self) -> None:
        """Compile the CPU kernels before the clock starts (on a first run, about 20 s each, built at once)."""
        from zoo.kernels import SOURCES, build_cpu_kernels, disabled_by_environment

        if self.runtime.is_cuda or all(disabled_by_environment(name) for name in SOURCES):
            return

        self.status("loading the compiled CPU kernels (the first run builds them: under a minute)")
        build_cpu_kernels()
        self._barrier()

    # -- the loop
    def train(self) -> RunResult:
        recipe, training = self.recipe, self.recipe.training
        total = training.steps
        self._build_cpu_kernels()
        last_eval = None
        self.runtime.reset_peak_memory()  # each record's peak is its window's: from here to the record
        if self.step == 0:
            last_eval = self.evaluate()
            self.log.write("eval", 0, **last_eval, train_flops=0.0, **self._stage_field())
        bar = tqdm(total=total, initial=self.step, disable=self.rank != 0, desc=recipe.run_name, dynamic_ncols=True)
        prefetcher = Prefetcher(self.stream, self.prefetch_depth, self.runtime.pin)
        try:
            window_start, window_steps, window_tokens, window_flops = time.perf_counter(), 0, 0, 0.0
            while True:
                while self.stage + 1 < len(self.stages) and self.step == self.stages[self.stage + 1].start:
                    self.runtime.synchronize()  # the steps before it end here, in their window
                    paused = time.perf_counter()
                    self.grow(self.stages[self.stage + 1])
                    window_start += time.perf_counter() - paused  # the growth's time is not training throughput
                if self.step >= total:
                    break
                logging_step = (self.step + 1) % training.log_every == 0 or self.step + 1 == total
                loss, grad_norm = self._train_step(prefetcher.next(), logging_step)
                self.step += 1
                window_steps += 1
                step_tokens = self.global_batch * recipe.data.seq_len
                window_tokens += step_tokens
                window_flops += step_tokens * self.flops_per_token  # a growth changes it
                self.train_flops += step_tokens * self.flops_per_token
                bar.update(1)
                if logging_step:
                    # windows follow each other with no gap, so the logging's own cost (the wait for the
                    # step's values, the record, the bar) is in the next window's time
                    window_end = time.perf_counter()
                    record = self._train_record(loss, grad_norm, window_tokens, window_flops, window_steps,
                                                window_end - window_start)
                    self.log.write("train", self.step, **record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}",
                                    mfu=f"{record['mfu']:.1%} ({self.peak.basis})")
                    window_start, window_steps, window_tokens, window_flops = window_end, 0, 0, 0.0
                    self.runtime.reset_peak_memory()
                evaluating = self.step % training.eval_every == 0 or self.step == total
                checkpointing = self.step % training.checkpoint_every == 0 or self.step == total
                if not (evaluating or checkpointing):
                    continue
                self.runtime.synchronize()  # evaluation and checkpoints are not training throughput either
                paused = time.perf_counter()
                if evaluating:
                    last_eval = self.evaluate()
                    self.log.write("eval", self.step, **last_eval, train_flops=self.train_flops,
                                   **self._stage_field())
                    if self.rank == 0:
                        bar.write(f"step {self.step}: held-out masked accuracy {last_eval['mlm_accuracy']:.2%}, "
                                  f"loss {last_eval['mlm_loss']:.3f}")
                if checkpointing:
                    self.save_checkpoint()
                window_start += time.perf_counter() - paused
        finally:
            prefetcher.close()
            bar.close()
        export_dir, published = self.export(last_eval) if training.export else (None, None)
        self.log.close()
        return RunResult(self.step, self.output_dir, export_dir, published, last_eval)

    def _compiled_batch(self, batch: dict) -> dict:
        """With `training.compile`, the number of masked tokens (the length of `masked_positions`, a new
        one every batch) marked dynamic, so the forward pass is compiled once with it symbolic rather than
        for the first batch's count and again, made dynamic then, for the second's; and the batch's other
        sizes marked static. Without that, a short last held-out batch (held-out sequences per rank not a
        multiple of the micro-batch) made dynamo take the batch size for a dynamic one, and the training
        graph compiled after it had a symbolic batch size for the rest of the run, although every
        training batch has the same; now the short batch gets a graph of its own."""
        if self.recipe.training.compile:
            for name, tensor in batch.items():
                if name == "masked_positions":
                    torch._dynamo.maybe_mark_dynamic(tensor, 0)
                elif isinstance(tensor, torch.Tensor):
                    torch._dynamo.mark_static(tensor)  # every size
        return batch

    def _train_step(self, step_batches, logging_step: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step over this rank's micro-batches. Returns the mean micro-batch loss and, on a
        logging step, the gradient norm before clipping, as device tensors. The only host
        synchronisation is the finite check before the update."""
        training = self.recipe.training
        count = len(step_batches.batches)
        loss_sum, grad_norm = None, None
        for index, (batch, first_sample) in enumerate(zip(step_batches.batches, step_batches.first_samples)):
            batch = self._compiled_batch(self.runtime.to_device(batch))
            torch.manual_seed(dropout_seed(self.recipe.seed, first_sample))
            output = self.engine(**batch, masked_positions_only=training.masked_positions_only)
            loss = output.loss.detach().float()
            loss_sum = loss if loss_sum is None else loss_sum + loss
            self.engine.backward(output.loss)
            if index == count - 1:  # the update happens in this step() call: check before it
                finite = self.runtime.sum_across_ranks([torch.isfinite(loss_sum).float()])
                if float(finite[0]) < self.world:
                    self._stop_nonfinite(loss_sum / count)
                if logging_step and self.measures_grad_norm:
                    # nothing in DeepSpeed reports it
                    grad_norm = _gradient_norm(self.engine.module, getattr(self.engine, "torch_autocast_z0_gradscaler", None))
            self.engine.step()
        self.stream_state = step_batches.state
        if logging_step and grad_norm is None:
            reported = self.engine.get_global_grad_norm()
            grad_norm = None if reported is None else torch.as_tensor(reported)
        return loss_sum / count, grad_norm

    def _train_record(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, tokens: int, flops: float, steps: int,
                      elapsed: float) -> dict:
        mean_loss = float(self.runtime.mean_across_ranks([loss])[0])
        norm = None if grad_norm is None else float(grad_norm)
        tokens_per_s = tokens / elapsed
        record = dict(
            loss=mean_loss,
            lr=self._lr(),
            grad_norm=norm if norm is not None and math.isfinite(norm) else None,
            tokens_per_s=tokens_per_s,
            step_time_s=elapsed / steps,
            mfu=flops / elapsed / self.total_peak_flops,  # each step at its own model's FLOPs, a growth between
            mfu_basis=self.peak.basis,
            consumed_sequences=self.stream_state["consumed"],
            peak_memory_mb=float(self.runtime.max_across_ranks([self.runtime.peak_memory_mb()])[0]),
            train_flops=self.train_flops,
        )
        record.update(self._stage_field())
        return record

    def _lr(self) -> float:
        if self.scheduler is not None:
            return float(self.scheduler.get_last_lr()[0])
        return float(self.engine.get_lr()[0])

    def _stop_nonfinite(self, loss: torch.Tensor) -> None:
        last = ckpt.complete_checkpoints(self.checkpoint_dir)
        message = (f"non-finite loss ({float(loss)}) at step {self.step + 1} of {self.recipe.run_name}; the step was "
                   f"not applied. Last good checkpoint: {last[-1].path if last else 'none'} (resume with --resume)")
        self.log.write("error", self.step + 1, message=message)
        raise NonFiniteLossError(message)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Masked-token accuracy and loss on the fixed held-out batches (same masks every time). Every rank
        runs as many forward passes as rank 0 (`heldout_passes`): under ZeRO-3 each pass is a collective."""
        module = self.engine.module
        was_training = module.training
        module.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.runtime.device)  # correct, count, loss
        for batch, counted in heldout_passes(self.corpus.heldout, self.recipe.data.heldout.max_sequences,
                                             self.micro_batch, self.recipe.seed, self.policy, self.rank, self.world):
            batch = self._compiled_batch(self.runtime.to_device(self.runtime.pin(batch)))
            with self.runtime.autocast():
                out = module(**batch, masked_positions_only=True)
            if not counted:  # a pass that keeps this rank's collectives in step with ranks holding one more batch
                continue
            targets = batch["labels"].flatten()[batch["masked_positions"]]
            sums[0] += (out.logits.argmax(-1) == targets).sum()
            sums[1] += targets.numel()
            sums[2] += F.cross_entropy(at_least_fp32(out.logits), targets, reduction="sum")
        correct, total, loss_sum = self.runtime.sum_across_ranks(sums).tolist()
        module.train(was_training)
        return {"mlm_accuracy": correct / max(total, 1), "mlm_loss": loss_sum / max(total, 1), "masked_tokens": int(total)}

    def save_checkpoint(self, grown: bool = False) -> Path:
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        client_state = {
            "step": self.step,
            "stream": self.stream_state,
            "train_flops": self.train_flops,
            # what ds_to_universal needs to convert this checkpoint for another number of ranks
            UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE},
        }
        meta = {"world_size": self.world, "zero_stage": self.zero_stage, "run_name": self.recipe.run_name,
                "micro_batch": self.micro_batch}
        if self.stages:
            meta.update(stage=self.stage, stage_name=self.stages[self.stage].name,
                        model_config=json.loads(self.model.config.to_json_string()))
        tag = ckpt.tag_for(self.step, self.stage if grown else None)
        path = ckpt.save(self.engine, self.checkpoint_dir, self.step, client_state, self.recipe.training.keep_checkpoints,
                         meta, tag=tag)
        self._last_saved = (self.step, self.stage)
        self.log.write("checkpoint", self.step, path=str(path), **self._stage_field())
        return path

    # -- growth
    def grow(self, stage: Stage) -> None:
        """Grow the model and its optimizer state into `stage` (pretrain/stages.py), checkpointing before
        and after, and re-initialise the DeepSpeed engine with the grown model."""
        from zoo.growth import expand

        from .stages import check_growable, expand_kwargs, full_weights, read_optimizer_state, write_optimizer_state

        check_growable(self.engine)
        if self._last_saved != (self.step, self.stage):
            self.save_checkpoint()  # the small model at the boundary: a resume from it grows again here
        started = time.perf_counter()
        before = self.evaluate()
        # the growth itself runs on the CPU in fp32: the weights and moments come off the device one by one
        weights = full_weights(self.engine)
        state = read_optimizer_state(self.engine)
        small_config = copy.deepcopy(self.engine.module.config)
        with torch.random.fork_rng(devices=[]):  # the growth leaves the training RNG stream alone
            small = model_class(small_config, "masked-lm")(small_config)
        missing, unexpected = small.load_state_dict(weights, strict=False)
        if [k for k in missing if k != "lm_head.decoder.weight"] or unexpected:
            raise RuntimeError(f"growth: weights do not match the model: missing {missing}, unexpected {unexpected}")
        small.tie_weights()
        small.train()
        big, plan = expand(small, return_plan=True, **expand_kwargs(stage))
        mode = stage.optimizer_state
        if mode == "reset" and self.zero_stage > 0:
            mapped = {}  # one step count per ZeRO parameter group: start the optimizer afresh
        else:
            mapped = plan.map_optimizer_state(state, mode) if state else {}
        small_params = sum(p.numel() for p in small.parameters())
        carried = mode if mapped else "none"
        del small, weights, state
        # a fresh engine over the grown model. The small model goes too: DeepSpeed's hooks on it hold the
        # engine, so with self.model kept the collection below freed neither, and once self.model was
        # replaced they were a cycle that only a later full collection would free, with the small
        # model's weights and optimizer moments (12 bytes a parameter) held on the device until then
        self.engine = self.optimizer = self.scheduler = self.model = None
        if self.recipe.training.compile:
            # the small model's graphs (training and evaluation) are of no more use, and each growth would
            # add two recompilations of the same forward: past dynamo's limit (8) it falls back to eager
            torch._dynamo.reset()
        gc.collect()
        if self.runtime.is_cuda:
            torch.cuda.empty_cache()
        self.model = with_activation_checkpointing(big.train(), self.recipe)
        self.stage = stage.index
        config, own_optimizer = deepspeed_config(self.recipe, self.runtime.device)
        self._build_engine(config, own_optimizer)
        check_growable(self.engine)
        if mapped:
            write_optimizer_state(self.engine, mapped)
        self._update_flops_per_token()
        after = self.evaluate()
        big_params = sum(p.numel() for p in big.parameters())
        self.log.write(
            "growth", self.step, stage=stage.index, name=stage.name, loss_before=before["mlm_loss"],
            loss_after=after["mlm_loss"], accuracy_before=before["mlm_accuracy"], accuracy_after=after["mlm_accuracy"],
            parameters_before=small_params, parameters_after=big_params,
            probe_max_abs_change=plan.probe_max_abs_change, optimizer_state=carried,
            lr_rewarm=stage.lr_rewarm, flops_per_token=self.flops_per_token, train_flops=self.train_flops,
            growth_seconds=time.perf_counter() - started, to=plan.summary()["to"],
        )
        self.status(f"step {self.step}: grew into stage {stage.index} ({stage.name!r}): {small_params:,} → "
                    f"{big_params:,} parameters; held-out loss {before['mlm_loss']:.4f} → {after['mlm_loss']:.4f}")
        self.save_checkpoint(grown=True)

    def export(self, final_eval: dict | None) -> tuple[Path | None, str | None]:
        """Consolidated fp32 weights as a model folder (and publish it if the recipe says so), by rank 0;
        every rank returns the folder and the published reference."""
        tag, export_dir = ckpt.tag_for(self.step), self.output_dir / "export"

        def write() -> str | None:
            state = ckpt.consolidated_state_dict(self.engine, self.checkpoint_dir, tag, self.zero_stage)
            return self._export_on_rank0(state, export_dir, final_eval)

        return export_dir, on_rank0("export", write, wait_s=long_wait_s(), share=True)

    def _export_on_rank0(self, state: dict, export_dir: Path, final_eval: dict | None) -> str | None:
        """Rank 0's part of `export`: the model folder, written beside and moved into place; the published
        reference, or None."""
        published = None
        config = copy.deepcopy(self.model.config)
        model = model_class(config, "masked-lm")(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in ("lm_head.decoder.weight",)]
        if missing or unexpected:
            raise RuntimeError(f"export: weights do not match the model: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        tmp = export_dir.with_name(export_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        zoo.tokenizer.save_vocab(self.tokenizer, tmp / "vocab.txt")
        shutil.rmtree(export_dir, ignore_errors=True)
        os.replace(tmp, export_dir)
        self.log.write("export", self.step, path=str(export_dir))
        if self.recipe.publish is not None:
            publish = self.recipe.publish
            earlier = self._published_by_an_earlier_attempt()
            if earlier is not None:
                self.status(f"step {self.step} is published already, as {earlier} (by an earlier attempt of this run)")
                return earlier
            version = publish.version or f"step{self.step}-{time.strftime('%Y%m%d-%H%M%S')}"
            from .summary import plot as plot_curves

            metrics = {f"heldout/{k}": v for k, v in (final_eval or {}).items() if k != "masked_tokens"}
            curves = plot_curves(self.output_dir, self.output_dir / "curves.png")
            published = zoo.publish(model, self.tokenizer, name=publish.name, version=version, metrics=metrics,
                                    registry=publish.registry, card=_card(self.recipe, self.step),
                                    figures={"training curves": curves}, recipe=self.recipe.to_dict())
            self.log.write("publish", self.step, ref=published)
        return published

    def _published_by_an_earlier_attempt(self) -> str | None:
        """The reference an earlier attempt published this step as, where it is in the registry: a run that
        failed after publishing (or a finished one started again by `--resume auto`) resumes at its last
        step and would publish the same weights again, as a second version, or fail on a fixed one."""
        from zoo.registry import Registry, parse_ref

        for record in reversed(read_metrics(self.log.path, "publish") if self.log.path.exists() else []):
            if record.get("step") == self.step:
                name, version = parse_ref(record["ref"])
                if version in Registry(self.recipe.publish.registry).versions(name):
                    return record["ref"]
        return None

    def close(self) -> None:
        close_distributed()


def close_distributed(barrier: bool = True) -> None:
    """Leave the process group: together after a finished run, without waiting after an error. On the CPU
    also remove this rank's shared-memory buffer of DeepSpeed's all-reduce (`shm_allreduce_buffer`)."""
    rank_failure.stop()
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        _remove_shm_allreduce_buffer()  # after the last collective (the name reads the process group)
        dist.destroy_process_group()


def _remove_shm_allreduce_buffer() -> None:
    """This rank's `shm_allreduce_buffer`, removed as the rank leaves: at the end of the run (close_distributed)
    or on another rank's failure (pretrain/rank_failure.py)."""
    buffer = shm_allreduce_buffer() if dist.is_initialized() else None
    if buffer is not None:
        buffer.unlink(missing_ok=True)


def shm_allreduce_buffer() -> Path | None:
    """This rank's buffer of DeepSpeed's shared-memory all-reduce on the CPU (ops/csrc/cpu/comm/shm.cpp:
    deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>, 64 MiB in /dev/shm), which DeepSpeed
    never removes: a run on another port leaves another one each time, in memory, until the machine's
    shared memory is full. None on CUDA. Removing the name after the last collective leaves any mapping
    that another rank still holds valid."""
    if dist.get_backend() == "nccl":
        return None
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    return Path("/dev/shm") / name


def _card(recipe: Recipe, step: int) -> str:
    return (f"## Training\n\nPretrained with `python -m pretrain --config {Path(recipe.source).name}` for {step} steps "
            f"(sequence length {recipe.data.seq_len}, masking rate {recipe.data.masking.rate}).\n")
