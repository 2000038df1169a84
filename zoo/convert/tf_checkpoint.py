"""Opening a TensorFlow checkpoint: find its prefix, then read it with our bundle reader or TensorFlow's.

TensorFlow is not a dependency. `reader="auto"` (default) uses the pure-Python reader of
`tensor_bundle` and falls back to TensorFlow's `CheckpointReader` only for what that reader does not
implement (snappy blocks, partitioned variables) and only when TensorFlow is installed (the optional
extra `zoo-zh[tensorflow]`); `reader="pure"` and `reader="tensorflow"` force one of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from .mapping import ConversionError
from .tensor_bundle import BundleReader, UnsupportedBundleError, index_path

READERS = ("auto", "pure", "tensorflow")


def find_checkpoint_prefix(path: str | os.PathLike) -> Path:
    """The checkpoint prefix behind `path`: a prefix, its `.index` or `.data-…` file, or a folder
    (the prefix its `checkpoint` state file names, else its only `*.index`, searched recursively)."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(errors="replace"), re.M)
            if match:
                prefix = Path(match.group(1))
                prefix = prefix if prefix.is_absolute() else path / prefix
                if index_path(prefix).is_file():
                    return prefix
        indexes = sorted(path.rglob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        if not indexes:
            raise FileNotFoundError(f"no TensorFlow checkpoint (*.index) in {path}")
        shown = ", ".join(str(p.relative_to(path)) for p in indexes[:6])
        raise FileNotFoundError(f"{path} holds {len(indexes)} checkpoints ({shown}); pass the prefix of one")
    if path.suffix == ".index" and path.is_file():
        return path.with_suffix("")
    if re.search(r"\.data-\d{5}-of-\d{5}$", path.name):
        return path.with_name(path.name.rsplit(".data-", 1)[0])
    if index_path(path).is_file():
        return path
    raise FileNotFoundError(f"no TensorFlow checkpoint at {path} (expected {index_path(path).name} and "
                            f"{path.name}.data-00000-of-00001, or a folder holding them)")


class BundleTensors:
    """A checkpoint read by the pure-Python tensor-bundle reader."""

    def __init__(self, prefix: Path):
        self.reader = BundleReader(prefix)
        self.label = str(prefix)
        self.unsupported = [name for name in self.reader.keys() if self.reader.entry(name).sliced]

    def keys(self) -> list[str]:
        return self.reader.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.entry(name).shape

    def get(self, name: str) -> torch.Tensor:
        array = self.reader.read(name)
        if array.dtype == object:
            raise TypeError(f"{name!r} in {self.label} is a string tensor, not weights")
        return torch.from_numpy(np.ascontiguousarray(array))


class TensorFlowTensors:
    """A checkpoint read by TensorFlow's own `tf.train.load_checkpoint` (only if TensorFlow is installed)."""

    def __init__(self, prefix: Path):
        tf = import_tensorflow()
        self.reader = tf.train.load_checkpoint(str(prefix))
        self.shapes = {k: tuple(v) for k, v in self.reader.get_variable_to_shape_map().items()}
        self.label = str(prefix)

    def keys(self) -> list[str]:
        return sorted(self.shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def get(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.reader.get_tensor(name)))


def tensorflow_available() -> bool:
    try:
        import_tensorflow()
    except ImportError:
        return False
    return True


def import_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner is noise here
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError("reader='tensorflow' needs TensorFlow, which zoo does not depend on: "
                          "pip install 'zoo-zh[tensorflow]' (or tensorflow-cpu), or use reader='pure'") from error
    return tf


def open_tf_checkpoint(path: str | os.PathLike, reader: str = "auto") -> BundleTensors | TensorFlowTensors:
    """The tensors of the TensorFlow checkpoint at `path` (see `find_checkpoint_prefix`)."""
    if reader not in READERS:
        raise ConversionError(f"reader={reader!r} is not one of {list(READERS)}")
    prefix = find_checkpoint_prefix(path)
    if reader == "tensorflow":
        return TensorFlowTensors(prefix)
    try:
        tensors = BundleTensors(prefix)
    except UnsupportedBundleError:
        if reader == "auto" and tensorflow_available():
            return TensorFlowTensors(prefix)
        raise
    if tensors.unsupported and reader == "auto" and tensorflow_available():
        return TensorFlowTensors(prefix)
    return tensors
