"""Model outputs → predictions (specs/clue.md §5.3 "decode" column)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .features import Window


def chid_assign(scores: np.ndarray) -> list[int]:
    """Global assignment for one ChID line: `scores` [blanks, candidates]; each candidate answers at
    most one blank, the total score is maximal (Hungarian method, scipy `linear_sum_assignment` on
    −scores). Blanks beyond the number of candidates (never in CLUE) fall back to their argmax."""
    from scipy.optimize import linear_sum_assignment

    scores = np.asarray(scores, dtype=np.float64)
    blanks, candidates = scores.shape
    out = scores.argmax(axis=1).tolist()
    rows, cols = linear_sum_assignment(-scores[: min(blanks, candidates)])
    for r, c in zip(rows, cols):
        out[r] = int(c)
    return out


def independent_argmax(scores: np.ndarray) -> list[int]:
    return np.asarray(scores).argmax(axis=1).tolist()


def cmrc_window_best(logits: torch.Tensor, window: Window) -> tuple[float, int, int]:
    """Best (start, end) pair of one window: [CLS] (row/col 0) and non-context tokens masked out.
    Returns (score, start char, end char exclusive); score −inf if the window has no context."""
    n = logits.shape[-1]
    valid = torch.tensor([o is not None for o in window.offsets] + [False] * (n - len(window.offsets)))
    grid = logits.float().clone()
    grid[~valid, :] = -torch.inf
    grid[:, ~valid] = -torch.inf
    grid = grid.masked_fill(torch.ones_like(grid, dtype=torch.bool).tril(-1), -torch.inf)
    flat = int(grid.argmax())
    i, j = divmod(flat, n)
    score = float(grid[i, j])
    if score == -float("inf"):
        return score, 0, 0
    return score, window.offsets[i][0], window.offsets[j][1]


def cmrc_answers(windows: Sequence[Window], logits: Sequence[torch.Tensor], contexts: dict[str, str]) -> dict[str, str]:
    """Per question keep the window whose best span scores highest; slice the context there."""
    best: dict[str, tuple[float, int, int]] = {}
    for window, grid in zip(windows, logits):
        candidate = cmrc_window_best(grid, window)
        if window.qid not in best or candidate[0] > best[window.qid][0]:
            best[window.qid] = candidate
    return {qid: contexts[qid][s:e] for qid, (score, s, e) in best.items()}


def global_pointer_spans(logits: torch.Tensor, offsets: Sequence, types: Sequence[str], threshold: float = 0.0):
    """Every (type, i, j) with logit > threshold → (type, start char, end char inclusive)."""
    spans = set()
    n = len(offsets)
    grid = logits[:, :n, :n].float()
    for kind, i, j in (grid > threshold).nonzero().tolist():
        if i <= j and offsets[i] is not None and offsets[j] is not None:
            spans.add((types[kind], offsets[i][0], offsets[j][1] - 1))
    return sorted(spans, key=lambda s: (s[1], s[2], s[0]))
