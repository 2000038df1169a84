"""Every custom autograd function and compiled CPU kernel takes any tensor layout (issue 16).

CLUE fine-tuning with dropout crashed in `blocked_softmax_attention.backward`: a classification head
reads position 0, so the gradient reaching attention is a transposed view (which, with a batch of one,
stays a view under the kernel's reshape), and the dropout rescaling kept its strides. Here each
function is driven with inputs and incoming gradients in the layouts models produce (transposed,
sliced, expanded, a loss on one position only), dropout on and off, fp32 and bf16, over a seeded sweep
of shapes, and its outputs and gradients are compared with the PyTorch path run in fp64 on the same
values. The kernels' entry points refuse what they cannot read with a message naming the argument.
"""

import itertools
import random

import pytest
import torch

import zoo.attention
import zoo.dropout
import zoo.kernels.ops
from zoo.attention import SoftmaxAttention, blocked_softmax_attention
from zoo.dropout import fused_dropout, keep_mask
from zoo.families import model_class
from zoo.kernels import (
    attention_kernels,
    dropout_kernels,
    elementwise_kernels,
    keep_scale,
    new_seed,
    reference_keep_mask,
    threshold_for,
)
from zoo.norms import fused_rms_norm
from zoo.rope import apply_rope, fused_rope, rope_cos_sin, rope_inv_freq

from .kernel_switch import kernels_off
from .test_models import SMALL, batch, make_config, randomize


@pytest.fixture(autouse=True)
def kernels_built():
    for name, module in (("dropout", dropout_kernels()), ("attention", attention_kernels()),
                         ("elementwise", elementwise_kernels())):
        assert module is not None, f"the CPU {name} kernel must build here (needs a C++ compiler)"


LAYOUTS = ("contiguous", "transposed", "reversed", "sliced", "expanded")
# how the gradient reaches the output: a tensor in one of LAYOUTS handed to autograd as it is, the
# gradient of a scalar loss (expanded, every stride 0), or a head reading one position
GRADIENTS = LAYOUTS + ("sum", "position0")


def make(shape, layout, g, dtype):
    """A random tensor of `shape` (at least 3 dims) whose memory has `layout`:

    transposed: dims 1 and 2 swapped in memory, unit stride in the last one (q, k, v as views of a
                [B, S, H, d] projection);
    reversed:   the order of every dim reversed, so the last dim is the strided one;
    sliced:     every other element of a wider tensor, at a storage offset;
    expanded:   one value along dim 1 (stride 0), as a broadcast leaves it.
    """
    shape = tuple(shape)
    if layout == "expanded":
        return torch.randn((shape[0], 1, *shape[2:]), generator=g).to(dtype).expand(shape)
    x = torch.randn(shape, generator=g).to(dtype)
    if layout == "transposed":
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "reversed":
        dims = tuple(reversed(range(x.dim())))
        return x.permute(dims).contiguous().permute(dims)
    if layout == "sliced":
        wide = torch.zeros(*shape[:-1], 2 * shape[-1] + 1, dtype=dtype)
        wide[..., 1::2] = x
        return wide[..., 1::2]
    assert layout == "contiguous"
    return x


def incoming(mode, shape, g, dtype):
    """f(out) → (what to differentiate, its gradient) for an incoming gradient of `mode`; the same f
    serves the function under test and the fp64 reference (values are rounded to `dtype` first)."""
    if mode == "sum":
        return lambda out: (out.sum(), None)
    if mode == "position0":  # a classifier on [CLS] of the [B, S, H·d] view of a [B, H, S, d] output
        weight = torch.randn(shape[1] * shape[3] if len(shape) == 4 else shape[2], generator=g).to(dtype)

        def head(out):
            rows = out.transpose(1, 2).flatten(2) if out.dim() == 4 else out
            return (rows[:, 0] * weight.to(out.dtype)).sum(), None

        return head
    grad = make(shape, mode, g, dtype)
    return lambda out: (out, grad.to(out.dtype))


def gradients(function, inputs, loss):
    inputs = [x.requires_grad_() for x in inputs]
    out = function(*inputs)
    target, grad = loss(out)
    return out, torch.autograd.grad(target, inputs, grad)


def fp64(inputs):
    return [x.detach().double() for x in inputs]


