"""Growth stages: train a small model, grow it with `zoo.expand` inside the same run, continue.

    model: {preset: roformer-v2-mini}        # the model of stage 0
    training: {steps: 600, lr_schedule: {...}}
    stages:
      - name: small
        steps: 300                           # optimizer steps of this stage
      - name: grown
        steps: 300                           # (the last stage may omit steps: the rest of training.steps)
        grow: {hidden_size: 256, num_layers: 4, num_heads: 4, intermediate_size: 1024,
               where: interleave, symmetry: split, seed: 0}   # zoo.expand's arguments
        optimizer_state: map                 # map (default) | reset   (GrowthPlan.map_optimizer_state)
        lr_rewarm: 20                        # optional: ramp the lr back up over 20 steps after the growth

At the boundary the trainer (pretrain/trainer.py) checkpoints the small model (tag step_N), grows the
model and its optimizer state, re-initialises the DeepSpeed engine with the grown model, checkpoints
again (tag step_N_stage<s>, COMPLETE records the stage and the grown config), and continues. The lr
of stage s is the recipe's schedule at the global step, times min(1, (i + 1) / lr_rewarm) for the i-th
step after the growth. A resume from a checkpoint before the boundary grows again at the same step
(deterministically: `expand` draws from its own seeded generator); a resume after it builds the grown
model from the checkpoint's config directly.

Optimizer state (expansion.md A.8): "map" carries Adam / LAMB moments through the growth (first moments
like gradients, second like their squares, new entries a zero first moment and the mean second
moment), so the first step after the growth moves every grown entry as its source would have moved;
"reset" starts every changed tensor from zero moments (pair it with lr_rewarm). Supported engines:
ZeRO 0 with a plain torch optimizer (our Lamb, torch Adam/AdamW), and ZeRO 1/2 (moments read and
written through DeepSpeed's tensor-fragment API; one step count per parameter group, so "reset"
there starts the whole optimizer afresh). ZeRO 3, fp16 loss scaling, bf16 master weights at ZeRO 0
and optimizer offload are refused when the recipe is loaded.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import RecipeError
from .validation import only_keys

SIZE_KEYS = ("hidden_size", "num_layers", "num_heads", "head_size", "intermediate_size", "expansion_size", "key_size")
OPTION_KEYS = ("where", "symmetry", "seed", "noise_std", "alpha", "max_change")
STAGE_KEYS = ("name", "steps", "grow", "optimizer_state", "lr_rewarm")


@dataclass
class Stage:
    index: int
    name: str
    start: int  # global optimizer step at which the stage begins (its growth happens there)
    steps: int
    grow: dict = field(default_factory=dict)  # keyword arguments of zoo.expand (sizes and options)
    optimizer_state: str = "map"
    lr_rewarm: int = 0

    @property
    def end(self) -> int:
        return self.start + self.steps

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "steps": self.steps}
        if self.grow:
            out["grow"] = dict(self.grow)
            out["optimizer_state"] = self.optimizer_state
            out["lr_rewarm"] = self.lr_rewarm
        return out


def _error(src: str, message: str) -> RecipeError:
    return RecipeError(f"{src}: {message}")


def _int(value: Any, key: str, src: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _error(src, f"key '{key}' must be an int ≥ {minimum}, got {value!r}")
    return value


def parse_stages(raw: list, recipe) -> list[Stage]:
    """Validate the recipe's `stages:` list (errors name the key, e.g. stages[1].grow.hidden_size) and
    return the stages with their start steps; [] when the recipe has none."""
    from zoo.growth import ALPHA_POLICIES, PLACEMENTS, STATE_MODES, SYMMETRIES

    src = recipe.source
    if not raw:
        return []
    if len(raw) < 2:
        raise _error(src, "stages: a single stage has nothing to grow; list at least two stages or drop the key")
    total = recipe.training.steps
    stages, start = [], 0
    for i, entry in enumerate(raw):
        key = f"stages[{i}]"
        if not isinstance(entry, dict):
            raise _error(src, f"key '{key}' must be a mapping with steps (and grow for every stage after the first), "
                              f"got {entry!r}")
        only_keys(entry, set(STAGE_KEYS), key + ".", src)
        name = entry.get("name", f"stage{i}")
        if not isinstance(name, str) or not name:
            raise _error(src, f"key '{key}.name' must be a non-empty string, got {name!r}")
        last = i == len(raw) - 1
        if "steps" in entry:
            steps = _int(entry["steps"], f"{key}.steps", src, 1)
        elif last:
            steps = total - start
            if steps < 1:
                raise _error(src, f"{key}.steps: the earlier stages already take {start} of training.steps={total}")
        else:
            raise _error(src, f"missing key '{key}.steps' (only the last stage may omit it)")
        grow = entry.get("grow")
        if i == 0:
            for extra in ("grow", "optimizer_state", "lr_rewarm"):
                if extra in entry:
                    raise _error(src, f"key '{key}.{extra}': the first stage trains the model section's model as it "
                                      "is; put the growth on stages[1]")
            stages.append(Stage(i, name, start, steps))
            start += steps
            continue
        if not isinstance(grow, dict) or not grow:
            raise _error(src, f"missing key '{key}.grow': every stage after the first grows the model, e.g. "
                              "grow: {hidden_size: 256, num_layers: 4}")
        only_keys(grow, set(SIZE_KEYS + OPTION_KEYS), key + ".grow.", src)
        sizes = [k for k in SIZE_KEYS if k in grow]
        if not sizes:
            raise _error(src, f"{key}.grow names no size to grow: give at least one of {', '.join(SIZE_KEYS)}")
        for size in sizes:
            _int(grow[size], f"{key}.grow.{size}", src, 1)
        if grow.get("symmetry", "split") not in SYMMETRIES:
            raise _error(src, f"key '{key}.grow.symmetry' must be one of {list(SYMMETRIES)}, got {grow['symmetry']!r}")
        if grow.get("alpha", "depth") not in ALPHA_POLICIES:
            raise _error(src, f"key '{key}.grow.alpha' must be one of {list(ALPHA_POLICIES)}, got {grow['alpha']!r}")
        where = grow.get("where", "interleave")
        if not (where in PLACEMENTS or (isinstance(where, list) and all(isinstance(w, int) for w in where))):
            raise _error(src, f"key '{key}.grow.where' must be one of {list(PLACEMENTS)} or a list of layer indices, "
                              f"got {where!r}")
        if "seed" in grow:
            _int(grow["seed"], f"{key}.grow.seed", src, 0)
        for number in ("noise_std", "max_change"):
            if number in grow and grow[number] is not None and (
                    isinstance(grow[number], bool) or not isinstance(grow[number], (int, float)) or grow[number] <= 0):
                raise _error(src, f"key '{key}.grow.{number}' must be a positive number, got {grow[number]!r}")
        mode = entry.get("optimizer_state", "map")
        if mode not in STATE_MODES:
            raise _error(src, f"key '{key}.optimizer_state' must be one of {list(STATE_MODES)}, got {mode!r}")
        rewarm = _int(entry.get("lr_rewarm", 0), f"{key}.lr_rewarm", src, 0)
        if rewarm > steps:
            raise _error(src, f"key '{key}.lr_rewarm' ({rewarm}) is longer than the stage ({steps} steps)")
        stages.append(Stage(i, name, start, steps, dict(grow), mode, rewarm))
        start += steps
    if start != total:
        raise _error(src, f"stages: the stages' steps add up to {start} but training.steps is {total}; make them "
                          "agree (or omit the last stage's steps)")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise _error(src, f"stages: stage names must differ, got {names}")
    _check_engine(recipe, src)
    _check_sizes(stages, recipe, src)
    return stages


def _check_engine(recipe, src: str) -> None:
    """The DeepSpeed configurations whose model and optimizer state the trainer can grow."""
    ds = recipe.deepspeed
    zero = ds.get("zero_optimization", {}) or {}
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2):
        raise _error(src, f"deepspeed.zero_optimization.stage={stage}: growth stages support ZeRO 0, 1 and 2 (under "
                          "ZeRO 3 the parameters are partitioned and cannot be grown in place); use stage ≤ 2")
    for offload in ("offload_optimizer", "offload_param"):
        if zero.get(offload) and (zero[offload] or {}).get("device", "none") != "none":
            raise _error(src, f"deepspeed.zero_optimization.{offload}: growth stages do not support offloading; remove it")
    if (ds.get("fp16") or {}).get("enabled"):
        raise _error(src, "deepspeed.fp16.enabled: growth stages do not carry fp16 loss-scaler state; use bf16 "
                          "(torch_autocast) instead")
    if (ds.get("bf16") or {}).get("enabled") and stage == 0:
        raise _error(src, "deepspeed.bf16.enabled with zero_optimization.stage=0: DeepSpeed wraps the optimizer in one "
                          "whose state growth cannot read; use torch_autocast: {enabled: true, dtype: bfloat16}, or ZeRO 1/2")
    if "scheduler" in ds:
        raise _error(src, "deepspeed.scheduler: growth stages need the schedule as training.lr_schedule (a DeepSpeed "
                          "scheduler would restart at the growth)")


def _check_sizes(stages: list[Stage], recipe, src: str) -> None:
    """Grow the stage-0 config through every stage on paper, so an impossible size fails on load
    (naming the stage) rather than hours into the run. Needs the config: presets and families only."""
    from zoo.growth import grown_config

    model = recipe.model
    try:
        if model.preset:
            from zoo.presets import preset_config

            config = preset_config(model.preset, **model.config)
        elif model.family:
            from zoo.families import FAMILIES

            config = FAMILIES[model.family]["config"](**model.config)
        else:
            return  # init_from: checked when the run loads the model
    except (TypeError, ValueError):
        return  # the model section's own error is reported when the model is built
    for stage in stages[1:]:
        try:
            config = grown_config(config, **expand_kwargs(stage))
        except ValueError as error:
            raise _error(src, f"stages[{stage.index}].grow: {error}") from None


def expand_kwargs(stage: Stage) -> dict:
    """zoo.expand's keyword arguments for a stage (defaults: interleave, split, seed 0)."""
    from zoo.growth import expand

    allowed = set(inspect.signature(expand).parameters)
    kwargs = {k: v for k, v in stage.grow.items() if k in allowed}
    kwargs.setdefault("seed", 0)
    return kwargs


