"""Checks shared by the recipe's sections (pretrain/recipe.py) and its growth stages (pretrain/stages.py):
errors that name the recipe file and the key."""

from __future__ import annotations

import difflib

from .errors import RecipeError


def only_keys(raw: dict, allowed: set, prefix: str, source: str) -> None:
    """Refuse a key of `raw` outside `allowed`, naming it as `prefix + key` with the closest allowed one."""
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; allowed: {', '.join(sorted(allowed))}"
            raise RecipeError(f"{source}: unknown key '{prefix}{key}'{hint}")
