"""Position and attention variants for length extrapolation, chosen per call (extrapolation.md B.5, B.6).

A `PositionVariant` changes how one forward pass attends — RoPE frequencies, logit scales,
windows, clipped relative positions — without touching the weights, for every family:

    v = zoo.positions.variant("ntk_mixed+logn_dagger", train_length=64)
    logits = model(input_ids, position_variant=v).logits

Names (B.6 item 6; parts join with "+", at most one of each kind):

    baseline                  plain RoPE extrapolation
    logn_dagger               test-time log n†: logits × max(1, log_N n), n = keys the query sees (B.2)
    logn_train                the checkpoint's own log n (softmax_plus); asserts the model has it
    window_half, window_full  band |i − j| ≤ w with w = N/2 or N − 1 (B.1, B.5)
    window_lambda             w = N/2 and the first 4 tokens visible to every query (Λ-mask)
    window_w{W}               band of explicit width W
    pi                        position interpolation θ/κ (B.5)
    ntk, ntk_fixed, ntk_mixed NTK-aware base scaling and Su's two refinements (B.5)
    ntk_dynamic               NTK with κ from each row's own length, HF/vLLM form, factor s = 2 (B.5)
    yarn                      YaRN ramp between interpolation and extrapolation, mscale on cos/sin (B.5)
    rerope_w{W}               relative positions clipped to [−W, W] (three score matrices, B.5)
    leaky_rerope_w{W}_k{K}    slope 1/K outside the window; K = "auto" takes k = (L−1−W)/(N−1−W) (B.5)

N is the training length; κ = max(1, L/N) with L the batch's sequence length. A checkpoint trained
with log n (softmax_plus) keeps its own scale in every variant, counted over the keys each query
sees (so it shrinks under a window); a window or ReRoPE width ≥ L is an error. Variants whose
attention cannot go through the fused kernels (ReRoPE, recorded entropy, very long sequences)
run a query-chunked kernel whose memory is O(chunk · L), so 16N fits on a CPU.

Training-time random positions (B.3) for the pretraining collator: `sample_ruoss_positions`,
`sample_equal_mean_positions`.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .attention import AttentionContext, AttentionMask, log_length_scale
from .errors import PositionError
from .rope import apply_rope, rope_cos_sin, rope_inv_freq

ROPE_SCALINGS = ("none", "pi", "ntk", "ntk_fixed", "ntk_mixed", "ntk_dynamic", "yarn")
LAMBDA_SINK = 4  # window_lambda keeps [CLS] and the next 3 tokens visible (B.5, B.6)
DEFAULT_SCORE_BUDGET = 1 << 24  # attention scores per chunk (B·heads·queries·keys): 64 MiB in fp32
LIBRARY_SCORE_LIMIT = 1 << 28  # above this many scores (1 GiB in fp32) even plain variants are chunked


# ------------------------------------------------------------------------------ RoPE frequencies (B.5)


def pi_inv_freq(dim: int, base: float, kappa: float) -> torch.Tensor:
    """Position interpolation: pos → pos·N/L, i.e. every θ_i divided by κ (B.5 PI)."""
    return rope_inv_freq(dim, base) / kappa


def ntk_inv_freq(dim: int, base: float, kappa: float) -> torch.Tensor:
    """NTK-aware (bloc97): the base becomes b' = b·κ^(d/(d−2)) (B.5)."""
    _check_ntk_dim(dim)
    return rope_inv_freq(dim, base * kappa ** (dim / (dim - 2)))