# (out rtol, out atol, grad rtol, grad atol) against the fp64 reference, per function and dtype; atol is
# multiplied by the largest value where that exceeds 1. fp32: a few roundings of 2⁻²⁴ and sums over a row. bf16 (unit
# roundoff 2⁻⁸): the RMS norm and RoPE round their fp32 result once, so 2⁻⁷ leaves room for the fp32
# steps before it; attention rounds every stored intermediate (q·s, scores, P, the output, dO·Vᵀ, dS),
# and the cancellation in dS = P ⊙ (dP − rowsum) makes gradient errors a few percent of the largest
# value. Over this sweep the largest errors were about half of these bounds; a wrong stride, a wrong
# mask or a missed rescaling is off by O(1).
TOLERANCES = {
    ("attention", torch.float32): (1e-5, 2e-6, 1e-4, 2e-5),
    ("attention", torch.bfloat16): (2e-2, 3e-2, 3e-2, 6e-2),
    ("rms", torch.float32): (1e-5, 1e-6, 1e-5, 1e-5),
    ("rms", torch.bfloat16): (2**-7, 1e-6, 2e-2, 2e-2),
    ("rope", torch.float32): (1e-6, 1e-6, 1e-6, 1e-6),
    ("rope", torch.bfloat16): (2**-7, 1e-3, 2**-7, 1e-3),
}


def assert_matches(kind, dtype, got, want, what, names="x"):
    out_rtol, out_atol, grad_rtol, grad_atol = TOLERANCES[kind, dtype]
    (out, grads), (ref_out, ref_grads) = got, want
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads), what
    scale = max(1.0, ref_out.abs().max().item())
    torch.testing.assert_close(out.double(), ref_out, rtol=out_rtol, atol=out_atol * scale, msg=lambda m: f"{what}: out\n{m}")
    for name, g, ref in zip(names, grads, ref_grads, strict=True):
        scale = max(1.0, ref.abs().max().item())
        torch.testing.assert_close(g.double(), ref, rtol=grad_rtol, atol=grad_atol * scale,
                                   msg=lambda m: f"{what}: d{name}\n{m}")


def sweep(seed):
    """Every pair (layout of the first input, incoming gradient) once, with the other inputs' layouts
    rotated through LAYOUTS and a fresh random shape per case (batch and heads 1 included, where the
    reshapes of [B, H, ...] keep views)."""
    rng = random.Random(seed)
    for case, (layout, mode) in enumerate(itertools.product(LAYOUTS, GRADIENTS)):
        layouts = [LAYOUTS[(LAYOUTS.index(layout) + i) % len(LAYOUTS)] for i in range(3)]
        yield case, rng, layouts, mode


def reference_attention(q, k, v, bias, scale, keep, rescale):
    scores = (q @ k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores, -1)
    if keep is not None:
        probs = probs * keep * rescale
    return probs @ v