def lr_multiplier(base, stage: Stage | None):
    """The lr multiplier of a stage's scheduler (a LambdaLR counting steps since the stage began)."""
    if stage is None:
        return base
    start, rewarm = stage.start, stage.lr_rewarm

    def multiplier(i: int) -> float:
        ramp = min(1.0, (i + 1) / rewarm) if rewarm else 1.0
        return base(start + i) * ramp

    return multiplier


# --------------------------------------------------------------------------- optimizer state


def _zero_optimizer(optimizer) -> bool:
    return hasattr(optimizer, "_lazy_init_hp_params_optimizer_state")


def _flat_groups(optimizer) -> list[torch.Tensor]:
    for attribute in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        groups = getattr(optimizer, attribute, None)
        if groups is not None:
            return list(groups)
    raise ValueError(f"cannot find the fp32 partitions of {type(optimizer).__name__}")


def check_growable(engine) -> None:
    """Refuse (clearly) an engine whose optimizer state growth cannot read and write."""
    optimizer = engine.optimizer
    if _zero_optimizer(optimizer):
        if engine.zero_optimization_stage() in (1, 2):
            return
    elif isinstance(optimizer, torch.optim.Optimizer):
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if all(id(p) in held for p in engine.module.parameters() if p.requires_grad):
            return  # a plain torch optimizer over the module's own parameters (ZeRO 0)
    raise ValueError(
        f"growth cannot carry the state of DeepSpeed's {type(optimizer).__name__} (ZeRO stage "
        f"{engine.zero_optimization_stage()}): use ZeRO 0 with torch_autocast, or ZeRO 1/2"
    )


