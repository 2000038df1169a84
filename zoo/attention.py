"""Attention kernels shared by multi-head attention and GAU.

Every kernel computes, per query row i over the keys j it may see,

    a_ij = s_i · (q_i · k_j)              s_i = 1/√d, times log(n_i)/log(base) for softmax_plus
    softmax:  P = softmax(a) (masked keys get 0)           out = Dropout(P) · v
    relu2:    P = relu(a)² / n_i                            out = Dropout(P) · v

where n_i is the number of keys row i may see (valid, inside the window). softmax_plus is a
per-row rescaling of the logits (architectures.md §2.2), so it runs through the same kernels as
softmax by scaling q.

Implementations: the softmax attention goes through the kernel registry (zoo/kernels/registry.py,
op "softmax_attention"), which tries its entries in order. "matmul" (`attention_backend`) is the
explicit two-matmul kernel (bf16 matmuls, softmax with fp32 accumulation, the fast CPU dropout): on
the CPU the compiled kernel `blocked_softmax_attention`, which works through blocks of query rows so
the scores stay in cache; on CUDA in eager mode cuBLAS products with the softmax and dropout as one
Triton kernel each way (zoo/kernels/triton_softmax_attention.py); elsewhere (under torch.compile, or
without a compiler or Triton) `SoftmaxAttention`; "sdpa" is torch's
scaled_dot_product_attention (GAU's wide head as heads sharing q/k on CUDA). On this CPU the matmul
kernel is the faster one (BENCHMARKS.md), except fp32 inference; on CUDA sdpa is. "auto" picks
accordingly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .dropout import dropout as fast_dropout
from .dropout import keep_mask
from .kernels import dropout_kernels, new_seed, ops, threshold_for
from .kernels import keep_scale as kernel_keep_scale
from .kernels.registry import FLOAT_KERNEL_DTYPES, dispatch, register, select
from .norms import scale_offset_pair
from .rope import apply_rope
from .runtime import map_tensors


@dataclass
class AttentionMask:
    """Which keys each query may see; built once per forward and shared by all layers.

    key_valid: [B, S] bool, False for padded keys (None = no padding).
    window:    if set, query i sees key j only when |i − j| ≤ window (sliding window).
    sink:      with a window, the first `sink` keys stay visible to every query (Λ-mask).

    A sequence of padding alone (a row of `key_valid` without a True) is attended as if it had no padding,
    every key visible: a query row that sees no key has no softmax, and each kernel made its own of it
    (torch's sdpa zeros, or NaN on CUDA, ours the mean of v; the gradients three ways where a loss reads the
    row; relu² NaN gradients where none does). Only a window can still leave a (padded) query row without
    a key; `sdpa_bias` keeps such a row finite.
    """

    key_valid: torch.Tensor | None = None
    window: int | None = None
    sink: int = 0
    tokens: torch.Tensor | None = field(default=None, repr=False)  # key_valid as given: which positions are tokens

    def __post_init__(self):
        if self.tokens is None:  # (a copy on another device gets both)
            self.tokens = self.key_valid
        if self.key_valid is not None:
            self.key_valid = self.key_valid | ~self.key_valid.any(-1, keepdim=True)

    @property
    def is_trivial(self) -> bool:
        return self.key_valid is None and self.window is None

    def dense(self, q_len: int, k_len: int, device: torch.device) -> torch.Tensor | None:
        """Boolean mask broadcastable to [B, heads, q_len, k_len] (True = attend), or None."""
        mask = None
        if self.window is not None:
            i = torch.arange(q_len, device=device)[:, None]
            j = torch.arange(k_len, device=device)[None, :]
            mask = (i - j).abs() <= self.window
            if self.sink:
                mask = mask | (j < self.sink)
            mask = mask[None, None]
        if self.key_valid is not None:
            keys = self.key_valid[:, None, None, :]
            mask = keys if mask is None else mask & keys
        return mask

    def visible_keys(self, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
        """n_i: the number of keys each query row may see, float64 shaped [B or 1, 1, q_len, 1]."""
        if self.window is None:
            if self.key_valid is None:
                return torch.full((1, 1, 1, 1), float(k_len), device=device, dtype=torch.float64)
            return self.key_valid.sum(-1, dtype=torch.float64)[:, None, None, None]
        return self.dense(q_len, k_len, device).sum(-1, keepdim=True, dtype=torch.float64)


def log_length_scale(visible: torch.Tensor, base: int, min_len: int) -> torch.Tensor:
    """log(max(n, min_len)) / log(base): softmax_plus's per-row logit factor (§2.2)."""
    return torch.log(visible.clamp_min(min_len)) / math.log(base)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask | None,
    *,
    normalization: str = "softmax",
    row_scale: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str = "auto",
    need_weights: bool = False,
    logit_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of q [B, A, Sq, d] over k [B, A, Sk, d], v [B, A, Sk, dv] → [B, A, Sq, dv].

    `row_scale` [B or 1, 1, Sq, 1] multiplies the logit scale per query row (softmax_plus, log-n
    scaling); the logit scale is 1/√d unless `logit_scale` says otherwise (1.0 for a q that already
    carries it). Returns the output and, with `need_weights`, the probabilities (before dropout).
    """
    if not 0.0 <= dropout_p < 1.0:  # as configs refuse it; the kernels' rescaling 1/(1 − p) has no p = 1
        raise ValueError(f"attention dropout_p must be in [0, 1), got {dropout_p}")
    q_len, k_len, device = q.shape[-2], k.shape[-2], q.device
    scale = q.shape[-1] ** -0.5 if logit_scale is None else logit_scale
    if row_scale is not None:
        q = q * (row_scale * scale).to(q.dtype)
        scale = 1.0
    mask = None if mask is None or mask.is_trivial else mask
    dense_mask = None if mask is None else mask.dense(q_len, k_len, device)
    p = dropout_p if training else 0.0

    if normalization == "relu2":
        visible = (
            torch.full((1, 1, 1, 1), float(k_len), device=device, dtype=torch.float64)
            if mask is None
            else mask.visible_keys(q_len, k_len, device)
        )
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        probs = torch.relu(scores).square() / visible.clamp_min(1).to(scores.dtype)  # a row of n = 0 is masked out
        if dense_mask is not None:
            probs = probs.masked_fill(~dense_mask, 0.0)
        out = torch.matmul(fast_dropout(probs, p, training), v)
        return out, (probs if need_weights else None)

    return dispatch("softmax_attention", q, k, v, dense_mask, scale, p, backend=backend, need_weights=need_weights)


def sdpa_has_a_kernel(q, k, v, mask, dropout_p: float, shared_qk: bool = False) -> bool:
    """Whether torch's sdpa has a kernel for this call among the backends the caller left on: a
    `torch.nn.attention.sdpa_kernel(...)` around the model may leave only some (people ask for flash
    alone to be sure it runs), and where none of them takes the call (flash takes no mask and no fp32,
    the CPU's no dropout) sdpa fails with "No available kernel"; the call then goes to the registry's
    next entry instead. The math backend, on unless switched off, takes every call; otherwise torch's
    own choice (`_fused_sdp_choice`, what sdpa asks on either device) says, for the operands sdpa will
    get (`shared_qk`: those of `sdpa_shared_qk`): in the dtype it computes in (autocast's: a bf16 call
    flash takes though q is fp32) and with the additive mask of `sdpa_bias` rather than the boolean one.
    It asks with stand-ins of their shapes and strides, allocated and not filled (unless deterministic
    algorithms are asked to fill new memory): the probe copies nothing."""
    if torch.compiler.is_compiling() or torch.backends.cuda.math_sdp_enabled():
        return True
    if shared_qk:
        q, k, v = shared_qk_operands(q, k, v)
    try:
        dtype = sdpa_compute_dtype(q)
        q, k, v = (x if x.dtype == dtype else torch.empty_like(x, dtype=dtype, requires_grad=x.requires_grad)
                   for x in (q, k, v))  # as autocast's cast makes them
        bias = None if mask is None else torch.empty(mask.shape, dtype=dtype, device=q.device)
        torch._fused_sdp_choice(q, k, v, bias, dropout_p, False)
    except RuntimeError:  # "No available kernel" / "No viable backend"
        return False
    return True


def sdpa_compute_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype sdpa computes in for this q: autocast's where autocast is on for q's device (it casts q,
    k, v and the additive mask), unless q is fp64, which autocast leaves alone; q's own otherwise."""
    device_type = q.device.type
    if q.dtype != torch.float64 and q.is_floating_point() and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return q.dtype


def _sdpa_wanted(q, k, v, mask, scale, dropout_p, *, backend: str, need_weights: bool) -> bool:
    return backend != "matmul" and not need_weights and sdpa_has_a_kernel(q, k, v, mask, dropout_p)


def _sdpa_requested(q, k, v, mask, scale, dropout_p, *, backend: str, need_weights: bool) -> bool:
    return backend == "sdpa" and not need_weights and sdpa_has_a_kernel(q, k, v, mask, dropout_p)


def _fp32_inference(q, k, v, mask, scale, dropout_p, *, backend: str, need_weights: bool) -> bool:
    return (backend == "auto" and not need_weights and dropout_p == 0.0 and not (torch.is_grad_enabled() and q.requires_grad)
            and sdpa_has_a_kernel(q, k, v, mask, dropout_p))


def gau_wide_head(q, k, v, mask, scale, dropout_p, *, backend: str, need_weights: bool) -> bool:
    """One head whose v is a whole multiple wider than q and k (GAU), where sdpa is wanted and has a
    kernel for the heads sharing q and k (`sdpa_shared_qk`)."""
    return (backend != "matmul" and not need_weights
            and q.shape[1] == 1 and v.shape[-1] != q.shape[-1] and v.shape[-1] % q.shape[-1] == 0
            and sdpa_has_a_kernel(q, k, v, mask, dropout_p, shared_qk=True))


# The softmax attention's implementations, in the order calls try them. "auto" means: on CUDA torch's
# sdpa (GAU's wide head as heads sharing q/k); on the CPU our kernels, except for fp32 inference, where
# torch's fused sdpa kernel is as fast or faster (BENCHMARKS.md, fp32 section). Each entry returns
# (output, probabilities or None).


@register("softmax_attention", "sdpa-shared-qk", device_types=("cuda",), accepts=gau_wide_head)
def shared_qk_attention(q, k, v, mask, scale: float, dropout_p: float, **_):
    """GAU's wide head through `sdpa_shared_qk`, so CUDA's fused kernels take it (on the CPU torch's
    sdpa takes the wide v as it is, as fast)."""
    return sdpa_shared_qk(q, k, v, mask, dropout_p, scale), None


@register("softmax_attention", "sdpa", device_types=("cuda",), accepts=_sdpa_wanted)
def sdpa(q, k, v, mask, scale: float, dropout_p: float, **_):
    """torch's scaled_dot_product_attention (its fused kernels on CUDA)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_bias(mask, q), dropout_p=dropout_p, scale=scale), None


register("softmax_attention", "sdpa-requested", accepts=_sdpa_requested)(sdpa)
register("softmax_attention", "sdpa-fp32-inference", device_types=("cpu",), dtypes=(torch.float32,),
         accepts=_fp32_inference)(sdpa)


@register("softmax_attention", "with-weights", accepts=lambda *args, need_weights, **_: need_weights)
def attention_with_weights(q, k, v, mask, scale: float, dropout_p: float, **_):
    """The plain autograd path, which can hand out the probabilities (before dropout)."""
    scores = torch.matmul(q, k.transpose(-1, -2))
    if scale != 1.0:
        scores = scores * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(fast_dropout(probs, dropout_p, dropout_p > 0.0), v), probs


def additive_bias(mask: torch.Tensor | None, dtype: torch.dtype, least: float | None = None) -> torch.Tensor | None:
    """The boolean mask as an additive one in `dtype`: 0 where a key is seen, `least` (the dtype's minimum
    unless given) where not. Added to a row's scores the minimum absorbs them, so a row that sees no key at
    all (a window can leave one: AttentionMask) gets equal probabilities: the mean of v."""
    if mask is None:
        return None
    least = torch.finfo(dtype).min if least is None else least
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, least)


def sdpa_bias(mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    """sdpa's `attn_mask` for the boolean `mask`: `additive_bias` in q's dtype at the least value both it and
    the dtype sdpa computes in hold (autocast's, to which autocast casts q and the mask unless q is fp64:
    fp32's or bf16's minimum cast to bf16 or fp16 would be -inf, as bf16's in an fp16 q). A query row that
    sees no key (a window can leave one: AttentionMask) then gets the mean of v, as from the other
    entries, where the boolean mask gave it zeros from torch's CPU kernels and, by kernel and torch
    version, zeros or NaN on CUDA (NaN that a zero gradient carries into the weights' gradients)."""
    if mask is None:
        return None
    computes_in = sdpa_compute_dtype(q)
    least = max(torch.finfo(q.dtype).min, torch.finfo(computes_in).min)
    if {q.dtype, computes_in} == {torch.bfloat16, torch.float16}:
        least /= 2  # fp16's minimum in bf16 rounds to -65536, past fp16's range
    return additive_bias(mask, q.dtype, least=least)


@register("softmax_attention", "blocked-cpu-kernel", device_types=("cpu",), dtypes=FLOAT_KERNEL_DTYPES,
          needs="attention", accepts=lambda q, k, *args, **_: q.numel() > 0 and k.numel() > 0)
def blocked_attention_entry(q, k, v, mask, scale: float, dropout_p: float, **_):
    """The compiled CPU kernel (`blocked_softmax_attention`)."""
    dtype = v.dtype
    return blocked_softmax_attention(q.to(dtype), k.to(dtype), v, additive_bias(mask, dtype), scale, dropout_p), None


@register("softmax_attention", "matmul")
def matmul_attention(q, k, v, mask, scale: float, dropout_p: float, **_):
    """`SoftmaxAttention` (any device; on the CPU with the fast dropout mask)."""
    dtype = v.dtype
    return SoftmaxAttention.apply(q.to(dtype), k.to(dtype), v, additive_bias(mask, dtype), scale, dropout_p, None), None


EXPLICIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the explicit attention's Triton kernels take


def triton_explicit_applies(q, k, v, mask, scale, dropout_p, *, backend: str, need_weights: bool) -> bool:
    """The explicit attention asked for ("matmul") in eager mode, with rows that fit one Triton program;
    q, k and v of four dimensions [B, H, S, ·] (the kernels find a row's batch, head and query in its
    index) and of the same batch and heads (the kernels pair the rows of dP̃ = dO·vᵀ with those of P, so a
    v broadcast wider than q and k would mispair them); v, whose dtype the kernels run in, of one they
    take."""
    from .kernels.triton_softmax_attention import MAX_WIDTH

    return (backend == "matmul" and not need_weights and not torch.compiler.is_compiling()
            and q.dim() == 4 and q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and v.dtype in EXPLICIT_DTYPES
            and q.shape[-2] > 0 and 0 < k.shape[-2] <= MAX_WIDTH)


@register("softmax_attention", "triton", device_types=("cuda",), dtypes=EXPLICIT_DTYPES, needs="triton",
          accepts=triton_explicit_applies, before="blocked-cpu-kernel")
def triton_explicit_attention(q, k, v, mask, scale: float, dropout_p: float, **_):
    """`SoftmaxAttention`'s function with its softmax and dropout one Triton kernel each way
    (zoo/kernels/triton_softmax_attention.py); the mask's seed from torch's CPU generator
    (zoo/kernels/triton_dropout.py)."""
    from .kernels import triton_dropout
    from .kernels.triton_softmax_attention import ExplicitSoftmaxAttention

    dtype = v.dtype
    seed = triton_dropout.new_seed() if dropout_p > 0.0 else 0
    out = ExplicitSoftmaxAttention.apply(q.to(dtype), k.to(dtype), v, additive_bias(mask, dtype), scale, dropout_p, seed)
    return out, None


def sdpa_shared_qk(q, k, v, mask, dropout_p: float, scale: float, value_width: int | None = None) -> torch.Tensor:
    """One attention head with q, k [B, 1, S, s] and a wide v [B, 1, S, e] (GAU: s = 128, e = 1536), as
    e/w heads that share q and k, each with a w-wide slice of v (w = `value_width`, s by default):

        softmax(q kᵀ) · [v₁ | v₂ | …] = [softmax(q kᵀ) v₁ | softmax(q kᵀ) v₂ | …]

    CUDA's fused attention kernels do not take one head 1536 wide, so the score matrix never goes
    through memory this way; each head recomputes q kᵀ (s/w of the work of its value product). With
    w = s every flash kernel takes it; a wider w (256, 512: fewer heads, less recomputed q kᵀ) needs a
    kernel that takes a value head wider than q's (the memory-efficient one; `scripts/benchmarks/gpu.py`
    measures both). Without dropout it is the same function for every w; with dropout each slice draws
    its own mask over the same probabilities, at the same rate per element.
    """
    out = F.scaled_dot_product_attention(*shared_qk_operands(q, k, v, value_width), attn_mask=sdpa_bias(mask, q),
                                         dropout_p=dropout_p, scale=scale)
    batch, groups, q_len, width = out.shape
    return out.transpose(1, 2).reshape(batch, 1, q_len, groups * width)


def shared_qk_operands(q, k, v, value_width: int | None = None):
    """sdpa's q, k and v for `sdpa_shared_qk`: q and k expanded (views) over the e/w heads, v's w-wide slices
    as those heads."""
    batch, _, q_len, size = q.shape
    width = value_width or size
    groups, k_len = v.shape[-1] // width, k.shape[-2]
    return (q.expand(batch, groups, q_len, size), k.expand(batch, groups, k_len, size),
            v.reshape(batch, k_len, groups, width).transpose(1, 2))


def blocked_softmax_attention(
    q, k, v, bias, scale: float, dropout_p: float, seed: int | torch.Tensor | None = None
) -> torch.Tensor:
    """The function of `SoftmaxAttention`, computed by the compiled CPU kernel (zoo/kernels/attention_cpu.cpp,
    the operators zoo::blocked_attention and zoo::blocked_attention_backward).

    Per head and block of query rows: S_R = (s·Q_R) Kᵀ + bias_R, P_R = softmax(S_R), O_R = c·(P_R ⊙ M_R) V,
    with the scores of a block in cache and the dropout mask M of element i drawn from (seed, i) by
    the same counter-based rule as the dropout kernel (so it equals `SoftmaxAttention` with that mask).
    Training keeps P ([B·H, Sq, Sk], as SoftmaxAttention does); the backward pass overwrites it with
    dS, so it runs once (no retain_graph). `seed` (an int, or an int64 tensor of one element) may be
    given (tests); otherwise it is drawn from torch's generator.
    """
    batch, heads, q_len, _ = q.shape
    k_len = k.shape[-2]
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3]:  # the kernel flattens [B, H] into one dim
        raise ValueError(f"blocked_softmax_attention needs q [B, H, Sq, d], k [B, H, Sk, d], v [B, H, Sk, dv]; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    with torch.autocast(q.device.type, enabled=False):
        # contiguous here, so that the backward pass keeps these copies rather than views of the projections;
        # the operator makes them so again where it runs, for a traced program that dropped these copies
        q_scaled = (q * scale if scale != 1.0 else q).reshape(batch * heads, q_len, -1).contiguous()
        k_flat = k.reshape(batch * heads, k_len, -1).contiguous()
        v_flat = v.reshape(batch * heads, k_len, -1).contiguous()
        if dropout_p > 0.0:
            threshold, keep_scale = threshold_for(dropout_p), kernel_keep_scale(dropout_p)
            seed = ops.seed_tensor() if seed is None else torch.as_tensor(seed, dtype=torch.int64).reshape(1)
        else:
            threshold, keep_scale, seed = 0, 1.0, torch.zeros(1, dtype=torch.int64)
        keep_probs = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        out, _ = ops.blocked_attention(q_scaled, k_flat, v_flat, bias, heads, seed, threshold, keep_probs)
        if keep_scale != 1.0:
            out.mul_(keep_scale)
    return out.view(batch, heads, q_len, -1)


class SoftmaxAttention(torch.autograd.Function):
    """softmax(s·q·kᵀ + bias) with dropout, times v, as one autograd node (the CPU fast path).

    Compared with composing matmul → softmax → dropout → matmul under autograd, it keeps only
    q, k, v, the probabilities P and a boolean keep-mask M for the backward pass (autograd would also
    keep the dropped probabilities and a full-size dropout multiplier), runs in the dtype of v with
    autocast off (so bf16 stays bf16), draws M with the fast CPU generator, and applies the scale s
    and the dropout rescaling c = 1/(1 − p) to the small [S, d] operands instead of the [S, S] ones:

        forward:   P = softmax((s·Q) Kᵀ + bias),  O = c · (P ⊙ M) V
        backward:  dV = (P ⊙ M)ᵀ (c·dO),   dP = ((c·dO) Vᵀ) ⊙ M,
                   dS = P ⊙ (dP − rowsum(dP ⊙ P)),   dQ = s · dS K,   dK = dSᵀ (s·Q)
    `keep` may be given (tests); otherwise it is drawn when dropout_p > 0.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scale, dropout_p, keep):
        keep_scale = 1.0
        with torch.autocast(q.device.type, enabled=False):
            q_scaled = q * scale if scale != 1.0 else q
            scores = torch.matmul(q_scaled, k.transpose(-1, -2))
            if bias is not None:
                scores.add_(bias)
                if scores.dtype == torch.float16:
                    # fp16's minimum is −65504: a masked score below −16 rounds to −∞, and a row of keys all
                    # masked would be NaN (and its zero gradients NaN too); clamped, it stays finite
                    scores.clamp_(min=torch.finfo(torch.float16).min)
            # contiguous (a no-op after the matmul) because the dropout kernels index the mask by the
            # element's row-major position, in this forward pass and again in the backward one
            probs = torch.softmax(scores, dim=-1).contiguous()
            del scores
            ctx.seed = None
            if dropout_p > 0.0 and keep is None and select("dropout", probs, dropout_p).name == "cpu-kernel":
                # counter-based mask: nothing mask-sized is drawn here or stored for the backward
                kernels = dropout_kernels()
                ctx.seed, ctx.threshold, keep_scale = new_seed(), threshold_for(dropout_p), kernel_keep_scale(dropout_p)
                out = torch.matmul(kernels.masked_scale(probs, ctx.seed, ctx.threshold, 1.0), v)
                out.mul_(keep_scale)
            elif dropout_p > 0.0:
                if keep is None:
                    keep, keep_scale = keep_mask(probs.shape, dropout_p, probs.device)
                else:
                    keep_scale = 1.0 / (1.0 - dropout_p)
                out = torch.matmul(torch.where(keep, probs, 0.0), v)
                out.mul_(keep_scale)
            else:
                keep = None
                out = torch.matmul(probs, v)
        ctx.scale, ctx.keep_scale = scale, keep_scale
        ctx.save_for_backward(q_scaled, k, v, probs, keep)
        return out

    @staticmethod
    @once_differentiable  # P is saved without its history, and the kernel writes in place: refused, not wrong
    def backward(ctx, grad_out):
        q_scaled, k, v, probs, keep = ctx.saved_tensors
        with torch.autocast(q_scaled.device.type, enabled=False):
            grad_out = grad_out.to(v.dtype)
            if ctx.seed is not None:
                grad_out = grad_out * ctx.keep_scale
                # the kernel takes row-major tensors; matmul's output already is one, whatever grad_out's strides
                grad_s = torch.matmul(grad_out, v.transpose(-1, -2)).contiguous()
                # in place: grad_s becomes dS; returns P ⊙ M, the mask regenerated from the seed
                dropped = dropout_kernels().softmax_dropout_backward(grad_s, probs, ctx.seed, ctx.threshold)
                grad_v = torch.matmul(dropped.transpose(-1, -2), grad_out)
                del dropped
                grad_q = torch.matmul(grad_s, k)
                if ctx.scale != 1.0:
                    grad_q.mul_(ctx.scale)
                grad_k = torch.matmul(grad_s.transpose(-1, -2), q_scaled)
                return grad_q, grad_k, grad_v, None, None, None, None
            if keep is not None:
                grad_out = grad_out * ctx.keep_scale
                grad_v = torch.matmul(torch.where(keep, probs, 0.0).transpose(-1, -2), grad_out)
                grad_p = torch.where(keep, torch.matmul(grad_out, v.transpose(-1, -2)), 0.0)
            else:
                grad_v = torch.matmul(probs.transpose(-1, -2), grad_out)
                grad_p = torch.matmul(grad_out, v.transpose(-1, -2))
            # accumulated in fp32 at least (fp64 stays fp64: a float32 sum put errors of 5e-8 into fp64 gradients)
            row = (grad_p * probs).sum(-1, keepdim=True, dtype=torch.promote_types(grad_p.dtype, torch.float32))
            row = row.to(grad_p.dtype)
            grad_s = grad_p.sub_(row).mul_(probs)
            grad_q = torch.matmul(grad_s, k)
            if ctx.scale != 1.0:
                grad_q.mul_(ctx.scale)
            grad_k = torch.matmul(grad_s.transpose(-1, -2), q_scaled)
        return grad_q, grad_k, grad_v, None, None, None, None


@dataclass
class AttentionContext:
    """Everything attention needs that is the same in every layer of one forward pass.

    Built by the encoder from the inputs; position variants (extrapolation) substitute their own
    tables, masks or a subclass with another `attend`.
    cos, sin:  RoPE tables [B or 1, 1, S, d/2] in the compute dtype (None = no rotary).
    row_scale: per-row logit factor [B or 1, 1, S, 1] (softmax_plus / log-n), or None.
    """

    mask: AttentionMask | None = None
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    row_scale: torch.Tensor | None = None
    backend: str = "auto"

    def to(self, device, non_blocking: bool = False) -> AttentionContext:
        """The context with its tensors on `device` (itself where they are there): where a device_map
        spreads the layers over GPUs, accelerate's hooks move each layer's arguments with their `.to`."""
        return map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        normalization: str,
        dropout_p: float,
        training: bool,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotate q and k (RoPE), then attend."""
        if self.cos is not None:
            q, k = apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin)
        return attention(
            q,
            k,
            v,
            self.mask,
            normalization=normalization,
            row_scale=self.row_scale,
            dropout_p=dropout_p,
            training=training,
            backend=self.backend,
            need_weights=need_weights,
        )

    def attend_scale_offsets(self, z: torch.Tensor, first, second, v: torch.Tensor, *, normalization: str,
                             dropout_p: float, training: bool, need_weights: bool = False):
        """GAU's attention: q = first(z) and k = second(z), two scale-offsets of one projection z [B, S, s],
        rotated by the tables, q times its row scale and 1/√s, then attention over v [B, 1, S, e]. The
        pair, the rotation and q's factor are one registry call ("scale_offset_pair": on CUDA one Triton
        kernel each way). A context with its own `attend` (position variants: ReRoPE rotates by its own
        tables) gets q and k unrotated, as every layer hands them to `attend`."""
        options = dict(normalization=normalization, dropout_p=dropout_p, training=training, need_weights=need_weights)
        if type(self).attend is not AttentionContext.attend:
            q, k = scale_offset_pair(z, first, second)
            return self.attend(q[:, None], k[:, None], v, **options)
        q, k = scale_offset_pair(z, first, second, self.cos, self.sin, self.row_scale, z.shape[-1] ** -0.5)
        return attention(q[:, None], k[:, None], v, self.mask, backend=self.backend,
                         logit_scale=None if self.row_scale is None else 1.0, **options)
