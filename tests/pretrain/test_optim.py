"""LAMB against an independent numpy implementation; schedules against their definitions."""

import copy

import numpy as np
import pytest
import torch

from pretrain.optim import Lamb, parameter_groups, piecewise_linear, schedule_multiplier


def numpy_lamb(w, grads, lr, b1, b2, eps, wd, bias_correction, clip, eps_inside_sqrt=False):
    """DeepSpeed's FusedLamb as its CUDA kernel computes it (deepspeed/ops/csrc/lamb/fused_lamb_cuda_kernel.cu):
    part 1 updates m and v and sums ‖x‖² and ‖u‖² for u = m/(√v + ε) + λx (mode 1; mode 0 √(v + ε)), part 3
    clips the ratio and takes x − step_size·ratio·u, where fused_lamb_cuda sets step_size = lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ)
    with bias correction and lr without. m and v are not corrected."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step_size = lr * np.sqrt(1 - b2**t) / (1 - b1**t) if bias_correction else lr
        denom = np.sqrt(v + eps) if eps_inside_sqrt else np.sqrt(v) + eps
        u = m / denom + wd * w
        r = np.linalg.norm(w) / np.linalg.norm(u)
        if clip:
            r = min(max(r, clip[0]), clip[1])
        w = w - step_size * r * u
    return w


@pytest.mark.parametrize("bias_correction,clip,eps_inside_sqrt", [(False, None, False), (True, (0.01, 10.0), False),
                                                                  (True, (0.01, 10.0), True)])
def test_lamb_is_deepspeeds_fused_lamb(bias_correction, clip, eps_inside_sqrt):
    """Our Lamb runs where FusedLamb cannot (off CUDA): the same steps. With bias correction it followed the
    paper (m and v corrected before the ratio): here steps 1.35× to 1.75× FusedLamb's from the second on, and
    3.2× to 5.6× with β₂ = 0.999."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(7, 5))
    grads = [rng.normal(size=(7, 5)) for _ in range(4)]
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = Lamb([p], lr=0.05, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01, bias_correction=bias_correction,
               min_coeff=clip[0] if clip else None, max_coeff=clip[1] if clip else None, eps_inside_sqrt=eps_inside_sqrt)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    expected = numpy_lamb(w0, grads, 0.05, 0.9, 0.99, 1e-6, 0.01, bias_correction, clip, eps_inside_sqrt)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-5, atol=1e-7)  # fp32 moments


def test_lambs_defaults_are_fused_lambs():
    """A recipe that leaves a Lamb parameter out gets FusedLamb's value on CUDA (DeepSpeed builds it with the
    block's params) and ours elsewhere: the same ones (ε was 1e-6 here, 1e-8 there)."""
    import inspect

    from deepspeed.ops.lamb import FusedLamb

    fused = inspect.signature(FusedLamb.__init__).parameters
    ours = inspect.signature(Lamb.__init__).parameters
    for name in ("lr", "bias_correction", "betas", "eps", "eps_inside_sqrt", "weight_decay", "max_coeff", "min_coeff"):
        assert ours[name].default == fused[name].default, name


def test_a_checkpoint_of_fused_lamb_resumes_with_our_lamb():
    """A run checkpointed on CUDA (FusedLamb) and resumed on the CPU (our Lamb): FusedLamb counts `step` in an
    int and its groups have no `adapt` (nor `eps_inside_sqrt`, and a `max_grad_norm` ours does not read). The
    resumed optimizer takes the step the one that wrote the state would (it raised on `.item()` of the int)."""
    rng = np.random.default_rng(1)
    w0, g1, g2 = (torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32) for _ in range(3))
    options = dict(lr=0.05, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True)
    p = torch.nn.Parameter(w0.clone())
    ours = Lamb([p], **options)
    p.grad = g1
    ours.step()
    state = copy.deepcopy(ours.state_dict())  # as a checkpoint holds it (the dict shares the optimizer's tensors)
    state["state"][0]["step"] = 1
    for group in state["param_groups"]:
        del group["adapt"], group["eps_inside_sqrt"]
        group["max_grad_norm"] = 0.0
    q = torch.nn.Parameter(p.detach().clone())
    resumed = Lamb([q], **options)
    resumed.load_state_dict(state)
    p.grad, q.grad = g2, g2.clone()
    ours.step()
    resumed.step()
    assert torch.equal(p, q)


