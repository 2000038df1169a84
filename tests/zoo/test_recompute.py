"""Selective recomputation of GAU's (and GELU FFNs') elementwise chains (zoo/recompute.py, `config.recompute_elementwise`):
the same function and gradients, less kept for the backward pass, and which operations count as cheap."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

import zoo
import zoo.layers
import zoo.recompute
from zoo.recompute import is_elementwise

from .kernel_switch import kernels_off
from .test_models import make_config, randomize

SCENARIOS = {
    "fp64-padded": dict(dtype=torch.float64, dropout=0.0, padded=True, normalization="softmax_plus"),
    "fp32-dropout": dict(dtype=torch.float32, dropout=0.1, padded=True, normalization="softmax_plus"),
    "bf16-dropout": dict(dtype=torch.bfloat16, dropout=0.1, padded=False, normalization="softmax"),
    # torch's sdpa on the CPU draws its dropout with torch's unfused dropout (a mask scaled in place)
    "sdpa-dropout": dict(dtype=torch.float32, dropout=0.1, padded=True, normalization="softmax", backend="sdpa"),
}


def loss_and_grads(model, ids, mask, labels, dtype, seed=5):
    model.zero_grad()
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = model(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kernels", ["cpu-kernels", "pytorch-paths"])
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("family", ["gau-alpha", "deepnet"])
def test_recomputing_gives_the_same_loss_and_gradients(family, scenario, kernels, monkeypatch):
    """Recomputation runs the same operations on the same values, and dropout draws the same masks
    (the random state is restored first): loss and every gradient equal bit for bit."""
    options = SCENARIOS[scenario]
    if kernels == "pytorch-paths":
        kernels_off(monkeypatch, "elementwise", "dropout", "attention")
    config = make_config(family, hidden_dropout_prob=options["dropout"],
                         attention_probs_dropout_prob=options["dropout"],
                         attention_normalization=options["normalization"],
                         attention_backend=options.get("backend", "auto"))
    model = randomize(zoo.families.model_class(config, "masked-lm")(config), scale=0.5)
    model = model.to(torch.float64 if options["dtype"] == torch.float64 else torch.float32).train()
    ids = torch.randint(5, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if options["padded"]:
        mask[1, 7:] = 0
        mask[2, 3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    plain = loss_and_grads(model, ids, mask, labels, options["dtype"])
    for module in model.modules():
        if hasattr(module, "recompute"):  # GAU, or DeepNet's GELU FFN
            module.recompute = True
    recomputed = loss_and_grads(model, ids, mask, labels, options["dtype"])
    assert torch.equal(recomputed[0], plain[0])
    assert plain[1].keys() == recomputed[1].keys()
    for name, grad in plain[1].items():
        assert torch.equal(recomputed[1][name], grad), name


def test_torch_dropout_on_the_cpu_gives_the_same_gradients_recomputed():
    """torch's CPU dropout scales its mask in place (`bernoulli_` then `div_`) and multiplies by the mask,
    not by what `div_` returns: the scaling is made again with the mask (kept, the gradients were those of
    an unscaled mask)."""
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(8, 8, requires_grad=True)

    def f(x, w):
        return torch.nn.functional.dropout(x * 1.0, 0.5, training=True) @ w

    grads = []
    for run in (f, lambda *args: zoo.recompute.recompute_elementwise(f, *args)):
        torch.manual_seed(5)
        grads.append(torch.autograd.grad(run(x, w).sum(), (x, w)))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_the_option_is_a_config_field_and_stays_out_of_inference():
    config = make_config("gau-alpha", recompute_elementwise=True)
    model = zoo.families.model_class(config, "masked-lm")(config)
    assert all(layer.gau.recompute for layer in model.encoder.layers)
    ids = torch.randint(5, 97, (2, 8))
    with torch.no_grad():  # no checkpoint without autograd; attention weights come back as without it
        model.eval()
        out = model(ids, output_attentions=True)
    assert out.attentions[0].shape == (2, 1, 8, 8)


def test_a_relu_ffn_refuses_the_option_by_name():
    with pytest.raises(zoo.errors.ConfigError, match="RoFormerV2Config.recompute_elementwise has nothing to drop in a ReLU FFN"):
        make_config("roformer-v2", recompute_elementwise=True)
    assert make_config("roformer-v2", recompute_elementwise=True, hidden_act="gelu").recompute_elementwise


def test_cheap_operations_are_recomputed_and_the_rest_kept():
    aten = torch.ops.aten
    recomputed = (aten.silu.default, aten.mul.Tensor, aten.add.Tensor, aten.view.default, aten.expand.default,
                  aten.transpose.int, aten._to_copy.default, aten.clone.default, aten.split_with_sizes.default,
                  aten.stack.default, torch.ops.zoo.rope.default,
                  aten.native_dropout.default, aten.rand.default,  # random draws: the RNG state is restored first
                  # allocations, and the random fills of them: a Triton kernel writes outside ATen into a
                  # new output, and a fill writes into a new allocation, not into a kept one
                  aten.empty.memory_format, aten.empty_like.default, getattr(aten.random_, "from"),
                  aten.bernoulli_.float)
    kept = (aten.mm.default, aten.addmm.default, aten.bmm.default, aten._softmax.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default,
            aten._scaled_dot_product_efficient_attention.default, torch.ops.zoo.blocked_attention.default,
            aten.mul_.Tensor, aten.add_.Tensor, aten.zero_.default)  # in place: never written twice
    assert [op for op in recomputed if not is_elementwise(op)] == []
    assert [op for op in kept if is_elementwise(op)] == []


class KeptStorages(TorchDispatchMode):
    """The storages operations make inside the block; `bytes()` sums those still alive after it."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                self.made.append((storage.data_ptr(), StorageWeakRef(storage), storage.nbytes()))
        return out

    def bytes(self) -> int:
        return sum({ptr: size for ptr, ref, size in self.made if not ref.expired()}.values())


