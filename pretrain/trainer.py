"""The pretraining loop: a plain loop over the DeepSpeed engine (ecosystem.md §7).

    engine, ... = deepspeed.initialize(model, model_parameters, optimizer, lr_scheduler, config)
    for step:   for each micro-batch: loss = engine(**batch).loss; engine.backward(loss); engine.step()

The trainer knows nothing of the model family: it builds the model from the recipe with zoo,
takes data from pretrain.data / pretrain.loader, and leaves ZeRO, mixed precision, gradient
accumulation and clipping to DeepSpeed. Single-process runs (`python -m pretrain`) and N ranks under
the `deepspeed` launcher run the same code; on CPU the backend is gloo.

With growth stages (pretrain/stages.py) the loop grows the model at each stage boundary (`grow`):
checkpoint, zoo.expand the model and map its optimizer state, re-initialise the engine, checkpoint.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from tqdm.auto import tqdm

import zoo
from zoo.families import CONFIG_CLASSES, FAMILIES, model_class

from . import checkpoint as ckpt
from .data import build_corpus, default_cache_dir
from .loader import PositionSampler, PretrainingStream, heldout_batches
from .masking import MaskingPolicy
from .metrics import MetricsLog, measure_matmul_peak, peak_memory_mb
from .optim import Lamb, parameter_groups, schedule_multiplier
from .recipe import Recipe
from .stages import Stage, lr_multiplier

logger = logging.getLogger("pretrain")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run stopped before applying that step."""


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


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); a lone `python -m pretrain` becomes a world of one."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # ranks on one CPU share its cores; oversubscription makes every rank slower
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return rank, world, local_rank


