"""zoo.expand (zoo/growth/): lossless growth per family and per dimension, the norms' ε, optimizer
state, and `python -m zoo expand`.

Tolerances are expansion.md A.10's: fp64 max |Δ| ≤ 1e-8 × max(1, max |logits|); fp32 max |Δ| ≤
max(3 × the small model's own fp32-vs-fp64 error, 1e-5 × max |logits|), argmax agreement 100% on
masked positions and |ΔCE| ≤ 1e-5. Weights are O(1) random (tests/zoo/test_models.py `randomize`),
so attention is sharp and a wrong recipe shows up as an O(1) error.
"""

import json
import math

import pytest
import torch

import zoo
from zoo.__main__ import main
from zoo.families import TASKS, model_class
from zoo.growth import expand, expand_optimizer, probe_batch

from .test_models import batch, make_config, randomize

LENGTHS = (24, 12, 7, 1)  # N, N/2, 7 and 1 in one padded batch; 12 and 7 are below softmax_plus's 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: a second intra-op thread adds only synchronisation, which on a shared
    2-core machine costs far more than the arithmetic (≈ 30× slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grow_case(family, sizes, dtype=torch.float64, task="masked-lm", **overrides):
    config = make_config(family, **overrides)
    small = randomize(model_class(config, task)(config).to(dtype)).eval()
    big, plan = expand(small, return_plan=True, **sizes)
    return small, big.eval(), plan


def fp64_bound(logits):
    return 1e-8 * max(1.0, logits.abs().max().item())


def max_diff(a, b):
    return (a - b).abs().max().item()


def assert_same_function(small, big, plan, lengths=LENGTHS, seed=1):
    """Logits within the fp64 bound, every block's output equal to Q·(small block output), argmax equal."""
    ids, mask = batch(lengths=lengths, seed=seed)
    a = small(ids, attention_mask=mask, output_hidden_states=True)
    b = big(ids, attention_mask=mask, output_hidden_states=True)
    assert len(b.hidden_states) == big.config.num_hidden_layers + 1
    for layer in range(-1, small.config.num_hidden_layers):
        expected = plan.expand_hidden(a.hidden_states[layer + 1], layer)
        got = b.hidden_states[plan.layer_map[layer] + 1]
        assert max_diff(got, expected) <= 1e-8 * max(1.0, expected.abs().max().item()), f"state after layer {layer}"
    assert max_diff(b.logits, a.logits) <= fp64_bound(a.logits)
    valid = mask.bool()
    assert torch.equal(a.logits.argmax(-1)[valid], b.logits.argmax(-1)[valid])


LEARNED_POSITIONS = {"position_embedding_type": "learned", "max_position_embeddings": 64}
WIDTH_CASES = [
    ("roformer-v2", {"hidden_size": 64}, {}),  # ×2: uniform duplication
    ("roformer-v2", {"hidden_size": 48}, {}),  # non-multiple: weighted duplication, Qᵀ Q = (D/d) I
    ("roformer-v2", {"num_heads": 6}, {}),  # non-multiple of the 4 heads
    ("roformer-v2", {"num_heads": 8}, {}),
    ("roformer-v2", {"head_size": 16}, {}),  # RoPE frequency-matched, k = 2
    ("roformer-v2", {"head_size": 24}, {}),  # k = 3
    ("roformer-v2", {"intermediate_size": 100}, {}),
    ("roformer-v2", {"hidden_size": 48, "num_heads": 6, "head_size": 16, "intermediate_size": 100}, {}),
    ("roformer-v2", {"hidden_size": 64, "num_heads": 8}, {"attention_normalization": "softmax_plus"}),
    ("roformer-v2", {"hidden_size": 64, "head_size": 16}, {"symmetry": "none"}),
    ("gau-alpha", {"hidden_size": 40}, {}),
    ("gau-alpha", {"hidden_size": 64}, {}),
    ("gau-alpha", {"expansion_size": 60}, {}),
    ("gau-alpha", {"expansion_size": 96}, {}),
    ("gau-alpha", {"key_size": 32}, {}),  # γ_q = 0 on new pairs, √k fix
    ("gau-alpha", {"key_size": 48}, {}),
    ("gau-alpha", {"hidden_size": 40, "expansion_size": 60, "key_size": 32}, {}),
    ("gau-alpha", {"hidden_size": 64, "key_size": 32}, {"softmax_plus_min_len": 16}),
    ("gau-alpha", {"hidden_size": 64, "expansion_size": 96}, {"attention_normalization": "relu2"}),
    ("gau-alpha", {"hidden_size": 40, "key_size": 32}, {"symmetry": "none"}),
    ("deepnet", {"hidden_size": 64}, {}),
    ("deepnet", {"hidden_size": 96}, {}),
    ("deepnet", {"num_heads": 6}, {}),
    ("deepnet", {"head_size": 16}, {}),
    ("deepnet", {"intermediate_size": 100}, {}),
    ("deepnet", {"hidden_size": 64, "num_heads": 8, "head_size": 16, "intermediate_size": 100}, {}),
    ("deepnet", {"hidden_size": 64, "num_heads": 6}, LEARNED_POSITIONS),
    ("deepnet", {"hidden_size": 64, "head_size": 12}, LEARNED_POSITIONS),  # no RoPE: any head size is exact
    ("deepnet", {"hidden_size": 64, "num_layers": 5}, {"residual": "pre"}),  # pre-norm: depth exact at any ε
    ("deepnet", {"hidden_size": 64, "intermediate_size": 96}, {"symmetry": "none"}),
]


def _case_id(case):
    family, sizes, extra = case
    return "-".join([family] + [f"{k}={v}" for k, v in {**sizes, **extra}.items()])


@pytest.mark.parametrize("family,sizes,extra", WIDTH_CASES, ids=[_case_id(c) for c in WIDTH_CASES])
def test_width_growth_is_exact_fp64(family, sizes, extra):
    extra = dict(extra)
    options = {k: extra.pop(k) for k in ("symmetry",) if k in extra}
    config = make_config(family, **extra)
    small = randomize(model_class(config, "masked-lm")(config).double()).eval()
    before = {k: v.clone() for k, v in small.state_dict().items()}
    big, plan = expand(small, return_plan=True, **sizes, **options)
    big.eval()
    assert plan.exact
    assert type(big) is type(small) and type(big.config) is type(small.config)
    big.config.validate()
    fresh = type(big)(big.config)  # the grown config describes the grown weights
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in big.state_dict().items()}
    assert_same_function(small, big, plan)
    # short and long sequences alone (no padding), RoPE positions up to 40
    for length in (3, 40):
        ids = torch.randint(1, 97, (1, length), generator=torch.Generator().manual_seed(length))
        assert max_diff(big(ids).logits, small(ids).logits) <= fp64_bound(small(ids).logits)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items()), "the input model was modified"


