"""The Triton kernels that CUDA uses (zoo/kernels/triton_*.py), and the CUDA entries of the kernel
registry that reach them. Without a GPU the kernels run in Triton's interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1 there); with one, compiled, on CUDA tensors (DEVICE).

Tolerances: the kernel computes in fp32 from inputs of the tested dtype. Against the rotation in fp64
of the same inputs, an fp32 result is off by at most a few units of 2⁻²⁴ of |x| (two products and a
sum: 4e-7 · max|x| is allowed). A bf16 result is one rounding of that fp32 value (to nearest, as on a
GPU: tests/conftest.py makes the interpreter round so too), so one bf16 unit in the last place of the
value is allowed.
Inputs go to DEVICE with their strides (q as a transposed view, z as a slice of a wider tensor), and
results come back to the CPU to be compared.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import zoo
import zoo.dropout
import zoo.norms
import zoo.residual
import zoo.rope
from zoo.kernels import registry
from zoo.rope import rope_reference

triton_rope = pytest.importorskip("zoo.kernels.triton_rope", reason="Triton is not installed (pip install -e .[test])")
scale_pair = pytest.importorskip("zoo.kernels.triton_scale_pair", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_device(t: torch.Tensor) -> torch.Tensor:
    """t on DEVICE with the same strides and offset (a slice stays a slice of its base)."""
    if DEVICE == "cpu":
        return t
    base = t if t._base is None else t._base
    return base.to(DEVICE).as_strided(t.size(), t.stride(), t.storage_offset())


def rope_on_device(x, cos, sin, sign):
    return triton_rope.rope(on_device(x), on_device(cos), on_device(sin), sign).cpu()


def rotation_inputs(batch=2, heads=3, seq=37, dim=24, table_batch=1, transposed=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(dim * 100 + seq)
    if transposed:  # q as the attention gets it: a [B, S, H, d] projection viewed as [B, H, S, d]
        x = torch.randn(batch, seq, heads, dim, generator=g, dtype=torch.float64).transpose(1, 2)
    else:
        x = torch.randn(batch, heads, seq, dim, generator=g, dtype=torch.float64)
    angles = torch.rand(table_batch, 1, seq, dim // 2, generator=g, dtype=torch.float64) * 2 * torch.pi
    return x.to(dtype), angles.cos().to(dtype), angles.sin().to(dtype)


HALF = {torch.bfloat16: 7, torch.float16: 10}  # the half types the CUDA entries take: their fraction bits


def half_ulp(t: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    """The unit in the last place of `dtype` at each value of t (bf16: 8 significant bits, fp16: 11; below
    fp16's normal range its fixed subnormal step)."""
    ulp = torch.exp2(torch.floor(torch.log2(t.abs().clamp_min(1e-30))) - HALF[dtype])
    return ulp.clamp_min(torch.finfo(dtype).smallest_normal * 2.0 ** -HALF[dtype])


@pytest.mark.parametrize("dim", [64, 24, 2])
@pytest.mark.parametrize("table_batch", [1, 2])
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("keep_layout", [True, False])
def test_triton_rope_equals_the_fp64_rotation(dim, table_batch, transposed, keep_layout):
    x, cos, sin = rotation_inputs(dim=dim, table_batch=table_batch, transposed=transposed)
    out = triton_rope.rope(on_device(x), on_device(cos), on_device(sin), 1.0, keep_layout)
    assert out.dtype == torch.float32 and out.shape == x.shape
    if keep_layout:  # x's layout: q as a transposed [B, S, H, d] view stays sequence first
        assert out.stride() == x.stride()
    else:
        assert out.is_contiguous()
    out = out.cpu()
    expected = rope_reference(x.double(), cos.double(), sin.double())
    assert (out.double() - expected).abs().max() <= 4e-7 * x.abs().max()


@pytest.mark.parametrize("dtype", HALF)
def test_triton_rope_in_half_precision_is_one_rounding_of_the_fp32_rotation(dtype):
    """bf16 (autocast) and fp16 (autocast on GPUs without bf16, or DeepSpeed's fp16 mode)."""
    x, cos, sin = rotation_inputs(dtype=dtype, seq=300, dim=64)  # 1800 rows: several programs
    out = rope_on_device(x, cos, sin, 1.0)
    exact = rope_reference(x.double(), cos.double(), sin.double())
    assert out.dtype == dtype
    assert ((out.double() - exact).abs() <= half_ulp(exact, dtype)).all()


def test_triton_rope_inverse_is_the_gradient_of_the_rotation():
    """The backward pass runs the kernel with sign −1: that must be the rotation's vector-Jacobian product."""
    x, cos, sin = rotation_inputs(table_batch=2)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    x64 = x.double().requires_grad_()
    rope_reference(x64, cos.double(), sin.double()).backward(grad_out.double())
    got = rope_on_device(grad_out, cos, sin, -1.0)
    assert (got.double() - x64.grad).abs().max() <= 4e-7 * grad_out.abs().max()
    back = rope_on_device(rope_on_device(x, cos, sin, 1.0), cos, sin, -1.0)
    assert (back - x).abs().max() <= 1e-6 * x.abs().max()


def test_triton_rope_of_an_empty_tensor_is_empty():
    x, cos, sin = rotation_inputs(seq=0)
    assert rope_on_device(x, cos, sin, 1.0).shape == (2, 3, 0, 24)


def test_the_cuda_entries_for_rms_norm_and_rope():
    """No CUDA here: the entries' device and dtype keys, and that the Triton entry stays out of traced code
    (there inductor writes its own kernel from the reference)."""
    rms = [k.name for k in registry.implementations("rms_norm") if k.takes("cuda", torch.bfloat16)]
    assert rms == ["torch-fused", "reference"]
    rope = {k.name: k for k in registry.implementations("rope")}
    assert [name for name, k in rope.items() if k.takes("cuda", torch.bfloat16)] == ["triton", "reference"]
    assert [name for name, k in rope.items() if k.takes("cuda", torch.float64)] == ["reference"]
    x, cos, sin = rotation_inputs(dtype=torch.bfloat16)
    assert zoo.rope.triton_rope_applies(x, cos, sin)
    assert not zoo.rope.triton_rope_applies(x, cos.float(), sin.float())  # tables of another dtype
    # on CPU tensors (the entry extended to the CPU) the C++ kernel runs, which takes no fp16
    assert not zoo.rope.triton_rope_applies(x.half(), cos.half(), sin.half())
    assert not torch.compile(zoo.rope.triton_rope_applies, backend="eager", fullgraph=True)(x, cos, sin)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_torch_fused_rms_norm_is_the_reference_function(dtype):
    """`F.rms_norm` runs CUDA's fused kernel; here its CPU path, which follows the same decomposition: the
    entry must pass the last dimension and ε, keep x's dtype under autocast, and give the reference's
    values and gradients (bit for bit here)."""
    x = (torch.randn(5, 7, 96, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = zoo.norms.torch_fused_rms_norm(x, 1e-7)
    expected = zoo.norms.rms_norm_reference(x_ref, 1e-7)
    out.backward(grad)
    expected.backward(grad)
    assert out.dtype == dtype
    assert torch.equal(out, expected)
    assert torch.equal(x.grad, x_ref.grad)




def pair_inputs(size=128, batch=2, seq=37):
    """A wider [B, S, ·] tensor whose last `size` columns are z, as GAU makes it (rows at a stride), and
    the two scales; fp64 values that fp32 holds exactly, so that the fp32 kernel and the fp64 reference
    start from the same numbers."""
    g = torch.Generator().manual_seed(size)
    wide = torch.randn(batch, seq, 3 * size + 5, generator=g).double()
    gammas = [(torch.rand(size, generator=g) + 0.5).double() for _ in range(2)]
    return wide, gammas


def fp32_leaf_on_device(t: torch.Tensor) -> torch.Tensor:
    return on_device(t.float()).requires_grad_()


@pytest.mark.parametrize("size", [128, 24, 23])
def test_triton_scale_pair_and_its_gradients_equal_fp64(size):
    wide, (gq, gk) = pair_inputs(size)
    z = wide[..., -size:]
    grad_q, grad_k = torch.randn(2, z.shape[0], z.shape[1], size).double()
    z64, gq64, gk64 = (t.clone().requires_grad_() for t in (z, gq, gk))
    (z64 * gq64 * grad_q + z64 * gk64 * grad_k).sum().backward()
    z32 = on_device(wide.float())[..., -size:].requires_grad_()  # rows at a stride, as GAU's z
    gq32, gk32 = fp32_leaf_on_device(gq), fp32_leaf_on_device(gk)
    q, k = scale_pair.ScalePair.apply(z32, gq32, gk32)
    assert q.is_contiguous() and k.is_contiguous() and q.dtype == torch.float32
    # one fp32 rounding of the exact product: 2⁻²⁴ relative
    assert ((q.double().cpu() - z * gq).abs() <= 6e-8 * (z * gq).abs()).all()
    assert ((k.double().cpu() - z * gk).abs() <= 6e-8 * (z * gk).abs()).all()
    torch.autograd.backward([q, k], [on_device(grad_q.float()), on_device(grad_k.float())])
    # dz: two products and a sum in fp32; dγ: sums over 74 rows in fp32
    assert (z32.grad.double().cpu() - z64.grad).abs().max() <= 1e-6 * z64.grad.abs().max()
    for got, exact in ((gq32.grad, gq64.grad), (gk32.grad, gk64.grad)):
        assert (got.double().cpu() - exact).abs().max() <= 1e-5 * exact.abs().max()


def rotate_fp64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of x [B, S, s] by tables [B or 1, 1, S, s/2], in fp64."""
    return rope_reference(x[:, None], cos, sin)[:, 0]


@pytest.mark.parametrize("row_scaled", [False, True])
@pytest.mark.parametrize("table_batch", [1, 2])
@pytest.mark.parametrize("size", [128, 24])
def test_triton_scale_pair_with_rope_and_its_gradients_equal_fp64(size, table_batch, row_scaled):
    """q = RoPE(z ⊙ γ_q) (times its row factor ρ_i·c, softmax_plus's), k = RoPE(z ⊙ γ_k) in one kernel
    each way (size 128: 19 blocks of 4 rows over the interpreter's 4 programs, the last block partly and
    one wholly past the end). Forward, the product rounds to fp32 and the rotation (two products and a
    sum) and the factor add a few units of 2⁻²⁴ of max|q|; backward, the gradient scaled and rotated
    back, then dz and the sums over 74 rows of dγ, as in the test without rotation."""
    wide, (gq, gk) = pair_inputs(size)
    z = wide[..., -size:]
    g = torch.Generator().manual_seed(size + table_batch)
    angles = torch.rand(table_batch, 1, z.shape[1], size // 2, generator=g, dtype=torch.float64) * 2 * torch.pi
    cos, sin = angles.cos(), angles.sin()
    grad_q, grad_k = torch.randn(2, z.shape[0], z.shape[1], size, generator=g).double()
    # log n / log 512 ∈ [1, 1.2]: one per row shared by the batch, or (with per-sequence tables) one per
    # sequence for all its rows, as a padded batch without a window has it
    shape = (1, 1, z.shape[1], 1) if table_batch == 1 else (2, 1, 1, 1)
    row_scale = 1 + torch.rand(shape, generator=g, dtype=torch.float64) / 5
    z64, gq64, gk64 = (t.clone().requires_grad_() for t in (z, gq, gk))
    q64, k64 = rotate_fp64(z64 * gq64, cos, sin), rotate_fp64(z64 * gk64, cos, sin)
    if row_scaled:
        q64 = q64 * row_scale[:, 0] * size**-0.5
    torch.autograd.backward([q64, k64], [grad_q, grad_k])
    z32 = on_device(wide.float())[..., -size:].requires_grad_()
    gq32, gk32 = fp32_leaf_on_device(gq), fp32_leaf_on_device(gk)
    scaled = (on_device(row_scale.float()), size**-0.5) if row_scaled else ()
    q, k = scale_pair.ScalePair.apply(z32, gq32, gk32, on_device(cos.float()), on_device(sin.float()), *scaled)
    assert q.is_contiguous() and k.dtype == torch.float32 and q.shape == z.shape
    for got, exact in ((q, q64), (k, k64)):
        assert (got.double().cpu() - exact.detach()).abs().max() <= 4e-7 * exact.abs().max()
    torch.autograd.backward([q, k], [on_device(grad_q.float()), on_device(grad_k.float())])
    assert (z32.grad.double().cpu() - z64.grad).abs().max() <= 1e-6 * z64.grad.abs().max()
    for got, exact in ((gq32.grad, gq64.grad), (gk32.grad, gk64.grad)):
        assert (got.double().cpu() - exact).abs().max() <= 1e-5 * exact.abs().max()


@pytest.mark.parametrize("dtype", HALF)
def test_triton_scale_pair_with_rope_in_half_precision_is_the_two_kernel_path(dtype):
    """bf16 or fp16: the fused kernel rounds the products to that type, as the pair's kernel writes them,
    and rotates those in fp32 with one rounding, as the RoPE kernel does: its q and k are the pair's
    kernel followed by the RoPE kernel's, to one unit in the last place (the two kernels may contract the
    rotation's products and sum differently), and within two units of that rotation done in fp64."""
    wide, (gq, gk) = pair_inputs(64, seq=300)
    z = on_device(wide[..., -64:].to(dtype))
    angles = torch.rand(1, 1, 300, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 6.3
    cos, sin = on_device(angles.cos().to(dtype)), on_device(angles.sin().to(dtype))
    gq, gk = on_device(gq.float()), on_device(gk.float())
    q, k = scale_pair.ScalePair.apply(z, gq, gk, cos, sin)
    for got, plain in zip((q, k), scale_pair.ScalePair.apply(z, gq, gk)):
        two_kernels = triton_rope.rope(plain[:, None], cos, sin, 1.0)[:, 0]
        exact = rotate_fp64(plain.double(), cos.double(), sin.double())
        assert got.dtype == dtype
        assert ((got.double() - two_kernels.double()).abs() <= half_ulp(two_kernels.double(), dtype)).all()
        assert ((got.double() - exact).abs() <= 2 * half_ulp(exact, dtype)).all()


def test_triton_scale_pair_of_no_rows():
    wide, (gq, gk) = pair_inputs(seq=0)
    z, gq, gk = fp32_leaf_on_device(wide[..., -128:]), fp32_leaf_on_device(gq), fp32_leaf_on_device(gk)
    q, k = scale_pair.ScalePair.apply(z, gq, gk)
    assert q.shape == k.shape == (2, 0, 128)
    q.sum().backward()
    assert torch.equal(gq.grad.cpu(), torch.zeros(128))


@contextlib.contextmanager
def triton_entries(on: bool):
    """The Triton entries on or off for the block: on CUDA their own entries; without a GPU the same
    functions registered for the CPU too (the kernels run in the interpreter)."""
    with contextlib.ExitStack() as stack:
        if not on:
            stack.enter_context(registry.disabled("triton"))
        elif DEVICE == "cpu":
            stack.enter_context(registry.extended("triton", "cpu"))
        yield


def training_step(preset: str, triton: bool, recompute: bool = False, autocast: bool = False, half=torch.bfloat16,
                  loss_scale: float = 1.0, backend: str = "auto", dropout: float = 0.0):
    """Loss and gradients of one step on a padded batch, by default without dropout (the kernels draw
    their own masks, so with dropout the two paths compute different, equally distributed, functions). The loss
    is multiplied by `loss_scale` before the backward pass and the gradients divided by it after, as fp16
    training does (GradScaler, DeepSpeed's loss scale) so that small gradients do not underflow."""
    torch.manual_seed(0)
    options = {"recompute_elementwise": True} if recompute else {}
    model = zoo.create(preset, task="masked-lm", hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                       attention_backend=backend, **options).to(DEVICE).train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(104, 12000, (2, 24), generator=g)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, 17:] = 0
    labels = torch.where(torch.rand(2, 24, generator=g) < 0.3, ids, -100)
    with triton_entries(triton):
        with torch.autocast(DEVICE, dtype=half, enabled=autocast):
            loss = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), labels=labels.to(DEVICE)).loss
        (loss * loss_scale).backward()
    return loss.detach().cpu(), {name: p.grad.cpu() / loss_scale for name, p in model.named_parameters()
                                 if p.grad is not None}


def relative_error(got: dict, expected: dict) -> float:
    assert got.keys() == expected.keys()
    return max(float((got[n] - expected[n]).norm() / expected[n].norm()) for n in expected)


@pytest.mark.parametrize("preset, backend", [("gau-alpha-tiny", "auto"), ("roformer-v2-tiny", "auto"),
                                             ("deepnet-tiny", "auto"), ("gau-alpha-tiny", "matmul"),
                                             ("roformer-v2-tiny", "matmul")])
def test_a_model_with_the_triton_kernels_trains_like_the_reference(preset, backend):
    """Padded batch: fp32 loss and every gradient within 1e-5 of the reference path (the kernels sum in
    another order). Under bf16 autocast both paths are compared with the fp32 gradients: the kernels'
    may lose no more than 1.25× what the reference path's lose (1.6–2.7% for these models; the kernels
    keep fp32 until their output where the reference rounds to bf16 between its steps, so they are as
    close or closer up to the noise of which bf16 products land where: at most 1.10× measured on the CPU,
    with and without our C++ kernels). The two bf16 paths are not compared with each other: each is
    its own rounding of the fp32 step, so they differ by up to the sum of their errors (2.8% for
    DeepNet-tiny when the reference's attention runs through torch's sdpa). With the "matmul" backend
    the attention too runs through Triton (the explicit kernel), against the CPU's blocked kernel."""
    loss, grads = training_step(preset, triton=False, backend=backend)
    fused_loss, fused_grads = training_step(preset, triton=True, backend=backend)
    assert abs(float(fused_loss - loss)) <= 1e-6 * float(loss)
    assert relative_error(fused_grads, grads) <= 1e-5
    bf16_loss, bf16_grads = training_step(preset, triton=False, autocast=True, backend=backend)
    fused_bf16_loss, fused_bf16_grads = training_step(preset, triton=True, autocast=True, backend=backend)
    assert abs(float(fused_bf16_loss - bf16_loss)) <= 1e-2 * float(bf16_loss)
    reference_loss = relative_error(bf16_grads, grads)
    assert 0 < reference_loss <= 5e-2  # the yardstick itself: bf16 rounding, not a broken path
    assert relative_error(fused_bf16_grads, grads) <= 1.25 * reference_loss


@pytest.mark.parametrize("preset, backend", [("gau-alpha-tiny", "auto"), ("roformer-v2-tiny", "auto"),
                                             ("deepnet-tiny", "auto"), ("gau-alpha-tiny", "matmul")])
def test_a_model_with_the_triton_kernels_trains_under_fp16_autocast(preset, backend):
    """fp16 autocast (GPUs without bf16; the CUDA entries take fp16), with a loss scale as fp16 training
    uses: as under bf16 autocast above, both paths against the fp32 gradients, the kernels' error at
    most 1.25× the reference path's (measured 0.6–1.01×). The reference's own error, 0.3–2%, is fp16
    rounding, not a broken path: 0.2–0.9% per parameter, except where a ReLU input lies near zero and
    flips (RoFormerV2-tiny's last FFN, 2% in fp16 as in bf16); without the loss scale GAU-α's small
    gradients underflow (5.9%). Without a GPU, RoPE takes the reference here (the Triton entry runs the
    C++ kernel on CPU tensors, which takes no fp16; the Triton RoPE in fp16 is checked on its own above);
    GAU's scale pair, which rotates inside, and the residual kernels run in fp16 through Triton; with the
    "matmul" backend the explicit attention's softmax too."""
    half = dict(autocast=True, half=torch.float16, loss_scale=2**12, backend=backend)
    loss, grads = training_step(preset, triton=False, backend=backend)
    half_loss, half_grads = training_step(preset, triton=False, **half)
    fused_loss, fused_grads = training_step(preset, triton=True, **half)
    assert abs(float(fused_loss - half_loss)) <= 2e-3 * float(half_loss)
    reference_error = relative_error(half_grads, grads)
    assert 0 < reference_error <= 5e-2
    assert relative_error(fused_grads, grads) <= 1.25 * reference_error


def test_gau_takes_the_fused_pair_with_rope_and_row_scale_on_a_padded_batch():
    """GAU-α's softmax_plus row factor on a padded batch is one value per sequence ([B, 1, 1, 1]): the
    Triton entry takes it with the tables, so the model step above runs the fused kernel."""
    taken = []

    def spy(z, first, second, cos, sin, row_scale, q_scale):
        given = cos is not None and row_scale is not None and tuple(row_scale.shape) == (2, 1, 1, 1)
        taken.append((given, zoo.norms.triton_scale_pair_applies(z, first, second, cos, sin, row_scale, q_scale)))
        return False

    with registry.registered("scale_offset_pair", "spy", lambda *args: None, accepts=spy, before="triton"):
        training_step("gau-alpha-tiny", triton=True)
    layers = zoo.preset_config("gau-alpha-tiny").num_hidden_layers
    assert taken == [(True, True)] * layers  # tables and a row factor per sequence given, and taken


@pytest.mark.parametrize("backend, dropout", [("auto", 0.0), ("matmul", 0.1)])
def test_selective_recomputation_runs_the_triton_kernels_again_to_the_same_gradients(backend, dropout):
    """GAU-α with `recompute_elementwise`: the scale pair (and with the "matmul" backend the explicit
    attention's product q·kᵀ, which the cache does not keep, and its softmax, with the same dropout mask:
    its seed is drawn again from the restored random state) runs again in the backward pass; the same
    loss, and the same gradients, bit for bit on the CPU (to 1e-6 on CUDA, whose attention backward may
    add in another order from run to run)."""
    step = dict(triton=True, backend=backend, dropout=dropout)
    loss, grads = training_step("gau-alpha-tiny", **step)
    recomputed_loss, recomputed_grads = training_step("gau-alpha-tiny", recompute=True, **step)
    assert torch.equal(recomputed_loss, loss)
    if DEVICE == "cpu":
        assert all(torch.equal(recomputed_grads[n], grads[n]) for n in grads)
    else:
        assert relative_error(recomputed_grads, grads) <= 1e-6


def test_the_cuda_entry_for_the_scale_pair():
    pair = {k.name: k for k in registry.implementations("scale_offset_pair")}
    assert [name for name, k in pair.items() if k.takes("cuda", torch.bfloat16)] == ["triton", "reference"]
    assert [name for name, k in pair.items() if k.takes("cpu", torch.bfloat16)] == ["reference"]
    z = torch.zeros(2, 5, 8)
    plain, other = zoo.norms.ScaleOffset(8), zoo.norms.ScaleOffset(8)
    assert zoo.norms.triton_scale_pair_applies(z, plain, other)
    assert not zoo.norms.triton_scale_pair_applies(z, zoo.norms.ScaleOffset(8, offset=True), other)
    assert not zoo.norms.triton_scale_pair_applies(z[0], plain, other)  # not [B, S, s]
    assert not zoo.norms.triton_scale_pair_applies(torch.zeros(2, 5, 4), plain, other)
    cos = sin = torch.zeros(1, 1, 5, 4)
    assert zoo.norms.triton_scale_pair_applies(z, plain, other, cos, sin)
    assert zoo.norms.triton_scale_pair_applies(z, plain, other, cos.expand(2, 1, 5, 4), sin.expand(2, 1, 5, 4))
    assert not zoo.norms.triton_scale_pair_applies(z, plain, other, cos.double(), sin.double())  # not z's dtype
    assert not zoo.norms.triton_scale_pair_applies(z, plain, other, cos[..., :2], sin[..., :2])  # not s/2 pairs
    rows = torch.ones(2, 1, 5, 1)
    assert zoo.norms.triton_scale_pair_applies(z, plain, other, cos, sin, rows, 0.5)
    assert zoo.norms.triton_scale_pair_applies(z, plain, other, None, None, rows[:1].double(), 0.5)
    # one factor per sequence (a padded batch without a window), or one for all
    assert zoo.norms.triton_scale_pair_applies(z, plain, other, cos, sin, rows[..., :1, :], 0.5)
    assert zoo.norms.triton_scale_pair_applies(z, plain, other, cos, sin, rows[:1, :, :1], 0.5)
    assert not zoo.norms.triton_scale_pair_applies(z, plain, other, cos, sin, rows[..., :2, :], 0.5)
    assert not zoo.norms.triton_scale_pair_applies(z, plain, other, cos, sin, rows.expand(2, 1, 5, 3), 0.5)
    assert not zoo.norms.triton_scale_pair_applies(z, plain, other, cos, sin, rows.requires_grad_(), 0.5)
    assert not zoo.norms.triton_scale_pair_applies(z, plain, other, cos.requires_grad_(), sin)  # tables differentiated
    traced = torch.compile(zoo.norms.triton_scale_pair_applies, backend="eager", fullgraph=True)
    assert not traced(z, plain, other)


residual_norm_kernels = pytest.importorskip("zoo.kernels.triton_residual_norm", reason="Triton is not installed")


def residual_norm_on_device(branch, residual, alpha, p, seed, eps=1e-7):
    return residual_norm_kernels.ResidualNorm.apply(on_device(branch), on_device(residual), alpha, p, eps, seed,
                                                    None, None)


def kept_mask(shape, p, seed) -> torch.Tensor:
    """The kernel's keep-mask for (shape, p, seed): with a branch of ones and no residual, exactly the kept
    elements come out non-zero."""
    return residual_norm_on_device(torch.ones(shape), torch.zeros(shape), 1.0, p, seed).cpu() != 0


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_triton_residual_norm_and_its_gradients_equal_fp64(p):
    """RMSNorm(α·x + Dropout(f)) with the kernel's own mask, against fp64 from the same fp32 inputs and
    that mask: output, df and dx to 1e-6 of their largest value (fp32 arithmetic, sums over 96)."""
    g = torch.Generator().manual_seed(7)
    branch, residual, grad = (torch.randn(3, 11, 96, generator=g) for _ in range(3))
    alpha, seed = 1.7, 1234
    keep = kept_mask(branch.shape, p, seed)
    f64, x64 = branch.double().requires_grad_(), residual.double().requires_grad_()
    dropped = torch.where(keep, f64 / (1 - p), 0.0)
    exact = zoo.norms.rms_norm_reference(alpha * x64 + dropped, 1e-7)
    exact.backward(grad.double())
    f32, x32 = on_device(branch).requires_grad_(), on_device(residual).requires_grad_()
    out = residual_norm_kernels.ResidualNorm.apply(f32, x32, alpha, p, 1e-7, seed, None, None)
    out.backward(on_device(grad))
    for got, want in ((out, exact), (f32.grad, f64.grad), (x32.grad, x64.grad)):
        assert (got.detach().double().cpu() - want).abs().max() <= 1e-6 * want.abs().max()


@pytest.mark.parametrize("dtype", HALF)
def test_triton_residual_norm_dtypes_follow_the_reference(dtype):
    """A bf16 or fp16 branch (a projection under autocast) on the fp32 residual stream: the output in fp32,
    as the reference's addition promotes, and computed in fp32 from the half values (1e-6 of the largest,
    as in fp32); each gradient in its input's dtype."""
    g = torch.Generator().manual_seed(4)
    branch = torch.randn(2, 5, 64, generator=g).to(dtype)
    residual, grad = torch.randn(2, 5, 64, generator=g), torch.randn(2, 5, 64, generator=g)
    f64, x64 = branch.double().requires_grad_(), residual.double().requires_grad_()
    exact = zoo.norms.rms_norm_reference(0.7 * x64 + f64, 1e-7)
    exact.backward(grad.double())
    f, x = on_device(branch).requires_grad_(), on_device(residual).requires_grad_()
    out = residual_norm_kernels.ResidualNorm.apply(f, x, 0.7, 0.0, 1e-7, 3, None, None)
    assert out.dtype == torch.float32
    out.backward(on_device(grad))
    assert f.grad.dtype == dtype and x.grad.dtype == torch.float32
    assert (out.detach().double().cpu() - exact).abs().max() <= 1e-6 * exact.abs().max()
    assert (x.grad.double().cpu() - x64.grad).abs().max() <= 1e-6 * x64.grad.abs().max()
    assert ((f.grad.double().cpu() - f64.grad).abs() <= half_ulp(f64.grad, dtype) + 1e-6 * f64.grad.abs().max()).all()


@pytest.mark.parametrize("dtype", HALF)
def test_triton_residual_norm_with_half_weights(dtype):
    """Weights in bf16 or fp16 (no autocast): branch and residual stream in that type. The output is one
    rounding of the fp32 computation: within one unit in the last place of the fp64 result. The backward
    pass reads y as the forward stored it, rounded to that type, so a gradient is two roundings and
    cancels in its sum: in norm within one unit at 1 (2⁻⁷ for bf16, 2⁻¹⁰ for fp16) of the fp64 gradient,
    where the interpreter measures 0.45 and 0.21 units (the reference path, upcasting to fp32 inside,
    0.2–0.3)."""
    g = torch.Generator().manual_seed(5)
    branch, residual, grad = (torch.randn(3, 7, 96, generator=g).to(dtype) for _ in range(3))
    unit = 2.0 ** -HALF[dtype]
    for p in (0.0, 0.3):
        keep = kept_mask(branch.shape, p, 17)
        f64, x64 = branch.double().requires_grad_(), residual.double().requires_grad_()
        exact = zoo.norms.rms_norm_reference(1.3 * x64 + torch.where(keep, f64 / (1 - p), 0.0), 1e-7)
        exact.backward(grad.double())
        f, x = on_device(branch.clone()).requires_grad_(), on_device(residual.clone()).requires_grad_()
        out = residual_norm_kernels.ResidualNorm.apply(f, x, 1.3, p, 1e-7, 17, None, None)
        out.backward(on_device(grad))
        assert out.dtype == f.grad.dtype == x.grad.dtype == dtype
        assert ((out.detach().double().cpu() - exact).abs() <= half_ulp(exact, dtype)).all()
        for got, want in ((f.grad, f64.grad), (x.grad, x64.grad)):
            assert (got.double().cpu() - want).norm() <= unit * want.norm()


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("rows", [33, 1])
def test_triton_residual_layer_norm_and_its_gradients_equal_fp64(p, rows):
    """LayerNorm(α·x + Dropout(f)) with γ, β (DeepNet's step), the kernel's own mask, against fp64
    `F.layer_norm` from the same fp32 inputs and that mask: output, df, dx, dγ and dβ to 1e-6 of their
    largest value (fp32 arithmetic, sums over 96 columns and 33 rows). 33 rows split unevenly over the
    backward's programs (each sums a run of rows into its share of dγ and dβ); 1 row leaves programs idle."""
    g = torch.Generator().manual_seed(8)
    branch, residual, grad = (torch.randn(rows, 96, generator=g) for _ in range(3))
    weight, bias = torch.randn(96, generator=g), torch.randn(96, generator=g)
    alpha, seed, eps = 2.3, 99, 1e-5
    keep = kept_mask(branch.shape, p, seed)
    leaves64 = [t.double().requires_grad_() for t in (branch, residual, weight, bias)]
    f64, x64, w64, b64 = leaves64
    exact = F.layer_norm(alpha * x64 + torch.where(keep, f64 / (1 - p), 0.0), (96,), w64, b64, eps)
    exact.backward(grad.double())
    leaves = [fp32_leaf_on_device(t) for t in (branch, residual, weight, bias)]
    out = residual_norm_kernels.ResidualNorm.apply(leaves[0], leaves[1], alpha, p, eps, seed, leaves[2], leaves[3])
    out.backward(on_device(grad))
    for got, want in zip([out] + [t.grad for t in leaves], [exact] + [t.grad for t in leaves64]):
        assert (got.detach().double().cpu() - want).abs().max() <= 1e-6 * want.abs().max()


def test_triton_residual_layer_norm_dtypes_and_empty_rows():
    """A bf16 branch on the fp32 stream with fp32 γ, β: output in fp32, each gradient in its input's
    dtype, γ's and β's in theirs; with no rows, an empty output and zero dγ, dβ."""
    branch = on_device(torch.randn(2, 5, 64).bfloat16()).requires_grad_()
    residual = on_device(torch.randn(2, 5, 64)).requires_grad_()
    weight, bias = (on_device(torch.randn(64)).requires_grad_() for _ in range(2))
    out = residual_norm_kernels.ResidualNorm.apply(branch, residual, 1.0, 0.1, 1e-5, 3, weight, bias)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert branch.grad.dtype == torch.bfloat16 and residual.grad.dtype == weight.grad.dtype == torch.float32
    none = on_device(torch.zeros(0, 64)).requires_grad_()
    out = residual_norm_kernels.ResidualNorm.apply(none, none, 1.0, 0.0, 1e-5, 0, weight, bias)
    assert out.shape == (0, 64)
    weight.grad = bias.grad = None
    out.sum().backward()
    assert torch.equal(weight.grad.cpu(), torch.zeros(64)) and torch.equal(bias.grad.cpu(), torch.zeros(64))


def test_triton_residual_norm_mask_rate_and_seed():
    """The drop rate is p within four standard deviations; a seed draws the same mask every time, another
    seed another mask."""
    shape, p = (4, 64, 128), 0.3
    keep = kept_mask(shape, p, 11)
    n = keep.numel()
    assert abs((1 - keep.float().mean().item()) - p) <= 4 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(kept_mask(shape, p, 11), keep)
    assert not torch.equal(kept_mask(shape, p, 12), keep)


def test_the_cuda_entry_for_the_residual_norm():
    entries = {k.name: k for k in registry.implementations("residual_norm")}
    assert [name for name, k in entries.items() if k.takes("cuda", torch.bfloat16)] == ["triton", "reference"]
    assert [name for name, k in entries.items() if k.takes("cpu", torch.float32)] == ["reference"]
    x = torch.zeros(2, 5, 8)
    dropout, rms = zoo.dropout.Dropout(0.1), zoo.norms.RMSNorm()
    applies = zoo.residual.triton_residual_norm_applies
    assert applies(x, x, 1.0, dropout, rms)
    assert applies(x, x, 1.0, dropout, zoo.norms.LayerNorm(8))  # DeepNet's norm, γ and β
    assert not applies(x, x, 1.0, dropout, zoo.norms.LayerNorm(8, elementwise_affine=False))
    assert not applies(x, x, 1.0, dropout, zoo.norms.LayerNorm(8, bias=False))
    assert not applies(x, x, 1.0, dropout, zoo.norms.LayerNorm((5, 8)))  # statistics over more than a row
    assert not applies(x[:, :1], x, 1.0, dropout, rms)
    assert not torch.compile(applies, backend="eager", fullgraph=True)(x, x, 1.0, dropout, rms)


softmax_attention = pytest.importorskip("zoo.kernels.triton_softmax_attention", reason="Triton is not installed")


def explicit_attention_inputs(heads: int, q_len=19, k_len=23, size=16, width=48, seed=3):
    """fp64 q, k [2, heads, S, size], v [2, heads, Sk, width] (GAU's one wide head when heads = 1), the
    incoming gradient, and a key mask [2, 1, 1, Sk] with the second sequence's last 6 keys padded."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, heads, length, size, generator=g, dtype=torch.float64) for length in (q_len, k_len))
    v = torch.randn(2, heads, k_len, width, generator=g, dtype=torch.float64)
    grad = torch.randn(2, heads, q_len, width, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 1, 1, k_len, dtype=torch.bool)
    mask[1, ..., -6:] = False
    return q, k, v, grad, mask


def explicit_kept(shape, p: float, seed: int) -> torch.Tensor:
    """The kernels' keep-mask for scores of `shape`: a row of equal scores comes out as c/Sk where kept."""
    return softmax_attention.softmax_dropout(on_device(torch.zeros(shape)), None, p, seed).cpu() != 0


def explicit_reference(q, k, v, mask, scale, kept, p):
    """softmax(s·q·kᵀ, masked keys out) with the given keep-mask, times v; autograd gives the gradients."""
    scores = (q * scale) @ k.transpose(-1, -2)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.where(kept, probs / (1 - p), 0.0) @ v if kept is not None else probs @ v


def explicit_on_device(q, k, v, grad, mask, scale, p, seed, dtype):
    """The Function's output and dq, dk, dv, from `dtype` copies of the fp64 inputs (bias as the registry
    entry makes it from the mask), back on the CPU."""
    leaves = [on_device(t.to(dtype)).requires_grad_() for t in (q, k, v)]
    bias = zoo.attention.additive_bias(on_device(mask), dtype)
    out = softmax_attention.ExplicitSoftmaxAttention.apply(*leaves, bias, scale, p, seed)
    out.backward(on_device(grad.to(dtype)))
    return [t.detach().cpu().double() for t in (out, *(leaf.grad for leaf in leaves))]


def largest_error(got, expected) -> float:
    return max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, expected))