def _all_mean(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor.tolist()


def _all_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


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
        raise ValueError(f"the checkpoint's model_type {config_dict.get('model_type')!r} is not a zoo family")
    config = config_class.from_dict(config_dict)
    torch.manual_seed(recipe.seed)
    return with_activation_checkpointing(model_class(config, "masked-lm")(config), recipe)


def deepspeed_config(recipe: Recipe) -> tuple[dict, dict | None]:
    """The recipe's deepspeed section, and the optimizer block to run ourselves (Lamb off CUDA)."""
    config = copy.deepcopy(recipe.deepspeed)
    config.setdefault("steps_per_print", 10**9)  # our own log reports progress
    own_optimizer = None
    optimizer = config.get("optimizer")
    if optimizer and optimizer["type"].lower() == "lamb" and not torch.cuda.is_available():
        own_optimizer = config.pop("optimizer")  # DeepSpeed's FusedLamb has no CPU kernel
    return config, own_optimizer


def _weight_decay(config: dict, own_optimizer: dict | None) -> float:
    block = own_optimizer or config.get("optimizer") or {}
    return float(block.get("params", {}).get("weight_decay", 0.0))


# --------------------------------------------------------------------------- the run


class Trainer:
    def __init__(self, recipe: Recipe, resume: str | None = None, restart: bool = False):
        self.recipe = recipe
        self.rank, self.world, self.local_rank = init_distributed()
        self.output_dir = Path(recipe.training.output_dir or (default_cache_dir().parent / "runs" / recipe.run_name))
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.resume_from = self._plan_resume(resume, restart)
        self.log = MetricsLog(self.output_dir / "metrics.jsonl", enabled=self.rank == 0)
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), allow_unicode=True, sort_keys=False))

        self.stages: list[Stage] = list(recipe.growth_stages)
        self.stage = self.resume_from.stage if self.resume_from is not None else 0
        if self.stage and self.stage >= len(self.stages):
            raise ValueError(f"checkpoint {self.resume_from.path} belongs to growth stage {self.stage}, but "
                             f"{recipe.source} lists {len(self.stages)} stages")
        self.tokenizer = build_tokenizer(recipe.data.tokenizer)
        if self.stage == 0:
            self.model = build_model(recipe)
        else:  # a checkpoint taken after a growth: build the grown model directly
            self.model = model_from_config(self.resume_from.meta["model_config"], recipe)
        if len(self.tokenizer) > self.model.config.vocab_size:
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocab_size is "
                             f"{self.model.config.vocab_size} (model section of {recipe.source})")
        torch.manual_seed(recipe.seed * 7919 + 1 + self.rank)  # dropout differs between ranks

        # rank 0 tokenises and fills the cache first; the other ranks then read it
        if self.rank == 0:
            self.corpus = build_corpus(recipe.data, self.tokenizer)
        self._barrier()
        if self.rank != 0:
            self.corpus = build_corpus(recipe.data, self.tokenizer)
        self.policy = MaskingPolicy.from_recipe(recipe.data.masking, self.tokenizer, self.model.config.vocab_size)
        self._init_engine()

    # -- setup
    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _plan_resume(self, resume: str | None, restart: bool) -> ckpt.CheckpointInfo | None:
        existing = ckpt.complete_checkpoints(self.checkpoint_dir)
        if restart:
            self._barrier()
            if self.rank == 0 and self.output_dir.exists():
                shutil.rmtree(self.output_dir)
            self._barrier()
            return None
        if resume is None:
            if existing:
                raise FileExistsError(
                    f"{self.output_dir} already has checkpoints ({existing[-1].tag} is the newest): pass --resume to "
                    "continue the run, or --restart to delete it and start over"
                )
            return None
        return ckpt.find_checkpoint(self.checkpoint_dir, resume)

    def _init_engine(self) -> None:
        recipe = self.recipe
        config, own_optimizer = deepspeed_config(recipe)
        self.zero_stage = int(config.get("zero_optimization", {}).get("stage", 0))
        load_tag = None
        if self.resume_from is not None:
            load_tag = self.resume_from.tag
            if self.resume_from.world_size != self.world and self.zero_stage > 0:
                if self.resume_from.zero_stage != self.zero_stage:
                    raise ValueError(f"cannot change the ZeRO stage ({self.resume_from.zero_stage} → {self.zero_stage}) "
                                     "and the number of ranks in one resume")
                load_tag = ckpt.to_universal(self.resume_from)
                config.setdefault("checkpoint", {})["load_universal"] = True
        self._build_engine(config, own_optimizer)
        positions = PositionSampler(recipe.data.positions.type, recipe.data.seq_len, recipe.data.positions.max_position)
        self.stream = PretrainingStream(self.corpus.train, self.global_batch, self.micro_batch, self.world, self.rank,
                                        recipe.seed, self.policy, positions)
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
            self.train_flops = float(state.get("train_flops", self.step * self.global_batch * recipe.data.seq_len
                                               * self.flops_per_token))
            self._last_saved = (self.step, self.stage)
            self._check_stage_at_resume()
            self.log.write("resume", self.step, tag=self.resume_from.tag, from_world_size=self.resume_from.world_size,
                           world_size=self.world, stage=self.stage)
        self.compute_dtype = self._compute_dtype(config)
        peak = recipe.training.peak_tflops
        self.peak_flops = peak * 1e12 if peak else self._measure_peak()

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
            raise ValueError(
                f"checkpoint {self.resume_from.path} holds stage {self.stage} ({current.name!r}) at step {self.step}, "
                f"but {self.recipe.source} runs that stage over steps {current.start}–{current.end}; the stages "
                "changed since the checkpoint was written"
            )

    def _compute_dtype(self, config: dict) -> torch.dtype:
        if config.get("bf16", {}).get("enabled") or (config.get("torch_autocast", {}).get("enabled")
                                                     and "bfloat16" in str(config["torch_autocast"].get("dtype", "bfloat16"))):
            return torch.bfloat16
        if config.get("fp16", {}).get("enabled"):
            return torch.float16
        return torch.float32

    def _measure_peak(self) -> float:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return _all_mean([measure_matmul_peak(self.compute_dtype, device=device)])[0]

    # -- the loop
    def train(self) -> RunResult:
        recipe, training = self.recipe, self.recipe.training
        total = training.steps
        bar = tqdm(total=total, initial=self.step, disable=self.rank != 0, desc=recipe.run_name, dynamic_ncols=True)
        last_eval = None
        if self.step == 0:
            last_eval = self.evaluate()
            self.log.write("eval", 0, **last_eval, train_flops=0.0, **self._stage_field())
        window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
        while True:
            while self.stage + 1 < len(self.stages) and self.step == self.stages[self.stage + 1].start:
                self.grow(self.stages[self.stage + 1])
                window_start = time.perf_counter()  # the growth's time is not training throughput
            if self.step >= total:
                break
            losses = []
            for batch in self.stream.next_step():
                output = self.engine(**batch, masked_positions_only=training.masked_positions_only)
                (finite,) = _all_sum([float(torch.isfinite(output.loss).item())])
                if finite < self.world:
                    self._stop_nonfinite(output.loss)
                self.engine.backward(output.loss)
                self.engine.step()
                losses.append(output.loss.item())
            self.step += 1
            window_steps += 1
            window_tokens += self.global_batch * recipe.data.seq_len
            self.train_flops += self.global_batch * recipe.data.seq_len * self.flops_per_token
            bar.update(1)
            if self.step % training.log_every == 0 or self.step == total:
                (loss,) = _all_mean([sum(losses) / len(losses)])
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_tokens / elapsed
                record = dict(
                    loss=loss,
                    lr=self._lr(),
                    grad_norm=self._grad_norm(),
                    tokens_per_s=tokens_per_s,
                    step_time_s=elapsed / window_steps,
                    mfu=tokens_per_s * self.flops_per_token / (self.world * self.peak_flops),
                    consumed_sequences=self.stream.state.consumed,
                    peak_memory_mb=_all_mean([peak_memory_mb()])[0],
                    train_flops=self.train_flops,
                )
                record.update(self._stage_field())
                self.log.write("train", self.step, **record)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{record['mfu']:.1%}")
                window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
            if self.step % training.eval_every == 0 or self.step == total:
                last_eval = self.evaluate()
                self.log.write("eval", self.step, **last_eval, train_flops=self.train_flops,
                               **self._stage_field())
                if self.rank == 0:
                    bar.write(f"step {self.step}: held-out masked accuracy {last_eval['mlm_accuracy']:.2%}, "
                              f"loss {last_eval['mlm_loss']:.3f}")
            if self.step % training.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint()
        bar.close()
        export_dir, published = self.export(last_eval) if training.export else (None, None)
        self.log.close()
        return RunResult(self.step, self.output_dir, export_dir, published, last_eval)

    def _lr(self) -> float:
        if self.scheduler is not None:
            return float(self.scheduler.get_last_lr()[0])
        return float(self.engine.get_lr()[0])

    def _grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return None
        norm = float(norm)
        return norm if math.isfinite(norm) else None

    def _stop_nonfinite(self, loss: torch.Tensor) -> None:
        last = ckpt.complete_checkpoints(self.checkpoint_dir)
        message = (f"non-finite loss ({loss.item()}) at step {self.step + 1} of {self.recipe.run_name}; the step was not "
                   f"applied. Last good checkpoint: {last[-1].path if last else 'none'} (resume with --resume)")
        self.log.write("error", self.step + 1, message=message)
        raise NonFiniteLossError(message)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Masked-token accuracy and loss on the fixed held-out batches (same masks every time)."""
        module = self.engine.module
        was_training = module.training
        module.eval()
        correct = total = loss_sum = 0.0
        autocast = torch.autocast(device_type="cuda" if torch.cuda.is_available() else "cpu", dtype=self.compute_dtype,
                                  enabled=self.compute_dtype != torch.float32)
        device = next(module.parameters()).device
        for batch in heldout_batches(self.corpus.heldout, self.recipe.data.heldout.max_sequences, self.micro_batch,
                                     self.recipe.seed, self.policy, self.rank, self.world):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                out = module(**batch, masked_positions_only=True)
            targets = batch["labels"][batch["labels"] != -100]
            correct += (out.logits.argmax(-1) == targets).sum().item()
            total += targets.numel()
            loss_sum += torch.nn.functional.cross_entropy(out.logits.float(), targets, reduction="sum").item()
        correct, total, loss_sum = _all_sum([correct, total, loss_sum])
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
            "stream": self.stream.state_dict(),
            "train_flops": self.train_flops,
            # what ds_to_universal needs to convert this checkpoint for another number of ranks
            UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE},
        }
        meta = {"world_size": self.world, "zero_stage": self.zero_stage, "run_name": self.recipe.run_name}
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
        # a fresh engine over the grown model
        self.engine = self.optimizer = self.scheduler = None
        gc.collect()
        self.model = with_activation_checkpointing(big.train(), self.recipe)
        self.stage = stage.index
        config, own_optimizer = deepspeed_config(self.recipe)
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
        if self.rank == 0:
            tqdm.write(f"step {self.step}: grew into stage {stage.index} ({stage.name!r}): "
                       f"{small_params:,} → {big_params:,} parameters; held-out loss "
                       f"{before['mlm_loss']:.4f} → {after['mlm_loss']:.4f}")
        self.save_checkpoint(grown=True)

    def export(self, final_eval: dict | None) -> tuple[Path | None, str | None]:
        """Consolidated fp32 weights as a model folder (and publish it if the recipe says so)."""
        tag = ckpt.tag_for(self.step)
        state = ckpt.consolidated_state_dict(self.engine, self.checkpoint_dir, tag, self.zero_stage)
        export_dir, published = self.output_dir / "export", None
        if self.rank == 0:
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
                version = publish.version or f"step{self.step}-{time.strftime('%Y%m%d-%H%M%S')}"
                metrics = {f"heldout/{k}": v for k, v in (final_eval or {}).items() if k != "masked_tokens"}
                published = zoo.publish(model, self.tokenizer, name=publish.name, version=version, metrics=metrics,
                                        registry=publish.registry, card=_card(self.recipe, self.step))
                self.log.write("publish", self.step, ref=published)
        self._barrier()
        return export_dir, published

    def close(self) -> None:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _card(recipe: Recipe, step: int) -> str:
    return (f"## Training\n\nPretrained with `python -m pretrain --config {Path(recipe.source).name}` for {step} steps "
            f"(sequence length {recipe.data.seq_len}, masking rate {recipe.data.masking.rate}).\n")