DEPTH_CASES = [
    ("roformer-v2", {"num_layers": 4}, "interleave"),
    ("roformer-v2", {"num_layers": 3}, "top"),
    ("roformer-v2", {"num_layers": 5}, "bottom"),
    ("roformer-v2", {"num_layers": 5, "hidden_size": 48, "num_heads": 6, "head_size": 16, "intermediate_size": 100},
     [0, 0, 1]),
    ("gau-alpha", {"num_layers": 6}, "interleave"),
    ("gau-alpha", {"num_layers": 5}, "top"),
    ("gau-alpha", {"num_layers": 4}, "bottom"),
    ("gau-alpha", {"num_layers": 7, "hidden_size": 40, "expansion_size": 60, "key_size": 32}, "interleave"),
    ("deepnet", {"num_layers": 6}, "interleave"),  # α (2·3)^¼ → (2·6)^¼
    ("deepnet", {"num_layers": 5}, "top"),
    ("deepnet", {"num_layers": 4}, "bottom"),
    ("deepnet", {"num_layers": 7, "hidden_size": 64, "num_heads": 8, "intermediate_size": 100}, [-1, 0, 2, 2]),
]


@pytest.mark.parametrize("family,sizes,where", DEPTH_CASES,
                         ids=[f"{f}-{w}-{'-'.join(map(str, s.values()))}" for f, s, w in DEPTH_CASES])
def test_depth_growth_is_exact_fp64_up_to_norm_eps(family, sizes, where):
    """Zero-output insertion (+ move-affine and the α rescale for DeepNet) is exact at ε → 0: with
    ε = 1e-14 the A.10 bound holds for the logits and every block; the ε effect itself is the next test."""
    small, big, plan = grow_case(family, sizes, where=where, layer_norm_eps=1e-14)
    assert big.config.num_hidden_layers == sizes["num_layers"]
    assert not plan.exact and any("re-normalises" in note for note in plan.notes)
    assert_same_function(small, big, plan)
    if family == "deepnet":
        assert big.config.alpha == pytest.approx((2 * sizes["num_layers"]) ** 0.25)


@pytest.mark.parametrize("family", ["roformer-v2", "gau-alpha", "deepnet"])
@pytest.mark.parametrize("where", ["interleave", "bottom"])
def test_depth_deviation_is_first_order_in_eps(family, where):
    """The only inexactness of depth growth is the norm's ε: an inserted post-norm block computes
    Norm(α·Norm(y)) ≠ Norm(y) by O(ε) (expansion.md A.5 assumes ε = 0). So Δ(ε) / Δ(ε/100) = 100."""
    deltas = []
    for eps in (1e-6, 1e-8):
        small, big, _ = grow_case(family, {"num_layers": 5}, where=where, layer_norm_eps=eps)
        ids, mask = batch(lengths=LENGTHS)
        deltas.append(max_diff(small(ids, attention_mask=mask).logits, big(ids, attention_mask=mask).logits))
    assert deltas[0] > 1e-12
    assert deltas[0] / deltas[1] == pytest.approx(100.0, rel=1e-3)


