"""Position variants (zoo/positions/) against formulas and brute-force references, all in float64.

Each RoPE variant's tables are re-derived here from extrapolation.md B.5; ReRoPE's chunked
three-matrix kernel is checked against scores built directly from clipped relative positions;
windows against a dense masked softmax; log n against per-row counts of valid keys.
"""

import math

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import zoo
from zoo import positions
from zoo.attention import AttentionContext
from zoo.families import model_class
from zoo.positions import (
    EntropyRecorder,
    PositionAttentionContext,
    chunked_attention,
    sample_equal_mean_positions,
    sample_ruoss_positions,
    variant,
    visible_key_counts,
)
from zoo.rope import rope_cos_sin

from .test_models import batch, make_config, randomize

BASE = 10000.0


# ------------------------------------------------------------------------------ helpers (independent of zoo)


def theta(dim, base=BASE):
    """θ_i = b^(−2i/d) in float64, written out."""
    return torch.tensor([base ** (-2.0 * i / dim) for i in range(dim // 2)], dtype=torch.float64)


def rotate(x, angle):
    """Rotate interleaved pairs (x_2i, x_2i+1) of x [..., d] by angle [..., d/2]."""
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * torch.cos(angle) - odd * torch.sin(angle)
    out[..., 1::2] = odd * torch.cos(angle) + even * torch.sin(angle)
    return out


def clipped_relative(rel, window, k=None):
    """r' = r inside |r| < w; outside w·sign(r) (ReRoPE) or sign(r)·(w + (|r| − w)/k) (Leaky) (B.5)."""
    outside = window if k is None else window + (rel.abs() - window) / k
    return torch.where(rel.abs() < window, rel, torch.sign(rel) * outside)


def brute_force_attention(q, k, v, rel_angle_fn, *, scale_rows=None, allowed=None, normalization="softmax"):
    """out_i = Σ_j P_ij v_j with a_ij = s_i · q_i · R(φ_ij) k_j, every pair rotated on its own."""
    seq = q.shape[-2]
    dim = q.shape[-1]
    angles = rel_angle_fn()  # [B or 1, S, S, d/2]: φ_ij for each pair
    k_pairs = rotate(k[:, :, None, :, :].expand(-1, -1, seq, -1, -1), angles[:, None])  # [B, A, Si, Sj, d]
    scores = (q[:, :, :, None, :] * k_pairs).sum(-1) * dim**-0.5
    if scale_rows is not None:
        scores = scores * scale_rows
    if normalization == "relu2":
        n = allowed.sum(-1, keepdim=True).to(scores.dtype) if allowed is not None else torch.full_like(scores[..., :1], seq)
        probs = torch.relu(scores) ** 2 / n
        if allowed is not None:
            probs = probs.masked_fill(~allowed, 0.0)
    else:
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, -1)
    return probs @ v


def assert_rows_close(out, expected, key_valid):
    """Compare query rows that are not padding (a padded query may see no key at all: its output is moot)."""
    rows = key_valid[:, None, :].expand(-1, out.shape[1], -1)
    torch.testing.assert_close(out[rows], expected[rows], rtol=1e-10, atol=1e-10)


def qkv(b=2, a=2, s=19, d=8, seed=0, dv=None):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, a, s, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, a, s, dv or d, generator=g, dtype=torch.float64)
    return q, k, v


class Encoder:
    """What PositionVariant.context reads from an EncoderModel."""

    def __init__(self, dim=8, base=BASE, normalization="softmax", position="rope", block="transformer"):
        self.config = make_config("roformer-v2" if block == "transformer" else "gau-alpha",
                                  attention_normalization=normalization, position_embedding_type=position,
                                  **({"num_attention_heads": 32 // dim} if block == "transformer" else {"attention_key_size": dim}))
        self.rotary = zoo.rope.RotaryEmbedding(dim, base) if position == "rope" else None


def build(name, train_length, seq_len, key_valid=None, position_ids=None, encoder=None, **options):
    encoder = encoder or Encoder()
    v = variant(name, train_length, **options)
    return v.context(encoder, key_valid, seq_len, position_ids, torch.float64, torch.device("cpu"))


# ------------------------------------------------------------------------------ RoPE variants vs formulas (B.5)

D, N, L = 16, 32, 128  # rope dim, train length, test length: κ = 4
KAPPA = L / N


def expected_tables(inv_freq, seq_len, mscale=1.0):
    p = torch.arange(seq_len, dtype=torch.float64)[:, None]
    return mscale * torch.cos(p * inv_freq), mscale * torch.sin(p * inv_freq)


def formula_pi():
    # positions compressed: p → p·N/L
    return theta(D) * N / L


def formula_ntk():
    base = BASE * KAPPA ** (D / (D - 2))
    return theta(D, base)


def formula_ntk_fixed():
    beta, lam = BASE ** (2 / D), KAPPA ** (2 / D)
    return torch.tensor([1 / (lam * (beta * lam) ** (m - 1)) for m in range(1, D // 2 + 1)], dtype=torch.float64)


def formula_ntk_mixed(exponent=0.625):
    beta = BASE ** (2 / D)
    a = math.log(KAPPA) / (D / 2) ** exponent
    # per-pair extra divisor λ_1⋯λ_m = exp(a·m^b′), m = 1 … d/2
    return torch.tensor([beta ** -(m - 1) / math.exp(a * m**exponent) for m in range(1, D // 2 + 1)], dtype=torch.float64)


def formula_yarn(beta_fast=32, beta_slow=1):
    # jquesnelle/yarn: _yarn_find_correction_range, _yarn_linear_ramp_mask, then the mask blend
    def find_dim(rotations):
        return (D * math.log(N / (rotations * 2 * math.pi))) / (2 * math.log(BASE))

    low, high = max(math.floor(find_dim(beta_fast)), 0), min(math.ceil(find_dim(beta_slow)), D - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(D // 2, dtype=torch.float64) - low) / (high - low), 0, 1)
    inv_freq_mask = 1 - ramp  # 1 = extrapolate (high frequencies)
    extrapolation = theta(D)
    interpolation = extrapolation / KAPPA
    return interpolation * (1 - inv_freq_mask) + extrapolation * inv_freq_mask


@pytest.mark.parametrize("name, formula", [
    ("pi", formula_pi), ("ntk", formula_ntk), ("ntk_fixed", formula_ntk_fixed),
    ("ntk_mixed", formula_ntk_mixed), ("yarn", formula_yarn),
])
def test_rope_variant_tables_match_formula(name, formula):
    ctx = build(name, N, L, encoder=Encoder(dim=D))
    mscale = 0.1 * math.log(KAPPA) + 1 if name == "yarn" else 1.0
    cos, sin = expected_tables(formula(), L, mscale)
    torch.testing.assert_close(ctx.cos[0, 0], cos, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ctx.sin[0, 0], sin, rtol=1e-12, atol=1e-12)


def test_rope_variant_frequency_endpoints():
    """The properties each formula was built for: NTK-fixed and NTK-mixed interpolate the lowest
    frequency exactly (θ/κ); NTK-mixed's extra divisor grows monotonically with the pair index; YaRN's ramp
    keeps the highest frequency and interpolates the lowest."""
    plain = theta(D)
    for fn in (positions.ntk_fixed_inv_freq, positions.ntk_mixed_inv_freq, positions.pi_inv_freq):
        assert math.isclose(fn(D, BASE, KAPPA)[-1].item(), plain[-1].item() / KAPPA, rel_tol=1e-12)
    mixed = positions.ntk_mixed_inv_freq(D, BASE, KAPPA)
    assert bool(torch.all(mixed[1:] / plain[1:] < mixed[:-1] / plain[:-1]))
    yarn = positions.yarn_inv_freq(D, BASE, KAPPA, N)
    assert yarn[0] == plain[0] and math.isclose(yarn[-1].item(), plain[-1].item() / KAPPA, rel_tol=1e-12)
    assert [positions.yarn_mscale(kappa).item() for kappa in (0.5, 1.0)] == [1.0, 1.0]
    assert math.isclose(positions.yarn_mscale(8.0).item(), 0.1 * math.log(8) + 1, rel_tol=1e-15)


def test_ntk_dynamic_per_row_base():
    """b' = b·((s·ℓ/N) − (s − 1))^(d/(d−2)) with ℓ each row's own (non-pad) length, ℓ ≥ N (B.5)."""
    key_valid = torch.ones(3, L, dtype=torch.bool)
    key_valid[1, 80:] = False
    key_valid[2, 20:] = False  # shorter than N: the base stays b
    ctx = build("ntk_dynamic", N, L, key_valid=key_valid, encoder=Encoder(dim=D))
    for row, ell in enumerate((L, 80, N)):
        s = 2.0
        base = BASE * ((s * ell / N) - (s - 1)) ** (D / (D - 2))
        cos, sin = expected_tables(theta(D, base), L)
        torch.testing.assert_close(ctx.cos[row, 0], cos, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ctx.sin[row, 0], sin, rtol=1e-12, atol=1e-12)


class OffDevice(TorchDispatchMode):
    """Records every operator that takes or makes a tensor off `device` (a table built on the CPU and
    copied over: on a GPU each such copy from pageable memory waits for the device)."""

    def __init__(self, device):
        super().__init__()
        self.device, self.ops = torch.device(device), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device != self.device for t in tensors):
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("padded", [False, True])
def test_variant_context_is_built_on_the_models_device(padded):
    """Every table of every B.6 variant (dynamic NTK's per-row bases from the valid lengths included)
    is made on the device it is asked for: before, each forward pass built θ on the CPU and copied it over,
    and read the valid lengths back to the host. The meta device stands in for a GPU: an operator that
    touches a CPU tensor shows, and a read of a meta tensor's values raises."""
    meta = torch.device("meta")
    key_valid = torch.ones(2, L, dtype=torch.bool, device=meta) if padded else None
    encoder = Encoder(dim=D)
    for name in positions.default_variants(N):
        with OffDevice(meta) as off:
            ctx = variant(name, N).context(encoder, key_valid, L, None, torch.float32, meta)
        assert off.ops == [], (name, off.ops)
        tables = [ctx.cos, ctx.sin, ctx.row_scale, ctx.visible]
        if ctx.clipped is not None:
            tables += [ctx.clipped.near_cos, ctx.clipped.far_sin]
        assert all(t.device == meta for t in tables if t is not None), name


@pytest.mark.parametrize("name", ["pi", "ntk", "ntk_fixed", "ntk_mixed", "ntk_dynamic", "yarn"])
def test_rope_variants_are_plain_rope_within_training_length(name):
    """κ = max(1, L/N): at L ≤ N every scaling is the identity (and YaRN's mscale is 1)."""
    ctx = build(name, N, N, encoder=Encoder(dim=D))
    cos, sin = expected_tables(theta(D), N)
    torch.testing.assert_close(ctx.cos[0, 0], cos, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ctx.sin[0, 0], sin, rtol=1e-12, atol=1e-12)


def test_variant_tables_follow_explicit_position_ids():
    """Variants rotate by the given (float, offset) positions, not by the index."""
    pos = torch.tensor([[0.5, 3.0, 7.25, 100000.0]], dtype=torch.float64)
    ctx = build("ntk", 2, 4, position_ids=pos, encoder=Encoder(dim=D))
    base = BASE * 2.0 ** (D / (D - 2))
    torch.testing.assert_close(ctx.cos[0, 0], torch.cos(pos[0, :, None] * theta(D, base)), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ ReRoPE: three matrices vs brute force


@pytest.mark.parametrize("leak", [None, 3.0])
@pytest.mark.parametrize("chunk", [1, 4, 19])
@pytest.mark.parametrize("normalization", ["softmax", "relu2"])
def test_rerope_chunked_matches_clipped_relative_brute_force(leak, chunk, normalization):
    seq, w, dim = 19, 5, 8
    q, k, v = qkv(s=seq, d=dim)
    key_valid = torch.ones(2, seq, dtype=torch.bool)
    key_valid[1, 13:] = False
    name = "rerope_w5" if leak is None else "leaky_rerope_w5_k3"
    ctx = build(name, 8, seq, key_valid=key_valid, chunk_size=chunk,
                encoder=Encoder(dim=dim, normalization=normalization))
    out, _ = chunked_attention(q, k, v, ctx, normalization=normalization)

    pos = torch.arange(seq, dtype=torch.float64)
    rel = pos[None, :] - pos[:, None]  # r_ij = j − i

    def angles():
        return (clipped_relative(rel, w, leak)[..., None] * theta(dim))[None]

    allowed = key_valid[:, None, None, :].expand(-1, 1, seq, -1)
    expected = brute_force_attention(q, k, v, angles, allowed=allowed, normalization=normalization)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_rerope_with_float_positions_and_logn():
    """Clipping acts on r = p_j − p_i of the given positions; log n† scales each row by max(1, log_N n_i)."""
    seq, w, dim, train = 12, 4, 8, 4
    q, k, v = qkv(b=1, s=seq, d=dim, seed=3)
    pos = torch.sort(torch.rand(1, seq, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 30).values
    ctx = build("leaky_rerope_w4_k2+logn_dagger", train, seq, position_ids=pos, chunk_size=5, encoder=Encoder(dim=dim))
    out, _ = chunked_attention(q, k, v, ctx, normalization="softmax")
    rel = pos[0][None, :] - pos[0][:, None]
    expected = brute_force_attention(
        q, k, v, lambda: (clipped_relative(rel, w, 2.0)[..., None] * theta(dim))[None],
        scale_rows=max(1.0, math.log(seq) / math.log(train)),
    )
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_leaky_rerope_auto_k_keeps_relative_positions_in_range():
    """k = (L−1−w)/(N−1−w) maps the largest distance L−1 to exactly N−1 (B.5)."""
    v = variant("leaky_rerope_w8_kauto", 32)
    k = v.leaky_k(512)
    assert math.isclose(k, (511 - 8) / (31 - 8))
    assert math.isclose(clipped_relative(torch.tensor(511.0), 8, k).item(), 31.0)
    assert v.leaky_k(20) == 1.0  # shorter than N: no compression


class BruteForceClippedContext(AttentionContext):
    """Model-level reference: attention with every pair rotated by its clipped relative position."""

    def __init__(self, window, seq, dim, key_valid):
        super().__init__()
        self.window, self.seq, self.dim, self.key_valid = window, seq, dim, key_valid

    def attend(self, q, k, v, *, normalization, dropout_p, training, need_weights=False):
        pos = torch.arange(self.seq, dtype=torch.float64)
        rel = pos[None, :] - pos[:, None]
        allowed = None if self.key_valid is None else self.key_valid[:, None, None, :].expand(-1, 1, self.seq, -1)
        out = brute_force_attention(q, k, v, lambda: (clipped_relative(rel, self.window)[..., None] * theta(self.dim))[None],
                                    allowed=allowed, normalization=normalization)
        return out, None


@pytest.mark.parametrize("family", ["roformer-v2", "gau-alpha", "deepnet"])
def test_rerope_in_every_family_matches_brute_force(family):
    """Layers hand unrotated (GAU: scaled) q, k to the context; ReRoPE there equals the pairwise reference."""
    config = make_config(family, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = randomize(model_class(config, "masked-lm")(config)).double().eval()
    ids, mask = batch(lengths=(17, 11))
    dim = config.attention_key_size if config.block_type == "gau" else config.head_size
    with torch.no_grad():
        got = model(ids, attention_mask=mask, position_variant=variant("rerope_w4", 8, chunk_size=6)).logits
        reference_ctx = BruteForceClippedContext(4, ids.shape[1], dim, mask.bool())
        if config.attention_normalization == "softmax_plus":
            visible = mask.sum(-1, dtype=torch.float64)[:, None, None, None]
            scale = torch.log(visible.clamp_min(config.softmax_plus_min_len)) / math.log(config.softmax_plus_base)
            reference_ctx = ScaledBruteForce(reference_ctx, scale)
        expected = model(ids, attention_mask=mask, attention_context=reference_ctx).logits
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-9, atol=1e-9)


class ScaledBruteForce(AttentionContext):
    """Brute force with softmax_plus's per-row factor log(n)/log(512) folded into q."""

    def __init__(self, inner, scale):
        super().__init__()
        self.inner, self.scale = inner, scale

    def attend(self, q, k, v, **kwargs):
        return self.inner.attend(q * self.scale, k, v, **kwargs)


# ------------------------------------------------------------------------------ shift invariance at 1e5


def test_rope_scores_shift_invariant_at_offset_1e5_in_fp32():
    """Scores depend on p_j − p_i only. With angles in fp64 (zoo.rope) the fp32 scores at offset 1e5 match
    the natural ones to fp32 rounding; angles computed in fp32 miss by orders of magnitude (B.6 item 8)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    inv_freq = theta(64)

    def rotate_by_table(x, cos, sin):
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, odd * cos + even * sin), -1).flatten(-2)

    def scores(offset, fp64_angles):
        if fp64_angles:
            cos, sin = rope_cos_sin(torch.arange(64) + offset, inv_freq, torch.float32)
        else:  # the naive table: position × θ rounded in fp32 before the trigonometry
            angles = (torch.arange(64, dtype=torch.float32) + offset)[:, None] * inv_freq.float()
            cos, sin = torch.cos(angles), torch.sin(angles)
        return rotate_by_table(q, cos, sin) @ rotate_by_table(k, cos, sin).T

    exact = (rotate(q.double(), torch.arange(64, dtype=torch.float64)[:, None] * inv_freq)
             @ rotate(k.double(), torch.arange(64, dtype=torch.float64)[:, None] * inv_freq).T)
    tolerance = 1e-5 * exact.abs().max().item()  # fp32 rounding of 64-term dot products
    assert (scores(0, True).double() - exact).abs().max().item() < tolerance
    assert (scores(100000, True).double() - exact).abs().max().item() < tolerance
    assert (scores(100000, False).double() - exact).abs().max().item() > 30 * tolerance


def test_model_logits_shift_invariant_at_offset_1e5():
    config = make_config("roformer-v2", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = randomize(model_class(config, "masked-lm")(config)).eval()
    ids, _ = batch(lengths=(24, 24))
    natural = torch.arange(24)[None].expand(2, -1)
    with torch.no_grad():
        base = model(ids, position_ids=natural).logits
        shifted = model(ids, position_ids=natural + 100000).logits
        through_variant = model(ids, position_ids=natural + 100000, position_variant=variant("baseline", 8, chunk_size=5)).logits
    bound = 1e-4 * base.abs().max().item()
    assert (shifted - base).abs().max().item() < bound
    assert (through_variant - base).abs().max().item() < bound


# ------------------------------------------------------------------------------ windows


def band(seq, window, sink=0):
    i, j = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
    allowed = (i - j).abs() <= window
    if sink:
        allowed = allowed | (j < sink)
    return allowed


@pytest.mark.parametrize("name, window, sink", [("window_half", 8, 0), ("window_full", 15, 0),
                                                ("window_lambda", 8, 4), ("window_w3", 3, 0)])
@pytest.mark.parametrize("chunk", [None, 5])
def test_window_equals_masked_reference(name, window, sink, chunk):
    seq, dim = 37, 8
    q, k, v = qkv(s=seq, d=dim, seed=1)
    key_valid = torch.ones(2, seq, dtype=torch.bool)
    key_valid[1, 29:] = False
    ctx = build(name, 16, seq, key_valid=key_valid, chunk_size=chunk, encoder=Encoder(dim=dim, position="none"))
    assert ctx.mask.window == window and ctx.mask.sink == sink
    out, _ = ctx.attend(q, k, v, normalization="softmax", dropout_p=0.0, training=False)
    allowed = band(seq, window, sink)[None, None] & key_valid[:, None, None, :]
    expected = brute_force_attention(q, k, v, lambda: torch.zeros(1, seq, seq, dim // 2, dtype=torch.float64), allowed=allowed)
    assert_rows_close(out, expected, key_valid)


def test_window_with_rope_chunked_equals_library_kernel_fp32():
    """The chunked kernel (keys sliced to the band) and zoo.attention.attention give the same output."""
    q, k, v = (t.float() for t in qkv(s=64, d=16, seed=2))
    ctx = build("window_half+logn_dagger", 16, 64, encoder=Encoder(dim=16))
    library, _ = AttentionContext.attend(ctx, q, k, v, normalization="softmax", dropout_p=0.0, training=False)
    chunked, _ = chunked_attention(q, k, v, ctx.__class__(**{**ctx.__dict__, "chunk_size": 7}), normalization="softmax")
    torch.testing.assert_close(chunked, library, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["rerope_w4", "window_half"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_kernel_runs_in_fp32_under_autocast_with_padding(name, dtype):
    """Under autocast (a model run in bf16 or fp16) the chunked kernel's products stayed fp32 only by
    their inputs: autocast made them bf16, and filling a padded key with fp32's minimum then failed
    ("cannot be converted to type BFloat16 without overflow"). It keeps autocast off: the same output
    as without autocast, to the bit."""
    q, k, v = (t.float() for t in qkv(s=20, d=16, seed=4))
    key_valid = torch.ones(2, 20, dtype=torch.bool)
    key_valid[1, 13:] = False
    ctx = build(name, 8, 20, key_valid=key_valid, encoder=Encoder(dim=16), chunk_size=6)
    expected, _ = chunked_attention(q, k, v, ctx, normalization="softmax")
    with torch.autocast("cpu", dtype=dtype):
        got, _ = chunked_attention(q, k, v, ctx, normalization="softmax")
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_window_larger_than_sequence_is_an_error():
    with pytest.raises(ValueError, match=r"'window_full': window 15 is larger than the sequence: a 10-token input"):
        build("window_full", 16, 10)
    with pytest.raises(ValueError, match=r"'rerope_w16': ReRoPE window 16 is larger than the sequence"):
        build("rerope_w16", 32, 16)


# ------------------------------------------------------------------------------ log n per row over valid keys


def brute_visible(key_valid, window, sink):
    b, s = key_valid.shape
    counts = torch.zeros(b, 1, s, 1, dtype=torch.float64)
    for row in range(b):
        for i in range(s):
            counts[row, 0, i, 0] = sum(
                1 for j in range(s)
                if key_valid[row, j] and (window is None or abs(i - j) <= window or j < sink)
            )
    return counts


@pytest.mark.parametrize("window, sink", [(None, 0), (3, 0), (4, 2)])
def test_visible_key_counts_brute_force(window, sink):
    key_valid = torch.rand(3, 14, generator=torch.Generator().manual_seed(7)) > 0.3
    got = visible_key_counts(key_valid, 14, window, sink)
    torch.testing.assert_close(got.expand(3, 1, 14, 1), brute_visible(key_valid, window, sink))


@pytest.mark.parametrize("name, window, sink", [("logn_dagger", None, 0), ("window_full+logn_dagger", 7, 0),
                                                ("window_lambda+logn_dagger", 4, 4)])
def test_logn_dagger_per_row_over_valid_keys(name, window, sink):
    """row scale_i = max(1, log n_i / log N), n_i the valid keys query i sees; padded keys never count."""
    seq, dim, train = 21, 8, 8
    key_valid = torch.ones(2, seq, dtype=torch.bool)
    key_valid[1, 12:] = False
    ctx = build(name, train, seq, key_valid=key_valid, encoder=Encoder(dim=dim, position="none"))
    n = brute_visible(key_valid, window, sink)
    expected_scale = torch.clamp(torch.log(n) / math.log(train), min=1.0)
    torch.testing.assert_close(ctx.row_scale.expand(2, 1, seq, 1), expected_scale)
    q, k, v = qkv(s=seq, d=dim, seed=4)
    allowed = key_valid[:, None, None, :]
    if window is not None:
        allowed = allowed & band(seq, window, sink)[None, None]
    expected = brute_force_attention(q, k, v, lambda: torch.zeros(1, seq, seq, dim // 2, dtype=torch.float64),
                                     scale_rows=expected_scale, allowed=allowed)
    for chunk in (None, 6):
        out, _ = PositionAttentionContext(**{**ctx.__dict__, "chunk_size": chunk}).attend(
            q, k, v, normalization="softmax", dropout_p=0.0, training=False)
        assert_rows_close(out, expected, key_valid)
    # what sits in padded keys cannot matter to valid rows
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 12:], v2[1, :, 12:] = 50.0, -50.0
    out2, _ = ctx.attend(q, k2, v2, normalization="softmax", dropout_p=0.0, training=False)
    torch.testing.assert_close(out2[1, :, :12], expected[1, :, :12], rtol=1e-10, atol=1e-10)


def test_softmax_plus_model_keeps_its_log_n_under_a_window():
    """A checkpoint trained with log n (softmax_plus, base 512) uses the per-query visible count in a window."""
    seq, dim = 30, 8
    key_valid = torch.ones(1, seq, dtype=torch.bool)
    key_valid[0, 25:] = False
    encoder = Encoder(dim=dim, normalization="softmax_plus", block="gau")
    ctx = build("window_half+logn_train", 16, seq, key_valid=key_valid, encoder=encoder)
    n = brute_visible(key_valid, 8, 0)
    min_len = encoder.config.softmax_plus_min_len
    torch.testing.assert_close(ctx.row_scale, torch.log(n.clamp_min(min_len)) / math.log(512))


# ------------------------------------------------------------------------------ plumbing, names, errors


@pytest.mark.parametrize("family", ["roformer-v2", "gau-alpha", "deepnet"])
def test_baseline_variant_is_the_default_forward(family):
    config = make_config(family, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = randomize(model_class(config, "masked-lm")(config)).double().eval()
    ids, mask = batch(lengths=(20, 9))
    with torch.no_grad():
        default = model(ids, attention_mask=mask).logits
        for options in ({}, {"chunk_size": 3}):
            got = model(ids, attention_mask=mask, position_variant=variant("baseline", 8, **options)).logits
            torch.testing.assert_close(got, default, rtol=1e-10, atol=1e-10)
        # Leaky ReRoPE with k = 1 is plain RoPE
        leaky = model(ids, attention_mask=mask, position_variant=variant("leaky_rerope_w4_k1", 8)).logits
        torch.testing.assert_close(leaky, default, rtol=1e-10, atol=1e-10)


def test_entropy_recorder_matches_attention_probabilities():
    config = make_config("roformer-v2", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = randomize(model_class(config, "masked-lm")(config)).double().eval()
    ids, mask = batch(lengths=(16, 10))
    encoder = model.encoder
    with torch.no_grad():
        probs = model(ids, attention_mask=mask, output_attentions=True).attentions
        ctx = variant("baseline", 8, chunk_size=4).context(encoder, mask.bool(), 16, None, torch.float64, torch.device("cpu"))
        recorder = EntropyRecorder()
        ctx.entropy = recorder.start_pass()
        model(ids, attention_mask=mask, attention_context=ctx)
    valid = mask.bool()[:, None, :].expand(-1, config.num_attention_heads, -1)
    for layer, p in enumerate(probs):
        h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
        assert math.isclose(recorder.per_layer()[layer], h[valid].mean().item(), rel_tol=1e-9)


@pytest.mark.parametrize("name, message", [
    ("ntk_mixd", r"unknown position variant 'ntk_mixd' in 'ntk_mixd'; did you mean ntk_mixed"),
    ("rerope_w8+ntk", r"'rerope_w8' already fixes the relative positions; it cannot be combined with 'ntk'"),
    ("ntk+yarn", r"combines 'ntk' and 'yarn': at most one rope_scaling part"),
    ("baseline+logn_dagger", r"'baseline' means no change and cannot be combined"),
    ("leaky_rerope_w8_k0", r"Leaky ReRoPE k must be ≥ 1, got 0.0"),
    ("randpos_ruoss", r"'randpos_ruoss' in 'randpos_ruoss' is a training-time option, not an inference variant"),
])
def test_bad_variant_names(name, message):
    with pytest.raises(ValueError, match=message):
        variant(name, 32)


def test_variant_model_mismatches_are_named():
    gau = Encoder(normalization="softmax_plus", block="gau")
    with pytest.raises(ValueError, match=r"'ntk\+logn_dagger': the model already scales by log n \(softmax_plus\)"):
        build("ntk+logn_dagger", 8, 16, encoder=gau)
    with pytest.raises(ValueError, match=r"'logn_train': logn_train needs a checkpoint trained with log n"):
        build("logn_train", 8, 16)
    with pytest.raises(ValueError, match=r"'yarn' changes RoPE, but the model has position_embedding_type='learned'"):
        build("yarn", 8, 16, encoder=Encoder(position="learned"))
    config = make_config("roformer-v2")
    model = model_class(config, "masked-lm")(config)
    ids = torch.ones(1, 8, dtype=torch.long)
    with pytest.raises(TypeError, match=r"position_variant must be a zoo.positions.PositionVariant, got str"):
        model(ids, position_variant="ntk")
    with pytest.raises(ValueError, match="pass attention_context or position_variant, not both"):
        model(ids, position_variant=variant("ntk", 4), attention_context=AttentionContext())


def test_default_variant_grid():
    names = positions.default_variants(64)
    assert names[:4] == ["baseline", "window_half", "window_full", "window_lambda"]
    assert {"rerope_w16", "rerope_w32", "leaky_rerope_w16_k16", "leaky_rerope_w16_k32", "ntk_mixed+logn_dagger"} <= set(names)
    for name in names:  # every default name parses
        variant(name, 64)
    assert not any("logn" in n for n in positions.default_variants(64, logn=False))


# ------------------------------------------------------------------------------ training-time positions (B.3)


def test_ruoss_positions_sorted_distinct_in_range():
    g = torch.Generator().manual_seed(0)
    pos = sample_ruoss_positions(2000, 16, 64, generator=g)
    assert pos.shape == (2000, 16) and pos.dtype == torch.int64
    assert int(pos.min()) >= 0 and int(pos.max()) < 64
    assert bool((pos[:, 1:] > pos[:, :-1]).all())  # sorted and distinct
    # uniform without replacement: the k-th order statistic of n from {0 … M−1} has mean (k+1)(M+1)/(n+1) − 1
    k = torch.arange(16, dtype=torch.float64)
    expected = (k + 1) * 65 / 17 - 1
    se = pos.double().std(0) / math.sqrt(2000)
    assert bool(((pos.double().mean(0) - expected).abs() < 5 * se + 1e-9).all())
    # every value is reachable, and the generator makes it reproducible
    assert len(torch.unique(pos)) == 64
    assert torch.equal(sample_ruoss_positions(3, 16, 64, generator=torch.Generator().manual_seed(1)),
                       sample_ruoss_positions(3, 16, 64, generator=torch.Generator().manual_seed(1)))


def test_random_positions_are_drawn_on_their_generators_device():
    """A `torch.set_default_device("cuda")` / `with torch.device("cuda"):` around the pretraining collator
    or the robustness probes made these draws on the GPU with a CPU generator, which CUDA refuses; they
    follow the generator now (the meta device stands in for CUDA: it would hold no values)."""
    expected = (sample_ruoss_positions(3, 16, 64, generator=torch.Generator().manual_seed(1)),
                sample_equal_mean_positions(3, 16, generator=torch.Generator().manual_seed(1)))
    with torch.device("meta"):
        drawn = (sample_ruoss_positions(3, 16, 64, generator=torch.Generator().manual_seed(1)),
                 sample_equal_mean_positions(3, 16, generator=torch.Generator().manual_seed(1)))
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected))
    with pytest.raises(ValueError, match="max_position=10 is smaller than seq_len=16"):
        sample_ruoss_positions(1, 16, 10)


def test_equal_mean_positions_exponential_span():
    g = torch.Generator().manual_seed(0)
    n, rows = 32, 20000
    pos = sample_equal_mean_positions(rows, n, generator=g)
    assert pos.shape == (rows, n) and pos.dtype == torch.float64
    spans = pos[:, -1]
    assert bool((pos[:, 0] == 0).all())
    # evenly spaced: linspace(0, 1, n)·n'
    torch.testing.assert_close(pos, torch.linspace(0, 1, n, dtype=torch.float64)[None] * spans[:, None])
    # n' ~ Exponential with mean = std = N
    assert abs(spans.mean().item() - n) < 5 * n / math.sqrt(rows)
    assert abs(spans.std().item() - n) < 0.05 * n
    ks = torch.sort(spans).values
    cdf = 1 - torch.exp(-ks / n)
    assert (cdf - torch.arange(1, rows + 1) / rows).abs().max().item() < 1.63 / math.sqrt(rows)  # KS at 1%
    assert torch.equal(sample_equal_mean_positions(2, 8, generator=torch.Generator().manual_seed(3)),
                       sample_equal_mean_positions(2, 8, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="mean_span must be positive"):
        sample_equal_mean_positions(1, 8, mean_span=0)
