"""The fine-tuning loop: AdamW with linear warm-up/decay, optional bf16 autocast, gradient
accumulation and clipping, dev evaluation after each epoch (or every `eval_every` steps) and the
best-dev weights kept. Options beyond the published recipe, each off by default:

- R-Drop (Liang et al. 2021): two dropout passes, loss = mean CE + α · symmetric KL between them;
- ChildTuning-D (Xu et al. 2021): before training, the Fisher information (Σ grad²) over the training
  set picks the top `p` fraction of encoder weights (the child network); only they are updated;
- CoSENT (Su 2022): siamese cosine training for binary sentence-pair tasks (runners.CoSENTRunner).
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from zoo.weight_decay import weight_decay_groups

from ..errors import UsageError
from .runners import Runner


@dataclass
class Options:
    rdrop: float = 0.0  # R-Drop α; 0 = off
    child_tuning_d: float = 0.0  # ChildTuning-D reserve fraction p; 0 = off
    cosent: bool = False
    bf16: bool = True
    max_steps: int | None = None
    eval_every: int | None = None  # steps; None = after every epoch
    fisher_batches: int = 64  # ChildTuning-D: batches used to estimate the Fisher information
    seed: int = 42
    progress: bool = True


@dataclass
class Result:
    best_score: float | None
    best_step: int
    steps: int
    dev: dict | None
    history: list = field(default_factory=list)
    seconds: float = 0.0


def child_tuning_masks(model, runner: Runner, items: list, reserve: float, batch_size: int, batches: int) -> dict:
    """ChildTuning-D: 0/1 masks over encoder weights, 1 for the top `reserve` fraction by Fisher information."""
    model.train()
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")}
    for i in range(0, min(len(items), batches * batch_size), batch_size):
        batch = runner.batch(items[i : i + batch_size])
        model.zero_grad(set_to_none=True)
        runner.loss(runner.logits(model, batch), batch).backward()
        for n, p in model.named_parameters():
            if n in fisher and p.grad is not None:
                fisher[n] += p.grad.detach().float() ** 2
    model.zero_grad(set_to_none=True)
    flat = torch.cat([f.flatten() for f in fisher.values()])
    keep = max(1, int(len(flat) * reserve))
    chosen = torch.zeros_like(flat)
    chosen[torch.topk(flat, keep, sorted=False).indices] = 1  # exactly `keep` weights, ties included
    masks, offset = {}, 0
    for n, f in fisher.items():
        masks[n] = chosen[offset : offset + f.numel()].view_as(f)
        offset += f.numel()
    return masks


SHOW_LOSS_EVERY = 10  # steps between the progress bar's loss readings


def finetune(model, runner: Runner, train, dev, options: Options | None = None, description: str = "") -> Result:
    """Train `model` on `train` examples; evaluate on `dev`; leave the best-dev weights in `model`."""
    options = options or Options()
    recipe = runner.recipe
    model.to(runner.runtime.device)
    rng = random.Random(options.seed)
    torch.manual_seed(options.seed)
    items = runner.train_items(train)
    if not items:
        raise UsageError(f"{runner.task.name}: no training examples")
    per_epoch = math.ceil(len(items) / (recipe.batch_size * recipe.accumulation))
    total = per_epoch * recipe.epochs
    if options.max_steps is not None:
        total = min(total, options.max_steps)
    # fused on CUDA: one kernel per step instead of a few per tensor
    optimizer = torch.optim.AdamW(weight_decay_groups(model, recipe.weight_decay), lr=recipe.lr,
                                  fused=runner.runtime.is_cuda or None)
    warmup = int(total * recipe.warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    masks = None
    if options.child_tuning_d:
        shuffled = items[:]
        rng.shuffle(shuffled)
        masks = child_tuning_masks(model, runner, shuffled, options.child_tuning_d, recipe.batch_size, options.fisher_batches)
    named = dict(model.named_parameters())

    best_score, best_step, best_state, best_dev = None, 0, None, None
    history = []
    step = 0
    start = time.time()

    def evaluate():
        nonlocal best_score, best_step, best_state, best_dev
        if not dev:
            return
        result = runner.evaluate(model, dev)
        history.append({"step": step, "dev": result["score"]})
        if best_score is None or result["score"] > best_score:
            best_score, best_step, best_dev = result["score"], step, result
            best_state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})

    bar = tqdm(total=total, desc=description or runner.task.name, disable=not options.progress, leave=False)
    epoch = 0
    while step < total:
        order = items[:]
        rng.shuffle(order)
        model.train()
        batches = [order[i : i + recipe.batch_size] for i in range(0, len(order), recipe.batch_size)]
        for k in range(0, len(batches), recipe.accumulation):
            group = batches[k : k + recipe.accumulation]
            optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for chunk in group:
                batch = runner.batch(chunk)
                logits = runner.logits(model, batch)
                loss = runner.loss(logits, batch)
                if options.rdrop and runner.supports_rdrop:
                    logits2 = runner.logits(model, batch)
                    loss = (loss + runner.loss(logits2, batch)) / 2 + options.rdrop * runner.rdrop_kl(logits, logits2)
                (loss / len(group)).backward()
                total_loss = total_loss + loss.detach() / len(group)  # read once per step, below
            if masks is not None:
                for n, m in masks.items():
                    if named[n].grad is not None:
                        named[n].grad.mul_(m)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
            if step % SHOW_LOSS_EVERY == 0 or step >= total:  # reading it waits for the GPU: not every step
                bar.set_postfix(loss=f"{float(total_loss):.4f}", best=f"{best_score:.2f}" if best_score is not None else "-")
            if options.eval_every and step % options.eval_every == 0:
                evaluate()
                model.train()
            if step >= total:
                break
        epoch += 1
        if not options.eval_every:
            evaluate()
    if options.eval_every and (not history or history[-1]["step"] != step):
        evaluate()
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return Result(best_score, best_step, step, best_dev, history, time.time() - start)