def test_deepnet_alpha_rescale_is_exact_with_layernorm_eps():
    """α′/α is carried by LayerNorm affines ÷ c and readers × c, exact at torchscale's ε = 1e-5: up to
    old block 0's output (before any inserted block re-normalises) the grown states match to fp64
    rounding. Scaling the writers by c instead (A.5) is exact only at ε = 0: LN(c·y) ≠ LN(y) for ε > 0."""
    small, big, plan = grow_case("deepnet", {"num_layers": 6})
    c = big.config.alpha / small.config.alpha
    assert c == pytest.approx((12 / 6) ** 0.25)
    ids, mask = batch(lengths=LENGTHS)
    a = small(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    b = big(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert plan.layer_map[-1] == -1 and plan.hidden_factor[-1] == pytest.approx(1 / c)
    assert max_diff(b[0], a[0] / c) <= 1e-12  # the embedding LayerNorm's affine ÷ c
    # old block 0 now ends in an identity norm (÷ c) whose affine moved to the inserted block above it:
    # its output is the standardised state ẑ = (h − β)/γ of the small block 0, over c
    norm = small.encoder.layers[0].ffn_norm
    standardised = (a[1] - norm.bias) / norm.weight
    assert max_diff(b[1], plan.expand_hidden(standardised, 0)) <= 1e-12
    kept, kept_plan = expand(small, num_layers=6, alpha="keep", return_plan=True)
    assert kept.config.alpha == small.config.alpha and kept_plan.hidden_factor[0] == 1.0


def test_fp32_growth_within_a10_tolerance():
    """fp32 (A.10.4): combined width + depth growth per family at the default ε."""
    cases = {
        "roformer-v2": {"hidden_size": 48, "num_heads": 6, "head_size": 16, "intermediate_size": 100, "num_layers": 4},
        "gau-alpha": {"hidden_size": 64, "expansion_size": 96, "key_size": 32, "num_layers": 6},
        "deepnet": {"hidden_size": 64, "num_heads": 8, "intermediate_size": 128, "num_layers": 6},
    }
    ids, mask = batch(lengths=LENGTHS)
    masked = mask.bool() & (torch.rand(ids.shape, generator=torch.Generator().manual_seed(4)) < 0.3)
    labels = torch.where(masked, ids, -100)
    for family, sizes in cases.items():
        config = make_config(family)
        small64 = randomize(model_class(config, "masked-lm")(config).double()).eval()
        small32 = randomize(model_class(config, "masked-lm")(config)).eval()
        big32 = expand(small32, **sizes).eval()
        ref = small64(ids, attention_mask=mask, labels=labels)
        out_small = small32(ids, attention_mask=mask, labels=labels)
        out_big = big32(ids, attention_mask=mask, labels=labels)
        own_error = max_diff(out_small.logits.double(), ref.logits)
        bound = max(3 * own_error, 1e-5 * ref.logits.abs().max().item())
        assert max_diff(out_big.logits, out_small.logits) <= bound, family
        assert torch.equal(out_big.logits.argmax(-1)[masked], out_small.logits.argmax(-1)[masked])
        assert abs(out_big.loss.item() - out_small.loss.item()) <= 1e-5


@pytest.mark.parametrize("family", ["roformer-v2", "gau-alpha", "deepnet"])
@pytest.mark.parametrize("task", [t for t in TASKS if t != "masked-lm"])
def test_every_head_reads_the_grown_state(family, task):
    """Classifier, QA, multiple-choice and GlobalPointer heads read h̃ = Q·h through W·Q⁺; the bare
    encoder returns Q·h. GlobalPointer computes its scores in fp32 (zoo/heads.py), so it is held to
    fp32 rounding (4 ulp) instead of the fp64 bound."""
    small, big, plan = grow_case(family, {"hidden_size": 64, "num_layers": 4}, task=task, num_labels=3,
                                 global_pointer_head_size=8, layer_norm_eps=1e-14)
    ids, mask = probe_batch(97)
    if task == "multiple-choice":
        ids, mask = ids[:, None].expand(-1, 3, -1), mask[:, None].expand(-1, 3, -1)
    a = small(input_ids=ids, attention_mask=mask)
    b = big(input_ids=ids, attention_mask=mask)
    keys = [k for k in ("logits", "start_logits", "end_logits", "last_hidden_state") if k in a]
    assert keys
    for key in keys:
        expected, got = a[key], b[key]
        if key == "last_hidden_state":
            expected = plan.expand_hidden(expected, small.config.num_hidden_layers - 1)
        finite = expected.abs() < 1e11  # masked spans and padded QA positions are equal sentinels
        assert torch.equal(got[~finite], expected[~finite])
        scale = max(1.0, expected[finite].abs().max().item())
        rel = 4 * torch.finfo(torch.float32).eps if task == "global-pointer" else 1e-8
        assert max_diff(got[finite], expected[finite]) <= rel * scale, key


@pytest.mark.parametrize("family, task", [("roformer-v2", "sequence-classification"), ("deepnet", "masked-lm"),
                                          ("gau-alpha", "global-pointer")])
def test_growth_keeps_every_tensor_on_the_models_device(family, task):
    """Growing a model on a GPU: every value and mask the rules make is on the small tensor's device, also
    for the rules without an axis (a head's bias, which moves no mask), and so are mapped gradients. The
    meta device stands in for the GPU (the masks used to be the CPU's, and the torch.where that grows a
    parameter or an optimizer moment failed across the two devices)."""
    small, _, plan = grow_case(family, {"hidden_size": 64, "num_layers": 4}, task=task, num_labels=3,
                               global_pointer_head_size=8)
    params = {name: p.detach().to("meta") for name, p in small.named_parameters()}
    axisless = 0
    for name, rule in plan.rules.items():
        if rule.kind == "map":
            axisless += all(axis is None for axis in rule.axes)
            assert {t.device.type for t in rule.gather(params[rule.source])} == {"meta"}, name
    assert axisless  # the case the fix is about
    for what in ("grad", "second"):  # gradients, and the masks optimizer moments are mapped with
        mapped = plan.map_tensors(params, what)
        assert {t.device.type for pair in mapped.values() for t in pair} == {"meta"}


@pytest.mark.parametrize("family", ["roformer-v2", "gau-alpha", "deepnet"])
def test_tied_and_untied_decoders(family):
    small, big, plan = grow_case(family, {"hidden_size": 64})
    decoder, embedding = big.lm_head.decoder.weight, big.encoder.embeddings.word_embeddings.weight
    assert decoder.data_ptr() == embedding.data_ptr()
    if family != "deepnet":  # tied, no transform: the embeddings carry d/D, their norm ε·(d/D)² (A.1)
        assert plan.embedding_factor == 0.5
        assert big.config.embedding_norm_eps == pytest.approx(small.config.layer_norm_eps / 4)
    else:  # transform head: the embeddings stay Q·e, the head's LayerNorm affine carries d/D
        assert plan.embedding_factor == 1.0 and big.config.embedding_norm_eps is None
    untied_small, untied, untied_plan = grow_case(family, {"hidden_size": 64}, tie_word_embeddings=False)
    assert untied.lm_head.decoder.weight.data_ptr() != untied.encoder.embeddings.word_embeddings.weight.data_ptr()
    assert_same_function(untied_small, untied, untied_plan)


def test_rms_norm_eps_cancels_for_width_but_not_for_scaled_embeddings():
    """With Qᵀ Q = (D/d)·I the mean square of the stream is preserved, so the RMS ε cancels even when
    large (1e-2). The tied embeddings are scaled by d/D, so the embedding norm needs ε·(d/D)²: with the
    original ε the grown model is off by O(ε)."""
    for family in ("roformer-v2", "gau-alpha"):
        small, big, plan = grow_case(family, {"hidden_size": 48}, layer_norm_eps=1e-2)
        assert_same_function(small, big, plan)
        ids, mask = batch(lengths=LENGTHS)
        wrong_config = type(big.config).from_dict({**big.config.to_dict(), "embedding_norm_eps": None})
        wrong = type(big)(wrong_config).double().eval()
        wrong.load_state_dict(big.state_dict())
        expected = small(ids, attention_mask=mask).logits
        assert max_diff(wrong(ids, attention_mask=mask).logits, expected) > 1e3 * fp64_bound(expected)


@pytest.mark.parametrize("family", ["roformer-v2", "gau-alpha", "deepnet"])
def test_growing_twice_composes(family):
    """A grown model grows again exactly; the embedding norm's ε compounds to ε·(d/D′)²."""
    first, second = (64, 128) if family == "deepnet" else (48, 80)
    small, middle, _ = grow_case(family, {"hidden_size": first, "num_layers": 4}, layer_norm_eps=1e-14)
    big = expand(middle, hidden_size=second, num_layers=5).eval()
    ids, mask = batch(lengths=LENGTHS)
    expected = small(ids, attention_mask=mask).logits
    assert max_diff(big(ids, attention_mask=mask).logits, expected) <= fp64_bound(expected)
    if family != "deepnet":
        assert big.config.embedding_norm_eps == pytest.approx(1e-14 * (32 / second) ** 2)


def test_grown_model_saves_and_reloads(tmp_path):
    small, big, _ = grow_case("gau-alpha", {"hidden_size": 48, "key_size": 32, "num_layers": 4}, dtype=torch.float32)
    big.save_pretrained(tmp_path / "grown")
    loaded = zoo.from_pretrained(tmp_path / "grown").eval()
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "attention_key_size", "embedding_norm_eps"):
        assert getattr(loaded.config, key) == getattr(big.config, key), key
    assert loaded.config.embedding_norm_eps == pytest.approx(small.config.layer_norm_eps * (32 / 48) ** 2)
    ids, mask = batch(lengths=LENGTHS)
    expected = big(ids, attention_mask=mask).logits
    assert max_diff(loaded(ids, attention_mask=mask).logits, expected) <= 1e-6 * expected.abs().max().item()


# ----------------------------------------------------------------------------------- symmetry


def test_split_shares_differ_but_stay_exact():
    config = make_config("roformer-v2")
    small = randomize(model_class(config, "masked-lm")(config).double()).eval()
    split = expand(small, hidden_size=64, intermediate_size=128, symmetry="split").eval()
    equal = expand(small, hidden_size=64, intermediate_size=128, symmetry="none").eval()
    fc2_split, fc2_equal = split.encoder.layers[0].ffn.fc2.weight, equal.encoder.layers[0].ffn.fc2.weight
    # copies j and j + 64 of FFN unit j: equal halves with "none", unequal shares with "split"
    assert torch.allclose(fc2_equal[:, :64], fc2_equal[:, 64:], rtol=0, atol=1e-15)
    assert (fc2_split[:, :64] - fc2_split[:, 64:]).abs().max() > 1e-2
    assert torch.allclose(fc2_split[:, :64] + fc2_split[:, 64:], fc2_equal[:, :64] + fc2_equal[:, 64:], atol=1e-14)
    ids, mask = batch(lengths=LENGTHS)
    expected = small(ids, attention_mask=mask).logits
    for model in (split, equal):
        assert max_diff(model(ids, attention_mask=mask).logits, expected) <= fp64_bound(expected)


def test_noise_reports_its_measured_change():
    config = make_config("roformer-v2")
    small = randomize(model_class(config, "masked-lm")(config).double()).eval()
    changes = []
    for noise_std in (1e-3, 1e-2):
        big, plan = expand(small, hidden_size=64, num_heads=8, symmetry="noise", noise_std=noise_std, return_plan=True)
        assert not plan.exact
        ids, mask = probe_batch(97)
        measured = max_diff(big.eval()(ids, attention_mask=mask).logits, small(ids, attention_mask=mask).logits)
        assert plan.probe_max_abs_change == pytest.approx(measured, rel=1e-9)
        assert any(f"{measured:.3e}" in note for note in plan.notes)
        changes.append(measured)
    assert changes[0] > 1e-6
    assert 5 < changes[1] / changes[0] < 20  # the change is proportional to the noise (A.8)


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("family,sizes,message", [
    ("deepnet", {"hidden_size": 48}, "hidden_size=48 cannot be grown exactly from 32 .* multiple of 32: use 64, 96"),
    ("roformer-v2", {"head_size": 12},
     r"head_size=12 cannot keep RoPE exact.* multiple of 8 .*use 16, 24, 32, or keep head_size=8 and grow num_heads"),
    ("gau-alpha", {"key_size": 24}, r"key_size=24 cannot keep RoPE exact.* multiple of 16 .*use 32, 48, 64"),
    ("roformer-v2", {"num_layers": 1}, r"num_layers=1 would shrink the model \(it has 2\)"),
    ("deepnet", {"intermediate_size": 32}, r"intermediate_size=32 would shrink the model \(it has 64\)"),
    ("gau-alpha", {"num_heads": 2}, "num_heads does not apply to GAU-α"),
    ("gau-alpha", {"head_size": 32}, "head_size does not apply to GAU-α"),
    ("roformer-v2", {"key_size": 32}, "key_size applies to GAU-α only; for multi-head attention grow head_size"),
    ("roformer-v2", {"expansion_size": 96}, "expansion_size applies to GAU-α only"),
    ("gau-alpha", {"expansion_size": 64, "intermediate_size": 96}, "name the same GAU width"),
    ("roformer-v2", {}, "nothing to grow: pass at least one of hidden_size, num_layers"),
    ("roformer-v2", {"num_layers": 4, "where": [0]}, r"a list needs one entry per new layer \(2\)"),
    ("roformer-v2", {"num_layers": 3, "where": "middle"}, "where='middle' is not one of"),
    ("roformer-v2", {"hidden_size": 64, "symmetry": "random"}, "symmetry='random' is not one of"),
    ("roformer-v2", {"hidden_size": 64.0}, "hidden_size must be an int"),
])
def test_inexact_or_invalid_requests_fail_clearly(family, sizes, message):
    config = make_config(family)
    small = randomize(model_class(config, "masked-lm")(config).double())
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        expand(small, **sizes)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())


