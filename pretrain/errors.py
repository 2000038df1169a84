"""The errors a pretraining user can cause and fix. Entry points print these as one line; every other
exception is a bug or an environment problem and keeps its traceback."""

from __future__ import annotations


class PretrainError(Exception):
    """A run that cannot go on for a reason the user can fix; the message names the file, key or step.

    `mirrored` marks the copy of another rank's error (pretrain.trainer broadcasts data errors so that
    every rank stops with the same message); the entry point prints it once, on rank 0.
    """

    mirrored = False


class RecipeError(PretrainError, ValueError):
    """A recipe that cannot run; the message names the file and the key."""


class RunError(PretrainError, ValueError):
    """The run's state disagrees with the request: existing checkpoints, a missing one, a checkpoint
    written by another recipe (stages, batch size, seed, vocabulary)."""


class NonFiniteLossError(PretrainError, RuntimeError):
    """Training produced a NaN/inf loss; the run stopped before applying that step."""
