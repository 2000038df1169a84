"""Optimizers and learning-rate schedules.

LAMB (You et al. 2019) as bert4keras trains RoFormerV2 and GAU-α (architectures.md §1.6): AdamW's
update u = m/(√v + ε) + λ·x, rescaled per tensor so that its norm equals the weight's norm,

    x ← x − lr · c_t · r · u,   r = ‖x‖ / ‖u‖ (1 when either norm is 0), clipped to [min_coeff, max_coeff]

(DeepSpeed's FusedLamb clips r to [0.01, 10]; bert4keras does not clip). DeepSpeed's FusedLamb runs
on CUDA and has no CPU kernel, so off CUDA `Lamb` runs instead: the same function of the same
parameters, with FusedLamb's defaults (fused_lamb_cuda_kernel.cu). With `bias_correction` that kernel
does not correct m and v before the ratio; it multiplies the step by Adam's c_t = √(1 − β₂ᵗ)/(1 − β₁ᵗ)
(c_t = 1 without). The paper corrects m and v instead, so that c_t all but cancels in the ratio: the two
take other steps for the first thousands. The published recipes turn it off, as bert4keras does, and
there all of them agree.
`eps_inside_sqrt` puts ε under the root (√(v + ε)), as FusedLamb's option of that name does.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from zoo.weight_decay import weight_decay_groups


class Lamb(Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        max_coeff: float | None = 10.0,
        min_coeff: float | None = 0.01,
        adapt: bool = True,
        eps_inside_sqrt: bool = False,
    ):
        if lr < 0 or eps < 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise ValueError(f"invalid Lamb hyper-parameters lr={lr} betas={betas} eps={eps}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        max_coeff=max_coeff, min_coeff=min_coeff, adapt=adapt, eps_inside_sqrt=eps_inside_sqrt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"]
                if group["bias_correction"]:
                    t = float(state["step"])  # FusedLamb's state (a checkpoint from CUDA) counts in an int
                    step_size *= math.sqrt(1 - beta2**t) / (1 - beta1**t)
                weight = p.float()
                if group.get("eps_inside_sqrt"):
                    update = exp_avg / (exp_avg_sq + group["eps"]).sqrt()
                else:
                    update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(weight, alpha=group["weight_decay"])
                ratio = 1.0
                if group.get("adapt", True):  # FusedLamb's groups have none: its bounds pin the unadapted ones
                    w_norm, u_norm = weight.norm().item(), update.norm().item()
                    if w_norm > 0 and u_norm > 0:
                        ratio = w_norm / u_norm
                        if group["max_coeff"] is not None:
                            ratio = min(ratio, group["max_coeff"])
                        if group["min_coeff"] is not None:
                            ratio = max(ratio, group["min_coeff"])
                p.add_(update.to(p.dtype), alpha=-step_size * ratio)
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights that decay (and get LAMB's layer adaptation), and norm gains/offsets and
    biases that do neither (bert4keras `exclude_from_weight_decay` and `exclude_from_layer_adaptation`
    = ['Norm', 'bias']). Which parameter goes where is zoo.weight_decay's rule, shared with fine-tuning."""
    groups = weight_decay_groups(model, weight_decay)
    for group in groups[1:]:
        group["adapt"] = False
    return pin_unadapted_ratios(groups)


def pin_unadapted_ratios(groups: list[dict]) -> list[dict]:
    """Pin the trust ratio of every group with `adapt=False` to 1 (min_coeff = max_coeff = 1).

    DeepSpeed's FusedLamb (CUDA) reads no `adapt`: it clips every tensor's ratio to its group's [min_coeff,
    max_coeff] (fused_lamb_cuda_kernel.cu), so the pins leave these tensors unadapted there too. A resume
    pins again: loading an optimizer's state puts back the groups as the checkpoint saved them, and
    checkpoints written before the pins existed have FusedLamb's [0.01, 10] in that group."""
    for group in groups:
        if group.get("adapt", True) is False:
            group.update(min_coeff=1.0, max_coeff=1.0)
    return groups


# --------------------------------------------------------------------------- schedules


def piecewise_linear(step: int, points: dict[int, float]) -> float:
    """bert4keras `piecewise_linear`: linear between (step, multiplier) points, starting from
    (0, 0) when no point is given at 0, and constant after the last point."""
    schedule = sorted(points.items())
    if schedule[0][0] != 0:
        schedule = [(0, 0.0)] + schedule
    for (s0, v0), (s1, v1) in zip(schedule, schedule[1:]):
        if step < s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return float(schedule[-1][1])


def schedule_multiplier(schedule: dict, total_steps: int):
    """The lr multiplier as a function of the optimizer step for a recipe's `lr_schedule`."""
    kind = schedule["type"]
    warmup = int(schedule.get("warmup", 0))
    final = float(schedule.get("final", 0.0))
    if kind == "piecewise_linear":
        points = {int(k): float(v) for k, v in schedule["points"].items()}
        return lambda step: piecewise_linear(step, points)

    def warm(step: int) -> float | None:
        return (step + 1) / warmup if step < warmup else None

    if kind == "constant":
        return lambda step: warm(step) or 1.0
    if kind == "warmup_linear":
        def linear(step: int) -> float:
            w = warm(step)
            if w is not None:
                return w
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 1.0 + (final - 1.0) * progress

        return linear

    def cosine(step: int) -> float:
        w = warm(step)
        if w is not None:
            return w
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return final + (1.0 - final) * 0.5 * (1 + math.cos(math.pi * progress))

    return cosine


def build_scheduler(optimizer: Optimizer, schedule: dict, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, schedule_multiplier(schedule, total_steps))
