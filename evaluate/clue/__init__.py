"""CLUE evaluation: the task table, loaders for the official files, fine-tuning, metrics, decoding,
the leaderboard submission writer and a result report (spec: specs/clue.md).

`python -m evaluate clue --model REF --data-dir DIR` runs it from the shell (`evaluate.clue.cli`).
"""

from .tasks import TASKS, TaskSpec, get_task

__all__ = ["TASKS", "TaskSpec", "get_task"]
