"""The compiled RMS norm and RoPE compute the functions of their PyTorch reference paths."""

import pytest
import torch

import zoo.norms
import zoo.rope
from zoo.kernels import elementwise_kernels
from zoo.norms import RMSNorm
from zoo.rope import apply_rope, fused_rope, rope_cos_sin, rope_inv_freq

from .kernel_switch import kernels_off


@pytest.fixture(autouse=True)
def kernels_built():
    assert elementwise_kernels() is not None, "the CPU elementwise kernels must build here (needs a C++ compiler)"


def reference_rms(x, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 768), (4, 33)])
def test_fused_rms_norm_equals_fp64_reference(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3 + 0.5).requires_grad_()
    grad = torch.randn(shape, generator=g)
    y = RMSNorm(1e-6)(x)
    (dx,) = torch.autograd.grad(y, x, grad)
    x64 = x.detach().double().requires_grad_()
    y64 = reference_rms(x64, 1e-6)
    (dx64,) = torch.autograd.grad(y64, x64, grad.double())
    torch.testing.assert_close(y, y64.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, dx64.float(), rtol=1e-5, atol=1e-5)


def test_fused_rms_norm_bf16_rounds_once():
    """bf16 in, bf16 out: the fused result is the fp64 reference rounded to bf16 (up to one ulp from
    the fp32 arithmetic), and its gradient matches the reference path's within bf16 rounding."""
    x = torch.randn(64, 768, generator=torch.Generator().manual_seed(1)).bfloat16().requires_grad_()
    y = RMSNorm(1e-7)(x)
    assert y.dtype == torch.bfloat16
    expected = reference_rms(x.detach().double(), 1e-7)
    torch.testing.assert_close(y.double(), expected, rtol=2**-8, atol=0)
    grad = torch.randn(64, 768).bfloat16()
    (dx,) = torch.autograd.grad(y, x, grad)
    x64 = x.detach().double().requires_grad_()
    (dx64,) = torch.autograd.grad(reference_rms(x64, 1e-7), x64, grad.double())
    torch.testing.assert_close(dx.double(), dx64, rtol=2**-7, atol=1e-3)


def test_rms_norm_takes_the_reference_path_without_the_kernel(monkeypatch):
    x = torch.randn(4, 16)
    fused = RMSNorm(1e-7)(x)
    kernels_off(monkeypatch, "elementwise")
    torch.testing.assert_close(RMSNorm(1e-7)(x), fused, rtol=1e-6, atol=1e-6)


def tables(batch, seq_len, dim, dtype, offset=0.0):
    positions = torch.arange(seq_len, dtype=torch.float64)[None].expand(batch, -1) + offset
    positions = positions + torch.arange(batch, dtype=torch.float64)[:, None] * 3.5  # per-row tables differ
    cos, sin = rope_cos_sin(positions, rope_inv_freq(dim), dtype)
    return cos[:, None], sin[:, None]


