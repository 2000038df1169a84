"""zoo/initialization.py: every dense layer declares its initialisation role where it is built."""

import pytest
from torch import nn

import zoo
from zoo.errors import ConfigError
from zoo.families import TASKS
from zoo.initialization import dense, init_dense

VALUE_SIDE = ("v_proj", "out_proj", "fc1", "fc2", "i_dense", "o_dense")


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("preset", ["roformer-v2-mini", "gau-alpha-mini", "deepnet-mini"])
def test_every_dense_layer_has_the_role_of_its_place(preset, task):
    model = zoo.create(preset, task=task, num_labels=3)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linears
    for name, linear in linears.items():
        leaf = name.rsplit(".", 1)[-1]
        expected = "qk" if leaf in ("q_proj", "k_proj") else "value" if leaf in VALUE_SIDE else "head"
        assert linear.init_role == expected, name


def test_an_undeclared_linear_is_refused_not_initialised_as_a_head():
    model = zoo.create("deepnet-mini")
    model.encoder.layers[0].self_attn.extra = nn.Linear(8, 8)
    with pytest.raises(ConfigError, match="no initialisation role.*zoo.initialization.dense"):
        model.init_weights()
    with pytest.raises(ConfigError, match="role 'output' is not one of"):
        dense(8, 8, role="output")


def test_deepnorm_beta_goes_to_the_value_side_only():
    config = zoo.preset_config("deepnet-mini", initializer="deepnorm_torchscale")
    bounds = {}
    for role in ("qk", "value", "head"):
        linear = dense(256, 256, role=role)
        init_dense(linear, config)
        bounds[role] = float(linear.weight.detach().abs().max())
    assert bounds["qk"] == pytest.approx(256**-0.5, rel=0.02) and bounds["head"] == pytest.approx(256**-0.5, rel=0.02)
    assert bounds["value"] == pytest.approx(config.beta * 256**-0.5, rel=0.02)
