"""MLM masking (architectures.md §1.6): select words with probability `rate`; of the selected words,
`mask` → every token becomes [MASK], `random` → every token becomes a random ordinary token, the
rest stay unchanged. The loss is on the selected tokens only (labels −100 elsewhere).

Token-level masking treats every token as a word; whole-word masking uses the jieba word starts
recorded at tokenisation. Special tokens ([CLS], [SEP], [PAD]) are never selected, and a word
never spans a special token. Every sample's choices come from its own seeded generator, so the
masks of a run do not depend on the number of ranks or on resuming.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100


@dataclass(frozen=True)
class MaskingPolicy:
    rate: float
    mask: float
    random: float
    whole_word: bool
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    first_ordinary_id: int  # random replacements are drawn from [first_ordinary_id, vocab_size)

    @classmethod
    def from_recipe(cls, masking, tokenizer, vocab_size: int) -> "MaskingPolicy":
        specials = tuple(sorted(set(tokenizer.all_special_ids)))
        return cls(masking.rate, masking.mask, masking.random, masking.whole_word, tokenizer.mask_token_id,
                   vocab_size, specials, first_ordinary_id(tokenizer))


def first_ordinary_id(tokenizer) -> int:
    """The first id after the BERT-Chinese special block ([PAD], [unused*], [UNK], [CLS], [SEP], [MASK])."""
    vocab = tokenizer.get_vocab()
    specials = [i for t, i in vocab.items() if t.startswith("[") and t.endswith("]")]
    return max(specials) + 1 if specials else 0


def mask_sequence(ids: np.ndarray, word_starts: np.ndarray, policy: MaskingPolicy, rng: np.random.Generator):
    """(inputs, labels) for one sequence."""
    ids = ids.astype(np.int64)
    candidate = ~np.isin(ids, policy.special_ids)
    starts = word_starts.astype(bool) if policy.whole_word else np.ones_like(candidate)
    # a word starts at a flagged token, and also right after any special token
    boundary = starts | np.concatenate([[True], ~candidate[:-1]])
    word = np.cumsum(boundary & candidate) - 1
    n_words = int(word[candidate].max()) + 1 if candidate.any() else 0
    inputs, labels = ids.copy(), np.full_like(ids, IGNORE)
    if n_words == 0:
        return inputs, labels
    selected = rng.random(n_words) < policy.rate
    if not selected.any():  # keep at least one target per sequence so the sparse loss is defined
        selected[rng.integers(n_words)] = True
    action = rng.random(n_words)  # < mask: [MASK]; < mask + random: random tokens; else: keep
    token_word = np.where(candidate, word, 0)
    chosen = candidate & selected[token_word]
    labels[chosen] = ids[chosen]
    to_mask = chosen & (action[token_word] < policy.mask)
    to_random = chosen & (action[token_word] >= policy.mask) & (action[token_word] < policy.mask + policy.random)
    inputs[to_mask] = policy.mask_id
    if to_random.any():
        inputs[to_random] = rng.integers(policy.first_ordinary_id, policy.vocab_size, int(to_random.sum()))
    return inputs, labels
