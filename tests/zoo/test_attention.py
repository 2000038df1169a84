"""The attention kernels: every fast path computes the same function as the reference path."""

import pytest
import torch
from torch.nn.attention import SDPBackend

import zoo
import zoo.attention
import zoo.dropout
import zoo.kernels.ops
import zoo.norms
import zoo.rope
from zoo.attention import AttentionMask, SoftmaxAttention, attention, blocked_softmax_attention
from zoo.dropout import dropout, keep_mask
from zoo.families import model_class
from zoo.kernels import dropout_kernels, keep_scale, new_seed, reference_keep_mask, registry, threshold_for

from .kernel_switch import kernels_off
from .test_models import SMALL, batch, make_config, randomize


def reference_attention(q, k, v, key_valid=None, scale=None, keep=None, p=0.0):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, -1)
    if keep is not None:
        probs = probs * keep / (1 - p)
    return probs @ v


def qkv(b=2, a=3, s=9, d=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, a, s, d, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


def test_softmax_attention_gradients_fp64():
    q, k, v = qkv()
    bias = torch.zeros(2, 1, 1, 9, dtype=torch.float64)
    bias[1, ..., 6:] = torch.finfo(torch.float64).min
    keep = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(1)) > 0.25
    assert torch.autograd.gradcheck(lambda q, k, v: SoftmaxAttention.apply(q, k, v, bias, 0.3, 0.25, keep), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: SoftmaxAttention.apply(q, k, v, None, 0.3, 0.0, None), (q, k, v))


@pytest.mark.parametrize("seq_len", [1, 7, 64, 300])
@pytest.mark.parametrize("padded", [False, True])
def test_backends_agree_fp32(seq_len, padded):
    """matmul kernel, sdpa, and the plain autograd path (need_weights): same outputs and gradients."""
    q, k, v = qkv(s=seq_len, d=16, dtype=torch.float32)
    key_valid = None
    if padded:
        key_valid = torch.ones(2, seq_len, dtype=torch.bool)
        key_valid[1, max(1, seq_len // 2):] = False
    mask = AttentionMask(key_valid=key_valid)
    outputs, grads = {}, {}
    for name, kwargs in {"matmul": dict(backend="matmul"), "sdpa": dict(backend="sdpa"),
                         "autograd": dict(backend="matmul", need_weights=True)}.items():
        out, _ = attention(q, k, v, mask, **kwargs)
        outputs[name] = out
        grads[name] = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected = reference_attention(q.double(), k.double(), v.double(), key_valid).float()
    for name in outputs:
        torch.testing.assert_close(outputs[name], expected, rtol=1e-5, atol=1e-5, msg=name)
        for g, g_ref in zip(grads[name], grads["autograd"]):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5, msg=name)


def test_auto_backend_takes_sdpa_only_for_fp32_inference(monkeypatch):
    """"auto" on the CPU: sdpa for fp32 inference (where it is as fast or faster), the matmul kernel
    otherwise (bf16, training, dropout); both give the reference function."""
    from zoo import attention as attention_module

    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or real_sdpa(*a, **kw))
    for seq_len in (7, 512):
        key_valid = torch.ones(2, seq_len, dtype=torch.bool)
        key_valid[1, seq_len // 2 + 1:] = False
        mask = AttentionMask(key_valid=key_valid)
        q, k, v = qkv(s=seq_len, d=16, dtype=torch.float32)
        expected = reference_attention(q.double(), k.double(), v.double(), key_valid).float()
        calls.clear()
        with torch.no_grad():
            out, _ = attention(q, k, v, mask)
        assert calls == [1]
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        for case in ("grad", "dropout", "bf16"):
            calls.clear()
            qq, kk, vv = (q.bfloat16(), k.bfloat16(), v.bfloat16()) if case == "bf16" else (q, k, v)
            with torch.set_grad_enabled(case == "grad"):
                attention(qq, kk, vv, mask, dropout_p=0.1 if case == "dropout" else 0.0, training=case == "dropout")
            assert calls == [], case


@pytest.fixture(params=["blocked", "kernel", "pytorch"])
def dropout_path(request, monkeypatch):
    """Run a test with the blocked attention kernel, with the dropout kernel alone (SoftmaxAttention),
    and with the PyTorch fallback (no compiler)."""
    if request.param != "pytorch":
        assert dropout_kernels() is not None, "the CPU dropout kernel must build here (needs a C++ compiler)"
    if request.param == "blocked":
        assert zoo.kernels.attention_kernels() is not None, "the CPU attention kernel must build here"
    else:
        kernels_off(monkeypatch, "attention")
    if request.param == "pytorch":
        kernels_off(monkeypatch, "dropout")
    return request.param


def expected_mask(path, seed_state, shape, p):
    """The mask the path under test draws after torch.manual_seed(seed_state)."""
    torch.manual_seed(seed_state)
    if path != "pytorch":
        return reference_keep_mask(shape, p, new_seed()), keep_scale(p)
    return keep_mask(shape, p, torch.device("cpu"))


def test_dropout_attention_equals_reference_with_the_same_mask(dropout_path):
    """Forward and backward of the dropout path against fp64 autograd with the mask it must have drawn."""
    q, k, v = qkv(s=33, d=8, dtype=torch.float32)
    torch.manual_seed(7)
    out, _ = attention(q, k, v, None, dropout_p=0.1, training=True, backend="matmul")
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    keep, scale = expected_mask(dropout_path, 7, (2, 3, 33, 33), 0.1)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = reference_attention(q64, k64, v64, keep=keep, p=1 - 1 / scale)
    expected_grads = torch.autograd.grad(expected, (q64, k64, v64), grad.double())
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e.float(), rtol=1e-4, atol=1e-6)