def test_transform_head_needs_uniform_width_and_bottom_needs_a_normalised_input():
    config = make_config("roformer-v2", mlm_head="transform")
    small = randomize(model_class(config, "masked-lm")(config).double())
    with pytest.raises(ValueError, match="transform head's LayerNorm .* multiple of 32"):
        expand(small, hidden_size=48)
    config = make_config("deepnet", embedding_norm=False)
    small = randomize(model_class(config, "masked-lm")(config).double())
    with pytest.raises(ValueError, match="inserted below layer 0 .* where='interleave' or 'top'"):
        expand(small, num_layers=4, where="bottom")


def test_an_approximation_beyond_max_change_is_refused():
    """DeepNet's bottom insertion re-standardises the embedding LayerNorm's output, an O(ε/var) change:
    allowed within max_change, refused (naming the alternatives) beyond it."""
    config = make_config("deepnet", layer_norm_eps=1e-3)
    small = randomize(model_class(config, "masked-lm")(config).double())
    refused = r"differs from the original .* where='interleave' or 'top', or pass max_change=None"
    with pytest.raises(ValueError, match=refused):
        expand(small, num_layers=4, where="bottom")
    big, plan = expand(small, num_layers=4, where="bottom", max_change=None, return_plan=True)
    assert plan.probe_max_abs_change > 1e-4


