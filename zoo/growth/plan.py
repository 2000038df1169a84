"""What `expand` decided (`GrowthPlan`), and how it carries a training state through the growth:
hidden states, gradients and optimizer moments mapped by the same rules (expansion.md A.8, A.10.7)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import GrowthError
from ..families import family_of
from .operators import AxisMap, TensorRule

STATE_MODES = ("map", "reset")

# per-parameter optimizer state: tensors shaped like the parameter, mapped like the gradient (first
# moments) or like its square (second moments); anything else shaped like the parameter is refused
FIRST_MOMENT_KEYS = ("exp_avg", "momentum_buffer")
SECOND_MOMENT_KEYS = ("exp_avg_sq", "max_exp_avg_sq")


def grown_as_trainable_on_the_cpu(fn):
    """Run a growth function as it is written, whatever the caller set around it: tensors made without a
    device on the CPU (its maps, masks and random draws from CPU generators; not the CUDA device a
    `torch.set_default_device("cuda")` or `with torch.device("cuda"):` names, where a draw from a CPU
    generator fails), and ordinary tensors, not inference ones (inside `torch.inference_mode()` the grown
    parameters and optimizer state would be inference tensors, which training refuses). The grown
    model is moved to the small one's device."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.device("cpu"), torch.inference_mode(False):
            return fn(*args, **kwargs)

    return run


