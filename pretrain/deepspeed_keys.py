"""Which keys of a recipe's `deepspeed:` section DeepSpeed really reads, found by asking DeepSpeed.

DeepSpeed ignores a key it does not look up: a typo such as `zero_optimisation` or
`gradient_clippin` silently runs without ZeRO or without clipping. Nothing here keeps a list of
keys. Instead the section is handed, as a recording mapping, to the function that reads it inside
`deepspeed.initialize` (`DeepSpeedConfig._initialize_params`), and every key it looks up is noted,
including keys looked up but absent (those are the valid names a typo is compared with). Then:

- a block DeepSpeed reads key by key (`get_scalar_param`, `in`, `[...]`) may hold only keys it looked
  up; keys it never looked at are unknown;
- a block DeepSpeed hands to one of its pydantic config models (`zero_optimization`, `bf16`,
  `tensorboard`, ... all `DeepSpeedConfigModel`, which forbids extra fields) is checked by that model;
  its validation error is turned into the same message, with the model's field names and aliases as
  the candidates;
- a block DeepSpeed copies (`copy.copy`, `.copy()`, `copy.deepcopy`) is still checked: the copy records
  its lookups into the original. DeepSpeed keeps some copies as its config and reads keys from them
  later, outside `_initialize_params` (`data_sampling.dynamic_batching.metrics_path`), so in a copied
  block the names of that block in the `constants` of the DeepSpeed module that reads it
  (`DYNAMIC_BATCHING_*` for `dynamic_batching`) are accepted too;
- a block it iterates or unpacks with `**` (`pipeline`, an enabled `curriculum_learning` or
  `random_ltd`, ...) is used as a whole: a pydantic model given it with `**` checks it, otherwise its
  keys are passed on unchecked (as are `optimizer.params` and `scheduler.params`, which DeepSpeed hands
  on without looking in: they are the optimizer's or scheduler's keyword arguments, and an unknown one
  raises TypeError when DeepSpeed builds it);
- top-level keys read outside `_initialize_params` (by `deepspeed.initialize` and the config's
  constructor and warning check) are found in their source code; when that source cannot be read,
  the check refuses to run (`DeepSpeedKeysUnavailable`) rather than guess;
- a block switched off (`enabled` false or absent) may be read only as far as `enabled`: its keys are
  learned by parsing again with that block's `enabled: true`. Where that parse fails (enabling it
  needs a key the recipe does not give), the block's names in the `constants` of the DeepSpeed
  module that reads it are accepted too.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import inspect
import sys
import textwrap
from typing import Any, Union, get_args, get_origin


class DeepSpeedKeysUnavailable(RuntimeError):
    """The installed DeepSpeed cannot be asked which keys it reads (its source is not readable)."""


_QUIET = frozenset({__name__, "copy", "deepspeed.runtime.config_utils"})  # helpers, not a block's reader


def _reader() -> str | None:
    """The DeepSpeed module whose code is looking into a block (past `get_scalar_param` and `copy`)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name not in _QUIET:
            return name if name.startswith("deepspeed.") else None
        frame = frame.f_back
    return None