def test_kernel_builds_are_named_for_this_cpu():
    """Builds use -march=native; the module name carries a digest of the CPU's flags, so a shared
    extension cache never hands one CPU's build to another."""
    from zoo.kernels import attention_kernels, cpu_tag, elementwise_kernels

    tag = cpu_tag()
    assert len(tag) == 8 and int(tag, 16) >= 0
    for module in (dropout_kernels(), attention_kernels(), elementwise_kernels()):
        assert module.__name__.endswith("_" + tag)


def test_kernel_mask_is_the_documented_hash():
    x = torch.randn(3, 7, 129)
    out = dropout_kernels().masked_scale(x, 2**61 + 12345, threshold_for(0.1), 1.5)
    keep = reference_keep_mask(x.shape, 0.1, 2**61 + 12345)
    assert torch.equal(out, torch.where(keep, x * 1.5, torch.zeros(())))
    bf16 = x.bfloat16()
    assert torch.equal(dropout_kernels().masked_scale(bf16, 99, threshold_for(0.25), 1.0),
                       torch.where(reference_keep_mask(x.shape, 0.25, 99), bf16, torch.zeros((), dtype=torch.bfloat16)))


def test_fast_dropout_rate_expectation_and_gradient(dropout_path):
    torch.manual_seed(0)
    x = torch.ones(4_000_000, requires_grad=True)
    y = dropout(x, 0.1, training=True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.001  # realised keep rate 0.89999 ± 0.00015 (binomial)
    assert abs(y.mean().item() - 1.0) < 0.001  # inverted scaling keeps the expectation
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, y.detach())  # the backward applies the same mask and scale
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1, training=True), y)  # reproducible from the seed
    assert dropout(x, 0.1, training=False) is x


