"""The three families, registered with the transformers Auto classes.

`TASKS` (zoo/families/tasks.py) maps a task name to the Auto class (None where transformers has none)
and the class-name suffix; `FAMILIES` maps a family name to its config class and its model classes
per task. A family module is its config class; its model classes are the shared ones with that
config bound (`family_models`).
"""

from __future__ import annotations

from transformers import AutoConfig

from ..errors import ConfigError
from . import deepnet, gau_alpha, roformer_v2
from .tasks import TASKS

_MODULES = {
    "roformer-v2": (roformer_v2, "RoFormerV2"),
    "gau-alpha": (gau_alpha, "GAUAlpha"),
    "deepnet": (deepnet, "DeepNet"),
}

FAMILIES: dict[str, dict] = {}
CONFIG_CLASSES = {}
for _family, (_module, _prefix) in _MODULES.items():
    _config = getattr(_module, f"{_prefix}Config")
    _classes = _module.MODELS
    FAMILIES[_family] = {"config": _config, "models": _classes}
    CONFIG_CLASSES[_config.model_type] = _config
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    for _task, (_auto, _) in TASKS.items():
        if _auto is not None:
            _auto.register(_config, _classes[_task], exist_ok=True)


def model_class(config, task: str):
    """The model class of `config`'s family for `task`."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    family = family_of(config)
    return FAMILIES[family]["models"][task]


def family_of(config) -> str:
    for family, entry in FAMILIES.items():
        if type(config) is entry["config"] or config.model_type == entry["config"].model_type:
            return family
    raise ConfigError(f"config of model_type {config.model_type!r} is not a zoo family ({', '.join(FAMILIES)})")