class _Block(dict):
    """A config block that records which keys are looked up, and whether it is used as a whole.

    A copy of a block (`copy.copy`, `.copy()`, `copy.deepcopy`) holds its own keys (DeepSpeed writes
    into its copies) but records into the block it was copied from (`origin`)."""

    def __init__(self, data: dict, path: tuple, blocks: list):
        blocks.append(self)
        self.origin, self.path, self.present, self.looked = self, path, list(data), []
        self.whole = self.copied = False
        self.readers: set[str] = set()  # the DeepSpeed modules that looked into it
        super().__init__({k: (_Block(v, path + (k,), blocks) if isinstance(v, dict) else v) for k, v in data.items()})

    def _copy(self, items) -> _Block:
        origin = self.origin
        origin.copied = True
        if (reader := _reader()) is not None:
            origin.readers.add(reader)
        twin = dict.__new__(type(self))
        dict.update(twin, items)
        twin.origin = origin
        return twin

    def _look(self, key):
        origin = self.origin
        if key not in origin.looked:
            origin.looked.append(key)
        if (reader := _reader()) is not None:
            origin.readers.add(reader)
        _Block.last = origin.path + (key,)

    def __getitem__(self, key):
        self._look(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._look(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._look(key)
        return super().__contains__(key)

    def pop(self, key, *default):
        self._look(key)
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        self._look(key)
        return super().setdefault(key, default)

    def keys(self):
        return _Keys(self)

    def _all(self):
        """Iterated or unpacked with `**`: the block is used as a whole."""
        self.origin.whole = True
        _Block.last_whole = self.origin.path
        return self

    def __iter__(self):
        return dict.__iter__(self._all())

    def items(self):
        return dict.items(self._all())

    def values(self):
        return dict.values(self._all())

    def copy(self):
        return self._copy(dict.items(self))

    def __copy__(self):
        return self._copy(dict.items(self))

    def __deepcopy__(self, memo):
        return self._copy({k: copy.deepcopy(v, memo) for k, v in dict.items(self)})

    def __reduce_ex__(self, protocol):  # pickled: the data leaves as a whole
        return dict, (dict(dict.items(self._all())),)


_Block.last = _Block.last_whole = ()  # the last key looked up, the last block used as a whole


class _Keys:
    """`block.keys()`: `key in block.keys()` is a lookup, iterating it uses the block as a whole."""

    def __init__(self, block: _Block):
        self.block = block

    def __contains__(self, key):
        return key in self.block

    def __iter__(self):
        return iter(dict.keys(self.block._all()))

    def __len__(self):
        return dict.__len__(self.block)


@functools.lru_cache(maxsize=1)
def _outside_keys() -> frozenset:
    """Top-level keys DeepSpeed reads outside `_initialize_params`: in `deepspeed.initialize`, in
    `DeepSpeedConfig.__init__` and in its warning check (read from their source)."""
    import deepspeed
    from deepspeed.runtime import config as ds_config

    found = set()
    for function in (deepspeed.initialize, ds_config.DeepSpeedConfig.__init__, ds_config.DeepSpeedConfig._do_warning_check):
        names = {**vars(ds_config), **function.__globals__}
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        except (OSError, TypeError, SyntaxError) as error:
            raise DeepSpeedKeysUnavailable(
                f"cannot check the keys of the deepspeed section on this DeepSpeed ({deepspeed.__version__}): the "
                f"source of {function.__module__}.{function.__qualname__}, which reads top-level keys, cannot be read "
                f"({type(error).__name__}: {error}); install DeepSpeed with its .py files") from error

        def value(node, names=names):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return node.value
            if isinstance(node, ast.Name) and isinstance(names.get(node.id), str):
                return names[node.id]
            return None

        def is_config(node):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "keys":
                node = node.func.value
            return (isinstance(node, ast.Name) and node.id in ("config", "param_dict")) or (
                isinstance(node, ast.Attribute) and node.attr == "_param_dict")

        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.In) for op in node.ops) and is_config(node.comparators[0]):
                found.add(value(node.left))
            elif isinstance(node, ast.Subscript) and is_config(node.value):
                found.add(value(node.slice))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                  and is_config(node.func.value) and node.args):
                found.add(value(node.args[0]))
    return frozenset(found - {None})


def _block_constants(readers, name) -> set[str]:
    """The names DeepSpeed's `constants` give for the keys of block `name`, in the modules that read
    it: the string constants `X_*` where `X` is the constant whose value is `name` (`DYNAMIC_BATCHING_*`
    for `dynamic_batching`); all the module's string constants if none is."""
    found = set()
    for reader in readers:
        module = sys.modules.get(reader)
        if module is None:
            continue
        named = {k: v for k, v in vars(module).items() if k.isupper() and isinstance(v, str) and not k.endswith("_DEFAULT")}
        prefixes = tuple(k + "_" for k, v in named.items() if v == name)
        found.update(v for k, v in named.items() if not prefixes or k.startswith(prefixes))
    return found


def _parse(ds: dict, blocks: list) -> None:
    """Fill `blocks` with the blocks of `ds` as `_initialize_params` reads them (as far as it gets:
    it raises what DeepSpeed raises)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    root = _Block(copy.deepcopy(ds), (), blocks)
    config = DeepSpeedConfig.__new__(DeepSpeedConfig)
    _Block.last = _Block.last_whole = ()
    config._initialize_params(root)


def _enabled_keys(ds: dict, path: tuple) -> tuple[list, bool, set, bool]:
    """(keys looked up, used as a whole, reading modules, parse failed) of the block at `path` when
    DeepSpeed parses `ds` with that block's `enabled: true`."""
    changed = copy.deepcopy(ds)
    block = changed
    for part in path:
        block = block[part]
    block["enabled"] = True
    blocks: list[_Block] = []
    failed = False
    try:
        _parse(changed, blocks)
    except Exception:  # noqa: BLE001  (enabling it needs more than the recipe gives: what was read so far)
        failed = True
    for found in blocks:
        if found.path == path:
            return found.looked, found.whole, found.readers, failed
    return [], False, set(), True


def _model_classes(title: str) -> list:
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel
    from pydantic import BaseModel

    seen, stack, out = set(), [BaseModel], []
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                if sub.__name__ == title and sub.__module__.startswith("deepspeed"):
                    out.append(sub)
    return sorted(out, key=lambda c: not issubclass(c, DeepSpeedConfigModel))