def test_norms_and_biases_neither_decay_nor_adapt():
    import zoo

    model = zoo.create("deepnet-mini")
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    excluded = {names[id(p)] for p in no_decay["params"]}
    assert "encoder.layers.0.self_attn_norm.weight" in excluded and "encoder.layers.0.ffn.fc1.bias" in excluded
    assert "lm_head.transform.2.weight" in excluded  # the head's LayerNorm, whatever its name
    assert all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and no_decay["adapt"] is False
    assert no_decay["min_coeff"] == no_decay["max_coeff"] == 1.0  # FusedLamb's way to say the same (below)


def test_deepspeeds_fused_lamb_leaves_norms_and_biases_unadapted_too():
    """On CUDA DeepSpeed's FusedLamb runs instead of our Lamb, with the same groups. It reads no `adapt`:
    every tensor's ratio ‖x‖/‖u‖ is clipped to its group's [min_coeff, max_coeff], 1 where a norm is 0
    (deepspeed/ops/csrc/lamb/fused_lamb_cuda_kernel.cu). One step of that rule, in numpy, over every
    group: the same weights as our Lamb (fp32 moments), because the no-decay group pins both bounds to 1;
    with the recipe's bounds there the norm gains and biases would move otherwise."""
    import zoo

    model = zoo.create("deepnet-mini")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=generator))  # ratios far from 1
            p.grad = torch.randn(p.shape, generator=generator)
    optimizer = Lamb(parameter_groups(model, 0.01), lr=0.05, eps=1e-6, weight_decay=0.01)
    groups = optimizer.param_groups  # with the defaults filled in, as FusedLamb's are
    fused = {id(p): [numpy_lamb(p.detach().double().numpy(), [p.grad.double().numpy()], 0.05, 0.9, 0.999, 1e-6,
                                group["weight_decay"], True, bounds)
                     for bounds in ((group["min_coeff"], group["max_coeff"]), (0.01, 10.0))]
             for group in groups for p in group["params"]}
    optimizer.step()
    no_decay = {id(p) for p in groups[1]["params"]}
    assert no_decay
    for p in model.parameters():
        pinned, recipe_bounds = fused[id(p)]
        np.testing.assert_allclose(p.detach().numpy(), pinned, rtol=1e-5, atol=1e-6)
        if id(p) in no_decay:
            assert np.abs(recipe_bounds - pinned).max() > 1e-3


def test_piecewise_linear_is_bert4keras():
    points = {4000: 1.0, 40000: 0.5, 160000: 0.1}
    assert piecewise_linear(0, points) == 0.0  # warm-up starts from 0 when no point is at 0
    assert piecewise_linear(2000, points) == pytest.approx(0.5)
    assert piecewise_linear(22000, points) == pytest.approx(0.75)
    assert piecewise_linear(10**7, points) == 0.1  # constant after the last point
    assert piecewise_linear(5, {0: 1.0, 10: 0.5}) == pytest.approx(0.75)  # GAU-α: no warm-up


def test_warmup_schedules():
    linear = schedule_multiplier({"type": "warmup_linear", "warmup": 10, "final": 0.1}, total_steps=110)
    assert linear(0) == pytest.approx(0.1) and linear(9) == pytest.approx(1.0)
    assert linear(60) == pytest.approx(0.55) and linear(110) == pytest.approx(0.1)
    cosine = schedule_multiplier({"type": "warmup_cosine", "warmup": 0, "final": 0.0}, total_steps=100)
    assert cosine(0) == pytest.approx(1.0) and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