def _on_the_cpu(value):
    """A copy on the CPU of a tensor (one at a time, as they are gathered: a GPU holds one tensor's full
    copy at most, not the whole model's weights and moments at once); other values as they are."""
    return value.to("cpu", copy=True) if torch.is_tensor(value) else value


def full_weights(engine) -> dict[str, torch.Tensor]:
    """The model's current fp32 weights by name, on the CPU (ZeRO 1/2 with bf16 keep them in the optimizer)."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param) if _zero_optimizer(engine.optimizer) else None
        out[name] = _on_the_cpu((full if full is not None else param.detach()).float())
    return out


def read_optimizer_state(engine) -> dict[str, dict]:
    """Per-parameter optimizer state by parameter name, on the CPU: {"step", "exp_avg", "exp_avg_sq", ...}."""
    optimizer = engine.optimizer
    names = {id(p): n for n, p in engine.module.named_parameters()}
    if not _zero_optimizer(optimizer):
        return {names[id(p)]: {k: _on_the_cpu(v) for k, v in state.items()}
                for p, state in optimizer.state.items() if id(p) in names and state}
    from deepspeed.utils import safe_get_full_optimizer_state

    flats = _flat_groups(optimizer)
    base = optimizer.optimizer
    if not any(base.state.get(flat) for flat in flats):
        return {}  # no step taken yet
    optimizer._hp_optimizer_states_linked = False  # (re)link the fragments to the current state tensors
    optimizer._lazy_init_hp_params_optimizer_state()
    out: dict[str, dict] = {}
    groups = optimizer.bit16_groups if hasattr(optimizer, "bit16_groups") else optimizer.bf16_groups
    for index, params in enumerate(groups):
        flat_state = base.state.get(flats[index], {})
        keys = [k for k, v in flat_state.items() if torch.is_tensor(v) and v.shape == flats[index].shape]
        scalars = {k: v for k, v in flat_state.items() if k not in keys}
        for param in params:
            state = {k: _on_the_cpu(v) for k, v in scalars.items()}
            for key in keys:
                state[key] = _on_the_cpu(safe_get_full_optimizer_state(param, key))
            out[names[id(param)]] = state
    return out


def write_optimizer_state(engine, state: dict[str, dict]) -> None:
    """Install per-parameter state (by name) into a freshly initialised engine's optimizer."""
    optimizer = engine.optimizer
    params = dict(engine.module.named_parameters())
    if not _zero_optimizer(optimizer):
        for name, values in state.items():
            param = params[name]
            # moments live with their parameter (the GPU); a scalar step count stays where it was
            optimizer.state[param] = {k: (v.to(param.device, copy=True) if torch.is_tensor(v) and v.dim() > 0
                                          else v.clone() if torch.is_tensor(v) else v) for k, v in values.items()}
        return
    from deepspeed.utils import safe_set_full_optimizer_state

    flats = _flat_groups(optimizer)
    base = optimizer.optimizer
    groups = optimizer.bit16_groups if hasattr(optimizer, "bit16_groups") else optimizer.bf16_groups
    names = {id(p): n for n, p in params.items()}
    for index, group_params in enumerate(groups):
        sample = next((state[names[id(p)]] for p in group_params if names[id(p)] in state), None)
        if sample is None:
            continue
        flat = flats[index]
        flat_state = {}
        for key, value in sample.items():
            if torch.is_tensor(value) and value.dim() > 0:
                flat_state[key] = torch.zeros_like(flat)
            else:
                flat_state[key] = value.clone() if torch.is_tensor(value) else value
        base.state[flat] = flat_state
    optimizer._hp_optimizer_states_linked = False
    optimizer._lazy_init_hp_params_optimizer_state()
    for index, group_params in enumerate(groups):
        for param in group_params:
            values = state.get(names[id(param)])
            if values is None:
                continue
            for key, value in values.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    safe_set_full_optimizer_state(param, value.to(flats[index].device, flats[index].dtype), key)
