"""zoo/projections.py: attention's q, k and v as one product x·[W_q; W_k; W_v]ᵀ, against the three modules
run one by one: the same function and gradients, the same bytes kept for the backward pass, fewer
operations, and the modules' own forward passes wherever something else would see them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import zoo
import zoo.projections
from zoo.projections import one_product_applies, project


def linears(bias: bool, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return tuple(nn.Linear(16, 16, bias=bias).to(dtype) for _ in range(3))


def one_by_one(x, modules):
    return tuple(module(x) for module in modules)


@pytest.mark.parametrize("bias", [False, True])
def test_one_product_is_the_three_modules_in_fp64(bias):
    """Values, and the gradients of x, the weights and the biases, to fp64 rounding (the product sums
    the same terms per column; x's gradient adds the three in another order)."""
    modules = linears(bias)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    grads = [torch.randn(3, 5, 16, dtype=torch.float64) for _ in range(3)]
    results = []
    for fn in (project, one_by_one):
        outputs = fn(x, modules)
        params = [p for module in modules for p in module.parameters()]
        results.append((outputs, torch.autograd.grad(outputs, [x, *params], grads)))
    for got, want in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-13 * want.abs().max()


def test_one_product_under_bf16_autocast_is_as_close_to_fp32():
    """Under autocast both ways round the same fp32 sums of bf16 products once: each output within one
    bf16 unit of the other, and x's gradient (summed over the three in fp32 inside the product, instead
    of three bf16 results added) no further from the fp32 gradient than the modules' own."""
    modules = linears(True, torch.float32, seed=1)
    x = torch.randn(4, 9, 16, requires_grad=True)
    grads = [torch.randn(4, 9, 16) for _ in range(3)]
    exact = torch.autograd.grad(one_by_one(x, modules), x, grads)[0]
    gradient, outputs = {}, {}
    for fn in (project, one_by_one):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[fn] = fn(x, modules)
        gradient[fn] = torch.autograd.grad(outputs[fn], x, [g.bfloat16() for g in grads])[0]
    for got, want in zip(outputs[project], outputs[one_by_one]):
        assert got.dtype == want.dtype == torch.bfloat16
        ulp = torch.exp2(torch.floor(torch.log2(want.float().abs().clamp_min(1e-30))) - 7)
        assert ((got.float() - want.float()).abs() <= ulp).all()
    error = {fn: float((g - exact).norm() / exact.norm()) for fn, g in gradient.items()}
    assert gradient[project].dtype == torch.float32
    assert 0 < error[project] <= 1.25 * error[one_by_one], error


class Operations(TorchDispatchMode):
    """The operations that launch a kernel, by name (views and splits launch nothing)."""

    VIEWS = ("detach", "t.", "view", "_unsafe_view", "slice", "split", "transpose", "expand", "as_strided")

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.__name__.startswith(self.VIEWS):
            self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_fewer_operations_and_the_same_bytes_kept(monkeypatch):
    """Against the modules run one by one on one shared autocast copy of x (what the model does where the
    one product does not apply): one product each way for the values and x's gradient and one for the
    weights' gradient instead of three each, and exactly as many bytes kept for the backward pass (x's
    bf16 copy, and the weights' bf16 copies concatenated instead of three). q and k are views of the
    product's output; v is its own tensor, so that attention, which keeps v, does not keep q's and k's
    columns with it."""
    modules = linears(False, torch.float32)
    x0 = torch.randn(2, 8, 16, requires_grad=True)
    counts, kept, outputs = {}, {}, {}
    for one in (True, False):
        if not one:
            monkeypatch.setattr(zoo.projections, "one_product_applies", lambda linears: False)
        x0.grad = None
        for module in modules:
            module.zero_grad(set_to_none=True)
        x = x0 * 1.0  # a non-leaf input, as hidden states are
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        counted = Operations()
        with counted, torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            q, k, v = project(x, modules)
        with counted:
            torch.autograd.backward([q, k, v], [torch.ones_like(q), torch.ones_like(k), torch.ones_like(v)])
        counts[one], kept[one], outputs[one] = counted.names, sum(storages.values()), (q, k, v)
    products = {one: sum(name.startswith(("mm", "addmm")) for name in names) for one, names in counts.items()}
    assert products == {True: 3, False: 9}
    assert sum(name.startswith("cat") for name in counts[True]) == 2  # the weights forward, the blocks backward
    # forward 2 products and 2 weight casts fewer, a concatenation and v's copy more; backward 4 products,
    # 2 weight-gradient casts and 2 additions fewer, a concatenation more
    assert len(counts[False]) - len(counts[True]) == 9, counts
    assert kept[True] == kept[False] == x0.numel() * 2 + 3 * 16 * 16 * 2
    q, k, v = outputs[True]
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() != v.untyped_storage().data_ptr()
    assert v.is_contiguous()


@pytest.mark.parametrize("case", ["hook", "pre-hook", "global-hook", "subclass", "offloaded", "one-bias", "dtypes"])
def test_the_modules_run_themselves_where_something_would_see_them(case):
    """A forward hook (PEFT's, DeepSpeed ZeRO-3's gathering), a global module hook, a subclass (a LoRA or
    quantised layer), a forward wrapped on the instance (accelerate's offloading, whose module keeps its
    weight on "meta" and sets `_hf_hook`: the one product read that weight, uninitialised memory, and
    gave wrong outputs without an error), biases on some only, weights of two dtypes: the one product
    does not apply, and each module's own forward pass runs."""
    modules = list(linears(True, torch.float32))
    calls = []
    handles = []
    if case == "hook":
        handles.append(modules[1].register_forward_hook(lambda module, args, out: calls.append("k")))
    elif case == "pre-hook":
        handles.append(modules[0].register_forward_pre_hook(lambda module, args: calls.append("q")))
    elif case == "global-hook":
        handles.append(nn.modules.module.register_module_forward_hook(lambda module, args, out: calls.append("any")))
    elif case == "subclass":
        class Lora(nn.Linear):
            def forward(self, x):
                calls.append("lora")
                return super().forward(x)

        modules[2] = Lora(16, 16)
    elif case == "offloaded":  # as accelerate's add_hook_to_module leaves a module
        module, original = modules[1], modules[1].forward

        def offloaded_forward(x):
            calls.append("offloaded")
            return original(x)

        module._hf_hook, module.forward = object(), offloaded_forward
    elif case == "one-bias":
        modules[0] = nn.Linear(16, 16, bias=False)
    else:
        modules[2] = modules[2].double()
    try:
        assert not one_product_applies(modules)
        x = torch.randn(2, 3, 16, dtype=torch.float64 if case == "dtypes" else torch.float32)
        if case == "dtypes":
            outputs = project(x, modules[2:])  # each module on its own input dtype
            calls.append("ran")
        else:
            outputs = project(x, modules)
            for got, module in zip(outputs, modules):
                assert torch.equal(got, nn.Linear.forward(module, x))
        assert calls or case == "one-bias"  # hooks and the subclass saw their modules run
    finally:
        for handle in handles:
            handle.remove()
    assert one_product_applies(linears(True)) and one_product_applies(linears(False))


def test_weights_on_meta_are_not_concatenated():
    """Offloaded weights are on "meta" until their module's own forward brings them in."""
    assert not one_product_applies([linear.to("meta") for linear in linears(True)])


def test_an_unused_block_gets_a_zero_gradient():
    modules = linears(True)
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    q, k, v = project(x, modules)
    (v.sum()).backward()
    assert torch.equal(modules[0].weight.grad, torch.zeros(16, 16, dtype=torch.float64))
    assert (x.grad - modules[2].weight.sum(0).expand(2, 3, 16)).abs().max() <= 1e-12


def test_inference_takes_views_of_one_product():
    modules = linears(False, torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = project(torch.randn(2, 3, 16), modules)
    assert q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    assert q.dtype == torch.bfloat16


@pytest.mark.parametrize("preset", ["roformer-v2-tiny", "deepnet-tiny"])
def test_a_model_trains_the_same_with_the_one_product(preset, monkeypatch):
    """A whole training step in fp64, padded batch, dropout on with one seed: the loss and every gradient
    as with the modules run one by one, to fp64 rounding."""
    model = zoo.create(preset, task="masked-lm").double().train()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(104, 12000, (2, 20), generator=g)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 13:] = 0
    results = []
    for one in (True, False):
        if not one:
            monkeypatch.setattr(zoo.projections, "one_product_applies", lambda linears: False)
        model.zero_grad()
        torch.manual_seed(7)
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert (results[0][0] - results[1][0]).abs() <= 1e-12 * results[1][0].abs()
    for name, grad in results[1][1].items():
        assert (results[0][1][name] - grad).abs().max() <= 1e-10 * grad.abs().max().clamp_min(1e-30), name


class Lookups(TorchDispatchMode):
    """Counts embedding lookups (aten.embedding), by the number of rows each one asks for."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.embedding.default:
            self.rows.append(args[1].numel())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("watch", [None, "own hook", "global hook"])
def test_a_watched_segment_embedding_runs_itself(watch):
    """The embeddings add token_type_embeddings' row 0 (the all-zero segment ids) by reading the weight, the
    same rule as the one product: unwatched, only the word embeddings look rows up; where hooks watch that
    module (ZeRO-3 gathers its partitioned weight in one) it is called instead, with the same result."""
    torch.manual_seed(0)
    model = zoo.create("roformer-v2-mini").double().eval()
    ids = torch.randint(104, 12000, (2, 9))
    expected = model(input_ids=ids).logits
    segments = model.encoder.embeddings.token_type_embeddings
    calls = []
    handle = None
    if watch == "own hook":
        handle = segments.register_forward_pre_hook(lambda module, args: calls.append(args[0].tolist()))
    elif watch == "global hook":
        handle = nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: calls.append(args[0].tolist()) if module is segments else None)
    try:
        with Lookups() as lookups:
            got = model(input_ids=ids).logits
    finally:
        if handle is not None:
            handle.remove()
    if watch is None:
        assert calls == [] and lookups.rows == [ids.numel()]  # the words only: the segment row is a view
        assert torch.equal(got, expected)
        return
    assert calls == [0] and lookups.rows == [ids.numel(), 1]  # the all-zero segment, once
    # (a global hook also makes q, k and v three products: the same sums in fp64 to rounding)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