@pytest.mark.parametrize("family", list(SMALL))
def test_fast_model_path_equals_reference_model_path(family):
    """Whole models: the matmul kernel gives the fp32 outputs and gradients of the plain autograd path."""
    config = make_config(family, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_backend="matmul")
    model = randomize(model_class(config, "masked-lm")(config)).train()
    ids, mask = batch()
    fast = model(ids, attention_mask=mask, labels=ids)
    fast.loss.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    slow = model(ids, attention_mask=mask, labels=ids, output_attentions=True)  # need_weights: plain path
    slow.loss.backward()
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", list(SMALL))
@pytest.mark.parametrize("attention_dropout", [0.0, 0.1])
def test_compiled_kernels_leave_whole_models_unchanged(family, attention_dropout, monkeypatch):
    """Whole models with padding, fp32, training mode: every compiled kernel on (blocked attention, fused
    RMS norm and RoPE, dropout) against every kernel off (the PyTorch paths). Hidden dropout is off
    (the two dropout paths draw different masks); with attention dropout the dropout kernel stays on
    in the second run, so SoftmaxAttention draws the blocked kernel's mask from the same seed."""
    config = make_config(family, hidden_dropout_prob=0.0, attention_probs_dropout_prob=attention_dropout,
                         attention_backend="matmul")
    model = randomize(model_class(config, "masked-lm")(config)).train()
    ids, mask = batch()

    def run():
        model.zero_grad()
        torch.manual_seed(11)
        out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_logits, fast_grads = run()
    kernels_off(monkeypatch, "attention")
    kernels_off(monkeypatch, "elementwise")
    if attention_dropout == 0.0:
        kernels_off(monkeypatch, "dropout")
    slow_logits, slow_grads = run()
    # fp32 rounding of two summation orders through every layer: a few tens of ulps of the largest
    # logit (DeepNet's reach about 7, where 32 ulps are 2.8e-5), not of each logit near zero
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-5, atol=32 * 2**-23 * slow_logits.abs().max().item())
    for name, grad in slow_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("path", ["blocked", "matmul"])
def test_autocast_keeps_attention_in_bf16(path, monkeypatch):
    seen = []
    if path == "blocked":
        original = zoo.attention.blocked_softmax_attention

        def spy(q, k, v, *rest):
            seen.append((q.dtype, k.dtype, v.dtype))
            return original(q, k, v, *rest)

        monkeypatch.setattr(zoo.attention, "blocked_softmax_attention", spy)
    else:
        kernels_off(monkeypatch, "attention")
        original = SoftmaxAttention.forward

        def spy(ctx, q, k, v, *rest):
            seen.append((q.dtype, k.dtype, v.dtype))
            return original(ctx, q, k, v, *rest)

        monkeypatch.setattr(SoftmaxAttention, "forward", staticmethod(spy))
    model = zoo.create("roformer-v2-mini").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(104, 12000, (2, 16)), labels=torch.randint(104, 12000, (2, 16))).loss.backward()
    assert seen and all(dtypes == (torch.bfloat16,) * 3 for dtypes in seen)


def windowed_reference(q, k, v, allowed, scale, keep=None, p=0.0):
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, -1)
    if keep is not None:
        probs = probs * keep / (1 - p)
    return probs @ v


@pytest.mark.parametrize("block_elements", [64, 2**19])  # many row blocks and head groups / one block per head
@pytest.mark.parametrize("q_len,k_len", [(1, 1), (7, 7), (40, 40), (300, 300), (5, 33)])
@pytest.mark.parametrize("masking", ["none", "padding", "window"])
def test_blocked_kernel_equals_fp64_reference(block_elements, q_len, k_len, masking, monkeypatch):
    """The compiled blocked kernel, fp32, against fp64 autograd: outputs and all three gradients, with
    blocks that split rows and heads unevenly, padding and sliding-window masks, logits up to ±60
    (the exp's whole range, including underflow to 0)."""
    monkeypatch.setattr(zoo.kernels.ops, "BLOCK_ELEMENTS", block_elements)
    g = torch.Generator().manual_seed(q_len * 1000 + k_len)
    q, k, v = (torch.randn(3, 5, n, 8, generator=g) for n in (q_len, k_len, k_len))
    q = q * 2.5
    allowed = torch.ones(3, 1, q_len, k_len, dtype=torch.bool)
    if masking == "padding":
        allowed[1, ..., max(1, k_len // 2):] = False
        allowed[2, ..., max(1, k_len - 3):] = False
    elif masking == "window":
        allowed = ((torch.arange(q_len)[:, None] - torch.arange(k_len)[None, :]).abs() <= 3)[None, None]
        allowed = allowed | (torch.arange(k_len) == k_len - 1)  # no row without a visible key
    bias = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = blocked_softmax_attention(q, k, v, bias, 0.9, 0.0, None)
    grad = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = windowed_reference(q64, k64, v64, allowed, 0.9)
    expected_grads = torch.autograd.grad(expected, (q64, k64, v64), grad.double())
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=2e-6)
    for name, got, want in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=2e-5, msg=f"d{name}")