def _nested_model(annotation):
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is Union or type(annotation).__name__ == "UnionType":
        for arg in get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def model_keys(model) -> list[str]:
    """The names a pydantic config model accepts: its fields and their aliases."""
    keys = []
    for name, info in model.model_fields.items():
        keys.append(name)
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                keys.append(alias)
            elif alias is not None and hasattr(alias, "choices"):  # AliasChoices
                keys += [c for c in alias.choices if isinstance(c, str)]
    return sorted(set(keys))


def _same_field(model, a, b) -> bool:
    names = lambda key: {n for n, i in model.model_fields.items() if key in (n, i.alias, i.validation_alias)}  # noqa: E731
    return bool(names(a) & names(b))


def _model_at(title: str, loc: tuple):
    """The pydantic model that holds the last element of `loc` (an error location inside `title`)."""
    for model in _model_classes(title):
        for part in loc[:-1]:
            info = model.model_fields.get(part) or next(
                (i for i in model.model_fields.values() if part in (i.alias, i.validation_alias)), None)
            model = _nested_model(info.annotation) if info is not None else None
            if model is None:
                break
        if model is not None:
            return model
    return None


def _paths(data: Any, prefix: tuple = ()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))


def _locate(ds: dict, loc: tuple, under: tuple) -> tuple:
    """The full path in `ds` of a pydantic error location (relative to the block the model read)."""
    loc = tuple(str(p) for p in loc)
    matches = [p for p in _paths(ds) if tuple(str(x) for x in p[-len(loc):]) == loc and len(p) >= len(loc)]
    for path in matches:
        if path[: len(under)] == under:
            return path
    return matches[0] if matches else under + loc


def _unknown(src: str, path: tuple, candidates) -> str:
    dotted = ".".join(("deepspeed",) + tuple(str(p) for p in path))
    prefix = ".".join(("deepspeed",) + tuple(str(p) for p in path[:-1]))
    close = difflib.get_close_matches(str(path[-1]), sorted(set(map(str, candidates))), n=1)
    hint = f" (did you mean '{prefix}.{close[0]}'?)" if close else ""
    return f"{src}: unknown key '{dotted}'{hint}"


def deepspeed_key_error(ds: dict, src: str) -> str | None:
    """None when DeepSpeed reads every key of `ds`; else one line naming the first key it would
    ignore or refuse, with the nearest key it does read. Raises `DeepSpeedKeysUnavailable` when the
    installed DeepSpeed cannot be asked."""
    import pydantic
    from deepspeed.runtime.config import DeepSpeedConfigError

    blocks: list[_Block] = []
    try:
        _parse(ds, blocks)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        path = _locate(ds, tuple(first["loc"]), _Block.last_whole)
        if first["type"] == "extra_forbidden":
            model = _model_at(error.title, tuple(first["loc"]))
            if model is not None and str(path[-1]) in model_keys(model):  # a field under two of its names
                block = ds
                for part in path[:-1]:
                    block = block[part]
                names = [k for k in block if _same_field(model, k, path[-1])]
                dotted = ".".join(("deepspeed",) + tuple(str(p) for p in path[:-1]))
                return f"{src}: keys {' and '.join(repr(n) for n in names)} in '{dotted}' name the same setting; keep one"
            return _unknown(src, path, model_keys(model) if model is not None else [])
        dotted = ".".join(("deepspeed",) + tuple(str(p) for p in path))
        return f"{src}: key '{dotted}': {first['msg']} (got {first.get('input')!r})"
    except (DeepSpeedConfigError, AssertionError, ValueError, TypeError, KeyError, AttributeError) as error:
        where = ".".join(("deepspeed",) + tuple(str(p) for p in _Block.last))
        return f"{src}: DeepSpeed cannot read the deepspeed section (at '{where}'): {' '.join(str(error).split())}"

    outside = _outside_keys()
    for block in blocks:  # in the order of the recipe
        if block.whole or not block.looked:
            continue  # used as a whole, or read by a pydantic model (which checked it)
        top = not block.path
        unknown = [k for k in block.present if k not in block.looked and not (top and k in outside)]
        if not unknown:
            continue
        known, readers, constants = list(block.looked) + (sorted(outside) if top else []), set(block.readers), block.copied
        if not top and "enabled" in block.looked and not dict.get(block, "enabled", False):  # switched off
            looked, whole, enabled_readers, failed = _enabled_keys(ds, block.path)
            if whole:
                continue  # enabled, DeepSpeed passes it on as a whole
            known += [k for k in looked if k not in known]
            readers |= enabled_readers
            constants = constants or failed
        if constants:
            known += sorted(_block_constants(readers, block.path[-1]) - set(known))
        for key in unknown:
            if key not in known:
                return _unknown(src, block.path + (key,), known)
    return None
