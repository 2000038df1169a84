"""Initialisation of every zoo model (architectures.md §1.4, §2.5, §3.2).

Schemes (`config.initializer`): "bert4keras" (truncated normal, std = 1.13684723/√fan · L^(−1/order)),
"deepnorm_paper" (xavier_normal with gain β on the value side), "deepnorm_torchscale" (PyTorch's
default Linear init times β on the value side), anything else N(0, initializer_range).

Each dense layer declares its role where it is built, with `dense(..., role=...)`:

    "qk"     the query/key side (MHA q_proj, k_proj): DeepNorm's β does not apply (§3.2)
    "value"  the value side of a block (v_proj, out_proj, fc1, fc2; GAU's i_dense, o_dense): × β
    "head"   task heads (MLM transform and decoder, classifiers, QA, GlobalPointer): no β

A Linear without a declared role is refused when the model initialises it, so a new projection
cannot silently take the head's initialisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from .errors import ConfigError

ROLES = ("qk", "value", "head")
BERT4KERAS_TRUNCATION_GAIN = 1.13684723  # 1/0.87963: std lost to truncation at ±2σ (§1.4)


def dense(in_features: int, out_features: int, *, bias: bool = True, role: str) -> nn.Linear:
    """An nn.Linear whose initialisation role (`ROLES`) is declared at construction."""
    if role not in ROLES:
        raise ConfigError(f"initialisation role {role!r} is not one of {list(ROLES)}")
    linear = nn.Linear(in_features, out_features, bias=bias)
    linear.init_role = role
    return linear


def init_role(linear: nn.Linear) -> str:
    """The declared role of `linear`; a clear error for one built without `dense(..., role=...)`."""
    role = getattr(linear, "init_role", None)
    if role not in ROLES:
        raise ConfigError(
            f"{linear!r} has no initialisation role: build the layers of a zoo model with "
            f"zoo.initialization.dense(..., role=one of {list(ROLES)})"
        )
    return role


def keras_fan(rows: int, cols: int) -> int:
    """bert4keras's fan: shape[0] of the Keras kernel [in, out] / embedding [V, E], unless that is
    > 10000 or < 10, then shape[1] (so a vocabulary ≤ 10000 uses fan = V, §1.4)."""
    return cols if rows > 10000 or rows < 10 else rows


def bert4keras_init(weight: torch.Tensor, config, fan: int) -> None:
    std = BERT4KERAS_TRUNCATION_GAIN / math.sqrt(fan) * config.num_hidden_layers ** (-1.0 / config.initializer_order)
    init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def init_dense(linear: nn.Linear, config) -> None:
    """A dense layer by `config.initializer` and the layer's declared role."""
    role = init_role(linear)
    weight, bias = linear.weight, linear.bias
    scheme = config.initializer
    if scheme == "bert4keras":
        bert4keras_init(weight, config, fan=keras_fan(weight.shape[1], weight.shape[0]))
        if bias is not None:
            init.zeros_(bias)
    elif scheme == "deepnorm_paper":
        gain = config.beta if role == "value" else 1.0
        init.xavier_normal_(weight, gain=gain)
        if bias is not None:
            init.zeros_(bias)
    elif scheme == "deepnorm_torchscale":
        # PyTorch's default Linear init U(±1/√fan_in) for weight and bias, times β on v/out/fc1/fc2
        bound = (config.beta if role == "value" else 1.0) / math.sqrt(weight.shape[1])
        init.uniform_(weight, -bound, bound)
        if bias is not None:
            init.uniform_(bias, -bound, bound)
    else:
        init.normal_(weight, mean=0.0, std=config.initializer_range)
        if bias is not None:
            init.zeros_(bias)


def init_embedding(weight: torch.Tensor, config) -> None:
    if config.initializer == "bert4keras":
        bert4keras_init(weight, config, fan=keras_fan(weight.shape[0], weight.shape[1]))
    elif config.initializer.startswith("deepnorm"):
        init.normal_(weight, mean=0.0, std=weight.shape[1] ** -0.5)  # fairseq/torchscale embeddings
    else:
        init.normal_(weight, mean=0.0, std=config.initializer_range)
