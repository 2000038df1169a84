"""MLM masking statistics and whole-word masking."""

import numpy as np
import pytest

import zoo
from pretrain.data import word_start_flags
from pretrain.masking import IGNORE, MaskingPolicy, first_ordinary_id, mask_sequence
from pretrain.recipe import MaskingSection


@pytest.fixture(scope="module")
def tokenizer():
    return zoo.default_tokenizer()


def policy(tokenizer, whole_word=False, rate=0.15):
    return MaskingPolicy.from_recipe(MaskingSection(rate=rate, whole_word=whole_word), tokenizer, 12000)


def test_token_level_statistics(tokenizer):
    """Over ~100k tokens: 15% selected; of those 80% [MASK], 10% random, 10% unchanged."""
    p = policy(tokenizer)
    rng = np.random.default_rng(0)
    selected = masked = randomised = kept = candidates = 0
    for i in range(800):
        ids = np.concatenate([[101], rng.integers(104, 12000, 126), [102]])
        inputs, labels = mask_sequence(ids, np.ones_like(ids), p, np.random.default_rng([1, i]))
        chosen = labels != IGNORE
        assert not chosen[0] and not chosen[-1]  # [CLS]/[SEP] never selected
        candidates += 126
        selected += chosen.sum()
        masked += (inputs[chosen] == tokenizer.mask_token_id).sum()
        kept += (inputs[chosen] == ids[chosen]).sum()
        randomised += ((inputs[chosen] != ids[chosen]) & (inputs[chosen] != tokenizer.mask_token_id)).sum()
        assert (inputs[~chosen] == ids[~chosen]).all()
    # binomial standard errors: rate ±0.1 pp on 100k tokens, shares ±0.4 pp on 15k selections
    assert abs(selected / candidates - 0.15) < 0.005
    assert abs(masked / selected - 0.80) < 0.015
    assert abs(kept / selected - 0.10) < 0.012  # a random replacement equal to the original counts as kept (1/12000)
    assert abs(randomised / selected - 0.10) < 0.012


def test_random_replacements_are_ordinary_tokens(tokenizer):
    p = policy(tokenizer, rate=0.9)
    assert p.first_ordinary_id == first_ordinary_id(tokenizer) == 104
    ids = np.concatenate([[101], np.full(500, 2000), [102]])
    inputs, labels = mask_sequence(ids, np.ones_like(ids), p, np.random.default_rng(3))
    replaced = inputs[(labels != IGNORE) & (inputs != 2000) & (inputs != 103)]
    assert len(replaced) > 10 and (replaced >= 104).all() and (replaced < 12000).all()


def test_whole_word_masking_masks_whole_jieba_words(tokenizer):
    import jieba

    text = "中华人民共和国国务院今天发布了关于进一步加强科学技术研究工作的决定，要求各地认真贯彻执行。" * 4
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = np.array(word_start_flags(text, encoded["offset_mapping"]))
    ids = np.array(encoded["input_ids"])
    # the flags reproduce jieba's segmentation (one token per character here)
    words = [w for w in jieba.cut(text)]
    assert starts.sum() == len(words)
    p = policy(tokenizer, whole_word=True, rate=0.3)
    word_index = np.cumsum(starts) - 1
    for seed in range(20):
        inputs, labels = mask_sequence(ids, starts, p, np.random.default_rng(seed))
        chosen = labels != IGNORE
        for w in range(word_index.max() + 1):
            in_word = word_index == w
            assert chosen[in_word].all() or not chosen[in_word].any(), f"word {w} partly selected"
            if chosen[in_word].all() and len(words[w]) > 1:
                masked = inputs[in_word] == tokenizer.mask_token_id
                assert masked.all() or not masked.any()  # the 80/10/10 choice is per word
