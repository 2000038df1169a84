"""Character-level Chinese WordPiece tokenizer (BERT-Chinese layout, lower-casing).

Built with `tokenizers` and wrapped as a `transformers.PreTrainedTokenizerFast`:
- BertNormalizer isolates every CJK character, so Chinese is one token per character and Latin
  words are WordPiece-split (`##` continuations);
- special tokens in the BERT-Chinese positions: [PAD]=0, [unused1…99], [UNK]=100, [CLS]=101,
  [SEP]=102, [MASK]=103 (the released RoFormerV2/GAU-α vocabularies keep [PAD]=0 and [SEP]=102);
- segment ids are always 0, also for sentence pairs (every Zhuiyi script does this, §1.3), and
  `token_type_ids` is not among the model inputs the tokenizer returns.

Trainer pitfalls avoided (ecosystem.md §3): `limit_alphabet` large and `min_frequency=1`, so no
seen character becomes [UNK]; vocabularies load with `vocab=` (never the ignored `vocab_file=`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .errors import TokenizerError

SPECIAL_TOKENS = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DEFAULT_VOCAB = Path(__file__).parent / "resources" / "vocab.txt"
MODEL_MAX_LENGTH = 512

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")


def _pipeline(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    vocab = tokenizer.get_vocab()
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        if token not in vocab:
            raise TokenizerError(f"vocabulary has no {token} token")
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MODEL_MAX_LENGTH,
        model_input_names=["input_ids", "attention_mask"],
    )


def read_vocab(path: str | Path) -> list[str]:
    """Tokens of a BERT-style `vocab.txt` (one per line, id = line number)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    tokens = path.read_text(encoding="utf-8").splitlines()
    seen: dict[str, int] = {}
    for number, token in enumerate(tokens, 1):
        if not token:
            raise TokenizerError(f"{path}:{number}: empty vocabulary line")
        if token in seen:
            raise TokenizerError(f"{path}:{number}: token {token!r} already on line {seen[token]}")
        seen[token] = number
    return tokens


def tokenizer_from_vocab(vocab: str | Path | list[str]) -> PreTrainedTokenizerFast:
    """A tokenizer from a released `vocab.txt` (path) or a token list (id = index)."""
    tokens = read_vocab(vocab) if isinstance(vocab, (str, Path)) else list(vocab)
    model = models.WordPiece({token: i for i, token in enumerate(tokens)}, unk_token="[UNK]", max_input_chars_per_word=100)
    return _wrap(_pipeline(Tokenizer(model)))


def default_tokenizer() -> PreTrainedTokenizerFast:
    """The project's shipped vocabulary (12,000 tokens: the embedded corpus' characters, the
    GB2312 hanzi, ASCII and Latin word pieces; built by scripts/build_vocab.py)."""
    return tokenizer_from_vocab(DEFAULT_VOCAB)


def train_tokenizer(
    corpus: Iterable[str] | str | Path,
    vocab_size: int = 12000,
    initial_alphabet: Iterable[str] = (),
) -> PreTrainedTokenizerFast:
    """Train a char-level Chinese WordPiece vocabulary.

    `corpus` is an iterable of documents, or a path to a text file (one document per line).
    Every character seen (and every one in `initial_alphabet`) gets its own token; the rest of the
    budget goes to Latin/digit word pieces.
    """
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer corpus not found: {path}")
        corpus = path.read_text(encoding="utf-8").splitlines()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        limit_alphabet=1_000_000,
        initial_alphabet=sorted(set(initial_alphabet)),
        special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer = _pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)))
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return _wrap(tokenizer)


def save_vocab(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Write `vocab.txt` (tokens in id order), the layout the community ports and bert4keras read."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise TokenizerError("vocabulary ids are not contiguous from 0")
    Path(path).write_text("\n".join(tokens) + "\n", encoding="utf-8")


def decode_text(tokenizer: PreTrainedTokenizerFast, ids, skip_special_tokens: bool = True) -> str:
    """Decode ids to text without the spaces WordPiece puts between Chinese characters."""
    return _SPACE_BETWEEN_CJK.sub("", tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))
