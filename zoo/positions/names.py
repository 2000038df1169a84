"""Variant names (extrapolation.md B.6 item 6): `variant(name, train_length)` parses "ntk_mixed+logn_dagger"
and friends into a `PositionVariant`; `default_variants` is the B.6 grid."""

from __future__ import annotations

import difflib
import re
from dataclasses import replace

from ..errors import PositionError
from .variants import PositionVariant

LAMBDA_SINK = 4  # window_lambda keeps [CLS] and the next 3 tokens visible (B.5, B.6)

_FIXED_PARTS = {
    "baseline": {},
    "logn_dagger": {"logn": "dagger"},
    "logn_train": {"logn": "train"},
    "pi": {"rope_scaling": "pi"},
    "ntk": {"rope_scaling": "ntk"},
    "ntk_fixed": {"rope_scaling": "ntk_fixed"},
    "ntk_mixed": {"rope_scaling": "ntk_mixed"},
    "ntk_dynamic": {"rope_scaling": "ntk_dynamic"},
    "yarn": {"rope_scaling": "yarn"},
}

_WINDOW_PARTS = ("window_half", "window_full", "window_lambda")

_PATTERNS = (
    (re.compile(r"window_w(\d+)"), lambda m, n: {"window": int(m[1])}),
    (re.compile(r"rerope_w(\d+)"), lambda m, n: {"rerope_window": int(m[1])}),
    (re.compile(r"leaky_rerope_w(\d+)_k(\d+(?:\.\d+)?|auto)"),
     lambda m, n: {"rerope_window": int(m[1]), "leaky_auto": m[2] == "auto",
                   "leaky_factor": None if m[2] == "auto" else float(m[2])}),
)

_TRAINING_ONLY = {  # B.6 "(train)" rows: they need a checkpoint trained that way
    "randpos_ruoss": "pretrain with data.positions.type: ruoss (max_position 16N)",
    "randpos_equalmean_exp": "pretrain with data.positions.type: equal_mean",
    "logn": "pretrain with attention_normalization: softmax_plus, then use logn_train",
}

KNOWN_NAMES = tuple(_FIXED_PARTS) + _WINDOW_PARTS + ("window_w{W}", "rerope_w{W}", "leaky_rerope_w{W}_k{K|auto}")


def _part_fields(part: str, train_length: int, full_name: str) -> dict:
    if part in _FIXED_PARTS:
        return dict(_FIXED_PARTS[part])
    if part == "window_half":
        return {"window": max(1, train_length // 2)}
    if part == "window_full":
        return {"window": train_length - 1}
    if part == "window_lambda":
        return {"window": max(1, train_length // 2), "sink": LAMBDA_SINK}
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(part)
        if match:
            return build(match, train_length)
    if part in _TRAINING_ONLY:
        raise PositionError(f"{part!r} in {full_name!r} is a training-time option, not an inference variant: "
                         f"{_TRAINING_ONLY[part]}; evaluate the checkpoint it produced with 'baseline'")
    candidates = list(_FIXED_PARTS) + list(_WINDOW_PARTS) + [f"rerope_w{train_length // 4}", f"rerope_w{train_length // 2}",
                                                             f"leaky_rerope_w{train_length // 4}_k16"]
    close = difflib.get_close_matches(part, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise PositionError(f"unknown position variant {part!r} in {full_name!r}{hint} (known: {', '.join(KNOWN_NAMES)}; "
                     "join parts with '+')")


def variant(name: str, train_length: int, **options) -> PositionVariant:
    """The variant called `name` (B.6 names, parts joined by "+") for a model trained at `train_length`.

    `options` set PositionVariant fields (chunk_size, ntk_mixed_exponent, dynamic_factor, yarn_beta_fast, ...).
    """
    if isinstance(name, PositionVariant):
        return replace(name, **options) if options else name
    if not isinstance(name, str) or not name.strip():
        raise PositionError(f"a position variant name must be a non-empty string, got {name!r}")
    parts = [p.strip() for p in name.split("+")]
    if "baseline" in parts and len(parts) > 1:
        raise PositionError(f"position variant {name!r}: 'baseline' means no change and cannot be combined; "
                         "name the other parts alone")
    fields: dict = {}
    kinds: dict[str, str] = {}
    for part in parts:
        new = _part_fields(part, train_length, name)
        kind = ("logn" if "logn" in new else "window" if "window" in new else
                "rerope" if "rerope_window" in new else "rope_scaling" if "rope_scaling" in new else "baseline")
        if kind in kinds:
            raise PositionError(f"position variant {name!r} combines {kinds[kind]!r} and {part!r}: at most one {kind} part")
        kinds[kind] = part
        fields.update(new)
    if "rerope" in kinds and ("rope_scaling" in kinds or "window" in kinds):
        other = kinds.get("rope_scaling") or kinds.get("window")
        raise PositionError(f"position variant {name!r}: {kinds['rerope']!r} already fixes the relative positions; "
                         f"it cannot be combined with {other!r}")
    unknown = set(options) - set(PositionVariant.__dataclass_fields__)
    if unknown:
        raise PositionError(f"unknown position variant option(s): {', '.join(sorted(unknown))}")
    return PositionVariant(name=name, train_length=train_length, **{**fields, **options})


def default_variants(train_length: int, logn: bool = True) -> list[str]:
    """The B.6 variant grid for training length N: every method, and each one × logn_dagger if `logn`
    (pass logn=False for checkpoints trained with log n, whose own scaling every variant keeps)."""
    n = train_length
    methods = ["baseline", "window_half", "window_full", "window_lambda", "pi", "ntk", "ntk_fixed", "ntk_mixed",
               "ntk_dynamic", "yarn", f"rerope_w{max(1, n // 4)}", f"rerope_w{max(1, n // 2)}",
               f"leaky_rerope_w{max(1, n // 4)}_k16", f"leaky_rerope_w{max(1, n // 4)}_k32"]
    if not logn:
        return methods
    return methods + ["logn_dagger"] + [f"{m}+logn_dagger" for m in methods[1:]]