def test_the_probe_measures_in_the_models_precision_whatever_the_caller_set():
    """The probe's bound is fp32's, so it runs in fp32 whatever the caller set: inside a bf16 autocast
    region the outputs of the same model differ by bf16's rounding (0.16 here) and a lossless growth was
    refused; with TF32 on (`set_float32_matmul_precision("high")`, as many GPU users set), CUDA rounds
    the products' inputs to 10 mantissa bits. Inside the probe the products are IEEE fp32 and autocast is
    off; afterwards the caller's settings are as they were."""
    config = make_config("roformer-v2")
    small = randomize(model_class(config, "masked-lm")(config)).eval()
    sizes = {"hidden_size": 48, "num_heads": 6, "head_size": 16, "intermediate_size": 100, "num_layers": 4}
    _, plain = expand(small, **sizes, return_plan=True)
    seen = []
    small.register_forward_pre_hook(lambda module, args: seen.append(
        (torch.is_autocast_enabled("cpu"), torch.backends.cuda.matmul.fp32_precision,
         torch.backends.mkldnn.matmul.fp32_precision)))
    torch.set_float32_matmul_precision("high")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, plan = expand(small, **sizes, return_plan=True)
            assert torch.is_autocast_enabled("cpu")
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert seen == [(False, "ieee", "ieee")]
    assert plan.probe_max_abs_change == plain.probe_max_abs_change < 1e-5