@pytest.mark.parametrize("heads, p", [(1, 0.0), (1, 0.3), (3, 0.0), (3, 0.3)])
def test_explicit_softmax_attention_and_its_gradients_equal_fp64(heads, p):
    """fp32 inputs, padded keys, the kernels' own mask: output, dq, dk and dv against autograd through the
    fp64 function of the same inputs and mask, to 1e-6 of each one's largest value (fp32 products over
    at most 48 terms and a softmax over 23, each a few units of 2⁻²⁴ relative; measured ≤ 4e-7)."""
    q, k, v, grad, mask = explicit_attention_inputs(heads)
    scale, seed = 16**-0.5, 1234
    kept = explicit_kept((2, heads, q.shape[-2], k.shape[-2]), p, seed) if p else None
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = explicit_reference(*leaves, mask, scale, kept, p)
    expected.backward(grad)
    got = explicit_on_device(q, k, v, grad, mask, scale, p, seed, torch.float32)
    assert largest_error(got, [expected.detach(), *(leaf.grad for leaf in leaves)]) <= 1e-6
    if p:  # the padded keys get nothing, kept or not; the rate of the rest is p within four deviations
        n = kept.numel()
        assert abs((1 - kept.float().mean().item()) - p) <= 4 * (p * (1 - p) / n) ** 0.5
        assert torch.equal(explicit_kept(kept.shape, p, seed), kept)
        assert not torch.equal(explicit_kept(kept.shape, p, seed + 1), kept)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_explicit_softmax_attention_in_half_precision_rounds_like_softmax_attention(dtype):
    """In bf16 or fp16 both the kernels and `SoftmaxAttention` (torch's softmax between the same products)
    round the scores, P and the products to the dtype; against fp64, the kernels' error may be at most
    1.25× the PyTorch path's (the two paths' exp and sum differ in their last fp32 bits, which moves a
    few roundings; measured 0.74× in bf16, 1.0× in fp16)."""
    q, k, v, grad, mask = explicit_attention_inputs(1)
    scale = 16**-0.5
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = explicit_reference(*leaves, mask, scale, None, 0.0)
    expected.backward(grad)
    expected = [expected.detach(), *(leaf.grad for leaf in leaves)]
    got = explicit_on_device(q, k, v, grad, mask, scale, 0.0, 0, dtype)
    torch_leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = zoo.attention.SoftmaxAttention.apply(*torch_leaves, zoo.attention.additive_bias(mask, dtype), scale, 0.0, None)
    out.backward(grad.to(dtype))
    reference = [t.detach().double() for t in (out, *(leaf.grad for leaf in torch_leaves))]
    reference_error = largest_error(reference, expected)
    assert 0 < reference_error <= 3e-2  # the yardstick: half-precision rounding, not a broken path
    assert largest_error(got, expected) <= 1.25 * reference_error


