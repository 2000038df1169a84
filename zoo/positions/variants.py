"""`PositionVariant`: one inference-time position/attention variant for a model trained at length N
(extrapolation.md B.6), and the attention context it builds for one forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import AttentionMask, log_length_scale
from ..errors import PositionError
from ..rope import rope_cos_sin, rope_inv_freq
from .context import DEFAULT_SCORE_BUDGET, ClippedRelative, PositionAttentionContext, logn_dagger_scale, visible_key_counts
from .scaling import (
    ROPE_SCALINGS,
    check_ntk_dim,
    ntk_dynamic_inv_freq,
    ntk_fixed_inv_freq,
    ntk_inv_freq,
    ntk_mixed_inv_freq,
    pi_inv_freq,
    yarn_inv_freq,
    yarn_mscale,
)


@dataclass(frozen=True)
class PositionVariant:
    """One inference-time position/attention variant for a model trained at `train_length` (B.6).

    Build with `variant(name, train_length, **options)`; pass as `model(..., position_variant=v)`.
    """

    name: str
    train_length: int
    rope_scaling: str = "none"
    logn: str | None = None  # None, "dagger" (test-time max(1, log_N n)) or "train" (the checkpoint's own)
    window: int | None = None
    sink: int = 0
    rerope_window: int | None = None
    leaky_factor: float | None = None  # Leaky ReRoPE's k; None = ReRoPE (k = ∞)
    leaky_auto: bool = False  # k = max(1, (L−1−w)/(N−1−w)) from the current length (B.5)
    ntk_mixed_exponent: float = 0.625
    dynamic_factor: float = 2.0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    chunk_size: int | None = None
    max_score_elements: int = DEFAULT_SCORE_BUDGET

    def __post_init__(self):
        if not isinstance(self.train_length, int) or isinstance(self.train_length, bool) or self.train_length < 2:
            raise PositionError(f"position variant {self.name!r}: train_length must be an int ≥ 2, got {self.train_length!r}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise PositionError(f"position variant {self.name!r}: rope_scaling {self.rope_scaling!r} is not one of {ROPE_SCALINGS}")
        if self.window is not None and self.window < 1:
            raise PositionError(f"position variant {self.name!r}: window must be ≥ 1, got {self.window}")
        if self.rerope_window is not None and self.rerope_window < 1:
            raise PositionError(f"position variant {self.name!r}: ReRoPE window must be ≥ 1, got {self.rerope_window}")
        if self.leaky_factor is not None and self.leaky_factor < 1:
            raise PositionError(f"position variant {self.name!r}: Leaky ReRoPE k must be ≥ 1, got {self.leaky_factor}")
        if self.leaky_auto and self.rerope_window is not None and self.rerope_window >= self.train_length - 1:
            raise PositionError(f"position variant {self.name!r}: k = (L−1−w)/(N−1−w) needs w < N − 1 = {self.train_length - 1}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise PositionError(f"position variant {self.name!r}: chunk_size must be ≥ 1, got {self.chunk_size}")

    # -- compatibility with a model
    def check(self, config) -> None:
        """Raise ValueError, naming this variant, if it cannot apply to a model with `config`."""
        rope = config.position_embedding_type == "rope"
        if (self.rope_scaling != "none" or self.rerope_window is not None) and not rope:
            raise PositionError(f"position variant {self.name!r} changes RoPE, but the model has "
                             f"position_embedding_type={config.position_embedding_type!r}")
        norm = config.attention_normalization
        if self.logn == "train" and norm != "softmax_plus":
            raise PositionError(f"position variant {self.name!r}: logn_train needs a checkpoint trained with log n "
                             f"(attention_normalization='softmax_plus'); this model uses {norm!r}")
        if self.logn == "dagger" and norm == "softmax_plus":
            raise PositionError(f"position variant {self.name!r}: the model already scales by log n (softmax_plus); "
                             "use logn_train (or no log-n part) instead of logn_dagger")
        if self.logn == "dagger" and norm == "relu2":
            raise PositionError(f"position variant {self.name!r}: log n† rescales softmax logits; relu² attention is "
                             "positively homogeneous, so a temperature cannot change it (B.2)")
        if self.rope_scaling in ("ntk", "ntk_dynamic"):
            check_ntk_dim(config.rope_dim)

    # -- the per-call pieces
    def kappa(self, seq_len: int) -> float:
        """κ = max(1, L/N) (B.5)."""
        return max(1.0, seq_len / self.train_length)

    def inv_freq(self, dim: int, base: float, seq_len: int, lengths: torch.Tensor | None = None,
                 device=None) -> tuple[torch.Tensor, float | torch.Tensor]:
        """(inv_freq in float64 on `device`, mscale: 1.0, or YaRN's as a tensor) of this variant at sequence
        length `seq_len`.

        Dynamic NTK takes one base per row from `lengths` [B] (the valid tokens of each row; by default
        `seq_len`).
        """
        kappa = self.kappa(seq_len)
        scaling = self.rope_scaling
        if scaling == "none" or (kappa == 1.0 and scaling != "ntk_dynamic"):
            return rope_inv_freq(dim, base, device), 1.0
        if scaling == "pi":
            return pi_inv_freq(dim, base, kappa, device), 1.0
        if scaling == "ntk":
            return ntk_inv_freq(dim, base, kappa, device), 1.0
        if scaling == "ntk_fixed":
            return ntk_fixed_inv_freq(dim, base, kappa, device), 1.0
        if scaling == "ntk_mixed":
            return ntk_mixed_inv_freq(dim, base, kappa, self.ntk_mixed_exponent, device=device), 1.0
        if scaling == "ntk_dynamic":
            lengths = torch.full((1,), seq_len, device=device) if lengths is None else lengths.to(device)
            return ntk_dynamic_inv_freq(dim, base, lengths, self.train_length, self.dynamic_factor), 1.0
        return (yarn_inv_freq(dim, base, kappa, self.train_length, self.yarn_beta_fast, self.yarn_beta_slow, device=device),
                yarn_mscale(kappa, device))

    def leaky_k(self, seq_len: int) -> float | None:
        """Leaky ReRoPE's k at this length (None = ReRoPE, k = ∞)."""
        if self.leaky_auto:
            return max(1.0, (seq_len - 1 - self.rerope_window) / (self.train_length - 1 - self.rerope_window))
        return self.leaky_factor

    def context(self, encoder, key_valid: torch.Tensor | None, seq_len: int, position_ids: torch.Tensor | None,
                dtype: torch.dtype, device: torch.device) -> PositionAttentionContext:
        """The attention context of one forward pass of `encoder` (an EncoderModel) under this variant."""
        config = encoder.config
        self.check(config)
        for width, what in ((self.window, "window"), (self.rerope_window, "ReRoPE window")):
            if width is not None and width >= seq_len:
                raise PositionError(
                    f"position variant {self.name!r}: {what} {width} is larger than the sequence: a {seq_len}-token "
                    f"input has relative distances up to {seq_len - 1}, so the {what} would change nothing"
                )
        mask = AttentionMask(key_valid=key_valid, window=self.window, sink=self.sink if self.window is not None else 0)
        visible = visible_key_counts(mask.key_valid, seq_len, mask.window, mask.sink, device)  # (padding alone sees every key)
        row_scale = None
        if config.attention_normalization == "softmax_plus":  # the checkpoint's own log n, over visible keys
            row_scale = log_length_scale(visible, config.softmax_plus_base, config.softmax_plus_min_len)
        elif self.logn == "dagger":
            row_scale = logn_dagger_scale(visible, self.train_length)
        if row_scale is not None and mask.window is None:
            row_scale = row_scale[..., :1, :]  # the same for every row: keep the [B, 1, 1, 1] shape
        cos = sin = None
        clipped = None
        if encoder.rotary is not None:
            positions = _positions(position_ids, seq_len, device)
            lengths = key_valid.sum(-1) if key_valid is not None and self.rope_scaling == "ntk_dynamic" else None
            inv_freq, mscale = self.inv_freq(encoder.rotary.dim, encoder.rotary.base, seq_len, lengths, device)
            cos, sin = rope_cos_sin(positions, inv_freq, dtype, mscale)
            cos, sin = cos[:, None], sin[:, None]  # [B or 1, 1, S, d/2]: broadcast over heads
            if self.rerope_window is not None:
                clipped = self._clipped(positions, inv_freq, seq_len, dtype)
        return PositionAttentionContext(
            mask=mask, cos=cos, sin=sin, row_scale=row_scale, backend=config.active_attention_backend, clipped=clipped,
            visible=visible, chunk_size=self.chunk_size, max_score_elements=self.max_score_elements,
        )

    def _clipped(self, positions: torch.Tensor, inv_freq: torch.Tensor, seq_len: int, dtype) -> ClippedRelative:
        w = float(self.rerope_window)
        k = self.leaky_k(seq_len)
        if k is None:  # ReRoPE: near = position 0, far = position w (B.5)
            near, far = torch.zeros_like(positions), torch.full_like(positions, w)
        else:  # Leaky ReRoPE: near = p/k, far = (p + w(k−1))/k
            near, far = positions / k, (positions + w * (k - 1)) / k
        near_cos, near_sin = rope_cos_sin(near, inv_freq, dtype)
        far_cos, far_sin = rope_cos_sin(far, inv_freq, dtype)
        return ClippedRelative(
            window=self.rerope_window, positions=positions,
            near_cos=near_cos[:, None], near_sin=near_sin[:, None], far_cos=far_cos[:, None], far_sin=far_sin[:, None],
        )


def _positions(position_ids: torch.Tensor | None, seq_len: int, device) -> torch.Tensor:
    """Positions as float64 [B or 1, S] (natural 0 … S−1 by default)."""
    if position_ids is None:
        return torch.arange(seq_len, dtype=torch.float64, device=device)[None]
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    if position_ids.shape[-1] != seq_len:
        raise PositionError(f"position_ids have length {position_ids.shape[-1]}, the input has {seq_len} tokens")
    return position_ids.to(device=device, dtype=torch.float64)
