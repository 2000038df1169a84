"""RoPE frequency rules for length extrapolation (extrapolation.md B.5): position interpolation, NTK
and Su's two refinements, dynamic NTK, YaRN. Each maps (d, base, κ = max(1, L/N)) to θ in float64, made
on the device it is asked for."""

from __future__ import annotations

import math

import torch

from ..errors import PositionError
from ..rope import rope_inv_freq

ROPE_SCALINGS = ("none", "pi", "ntk", "ntk_fixed", "ntk_mixed", "ntk_dynamic", "yarn")


def pi_inv_freq(dim: int, base: float, kappa: float, device=None) -> torch.Tensor:
    """Position interpolation: pos → pos·N/L, i.e. every θ_i divided by κ (B.5 PI)."""
    return rope_inv_freq(dim, base, device) / kappa


def ntk_inv_freq(dim: int, base: float, kappa: float, device=None) -> torch.Tensor:
    """NTK-aware (bloc97): the base becomes b' = b·κ^(d/(d−2)) (B.5)."""
    check_ntk_dim(dim)
    return rope_inv_freq(dim, base * kappa ** (dim / (dim - 2)), device)


def ntk_fixed_inv_freq(dim: int, base: float, kappa: float, device=None) -> torch.Tensor:
    """Su's NTK-fixed: θ_m = 1/(λ·(βλ)^(m−1)), β = b^(2/d), λ = κ^(2/d), m = 1 … d/2 (B.5).

    Equals θ_p·λ^−(p+1) for p = m − 1: the extra 1/λ keeps the lowest frequency at exactly θ/κ.
    """
    lam = kappa ** (2.0 / dim)
    p = torch.arange(dim // 2, dtype=torch.float64, device=device)
    return rope_inv_freq(dim, base, device) * lam ** -(p + 1)


def ntk_mixed_inv_freq(dim: int, base: float, kappa: float, exponent: float = 0.625, device=None) -> torch.Tensor:
    """Su's NTK-mixed: θ_p·exp(−a·(p+1)^b'), a = ln κ / (d/2)^b' (B.5; b' = 0.625 in his GAU runs).

    ln κ is taken of a tensor: under torch.compile κ is symbolic in the length, and `math.log` would fix it
    to one value, so that every new length compiled the model again."""
    a = torch.scalar_tensor(kappa, dtype=torch.float64, device=device).log() / (dim / 2) ** exponent
    p = torch.arange(dim // 2, dtype=torch.float64, device=device)
    return rope_inv_freq(dim, base, device) * torch.exp(-a * (p + 1) ** exponent)


def ntk_dynamic_inv_freq(dim: int, base: float, lengths: torch.Tensor, train_length: int, factor: float = 2.0) -> torch.Tensor:
    """Dynamic NTK (HF/vLLM form, B.5): b' = b·((s·ℓ/N) − (s−1))^(d/(d−2)) with ℓ = max(length, N).

    `lengths` [B] → inv_freq [B, 1, d/2] (one base per row), on the device of `lengths`.
    """
    check_ntk_dim(dim)
    ell = lengths.to(torch.float64).clamp_min(train_length)
    bases = base * ((factor * ell / train_length) - (factor - 1)) ** (dim / (dim - 2))
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=lengths.device) / dim
    return bases[:, None, None] ** -exponent


def yarn_inv_freq(dim: int, base: float, kappa: float, train_length: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0, device=None) -> torch.Tensor:
    """YaRN frequencies (B.5): a ramp over pair index p between θ (extrapolate) and θ/κ (interpolate).

    dim(r) = d·ln(N/(2πr)) / (2 ln b); low = ⌊dim(β_fast)⌋, high = ⌈dim(β_slow)⌉ (clamped to [0, d−1]);
    γ_p = clamp((p − low)/(high − low), 0, 1); θ' = θ/κ·γ + θ·(1 − γ).
    """
    def correction_dim(rotations: float) -> float:
        return dim * math.log(train_length / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # as the reference code: avoid a zero-width ramp
    p = torch.arange(dim // 2, dtype=torch.float64, device=device)
    ramp = ((p - low) / (high - low)).clamp(0.0, 1.0)
    extrapolated = rope_inv_freq(dim, base, device)
    return extrapolated / kappa * ramp + extrapolated * (1 - ramp)


def yarn_mscale(kappa: float, device=None) -> torch.Tensor:
    """YaRN attention temperature on cos and sin: 0.1·ln κ + 1, and 1 for κ ≤ 1 (logits × its square,
    B.5), as a float64 scalar tensor on `device`: under torch.compile κ is symbolic in the length, and
    `math.log` would fix it to one value, so that every new length compiled the model again."""
    return torch.scalar_tensor(kappa, dtype=torch.float64, device=device).clamp_min(1.0).log() * 0.1 + 1.0


def check_ntk_dim(dim: int) -> None:
    """NTK scaling raises the base to d/(d−2): refused for d ≤ 2, naming the dimension."""
    if dim <= 2:
        raise PositionError(f"NTK base scaling needs a RoPE dimension above 2 (exponent d/(d−2)), got d={dim}")