def ntk_fixed_inv_freq(dim: int, base: float, kappa: float) -> torch.Tensor:
    """Su's NTK-fixed: θ_m = 1/(λ·(βλ)^(m−1)), β = b^(2/d), λ = κ^(2/d), m = 1 … d/2 (B.5).

    Equals θ_p·λ^−(p+1) for p = m − 1: the extra 1/λ keeps the lowest frequency at exactly θ/κ.
    """
    lam = kappa ** (2.0 / dim)
    p = torch.arange(dim // 2, dtype=torch.float64)
    return rope_inv_freq(dim, base) * lam ** -(p + 1)


def ntk_mixed_inv_freq(dim: int, base: float, kappa: float, exponent: float = 0.625) -> torch.Tensor:
    """Su's NTK-mixed: θ_p·exp(−a·(p+1)^b'), a = ln κ / (d/2)^b' (B.5; b' = 0.625 in his GAU runs)."""
    a = math.log(kappa) / (dim / 2) ** exponent
    p = torch.arange(dim // 2, dtype=torch.float64)
    return rope_inv_freq(dim, base) * torch.exp(-a * (p + 1) ** exponent)


def ntk_dynamic_inv_freq(dim: int, base: float, lengths: torch.Tensor, train_length: int, factor: float = 2.0) -> torch.Tensor:
    """Dynamic NTK (HF/vLLM form, B.5): b' = b·((s·ℓ/N) − (s−1))^(d/(d−2)) with ℓ = max(length, N).

    `lengths` [B] → inv_freq [B, 1, d/2] (one base per row).
    """
    _check_ntk_dim(dim)
    ell = lengths.to(torch.float64).clamp_min(train_length)
    bases = base * ((factor * ell / train_length) - (factor - 1)) ** (dim / (dim - 2))
    exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    return (bases[:, None, None] ** -exponent).to(torch.float64)


def yarn_inv_freq(dim: int, base: float, kappa: float, train_length: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
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
    p = torch.arange(dim // 2, dtype=torch.float64)
    ramp = ((p - low) / (high - low)).clamp(0.0, 1.0)
    extrapolated = rope_inv_freq(dim, base)
    return extrapolated / kappa * ramp + extrapolated * (1 - ramp)


def yarn_mscale(kappa: float) -> float:
    """YaRN attention temperature on cos and sin: 0.1·ln κ + 1 (logits × its square, B.5)."""
    return 0.1 * math.log(kappa) + 1.0 if kappa > 1 else 1.0


def _check_ntk_dim(dim: int) -> None:
    if dim <= 2:
        raise PositionError(f"NTK base scaling needs a RoPE dimension above 2 (exponent d/(d−2)), got d={dim}")


# ------------------------------------------------------------------------------ masks and row scales


def visible_key_counts(key_valid: torch.Tensor | None, seq_len: int, window: int | None, sink: int,
                       device=None) -> torch.Tensor:
    """n_i, the keys query i may see (valid, inside the band |i−j| ≤ window, or among the first `sink`),
    as float64 [B or 1, 1, S, 1], from prefix sums (no S×S mask)."""
    if key_valid is None:
        valid = torch.ones(1, seq_len, dtype=torch.float64, device=device)
    else:
        valid = key_valid.to(torch.float64)
    if window is None:
        return valid.sum(-1)[:, None, None, None].expand(-1, 1, seq_len, 1)
    prefix = F.pad(valid.cumsum(-1), (1, 0))  # prefix[:, t] = valid keys among 0 … t−1
    i = torch.arange(seq_len, device=valid.device)
    lo, hi = (i - window).clamp_min(0), (i + window + 1).clamp_max(seq_len)
    counts = prefix[:, hi] - prefix[:, lo]
    if sink:
        counts = counts + prefix[:, torch.minimum(lo, torch.full_like(lo, sink))]  # sinks left of the band
    return counts[:, None, :, None]


def logn_dagger_scale(visible: torch.Tensor, train_length: int) -> torch.Tensor:
    """Test-time log n†: max(1, log n / log N) per query row (B.2, B.6 `logn_dagger`)."""
    return (torch.log(visible) / math.log(train_length)).clamp_min(1.0)


# ------------------------------------------------------------------------------ the attention context


class EntropyRecorder:
    """Mean attention entropy −Σ_j p_ij ln p_ij per layer, over heads and valid query rows (B.6 item 5).

    Give it to a context (`context.entropy = recorder`); call `start_pass()` before each forward:
    the k-th attention call of a pass is layer k.
    """

    def __init__(self):
        self.totals: list[float] = []
        self.counts: list[int] = []
        self._layer = 0

    def start_pass(self) -> EntropyRecorder:
        self._layer = 0
        return self

    def next_layer(self) -> int:
        layer = self._layer
        self._layer += 1
        if layer == len(self.totals):
            self.totals.append(0.0)
            self.counts.append(0)
        return layer

    def add(self, layer: int, total: float, count: int) -> None:
        self.totals[layer] += total
        self.counts[layer] += count

    def per_layer(self) -> list[float]:
        return [t / c if c else float("nan") for t, c in zip(self.totals, self.counts)]


@dataclass
class ClippedRelative:
    """ReRoPE / Leaky ReRoPE tables (B.5): inside |r| < w the usual (R_i q)·(R_j k); outside, q and k are
    rotated so that the relative angle is r' = sign(r)·(w + (|r| − w)/k):

        right (r ≥ w):  q at p_i/k,             k at (p_j + w(k−1))/k
        left (r ≤ −w):  q at (p_i + w(k−1))/k,  k at p_j/k

    ReRoPE is k = ∞: q at 0 and k at w on the right, swapped on the left.
    `near` holds cos/sin at p/k (0 for ReRoPE), `far` at (p + w(k−1))/k (w for ReRoPE).
    """

    window: int
    positions: torch.Tensor  # [B or 1, S] float64, to decide which matrix each (i, j) takes
    near_cos: torch.Tensor
    near_sin: torch.Tensor
    far_cos: torch.Tensor
    far_sin: torch.Tensor


@dataclass
class PositionAttentionContext(AttentionContext):
    """An AttentionContext for a position variant: adds ReRoPE, entropy recording and query chunking.

    Attention goes through the library kernels (`zoo.attention.attention`, which materialise all
    B·heads·S² scores) when it can; ReRoPE, a recorder, an explicit `chunk_size` or more than
    LIBRARY_SCORE_LIMIT scores take the chunked kernel (`chunked_attention`), whose blocks hold at
    most `max_score_elements` scores.
    """

    clipped: ClippedRelative | None = None
    visible: torch.Tensor | None = None  # n_i [B or 1, 1, S, 1] float64
    entropy: EntropyRecorder | None = None
    chunk_size: int | None = None
    max_score_elements: int = DEFAULT_SCORE_BUDGET

    def attend(self, q, k, v, *, normalization, dropout_p, training, need_weights=False):
        batch, heads, seq_len = q.shape[0], q.shape[1], q.shape[2]
        fits = batch * heads * seq_len * seq_len <= LIBRARY_SCORE_LIMIT
        if self.clipped is None and self.entropy is None and self.chunk_size is None and fits:
            return super().attend(q, k, v, normalization=normalization, dropout_p=dropout_p,
                                  training=training, need_weights=need_weights)
        return chunked_attention(q, k, v, self, normalization=normalization, dropout_p=dropout_p,
                                 training=training, need_weights=need_weights)


def chunked_attention(q, k, v, ctx: PositionAttentionContext, *, normalization: str, dropout_p: float = 0.0,
                      training: bool = False, need_weights: bool = False):
    """Self-attention computed a block of query rows at a time (scores O(chunk · S) in memory).

    Same function as `zoo.attention.attention` for the same mask, tables and row scales; in addition
    the clipped-relative scores of ReRoPE (three matrices, B.5) and the entropy recorder. Scores and
    softmax run in float32 (float64 for float64 inputs).
    """
    batch, heads, seq_len, dim = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)
    out_dtype = v.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    clipped = ctx.clipped
    if clipped is not None:
        q_in, k_in = apply_rope(q, ctx.cos.to(dtype), ctx.sin.to(dtype)), apply_rope(k, ctx.cos.to(dtype), ctx.sin.to(dtype))
        near = (clipped.near_cos.to(dtype), clipped.near_sin.to(dtype))
        far = (clipped.far_cos.to(dtype), clipped.far_sin.to(dtype))
        q_right, k_right = apply_rope(q, *near), apply_rope(k, *far)
        q_left, k_left = apply_rope(q, *far), apply_rope(k, *near)
    elif ctx.cos is not None:
        q_in, k_in = apply_rope(q, ctx.cos.to(dtype), ctx.sin.to(dtype)), apply_rope(k, ctx.cos.to(dtype), ctx.sin.to(dtype))
    else:
        q_in, k_in = q, k
    factor = torch.full((1, 1, seq_len, 1), dim**-0.5, dtype=torch.float64, device=q.device)
    if ctx.row_scale is not None:
        factor = factor * ctx.row_scale.to(device=q.device, dtype=torch.float64)
    factor = factor.to(dtype)
    mask = ctx.mask or AttentionMask()
    key_valid, window, sink = mask.key_valid, mask.window, mask.sink
    visible = ctx.visible
    if normalization == "relu2" and visible is None:
        visible = visible_key_counts(key_valid, seq_len, window, sink, q.device)
    chunk = ctx.chunk_size or max(1, ctx.max_score_elements // max(1, batch * heads * seq_len))
    chunk = min(chunk, seq_len)
    layer = ctx.entropy.next_layer() if ctx.entropy is not None else None
    out = torch.empty(batch, heads, seq_len, v.shape[-1], dtype=dtype, device=q.device)
    probs_full = torch.zeros(batch, heads, seq_len, seq_len, dtype=dtype, device=q.device) if need_weights else None
    fill = torch.finfo(dtype).min
    p = dropout_p if training else 0.0
    for i0 in range(0, seq_len, chunk):
        i1 = min(seq_len, i0 + chunk)
        lo, hi = 0, seq_len
        if window is not None and not sink:  # only keys inside the band can be visible
            lo, hi = max(0, i0 - window), min(seq_len, i1 + window + 1)
        rows = factor[..., i0:i1, :] if factor.shape[-2] > 1 else factor
        scores = torch.matmul(q_in[..., i0:i1, :] * rows, k_in[..., lo:hi, :].transpose(-1, -2))
        if clipped is not None:
            w = clipped.window
            rel = clipped.positions[:, None, lo:hi] - clipped.positions[:, i0:i1, None]  # r = p_j − p_i
            rel = rel[:, None].to(q.device)
            right = torch.matmul(q_right[..., i0:i1, :] * rows, k_right[..., lo:hi, :].transpose(-1, -2))
            left = torch.matmul(q_left[..., i0:i1, :] * rows, k_left[..., lo:hi, :].transpose(-1, -2))
            scores = torch.where(rel.abs() < w, scores, torch.where(rel >= w, right, left))
            del right, left
        allowed = _allowed(key_valid, window, sink, i0, i1, lo, hi, q.device)
        if normalization == "relu2":
            probs = torch.relu(scores).square() / visible[..., i0:i1, :].to(dtype)
            if allowed is not None:
                probs = probs.masked_fill(~allowed, 0.0)
        else:
            if allowed is not None:
                scores = scores.masked_fill(~allowed, fill)
            probs = torch.softmax(scores, dim=-1)
        del scores
        if layer is not None:
            _record_entropy(ctx.entropy, layer, probs, key_valid, i0, i1)
        if need_weights:
            probs_full[..., i0:i1, lo:hi] = probs
        if p > 0.0:
            probs = F.dropout(probs, p, training=True)
        out[..., i0:i1, :] = torch.matmul(probs, v[..., lo:hi, :])
    return out.to(out_dtype), probs_full


def _allowed(key_valid, window, sink, i0, i1, lo, hi, device) -> torch.Tensor | None:
    """[B or 1, 1, rows, keys] bool for query rows i0…i1−1 and keys lo…hi−1, or None (all visible)."""
    allowed = None
    if window is not None:
        i = torch.arange(i0, i1, device=device)[:, None]
        j = torch.arange(lo, hi, device=device)[None, :]
        allowed = (i - j).abs() <= window
        if sink:
            allowed = allowed | (j < sink)
        allowed = allowed[None, None]
    if key_valid is not None:
        keys = key_valid[:, None, None, lo:hi].to(device)
        allowed = keys if allowed is None else allowed & keys
    return allowed


def _record_entropy(recorder: EntropyRecorder, layer: int, probs: torch.Tensor, key_valid, i0: int, i1: int) -> None:
    mass = probs.sum(-1, keepdim=True)  # 1 for softmax; relu² rows are normalised to a distribution first
    normalised = torch.where(mass > 0, probs / mass.clamp_min(torch.finfo(probs.dtype).tiny), probs)
    rows = torch.special.entr(normalised).sum(-1)  # [B, A, rows]
    if key_valid is not None:  # padded query rows do not count
        valid = key_valid[:, None, i0:i1].to(rows.device)
        total = float(rows.masked_fill(~valid, 0.0).sum())
        count = int(valid.sum()) * rows.shape[1]
    else:
        total, count = float(rows.sum()), rows.numel()
    recorder.add(layer, total, count)


# ------------------------------------------------------------------------------ variants


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
            _check_ntk_dim(rope_dim(config))

    # -- the per-call pieces
    def kappa(self, seq_len: int) -> float:
        """κ = max(1, L/N) (B.5)."""
        return max(1.0, seq_len / self.train_length)

    def inv_freq(self, dim: int, base: float, seq_len: int, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """(inv_freq in float64, mscale) of this variant at sequence length `seq_len`."""
        kappa = self.kappa(seq_len)
        scaling = self.rope_scaling
        if scaling == "none" or (kappa == 1.0 and scaling != "ntk_dynamic"):
            return rope_inv_freq(dim, base), 1.0
        if scaling == "pi":
            return pi_inv_freq(dim, base, kappa), 1.0
        if scaling == "ntk":
            return ntk_inv_freq(dim, base, kappa), 1.0
        if scaling == "ntk_fixed":
            return ntk_fixed_inv_freq(dim, base, kappa), 1.0
        if scaling == "ntk_mixed":
            return ntk_mixed_inv_freq(dim, base, kappa, self.ntk_mixed_exponent), 1.0
        if scaling == "ntk_dynamic":
            if lengths is None:
                lengths = torch.tensor([seq_len])
            return ntk_dynamic_inv_freq(dim, base, lengths, self.train_length, self.dynamic_factor), 1.0
        return yarn_inv_freq(dim, base, kappa, self.train_length, self.yarn_beta_fast, self.yarn_beta_slow), yarn_mscale(kappa)

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
        visible = visible_key_counts(key_valid, seq_len, mask.window, mask.sink, device)
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
            lengths = key_valid.sum(-1) if key_valid is not None else torch.full((1,), seq_len)
            inv_freq, mscale = self.inv_freq(encoder.rotary.dim, encoder.rotary.base, seq_len, lengths.cpu())
            cos, sin = rope_cos_sin(positions, inv_freq.to(device), dtype, mscale)
            cos, sin = cos[:, None], sin[:, None]  # [B or 1, 1, S, d/2]: broadcast over heads
            if self.rerope_window is not None:
                clipped = self._clipped(positions, inv_freq.to(device), seq_len, dtype)
        return PositionAttentionContext(
            mask=mask, cos=cos, sin=sin, row_scale=row_scale, backend=config.attention_backend, clipped=clipped,
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


def rope_dim(config) -> int:
    return config.attention_key_size if config.block_type == "gau" else config.head_size


# ------------------------------------------------------------------------------ names (B.6 item 6)

_FIXED_PARTS = {
    "baseline": {},
    "logn_dagger": {"logn": "dagger"},
    "logn_train": {"logn": "train"},
    "pi": {"rope_scaling": "pi"},
    "ntk": {"rope_scaling": "ntk"},
    "ntk_fixed": {"rope_scaling": "ntk_fixed"},
    "ntk_mixed": {"rope_scaling": "ntk_mixed"},
    "ntk_dynamic": {"rope_scaling": "ntk_dynamic"},
    "yarn": {"rope_scaling": "yarn"},
}
_WINDOW_PARTS = ("window_half", "window_full", "window_lambda")
_PATTERNS = (
    (re.compile(r"window_w(\d+)"), lambda m, n: {"window": int(m[1])}),
    (re.compile(r"rerope_w(\d+)"), lambda m, n: {"rerope_window": int(m[1])}),
    (re.compile(r"leaky_rerope_w(\d+)_k(\d+(?:\.\d+)?|auto)"),
     lambda m, n: {"rerope_window": int(m[1]), "leaky_auto": m[2] == "auto",
                   "leaky_factor": None if m[2] == "auto" else float(m[2])}),
)
_TRAINING_ONLY = {  # B.6 "(train)" rows: they need a checkpoint trained that way
    "randpos_ruoss": "pretrain with data.positions.type: ruoss (max_position 16N)",
    "randpos_equalmean_exp": "pretrain with data.positions.type: equal_mean",
    "logn": "pretrain with attention_normalization: softmax_plus, then use logn_train",
}
KNOWN_NAMES = tuple(_FIXED_PARTS) + _WINDOW_PARTS + ("window_w{W}", "rerope_w{W}", "leaky_rerope_w{W}_k{K|auto}")


def _part_fields(part: str, train_length: int, full_name: str) -> dict:
    if part in _FIXED_PARTS:
        return dict(_FIXED_PARTS[part])
    if part == "window_half":
        return {"window": max(1, train_length // 2)}
    if part == "window_full":
        return {"window": train_length - 1}
    if part == "window_lambda":
        return {"window": max(1, train_length // 2), "sink": LAMBDA_SINK}
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(part)
        if match:
            return build(match, train_length)
    if part in _TRAINING_ONLY:
        raise PositionError(f"{part!r} in {full_name!r} is a training-time option, not an inference variant: "
                         f"{_TRAINING_ONLY[part]}; evaluate the checkpoint it produced with 'baseline'")
    candidates = list(_FIXED_PARTS) + list(_WINDOW_PARTS) + [f"rerope_w{train_length // 4}", f"rerope_w{train_length // 2}",
                                                             f"leaky_rerope_w{train_length // 4}_k16"]
    close = difflib.get_close_matches(part, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise PositionError(f"unknown position variant {part!r} in {full_name!r}{hint} (known: {', '.join(KNOWN_NAMES)}; "
                     "join parts with '+')")


def variant(name: str, train_length: int, **options) -> PositionVariant:
    """The variant called `name` (B.6 names, parts joined by "+") for a model trained at `train_length`.

    `options` set PositionVariant fields (chunk_size, ntk_mixed_exponent, dynamic_factor, yarn_beta_fast, ...).
    """
    if isinstance(name, PositionVariant):
        return replace(name, **options) if options else name
    if not isinstance(name, str) or not name.strip():
        raise PositionError(f"a position variant name must be a non-empty string, got {name!r}")
    parts = [p.strip() for p in name.split("+")]
    if "baseline" in parts and len(parts) > 1:
        raise PositionError(f"position variant {name!r}: 'baseline' means no change and cannot be combined; "
                         "name the other parts alone")
    fields: dict = {}
    kinds: dict[str, str] = {}
    for part in parts:
        new = _part_fields(part, train_length, name)
        kind = ("logn" if "logn" in new else "window" if "window" in new else
                "rerope" if "rerope_window" in new else "rope_scaling" if "rope_scaling" in new else "baseline")
        if kind in kinds:
            raise PositionError(f"position variant {name!r} combines {kinds[kind]!r} and {part!r}: at most one {kind} part")
        kinds[kind] = part
        fields.update(new)
    if "rerope" in kinds and ("rope_scaling" in kinds or "window" in kinds):
        other = kinds.get("rope_scaling") or kinds.get("window")
        raise PositionError(f"position variant {name!r}: {kinds['rerope']!r} already fixes the relative positions; "
                         f"it cannot be combined with {other!r}")
    unknown = set(options) - set(PositionVariant.__dataclass_fields__)
    if unknown:
        raise PositionError(f"unknown position variant option(s): {', '.join(sorted(unknown))}")
    return PositionVariant(name=name, train_length=train_length, **{**fields, **options})


def default_variants(train_length: int, logn: bool = True) -> list[str]:
    """The B.6 variant grid for training length N: every method, and each one × logn_dagger if `logn`
    (pass logn=False for checkpoints trained with log n, whose own scaling every variant keeps)."""
    n = train_length
    methods = ["baseline", "window_half", "window_full", "window_lambda", "pi", "ntk", "ntk_fixed", "ntk_mixed",
               "ntk_dynamic", "yarn", f"rerope_w{max(1, n // 4)}", f"rerope_w{max(1, n // 2)}",
               f"leaky_rerope_w{max(1, n // 4)}_k16", f"leaky_rerope_w{max(1, n // 4)}_k32"]
    if not logn:
        return methods
    return methods + ["logn_dagger"] + [f"{m}+logn_dagger" for m in methods[1:]]


# ------------------------------------------------------------------------------ training-time positions (B.3)


def sample_ruoss_positions(batch: int, seq_len: int, max_position: int, generator: torch.Generator | None = None,
                           device=None) -> torch.Tensor:
    """Ruoss et al. randomized positions: per row, `seq_len` distinct integers drawn uniformly without
    replacement from [0, max_position), sorted ascending (B.3; DeepMind's `noise_max_length`). int64 [B, S]."""
    if seq_len < 1 or batch < 1:
        raise PositionError(f"batch and seq_len must be ≥ 1, got batch={batch}, seq_len={seq_len}")
    if max_position < seq_len:
        raise PositionError(f"Ruoss positions: max_position={max_position} is smaller than seq_len={seq_len}; "
                         "distinct positions need max_position ≥ seq_len (the paper uses L ≫ the test length)")
    keys = torch.rand(batch, max_position, generator=generator, device=device)
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
    spans = torch.empty(batch, dtype=torch.float64, device=device).exponential_(1.0 / mean, generator=generator)
    grid = torch.linspace(0.0, 1.0, seq_len, dtype=torch.float64, device=device)
    return grid[None, :] * spans[:, None]


__all__ = [
    "ClippedRelative",
    "EntropyRecorder",
    "PositionAttentionContext",
    "PositionVariant",
    "chunked_attention",
    "default_variants",
    "logn_dagger_scale",
    "ntk_dynamic_inv_freq",
    "ntk_fixed_inv_freq",
    "ntk_inv_freq",
    "ntk_mixed_inv_freq",
    "pi_inv_freq",
    "sample_equal_mean_positions",
    "sample_ruoss_positions",
    "variant",
    "visible_key_counts",
    "yarn_inv_freq",
    "yarn_mscale",
]
