"""zoo/casting.py: one autocast copy for the q/k/v products, the same gradients as three casts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zoo
import zoo.layers
import zoo.projections
from zoo.casting import cast_for_products

from .test_models import make_config, randomize


def products(x, weights, shared: bool):
    inputs = cast_for_products(x, len(weights)) if shared else (x,) * len(weights)
    return sum((F.linear(xi, w).float() ** 2).sum() for xi, w in zip(inputs, weights))


def test_three_products_keep_one_copy_and_get_the_same_gradients():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 8, 16, generator=generator, requires_grad=True)
    weights = [torch.randn(16, 16, generator=generator, requires_grad=True) for _ in range(3)]
    results = {}
    for shared in (False, True):
        kept = set()

        def pack(t):
            if t.dtype == torch.bfloat16 and t.numel() == x0.numel():
                kept.add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = products(x0 * 1.0, weights, shared)  # a non-leaf input, as hidden states are
        grads = torch.autograd.grad(loss, [x0, *weights])
        results[shared] = loss, grads, len(kept)
    assert results[False][2] == 3 and results[True][2] == 1
    assert torch.equal(results[True][0], results[False][0])
    for ours, theirs in zip(results[True][1], results[False][1]):
        assert torch.equal(ours, theirs)


def test_the_backward_pass_is_one_cast_and_in_place_additions():
    """The three bf16 gradients summed in fp32, last use first as autograd adds separate casts'
    gradients, bit for bit; in three operations (a cast, two additions), not five (three casts, two
    additions)."""
    from .test_projections import Operations  # operations that launch a kernel, by name

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(5, 16, generator=generator, requires_grad=True)
    grads = [torch.randn(5, 16, generator=generator).bfloat16() for _ in range(3)]
    originals = [g.clone() for g in grads]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        handles = cast_for_products(x, 3)
    counted = Operations()
    with counted:
        torch.autograd.backward(handles, grads)
    assert sorted(counted.names) == ["_to_copy.default", "add_.Tensor", "add_.Tensor"]
    assert x.grad.dtype == torch.float32
    assert torch.equal(x.grad, (grads[2].float() + grads[1].float()) + grads[0].float())
    assert all(torch.equal(g, o) for g, o in zip(grads, originals))  # the incoming gradients are not written to


@pytest.mark.parametrize("case", ["no-autocast", "already-bf16", "fp64", "fp64-no-grad"])
def test_the_input_itself_where_autocast_would_not_cast(case):
    """Outside autocast, in its dtype already, or in fp64 (which autocast never casts: an fp64 model under
    autocast stays fp64), with or without a gradient to carry."""
    x = torch.randn(2, 4, requires_grad=True)
    if case == "already-bf16":
        x = x.bfloat16()
    elif case.startswith("fp64"):
        x = x.double()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case != "no-autocast"), \
            torch.set_grad_enabled(case != "fp64-no-grad"):
        handles = cast_for_products(x, 3)
        if case.startswith("fp64"):
            assert F.linear(handles[0], torch.ones(3, 4, dtype=torch.float64)).dtype == torch.float64
    assert len(handles) == 3 and all(h is x for h in handles)


@pytest.mark.parametrize("case", ["no-grad", "no-requires-grad"])
def test_without_a_gradient_one_plain_cast_for_every_product(case):
    """Inference (or an input that needs no gradient): one cast, the very tensor each product would have
    made for itself, handed to all three, so autocast casts nothing more; no autograd node."""
    x = torch.randn(2, 4, requires_grad=case != "no-requires-grad")
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(case != "no-grad"):
        handles = cast_for_products(x, 3)
        products = [F.linear(h, torch.ones(4, 4)) for h in handles]
    assert len(handles) == 3 and handles[0] is handles[1] is handles[2]
    assert handles[0].dtype == torch.bfloat16 and handles[0].grad_fn is None
    assert torch.equal(handles[0], x.detach().to(torch.bfloat16))
    expected = F.linear(x.detach().bfloat16(), torch.ones(4, 4).bfloat16())
    for product in products:
        assert product.dtype == torch.bfloat16 and torch.equal(product, expected)


@pytest.mark.parametrize("family", ["roformer-v2", "deepnet"])
def test_a_training_step_is_unchanged_to_fp32_rounding(family, monkeypatch):
    """The attention's three modules run themselves here (not as one product, zoo/projections.py), on one
    shared copy against three separate casts."""
    monkeypatch.setattr(zoo.projections, "one_product_applies", lambda linears: False)
    config = make_config(family)  # dropout on
    model = randomize(zoo.families.model_class(config, "masked-lm")(config), scale=0.5).train()
    ids = torch.randint(5, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    results = []
    for separate in (False, True):
        if separate:
            for module in (zoo.layers, zoo.projections):
                monkeypatch.setattr(module, "cast_for_products", lambda x, uses: (x,) * uses)
        model.zero_grad()
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    assert torch.equal(results[0][0], results[1][0])
    # the hidden states' gradient now adds two fp32 terms (the three products', the residual's) where
    # autograd added four, in another order: fp32 rounding, measured ≤ 1e-7 of each gradient's norm
    for name, grad in results[1][1].items():
        assert (results[0][1][name] - grad).norm() <= 1e-6 * grad.norm(), name
