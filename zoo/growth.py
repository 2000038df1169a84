"""Lossless small-to-large growth: `expand` a model to a larger one that computes the same function.

Recipes (section numbers refer to ../shared/specs/expansion.md):

    hidden d → D        residual stream h̃ = Q·h with Qᵀ Q = (D/d)·I (A.1): readers W·S (S Q = I), writers Q·W
    heads h → H         duplicate heads, split their out_proj columns (A.2 i)
    head size d_h → k·d_h   RoPE pair j → pair j·k (same frequency), zero query on new pairs, q × √k (A.2 ii)
    FFN f → F           duplicate units, split their fc2 columns (A.3)
    GAU e → E, s → k·s  duplicate u and v with one map; z pairs as head size, γ_q = 0 on new pairs (A.4)
    depth L → L′        insert copies of a block whose writers are zero; LayerNorm models move the
                        norm affine ("move-affine") and DeepNet rescales for α′ = (2L′)^¼ (A.5)

Q is a duplication: big coordinate i copies small coordinate i mod d, scaled by √(D/d)/√n (n copies),
which is exact for any D with the parameter-free RMS norm and is uniform duplication (scale 1) when
d divides D, the only exact choice under LayerNorm. Every grown tensor is a weighted gather of one
small tensor (a `TensorRule`), so the same rules map gradients and Adam moments (A.8, A.10.7).

Exactness is about the eval-mode function. Two consequences of the norms' ε that the recipes handle:
- tied embeddings scale by d/D (A.1); Norm(s·x) with ε·s² equals Norm(x) with ε, so the grown config
  gets `embedding_norm_eps` = ε·(d/D)²;
- DeepNet's α change is carried by dividing the LayerNorm affines by c = α′/α and multiplying the
  readers by c, which is exact with ε > 0 (scaling the writers by c, A.5, is exact only at ε = 0).
One is not removable: a post-norm block inserted for depth re-normalises an already normalised state,
and Norm(Norm(y)) ≠ Norm(y) by a relative ε(1 − m)/(2m) (RMS; m = mean(y²)) or about ε/(2·var)
(LayerNorm). Between blocks that is ≲ 5e-8 at ε = 1e-7 (below fp32 rounding) and ≈ 1e-6 at
LayerNorm's 1e-5; below layer 0 the variance is the embedding sum's, so it can be much larger. The
plan states it in `notes`, reports the change measured on a probe batch, and `expand` refuses a
result beyond `max_change`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import GrowthError
from .families import family_of
from .modeling import EncoderModel

SYMMETRIES = ("split", "none", "noise")
PLACEMENTS = ("interleave", "top", "bottom")
ALPHA_POLICIES = ("depth", "keep")
STATE_MODES = ("map", "reset")

# per-parameter optimizer state: tensors shaped like the parameter, mapped like the gradient (first
# moments) or like its square (second moments); anything else shaped like the parameter is refused
FIRST_MOMENT_KEYS = ("exp_avg", "momentum_buffer")
SECOND_MOMENT_KEYS = ("exp_avg_sq", "max_exp_avg_sq")

# task-head parameters that read the final hidden state (W·Q⁺), and those the growth leaves as they are
HEAD_READERS = ("classifier.weight", "qa_outputs.weight", "global_pointer.dense.weight",
                "global_pointer.p_dense.weight")
HEAD_UNCHANGED = ("lm_head.decoder.bias", "classifier.bias", "qa_outputs.bias", "global_pointer.dense.bias",
                  "global_pointer.p_dense.bias")

_FILL_ZERO, _FILL_INIT = 0, 1


# ----------------------------------------------------------------------------------- axis maps


@dataclass(frozen=True)
class AxisMap:
    """How one axis of a grown tensor is built from the same axis of the small tensor.

    source: small index of each big entry (−1: a new entry with no source).
    scale:  an entry is `scale` × its source when the axis is written (an output axis).
    share:  when the axis is read (an input axis), entry i carries share_i of its source; the
            shares of the copies of one source sum to 1, and entry i's weight is share_i / scale_i,
            so Σ_i weight_i · scale_i = 1: the reader reproduces the small one exactly.
    fill:   what a new entry holds on an output axis: 0 (_FILL_ZERO) or the big model's init.
    """

    source: torch.Tensor
    scale: torch.Tensor
    share: torch.Tensor
    fill: torch.Tensor

    @classmethod
    def duplicate(cls, small: int, big: int, rms_scaled: bool = False) -> AxisMap:
        """Big entry i copies small entry i mod small. With `rms_scaled` each copy of j is scaled by
        √(big/small)/√n_j, so that Qᵀ Q = (big/small)·I for any sizes (A.1, weighted duplication)."""
        source = torch.arange(big) % small
        counts = torch.bincount(source, minlength=small).to(torch.float64)
        scale = torch.ones(big, dtype=torch.float64)
        if rms_scaled:
            scale = math.sqrt(big / small) / counts[source].sqrt()
        return cls(source, scale, 1.0 / counts[source], torch.full((big,), _FILL_ZERO))

    @classmethod
    def placed(cls, source: torch.Tensor, scale: float, fill: int) -> AxisMap:
        """Entries with a given source (each source used once per copy), new entries filled by `fill`."""
        mapped = source >= 0
        counts = torch.bincount(source[mapped], minlength=int(source.max()) + 1).to(torch.float64)
        share = torch.zeros(len(source), dtype=torch.float64)
        share[mapped] = 1.0 / counts[source[mapped]]
        scale_t = torch.where(mapped, torch.full((len(source),), float(scale), dtype=torch.float64), 0.0)
        return cls(source, scale_t, share, torch.full((len(source),), fill))

    @classmethod
    def concat(cls, parts: Sequence[AxisMap], small_sizes: Sequence[int]) -> AxisMap:
        """Side-by-side axes (GAU's [u | v | z] rows): sources offset by the small part sizes."""
        offsets = [0]
        for size in small_sizes[:-1]:
            offsets.append(offsets[-1] + size)
        sources = [torch.where(p.source >= 0, p.source + off, p.source) for p, off in zip(parts, offsets)]
        return cls(torch.cat(sources), torch.cat([p.scale for p in parts]), torch.cat([p.share for p in parts]),
                   torch.cat([p.fill for p in parts]))

    @property
    def size(self) -> int:
        return len(self.source)

    @property
    def mapped(self) -> torch.Tensor:
        return self.source >= 0

    @property
    def is_identity(self) -> bool:
        same = torch.equal(self.source, torch.arange(self.size))
        return bool(same and torch.all(self.scale == 1) and torch.all(self.share == 1))

    def copy_rank(self) -> torch.Tensor:
        """0 for the first entry of each source, 1, 2, ... for its further copies, −1 for new entries."""
        order = torch.argsort(self.source, stable=True)
        ordered = self.source[order]
        starts = torch.ones_like(ordered, dtype=torch.bool)
        starts[1:] = ordered[1:] != ordered[:-1]
        position = torch.arange(self.size)
        group_start = torch.cummax(torch.where(starts, position, 0), dim=0).values
        rank = torch.empty_like(self.source)
        rank[order] = position - group_start
        return torch.where(self.mapped, rank, -1)

    def with_random_shares(self, generator: torch.Generator) -> AxisMap:
        """Unequal shares (A.8): each copy gets a weight drawn from U(0.5, 1.5), normalised per source.
        Exactly lossless, and breaks the symmetry between copies under Adam."""
        if not self.mapped.any():
            return self
        draw = 0.5 + torch.rand(self.size, generator=generator, dtype=torch.float64)
        draw = torch.where(self.mapped, draw, torch.zeros_like(draw))
        src = self.source.clamp_min(0)
        totals = torch.zeros(int(src.max()) + 1, dtype=torch.float64).index_add_(0, src, draw)
        share = torch.where(self.mapped, draw / totals[src], torch.zeros_like(draw))
        return replace(self, share=share)

    # multipliers of an entry, by role and by what is being mapped
    def multipliers(self, role: str, what: str) -> torch.Tensor:
        """Per-entry factor applied to the gathered source (0 on new entries).

        what = "value": the weights themselves; "grad": the gradient with equal shares (∂L/∂W̃ for
        W̃ = N·W·M⁺ is N⁺ᵀ·G·Mᵀ: scale/ν on an output axis, ν_j = Σ_copies scale², and scale on an
        input axis; A.10.7); "second": the square of "grad" (Adam's second moment); "step": 1, since
        an Adam step is unchanged by a positive scale on an entry's gradient and moments.
        """
        src = self.source.clamp_min(0)
        if what == "step":
            return self.mapped.to(torch.float64)
        if role == "out":
            if what == "value":
                mult = self.scale
            else:
                squares = torch.where(self.mapped, self.scale**2, 0.0)
                nu = torch.zeros(int(src.max()) + 1, dtype=torch.float64).index_add_(0, src, squares)
                mult = self.scale / nu[src].clamp_min(1e-300)
        else:
            if what == "value":
                mult = torch.where(self.mapped, self.share / torch.where(self.mapped, self.scale, 1.0), 0.0)
            else:
                mult = self.scale
        if what == "second":
            mult = mult**2
        return torch.where(self.mapped, mult, torch.zeros_like(mult))


# --------------------------------------------------------------------------------- tensor rules


@dataclass
class TensorRule:
    """One parameter of the grown model as a weighted gather of one small parameter.

    axes:   per dimension, (AxisMap, "out" | "in"), or None where the axis is unchanged.
    factor: a scalar on the value, whose gradient then carries 1/factor: the tied embeddings' d/D,
            the transform head LayerNorm's d/D, DeepNet's c = α′/α on readers and 1/c on norm affines.
    kind:   "map"  — a function-preserving image of `source` (its gradient and moments map);
            "copy" — values gathered from `source` (a block copied for depth) but a new function role:
                     its moments start at zero;
            "fill" — a constant (`fill` × factor): zeroed writers of inserted blocks, identity norms.
    """

    source: str
    axes: tuple = ()
    factor: float = 1.0
    kind: str = "map"
    fill: float = 0.0

    @property
    def is_identity(self) -> bool:
        return (
            self.kind == "map"
            and self.factor == 1.0
            and all(axis is None or axis[0].is_identity for axis in self.axes)
        )

    def gather(self, small: torch.Tensor, what: str = "value") -> tuple[torch.Tensor, ...]:
        """(gathered values in float64, mapped mask, zero mask) with the big tensor's shape.

        `mapped` marks entries with a source on every axis; `zero` marks new entries that must be 0
        (a new entry on an input axis never contributes; an output entry follows its AxisMap.fill);
        the remaining new entries keep the big model's initial values.
        """
        out = small.detach().to(torch.float64)
        mapped = torch.ones((), dtype=torch.bool)
        zero = torch.zeros((), dtype=torch.bool)
        for dim, axis in enumerate(self.axes):
            if axis is None:
                continue
            amap, role = axis
            shape = [1] * small.dim()
            shape[dim] = amap.size
            out = out.index_select(dim, amap.source.clamp_min(0).to(out.device))
            out = out * amap.multipliers(role, what).to(out.device).view(shape)
            new = (~amap.mapped).view(shape).to(out.device)
            mapped = mapped & ~new
            if role == "in":
                zero = zero | new
            else:
                zero = zero | (new & (amap.fill == _FILL_ZERO).view(shape).to(out.device))
        factor = {"value": self.factor, "grad": 1.0 / self.factor, "second": self.factor**-2, "step": 1.0}[what]
        out = out * factor
        mapped = mapped.expand(out.shape)
        zero = zero.expand(out.shape) & ~mapped
        return out, mapped, zero

    def noise_mask(self) -> torch.Tensor | None:
        """Entries that are a second or later copy on some output axis (noise targets, A.8)."""
        mask = None
        for dim, axis in enumerate(self.axes):
            if axis is None or axis[1] != "out":
                continue
            shape = [1] * len(self.axes)
            shape[dim] = axis[0].size
            later = (axis[0].copy_rank() >= 1).view(shape)
            mask = later if mask is None else (mask | later)
        return mask


# ------------------------------------------------------------------------------------ the plan


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


# ------------------------------------------------------------------------ sizes and validation


_ARGUMENTS = ("hidden_size", "num_layers", "num_heads", "head_size", "intermediate_size", "expansion_size", "key_size")


def _multiples(base: int, above: int, count: int = 3) -> str:
    first = (above // base + 1) * base
    return ", ".join(str(first + i * base) for i in range(count))


def _grown_size(argument: str, requested: int | None, current: int) -> int:
    if requested is None:
        return current
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise GrowthError(f"{argument} must be an int, got {requested!r}")
    if requested < current:
        raise GrowthError(
            f"{argument}={requested} would shrink the model (it has {current}); zoo.expand only grows: "
            f"pass a value ≥ {current}"
        )
    return requested


def _target_config(config, sizes: dict, alpha: str):
    """The grown config: same family and options, new sizes (validated with errors naming the argument)."""
    gau = config.block_type == "gau"
    if gau:
        for argument in ("num_heads", "head_size"):
            if sizes[argument] is not None:
                raise GrowthError(
                    f"{argument} does not apply to GAU-α (one single-head GAU per layer); grow its expansion "
                    "width with expansion_size and its q/k width with key_size"
                )
        both = sizes["expansion_size"], sizes["intermediate_size"]
        if None not in both and both[0] != both[1]:
            raise GrowthError(
                f"expansion_size={sizes['expansion_size']} and intermediate_size={sizes['intermediate_size']} name "
                "the same GAU width (config.intermediate_size); pass one of them"
            )
    else:
        for argument, instead in (("expansion_size", "intermediate_size (the FFN width)"), ("key_size", "head_size")):
            if sizes[argument] is not None:
                raise GrowthError(f"{argument} applies to GAU-α only; for multi-head attention grow {instead}")
    hidden = _grown_size("hidden_size", sizes["hidden_size"], config.hidden_size)
    layers = _grown_size("num_layers", sizes["num_layers"], config.num_hidden_layers)
    inner = sizes["expansion_size"] if sizes["expansion_size"] is not None else sizes["intermediate_size"]
    argument = "expansion_size" if sizes["expansion_size"] is not None else "intermediate_size"
    intermediate = _grown_size(argument, inner, config.intermediate_size)
    changes: dict[str, Any] = {"hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": intermediate}
    rope = config.position_embedding_type == "rope"

    if hidden != config.hidden_size and _needs_uniform_residual(config) and hidden % config.hidden_size:
        reason = (
            "LayerNorm's mean and variance are preserved only by uniform duplication"
            if config.norm_type == "layernorm"
            else "the MLM transform head's LayerNorm is preserved only by uniform duplication"
        )
        raise GrowthError(
            f"hidden_size={hidden} cannot be grown exactly from {config.hidden_size} for this model: {reason} "
            f"(expansion.md A.1), so hidden_size must be a multiple of {config.hidden_size}: use "
            f"{_multiples(config.hidden_size, config.hidden_size)}"
        )
    if gau:
        key = _grown_size("key_size", sizes["key_size"], config.attention_key_size)
        if rope and key % config.attention_key_size:
            raise GrowthError(
                f"key_size={key} cannot keep RoPE exact: old q/k pairs must land on new pairs of the same "
                f"frequency, which needs key_size to be a multiple of {config.attention_key_size} (expansion.md "
                f"A.4): use {_multiples(config.attention_key_size, config.attention_key_size)}, or keep key_size="
                f"{config.attention_key_size}"
            )
        changes["attention_key_size"] = key
        changes["head_size"] = None  # recomputed as hidden_size // 1; GAU does not use it
    else:
        heads = _grown_size("num_heads", sizes["num_heads"], config.num_attention_heads)
        head = _grown_size("head_size", sizes["head_size"], config.head_size)
        if rope and head % config.head_size:
            raise GrowthError(
                f"head_size={head} cannot keep RoPE exact: old q/k pairs must land on new pairs of the same "
                f"frequency, which needs head_size to be a multiple of {config.head_size} (expansion.md A.2 ii): "
                f"use {_multiples(config.head_size, config.head_size)}, or keep head_size={config.head_size} and "
                "grow num_heads"
            )
        changes["num_attention_heads"] = heads
        changes["head_size"] = head
    if config.residual == "deepnorm" and layers != config.num_hidden_layers and config.deepnorm_alpha is None:
        if alpha == "keep":
            changes["deepnorm_alpha"] = config.alpha
        elif config.norm_type != "layernorm":
            raise GrowthError(
                "this DeepNorm model has a parameter-free norm, which cannot carry the α change exactly; pass "
                f"alpha='keep' to keep α = {config.alpha:.6g} (exact), or grow without changing num_layers"
            )
    data = {**config.to_dict(), **changes}
    return type(config).from_dict(data)


def grown_config(config, hidden_size: int | None = None, num_layers: int | None = None, num_heads: int | None = None,
                 head_size: int | None = None, intermediate_size: int | None = None, expansion_size: int | None = None,
                 key_size: int | None = None, alpha: str = "depth", **_options):
    """The sizes `expand` would grow `config` to, validated as `expand` validates them (ValueError naming
    the argument), without building a model: for checking a growth plan (e.g. a recipe's stages) up front.
    The other keyword arguments of `expand` are accepted and ignored."""
    if alpha not in ALPHA_POLICIES:
        raise GrowthError(f"alpha={alpha!r} is not one of {list(ALPHA_POLICIES)}")
    sizes = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, head_size=head_size,
                 intermediate_size=intermediate_size, expansion_size=expansion_size, key_size=key_size)
    if all(value is None for value in sizes.values()):
        raise GrowthError(f"nothing to grow: pass at least one of {', '.join(_ARGUMENTS)}")
    return _target_config(config, sizes, alpha)


def _needs_uniform_residual(config) -> bool:
    """LayerNorm on the residual stream, or a transform MLM head (its own LayerNorm reads a D-wide copy)."""
    return config.norm_type == "layernorm" or config.mlm_head == "transform"


def _placement(where, old: int, new: int) -> list[int]:
    """After which old layer each new layer goes (−1 = below layer 0), in order."""
    count = new - old
    if isinstance(where, str):
        if where not in PLACEMENTS:
            raise GrowthError(f"where={where!r} is not one of {list(PLACEMENTS)} or a list of layer indices")
        if where == "interleave":
            return [i * old // count for i in range(count)] if count else []
        if where == "top":
            return [old - 1] * count
        return [-1] * count
    after = list(where)
    if len(after) != count or not all(isinstance(i, int) and -1 <= i < old for i in after):
        raise GrowthError(
            f"where={after!r}: a list needs one entry per new layer ({count}), each an old layer index in "
            f"-1 … {old - 1} after which the new layer goes (-1 = below layer 0)"
        )
    return sorted(after)


# ------------------------------------------------------------------------------ building rules


class _Recipe:
    """Builds the rules for one growth (transformer and GAU blocks, every residual scheme and head)."""

    def __init__(self, model, big_config, where, symmetry: str, generator: torch.Generator):
        self.small = model.config
        self.big = big_config
        self.symmetry = symmetry
        self.generator = generator
        self.prefix = "" if isinstance(model, EncoderModel) else model.base_model_prefix + "."
        self.small_names = [name for name, _ in model.named_parameters()]
        self.small_set = set(self.small_names)
        self.model = model
        s, b = self.small, self.big
        self.notes: list[str] = []
        self.exact = True

        uniform = b.hidden_size % s.hidden_size == 0
        self.residual = AxisMap.duplicate(s.hidden_size, b.hidden_size, rms_scaled=not uniform)
        if not uniform:
            self.notes.append(
                f"hidden {s.hidden_size} → {b.hidden_size}: weighted non-uniform duplication, each copy scaled by "
                "√(D/d)/√n so that Qᵀ Q = (D/d)·I (expansion.md A.1)"
            )

        # depth: the grown layer list and, per anchor (−1 = embeddings), the layers inserted after it
        after = _placement(where, s.num_hidden_layers, b.num_hidden_layers)
        self.layers: list[tuple[str, int]] = []  # ("old" | "new", small layer it comes from)
        self.chains: dict[int, list[int]] = {}
        for anchor in [-1] + list(range(s.num_hidden_layers)):
            if anchor >= 0:
                self.layers.append(("old", anchor))
            for _ in range(after.count(anchor)):
                self.chains.setdefault(anchor, []).append(len(self.layers))
                self.layers.append(("new", max(anchor, 0)))
        self.post_norm = s.residual in ("post", "deepnorm")
        self.affine_norm = s.norm_type == "layernorm"
        if -1 in self.chains and self.post_norm and not s.embedding_norm:
            raise GrowthError(
                "where: a post-norm layer inserted below layer 0 would normalise the (unnormalised) embedding "
                "sum and change the function (expansion.md A.5); use where='interleave' or 'top', or a list "
                "of layer indices ≥ 0"
            )

        # DeepNet α′ = (2L′)^¼: carried by norm affines ÷ c and readers × c (exact with ε > 0)
        self.c = 1.0
        if s.residual == "deepnorm" and b.alpha != s.alpha:
            self.c = b.alpha / s.alpha
            self.notes.append(
                f"DeepNorm α {s.alpha:.6g} → {b.alpha:.6g} (depth {s.num_hidden_layers} → {b.num_hidden_layers}): "
                f"LayerNorm affines feeding a residual divided by c = {self.c:.6g} and their readers multiplied by c "
                "(exact with ε > 0; expansion.md A.5 scales the writers instead, exact only at ε = 0)"
            )

        # tied embeddings and the MLM head (A.1): logits = ⟨Q h, f·Q e⟩ = f·(D/d)⟨h, e⟩
        ratio = b.hidden_size / s.hidden_size
        decoder_tied = s.tie_word_embeddings
        self.embedding_factor = 1.0
        self.head_norm_factor = 1.0
        if not s.embedding_norm:
            self.embedding_factor = 1.0 / self.c
        if s.mlm_head == "tied" and decoder_tied and ratio != 1:
            if s.embedding_norm:
                self.embedding_factor = 1.0 / ratio
            elif self._has_decoder():
                raise GrowthError(
                    "this model ties its MLM decoder to embeddings that feed the residual stream without a norm, "
                    "so no embedding scale keeps both the input and the logits: grow it with a transform MLM head "
                    "(mlm_head='transform'), untied embeddings (tie_word_embeddings=False), or an embedding norm"
                )
        if s.mlm_head == "tied" and decoder_tied and not s.embedding_norm and self.c != 1 and self._has_decoder():
            raise GrowthError(
                "this DeepNet ties its MLM decoder to embeddings without a norm, so the α change cannot be carried "
                "exactly; pass alpha='keep'"
            )
        if s.mlm_head == "transform" and decoder_tied:
            self.head_norm_factor = 1.0 / (ratio * self.embedding_factor)
        if self.embedding_factor != 1.0 and s.embedding_norm:
            eps = s.embedding_norm_eps if s.embedding_norm_eps is not None else s.layer_norm_eps
            self.big.embedding_norm_eps = eps * self.embedding_factor**2

        self._width_spaces()
        self._check_post_norm_depth()

    def _has_decoder(self) -> bool:
        return any(name.startswith("lm_head.") for name in self.small_names)

    # -- spaces of the inner widths
    def _width_spaces(self) -> None:
        s, b = self.small, self.big
        rope = s.position_embedding_type == "rope"
        self.ffn = AxisMap.duplicate(s.intermediate_size, b.intermediate_size)
        if s.block_type == "gau":
            self.z_source = _pair_placement(1, 1, s.attention_key_size, b.attention_key_size, rope)
            k = b.attention_key_size / s.attention_key_size
            self.z = AxisMap.placed(self.z_source, 1.0, _FILL_INIT)
            self.zq = AxisMap.placed(self.z_source, math.sqrt(k), _FILL_ZERO)  # γ_q = 0 on new pairs, √k fix
            self.zk = AxisMap.placed(self.z_source, 1.0, _FILL_INIT)
            if b.attention_key_size != s.attention_key_size:
                self.notes.append(
                    f"key size {s.attention_key_size} → {b.attention_key_size}: "
                    + ("old RoPE pair j at new pair j·k (same frequency), " if rope else "")
                    + f"γ_q = 0 on new dims, old γ_q × √{k:g} (expansion.md A.4)"
                )
        else:
            source = _pair_placement(s.num_attention_heads, b.num_attention_heads, s.head_size, b.head_size, rope)
            k = b.head_size / s.head_size
            self.q = AxisMap.placed(source, math.sqrt(k), _FILL_ZERO)  # zero query on new pairs, √k fix
            self.k = AxisMap.placed(source, 1.0, _FILL_INIT)
            self.v = AxisMap.placed(source, 1.0, _FILL_INIT)
            if b.head_size != s.head_size:
                self.notes.append(
                    f"head size {s.head_size} → {b.head_size}: "
                    + ("old RoPE pair j at new pair j·k (same frequency), " if rope else "")
                    + f"zero query rows on new dims, old query rows × √{k:g} (expansion.md A.2 ii)"
                )

    def _check_post_norm_depth(self) -> None:
        s = self.small
        if self.post_norm and self.chains:
            eps = s.layer_norm_eps
            self.exact = False
            kind = "LayerNorm" if self.affine_norm else "RMS norm"
            self.notes.append(
                f"depth {s.num_hidden_layers} → {self.big.num_hidden_layers}: each inserted post-norm block "
                f"re-normalises an already normalised state; with the {kind}'s ε = {eps:g} that changes it by a "
                "relative "
                + ("≈ ε/(2·variance)" if self.affine_norm else "ε(1 − m)/(2m), m the mean square")
                + "; exact at ε = 0 (expansion.md A.5)"
                + ("; the norm affine moved to the last inserted block (move-affine)" if self.affine_norm else "")
            )

    def share(self, amap: AxisMap) -> AxisMap:
        """The reading shares of one tensor: fresh unequal shares with symmetry='split', else equal."""
        return amap.with_random_shares(self.generator) if self.symmetry == "split" else amap

    # -- rules
    def rules(self) -> dict[str, TensorRule]:
        s, p = self.small, self.prefix
        rules: dict[str, TensorRule] = {}
        out = (self.residual, "out")
        # the last norm of the grown post-norm model feeds the head, so it alone is not ÷ c (A.5)
        self.last_norm = f"layers.{len(self.layers) - 1}.{self._norm_names()[-1]}" if self.post_norm else None

        # embeddings: residual writers, scaled by the tied factor (A.1)
        for table in ("word_embeddings", "token_type_embeddings", "position_embeddings"):
            name = p + f"embeddings.{table}.weight"
            if name in self.small_set:
                rules[name] = TensorRule(name, (None, out), factor=self.embedding_factor)
        if s.embedding_norm and self.affine_norm:
            for param in ("weight", "bias"):
                name = f"embeddings.norm.{param}"
                rules[p + name] = self._norm_rule(name, -1, "embeddings.norm")
        for big_layer, (origin, small_layer) in enumerate(self.layers):
            rules.update(self._block_rules(big_layer, origin == "new", small_layer))
        if s.residual == "pre" and self.affine_norm:
            for param in ("weight", "bias"):
                rules[p + f"final_norm.{param}"] = TensorRule(p + f"final_norm.{param}", (out,))
        rules.update(self._head_rules())
        return rules

    def _block_rules(self, big_layer: int, new: bool, small_layer: int) -> dict[str, TensorRule]:
        """Grown block `big_layer` from small block `small_layer`: the block itself (kind "map") or an
        inserted copy (kind "copy") whose writers are zero, so that it adds nothing (A.4, A.5)."""
        s, p, R = self.small, self.prefix, self.residual
        out = (R, "out")
        read = self.c  # every block reads a ÷ c state under DeepNet's α change
        rules: dict[str, TensorRule] = {}

        def add(suffix: str, axes: tuple, factor: float = 1.0, writer: bool = False) -> None:
            source = p + f"layers.{small_layer}.{suffix}"
            if source not in self.small_set:  # biases and offsets exist only in some configs
                return
            if new and writer:
                rule = TensorRule(source, axes, kind="fill", fill=0.0)
            else:
                rule = TensorRule(source, axes, factor=factor, kind="copy" if new else "map")
            rules[p + f"layers.{big_layer}.{suffix}"] = rule

        if s.block_type == "gau":
            sizes = [s.intermediate_size] * 2 + [s.attention_key_size]
            rows = AxisMap.concat([self.ffn, self.ffn, self.z], sizes)  # [u | v | z]; u, v share one map
            add("gau.i_dense.weight", ((rows, "out"), (self.share(R), "in")), read)
            add("gau.i_dense.bias", ((rows, "out"),))
            add("gau.o_dense.weight", (out, (self.share(self.ffn), "in")), writer=True)
            add("gau.o_dense.bias", (out,), writer=True)
            add("gau.q_scaleoffset.weight", ((self.zq, "out"),))
            add("gau.q_scaleoffset.bias", ((self.zq, "out"),))
            add("gau.k_scaleoffset.weight", ((self.zk, "out"),))
            add("gau.k_scaleoffset.bias", ((self.zk, "out"),))
        else:
            for proj, amap in (("q_proj", self.q), ("k_proj", self.k), ("v_proj", self.v)):
                add(f"self_attn.{proj}.weight", ((amap, "out"), (self.share(R), "in")), read)
                add(f"self_attn.{proj}.bias", ((amap, "out"),))
            add("self_attn.out_proj.weight", (out, (self.share(self.v), "in")), writer=True)
            add("self_attn.out_proj.bias", (out,), writer=True)
            add("ffn.fc1.weight", ((self.ffn, "out"), (self.share(R), "in")), read)
            add("ffn.fc1.bias", ((self.ffn, "out"),))
            add("ffn.fc2.weight", (out, (self.share(self.ffn), "in")), writer=True)
            add("ffn.fc2.bias", (out,), writer=True)
        if self.affine_norm:
            for norm in self._norm_names():
                for param in ("weight", "bias"):
                    rules[p + f"layers.{big_layer}.{norm}.{param}"] = self._norm_rule(
                        f"layers.{small_layer}.{norm}.{param}", big_layer, f"layers.{big_layer}.{norm}"
                    )
        return rules

    def _norm_names(self) -> tuple[str, ...]:
        return ("gau_norm",) if self.small.block_type == "gau" else ("self_attn_norm", "ffn_norm")

    def _norm_rule(self, small_name: str, big_layer: int, big_norm: str) -> TensorRule:
        """A LayerNorm affine of the grown model (move-affine and the α factor, A.5)."""
        p = self.prefix
        param = small_name.rsplit(".", 1)[1]
        out = ((self.residual, "out"),)
        if not self.post_norm:  # pre-norm: inserted blocks keep copies of their own norms (exact: zero writers)
            new = big_layer >= 0 and self.layers[big_layer][0] == "new"
            return TensorRule(p + small_name, out, kind="copy" if new else "map")
        factor = 1.0 if big_norm == self.last_norm else 1.0 / self.c
        # post-norm: a chain's anchor → identity; every inserted norm → identity except the last
        # inserted block's last norm, which takes the anchor's affine
        anchor, role = self._chain_role(big_layer, big_norm)
        if role in ("anchor", "inserted"):
            return TensorRule(p + small_name, out, kind="fill", fill=1.0 if param == "weight" else 0.0, factor=factor)
        if role == "moved":
            anchor_norm = "embeddings.norm" if anchor == -1 else f"layers.{anchor}.{self._norm_names()[-1]}"
            return TensorRule(p + f"{anchor_norm}.{param}", out, factor=factor)
        return TensorRule(p + small_name, out, factor=factor)

    def _chain_role(self, big_layer: int, big_norm: str) -> tuple[int | None, str]:
        """'anchor' (its affine moves up), 'moved' (receives it), 'inserted' (identity), or 'plain'."""
        last = self._norm_names()[-1]
        for anchor, chain in self.chains.items():
            if big_norm == "embeddings.norm" and anchor == -1:
                return anchor, "anchor"
            if big_layer >= 0 and self.layers[big_layer] == ("old", anchor) and big_norm.endswith(last):
                return anchor, "anchor"
            if big_layer in chain:
                if big_layer == chain[-1] and big_norm.endswith(last):
                    return anchor, "moved"
                return anchor, "inserted"
        return None, "plain"

    def _head_rules(self) -> dict[str, TensorRule]:
        s = self.small
        R = self.residual
        rules = {}
        for name in self.small_names:
            if name.startswith(self.prefix) and self.prefix:
                continue
            if not self.prefix and (name.startswith(("embeddings.", "layers.", "final_norm."))):
                continue
            if name.startswith("lm_head.transform.0."):
                axes = ((R, "out"), (self.share(R), "in")) if name.endswith("weight") else ((R, "out"),)
                rules[name] = TensorRule(name, axes)
            elif name.startswith("lm_head.transform.2."):
                rules[name] = TensorRule(name, ((R, "out"),), factor=self.head_norm_factor)
            elif name == "lm_head.decoder.weight":  # untied decoder: a reader
                rules[name] = TensorRule(name, (None, (self.share(R), "in")))
            elif name in HEAD_READERS:
                rules[name] = TensorRule(name, (None, (self.share(R), "in")))
            elif name in HEAD_UNCHANGED or name.startswith("global_pointer.q_dense."):
                rules[name] = TensorRule(name, ())
            else:
                raise GrowthError(
                    f"zoo.expand does not know how to grow parameter {name!r} of {type(self.model).__name__}"
                )
        return rules

    def layer_map(self) -> tuple[dict[int, int], dict[int, float]]:
        """Small layer (−1 = embeddings) → grown layer carrying its output, and the factor on it."""
        s = self.small
        mapping, factor = {}, {}
        for l in range(-1, s.num_hidden_layers):
            big = -1 if l == -1 else self.layers.index(("old", l))
            if self.post_norm and l in self.chains:
                big = self.chains[l][-1]
            mapping[l] = big
            last = l == s.num_hidden_layers - 1
            if l == -1 and not s.embedding_norm:  # the raw embedding sum: the tables' own factor
                factor[l] = self.embedding_factor
            else:
                factor[l] = 1.0 if (last or not self.post_norm) else 1.0 / self.c
        return mapping, factor


def _pair_placement(small_heads: int, big_heads: int, small_dim: int, big_dim: int, rope: bool) -> torch.Tensor:
    """Source index of every (head, dim) entry of the grown q/k/v (or GAU z) axis, −1 for new dims.

    Heads: big head a copies small head a mod h. Dims: with RoPE, old pair j goes to new pair j·k
    (θ′_{jk} = b^(−2jk/(k·d)) = θ_j, expansion.md A.2 ii); without RoPE, old dims stay first.
    """
    dims = torch.full((big_dim,), -1)
    if rope:
        k = big_dim // small_dim
        for t in range(small_dim):
            dims[2 * (t // 2) * k + t % 2] = t
    else:
        dims[:small_dim] = torch.arange(small_dim)
    heads = torch.arange(big_heads) % small_heads
    source = heads[:, None] * small_dim + dims[None, :]
    return torch.where(dims[None, :] >= 0, source, torch.tensor(-1)).flatten()


# ------------------------------------------------------------------------------------- expand


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
    recipe = _Recipe(model, big_config, where, symmetry, generator)
    rules = recipe.rules()
    layer_map, hidden_factor = recipe.layer_map()
    plan = GrowthPlan(
        small_config=config, big_config=recipe.big, rules=rules, residual=recipe.residual,
        layer_map=layer_map, hidden_factor=hidden_factor, embedding_factor=recipe.embedding_factor,
        options=dict(where=where if isinstance(where, str) else list(where), symmetry=symmetry, seed=seed,
                     noise_std=noise_std if symmetry == "noise" else None, alpha=alpha),
        exact=recipe.exact and symmetry != "noise", notes=recipe.notes,
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
        torch.manual_seed(plan.options["seed"])
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


# --------------------------------------------------------------------------------- measurement


def probe_batch(vocab_size: int, pad_token_id: int | None = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed padded batch (lengths 24 and 9, ids ≠ pad) for comparing a model with its growth."""
    generator = torch.Generator().manual_seed(seed)
    lengths = (24, 9)
    pad = 0 if pad_token_id is None else pad_token_id
    ids = torch.full((len(lengths), max(lengths)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        draw = torch.randint(0, vocab_size - 1, (n,), generator=generator)
        ids[row, :n] = draw + (draw >= pad).long()  # skip the pad id
        mask[row, :n] = 1
    return ids, mask


@torch.no_grad()
def model_outputs(model, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The comparable outputs of any zoo model: its logits (each head's), or the bare encoder's states."""
    from .modeling import EncoderForMultipleChoice

    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    if isinstance(model, EncoderForMultipleChoice):
        ids, mask = ids[:, None].expand(-1, 2, -1), mask[:, None].expand(-1, 2, -1)  # two choices
    out = model(input_ids=ids, attention_mask=mask, return_dict=True)
    if isinstance(model, EncoderModel):
        return {"last_hidden_state": out.last_hidden_state}
    return {key: value for key, value in out.items() if key in ("logits", "start_logits", "end_logits")}


def probe_change(small, big, plan: GrowthPlan) -> tuple[float, float]:
    """(max |Δ| between the small and grown model's outputs on `probe_batch`, max |small output|),
    in eval mode without gradients."""
    modes = small.training, big.training
    small.eval()
    big.eval()
    try:
        ids, mask = probe_batch(small.config.vocab_size, small.config.pad_token_id)
        a, b = model_outputs(small, ids, mask), model_outputs(big, ids, mask)
        worst = magnitude = 0.0
        for key, value in a.items():
            last = small.config.num_hidden_layers - 1
            expected = plan.expand_hidden(value, last) if key == "last_hidden_state" else value
            finite = expected.abs() < 1e11  # GlobalPointer's masked spans hold −1e12 in both
            worst = max(worst, float((b[key].double() - expected.double()).abs()[finite].max()))
            magnitude = max(magnitude, float(expected.double().abs()[finite].max()))
        return worst, magnitude
    finally:
        small.train(modes[0])
        big.train(modes[1])


# ---------------------------------------------------------------------------- optimizer growth


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
    import inspect

    accepted = inspect.signature(type(optimizer).__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    defaults = {k: v for k, v in optimizer.defaults.items() if takes_any or k in accepted}
    grown = type(optimizer)(groups, **defaults)
    by_name = {small_names[id(p)]: state for p, state in optimizer.state.items() if id(p) in small_names}
    for name, state in plan.map_optimizer_state(by_name, mode).items():
        grown.state[big_params[name]] = state
    return grown


# ------------------------------------------------------------------------------------------ CLI


def cmd_expand(args) -> int:
    from .convert.atomic_folder import atomic_folder, check_target
    from .pretrained import from_pretrained, load_tokenizer, publish
    from .registry import Registry, check_name, check_version, parse_ref

    if args.out is None and args.publish is None:
        print("zoo expand: error: give --out DIR and/or --publish NAME@VERSION", file=sys.stderr)
        return 1
    name = version = None
    if args.publish is not None:
        name, version = parse_ref(args.publish)
        if version is None:
            print(f"zoo expand: error: --publish needs NAME@VERSION, got {args.publish!r}", file=sys.stderr)
            return 1
        check_name(name)
        check_version(version)
        if version in Registry(args.registry).versions(name):
            print(f"zoo expand: error: {name}@{version} is already published; versions are immutable",
                  file=sys.stderr)
            return 1
    if args.out is not None:
        try:
            check_target(Path(args.out), args.overwrite)
        except FileExistsError as error:
            print(f"zoo expand: error: {error}", file=sys.stderr)
            return 1
    where = args.where
    if where not in PLACEMENTS:
        try:
            where = [int(part) for part in where.split(",") if part.strip()]
        except ValueError:
            raise GrowthError(
                f"--where expects one of {', '.join(PLACEMENTS)} or comma-separated layer indices, got {args.where!r}"
            ) from None
    max_change = None if args.max_change.lower() == "none" else float(args.max_change)
    model = from_pretrained(args.src, task=args.task, registry=args.registry)
    try:
        tokenizer = load_tokenizer(args.src, registry=args.registry)
    except FileNotFoundError:
        tokenizer = None
    big, plan = expand(
        model, hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
        head_size=args.head_size, intermediate_size=args.intermediate_size, expansion_size=args.expansion_size,
        key_size=args.key_size, where=where, symmetry=args.symmetry, seed=args.seed, noise_std=args.noise_std,
        alpha=args.alpha, max_change=max_change, return_plan=True,
    )
    record = {"source": str(args.src), **plan.summary()}
    if args.out is not None:
        with atomic_folder(args.out, overwrite=args.overwrite) as staging:
            big.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            (staging / "growth.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    if name is not None:
        record_json = json.dumps(record, indent=2, ensure_ascii=False)
        card = f"## Growth\n\nGrown with `zoo.expand` from `{args.src}`:\n\n```json\n{record_json}\n```"
        ref = publish(big, tokenizer, name=name, version=version, card=card, registry=args.registry)
        print(f"published {ref}")
    s, b = plan.small_config, plan.big_config
    print(f"grew {family_of(s)}: hidden {s.hidden_size} → {b.hidden_size}, layers {s.num_hidden_layers} → "
          f"{b.num_hidden_layers}, parameters {model.num_parameters():,} → {big.num_parameters():,}; "
          f"max |Δ output| on the probe batch {plan.probe_max_abs_change:.3e}")
    for note in plan.notes:
        print(f"  note: {note}")
    return 0


def register_cli(subparsers) -> None:
    from .families import TASKS

    parser = subparsers.add_parser("expand", help="grow a model to a larger one with the same function (zoo.expand)")
    parser.add_argument("src", help="a registry name, NAME@VERSION, model folder or Hub id")
    parser.add_argument("--task", default="masked-lm", choices=list(TASKS), help="the head to load and grow")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--num-heads", type=int)
    parser.add_argument("--head-size", type=int)
    parser.add_argument("--intermediate-size", type=int, help="FFN width (GAU: expansion width e)")
    parser.add_argument("--expansion-size", type=int, help="GAU expansion width e")
    parser.add_argument("--key-size", type=int, help="GAU q/k width s")
    parser.add_argument("--where", default="interleave",
                        help="depth placement: interleave, top, bottom, or comma-separated old layer indices "
                             "after which each new layer goes (-1 = bottom)")
    parser.add_argument("--symmetry", default="split", choices=SYMMETRIES,
                        help="split: unequal shares (exact); none: equal shares; noise: equal shares + noise")
    parser.add_argument("--noise-std", type=float, default=1e-3, help="relative noise for --symmetry noise")
    parser.add_argument("--alpha", default="depth", choices=ALPHA_POLICIES,
                        help="DeepNet α: follow the new depth or keep the old one")
    parser.add_argument("--max-change", default="1e-4",
                        help="refuse a grown model whose probe outputs differ by more than this × max(1, |output|) "
                             "(post-norm depth growth is exact only up to the norms' ε); 'none' to accept any")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the grown model (save_pretrained folder) here")
    parser.add_argument("--publish", metavar="NAME@VERSION", help="publish the grown model into the registry")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.set_defaults(fn=cmd_expand)


__all__ = ["AxisMap", "GrowthPlan", "TensorRule", "expand", "expand_optimizer", "grown_config", "probe_batch",
           "probe_change", "register_cli"]
