"""Attention under a position variant: visible-key counts and row scales, the attention context that
carries ReRoPE's tables and an entropy recorder, and the query-chunked kernel (extrapolation.md B.2,
B.5, B.6). Memory is O(chunk · L), so 16N fits on a CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention import AttentionContext, AttentionMask
from ..rope import apply_rope

DEFAULT_SCORE_BUDGET = 1 << 24  # attention scores per chunk (B·heads·queries·keys): 64 MiB in fp32
LIBRARY_SCORE_LIMIT = 1 << 28  # above this many scores (1 GiB in fp32) even plain variants are chunked


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


class EntropyRecorder:
    """Mean attention entropy −Σ_j p_ij ln p_ij per layer, over heads and valid query rows (B.6 item 5).

    Give it to a context (`context.entropy = recorder`); call `start_pass()` before each forward:
    the k-th attention call of a pass is layer k. The sums stay on the attention's device (fp64, the
    arithmetic of Python floats) until `per_layer()` reads them: reading each chunk's sum back would wait
    for a GPU once per layer and query chunk.
    """

    def __init__(self):
        self._totals: list[torch.Tensor | None] = []
        self._counts: list[torch.Tensor | int] = []
        self._layer = 0

    def start_pass(self) -> EntropyRecorder:
        self._layer = 0
        return self

    def next_layer(self) -> int:
        layer = self._layer
        self._layer += 1
        if layer == len(self._totals):
            self._totals.append(None)
            self._counts.append(0)
        return layer

    def add(self, layer: int, total: torch.Tensor, count: torch.Tensor | int) -> None:
        """Add one chunk's entropy sum (a 0-d tensor) over `count` rows (an int or a 0-d integer tensor)."""
        total = total.to(torch.float64)
        self._totals[layer] = total if self._totals[layer] is None else self._totals[layer] + total
        self._counts[layer] = self._counts[layer] + count

    @property
    def totals(self) -> list[float]:
        return [0.0 if t is None else float(t) for t in self._totals]

    @property
    def counts(self) -> list[int]:
        return [int(c) for c in self._counts]

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
    softmax run in float32 (float64 for float64 inputs), under autocast too.
    """
    with torch.autocast(q.device.type, enabled=False):  # else its products are bf16, and masking them fails
        return _chunked_attention(q, k, v, ctx, normalization, dropout_p, training, need_weights)


def _chunked_attention(q, k, v, ctx: PositionAttentionContext, normalization: str, dropout_p: float, training: bool,
                       need_weights: bool):
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
            probs = torch.relu(scores).square() / visible[..., i0:i1, :].clamp_min(1).to(dtype)  # n = 0: masked out
            if allowed is not None:
                probs = probs.masked_fill(~allowed, 0.0)
        else:
            if allowed is not None:
                scores = scores.masked_fill(~allowed, fill)
            probs = torch.softmax(scores, dim=-1)
        del scores
        if layer is not None:
            _record_entropy(ctx.entropy, layer, probs, mask.tokens, i0, i1)
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
        recorder.add(layer, rows.masked_fill(~valid, 0.0).sum(), valid.sum() * rows.shape[1])
    else:
        recorder.add(layer, rows.sum(), rows.numel())