@pytest.mark.parametrize("block_elements", [64, 2**19])
def test_blocked_kernel_dropout_uses_the_documented_mask(block_elements, monkeypatch):
    """With a given seed the kernel drops exactly reference_keep_mask(shape, p, seed) of the full
    [B, H, Sq, Sk] score tensor, however it is cut into blocks, in the forward and the backward pass."""
    monkeypatch.setattr(zoo.kernels.ops, "BLOCK_ELEMENTS", block_elements)
    q, k, v = qkv(b=2, a=3, s=37, d=8, dtype=torch.float32, seed=3)
    out = blocked_softmax_attention(q, k, v, None, 0.4, 0.2, 2**40 + 17)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    keep = reference_keep_mask((2, 3, 37, 37), 0.2, 2**40 + 17)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = reference_attention(q64, k64, v64, scale=0.4, keep=keep, p=1 - 1 / keep_scale(0.2))
    expected_grads = torch.autograd.grad(expected, (q64, k64, v64), grad.double())
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)


def test_blocked_kernel_bf16_matches_the_unblocked_kernel():
    """bf16: both kernels round the same matmuls to bf16; they differ only in the exp and in the order of
    fp32 sums, so they agree to a few bf16 ulps (2⁻⁸ relative), far closer than either is to fp64."""
    q, k, v = (t.detach().bfloat16().requires_grad_() for t in qkv(b=2, a=4, s=130, d=32, dtype=torch.float32, seed=5))
    grad = torch.randn(2, 4, 130, 32).bfloat16()
    results = []
    for function in (blocked_softmax_attention, SoftmaxAttention.apply):
        out = function(q, k, v, None, 32**-0.5, 0.0, None)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for blocked, plain in zip(*results):
        assert blocked.dtype == torch.bfloat16
        torch.testing.assert_close(blocked.float(), plain.float(), rtol=2e-2, atol=2e-2)


def test_blocked_kernel_backward_runs_once():
    q, k, v = qkv(s=9, dtype=torch.float32)
    out = blocked_softmax_attention(q, k, v, None, 0.5, 0.0, None)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        out.sum().backward()