# (function, dropout p): SoftmaxAttention with dropout draws its mask with the dropout kernel, or with
# torch's generator when there is no kernel (ZOO_DISABLE_KERNELS=1)
ATTENTION_PATHS = [("blocked", 0.0), ("blocked", 0.2), ("softmax", 0.0), ("softmax-kernel-mask", 0.2),
                   ("softmax-pytorch-mask", 0.2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("function,dropout_p", ATTENTION_PATHS, ids=[f"{f}-p{p}" for f, p in ATTENTION_PATHS])
def test_attention_functions_take_any_layout(function, dropout_p, dtype, monkeypatch):
    """blocked_softmax_attention (the compiled kernel, blocks of a few rows so that shapes split into
    several) and SoftmaxAttention, with padding biases broadcast or expanded: the output and the three
    gradients against fp64 autograd with the mask the function must have drawn."""
    if function == "softmax-pytorch-mask":
        kernels_off(monkeypatch, "dropout")
    monkeypatch.setattr(zoo.kernels.ops, "BLOCK_ELEMENTS", 48)
    for case, rng, layouts, mode in sweep(seed=ATTENTION_PATHS.index((function, dropout_p))):
        b, h, q_len, k_len = rng.choice([1, 2]), rng.choice([1, 3]), rng.randint(1, 13), rng.randint(1, 13)
        d, dv = rng.choice([4, 8]), rng.choice([3, 8])
        g = torch.Generator().manual_seed(case)
        q, k, v = (make(shape, layout, g, dtype)
                   for shape, layout in zip([(b, h, q_len, d), (b, h, k_len, d), (b, h, k_len, dv)], layouts))
        bias = None
        if case % 3:  # padding of the second sequence, as [B, 1, 1, Sk] or expanded to the full shape
            bias = torch.zeros(b, 1, 1, k_len, dtype=dtype)
            bias[-1, ..., max(1, k_len // 2):] = torch.finfo(dtype).min
            if case % 3 == 2:
                bias = bias.expand(b, h, q_len, k_len)
        scale, seed, p = 0.7, 1000 + case, dropout_p
        what = f"case {case}: q, k, v {layouts}, gradient {mode}, B={b} H={h} Sq={q_len} Sk={k_len} d={d} dv={dv}"

        def run(q, k, v):
            torch.manual_seed(seed)
            if function == "blocked":
                return blocked_softmax_attention(q, k, v, bias, scale, p, seed)
            return SoftmaxAttention.apply(q, k, v, bias, scale, p, None)

        loss = incoming(mode, (b, h, q_len, dv), g, dtype)
        got = gradients(run, [q, k, v], loss)
        keep, rescale = None, 1.0
        if p > 0:
            torch.manual_seed(seed)
            if function == "blocked":
                keep, rescale = reference_keep_mask((b, h, q_len, k_len), p, seed), keep_scale(p)
            elif function == "softmax-kernel-mask":
                keep, rescale = reference_keep_mask((b, h, q_len, k_len), p, new_seed()), keep_scale(p)
            else:
                keep, rescale = keep_mask((b, h, q_len, k_len), p, torch.device("cpu"))
        ref_bias = None if bias is None else bias.double()
        want = gradients(lambda q, k, v: reference_attention(q, k, v, ref_bias, scale, keep, rescale), fp64([q, k, v]), loss)
        assert_matches("attention", dtype, got, want, what, names="qkv")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_rms_norm_takes_any_layout(dtype):
    """Rows of 1 to 64 values in every layout; the kernel itself reads contiguous rows only."""
    for case, rng, layouts, mode in sweep(seed=21):
        shape = (rng.choice([1, 2]), rng.randint(1, 9), rng.choice([1, 7, 64]))
        g = torch.Generator().manual_seed(case)
        x = make(shape, layouts[0], g, dtype)
        loss = incoming(mode, shape, g, dtype)
        got = gradients(lambda x: fused_rms_norm(x, 1e-6), [x], loss)
        want = gradients(lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), fp64([x]), loss)
        assert_matches("rms", dtype, got, want, f"case {case}: x {layouts[0]}, gradient {mode}, shape {shape}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_rope_takes_any_layout(dtype):
    """x in every layout (the kernel reads strided rows itself and copies only a strided last dim), and
    tables shared, per sequence, expanded from one sequence, or with a strided last dim."""
    tables = ("shared", "per-sequence", "expanded", "sliced")
    for case, rng, layouts, mode in sweep(seed=31):
        b, h, s, d = rng.choice([1, 2]), rng.choice([1, 3]), rng.randint(1, 11), rng.choice([2, 8, 16])
        g = torch.Generator().manual_seed(case)
        x = make((b, h, s, d), layouts[0], g, dtype)
        table = tables[case % len(tables)]
        positions = torch.arange(s, dtype=torch.float64)[None] + 37.5 * torch.arange(b if table != "shared" else 1)[:, None]
        cos, sin = (t[:, None] for t in rope_cos_sin(positions, rope_inv_freq(d), dtype))
        if table == "expanded":
            cos, sin = cos[:1].expand(b, 1, s, d // 2), sin[:1].expand(b, 1, s, d // 2)
        elif table == "sliced":
            cos, sin = (torch.stack((t, torch.zeros_like(t)), -1).flatten(-2)[..., ::2] for t in (cos, sin))
        loss = incoming(mode, (b, h, s, d), g, dtype)
        got = gradients(lambda x: fused_rope(x, cos, sin), [x], loss)
        want = gradients(lambda x: apply_rope(x, cos.double(), sin.double()), fp64([x]), loss)  # fp64: no kernel
        assert_matches("rope", dtype, got, want, f"case {case}: x {layouts[0]}, tables {table}, gradient {mode}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_fused_dropout_takes_any_layout(p, dtype):
    """Element i of the logical (row-major) order is kept by the documented mask whatever the strides of x
    and of the incoming gradient; kept elements are scaled once (one rounding to the dtype)."""
    # the scale is rounded to fp32 and the product to the dtype: 2⁻²⁴ each in fp32, 2⁻⁸ for the product in bf16
    rtol = 2**-23 if dtype == torch.float32 else 2**-7
    for case, rng, layouts, mode in sweep(seed=41):
        shape = (rng.choice([1, 2]), rng.randint(1, 9), rng.randint(1, 13), rng.choice([1, 5]))
        g = torch.Generator().manual_seed(case)
        x = make(shape, layouts[0], g, dtype)
        loss = incoming(mode, shape, g, dtype)
        torch.manual_seed(case)
        out, (grad,) = gradients(lambda x: fused_dropout(x, p), [x], loss)
        torch.manual_seed(case)
        keep = reference_keep_mask(shape, p, new_seed())
        what = f"case {case}: x {layouts[0]}, gradient {mode}, shape {shape}"
        assert torch.equal(out != 0, keep), what  # randn has no zeros: the zeros are the dropped elements
        want_out, (want_grad,) = gradients(lambda x: x * keep * keep_scale(p), fp64([x]), loss)
        torch.testing.assert_close(out.double(), want_out, rtol=rtol, atol=0, msg=lambda m: f"{what}: out\n{m}")
        torch.testing.assert_close(grad.double(), want_grad, rtol=rtol, atol=0, msg=lambda m: f"{what}: gradient\n{m}")


@pytest.mark.parametrize("family", list(SMALL))
def test_classification_backward_with_default_dropout_batch_of_one(family, monkeypatch):
    """The reported failure as a model runs it: sequence classification, default dropout, training, one
    sequence. The blocked kernel's gradients equal those of SoftmaxAttention, which draws the same masks
    from the same seeds (the dropout kernel stays on for both runs)."""
    config = make_config(family, attention_backend="matmul", num_labels=3)
    assert config.attention_probs_dropout_prob > 0 and config.hidden_dropout_prob > 0
    model = randomize(model_class(config, "sequence-classification")(config)).train()
    ids, mask = batch(lengths=(17,))

    def run():
        model.zero_grad()
        torch.manual_seed(5)
        out = model(ids, attention_mask=mask, labels=torch.tensor([2]))
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    blocked_logits, blocked_grads = run()
    kernels_off(monkeypatch, "attention")
    logits, grads = run()
    # the two paths sum in other orders: fp32 rounding differences of about 1e-6 on gradients of O(1)
    torch.testing.assert_close(blocked_logits, logits, rtol=1e-5, atol=1e-5)
    assert blocked_grads.keys() == grads.keys() and len(grads) > 4
    for name, grad in grads.items():
        torch.testing.assert_close(blocked_grads[name], grad, rtol=1e-4, atol=2e-5, msg=lambda m: f"{name}\n{m}")


def _messages():
    """(entry point call, the message it must raise): each names the function and the argument."""
    a, e = attention_kernels(), elementwise_kernels()
    d = dropout_kernels()
    q = torch.randn(6, 5, 8)
    strided = q.transpose(1, 2).contiguous().transpose(1, 2)
    probs = torch.empty(6, 5, 5)
    return {
        "attention q dtype": (lambda: a.attention_forward(q.double(), q, q, None, 3, None, 0, 0, 1, 5),
                              "attention_forward: q must be float32 or bfloat16, got Double"),
        "attention k strides": (lambda: a.attention_forward(q, strided, q, None, 3, None, 0, 0, 1, 5),
                                r"attention_forward: k must be contiguous, got sizes \[6, 5, 8\] with strides \[40, 1, 5\]"),
        "attention v dtype": (lambda: a.attention_forward(q, q, q.bfloat16(), None, 3, None, 0, 0, 1, 5),
                              r"attention_forward: v must have the dtype of q \(Float\), got BFloat16"),
        "attention k shape": (lambda: a.attention_forward(q, q[..., :4], q, None, 3, None, 0, 0, 1, 5),
                              r"attention_forward: k must be \[heads, Sk, d\] with q's heads and d"),
        "attention heads": (lambda: a.attention_forward(q, q, q, None, 4, None, 0, 0, 1, 5),
                            r"attention_forward: heads must be positive and divide q.size\(0\) = 6, got 4"),
        "attention bias": (lambda: a.attention_forward(q, q, q, torch.zeros(2, 3, 5, 4), 3, None, 0, 0, 1, 5),
                           r"attention_forward: bias must broadcast to \[batch, heads, Sq, Sk\] = \[2, 3, 5, 5\]"),
        "attention bool bias": (lambda: a.attention_forward(q, q, q, torch.ones(5, dtype=torch.bool), 3, None, 0, 0, 1, 5),
                                "attention_forward: bias must be a floating-point additive mask, got Bool"),
        "attention threshold": (lambda: a.attention_forward(q, q, q, None, 3, None, 0, 65536, 1, 5),
                                r"attention_forward: threshold must be in \[0, 65536\)"),
        "attention device": (lambda: a.attention_forward(q.to("meta"), q, q, None, 3, None, 0, 0, 1, 5),
                             "attention_forward: q must be on the CPU, got meta"),
        "attention grad_out strides": (lambda: a.attention_backward(strided, q, q, q, probs, 0, 0, 1, 5),
                                       "attention_backward: grad_out must be contiguous"),
        "attention probs shape": (lambda: a.attention_backward(q, q, q, q, probs[:, :4], 0, 0, 1, 5),
                                  r"attention_backward: probs must be \[heads, Sq, Sk\] = \[6, 5, 5\], got \[6, 4, 5\]"),
        "dropout x strides": (lambda: d.masked_scale(strided, 1, threshold_for(0.1), 1.0),
                              "masked_scale: x must be contiguous"),
        "dropout x dtype": (lambda: d.masked_scale(q.long(), 1, threshold_for(0.1), 1.0),
                            "masked_scale: x must be float32 or bfloat16, got Long"),
        "dropout grad shape": (lambda: d.softmax_dropout_backward(probs[:, :4].contiguous(), probs, 1, 10),
                               r"softmax_dropout_backward: grad must be the size of probs = \[6, 5, 5\], got \[6, 4, 5\]"),
        "dropout grad dtype": (lambda: d.softmax_dropout_backward(probs.bfloat16(), probs, 1, 10),
                               r"softmax_dropout_backward: grad must have the dtype of probs \(Float\), got BFloat16"),
        "rms x strides": (lambda: e.rms_norm_forward(strided, 1e-6), "rms_norm_forward: x must be contiguous"),
        "rms scalar": (lambda: e.rms_norm_forward(torch.tensor(1.0), 1e-6), "rms_norm_forward: x must have a last dimension"),
        "rms rstd": (lambda: e.rms_norm_backward(q, q, torch.ones(29)),
                     r"rms_norm_backward: rstd must be \[rows of y\] = \[30\], got \[29\]"),
        "rope x strides": (lambda: e.rope(strided[None], torch.ones(1, 1, 5, 4), torch.ones(1, 1, 5, 4), 1.0, False),
                           "rope: x must have a unit stride in its last dimension"),
        "rope table shape": (lambda: e.rope(q[None], torch.ones(1, 1, 5, 3), torch.ones(1, 1, 5, 4), 1.0, False),
                             r"rope: cos must broadcast to \[B, 1, S, d/2\] = \[1, 1, 5, 4\], got \[1, 1, 5, 3\]"),
        "rope table dtype": (lambda: e.rope(q[None], torch.ones(1, 1, 5, 4), torch.ones(1, 1, 5, 4).bfloat16(), 1.0, False),
                             r"rope: sin must have the dtype of x \(Float\), got BFloat16"),
    }


@pytest.mark.parametrize("case", [
    "attention q dtype", "attention k strides", "attention v dtype", "attention k shape", "attention heads",
    "attention bias", "attention bool bias", "attention threshold", "attention device",
    "attention grad_out strides", "attention probs shape", "dropout x strides", "dropout x dtype",
    "dropout grad shape", "dropout grad dtype", "rms x strides", "rms scalar", "rms rstd", "rope x strides",
    "rope table shape", "rope table dtype"])
def test_kernel_entry_points_name_the_bad_argument(case):
    """Called directly with what they cannot read, the compiled entry points raise before touching
    memory, naming the entry point and the argument (here: one case per check)."""
    call, message = _messages()[case]
    with pytest.raises(RuntimeError, match=message):
        call()
