"""`expand`: a larger model of the same family and task computing the same function (expansion.md).

The front door of zoo/growth/: it validates the sizes (sizes.py), builds the rules (rules.py and
the family modules), builds the grown model from them, and checks it on a probe batch (probe.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import GrowthError
from .plan import GrowthPlan, grown_as_trainable_on_the_cpu
from .probe import probe_change
from .rules import GrowthRules
from .sizes import grown_config

SYMMETRIES = ("split", "none", "noise")


@grown_as_trainable_on_the_cpu
def expand(
    model,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    head_size: int | None = None,
    intermediate_size: int | None = None,
    expansion_size: int | None = None,
    key_size: int | None = None,
    where: str | Sequence[int] = "interleave",
    symmetry: str = "split",
    seed: int = 0,
    noise_std: float = 1e-3,
    alpha: str = "depth",
    max_change: float | None = 1e-4,
    return_plan: bool = False,
):
    """A larger model of the same family and task computing the same function as `model` (eval mode).

    Sizes left as None are kept. `intermediate_size` is the FFN width (RoFormerV2, DeepNet) or GAU's
    expansion width e, also spelled `expansion_size`; `key_size` is GAU's s.
    where:    depth placement: "interleave" (after each old layer in turn; copies of that layer with
              zeroed writers), "top", "bottom", or the old layer index after which each new layer goes.
    symmetry: "split" (default) unequal shares between the copies of every duplicated unit: exact, and
              copies diverge under training; "none" equal shares (copies stay clones unless dropout
              differs); "noise" equal shares plus N(0, (noise_std·std)²) on the later copies' incoming
              weights: not exact, the measured change is reported (expansion.md A.8).
    alpha:    DeepNet only: "depth" (α follows the new depth, (2L′)^¼) or "keep" (the old α).
    max_change: the grown model must match the original on `probe_batch` within max_change ×
              max(1, max |output|) (at least 8 × the dtype's rounding), else ValueError; the only
              recipes not exact in exact arithmetic are the ε effects of inserted post-norm blocks,
              which this keeps from passing silently where they matter (e.g. DeepNet with where="bottom"
              on embeddings of small variance). Not applied with symmetry="noise"; None skips it.
    Returns the grown model, or (model, GrowthPlan) with `return_plan`. Raises ValueError, naming the
    argument and the exact alternatives, for a request that cannot be exact or that would shrink.
    """
    if symmetry not in SYMMETRIES:
        raise GrowthError(f"symmetry={symmetry!r} is not one of {list(SYMMETRIES)}")
    if not noise_std > 0:
        raise GrowthError(f"noise_std must be positive, got {noise_std!r}")
    config = model.config
    big_config = grown_config(config, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                              head_size=head_size, intermediate_size=intermediate_size,
                              expansion_size=expansion_size, key_size=key_size, alpha=alpha)
    generator = torch.Generator().manual_seed(seed)
    growth = GrowthRules(model, big_config, where, symmetry, generator)
    rules = growth.rules()
    layer_map, hidden_factor = growth.layer_map()
    plan = GrowthPlan(
        small_config=config, big_config=growth.big, rules=rules, residual=growth.residual,
        layer_map=layer_map, hidden_factor=hidden_factor, embedding_factor=growth.embedding_factor,
        options=dict(where=where if isinstance(where, str) else list(where), symmetry=symmetry, seed=seed,
                     noise_std=noise_std if symmetry == "noise" else None, alpha=alpha),
        exact=growth.exact and symmetry != "noise", notes=growth.notes,
    )
    big = _build(model, plan, generator, noise_std if symmetry == "noise" else None)
    plan.probe_max_abs_change, magnitude = probe_change(model, big, plan)
    if symmetry != "noise" and max_change is not None:
        dtype = next(big.parameters()).dtype
        bound = max(max_change, 8 * torch.finfo(dtype).eps) * max(1.0, magnitude)
        if plan.probe_max_abs_change > bound:
            raise GrowthError(
                f"the grown model differs from the original by max |Δ| = {plan.probe_max_abs_change:.3e} on the "
                f"probe batch, above max_change={max_change:g} × max(1, {magnitude:.3g}); "
                + " ".join(plan.notes)
                + ". Insert layers with where='interleave' or 'top', or pass max_change=None to accept it"
            )
    if symmetry == "noise":
        plan.notes.append(
            f"noise N(0, ({noise_std:g}·std)²) on the later copies' incoming weights: max |Δ output| = "
            f"{plan.probe_max_abs_change:.3e} on the probe batch"
        )
    return (big, plan) if return_plan else big


@torch.no_grad()
def _build(model, plan: GrowthPlan, generator: torch.Generator, noise_std: float | None):
    small_params = dict(model.named_parameters())
    used = {rule.source for rule in plan.rules.values()}
    missing = sorted(set(small_params) - used)
    if missing:
        raise GrowthError(f"zoo.expand has no rule for parameter(s) {', '.join(missing)} of {type(model).__name__}")
    reference = next(iter(small_params.values()))
    with torch.random.fork_rng(devices=[]):
        # the CPU's generator only, where the model is built (torch.manual_seed would also seed every GPU's
        # and leave them so: fork_rng restores the CPU's alone)
        torch.random.default_generator.manual_seed(plan.options["seed"])
        big = type(model)(plan.big_config)  # fresh init: the new entries keep it (for the grown config)
    big.to(device=reference.device, dtype=reference.dtype)
    big_params = dict(big.named_parameters())
    unknown = sorted(set(big_params) - set(plan.rules))
    if unknown:
        raise GrowthError(f"zoo.expand has no rule for grown parameter(s) {', '.join(unknown)}")
    for name, param in big_params.items():
        rule = plan.rules[name]
        source = small_params[rule.source]
        if rule.kind == "fill":
            param.fill_(rule.fill * rule.factor)
            continue
        values, mapped, zero = rule.gather(source, "value")
        if noise_std is not None and source.dim() == 2:
            later = rule.noise_mask()
            if later is not None:
                std = float(source.detach().double().std()) * noise_std
                noise = torch.randn(values.shape, generator=generator, dtype=torch.float64) * std
                values = values + torch.where(later.to(values.device) & mapped, noise.to(values.device), 0.0)
        keep = param.detach().to(torch.float64)
        param.copy_(torch.where(mapped, values, torch.where(zero, 0.0, keep)).to(param.dtype))
    big.train(model.training)
    return big
