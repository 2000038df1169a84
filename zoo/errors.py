"""The errors a user of zoo can cause and fix: a bad name, size, option, file or value. Command lines
print them as one line; any other exception is a bug or an environment problem and keeps its traceback.
(Each also derives from the built-in class it used to be, so `except ValueError` keeps working.)"""

from __future__ import annotations


class ZooError(Exception):
    """Base of zoo's user errors."""


class ConfigError(ZooError, ValueError):
    """A model configuration, preset, task or family that cannot be built."""


class GrowthError(ZooError, ValueError):
    """A growth request (zoo.expand, a recipe's stages) that cannot keep the function exact."""


class PositionError(ZooError, ValueError):
    """A position variant or its options that do not fit the model or the lengths."""


class TokenizerError(ZooError, ValueError):
    """A vocabulary or tokenizer that cannot be read or used."""


class UsageError(ZooError, ValueError):
    """A command-line argument or a value passed to a public function that cannot be used."""
