"""LAMB against an independent numpy implementation; schedules against their definitions."""

import numpy as np
import pytest
import torch

from pretrain.optim import Lamb, parameter_groups, piecewise_linear, schedule_multiplier


def numpy_lamb(w, grads, lr, b1, b2, eps, wd, bias_correction, clip):
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        u = mh / (np.sqrt(vh) + eps) + wd * w
        r = np.linalg.norm(w) / np.linalg.norm(u)
        if clip:
            r = min(max(r, clip[0]), clip[1])
        w = w - lr * r * u
    return w


@pytest.mark.parametrize("bias_correction,clip", [(False, None), (True, (0.01, 10.0))])
def test_lamb_matches_reference(bias_correction, clip):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(7, 5))
    grads = [rng.normal(size=(7, 5)) for _ in range(4)]
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = Lamb([p], lr=0.05, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01, bias_correction=bias_correction,
               min_coeff=clip[0] if clip else None, max_coeff=clip[1] if clip else None)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    expected = numpy_lamb(w0, grads, 0.05, 0.9, 0.99, 1e-6, 0.01, bias_correction, clip)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-5, atol=1e-7)  # fp32 moments


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
