"""What a source-format reader hands the converter, and the config translation they share.

Each format module (bert4keras, junnyu, bert4torch) opens a checkpoint into a `SourceCheckpoint`:
the family it holds, its config file read into our config fields, lazy access to its tensors, the
name map for a given config and the vocabulary file. `family_config` turns those fields into our
family config, applying the two semantic choices a converted model makes:

- the norm ε: "bert4keras" (default) keeps the training semantics, K.epsilon() = 1e-7
  (architectures.md §1.1, §6 RoFormerV2 8); "config" takes the source config's `layer_norm_eps`
  (JunnYu's ports say 1e-12), and a number sets it explicitly;
- softmax_plus's minimum length (§2.2): 1, the training-era bert4keras that produced the
  checkpoints (and both PyTorch ports), unless asked otherwise (16 = bert4keras 0.11.5).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..families import FAMILIES
from .mapping import ConversionError, NameMap, TensorSource

BERT4KERAS_EPSILON = 1e-7  # K.epsilon(): the ε the released checkpoints were trained with (§1.1)
EPS_POLICIES = ("bert4keras", "config")


@dataclass
class SourceCheckpoint:
    """An opened checkpoint of one source format."""

    format: str
    family: str  # "roformer-v2" or "gau-alpha"
    config_file: Path
    fields: dict  # our config fields read from config_file (before the ε / min-length options)
    source_eps: float | None  # the source config's own layer_norm_eps, if it states one
    tensors: TensorSource
    name_map: Callable[[object], NameMap]  # our config → NameMap
    vocab_file: Path | None
    files: list[Path] = field(default_factory=list)  # checkpoint files, for provenance


def read_json_config(path: Path) -> dict:
    """A JSON object from `path`, with errors that name the file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise ConversionError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    return raw


def first_existing(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no {what} in {folder}: expected one of {', '.join(names)}")


def take_fields(raw: dict, path: Path, aliases: dict[str, tuple[str, ...]], required: tuple[str, ...]) -> dict:
    """Our config keys from a source config: `aliases` maps our key to the source spellings."""
    fields = {}
    for ours, spellings in aliases.items():
        for spelling in spellings:
            if spelling in raw and raw[spelling] is not None:
                fields[ours] = raw[spelling]
                break
    absent = [key for key in required if key not in fields]
    if absent:
        raise ConversionError(f"{path} lacks {', '.join(repr(aliases[k][0]) for k in absent)}")
    if "embedding_size" in fields:
        if fields.pop("embedding_size") != fields.get("hidden_size"):
            raise ConversionError(f"{path}: embedding_size differs from hidden_size; the factorised embedding "
                                  "(Embedding-Mapping, §1.1) is in no released checkpoint and is not supported")
    return fields


def family_config(
    family: str,
    fields: dict,
    config_file: Path,
    *,
    source_eps: float | None,
    layer_norm_eps: str | float = "bert4keras",
    softmax_plus_min_len: int = 1,
    pad_token_id: int = 0,
):
    """Our family config from the source fields and the conversion options (errors name the file)."""
    if isinstance(layer_norm_eps, str):
        if layer_norm_eps not in EPS_POLICIES:
            raise ConversionError(f"layer_norm_eps={layer_norm_eps!r}: use one of {list(EPS_POLICIES)} or a number")
        eps = BERT4KERAS_EPSILON if layer_norm_eps == "bert4keras" or source_eps is None else source_eps
    else:
        eps = float(layer_norm_eps)
    if not isinstance(softmax_plus_min_len, int) or softmax_plus_min_len < 1:
        raise ConversionError(f"softmax_plus_min_len must be a positive int, got {softmax_plus_min_len!r}")
    config_class = FAMILIES[family]["config"]
    try:
        return config_class(
            **fields,
            layer_norm_eps=eps,
            softmax_plus_min_len=softmax_plus_min_len,
            pad_token_id=pad_token_id,
            architectures=[f"{config_class.__name__.removesuffix('Config')}ForMaskedLM"],
        )
    except (TypeError, ValueError) as error:
        raise ConversionError(f"{config_file}: {error}") from error
