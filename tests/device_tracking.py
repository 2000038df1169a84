"""A CPU stand-in for "the model sits on another device than the loader's batches".

On a machine without a GPU every tensor is on the CPU, so a batch that skipped the transfer to the
model's device runs anyway (the crash of gpu.md §1 only shows on CUDA). Here `Runtime.to_device`
hands out fresh copies that are remembered (as a real transfer to another device would), and a model
refuses any tensor input that did not come out of it.
"""

from __future__ import annotations

import weakref

import torch

from zoo.runtime import Runtime

_transferred: set[int] = set()


def _remember(tensor: torch.Tensor) -> torch.Tensor:
    _transferred.add(id(tensor))
    weakref.finalize(tensor, _transferred.discard, id(tensor))
    return tensor


def track_transfers(patch=None) -> None:
    """Make Runtime.to_device copy and remember every tensor it moves (`patch`: pytest's monkeypatch
    setattr, or None to patch for the rest of the process)."""
    original = Runtime.to_device

    def to_device(self, batch):
        moved = original(self, batch)
        return _copy_and_remember(moved)

    (patch or setattr)(Runtime, "to_device", to_device)


def _copy_and_remember(obj):
    if isinstance(obj, torch.Tensor):
        return _remember(obj.clone())
    if isinstance(obj, dict):
        return {k: _copy_and_remember(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_and_remember(v) for v in obj)
    return obj


def refuse_untransferred(model: torch.nn.Module) -> torch.nn.Module:
    """The model raises, naming the argument, for any tensor input that did not go through the runtime."""

    def check(module, args, kwargs):
        named = [(f"argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items())
        for name, value in named:
            if isinstance(value, torch.Tensor) and id(value) not in _transferred:
                raise RuntimeError(f"{name} reached {type(module).__name__} without Runtime.to_device "
                                   "(on a GPU: a tensor on the wrong device)")

    model.register_forward_pre_hook(check, with_kwargs=True)
    return model