@pytest.mark.parametrize("table_batch", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_fused_rope_equals_fp64_reference(table_batch, layout):
    """Forward and backward against the PyTorch path in fp64, with shared or per-sequence tables and
    with q/k as the transposed view a projection produces ([B, S, H, d] seen as [B, H, S, d])."""
    g = torch.Generator().manual_seed(3)
    if layout == "transposed":
        x = torch.randn(2, 9, 3, 16, generator=g).transpose(1, 2).requires_grad_()
    else:
        x = torch.randn(2, 3, 9, 16, generator=g).requires_grad_()
    cos, sin = tables(table_batch, 9, 16, torch.float32, offset=1e4)
    assert zoo.rope.fused_rope_applies(x, cos, sin)
    out = apply_rope(x, cos, sin)
    grad = torch.randn(out.shape, generator=g)
    (dx,) = torch.autograd.grad(out, x, grad)
    x64 = x.detach().double().requires_grad_()
    cos64, sin64 = tables(table_batch, 9, 16, torch.float64, offset=1e4)
    out64 = apply_rope(x64, cos64, sin64)  # fp64: the PyTorch path
    (dx64,) = torch.autograd.grad(out64, x64, grad.double())
    torch.testing.assert_close(out, out64.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, dx64.float(), rtol=1e-6, atol=1e-6)


def test_fused_rope_is_used_only_where_it_applies():
    x = torch.randn(2, 3, 9, 16)
    cos, sin = tables(1, 9, 16, torch.float32)
    assert not zoo.rope.fused_rope_applies(x, cos.double(), sin.double())  # tables of another dtype
    assert not zoo.rope.fused_rope_applies(x[0], cos[0], sin[0])  # not [B, H, S, d]
    assert not zoo.rope.fused_rope_applies(x, cos[..., :4], sin[..., :4])
    assert not zoo.rope.fused_rope_applies(x, cos.clone().requires_grad_(), sin)  # tables to differentiate
    assert not zoo.rope.fused_rope_applies(x, cos.to("meta"), sin.to("meta"))  # tables on another device
    odd = torch.randn(2, 3, 9, 17)  # no pairs to rotate: the kernels left its last column unwritten
    assert not zoo.rope.fused_rope_applies(odd, cos, sin)
    with pytest.raises(RuntimeError, match="size"):
        apply_rope(odd, cos, sin)  # the reference's shapes refuse it
    out = apply_rope(x, cos.double(), sin.double())  # falls back: promotes like the PyTorch ops do
    assert out.dtype == torch.float64


def test_fused_rope_bf16_matches_the_pytorch_path():
    x = torch.randn(2, 4, 32, 64, generator=torch.Generator().manual_seed(4)).bfloat16()
    cos, sin = tables(1, 32, 64, torch.bfloat16)
    fused = fused_rope(x, cos, sin)
    x_even, x_odd = x.double()[..., 0::2], x.double()[..., 1::2]
    c, s = cos.double(), sin.double()
    exact = torch.stack((x_even * c - x_odd * s, x_odd * c + x_even * s), -1).flatten(-2)
    torch.testing.assert_close(fused.double(), exact, rtol=2**-8, atol=1e-6)  # one bf16 rounding


def test_layer_norm_inference_path_matches_the_cast_path():
    """bf16 LayerNorm without autograd (ATen's kernel on the bf16 input) against the training path
    (cast to fp32 and back) and against fp64: the same rounding of the same fp32 statistics."""
    from zoo.norms import LayerNorm

    g = torch.Generator().manual_seed(6)
    norm = LayerNorm(768, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(768, generator=g))
        norm.bias.copy_(0.2 * torch.randn(768, generator=g))
    x = (torch.randn(64, 768, generator=g) * 4 + 1).bfloat16()
    with torch.no_grad():
        fast = norm(x)
    slow = norm(x)  # grad enabled: the cast path
    assert fast.dtype == slow.dtype == torch.bfloat16
    exact = torch.nn.functional.layer_norm(x.double(), (768,), norm.weight.double(), norm.bias.double(), 1e-5)
    torch.testing.assert_close(fast.double(), exact, rtol=2**-8, atol=2**-8)
    torch.testing.assert_close(fast.float(), slow.float(), rtol=2**-7, atol=2**-7)


def test_the_cpu_rms_norm_keeps_its_output_for_the_backward_pass():
    """What stays in memory is y and 1/rms, not x: in a post-norm residual step y is the next block's
    input, kept there anyway, while x (the sum that came in) can go (zoo/layers.py)."""
    saved = []
    x = torch.randn(3, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = RMSNorm(1e-6)(x)
    pointers = {t.untyped_storage().data_ptr() for t in saved}
    assert y.untyped_storage().data_ptr() in pointers
    assert x.untyped_storage().data_ptr() not in pointers
    assert sorted(t.numel() for t in saved) == [3, 24]  # y and one 1/rms per row