def test_blocked_kernel_backward_allocates_no_gradient_for_the_probabilities():
    """The operator's second output (the probabilities kept for the backward pass) is not differentiable:
    autograd must not build a zero-filled [B·H, Sq, Sk] gradient for it at every backward pass."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v = qkv(b=2, a=3, s=64, d=16, dtype=torch.float32)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        blocked_softmax_attention(q, k, v, None, 0.25, 0.1).sum().backward()
    score_sized = [event.key for event in prof.key_averages(group_by_input_shape=True)
                   if event.key in ("aten::zeros", "aten::zero_", "aten::fill_") and "[6, 64, 64]" in str(event.input_shapes)]
    assert score_sized == []


@pytest.mark.parametrize("p", [1.0, -0.1, float("nan")])
def test_a_dropout_rate_outside_zero_to_one_is_refused_by_name(p):
    """The kernels rescale what they keep by 1/(1 − p): at p = 1 that was a ZeroDivisionError from deep
    inside them (CPU and Triton alike); configs refuse such rates, and so does the function."""
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match=rf"attention dropout_p must be in \[0, 1\), got {p}"):
        zoo.attention.attention(q, q, q, None, dropout_p=p, training=True)


def test_an_attention_context_moves_to_a_layers_device():
    """A device_map that spreads the layers over GPUs: accelerate's hooks move each layer's arguments with
    their `.to`, the context among them (it had none, so a layer on the second GPU got the first's tables
    and mask). Every tensor moves (the meta device stands in for a GPU), a position variant's too; what
    is already there is the same object."""
    from zoo.positions import EntropyRecorder, variant

    model = zoo.create("roformer-v2-tiny")
    ids, mask = batch()
    ctx = model.encoder.attention_context(*ids.shape, mask, None, torch.float32, torch.device("cpu"))
    assert ctx.to("cpu") is ctx
    moved = ctx.to("meta")
    assert type(moved) is type(ctx) and moved.backend == ctx.backend
    assert {t.device.type for t in (moved.cos, moved.sin, moved.mask.key_valid)} == {"meta"}
    assert ctx.cos.device.type == "cpu"  # a copy: the first GPU's layers keep theirs
    rerope = variant("rerope_w4", train_length=8)
    rerope_ctx = model.encoder.attention_context(*ids.shape, mask, None, torch.float32, torch.device("cpu"),
                                                 position_variant=rerope)
    rerope_ctx.entropy = EntropyRecorder()
    moved = rerope_ctx.to("meta")
    assert moved.clipped.positions.device.type == moved.clipped.near_cos.device.type == "meta"
    assert moved.entropy is rerope_ctx.entropy  # shared across the layers, wherever they are


def test_dropout_seeds_come_from_the_cpu_generator_whatever_the_default_device():
    """The dropout kernels' seeds are drawn from torch's CPU generator and read on the host: under a
    caller's `torch.set_default_device("cuda")` the draw went to the GPU, and reading it made the host
    wait for the GPU at every dropout (the meta device, standing in, cannot be read at all)."""
    from zoo.kernels import ops

    torch.manual_seed(5)
    expected = (new_seed(), ops.seed_tensor())
    torch.manual_seed(5)
    with torch.device("meta"):
        seeds = (new_seed(), ops.seed_tensor())
    assert seeds[0] == expected[0] and seeds[1].device.type == "cpu" and torch.equal(seeds[1], expected[1])


def entries_for(dtype: torch.dtype):
    """Every softmax attention entry that this machine can run on CPU tensors of `dtype`, whatever device it
    is registered for (the Triton one in Triton's interpreter, which the suite turns on without a GPU)."""
    from zoo.kernels import available
    from zoo.kernels.registry import DISABLED, implementations

    def runs_here(entry) -> bool:
        if entry.dtypes is not None and dtype not in entry.dtypes:
            return False
        if entry.needs == "triton" and torch.cuda.is_available():
            return False  # the Triton kernels run on CUDA tensors there, in tests/zoo/test_triton_kernels.py
        return entry.name not in DISABLED and (entry.needs is None or available(entry.needs))

    return [entry for entry in implementations("softmax_attention") if runs_here(entry)]


@pytest.mark.parametrize("dtype, autocast", [(torch.float64, False), (torch.float32, False), (torch.bfloat16, False),
                                             (torch.float32, True)])
def test_a_row_that_sees_no_key_gets_the_mean_of_v_from_every_entry(dtype, autocast):
    """A query row that sees no key (AttentionMask leaves them to windows; here the entries get the mask
    directly): every entry gives it equal probabilities over the keys (the mean of v), and, with a loss that
    does not read that row (its gradient 0), the same finite gradients as the plain autograd entry. torch's
    sdpa given the boolean mask gave zeros on the CPU (and, by kernel, zeros or NaN on CUDA, which the
    products with a zero gradient would carry into the weights' gradients), the others the mean of v. With
    fp32 inputs under bf16 autocast sdpa computes in bf16, where fp32's minimum becomes -inf. (A loss that
    reads the row gets gradients for its q and k that differ by entry: its scores are absorbed by the mask,
    and the additive entries differentiate the sum; fp16's minimum does not absorb them in an fp32 kernel.)
    GAU's shape (one head, v twice as wide as q and k) so that every entry, the heads sharing q/k too, takes it.
    Tolerances: fp64 to rounding; fp32 a few units of 2⁻²⁴ over 7 keys; bf16 (and fp32 inputs computed in bf16)
    one bf16 rounding of values below 4 (2⁻⁸ relative), gradients a few."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 1, 7, width, generator=g, dtype=torch.float64) for width in (8, 8, 16))
    grad = torch.randn(2, 1, 7, 16, generator=g, dtype=torch.float64)
    grad[1] = 0.0
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., 5:] = False
    mask[1] = False
    tolerance = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 3e-2}[torch.bfloat16 if autocast else dtype]
    expected = torch.cat([reference_attention(q[:1], k[:1], v[:1], mask[:1, 0, 0], 8**-0.5), v[1:].mean(-2, keepdim=True)
                          .expand(1, 1, 7, 16)])
    results = {}
    for entry in entries_for(dtype):
        leaves = [t.to(dtype, copy=True).requires_grad_() for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, _ = entry.fn(*leaves, mask, 8**-0.5, 0.0, need_weights=False, backend="auto")
        out.backward(grad.to(out.dtype))
        results[entry.name] = [out.detach().double(), *(leaf.grad.double() for leaf in leaves)]
        assert all(torch.isfinite(t).all() for t in results[entry.name]), entry.name
        torch.testing.assert_close(results[entry.name][0], expected, rtol=tolerance, atol=tolerance, msg=entry.name)
    assert {"sdpa", "sdpa-shared-qk", "with-weights", "matmul"} <= set(results)
    for name, (_, *grads) in results.items():
        for got, want, what in zip(grads, results["with-weights"][1:], "qkv"):
            torch.testing.assert_close(got, want, rtol=4 * tolerance, atol=4 * tolerance, msg=f"{name}: d{what}")


@pytest.mark.parametrize("family, overrides", [("roformer-v2", {}), ("gau-alpha", {}), ("deepnet", {}),
                                               ("gau-alpha", {"attention_normalization": "relu2"})])
def test_a_sequence_of_padding_alone_is_attended_as_if_unpadded_through_every_backend(family, overrides):
    """A batch row whose attention mask is all zeros: in fp64 its hidden states are those of the same tokens
    run alone without a mask, through the explicit attention and sdpa, and a classification loss that reads
    it gets the same finite gradients through both. Before, its query rows saw no key: the forward pass gave
    sdpa's zeros against our kernels' mean of v, the gradients differed 10–60× between them, and relu²
    (n = 0 keys) made them NaN even where the loss ignored the row."""
    config = make_config(family, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3, **overrides)
    model = randomize(model_class(config, "sequence-classification")(config)).double().train()
    ids, mask = batch()
    mask[2] = 0
    labels = torch.tensor([0, 1, 2])
    got = {}
    for backend in ("matmul", "sdpa"):
        model.config.attention_backend = backend
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
        out.loss.backward()
        alone = model(input_ids=ids[2:], output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(out.hidden_states[-1][2], alone, rtol=1e-10, atol=1e-10, msg=backend)
        got[backend] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    for name, grad in got["matmul"].items():
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(got["sdpa"][name], grad, rtol=1e-9, atol=1e-10, msg=name)


def test_an_empty_batch_passes_through_every_backend():
    """Batch size 0 (an empty last shard): the CPU kernel's entry took it and failed reshaping its output."""
    q, k, v = (torch.randn(0, 4, 7, 16) for _ in range(3))
    for backend in ("matmul", "sdpa"):
        assert attention(q, k, v, None, backend=backend, dropout_p=0.1, training=True)[0].shape == (0, 4, 7, 16)
    model = zoo.create("roformer-v2-mini").train()
    assert model(input_ids=torch.zeros(0, 7, dtype=torch.long)).logits.shape == (0, 7, 12000)


def test_a_dropout_rate_that_rounds_to_every_lane_keeps_one_lane_in_65536():
    """A rate in [1 − 2⁻¹⁷, 1), which configs accept, rounded to all 2¹⁶ lanes and divided by zero in the
    keep scale (the CPU's dropout, residual step and attention raised ZeroDivisionError)."""
    p = 1 - 2**-18
    assert threshold_for(p) == 65535 and keep_scale(p) == 65536.0
    x = torch.ones(64, 4096)
    out = dropout(x, p, training=True)
    assert set(out.unique().tolist()) <= {0.0, 65536.0}
    out, _ = attention(*qkv(dtype=torch.float32), None, dropout_p=p, training=True, backend="matmul")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("q_dtype, autocast_dtype, least", [
    (torch.float32, None, torch.float32), (torch.float64, torch.bfloat16, torch.float64),
    (torch.float32, torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float16, torch.float16),
    (torch.float16, torch.bfloat16, torch.float16)])
def test_sdpa_gets_the_least_value_of_the_dtype_it_computes_in(q_dtype, autocast_dtype, least):
    """Autocast casts q and the mask to its dtype (fp64 excepted): a mask at q's dtype's minimum became -inf there
    (fp32's or bf16's minimum in fp16, fp32's in bf16), and a row without a key zeros or NaN; the value must
    also be one that q's dtype holds (bf16's minimum in an fp16 mask is -inf)."""
    mask = torch.tensor([[[[True, False]]]])
    q = torch.zeros(1, 1, 1, 4, dtype=q_dtype)
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        bias = zoo.attention.sdpa_bias(mask, q)
    least = torch.finfo(least).min / (2 if {q_dtype, autocast_dtype} == {torch.bfloat16, torch.float16} else 1)
    assert bias.dtype == q_dtype and bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, 1] == torch.tensor(least, dtype=q_dtype)
    computes_in = q_dtype if autocast_dtype is None or q_dtype == torch.float64 else autocast_dtype
    assert torch.isfinite(bias.to(computes_in)).all()