@dataclass
class GrowthPlan:
    """Everything `expand` decided: the grown config, one rule per grown parameter, where each small
    layer's output lives in the grown model, and what was measured.

    rules:           grown parameter name → TensorRule (names as in `model.named_parameters()`).
    residual:        Q, the residual-stream AxisMap (big coordinate ← small coordinate × scale).
    layer_map:       small layer l (−1 = embeddings) → the grown layer whose output equals Q·(its output).
    hidden_factor:   small layer l → scalar on that output in the grown model (1/c under DeepNet's α change).
    embedding_factor: the tied embedding scale (d/D) or 1; applies to hidden_states[0] without an embedding norm.
    exact:           False when a recipe is exact only up to the norms' ε or when noise was added.
    notes:           human-readable statements of every approximation and choice.
    probe_max_abs_change: max |Δ output| between the small and grown model on a fixed probe batch.
    """

    small_config: Any
    big_config: Any
    rules: dict[str, TensorRule]
    residual: AxisMap
    layer_map: dict[int, int]
    hidden_factor: dict[int, float]
    embedding_factor: float
    options: dict
    exact: bool = True
    notes: list[str] = field(default_factory=list)
    probe_max_abs_change: float | None = None

    # -- hidden states
    def expand_hidden(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """The grown model's state where the small model has `hidden` after layer `layer` (−1 = embeddings)."""
        mult = self.residual.multipliers("out", "value").to(hidden.device, hidden.dtype)
        return hidden.index_select(-1, self.residual.source.to(hidden.device)) * mult * self.hidden_factor[layer]

    # -- tensors
    def map_tensors(self, small: Mapping[str, torch.Tensor], what: str = "grad") -> dict[str, tuple]:
        """Map per-parameter tensors of the small model onto the grown model's parameters: gradients
        (what="grad"), their squares ("second"), or Adam steps ("step": with moments mapped by
        `map_optimizer_state`, each mapped entry takes its source's step). Returns name → (tensor,
        mapped mask); entries outside the mask (new entries, copied and filled tensors) are 0."""
        out = {}
        for name, rule in self.rules.items():
            if rule.kind != "map" or rule.source not in small:
                continue
            values, mapped, _ = rule.gather(small[rule.source], what)
            out[name] = (torch.where(mapped, values, 0.0), mapped)
        return out

    def pullback(self, big: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The small-model parameters a grown model corresponds to, read from the first copy of every
        entry (inverse of the value map). Meaningful while the grown model is still an image of a small
        one (equal shares, no noise, no dropout): then `expand` of the result gives back `big`."""
        out = {}
        for name, rule in self.rules.items():
            if rule.kind != "map":
                continue
            tensor = big[name].detach().to(torch.float64) / rule.factor
            for dim, axis in enumerate(rule.axes):
                if axis is None:
                    continue
                amap, role = axis
                index = torch.nonzero(amap.copy_rank() == 0).flatten()
                index = index[amap.source[index].argsort()]  # the first copy of small entry 0, 1, 2, ...
                mult = amap.multipliers(role, "value")[index]
                shape = [1] * tensor.dim()
                shape[dim] = len(index)
                tensor = tensor.index_select(dim, index.to(tensor.device)) / mult.to(tensor.device).view(shape)
            out[rule.source] = tensor
        return out

    # -- optimizer state (A.8)
    @grown_as_trainable_on_the_cpu
    def map_optimizer_state(self, state: Mapping[str, Mapping[str, Any]], mode: str = "map") -> dict[str, dict]:
        """Per-parameter optimizer state of the small model → that of the grown model, by parameter name.

        `state[name]` holds e.g. {"exp_avg", "exp_avg_sq", "step"} (torch Adam/AdamW, our Lamb). Modes:
        - "map":   first moments map like the gradient, second moments like its square, so the first
                   Adam step of every mapped entry is the small step, copied (no spike). Entries with no
                   image (new entries, copied blocks, zeroed writers, identity norms) start with a zero
                   first moment and the mean mapped second moment v̄ of their tensor: their first step is
                   (1 − β1)·|g|/√v̄·lr, of the order of (1 − β1)·lr, where a zero second moment at a large
                   step count would give up to (1 − β1)/√(1 − β2) ≈ 3.2·lr.
        - "reset": every tensor the growth changed starts from zero moments and step 0 (A.8's "practical
                   default", to pair with an LR re-warm-up); unchanged tensors keep their state.
        The step count is copied ("map") or reset to 0 with the type it had.
        """
        if mode not in STATE_MODES:
            raise GrowthError(f"mode={mode!r} is not one of {list(STATE_MODES)}")
        out: dict[str, dict[str, Any]] = {}
        for name, rule in self.rules.items():
            if rule.source not in state:
                continue
            small_state = state[rule.source]
            mapped_state: dict[str, Any] = {}
            reset = mode == "reset" and not rule.is_identity
            for key, value in small_state.items():
                if not torch.is_tensor(value) or value.dim() == 0:
                    mapped_state[key] = _zero_like_scalar(value) if reset else _clone(value)
                    continue
                if key not in FIRST_MOMENT_KEYS and key not in SECOND_MOMENT_KEYS:
                    raise GrowthError(
                        f"optimizer state {key!r} of parameter {rule.source!r} is a tensor of shape "
                        f"{tuple(value.shape)}; growth maps only {list(FIRST_MOMENT_KEYS + SECOND_MOMENT_KEYS)}"
                    )
                mapped_state[key] = self._map_moment(rule, value, second=key in SECOND_MOMENT_KEYS, reset=reset)
            out[name] = mapped_state
        return out

    def _map_moment(self, rule: TensorRule, value: torch.Tensor, second: bool, reset: bool) -> torch.Tensor:
        dtype, device = value.dtype, value.device
        gathered, mapped, _ = rule.gather(value, "second" if second else "grad")
        if reset:
            return torch.zeros(gathered.shape, dtype=dtype, device=device)
        if not second:
            if rule.kind != "map":
                return torch.zeros(gathered.shape, dtype=dtype, device=device)
            return torch.where(mapped, gathered, 0.0).to(dtype)
        mean = gathered[mapped].mean() if mapped.any() else gathered.new_zeros(())
        if rule.kind == "fill":
            moment = torch.full_like(gathered, float(mean))
        else:
            moment = torch.where(mapped, gathered, mean)
        return moment.to(dtype)

    # -- reporting
    def summary(self) -> dict:
        """A JSON-ready record of the growth (written next to a grown model by the CLI)."""
        small, big = self.small_config, self.big_config
        sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_size", "intermediate_size",
                 "attention_key_size")
        return {
            "family": family_of(small),
            "from": {k: getattr(small, k) for k in sizes},
            "to": {k: getattr(big, k) for k in sizes},
            "options": dict(self.options),
            "exact": self.exact,
            "notes": list(self.notes),
            "probe_max_abs_change": self.probe_max_abs_change,
            "layer_map": {str(k): v for k, v in self.layer_map.items()},
        }


def _clone(value):
    return value.clone() if torch.is_tensor(value) else value


def _zero_like_scalar(value):
    if torch.is_tensor(value):
        return torch.zeros_like(value)
    return type(value)(0) if isinstance(value, (int, float)) else value


# ---------------------------------------------------------------------------- optimizer growth


@grown_as_trainable_on_the_cpu
def expand_optimizer(optimizer: torch.optim.Optimizer, small_model: nn.Module, big_model: nn.Module,
                     plan: GrowthPlan, mode: str = "map") -> torch.optim.Optimizer:
    """A torch optimizer of the same class and hyper-parameters over `big_model`, holding the small
    optimizer's state grown by `plan.map_optimizer_state` (each grown parameter joins the group of the
    small parameter it comes from)."""
    small_names = {id(p): name for name, p in small_model.named_parameters()}
    big_params = dict(big_model.named_parameters())
    group_of: dict[str, int] = {}
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) not in small_names:
                raise GrowthError("the optimizer holds a parameter that is not in small_model")
            group_of[small_names[id(p)]] = index
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": []} for g in optimizer.param_groups]
    for name, rule in plan.rules.items():
        if rule.source in group_of:
            groups[group_of[rule.source]]["params"].append(big_params[name])
    # torch keeps some internal flags in `defaults` that its constructor does not take (AdamW's
    # decoupled_weight_decay): pass only what the constructor accepts
    accepted = inspect.signature(type(optimizer).__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    defaults = {k: v for k, v in optimizer.defaults.items() if takes_any or k in accepted}
    grown = type(optimizer)(groups, **defaults)
    by_name = {small_names[id(p)]: state for p, state in optimizer.state.items() if id(p) in small_names}
    for name, state in plan.map_optimizer_state(by_name, mode).items():
        grown.state[big_params[name]] = state
    return grown

