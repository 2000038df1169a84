"""Each family's forward pass against the independent reference of tests/zoo/reference.py (fp64)."""

import math

import pytest
import torch

import zoo
from zoo.families import FAMILIES, TASKS, model_class

from . import reference

SMALL = {
    "roformer-v2": dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "gau-alpha": dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, intermediate_size=48, attention_key_size=16),
    "deepnet": dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64),
}

VARIANTS = [
    ("roformer-v2", {}),
    ("roformer-v2", {"attention_normalization": "softmax_plus"}),
    ("gau-alpha", {}),
    ("gau-alpha", {"softmax_plus_min_len": 16}),
    ("gau-alpha", {"attention_normalization": "relu2"}),
    ("gau-alpha", {"attention_normalization": "softmax"}),
    ("deepnet", {}),
    ("deepnet", {"position_embedding_type": "learned", "max_position_embeddings": 64}),
    ("deepnet", {"residual": "pre"}),
    ("deepnet", {"residual": "post", "initializer": "deepnorm_torchscale"}),
]


def make_config(family, **overrides):
    config_class = FAMILIES[family]["config"]
    return config_class(**{**SMALL[family], "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, **overrides})


def randomize(model, scale=1.0, seed=0):
    """O(1)-scale random weights so attention is sharp and every term matters (not the init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "scaleoffset.weight" in name or name.endswith("transform.2.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
            else:
                fan = p.shape[-1]
                p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype) / math.sqrt(fan) * 2)
    return model


def batch(vocab=97, lengths=(24, 10, 5), seed=1):
    generator = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    ids = torch.zeros(len(lengths), seq, dtype=torch.long)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, vocab, (n,), generator=generator)
        mask[row, :n] = 1
    return ids, mask


def position_sets(b, s):
    generator = torch.Generator().manual_seed(2)
    natural = torch.arange(s)[None].expand(b, s)
    return {
        "default": None,
        "offset": natural + 37,
        "float": torch.sort(torch.rand(b, s, generator=generator, dtype=torch.float64) * 3 * s, dim=-1).values,
    }


def assert_close(actual, expected, rel=1e-8):
    bound = rel * max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= bound, f"max |Δ| = {diff:.3e} > {bound:.3e}"


@pytest.mark.parametrize("backend", ["matmul", "sdpa"])
@pytest.mark.parametrize("family,overrides", VARIANTS, ids=[f"{f}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for f, o in VARIANTS])
def test_forward_matches_reference_fp64(family, overrides, backend):
    config = make_config(family, attention_backend=backend, **overrides)
    model = randomize(model_class(config, "masked-lm")(config).double()).eval()
    sd = {k: v for k, v in model.state_dict().items()}
    ids, mask = batch()
    for kind, positions in position_sets(*ids.shape).items():
        if kind == "float" and config.position_embedding_type == "learned":
            continue
        if positions is not None and config.position_embedding_type == "learned":
            continue
        out = model(ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        expected = reference.encoder(sd, config, ids, mask, position_ids=positions)
        assert len(out.hidden_states) == len(expected) == config.num_hidden_layers + 1
        for layer, (ours, theirs) in enumerate(zip(out.hidden_states, expected)):
            assert_close(ours, theirs)
        assert_close(out.logits, reference.mlm_logits(sd, config, expected[-1]))


def test_padding_does_not_change_valid_positions():
    """A sequence padded inside a batch gives the same states at its real positions as alone."""
    for family in SMALL:
        config = make_config(family)
        model = randomize(model_class(config, "base")(config).double()).eval()
        ids, mask = batch(lengths=(20, 7))
        padded = model(ids, attention_mask=mask).last_hidden_state[1, :7]
        alone = model(ids[1:, :7]).last_hidden_state[0]
        assert_close(padded, alone, rel=1e-12)


def test_softmax_plus_min_len_changes_only_short_rows():
    """softmax_plus with min_len 16 equals min_len 1 for n ≥ 16 and differs for n < 16 (§2.2)."""
    config1 = make_config("gau-alpha")
    config16 = make_config("gau-alpha", softmax_plus_min_len=16)
    model1 = randomize(model_class(config1, "base")(config1).double()).eval()
    model16 = model_class(config16, "base")(config16).double().eval()
    model16.load_state_dict(model1.state_dict())
    long_ids, _ = batch(lengths=(20,))
    short_ids, _ = batch(lengths=(8,))
    assert_close(model16(long_ids).last_hidden_state, model1(long_ids).last_hidden_state, rel=1e-12)
    diff = (model16(short_ids).last_hidden_state - model1(short_ids).last_hidden_state).abs().max()
    assert diff > 1e-3


def test_rope_has_no_length_cap_and_is_shift_invariant():
    """Scores depend on relative positions only: an offset of 1e5 leaves the fp64 output unchanged."""
    config = make_config("roformer-v2")
    model = randomize(model_class(config, "base")(config).double()).eval()
    ids, _ = batch(lengths=(3000,))
    plain = model(ids).last_hidden_state
    shifted = model(ids, position_ids=torch.arange(3000)[None] + 100_000).last_hidden_state
    assert_close(shifted, plain, rel=1e-9)


@pytest.mark.parametrize("family", ["roformer-v2", "gau-alpha"])
def test_training_after_an_inference_mode_forward(family):
    """A forward under torch.inference_mode, then training at the same length: the RoPE tables cached by
    the first were inference tensors, which autograd refuses to save ("Inference tensors cannot be saved
    for backward"). The training step's gradients are those of a model that never ran in inference mode."""
    config = make_config(family, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, _ = batch()
    fresh, used = (model_class(config, "masked-lm")(config).train() for _ in range(2))
    used.load_state_dict(fresh.state_dict())
    with torch.inference_mode():
        used(input_ids=ids)
    for model in (fresh, used):
        model(input_ids=ids, labels=ids).loss.backward()
    for (name, a), b in zip(fresh.named_parameters(), used.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("family", list(SMALL))
def test_bf16_autocast_close_to_fp32(family):
    config = make_config(family)
    model = model_class(config, "masked-lm")(config).eval()
    ids, mask = batch()
    fp32 = model(ids, attention_mask=mask).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(ids, attention_mask=mask).logits
    assert bf16.dtype == torch.bfloat16
    scale = fp32.abs().max()
    assert ((bf16.float() - fp32).abs().max() / scale) < 0.05


@pytest.mark.parametrize("family", list(SMALL))
def test_bf16_weights(family):
    config = make_config(family)
    model = model_class(config, "masked-lm")(config).to(torch.bfloat16).eval()
    ids, mask = batch()
    out = model(ids, attention_mask=mask, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


@pytest.mark.parametrize("family", list(SMALL))
def test_gradient_checkpointing_gives_same_gradients(family):
    config = make_config(family, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = randomize(model_class(config, "masked-lm")(config).double()).train()
    ids, mask = batch()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_activation_checkpointing
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], rtol=1e-10, atol=1e-12, msg=name)


def test_masked_positions_only_matches_dense_head():
    config = make_config("roformer-v2")
    model = randomize(model_class(config, "masked-lm")(config).double()).eval()
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5], labels[2, 1] = 7, 8, 9
    dense = model(ids, attention_mask=mask, labels=labels)
    sparse = model(ids, attention_mask=mask, labels=labels, masked_positions_only=True)
    assert sparse.logits.shape == (3, config.vocab_size)
    assert_close(sparse.logits, dense.logits[labels != -100], rel=1e-12)
    assert_close(sparse.loss, dense.loss, rel=1e-12)
    indexed = model(ids, attention_mask=mask, labels=labels, masked_positions_only=True,
                    masked_positions=torch.nonzero(labels.flatten() != -100).flatten())
    assert torch.equal(indexed.logits, sparse.logits) and torch.equal(indexed.loss, sparse.loss)


def test_masked_positions_give_the_boolean_selections_gradients():
    config = make_config("gau-alpha", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = randomize(model_class(config, "masked-lm")(config).double())
    ids, mask = batch()
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.3, ids, -100)
    grads = []
    for positions in (None, torch.nonzero(labels.flatten() != -100).flatten()):
        model.zero_grad()
        model(ids, attention_mask=mask, labels=labels, masked_positions_only=True, masked_positions=positions).loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-12, atol=1e-14, msg=name)


def test_bert4keras_initialiser_std():
    """Base RoFormerV2: q/k/v/o/W1 std ≈ 0.0104, W2 ≈ 0.0052, truncated at ±2σ (§1.4)."""
    model = zoo.create("roformer-v2-base", task="base")
    layer = model.layers[0]
    sigma = 1.13684723 / math.sqrt(768) / math.sqrt(12)
    for w, expected, s in ((layer.self_attn.q_proj.weight, 0.0104, sigma), (layer.ffn.fc2.weight, 0.0052, sigma / 2)):
        assert abs(w.std().item() - expected) < 2e-4
        assert w.abs().max().item() <= 2 * s + 1e-7


def test_every_task_class_is_registered_with_auto():
    from transformers import AutoConfig

    for family, entry in FAMILIES.items():
        config = entry["config"](**SMALL[family])
        assert type(AutoConfig.for_model(config.model_type)) is entry["config"]
        for task, (auto, _) in TASKS.items():
            if auto is not None:
                assert type(auto.from_config(config)) is entry["models"][task]


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="hidden_size"):
        zoo.RoFormerV2Config(hidden_size="64")
    with pytest.raises(ValueError, match="residual"):
        zoo.DeepNetConfig(residual="sideways")
    with pytest.raises(ValueError, match="head_size"):
        zoo.RoFormerV2Config(hidden_size=30, num_attention_heads=2, head_size=15)
    with pytest.raises(ValueError, match="hidden_dropout_prob"):
        zoo.GAUAlphaConfig(hidden_dropout_prob=1.5)


def test_wrong_input_shapes_are_refused():
    config = make_config("roformer-v2")
    model = model_class(config, "base")(config)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="input_ids must be"):
        model(torch.ones(5, dtype=torch.long))