def probed_operands(q, k, v, mask, shared_qk=False):
    """The operands `sdpa_has_a_kernel` hands torch's backend choice."""
    seen = []

    def choice(*args):
        seen.append(args[:4])
        return 0

    with pytest.MonkeyPatch.context() as patch, torch.nn.attention.sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        patch.setattr(torch, "_fused_sdp_choice", choice)
        assert zoo.attention.sdpa_has_a_kernel(q, k, v, mask, 0.0, shared_qk=shared_qk)
    return seen[0]


@pytest.mark.parametrize("q_dtype, autocast_dtype", [
    (torch.float32, None), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
    (torch.float64, torch.bfloat16), (torch.float32, torch.float16)])
@pytest.mark.parametrize("shared_qk", [False, True])
def test_sdpas_kernel_probe_asks_for_the_operands_sdpa_gets(q_dtype, autocast_dtype, shared_qk):
    """The probe asked with the boolean mask and q's own dtype, while sdpa gets the additive mask and, under
    autocast, everything cast to autocast's dtype (fp64 excepted): on CUDA, where flash takes neither fp32 nor
    a mask, its answer could differ from the call's. Now the probe's operands have the dtype, shape and
    strides of autocast's casts (a contiguous copy of GAU's q and k expanded over the value heads)."""
    q = torch.randn(2, 1, 5, 4, dtype=q_dtype, requires_grad=True)
    k, v = torch.randn(2, 1, 5, 4, dtype=q_dtype), torch.randn(2, 1, 5, 12 if shared_qk else 4, dtype=q_dtype)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        probed = probed_operands(q, k, v, mask, shared_qk)
        given = (*(zoo.attention.shared_qk_operands(q, k, v) if shared_qk else (q, k, v)), zoo.attention.sdpa_bias(mask, q))
    computes_in = q_dtype if autocast_dtype is None or q_dtype == torch.float64 else autocast_dtype
    for got, operand in zip(probed, given):
        cast = operand.to(computes_in)  # what autocast gives sdpa (the operand itself where no cast is needed)
        assert (got.dtype, got.shape, got.stride(), got.device) == (cast.dtype, cast.shape, cast.stride(), cast.device)
    assert probed[0].requires_grad


