"""Named model sizes: the released ones (architectures.md §1.5, §2.6), DeepNet depths, and tiny/mini
sizes that pretrain on a 2-core CPU. `zoo.create(preset, task, **overrides)` builds a fresh model."""

from __future__ import annotations

import difflib

from .errors import ConfigError
from .families import FAMILIES, TASKS, model_class

# name: (family, {config fields}); vocabulary 12000 = the released char vocabularies and ours
PRESETS: dict[str, tuple[str, dict]] = {
    # RoFormerV2, released sizes (head size 64)
    "roformer-v2-small": ("roformer-v2", dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, intermediate_size=1536)),
    "roformer-v2-base": ("roformer-v2", dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072)),
    "roformer-v2-large": ("roformer-v2", dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096)),
    # GAU-α, released size (24 GAU layers ≈ 12 transformer layers in parameters)
    "gau-alpha-base": ("gau-alpha", dict(num_hidden_layers=24, hidden_size=768, intermediate_size=1536, attention_key_size=128)),
    # DeepNet encoders from 12 to 1000 layers
    "deepnet-12": ("deepnet", dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072)),
    "deepnet-100": ("deepnet", dict(num_hidden_layers=100, hidden_size=256, num_attention_heads=4, intermediate_size=1024)),
    "deepnet-200": ("deepnet", dict(num_hidden_layers=200, hidden_size=256, num_attention_heads=4, intermediate_size=1024)),
    "deepnet-1000": ("deepnet", dict(num_hidden_layers=1000, hidden_size=128, num_attention_heads=2, intermediate_size=512)),
    # CPU-trainable sizes
    "roformer-v2-tiny": ("roformer-v2", dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)),
    "roformer-v2-mini": ("roformer-v2", dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512)),
    "gau-alpha-tiny": ("gau-alpha", dict(num_hidden_layers=8, hidden_size=256, intermediate_size=512, attention_key_size=64)),
    "gau-alpha-mini": ("gau-alpha", dict(num_hidden_layers=4, hidden_size=128, intermediate_size=256, attention_key_size=64)),
    "deepnet-tiny": ("deepnet", dict(num_hidden_layers=12, hidden_size=256, num_attention_heads=4, intermediate_size=1024)),
    "deepnet-mini": ("deepnet", dict(num_hidden_layers=6, hidden_size=128, num_attention_heads=2, intermediate_size=512)),
}


def presets() -> dict[str, dict]:
    """Every preset: its family and config fields (a copy)."""
    return {name: {"family": family, **dict(fields)} for name, (family, fields) in PRESETS.items()}


def preset_config(preset: str, **overrides):
    """The config of `preset` with `overrides` applied (any config field)."""
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=5, cutoff=0.4)
        hint = f"; did you mean: {', '.join(close)}?" if close else f"; presets: {', '.join(PRESETS)}"
        raise ConfigError(f"unknown preset {preset!r}{hint}")
    family, fields = PRESETS[preset]
    config_class = FAMILIES[family]["config"]
    known = {f for f in config_class.__dataclass_fields__}
    unknown = sorted(set(overrides) - known - {"num_labels", "id2label", "label2id", "problem_type"})
    if unknown:
        raise ConfigError(f"unknown config field(s) for {preset}: {', '.join(unknown)}")
    if "hidden_size" in overrides and "num_attention_heads" not in overrides and family != "gau-alpha":
        # keep the preset's head size when only the width changes
        head = fields["hidden_size"] // fields["num_attention_heads"]
        if overrides["hidden_size"] % head == 0:
            overrides["num_attention_heads"] = overrides["hidden_size"] // head
    return config_class(**{**fields, **overrides})


def create(preset: str, task: str = "masked-lm", **overrides):
    """A freshly initialised model of `preset` for `task` (see `zoo.families.TASKS`)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    config = preset_config(preset, **overrides)
    return model_class(config, task)(config)