def test_growth_is_the_same_whatever_default_device_or_inference_mode_the_caller_set():
    """Growth makes its maps, masks and draws (from CPU generators) without naming a device, so under a
    caller's `torch.set_default_device("cuda")` / `with torch.device("cuda"):` they went to the GPU, where a
    draw from a CPU generator fails; inside `torch.inference_mode()` the grown parameters and optimizer
    state were inference tensors, which training refuses. The meta device stands in for CUDA here: a
    tensor made there has no values, so it catches every factory call that follows the default device.
    The same model and optimizer state come out, and they train."""
    small = _no_dropout_model("gau-alpha")
    optimizer = torch.optim.Adam(small.parameters(), lr=1e-3)
    _step(small, optimizer, 0)
    sizes = {"num_layers": 4, "hidden_size": 40, "expansion_size": 60}
    reference, plan = expand(small, **sizes, return_plan=True)
    for context in (torch.device("meta"), torch.inference_mode()):
        with context:
            big = expand(small, **sizes)
            grown = expand_optimizer(optimizer, small, big, plan)
        for (name, p), q in zip(big.named_parameters(), reference.parameters()):
            assert p.device.type == "cpu" and not p.is_inference() and torch.equal(p, q), name
        assert not any(t.is_inference() for state in grown.state.values() for t in state.values())
        _step(big, grown, 1)
    noisy = {**sizes, "symmetry": "noise"}
    with torch.device("meta"):
        assert torch.equal(next(iter(expand(small, **noisy).parameters())), next(iter(expand(small, **noisy).parameters())))


