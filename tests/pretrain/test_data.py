"""Corpus sources, packing, caching, and the errors of bad sources."""

import json

import numpy as np
import pytest

import zoo
from pretrain.data import CorpusError, build_corpus
from pretrain.recipe import DataSection, HeldoutSection, MaskingSection
from zoo.corpus import embedded_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return zoo.default_tokenizer()


@pytest.fixture(scope="module")
def lines():
    return embedded_corpus("heldout")[:400]


def section(sources, seq_len=32, whole_word=False):
    return DataSection(sources=sources, seq_len=seq_len, masking=MaskingSection(whole_word=whole_word),
                       heldout=HeldoutSection(fraction=0.1))


def test_text_lines_packing_layout(tmp_path, tokenizer, lines):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n\n\n", encoding="utf-8")
    corpus = build_corpus(section([{"type": "text", "path": str(path)}]), tokenizer, tmp_path / "cache")
    ids = corpus.train[:]["input_ids"]
    assert ids.shape[1] == 32 and (ids[:, 0] == 101).all() and (ids[:, -1] == 102).all()
    # the packed stream is the documents in order, separated by [SEP]
    stream = np.concatenate([row[1:-1] for row in ids])
    expected = []
    for doc in lines[: int(len(lines) * 0.9)]:
        expected += tokenizer(doc, add_special_tokens=False)["input_ids"] + [102]
    n = min(len(stream), 2000)
    assert stream[:n].tolist() == expected[:n]
    assert len(corpus.heldout) > 0


def test_paragraph_documents_and_jsonl(tmp_path, tokenizer, lines):
    text = tmp_path / "paragraphs.txt"
    text.write_text("\n\n".join(lines[:200]), encoding="utf-8")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"content": l}, ensure_ascii=False) + "\n" for l in lines[200:]), encoding="utf-8")
    corpus = build_corpus(section([{"type": "text", "path": str(text), "documents": "paragraphs"},
                                   {"type": "jsonl", "path": str(jsonl), "field": "content"}]), tokenizer, tmp_path / "cache")
    assert len(corpus.train) > 50


def test_datasets_source_from_disk(tmp_path, tokenizer, lines):
    import datasets

    datasets.Dataset.from_dict({"body": lines}).save_to_disk(str(tmp_path / "ds"))
    corpus = build_corpus(section([{"type": "datasets", "path": str(tmp_path / "ds"), "field": "body"}]), tokenizer,
                          tmp_path / "cache")
    assert len(corpus.train) > 50


def test_tokenisation_is_cached(tmp_path, tokenizer, lines):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    data = section([{"type": "text", "path": str(path)}], whole_word=True)
    first = build_corpus(data, tokenizer, tmp_path / "cache")
    second = build_corpus(data, tokenizer, tmp_path / "cache")
    assert first.train._fingerprint == second.train._fingerprint
    assert first.train.cache_files == second.train.cache_files and first.train.cache_files
    assert (first.train[:]["word_starts"] == second.train[:]["word_starts"]).all()


def test_missing_file(tmp_path, tokenizer):
    with pytest.raises(CorpusError, match=r"data.sources\[0\]: corpus file not found: .*nope.txt"):
        build_corpus(section([{"type": "text", "path": str(tmp_path / "nope.txt")}]), tokenizer, tmp_path / "cache")


def test_bad_json_line_is_named(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "一"}\n{"text": "二"\n{"text": "三"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"docs.jsonl:2: not valid JSON"):
        build_corpus(section([{"type": "jsonl", "path": str(path)}]), tokenizer, tmp_path / "cache")
    path.write_text('{"text": "一"}\n{"body": "二"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"docs.jsonl:2: no field 'text'"):
        build_corpus(section([{"type": "jsonl", "path": str(path)}]), tokenizer, tmp_path / "cache")


def test_empty_corpus(tmp_path, tokenizer):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"data.sources\[0\]: the corpus is empty"):
        build_corpus(section([{"type": "text", "path": str(path)}]), tokenizer, tmp_path / "cache")
