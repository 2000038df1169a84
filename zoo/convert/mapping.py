"""Mapping a checkpoint's tensors onto our parameter names, by name, with full accounting.

A `NameMap` says, for one source format and one config, where each of our parameters comes from
(`Rule`: a source name, transposed or not, one row of a stacked tensor or all of it), which source
tensors are redundant copies that must equal another (untied MLM decoders), which must be constant
(bert4torch's all-ones norm weights) and which are skipped on purpose (optimizer slots, JunnYu's
sinusoid table). `apply_name_map` reads the source *by name, never by position* (architectures.md
§4.2: bert4keras's positional order changed between versions), and refuses to produce anything
unless every expected tensor was found, every found tensor was used, checked or knowingly skipped,
and every shape matches the model the config describes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..errors import ZooError


class ConversionError(ZooError, ValueError):
    """A checkpoint that cannot be converted: wrong family, missing or extra tensors, bad shapes."""


class TensorSource(Protocol):
    """Read access to a checkpoint's tensors by name (lazily: `shape` must not load data)."""

    label: str  # the file or folder, for messages

    def keys(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class Rule:
    """Our parameter `target` is the source tensor `source`, transposed (Keras kernel [in, out] →
    torch Linear weight [out, in], §4) and/or reduced to one `row` of a stacked tensor."""

    target: str
    source: str
    transpose: bool = False
    row: int | None = None

    def describe(self) -> str:
        parts = [self.source]
        if self.row is not None:
            parts.append(f"[{self.row}]")
        if self.transpose:
            parts.append("ᵀ")
        return "".join(parts)


@dataclass
class NameMap:
    """Where every parameter comes from, for one source format and one config."""

    rules: list[Rule]
    copies: dict[str, str] = field(default_factory=dict)  # redundant source tensor → the one it must equal
    constants: list[tuple[re.Pattern, float, str]] = field(default_factory=list)  # optional, must be all `value`
    ignored: list[tuple[re.Pattern, str]] = field(default_factory=list)  # skipped on purpose, with the reason


@dataclass
class MappingReport:
    """What `apply_name_map` did with each source tensor (recorded in conversion.json)."""

    used: dict[str, str]  # our name → source description
    copies_checked: list[str]
    constants_checked: list[str]
    ignored: dict[str, str]  # source name → reason

    def to_json(self) -> dict:
        return {"used": self.used, "copies_checked": self.copies_checked,
                "constants_checked": self.constants_checked, "ignored": self.ignored}


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def _layer_hint(names: list[str], num_layers: int | None) -> str:
    """When leftover tensors belong to layers past the config's depth, say which config key is off."""
    if num_layers is None:
        return ""
    indices = {int(m.group(1)) for n in names if (m := re.search(r"(?:layer_|layer\.|encoderLayer\.)(\d+)", n))}
    if indices and min(indices) >= num_layers:
        return (f" (the checkpoint has layers up to {max(indices)} but the config says "
                f"num_hidden_layers={num_layers})")
    return ""


def apply_name_map(
    source: TensorSource,
    name_map: NameMap,
    expected: dict[str, tuple[int, ...]],
    *,
    config_label: str,
    num_layers: int | None = None,
) -> tuple[dict[str, torch.Tensor], MappingReport]:
    """Our state dict (the keys of `expected`, with those shapes) from `source` through `name_map`.

    Raises ConversionError naming the file and listing every missing and every leftover tensor, or
    the first shape mismatches, before any tensor is read.
    """
    found = set(source.keys())
    rule_sources = {rule.source for rule in name_map.rules}
    missing = sorted(rule_sources - found)
    copies = {k: v for k, v in name_map.copies.items() if k in found}
    constants = {n: (value, why) for n in found for pattern, value, why in name_map.constants if pattern.fullmatch(n)}
    ignored = {n: why for n in sorted(found) for pattern, why in name_map.ignored if pattern.fullmatch(n)}
    leftover = sorted(found - rule_sources - set(copies) - set(constants) - set(ignored))
    targets = {rule.target for rule in name_map.rules}
    uncovered = sorted(set(expected) - targets)
    if uncovered:  # a converter bug, not bad input: say so plainly
        raise RuntimeError(f"name map does not cover {_listing(uncovered)}")
    if missing or leftover:
        parts = []
        if missing:
            parts.append(f"{len(missing)} expected tensor(s) missing: {_listing(missing)}")
        if leftover:
            parts.append(f"{len(leftover)} tensor(s) in the checkpoint that nothing uses: {_listing(leftover)}"
                         + _layer_hint(leftover, num_layers))
        raise ConversionError(f"{source.label} does not match {config_label}: " + "; ".join(parts))

    problems = []
    for rule in name_map.rules:
        shape = tuple(source.shape(rule.source))
        if rule.row is not None:
            if len(shape) != 2 or rule.row >= shape[0]:
                problems.append(f"{rule.source} has shape {list(shape)}, but row {rule.row} of a stacked "
                                f"tensor is needed for {rule.target}")
                continue
            shape = shape[1:]
        if rule.transpose:
            shape = tuple(reversed(shape))
        if shape != tuple(expected[rule.target]):
            want = tuple(expected[rule.target])
            if rule.transpose:
                want = tuple(reversed(want))
            problems.append(f"{rule.source} has shape {list(source.shape(rule.source))}, "
                            f"expected {list(want)} for {rule.target}")
    for name, reference in copies.items():
        if tuple(source.shape(name)) != tuple(source.shape(reference)):
            problems.append(f"{name} has shape {list(source.shape(name))}, but it should be a copy of "
                            f"{reference} {list(source.shape(reference))}")
    if problems:
        raise ConversionError(f"shape mismatch between {source.label} and {config_label}: " + "; ".join(problems[:6])
                              + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))

    state_dict, used = {}, {}
    for rule in name_map.rules:
        tensor = source.get(rule.source)
        if rule.row is not None:
            tensor = tensor[rule.row]
        if rule.transpose:
            tensor = tensor.t()
        state_dict[rule.target] = tensor.contiguous()
        used[rule.target] = rule.describe()
    for name, reference in copies.items():
        if not torch.equal(source.get(name), source.get(reference)):
            raise ConversionError(
                f"{source.label}: {name} differs from {reference}; our models tie the MLM output to the token "
                "embedding (architectures.md §1.1), so an untied, separately trained decoder cannot be kept"
            )
    for name, (value, why) in constants.items():
        tensor = source.get(name)
        if not bool((tensor == value).all()):
            raise ConversionError(f"{source.label}: {name} is not all {value:g} ({why}); the checkpoint was "
                                  "trained with a learned norm scale, which RoFormerV2/GAU-α do not have")
    return state_dict, MappingReport(used, sorted(copies), sorted(constants), ignored)