class Products(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in zoo.recompute.PRODUCTS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("preset", ["gau-alpha-tiny", "deepnet-tiny"])
def test_the_output_product_is_neither_kept_nor_run_again(preset, monkeypatch):
    """Under recomputation the product that makes a layer's branch output (GAU's W_o, the FFN's W_2) is not
    kept: the forward pass keeps exactly one bf16 [B, S, hidden] per layer less than with that product
    kept like the others (the marker switched off); and the backward pass runs as many matrix products as
    without recomputation, since its run of the layer stops before that product."""
    ids = torch.randint(104, 12000, (2, 16), generator=torch.Generator().manual_seed(0))

    def run(recompute: bool):
        torch.manual_seed(0)
        model = zoo.create(preset, task="base", recompute_elementwise=recompute, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0).train()
        kept, products = KeptStorages(), Products()
        with torch.autocast("cpu", dtype=torch.bfloat16), kept:
            hidden = model(input_ids=ids).last_hidden_state
        kept_bytes = kept.bytes()  # before the backward pass frees what it kept
        with products:
            hidden.float().sum().backward()
        return kept_bytes, products.count, model.config

    kept, backward_products, config = run(recompute=True)
    _, plain_backward_products, _ = run(recompute=False)
    monkeypatch.setattr(zoo.layers, "recomputed_product", contextlib.nullcontext)
    kept_with_output, _, _ = run(recompute=True)
    assert kept_with_output - kept == config.num_hidden_layers * ids.numel() * config.hidden_size * 2
    assert backward_products == plain_backward_products


@pytest.mark.parametrize("preset", ["gau-alpha-tiny", "deepnet-tiny"])
def test_the_input_copy_is_made_again_only_where_the_input_is_kept_anyway(preset, monkeypatch):
    """A post-norm RMS residual step keeps its output, the next block's input (zoo/layers.py): GAU-α's
    recomputation then makes the bf16 copy for x·W_i again instead of keeping it. DeepNet's LayerNorm
    step keeps x̂, not its output, so there the bf16 copy is kept instead of the fp32 input. Either
    way the choice made keeps 2 bytes per hidden value and layer less than the other (4-byte x against
    a 2-byte copy), and the gradients are the same bit for bit."""
    ids = torch.randint(104, 12000, (2, 16), generator=torch.Generator().manual_seed(0))
    model = zoo.create(preset, task="base", recompute_elementwise=True, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0).train()
    blocks = [m for m in model.modules() if hasattr(m, "input_kept")]
    assert {b.input_kept for b in blocks} == {preset.startswith("gau")}

    def run(input_kept: bool):
        for block in blocks:
            monkeypatch.setattr(block, "input_kept", input_kept)
        model.zero_grad(set_to_none=True)
        kept = KeptStorages()
        with torch.autocast("cpu", dtype=torch.bfloat16), kept:
            hidden = model(input_ids=ids).last_hidden_state
        kept_bytes = kept.bytes()
        hidden.float().sum().backward()
        return kept_bytes, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    chosen = blocks[0].input_kept
    run(chosen)  # the first pass makes the rotary tables, which the model caches
    kept, grads = run(chosen)
    other_kept, other_grads = run(not chosen)
    assert other_kept - kept == len(blocks) * ids.numel() * model.config.hidden_size * 2
    assert grads.keys() == other_grads.keys()
    assert all(torch.equal(grads[n], other_grads[n]) for n in grads)
