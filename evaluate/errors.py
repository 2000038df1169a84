"""The errors a user of the evaluation commands can cause and fix (missing or malformed data, a bad
option, an unusable model). The commands print them, and zoo's own user errors, as one line; any other
exception keeps its traceback. (Each also derives from the built-in class it used to be.)"""

from __future__ import annotations


class EvaluateError(Exception):
    """Base of the evaluation commands' user errors."""


class UsageError(EvaluateError, ValueError):
    """An option, a model or a value the command cannot use."""