def test_explicit_softmax_attention_keeps_no_score_matrix_and_runs_backward_again():
    """The forward pass keeps q, k, v and the bias, nothing per row; the backward pass makes q·kᵀ and the
    softmax again and writes only tensors of its own, so a second backward pass through the same graph
    (retain_graph) gives the same gradients, with dropout (the mask drawn again from the seed) and
    without."""
    q, k, v, grad, mask = explicit_attention_inputs(1)
    for p in (0.0, 0.2):
        leaves = [on_device(t.float()).requires_grad_() for t in (q, k, v)]
        bias = zoo.attention.additive_bias(on_device(mask), torch.float32)
        out = softmax_attention.ExplicitSoftmaxAttention.apply(*leaves, bias, 0.25, p, 7)
        saved = [t for t in out.grad_fn.saved_tensors if t is not None]
        assert [tuple(t.shape) for t in saved] == [(2, 1, 19, 16), (2, 1, 23, 16), (2, 1, 23, 48), (2, 1, 1, 23)]
        out.backward(on_device(grad.float()), retain_graph=True)
        first = [leaf.grad.clone() for leaf in leaves]
        out.backward(on_device(grad.float()))
        assert all(torch.equal(leaf.grad, 2 * g) for leaf, g in zip(leaves, first)), p