def test_the_kernel_probe_runs_inside_torch_func_transforms():
    """A stand-in made with `.requires_grad_()` raised inside torch.func.grad (functorch refuses that call
    on tensors it made); the probe's answer is the one it gives outside."""
    q, k, v = (t.detach() for t in qkv(dtype=torch.float32))
    mask = torch.ones(q.shape[0], 1, 1, q.shape[-2], dtype=torch.bool)
    with torch.nn.attention.sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cpu", dtype=torch.bfloat16):
        outside = zoo.attention.sdpa_has_a_kernel(q, k, v, mask, 0.0)
        answers = []

        def probed(q):
            answers.append(zoo.attention.sdpa_has_a_kernel(q, k, v, mask, 0.0))
            return q.sum()

        torch.func.grad(probed)(q)
    assert answers == [outside]


def test_sdpa_runs_where_its_backend_takes_the_autocast_call():
    """As CUDA's flash kernel, a backend that takes no fp32 and no boolean mask: an fp32 q under bf16 autocast
    with a padding mask is a bf16 call with an additive mask, which it takes; the old probe (fp32, boolean)
    sent the call to the next entry."""
    choose = torch._fused_sdp_choice

    def flash_like(q, k, v, mask, *args):
        if q.dtype == torch.float32 or (mask is not None and mask.dtype == torch.bool):
            raise RuntimeError("No available kernel. Aborting execution.")
        return choose(q, k, v, mask, *args)

    q, k, v = qkv(dtype=torch.float32)
    key_valid = torch.ones(q.shape[0], q.shape[-2], dtype=torch.bool)
    key_valid[0, -2:] = False
    chosen = []
    select = registry.select

    def recording(op, *args, **kwargs):
        kernel = select(op, *args, **kwargs)
        chosen.append(kernel.name)
        return kernel

    with pytest.MonkeyPatch.context() as patch, torch.nn.attention.sdpa_kernel([SDPBackend.FLASH_ATTENTION]), \
            torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        patch.setattr(torch, "_fused_sdp_choice", flash_like)
        patch.setattr(registry, "select", recording)
        out, _ = attention(q, k, v, AttentionMask(key_valid=key_valid), backend="sdpa")
    assert chosen == ["sdpa-requested"]
    expected = reference_attention(q.detach(), k.detach(), v.detach(), key_valid)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)  # bf16 operands: 8-bit mantissas


