"""Training-time random positions for the pretraining collator (extrapolation.md B.3): Ruoss et al.'s
sorted random subset and Su's equal-mean floating positions."""

from __future__ import annotations

import torch

from ..errors import PositionError


def _draw_device(device, generator: torch.Generator | None):
    """`device`, or by default the generator's (not torch's default device: a draw must be on its generator's)."""
    return generator.device if device is None and generator is not None else device


def sample_ruoss_positions(batch: int, seq_len: int, max_position: int, generator: torch.Generator | None = None,
                           device=None) -> torch.Tensor:
    """Ruoss et al. randomized positions: per row, `seq_len` distinct integers drawn uniformly without
    replacement from [0, max_position), sorted ascending (B.3; DeepMind's `noise_max_length`). int64 [B, S]."""
    if seq_len < 1 or batch < 1:
        raise PositionError(f"batch and seq_len must be ≥ 1, got batch={batch}, seq_len={seq_len}")
    if max_position < seq_len:
        raise PositionError(f"Ruoss positions: max_position={max_position} is smaller than seq_len={seq_len}; "
                         "distinct positions need max_position ≥ seq_len (the paper uses L ≫ the test length)")
    keys = torch.rand(batch, max_position, generator=generator, device=_draw_device(device, generator))
    return keys.topk(seq_len, dim=-1).indices.sort(dim=-1).values.to(torch.int64)


def sample_equal_mean_positions(batch: int, seq_len: int, generator: torch.Generator | None = None,
                                mean_span: float | None = None, device=None) -> torch.Tensor:
    """Su's equal-mean random positions: per row a span n' ~ Exponential(mean = `mean_span`, default
    seq_len), then positions linspace(0, 1, seq_len)·n' (B.3, B.6 `randpos_equalmean_exp`). float64 [B, S].

    The positions are floats, so they suit functional encodings (RoPE) only.
    """
    if seq_len < 1 or batch < 1:
        raise PositionError(f"batch and seq_len must be ≥ 1, got batch={batch}, seq_len={seq_len}")
    mean = float(seq_len if mean_span is None else mean_span)
    if not mean > 0:
        raise PositionError(f"equal-mean positions: mean_span must be positive, got {mean_span}")
    device = _draw_device(device, generator)
    spans = torch.empty(batch, dtype=torch.float64, device=device).exponential_(1.0 / mean, generator=generator)
    grid = torch.linspace(0.0, 1.0, seq_len, dtype=torch.float64, device=device)
    return grid[None, :] * spans[:, None]
