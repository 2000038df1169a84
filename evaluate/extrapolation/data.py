"""Held-out text → masked test windows (extrapolation.md B.6 items 2–4).

Documents are tokenised without special tokens and concatenated, each followed by [SEP] — the
stream the pretraining packer cuts (pretrain/data.py). A window of length L is [CLS], L − 2
stream tokens, [SEP], exactly like a training sequence. Masks follow the pretraining policy
(pretrain.masking: rate 15 %, 80/10/10, whole words optional) with a generator seeded by
(seed, test set, length, window), so every variant sees the same masked inputs.

Test sets, for a model trained at N:
    natural        consecutive non-overlapping windows from the start of the stream; the token
                   budget (windows × L) is the same at every length.
    repeated       a natural chunk of C tokens (default N/2) tiled to L − 2; only copies 2+ are
                   masked and scored, copy 1 stays clean (long-range retrieval, Su's "repeated").
    fixed_target   K target spans of N − 2 tokens (so the target is a whole training window at
                   L = N) with fixed masks, each fed with the context of length L centred on it;
                   only the target is scored (Su's "longer context, lower loss", bidirectional).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain.masking import IGNORE, MaskingPolicy, first_ordinary_id, mask_sequence

from ..errors import EvaluateError, UsageError

SETS = ("natural", "repeated", "fixed_target")
_SET_CODE = {"natural": 0, "repeated": 1, "fixed_target": 2, "robustness": 3}


class CorpusError(EvaluateError, ValueError):
    """A held-out corpus that cannot be used (missing, empty, too short); the message names it."""


@dataclass
class TokenStream:
    """The held-out documents as one token stream ([SEP] after each document)."""

    ids: np.ndarray  # int64 [T]
    word_starts: np.ndarray  # uint8 [T]: 1 where a token starts a word (all 1 without whole-word masking)
    description: str
    documents: int
    cls_id: int
    sep_id: int


@dataclass
class TestSet:
    """Masked windows of one length: inputs and labels [M, L] (labels −100 where not scored)."""

    name: str
    length: int
    input_ids: np.ndarray
    labels: np.ndarray

    @property
    def masked_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


# ------------------------------------------------------------------------------ documents and stream


def read_documents(corpus: str | None) -> tuple[list[str], str]:
    """Documents of `corpus`: None / "embedded" = the embedded held-out slice (never trained on), a .jsonl
    file (field "text"), or a text file with one document per line."""
    if corpus in (None, "embedded"):
        from zoo.corpus import embedded_corpus

        docs = embedded_corpus("heldout")
        return docs, "embedded held-out slice (People's Daily 1998 + reviews, zoo.corpus)"
    path = Path(corpus).expanduser()
    if not path.is_file():
        raise CorpusError(f"--corpus: file not found: {path}")
    docs = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CorpusError(f"--corpus: {path}:{number}: not valid JSON ({error.msg})") from error
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise CorpusError(f"--corpus: {path}:{number}: no string field 'text'")
                text = record["text"]
            else:
                text = line.rstrip("\n")
            if text.strip():
                docs.append(text)
    if not docs:
        raise CorpusError(f"--corpus: {path} has no non-empty documents")
    return docs, str(path)


def token_stream(documents: list[str], tokenizer, whole_word: bool = False, description: str = "") -> TokenStream:
    """Tokenise and concatenate the documents as the pretraining packer does (doc, [SEP], doc, [SEP], ...)."""
    encoded = tokenizer(documents, add_special_tokens=False, return_attention_mask=False,
                        return_offsets_mapping=whole_word, verbose=False)
    ids, starts = [], []
    if whole_word:
        from pretrain.data import word_start_flags
    for index, doc_ids in enumerate(encoded["input_ids"]):
        ids.extend(doc_ids)
        ids.append(tokenizer.sep_token_id)
        if whole_word:
            starts.extend(word_start_flags(documents[index], encoded["offset_mapping"][index]))
        else:
            starts.extend([1] * len(doc_ids))
        starts.append(1)
    return TokenStream(np.asarray(ids, np.int64), np.asarray(starts, np.uint8), description, len(documents),
                       tokenizer.cls_token_id, tokenizer.sep_token_id)


def masking_policy(tokenizer, vocab_size: int, rate: float = 0.15, mask: float = 0.8, random: float = 0.1,
                   whole_word: bool = False) -> MaskingPolicy:
    """The pretraining masking policy for this tokenizer (pretrain.masking)."""
    return MaskingPolicy(rate, mask, random, whole_word, tokenizer.mask_token_id, vocab_size,
                         tuple(sorted(set(tokenizer.all_special_ids))), first_ordinary_id(tokenizer))


def window_rng(seed: int, test_set: str, length: int, index: int) -> np.random.Generator:
    """The generator of one window's mask: the same for every variant (B.6 item 3)."""
    return np.random.default_rng([seed, _SET_CODE[test_set], length, index])


# ------------------------------------------------------------------------------ the three test sets


