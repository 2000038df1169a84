"""Our models and kernels on a CUDA GPU: logits and gradients against the CPU (on one GPU and on a second
one), bf16 autocast, seeded dropout, the fused and Triton kernels and their layouts, selective
recomputation, the step profile. Marked `cuda`: skipped, with that reason, without a GPU
(tests/conftest.py). On a GPU machine: `python -m pytest -q -m cuda tests/cuda` (this file and
test_pipeline_on_cuda.py; scripts/gpu_checks.sh runs each as its own section, this one first)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["roformer-v2-tiny", "gau-alpha-tiny", "deepnet-tiny"]
# each family with the attention it is published with, and GAU-α with the explicit one (its Triton softmax)
ATTENTIONS = [(preset, "auto") for preset in FAMILIES] + [("gau-alpha-tiny", "matmul")]


def padded_batch(length=48, batch=3):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(104, 12000, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    mask[2, 5:] = 0
    return ids, mask


def assert_cuda_equals_the_cpu(preset: str, backend: str, device: str = "cuda") -> None:
    """fp32, padded batch with a row of padding alone (attended as if unpadded: zoo.attention.AttentionMask;
    its query rows saw no key, and sdpa gave them zeros or NaN). CUDA and the CPU sum in other orders (and GAU's attention
    is split into heads that share q/k on CUDA, or, with "matmul", runs through the Triton softmax between
    cuBLAS products): logits of size ≈ 6 agree to 1e-4 at every position, padding too (measured 2–4e-6 at
    the valid ones, gpu.md §1); gradients of the whole model to 1e-3 relative to their norm. bf16 autocast
    against fp32: 0.15 (measured 0.02–0.03)."""
    torch.manual_seed(0)
    model = zoo.create(preset, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       attention_backend=backend).train()
    ids, mask = padded_batch(batch=4)
    mask[3] = 0
    labels = ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    cpu_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    gpu = model.to(device)
    out_gpu = gpu(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
    out_gpu.loss.backward()
    valid = mask.bool()
    assert (out_gpu.logits.cpu() - out.logits.detach()).abs().max() < 1e-4
    for name, grad in cpu_grads.items():
        got = dict(gpu.named_parameters())[name].grad.cpu()
        assert (got - grad).norm() <= 1e-3 * grad.norm() + 1e-7, name
    gpu.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = gpu(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
    assert torch.isfinite(bf16).all() and (bf16[valid] - out.logits.detach()[valid]).abs().max() < 0.15


@pytest.mark.parametrize("preset, backend", ATTENTIONS)
def test_logits_and_gradients_on_cuda_equal_the_cpu(preset, backend):
    assert_cuda_equals_the_cpu(preset, backend)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (a model on the second while the "
                                                           "first is current)")
@pytest.mark.parametrize("preset, backend", ATTENTIONS)
def test_a_model_on_the_second_gpu_runs_its_triton_kernels_there(preset, backend):
    """A model moved to cuda:1 while cuda:0 stays current (no set_device, as in a notebook): Triton launches
    on the current GPU, so each of our Triton kernels (RoPE, the residual step, GAU's scale pair, the
    explicit softmax) enters its tensors' GPU first; otherwise they would run on cuda:0, reading cuda:1's
    memory (an illegal address, or a race with cuda:1's stream). The same results as on one GPU."""
    torch.cuda.set_device(0)
    assert_cuda_equals_the_cpu(preset, backend, device="cuda:1")
    assert torch.cuda.current_device() == 0


def test_the_explicit_attention_takes_its_triton_entry_on_cuda():
    """attention_backend="matmul" on CUDA: the Triton softmax between cuBLAS products (the entry that
    test_triton_kernels.py checks against fp64); "auto" keeps sdpa, GAU's wide head as heads sharing q/k."""
    from zoo.kernels import registry

    q, wide_v = torch.zeros(2, 1, 16, 8, device="cuda"), torch.zeros(2, 1, 16, 24, device="cuda")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        args = (q.to(dtype), q.to(dtype), wide_v.to(dtype), None, 1.0, 0.1)
        assert registry.select("softmax_attention", *args, backend="matmul", need_weights=False).name == "triton"
        assert registry.select("softmax_attention", *args, backend="auto", need_weights=False).name == "sdpa-shared-qk"


@pytest.mark.parametrize("preset, backend", ATTENTIONS)
def test_training_with_dropout_on_cuda_is_finite_and_seeded(preset, backend):
    torch.manual_seed(0)
    model = zoo.create(preset, attention_backend=backend).cuda().train()
    ids, mask = (t.cuda() for t in padded_batch())
    losses = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses.append(model(input_ids=ids, attention_mask=mask, labels=ids).loss.float())
    assert torch.isfinite(torch.stack(losses)).all()
    assert losses[0].item() == losses[1].item()  # the same seed draws the same dropout masks
    assert losses[2].item() != losses[0].item()  # another seed other masks: dropout is on


@pytest.mark.parametrize("preset", FAMILIES)
def test_the_training_forward_never_waits_for_the_gpu(preset):
    """The pretraining micro-step's forward (sparse MLM head with the collator's `masked_positions`,
    dropout, bf16) queues work without one device→host synchronisation; selecting the labels with a
    boolean mask instead does synchronise, which the same check catches."""
    from pretrain.loader import collate
    from pretrain.masking import MaskingPolicy

    torch.manual_seed(0)
    model = zoo.create(preset).cuda().train()
    ids, _ = padded_batch()
    rngs = [np.random.default_rng(i) for i in range(len(ids))]
    policy = MaskingPolicy(rate=0.15, mask=0.8, random=0.1, whole_word=False, mask_id=103, vocab_size=12000,
                           special_ids=(0, 100, 101, 102, 103), first_ordinary_id=104)
    batch = collate(ids.numpy(), np.ones(ids.shape, dtype=bool), rngs, policy)
    batch = {name: tensor.cuda() for name, tensor in batch.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(**batch, masked_positions_only=True)  # first call: RoPE tables built and cached
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(**batch, masked_positions_only=True).loss.float()
            del batch["masked_positions"]
            with pytest.raises(RuntimeError, match="synchroniz"):
                model(**batch, masked_positions_only=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_and_rope_run_their_fused_kernels_on_cuda(dtype):
    """On CUDA the registry sends the RMS norm to torch's fused kernel and RoPE to the Triton kernel
    (zoo/kernels/triton_rope.py), forward and backward, each against the reference computed in fp64 from
    the same inputs: fp32 to 1e-5 of the largest value (the norm's sums run in another order), bf16 and
    fp16 to one unit in the last place (one rounding of the fp32 result) plus 1e-5 of the largest value
    (where the norm's gradient cancels, the fp32 error is larger than the small result's unit)."""
    from zoo.kernels import registry
    from zoo.norms import RMSNorm, rms_norm_reference
    from zoo.rope import apply_rope, rope_reference

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 3, 64, generator=generator).to(dtype).cuda().transpose(1, 2).requires_grad_()
    angles = torch.rand(2, 1, 37, 32, generator=generator, dtype=torch.float64) * 2 * torch.pi
    cos, sin = angles.cos().to(dtype).cuda(), angles.sin().to(dtype).cuda()
    h = (torch.randn(4, 37, 768, generator=generator) * 3).to(dtype).cuda().requires_grad_()
    assert registry.select("rope", q, cos, sin).name == "triton"
    assert registry.select("rms_norm", h, 1e-7).name == "torch-fused"

    fraction_bits = {torch.bfloat16: 7, torch.float16: 10}.get(dtype)

    def within(got, exact, scale):
        allowed = 1e-5 * scale
        if fraction_bits is not None:
            ulp = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(1e-30))) - fraction_bits)
            allowed = allowed + ulp.clamp_min(torch.finfo(dtype).smallest_normal * 2.0**-fraction_bits)
        return bool(((got.double() - exact).abs() <= allowed).all())

    for fn, args, reference in (
        (apply_rope, (q, cos, sin), lambda x: rope_reference(x, cos.double(), sin.double())),
        (RMSNorm(1e-7), (h,), lambda x: rms_norm_reference(x, 1e-7)),
    ):
        x = args[0]
        out = fn(*args)
        grad = torch.randn(out.shape, generator=generator).to(dtype).cuda()
        (dx,) = torch.autograd.grad(out, x, grad)
        x64 = x.detach().double().requires_grad_()
        exact = reference(x64)
        (dx64,) = torch.autograd.grad(exact, x64, grad.double())
        assert out.dtype == dtype and within(out, exact, exact.abs().max()), fn
        assert within(dx, dx64, dx64.abs().max()), fn