def test_growth_leaves_every_gpus_random_state_alone(monkeypatch):
    """The grown model's fresh entries come from a seeded init on the CPU; `torch.manual_seed` there
    also seeded every GPU's generator and left it so (`fork_rng(devices=[])` puts back the CPU's only),
    so after a growth two runs with different seeds drew the same dropout masks on their GPUs. Only
    the CPU generator is seeded now, and it is put back."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(seed))
    small = _no_dropout_model("roformer-v2")
    state = torch.get_rng_state()
    first = expand(small, num_layers=4, seed=3)
    assert seeded == [] and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), expand(small, num_layers=4, seed=3).parameters()))


# --------------------------------------------------------------------------- optimizer state


def _train_batch(seed):
    ids, mask = batch(lengths=(24, 12, 7), seed=seed)
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed + 100)) < 0.3
    return ids, mask, torch.where(chosen & mask.bool(), ids, -100)


def _step(model, optimizer, seed):
    ids, mask, labels = _train_batch(seed)
    optimizer.zero_grad()
    loss = model(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    return loss.item()


def _no_dropout_model(family, task="masked-lm"):
    config = make_config(family, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return randomize(model_class(config, task)(config).double()).train()


GRADIENT_CASES = [
    ("roformer-v2", {"hidden_size": 48, "num_heads": 6, "intermediate_size": 100}),
    ("roformer-v2", {"head_size": 16, "hidden_size": 64}),
    ("gau-alpha", {"hidden_size": 40, "expansion_size": 60, "key_size": 32}),
    ("deepnet", {"hidden_size": 64, "num_heads": 6, "head_size": 16, "intermediate_size": 100}),
]


@pytest.mark.parametrize("family,sizes", GRADIENT_CASES, ids=[_case_id((f, s, {})) for f, s in GRADIENT_CASES])
def test_gradients_map_onto_the_grown_model(family, sizes):
    """With equal shares and no dropout, ∂L/∂W̃ is the mapped small gradient (readers G·Qᵀ, writers
    Q⁺ᵀ·G, ...; A.10.7) on every entry that has a source."""
    small = _no_dropout_model(family)
    big, plan = expand(small, symmetry="none", return_plan=True, **sizes)
    ids, mask, labels = _train_batch(7)
    grads = {}
    for model in (small, big):
        model.zero_grad()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads[model] = {n: p.grad.clone() for n, p in model.named_parameters()}
    mapped = plan.map_tensors(grads[small], "grad")
    assert set(mapped) == set(grads[big])  # width growth: every grown tensor is a map
    scale = max(g.abs().max().item() for g in grads[small].values())
    for name, (expected, where) in mapped.items():
        assert max_diff(grads[big][name][where], expected[where]) <= 1e-10 * scale, name


# duplication only: new entries (head or key size) have no source and move the function once trained
STEP_CASES = [
    ("roformer-v2", {"hidden_size": 48, "num_heads": 6, "intermediate_size": 100}),
    ("gau-alpha", {"hidden_size": 40, "expansion_size": 60}),
    ("deepnet", {"hidden_size": 64, "num_heads": 6, "intermediate_size": 100}),
]


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3, eps=1e-30),
    # decoupled weight decay shrinks every entry in proportion to itself, which commutes with the growth:
    # the stepped model is still the image of a small model
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, eps=1e-30, weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("family,sizes", STEP_CASES, ids=[_case_id((f, s, {})) for f, s in STEP_CASES])
def test_first_adam_step_after_growth_keeps_the_model_equivalent(family, sizes, optimizer_name):
    """Train the small model, grow it and its Adam state, take one step on each: every grown entry
    moves by exactly its source's step (Adam is invariant to the mapped per-entry gradient scale; its
    ε is set far below √v so that this holds to rounding), and the grown model is still an exact image
    of a small model: its pull-back, grown again, gives it back, and computes the same function."""
    small = _no_dropout_model(family)
    optimizer = OPTIMIZERS[optimizer_name](small.parameters())
    for seed in range(3):
        _step(small, optimizer, seed)
    big, plan = expand(small, symmetry="none", return_plan=True, **sizes)
    big.train()
    grown = expand_optimizer(optimizer, small, big, plan)
    assert type(grown) is type(optimizer) and grown.defaults["eps"] == 1e-30
    before_small = {n: p.detach().clone() for n, p in small.named_parameters()}
    before_big = {n: p.detach().clone() for n, p in big.named_parameters()}
    _step(small, optimizer, 10)
    _step(big, grown, 10)
    small_steps = {n: p.detach() - before_small[n] for n, p in small.named_parameters()}
    if optimizer_name == "adam":  # AdamW's decay part is proportional to the (grown) value instead
        for name, (expected, where) in plan.map_tensors(small_steps, "step").items():
            moved = dict(big.named_parameters())[name].detach() - before_big[name]
            assert max_diff(moved[where], expected[where]) <= 1e-12, name
    # still the image of a small model
    pulled = plan.pullback(dict(big.named_parameters()))
    shadow = type(small)(small.config).double().eval()
    assert set(pulled) == {n for n, _ in shadow.named_parameters()}
    with torch.no_grad():
        for name, param in shadow.named_parameters():
            param.copy_(pulled[name])
    regrown = expand(shadow, symmetry="none", **sizes)
    for name, param in big.named_parameters():
        assert max_diff(dict(regrown.named_parameters())[name], param) <= 1e-13, name
    big.eval()
    ids, mask = batch(lengths=LENGTHS)
    expected = shadow(ids, attention_mask=mask).logits
    assert max_diff(big(ids, attention_mask=mask).logits, expected) <= fp64_bound(expected)


@pytest.mark.parametrize("family", ["roformer-v2", "gau-alpha"])
def test_unequal_splits_break_symmetry_over_a_few_steps(family):
    """Incoming weights of duplicated FFN / GAU units: clones forever with equal shares; with unequal
    shares they move apart, and further at every step (A.8). Adam's first step is blind to the shares
    (its update ignores a per-entry gradient scale); from then on the identical additive updates of
    the outgoing weights make the incoming gradients differ."""
    sizes = {"intermediate_size": 128} if family == "roformer-v2" else {"expansion_size": 96}
    half = 64 if family == "roformer-v2" else 48
    divergence = {}
    for symmetry in ("none", "split"):
        small = _no_dropout_model(family)
        big = expand(small, symmetry=symmetry, **sizes).train()
        optimizer = torch.optim.Adam(big.parameters(), lr=1e-3)
        divergence[symmetry] = []
        for seed in range(8):
            _step(big, optimizer, seed)
            layer = big.encoder.layers[0]
            rows = layer.ffn.fc1.weight if family == "roformer-v2" else layer.gau.i_dense.weight[: 2 * half]
            first, second = rows.detach()[:half], rows.detach()[half : 2 * half]
            divergence[symmetry].append(((first - second).norm(dim=1) / first.norm(dim=1)).max().item())
    assert max(divergence["none"]) <= 1e-12
    split = divergence["split"]
    assert split[-1] >= 1e-4 and split[-1] > split[3] > split[1] > split[0]


def test_unequal_splits_break_symmetry_of_the_residual_copies():
    """Hidden growth duplicates residual coordinates: the embedding columns j and j + d start equal
    (the embedding must stay a pure Q-image) and stay equal under equal shares. With unequal reader
    shares the copies' gradients differ from the second step on, so the copies drift apart."""
    divergence = {}
    for symmetry in ("none", "split"):
        small = _no_dropout_model("roformer-v2")
        big = expand(small, hidden_size=64, symmetry=symmetry).train()
        embedding = big.encoder.embeddings.word_embeddings.weight
        assert torch.equal(embedding[:, :32], embedding[:, 32:])
        optimizer = torch.optim.Adam(big.parameters(), lr=1e-3)
        divergence[symmetry] = []
        for seed in range(6):
            _step(big, optimizer, seed)
            first, second = embedding.detach()[:, :32], embedding.detach()[:, 32:]
            divergence[symmetry].append(((first - second).norm() / first.norm()).item())
    assert max(divergence["none"]) <= 1e-12
    split = divergence["split"]
    assert split[-1] >= 1e-4 and split[-1] > split[2] > split[1]


