"""evaluate: score zoo checkpoints.

    python -m evaluate clue --model REF --data-dir DIR      CLUE fine-tuning and a leaderboard submission
    python -m evaluate extrapolation --model REF ...        length extrapolation (extrapolation.md B.6)
    python -m evaluate robustness --model REF ...           position robustness (B.6 item 7)

This package shares its import name with Hugging Face's `evaluate` library; the two cannot live
in one environment, and this project never depends on that library.
"""