def test_relu2_with_a_window_gives_finite_gradients_to_rows_without_a_key():
    """A window leaves padded query rows far from every token without a key (n = 0): relu² divided by it, NaN
    gradients in dq and dk, through the library kernel and the chunked one of the position variants."""
    from zoo.positions.context import (
        PositionAttentionContext,
        chunked_attention,
        visible_key_counts,
    )

    key_valid = torch.zeros(1, 8, dtype=torch.bool)
    key_valid[0, :2] = True
    mask = AttentionMask(key_valid=key_valid, window=2)  # queries 5, 6 and 7 see padding only
    ctx = PositionAttentionContext(mask=mask, cos=None, sin=None, row_scale=None, backend="matmul",
                                   visible=visible_key_counts(mask.key_valid, 8, 2, 0), chunk_size=4)
    for run in (lambda q, k, v: attention(q, k, v, mask, normalization="relu2"),
                lambda q, k, v: chunked_attention(q, k, v, ctx, normalization="relu2")):
        q, k, v = qkv(b=1, a=1, s=8, d=4)
        out, _ = run(q, k, v)
        out.sum().backward()
        assert all(torch.isfinite(t).all() for t in (out, q.grad, k.grad, v.grad))


def test_entropy_counts_the_tokens_not_the_padding_a_sequence_of_padding_alone_attends_with():
    """The entropy recorder averages over query rows that are tokens; a sequence of padding alone, which now
    attends as if unpadded, has none, on the device the mask was made on and on another one."""
    from zoo.positions.context import EntropyRecorder, PositionAttentionContext

    key_valid = torch.tensor([[True, True, True, False], [False, False, False, False]])
    mask = AttentionMask(key_valid=key_valid)
    for moved in (mask, zoo.runtime.map_tensors(mask, lambda t: t.clone())):
        assert torch.equal(moved.tokens, key_valid) and moved.key_valid[1].all()
        recorder = EntropyRecorder()
        ctx = PositionAttentionContext(mask=moved, cos=None, sin=None, row_scale=None, backend="matmul")
        ctx.entropy = recorder.start_pass()
        with torch.no_grad():
            ctx.attend(*qkv(b=2, a=3, s=4, d=8), normalization="softmax", dropout_p=0.0, training=False)
        assert recorder.counts == [3 * 3]  # the first sequence's 3 tokens, in each of 3 heads
