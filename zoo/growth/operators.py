"""The function-preserving operators every growth recipe is built from (expansion.md A.1–A.4).

An `AxisMap` says how one axis of a grown tensor is gathered from the same axis of the small tensor
(Q for the residual stream, duplication of units and heads, frequency-matched RoPE pairs); a
`TensorRule` is one grown parameter as a weighted gather of one small parameter along its axes.
The same rules map values, gradients and Adam moments (A.8, A.10.7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

# what a new entry on an output axis holds: 0, or the grown model's own initial value
FILL_ZERO, FILL_INIT = 0, 1


# ----------------------------------------------------------------------------------- axis maps


@dataclass(frozen=True)
class AxisMap:
    """How one axis of a grown tensor is built from the same axis of the small tensor.

    source: small index of each big entry (−1: a new entry with no source).
    scale:  an entry is `scale` × its source when the axis is written (an output axis).
    share:  when the axis is read (an input axis), entry i carries share_i of its source; the
            shares of the copies of one source sum to 1, and entry i's weight is share_i / scale_i,
            so Σ_i weight_i · scale_i = 1: the reader reproduces the small one exactly.
    fill:   what a new entry holds on an output axis: 0 (FILL_ZERO) or the big model's init.
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
        return cls(source, scale, 1.0 / counts[source], torch.full((big,), FILL_ZERO))

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
        # on the tensor's device: a rule with no axis (a head's bias) never moves them, and expanded they are
        # the masks of a parameter that may be on a GPU
        mapped = torch.ones((), dtype=torch.bool, device=out.device)
        zero = torch.zeros((), dtype=torch.bool, device=out.device)
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
                zero = zero | (new & (amap.fill == FILL_ZERO).view(shape).to(out.device))
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


# -------------------------------------------------------------------------- RoPE pair placement


def pair_placement(small_heads: int, big_heads: int, small_dim: int, big_dim: int, rope: bool) -> torch.Tensor:
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
