"""The char-level Chinese WordPiece tokenizer: layout, round trips, training, vocab files."""

import pytest
from transformers import AutoTokenizer

import zoo
from zoo.corpus import embedded_corpus
from zoo.tokenizer import SPECIAL_TOKENS, read_vocab, save_vocab


def test_default_tokenizer_layout():
    tok = zoo.default_tokenizer()
    assert len(tok) == 12000
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 100, 101, 102, 103)
    encoded = tok("科学技术是第一生产力，RoFormer很好。")
    tokens = tok.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[:6] == ["[CLS]", "科", "学", "技", "术", "是"]
    assert tokens[-1] == "[SEP]" and "ro" in tokens and all(t.startswith("##") for t in tokens[tokens.index("ro") + 1 : tokens.index("很")])
    assert "token_type_ids" not in encoded


def test_pairs_have_zero_segment_ids():
    tok = zoo.default_tokenizer()
    encoded = tok("今天", "明天", return_token_type_ids=True)
    assert set(encoded["token_type_ids"]) == {0}
    assert tok.convert_ids_to_tokens(encoded["input_ids"]) == ["[CLS]", "今", "天", "[SEP]", "明", "天", "[SEP]"]


def test_no_unknown_characters_on_the_embedded_corpus():
    tok = zoo.default_tokenizer()
    ids = [i for doc in tok(embedded_corpus("heldout"), add_special_tokens=False)["input_ids"] for i in doc]
    assert len(ids) > 50_000
    assert ids.count(tok.unk_token_id) == 0


def test_lower_casing_and_decode_without_cjk_spaces():
    tok = zoo.default_tokenizer()
    assert tok("ABC")["input_ids"] == tok("abc")["input_ids"]
    assert zoo.decode_text(tok, tok("我用Python写代码。")["input_ids"]) == "我用python写代码。"


def test_save_load_round_trip(tmp_path):
    tok = zoo.default_tokenizer()
    tok.save_pretrained(tmp_path)
    save_vocab(tok, tmp_path / "vocab.txt")
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "人民日报1998年元旦社论"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    from_vocab = zoo.tokenizer_from_vocab(tmp_path / "vocab.txt")
    assert from_vocab(text)["input_ids"] == tok(text)["input_ids"]
    assert read_vocab(tmp_path / "vocab.txt")[:len(SPECIAL_TOKENS)] == SPECIAL_TOKENS


def test_train_tokenizer_keeps_every_seen_character():
    docs = embedded_corpus("heldout")[:300]
    tok = zoo.train_tokenizer(docs, vocab_size=5000)
    chars = {c for doc in docs for c in doc.lower() if "\u4e00" <= c <= "\u9fff"}
    vocab = tok.get_vocab()
    assert chars <= set(vocab)
    assert vocab["[PAD]"] == 0 and vocab["[SEP]"] == 102


def test_bad_vocab_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        zoo.tokenizer_from_vocab(tmp_path / "missing.txt")
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n中\n中\n", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.txt:7: token '中' already on line 6"):
        zoo.tokenizer_from_vocab(path)
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n中\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no \[MASK\] token"):
        zoo.tokenizer_from_vocab(path)