def test_optimizer_state_for_depth_and_reset():
    """Inserted blocks and new entries get no first moment and the mean mapped second moment (no
    ≈3·lr spike from a zero second moment at a large step count); mode="reset" zeroes what changed."""
    small = _no_dropout_model("deepnet")
    optimizer = torch.optim.Adam(small.parameters(), lr=1e-3)
    for seed in range(2):
        _step(small, optimizer, seed)
    big, plan = expand(small, num_layers=6, head_size=16, return_plan=True)
    state = {n: optimizer.state[p] for n, p in small.named_parameters()}
    mapped = plan.map_optimizer_state(state)
    assert set(mapped) == {n for n, _ in big.named_parameters()}
    new_block = mapped["encoder.layers.1.self_attn.v_proj.weight"]  # the copy inserted after layer 0
    assert torch.count_nonzero(new_block["exp_avg"]) == 0
    assert float(new_block["step"]) == float(state["encoder.layers.0.self_attn.v_proj.weight"]["step"])
    zeroed_writer = mapped["encoder.layers.1.ffn.fc2.weight"]["exp_avg_sq"]
    assert torch.all(zeroed_writer == zeroed_writer.flatten()[0]) and zeroed_writer.flatten()[0] > 0
    q = mapped["encoder.layers.0.self_attn.q_proj.weight"]
    new_rows = plan.rules["encoder.layers.0.self_attn.q_proj.weight"].axes[0][0].source < 0
    assert torch.count_nonzero(q["exp_avg"][new_rows]) == 0 and torch.all(q["exp_avg_sq"][new_rows] > 0)
    reset = plan.map_optimizer_state(state, mode="reset")
    assert float(reset["encoder.layers.0.self_attn.q_proj.weight"]["step"]) == 0
    assert torch.count_nonzero(reset["encoder.layers.0.ffn.fc1.weight"]["exp_avg_sq"]) == 0
    unchanged = reset["lm_head.decoder.bias"]  # vocabulary-sized: the growth leaves it as it is
    assert torch.equal(unchanged["exp_avg"], state["lm_head.decoder.bias"]["exp_avg"])
    with pytest.raises(ValueError, match="mode='keep' is not one of"):
        plan.map_optimizer_state(state, mode="keep")
    with pytest.raises(ValueError, match="'momentum_sq' of parameter .* growth maps only"):
        plan.map_optimizer_state({"lm_head.decoder.bias": {"momentum_sq": torch.zeros(97)}})


def test_expand_optimizer_with_lamb_keeps_groups():
    from pretrain.optim import Lamb

    small = _no_dropout_model("roformer-v2")
    decay = [p for n, p in small.named_parameters() if "embeddings" not in n]
    rest = [p for n, p in small.named_parameters() if "embeddings" in n]
    optimizer = Lamb([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-3)
    _step(small, optimizer, 0)
    big, plan = expand(small, hidden_size=64, num_layers=4, return_plan=True)
    grown = expand_optimizer(optimizer, small, big.train(), plan)
    assert [g["weight_decay"] for g in grown.param_groups] == [0.01, 0.0]
    assert sum(len(g["params"]) for g in grown.param_groups) == len(list(big.parameters()))
    assert len(grown.param_groups[1]["params"]) == 2  # word and segment embeddings
    loss = _step(big, grown, 1)
    assert math.isfinite(loss)


# ---------------------------------------------------------------------------------------- CLI


def _saved_small(tmp_path, family="roformer-v2"):
    config = make_config(family)
    small = randomize(model_class(config, "masked-lm")(config)).eval()
    folder = tmp_path / "small"
    small.save_pretrained(folder)
    return small, folder


def test_cli_expand_writes_a_grown_model(tmp_path, registry, capsys):
    small, folder = _saved_small(tmp_path)
    out = tmp_path / "grown"
    code = main(["expand", str(folder), "--hidden-size", "64", "--num-heads", "8", "--num-layers", "3",
                 "--symmetry", "none", "--out", str(out), "--publish", "grown-mini@0.1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "published grown-mini@0.1" in printed and "hidden 32 → 64" in printed
    record = json.loads((out / "growth.json").read_text())
    assert record["to"]["hidden_size"] == 64 and record["to"]["num_hidden_layers"] == 3
    assert record["options"]["symmetry"] == "none"
    ids, mask = batch(lengths=LENGTHS)
    expected = small(ids, attention_mask=mask).logits
    for ref in (out, "grown-mini@0.1"):
        loaded = zoo.from_pretrained(ref).eval()
        assert loaded.config.hidden_size == 64
        got = loaded(ids, attention_mask=mask).logits
        assert max_diff(got, expected) <= 1e-5 * expected.abs().max().item()  # fp32 and O(ε) from depth


def test_cli_expand_refuses_bad_requests_without_writing(tmp_path, registry, capsys):
    _, folder = _saved_small(tmp_path, "deepnet")
    out = tmp_path / "grown"
    assert main(["expand", str(folder), "--hidden-size", "48", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "hidden_size=48" in err and "use 64, 96, 128" in err
    assert not out.exists() and not any(p.name.startswith(".grown") for p in tmp_path.iterdir())
    assert main(["expand", str(folder), "--hidden-size", "64"]) == 1
    assert "give --out DIR and/or --publish" in capsys.readouterr().err
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["expand", str(folder), "--hidden-size", "64", "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["expand", str(folder), "--num-layers", "4", "--where", "0,x", "--out", str(tmp_path / "w")]) == 1
    assert "--where expects" in capsys.readouterr().err