@dataclass(frozen=True)
class Plan:
    """How many windows each length gets, from the stream size and the token budget."""

    train_length: int
    lengths: tuple[int, ...]
    budget_tokens: int  # windows × L at every length (natural and repeated)
    repeat_chunk: int
    targets: int

    def windows(self, length: int) -> int:
        return max(1, self.budget_tokens // length)


def make_plan(stream: TokenStream, train_length: int, lengths: list[int], max_tokens: int | None = None,
              repeat_chunk: int | None = None, targets: int = 64) -> Plan:
    """Equal token budget across lengths: as many longest windows as the stream holds (B.6 item 2)."""
    longest = max(lengths)
    total = len(stream.ids)
    if total < longest - 2:
        raise CorpusError(
            f"the held-out corpus ({stream.description}) has {total} tokens, fewer than one {longest}-token window; "
            "pass a larger --corpus or shorter --lengths"
        )
    budget = (total // (longest - 2)) * longest
    if max_tokens is not None:
        if max_tokens < longest:
            raise UsageError(f"--max-tokens {max_tokens} is smaller than one {longest}-token window")
        budget = min(budget, max_tokens)
    chunk = repeat_chunk or max(1, train_length // 2)
    if not 1 <= chunk < min(lengths) - 2:
        raise UsageError(f"--repeat-chunk {chunk} must leave room for a second copy in the shortest window "
                         f"({min(lengths)} tokens)")
    return Plan(train_length, tuple(lengths), budget, chunk, targets)


def natural_set(stream: TokenStream, length: int, plan: Plan, policy: MaskingPolicy, seed: int) -> TestSet:
    """Consecutive windows [CLS] + stream[m(L−2) : (m+1)(L−2)] + [SEP], masked per window."""
    body = length - 2
    count = min(plan.windows(length), len(stream.ids) // body)
    cls, sep = stream.cls_id, stream.sep_id
    inputs, labels = [], []
    for m in range(count):
        ids = _wrap(stream.ids[m * body : (m + 1) * body], cls, sep)
        starts = _wrap(stream.word_starts[m * body : (m + 1) * body], 1, 1)
        x, y = mask_sequence(ids, starts, policy, window_rng(seed, "natural", length, m))
        inputs.append(x)
        labels.append(y)
    return TestSet("natural", length, np.stack(inputs), np.stack(labels))


def repeated_set(stream: TokenStream, length: int, plan: Plan, policy: MaskingPolicy, seed: int) -> TestSet:
    """Chunks of C tokens tiled to L − 2; masks and labels only in copies 2, 3, ... (copy 1 stays clean)."""
    chunk, body = plan.repeat_chunk, length - 2
    count = min(plan.windows(length), len(stream.ids) // chunk)
    cls, sep = stream.cls_id, stream.sep_id
    repeats = -(-body // chunk)
    inputs, labels = [], []
    for m in range(count):
        piece = stream.ids[m * chunk : (m + 1) * chunk]
        ids = _wrap(np.tile(piece, repeats)[:body], cls, sep)
        starts = _wrap(np.tile(stream.word_starts[m * chunk : (m + 1) * chunk], repeats)[:body], 1, 1)
        x, y = mask_sequence(ids, starts, policy, window_rng(seed, "repeated", length, m))
        first_copy = slice(0, 1 + chunk)  # [CLS] and copy 1: the text to retrieve from, left intact
        x[first_copy], y[first_copy] = ids[first_copy], IGNORE
        inputs.append(x)
        labels.append(y)
    return TestSet("repeated", length, np.stack(inputs), np.stack(labels))


def fixed_target_spans(stream: TokenStream, plan: Plan) -> list[int]:
    """Start of each target span (N − 2 tokens) such that the longest context around it fits the stream."""
    target, context = plan.train_length - 2, max(plan.lengths) - 2
    room = len(stream.ids) - context
    if room < 0:
        raise CorpusError(f"the held-out corpus has {len(stream.ids)} tokens, fewer than one {context + 2}-token context")
    count = max(1, min(plan.targets, room // target + 1))
    offsets = np.linspace(0, room, count).round().astype(int) if count > 1 else np.array([room // 2])
    return [int(o) + (context - target) // 2 for o in offsets]


def fixed_target_set(stream: TokenStream, length: int, plan: Plan, policy: MaskingPolicy, seed: int) -> TestSet:
    """Context of length L centred on each fixed target; target masks depend on (seed, target) only."""
    target = plan.train_length - 2
    if length - 2 < target:
        raise UsageError(f"fixed_target: length {length} is shorter than the training length {plan.train_length}")
    left = (length - 2 - target) // 2
    cls, sep = stream.cls_id, stream.sep_id
    inputs, labels = [], []
    for m, start in enumerate(fixed_target_spans(stream, plan)):
        span = slice(start, start + target)
        x_t, y_t = mask_sequence(stream.ids[span], stream.word_starts[span], policy,
                                 window_rng(seed, "fixed_target", 0, m))
        context = slice(start - left, start - left + length - 2)
        ids = _wrap(stream.ids[context], cls, sep)
        y = np.full_like(ids, IGNORE)
        ids[1 + left : 1 + left + target] = x_t
        y[1 + left : 1 + left + target] = y_t
        inputs.append(ids)
        labels.append(y)
    return TestSet("fixed_target", length, np.stack(inputs), np.stack(labels))


BUILDERS = {"natural": natural_set, "repeated": repeated_set, "fixed_target": fixed_target_set}


def build_test_set(name: str, stream: TokenStream, length: int, plan: Plan, policy: MaskingPolicy, seed: int) -> TestSet:
    if name not in BUILDERS:
        raise UsageError(f"unknown test set {name!r}; test sets: {', '.join(SETS)}")
    return BUILDERS[name](stream, length, plan, policy, seed)


def _wrap(body: np.ndarray, first, last) -> np.ndarray:
    return np.concatenate([[first], body, [last]]).astype(body.dtype)
