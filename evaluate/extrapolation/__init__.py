"""Length extrapolation of a masked-LM encoder (extrapolation.md B.6): `python -m evaluate extrapolation`.

    data      held-out text → natural / repeated / fixed-target masked windows (seeded, variant-independent)
    scoring   masked-token accuracy, loss, accuracy by position bucket, attention entropy per layer
    report    tables, JSON and PNG, written atomically
    cli       the command (`main(argv)`)

The variants themselves live in zoo.positions; `evaluate.robustness` reuses data and scoring.
"""

from .cli import main, run

__all__ = ["main", "run"]