@pytest.mark.parametrize("preset", FAMILIES)
def test_attention_outputs_are_sequence_first_on_cuda(preset):
    """sdpa's output comes back sequence first ([B, S, H, d] in memory), so merging its heads for the
    output projection (GAU: for the gate) is a view, not a copy. The flash kernel allocates its output
    like q: RoPE's CUDA entry keeps q sequence first as its projection is (a heads-first q cost a copy
    per layer forward, and one per q and k backward); GAU's q, expanded over the heads that share it,
    gets a dense layout in its logical order. Padded batches go to the memory-efficient kernel, whose
    output is sequence first whatever q's layout; unpadded ones to flash: both are checked."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class AttentionOutputs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.layouts = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if "scaled_dot_product" in func.__name__ and not func.__name__.endswith("backward.default"):
                self.layouts.append(out[0].transpose(1, 2).is_contiguous())
            return out

    model = zoo.create(preset, attention_probs_dropout_prob=0.0).cuda().train()
    ids, mask = padded_batch()
    for attention_mask in (None, mask.cuda()):
        mode = AttentionOutputs()
        with torch.autocast("cuda", dtype=torch.bfloat16), mode:
            model(input_ids=ids.cuda(), attention_mask=attention_mask)
        assert mode.layouts and all(mode.layouts), (attention_mask is not None, mode.layouts)


def test_gau_scale_pair_runs_its_triton_kernels_on_cuda():
    """GAU's q, k = z ⊙ γ_q, z ⊙ γ_k on CUDA go through the Triton pair (zoo/kernels/triton_scale_pair.py):
    in bf16 the same values as the two `ScaleOffset`s bit for bit (both round z·bf16(γ) once, to nearest);
    gradients against fp64 from the same inputs: dz to one bf16 unit plus 1e-5 of the largest (one
    rounding of an fp32 sum), dγ to 1e-5 (fp32 sums)."""
    from zoo.kernels import registry
    from zoo.norms import ScaleOffset, scale_offset_pair, scale_offset_pair_reference

    torch.manual_seed(0)
    first, second = ScaleOffset(128).cuda(), ScaleOffset(128).cuda()
    with torch.no_grad():
        first.weight.uniform_(0.5, 1.5)
        second.weight.uniform_(0.5, 1.5)
    wide = torch.randn(3, 77, 3200, device="cuda").to(torch.bfloat16)
    z = wide[..., -128:].requires_grad_()
    assert registry.select("scale_offset_pair", z, first, second).name == "triton"
    q, k = scale_offset_pair(z, first, second)
    q_ref, k_ref = scale_offset_pair_reference(z, first, second)
    assert torch.equal(q, q_ref) and torch.equal(k, k_ref)
    grad_q, grad_k = (torch.randn(q.shape, device="cuda").to(torch.bfloat16) for _ in range(2))
    dz, dgq, dgk = torch.autograd.grad((q, k), (z, first.weight, second.weight), (grad_q, grad_k))
    z64, gq64, gk64 = (t.detach().double().requires_grad_() for t in (z, first.weight, second.weight))
    # γ rounded to bf16 in the product, as the kernel reads it, with the gradient passing the rounding
    # unrounded (through `.bfloat16()` autograd would round dγ to bf16 too)
    gq_bf16, gk_bf16 = (g + (g.bfloat16().double() - g).detach() for g in (gq64, gk64))
    exact = torch.autograd.grad((z64 * gq_bf16, z64 * gk_bf16), (z64, gq64, gk64), (grad_q.double(), grad_k.double()))
    ulp = torch.exp2(torch.floor(torch.log2(exact[0].abs().clamp_min(1e-30))) - 7)
    assert ((dz.double() - exact[0]).abs() <= ulp + 1e-5 * exact[0].abs().max()).all()
    for got, want in ((dgq, exact[1]), (dgk, exact[2])):
        assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("norm_type", ["rms", "layer"])
def test_residual_norm_runs_its_triton_kernels_on_cuda(norm_type):
    """The post-norm residual step on CUDA goes through the Triton kernels, with the RMS norm and with
    DeepNet's LayerNorm (α, γ, β): against fp64 with the kernel's own mask (recovered from a branch of
    ones through the RMS kernel: one seed, one mask for both), output and gradients to 1e-5 of their
    largest value; the drop rate is p within four standard deviations."""
    from zoo.dropout import Dropout
    from zoo.kernels import registry
    from zoo.norms import LayerNorm, RMSNorm, rms_norm_reference
    from zoo.residual import residual_norm

    dropout, rms, p = Dropout(0.1).train(), RMSNorm(1e-7), 0.1
    generator = torch.Generator().manual_seed(0)
    branch, residual, grad = (torch.randn(4, 128, 768, generator=generator).cuda() for _ in range(3))
    if norm_type == "rms":
        norm, alpha = rms, 1.0
    else:
        norm, alpha = LayerNorm(768, eps=1e-5).cuda(), 2.2
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)
    assert registry.select("residual_norm", branch, residual, alpha, dropout, norm).name == "triton"
    torch.manual_seed(3)
    keep = residual_norm(torch.ones_like(branch), torch.zeros_like(residual), 1.0, dropout, rms) != 0
    assert abs((1 - keep.float().mean().item()) - p) <= 4 * (p * (1 - p) / keep.numel()) ** 0.5
    f, x = branch.clone().requires_grad_(), residual.clone().requires_grad_()
    torch.manual_seed(3)
    out = residual_norm(f, x, alpha, dropout, norm)
    out.backward(grad)
    f64, x64 = branch.double().requires_grad_(), residual.double().requires_grad_()
    s64 = alpha * x64 + torch.where(keep, f64 / (1 - p), 0.0)
    pairs = [(out, None), (f.grad, f64), (x.grad, x64)]
    if norm_type == "rms":
        exact = rms_norm_reference(s64, 1e-7)
    else:
        w64, b64 = (t.detach().double().requires_grad_() for t in (norm.weight, norm.bias))
        exact = torch.nn.functional.layer_norm(s64, (768,), w64, b64, 1e-5)
        pairs += [(norm.weight.grad, w64), (norm.bias.grad, b64)]
    exact.backward(grad.double())
    for got, leaf in pairs:
        want = exact if leaf is None else leaf.grad
        assert (got.detach().double() - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("backend", ["auto", "matmul"])
def test_recompute_elementwise_on_cuda_same_gradients_less_memory(backend):
    """GAU-α with `recompute_elementwise`, its attention through sdpa or the explicit Triton kernels (which
    run again in the backward pass on the kept product q·kᵀ, with the same dropout mask): the loss equal,
    gradients to 1e-5 of their norm (the attention backward may accumulate in another order), and a lower
    peak than without (on the CPU's count, 0.53× of the activations with sdpa)."""
    ids = torch.randint(104, 12000, (8, 512), generator=torch.Generator().manual_seed(0)).cuda()
    results = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        model = zoo.create("gau-alpha-base", num_hidden_layers=4, recompute_elementwise=recompute,
                           attention_backend=backend).cuda().train()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        torch.manual_seed(3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        peak = torch.cuda.max_memory_allocated() - start
        results[recompute] = loss.item(), {n: p.grad.float() for n, p in model.named_parameters()}, peak
        del model
    (plain_loss, plain_grads, plain_peak), (loss, grads, peak) = results[False], results[True]
    assert loss == plain_loss
    for name, grad in plain_grads.items():
        assert (grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-8, name
    assert peak < plain_peak, (peak, plain_peak)


def test_the_step_profile_reads_the_gpu_kernels():
    """scripts/benchmarks/step_profile.py on the GPU (the CPU tests only run its dry mode): a tiny
    RoFormerV2 training step's kernels are recorded and sorted, our Triton kernels and the fused AdamW
    step by their names; the busy time (a union) is at most the sum of the kinds and, the same kernels
    running without the profiler, not above the step's wall time (1.25× for noise at these tiny sizes)."""
    sys.path.insert(0, str(ROOT / "scripts" / "benchmarks"))
    import step_profile

    from zoo.runtime import Runtime

    runtime = Runtime.resolve("cuda", torch.bfloat16)
    cell = step_profile.profile_cell("train", "zoo RoFormerV2-base", 64, 4, runtime, steps=3, dry=True)
    kinds = cell["by_kind_ms"]
    assert cell["kernels_per_step"] > 50
    assert {"matmul", "attention", "ours (Triton, C++)", "optimizer"} <= set(kinds), kinds
    assert 0 < cell["busy_ms"] <= sum(kinds.values()) + 1e-9
    assert cell["busy_ms"] <= 1.25 * cell["step_ms"], cell
    assert 0 < cell["host_ms"] <= 1.25 * cell["step_ms"] + 1.0, cell


def test_growing_a_classifier_on_cuda_equals_growing_it_on_the_cpu():
    """zoo.expand of a model on the GPU with a head bias (rules without an axis: their masks were made on
    the CPU and torch.where failed across devices): the grown model's logits equal the one grown on the
    CPU to fp32 rounding of CUDA's other summation order."""
    torch.manual_seed(0)
    small = zoo.create("roformer-v2-tiny", task="sequence-classification", num_labels=3,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).eval()
    ids, mask = padded_batch()
    sizes = dict(num_layers=small.config.num_hidden_layers + 2, hidden_size=2 * small.config.hidden_size)
    on_cpu = zoo.expand(small, **sizes).eval()
    on_gpu = zoo.expand(small.cuda(), **sizes).eval()
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"}
    with torch.no_grad():
        expected = on_cpu(input_ids=ids, attention_mask=mask).logits
        got = on_gpu(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits.cpu()
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("preset", ["roformer-v2-tiny", "gau-alpha-tiny"])
def test_training_on_cuda_after_an_inference_mode_forward(preset):
    """The RoPE tables an inference_mode forward cached (through the Triton entries on CUDA) are not
    handed to the next training forward, which could not save them for its backward pass."""
    model = zoo.create(preset).cuda()
    ids, _ = padded_batch()
    with torch.inference_mode():
        model.eval()(input_ids=ids.cuda())
    model.train()(input_ids=ids.cuda(), labels=ids.cuda()).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["rerope_w4", "leaky_rerope_w4_kauto"])
def test_a_chunked_position_variant_under_autocast_on_cuda_equals_the_cpu(name):
    """ReRoPE's chunked kernel under bf16 autocast with a padded batch (it failed: autocast made its scores
    bf16, and fp32's minimum could not mask them) computes in fp32: the GPU's logits equal the CPU's
    fp32 ones to the bf16 tolerance of the other layers (0.15, as above)."""
    from zoo.positions import variant

    torch.manual_seed(0)
    model = zoo.create("roformer-v2-tiny").eval()
    ids, mask = padded_batch(length=40)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_variant=variant(name, train_length=16)).logits
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model.cuda()(input_ids=ids.cuda(), attention_mask=mask.cuda(),
                               position_variant=variant(name, train_length=16)).logits.float().cpu()
    valid = mask.bool()
    assert (got[valid] - expected[valid]).abs().max() < 0.15