@pytest.mark.parametrize("masking", ["keys", "window", "per head"])
def test_explicit_softmax_attention_reads_a_bias_broadcast_any_way(masking):
    """The kernels read the bias through its strides: a key mask [B, 1, 1, Sk], a window [Sq, Sk] (the same
    for every sequence and head) and a bias of q's whole shape [B, H, Sq, Sk] give the fp64 function's
    output and gradients (three heads, dropout on; tolerance as in the fp32 test above)."""
    q, k, v, grad, key_mask = explicit_attention_inputs(3, q_len=23)
    if masking == "keys":
        mask = key_mask
    elif masking == "window":  # [Sq, Sk]: broadcast over batch and heads without their dimensions
        mask = zoo.attention.AttentionMask(window=4).dense(23, 23, torch.device("cpu"))[0, 0]
    else:
        mask = torch.rand(2, 3, 23, 23, generator=torch.Generator().manual_seed(5)) < 0.7
        mask[..., 0] = True  # every row sees a key
    p, seed = 0.2, 99
    kept = explicit_kept((2, 3, 23, 23), p, seed)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = explicit_reference(*leaves, mask, 0.25, kept, p)
    expected.backward(grad)
    got = explicit_on_device(q, k, v, grad, mask, 0.25, p, seed, torch.float32)
    assert largest_error(got, [expected.detach(), *(leaf.grad for leaf in leaves)]) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_explicit_softmax_attention_of_a_sequence_without_keys(dtype):
    """A sequence whose every key is masked: the bias is the dtype's minimum on every key. In fp32 and bf16
    (minimum −3.4e38) adding it swallows the scores in either path, so each row is uniform over the keys,
    and that sequence's output and gradients equal `SoftmaxAttention`'s (fp32: to 1e-6 of the largest
    value; bf16: to 2%, half-precision rounding as in the test above), as the kernels' backward pass
    computes the row's softmax again from its maximum and sum (a log-sum-exp kept instead loses the sum
    against −3.4e38: P of 1, not 1/Sk, on every key). In fp16 (minimum −65504) adding it in fp16 rounds a
    score below −16 to −∞, and a row of them to NaN: the kernels add it in fp32 and `SoftmaxAttention`
    clamps the sum to −65504, so in both the row stays finite, and the other sequence's output and
    gradients are what they are without that one (to 1%: fp16 rounding)."""
    q, k, v, grad, mask = explicit_attention_inputs(1)
    q, k = 4 * q.abs(), -4 * k.abs()  # every score below −16, where fp16's score − 65504 rounds to −∞
    mask[1] = False  # the second sequence sees no key at all
    got = explicit_on_device(q, k, v, grad, mask, 1.0, 0.0, 0, dtype)
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = zoo.attention.SoftmaxAttention.apply(*leaves, zoo.attention.additive_bias(mask, dtype), 1.0, 0.0, None)
    out.backward(grad.to(dtype))
    reference = [t.detach().double() for t in (out, *(leaf.grad for leaf in leaves))]
    if dtype == torch.float16:
        assert all(torch.isfinite(t).all() for t in got + reference)
        alone = [t.to(dtype)[:1].requires_grad_() for t in (q, k, v)]
        out = zoo.attention.SoftmaxAttention.apply(*alone, zoo.attention.additive_bias(mask[:1], dtype), 1.0, 0.0, None)
        out.backward(grad[:1].to(dtype))
        alone = [t.detach().double() for t in (out, *(leaf.grad for leaf in alone))]
        for result in got, reference:
            assert largest_error([t[:1] for t in result], alone) <= 1e-2
    else:  # the masked sequence's output and gradients
        assert largest_error([t[1] for t in got], [t[1] for t in reference]) <= (1e-6 if dtype == torch.float32 else 2e-2)


