"""zoo/weight_decay.py: which parameters decay, the one rule of pretraining and fine-tuning (the bert4keras
recipes' exclude_from_weight_decay=['Norm', 'bias'], architectures.md §1.6, §2.6)."""

import pytest
from torch import nn

import zoo
from pretrain.optim import parameter_groups
from zoo.families import TASKS
from zoo.weight_decay import weight_decay_groups

FAMILY_CASES = {
    "roformer-v2": ("roformer-v2-mini", {}),
    "gau-alpha": ("gau-alpha-mini", {}),
    "gau-alpha+bias": ("gau-alpha-mini", {"use_bias": True}),  # ScaleOffset with an offset β
    "deepnet": ("deepnet-mini", {}),
    "deepnet+pre": ("deepnet-mini", {"residual": "pre"}),  # a final LayerNorm
}


def _names(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in groups]


def _model(case, task):
    preset, overrides = FAMILY_CASES[case]
    labels = {"num_labels": 3} if task in ("sequence-classification", "token-classification", "global-pointer") else {}
    return zoo.create(preset, task=task, **overrides, **labels)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_norms_and_biases_do_not_decay_everything_else_does(case, task):
    model = _model(case, task)
    groups = weight_decay_groups(model, 0.01)
    decay, no_decay = (_names(model, groups) + [[]])[:2]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0][: len(groups)]
    assert sorted(decay + no_decay) == sorted(n for n, _ in model.named_parameters())  # each once
    modules = dict(model.named_modules())
    for name in no_decay:
        owner, _, leaf = name.rpartition(".")
        assert leaf == "bias" or isinstance(modules[owner], nn.LayerNorm), name
    for name in decay:
        assert not name.endswith(".bias") and "norm." not in name and ".transform.2." not in name, name
        assert "scaleoffset" in name or name.endswith(("embeddings.weight", "weight")), name
    if case.startswith("gau-alpha"):  # the q/k scales decay, as in the published GAU-α recipe
        assert any(n.endswith("layers.0.gau.q_scaleoffset.weight") for n in decay)
        assert any(n.endswith("gau.k_scaleoffset.weight") for n in decay)
    if case == "gau-alpha+bias":
        assert any(n.endswith("gau.q_scaleoffset.bias") for n in no_decay)
    if case.startswith("deepnet"):
        assert any(n.endswith("layers.0.self_attn_norm.weight") for n in no_decay)
        assert any(n.endswith("embeddings.norm.bias") for n in no_decay)
        if task == "masked-lm":
            assert "lm_head.transform.2.weight" in no_decay  # the head's LayerNorm, whatever its name
    assert any(n.endswith("word_embeddings.weight") for n in decay)  # embeddings decay (§1.3)


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_pretraining_groups_are_the_rule_plus_no_layer_adaptation(case):
    model = _model(case, "masked-lm")
    pretraining = parameter_groups(model, 0.01)
    rule = weight_decay_groups(model, 0.01)
    assert _names(model, pretraining) == _names(model, rule)
    assert [g["weight_decay"] for g in pretraining] == [g["weight_decay"] for g in rule]
    assert "adapt" not in pretraining[0] and all(g["adapt"] is False for g in pretraining[1:])
