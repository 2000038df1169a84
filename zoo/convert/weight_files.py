"""Reading PyTorch state-dict files without executing them: safetensors, or pickled
`pytorch_model.bin` through `torch.load(weights_only=True)` (tensors and plain containers only, so a
checkpoint cannot run code), single files or shards listed by an `*.index.json`."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from .mapping import ConversionError

# preferred first: safetensors needs no unpickling at all
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class StateDictTensors:
    """Tensors of one or more state-dict files, read lazily where the format allows."""

    def __init__(self, files: list[Path], label: str):
        self.label = label
        self.files = files
        self._where: dict[str, Path] = {}
        self._loaded: dict[Path, dict[str, torch.Tensor]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            for name, shape in self._scan(file).items():
                if name in self._where:
                    raise ConversionError(f"{name} is in both {self._where[name]} and {file}")
                self._where[name] = file
                self._shapes[name] = shape

    def _scan(self, file: Path) -> dict[str, tuple[int, ...]]:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(file, framework="pt") as handle:
                    return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
            except Exception as error:  # safetensors raises its own exception types for bad headers
                raise ConversionError(f"{file} is truncated or not a safetensors file: {error}") from error
        state = self._load_pickle(file)
        self._loaded[file] = state
        return {k: tuple(v.shape) for k, v in state.items()}

    @staticmethod
    def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
        try:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):  # legacy (non-zip) files cannot be memory-mapped
                    raise
                state = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ConversionError(f"refusing to load {file}: it holds objects other than tensors and plain "
                                  f"containers (torch.load(weights_only=True) rejected it: {error})") from error
        except (RuntimeError, EOFError, ValueError) as error:
            raise ConversionError(f"{file} is truncated or not a PyTorch checkpoint: {error}") from error
        if isinstance(state, dict) and set(state) in ({"state_dict"}, {"model"}, {"module"}):
            state = next(iter(state.values()))  # a state dict wrapped by a training script
        if not isinstance(state, dict):
            raise ConversionError(f"{file} holds a {type(state).__name__}, not a state dict")
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise ConversionError(f"{file} is not a plain state dict: entries {bad[:5]} are not name → tensor")
        return state

    def keys(self) -> list[str]:
        return sorted(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def get(self, name: str) -> torch.Tensor:
        file = self._where[name]
        if file in self._loaded:
            return self._loaded[file][name]
        from safetensors import safe_open

        with safe_open(file, framework="pt") as handle:
            return handle.get_tensor(name)


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files of a folder (safetensors preferred, shards resolved) or of a single file."""
    path = Path(path)
    if path.is_file():
        if path.name.endswith(".index.json"):
            return _shards(path)
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no weights at {path}")
    for name in WEIGHT_FILES:
        candidate = path / name
        if candidate.is_file():
            return _shards(candidate) if name.endswith(".index.json") else [candidate]
    others = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if len(others) == 1:
        return [path / others[0]]
    listing = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "(empty)"
    raise FileNotFoundError(f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES)}; found {listing}")


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConversionError(f"{index} is not a shard index (a JSON object with a 'weight_map'): {error}") from error
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"{index} lists shards that are missing: {', '.join(absent)}")
    return files


def open_state_dict(path: str | os.PathLike) -> StateDictTensors:
    files = weight_files(path)
    return StateDictTensors(files, label=str(files[0]) if len(files) == 1 else str(Path(path)))