def test_explicit_attention_takes_only_four_dimensional_q_k_and_v():
    """The kernels index the bias by batch, head and row of [B, H, S, ·] tensors: other ranks are refused by
    the registry's predicate (they take `SoftmaxAttention`) and by the Function, naming the shapes."""
    q = on_device(torch.randn(2, 5, 8))
    assert not zoo.attention.triton_explicit_applies(q, q, q, None, 1.0, 0.0, backend="matmul", need_weights=False)
    assert zoo.attention.triton_explicit_applies(q[None], q[None], q[None], None, 1.0, 0.0, backend="matmul",
                                                 need_weights=False)
    with pytest.raises(ValueError, match=r"q, k \[B, H, S, d\].*got q \(2, 5, 8\)"):
        softmax_attention.ExplicitSoftmaxAttention.apply(q, q, q, None, 1.0, 0.0, 0)


@pytest.mark.parametrize("function", ["explicit attention", "residual norm", "SoftmaxAttention"])
def test_a_double_backward_is_refused_by_name(function):
    """These backward passes write through kernels (Triton's, or in place) outside autograd, and keep P
    without its history: differentiating their gradients again is refused by name (once_differentiable),
    not answered with second-order terms silently missing. (dO = 2·out is on the graph, as in a
    gradient penalty.)"""
    q, k, v, grad, mask = explicit_attention_inputs(1)
    if function == "residual norm":
        leaves = [on_device(t.float()).reshape(-1, 16).requires_grad_() for t in (q, 2 * q)]  # branch, residual
        out = residual_norm_kernels.ResidualNorm.apply(*leaves, 0.7, 0.0, 1e-7, 3, None, None)
    else:
        leaves = [on_device(t.float()).requires_grad_() for t in (q, k, v)]
        attention = (softmax_attention.ExplicitSoftmaxAttention if function == "explicit attention"
                     else zoo.attention.SoftmaxAttention)
        out = attention.apply(*leaves, None, 0.25, 0.0, 7 if function == "explicit attention" else None)
    grad_first, = torch.autograd.grad(out.square().sum(), leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_first.square().sum().backward()


def test_explicit_softmax_attention_of_no_rows():
    q = on_device(torch.zeros(2, 1, 0, 16)).requires_grad_()
    k = on_device(torch.zeros(2, 1, 5, 16)).requires_grad_()
    v = on_device(torch.zeros(2, 1, 5, 48)).requires_grad_()
    out = softmax_attention.ExplicitSoftmaxAttention.apply(q, k, v, None, 0.25, 0.1, 3)
    assert out.shape == (2, 1, 0, 48)
    out.sum().backward()
    assert torch.equal(k.grad.cpu(), torch.zeros(2, 1, 5, 16)) and torch.equal(v.grad.cpu(), torch.zeros(2, 1, 5, 48))


@pytest.mark.parametrize("backend, launched", [("matmul", True), ("auto", False)])
def test_the_explicit_attention_runs_where_it_is_asked_for(triton_launches, backend, launched):
    """`attention_backend="matmul"` takes the Triton entry of the softmax attention on CUDA (here its
    entry extended to the CPU), forward and backward; "auto" keeps sdpa's kernels."""
    training_step("gau-alpha-tiny", triton=True, backend=backend)
    explicit = [name for name in triton_launches if name.startswith("softmax_dropout")]
    layers = zoo.create("gau-alpha-tiny").config.num_hidden_layers
    assert explicit == (["softmax_dropout_forward"] * layers + ["softmax_dropout_backward"] * layers if launched else [])


def test_every_triton_launch_is_made_on_its_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device, which ATen's operators set for themselves and a Triton
    launch does not: each wrapper enters its tensors' device (`zoo.kernels.on_device`) around its launch.
    Recorded here for each of the eight kernels, forward and backward (on the CPU the interpreter's
    launches; with a GPU the compiled ones on cuda:0). A model on a second GPU: tests/cuda."""
    entered = []
    real = zoo.kernels.on_device
    monkeypatch.setattr(zoo.kernels, "on_device", lambda device: entered.append(device) or real(device))
    device = torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device("cpu")

    def leaf(*shape):
        return on_device(torch.randn(*shape)).requires_grad_()

    triton_rope.rope(on_device(torch.randn(2, 3, 5, 8)), on_device(torch.ones(1, 1, 5, 4)),
                     on_device(torch.zeros(1, 1, 5, 4)), 1.0)
    assert entered == [device]
    steps = {
        "scale pair": lambda: scale_pair.ScalePair.apply(leaf(2, 5, 8), leaf(8), leaf(8)),
        "residual RMS norm": lambda: residual_norm_kernels.ResidualNorm.apply(leaf(10, 16), leaf(10, 16), 0.7, 0.1,
                                                                              1e-6, 3, None, None),
        "residual LayerNorm": lambda: residual_norm_kernels.ResidualNorm.apply(leaf(10, 16), leaf(10, 16), 0.7, 0.1,
                                                                               1e-6, 3, leaf(16), leaf(16)),
        "explicit attention": lambda: softmax_attention.ExplicitSoftmaxAttention.apply(
            leaf(2, 1, 5, 8), leaf(2, 1, 6, 8), leaf(2, 1, 6, 12), None, 0.25, 0.1, 3),
    }
    for name, step in steps.items():
        entered.clear()
        outputs = step()
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        torch.autograd.backward(outputs, [torch.ones_like(out) for out in outputs])
        assert entered == [device, device], name  # one launch forward, one backward


def test_on_device_makes_the_tensors_gpu_current():
    """For a CUDA device `on_device` is torch's device guard for that GPU (entered, it makes it current and
    restores the previous one on leaving; built here without entering, as this machine may have no GPU);
    elsewhere it does nothing."""
    guard = zoo.kernels.on_device(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(zoo.kernels.on_device(torch.device("cpu")), contextlib.nullcontext)


def test_triton_dropout_seeds_come_from_the_cpu_generator_whatever_the_default_device():
    """As the CPU kernels' seeds (tests/zoo/test_attention.py): under a caller's default CUDA device the
    Triton kernels' seed was drawn on the GPU and read back at every dropout."""
    from zoo.kernels import triton_dropout

    torch.manual_seed(5)
    expected = triton_dropout.new_seed()
    torch.manual_seed(5)
    with torch.device("meta"):
        assert triton_dropout.new_seed() == expected
