"""Corpus sources, packing, caching, and the errors of bad sources."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import pretrain.data
import zoo
from pretrain.data import (CorpusError, EmptyCorpusError, UndecodableCorpusError, UndecodableLines, build_corpus,
                           load_documents, scan_source)
from pretrain.errors import PretrainError
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
    with pytest.raises(CorpusError) as caught:
        build_corpus(section([{"type": "text", "path": str(tmp_path / "nope.txt")}]), tokenizer, tmp_path / "cache")
    assert str(caught.value) == f"data.sources[0]: corpus file not found: {tmp_path / 'nope.txt'}"


def test_bad_json_line_is_named(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "一"}\n{"text": "二"\n{"text": "三"}\n', encoding="utf-8")
    with pytest.raises(CorpusError) as caught:
        build_corpus(section([{"type": "jsonl", "path": str(path)}]), tokenizer, tmp_path / "cache")
    assert str(caught.value) == f"data.sources[0]: {path}:2: not valid JSON (Expecting ',' delimiter)"
    path.write_text('{"text": "一"}\n{"body": "二"}\n', encoding="utf-8")
    with pytest.raises(CorpusError) as caught:
        build_corpus(section([{"type": "jsonl", "path": str(path)}]), tokenizer, tmp_path / "cache")
    assert str(caught.value) == f"data.sources[0]: {path}:2: no field 'text' in this record"


# --------------------------------------------------------------------------- undecodable bytes, empty files

CLEAN = "第一行\n第二行，还有逗号\n".encode()


def dirty_bytes():
    """Three clean lines, a line with a stray byte (line 4), a clean line, a line whose last
    character is cut in half (line 6), a clean line."""
    return CLEAN + "第三行\n".encode() + b"ab\xffcd\n" + "第五行\n".encode() + "坏".encode()[:2] + b"\n" + "末行\n".encode()


def test_undecodable_text_names_file_line_and_offset(tmp_path, tokenizer):
    path = tmp_path / "dirty.txt"
    data = dirty_bytes()
    path.write_bytes(data)
    with pytest.raises(UndecodableCorpusError) as caught:
        build_corpus(section([{"type": "text", "path": str(path)}]), tokenizer, tmp_path / "cache")
    offset = data.index(b"\xff")
    assert str(caught.value) == (f"data.sources[0]: {path}:4: bytes that are not valid UTF-8 at byte offset {offset} "
                                 f"(b'\\xff'); set data.sources[0].errors to 'replace' or 'skip' to read the file anyway")
    assert (caught.value.path, caught.value.line, caught.value.offset) == (str(path), 4, offset)
    # the project's own error class (entry points print it as one line)
    assert isinstance(caught.value, CorpusError) and isinstance(caught.value, PretrainError)


def test_undecodable_jsonl_names_file_record_and_offset(tmp_path, tokenizer):
    path = tmp_path / "dirty.jsonl"
    records = [json.dumps({"text": t}, ensure_ascii=False).encode() + b"\n" for t in ("一", "二", "三")]
    data = records[0] + records[1] + b'{"text": "\xe4\xb8"}\n' + records[2]
    path.write_bytes(data)
    with pytest.raises(UndecodableCorpusError) as caught:
        build_corpus(section([{"type": "jsonl", "path": str(path)}]), tokenizer, tmp_path / "cache")
    offset = len(records[0] + records[1]) + len(b'{"text": "')
    assert str(caught.value) == (f"data.sources[0]: {path}:3: bytes that are not valid UTF-8 at byte offset {offset} "
                                 f"(b'\\xe4\\xb8'); set data.sources[0].errors to 'replace' or 'skip' to read the file anyway")


def test_undecodable_file_in_a_datasets_folder_is_named(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_bytes(CLEAN * 20)
    (folder / "b.txt").write_bytes(dirty_bytes())
    with pytest.raises(UndecodableCorpusError) as caught:
        build_corpus(section([{"type": "datasets", "path": str(folder)}]), tokenizer, tmp_path / "cache")
    offset = dirty_bytes().index(b"\xff")
    assert str(caught.value) == f"data.sources[0]: {folder / 'b.txt'}:4: bytes that are not valid UTF-8 at byte offset {offset} (b'\\xff')"


def _empty_sources(tmp_path):
    import datasets

    (tmp_path / "zero.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("\n  \n\u3000\n\n", encoding="utf-8")
    (tmp_path / "zero.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text("\n\n", encoding="utf-8")
    (tmp_path / "blank-records.jsonl").write_text('{"text": ""}\n{"text": "  "}\n', encoding="utf-8")
    datasets.Dataset.from_dict({"text": ["", " "]}).save_to_disk(str(tmp_path / "blank-ds"))
    (tmp_path / "zero-folder").mkdir()
    (tmp_path / "zero-folder" / "a.txt").write_bytes(b"")
    return [
        ({"type": "text", "path": str(tmp_path / "zero.txt")}, tmp_path / "zero.txt"),
        ({"type": "text", "path": str(tmp_path / "blank.txt")}, tmp_path / "blank.txt"),
        ({"type": "text", "path": str(tmp_path / "blank.txt"), "documents": "paragraphs"}, tmp_path / "blank.txt"),
        ({"type": "jsonl", "path": str(tmp_path / "zero.jsonl")}, tmp_path / "zero.jsonl"),
        ({"type": "jsonl", "path": str(tmp_path / "blank.jsonl")}, tmp_path / "blank.jsonl"),
        ({"type": "jsonl", "path": str(tmp_path / "blank-records.jsonl")}, tmp_path / "blank-records.jsonl"),
        ({"type": "datasets", "path": str(tmp_path / "blank-ds")}, tmp_path / "blank-ds"),
        ({"type": "datasets", "path": str(tmp_path / "zero-folder")}, tmp_path / "zero-folder"),
    ]


def test_empty_corpus_is_one_message_for_every_source_type(tmp_path, tokenizer):
    for source, path in _empty_sources(tmp_path):
        with pytest.raises(EmptyCorpusError) as caught:
            build_corpus(section([{"type": "embedded"}, source]), tokenizer, tmp_path / "cache")
        assert str(caught.value) == f"data.sources[1]: the corpus is empty (no non-empty documents in {path})", source


@pytest.mark.parametrize("errors", ["replace", "skip"])
def test_errors_replace_or_skip_reads_a_dirty_corpus_and_counts_the_lines(tmp_path, tokenizer, lines, errors, caplog):
    path = tmp_path / "dirty.txt"
    data = dirty_bytes() + "\n".join(lines).encode()
    path.write_bytes(data)
    source = {"type": "text", "path": str(path), "errors": errors}
    docs, heldout, reports = load_documents(section([source]), tmp_path / "cache")
    texts = list(docs["text"]) + list(heldout["text"])
    expected = [l.decode("utf-8", "replace") for l in data.split(b"\n")
                if errors == "replace" or l.decode("utf-8", "replace").encode() == l]
    assert texts == [t for t in expected if t.strip()]
    assert ("ab\ufffdcd" in texts) == (errors == "replace") and ("abcd" not in texts)
    offset = data.index(b"\xff")
    assert reports == [UndecodableLines("data.sources[0]", str(path), errors, 2, 4, offset)]

    with caplog.at_level(logging.WARNING, logger="pretrain"):
        corpus = build_corpus(section([source]), tokenizer, tmp_path / "cache")
    assert corpus.undecodable == reports and corpus.undecodable_lines == 2
    done = "replaced those bytes with U+FFFD" if errors == "replace" else "skipped those lines"
    message = (f"data.sources[0]: {path}: 2 line(s) with bytes that are not valid UTF-8 (the first at line 4, byte "
               f"offset {offset}); {done}, as data.sources[0].errors = '{errors}' asks")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [("pretrain.data", "WARNING", message)]


def test_errors_option_on_jsonl_and_clean_files(tmp_path, tokenizer):
    path = tmp_path / "dirty.jsonl"
    good = [json.dumps({"text": t}, ensure_ascii=False).encode() + b"\n" for t in ("一二三", "四五六", "七八九")]
    path.write_bytes(good[0] + b'{"text": "ab\xffcd"}\n' + good[1] + good[2])
    docs, heldout, reports = load_documents(section([{"type": "jsonl", "path": str(path), "errors": "skip"}]), tmp_path / "c")
    assert list(docs["text"]) + list(heldout["text"]) == ["一二三", "四五六", "七八九"]
    assert reports == [UndecodableLines("data.sources[0]", str(path), "skip", 1, 2, len(good[0]) + len(b'{"text": "ab'))]
    docs, heldout, reports = load_documents(section([{"type": "jsonl", "path": str(path), "errors": "replace"}]), tmp_path / "c")
    assert list(docs["text"]) + list(heldout["text"]) == ["一二三", "ab\ufffdcd", "四五六", "七八九"] and len(reports) == 1
    clean = tmp_path / "clean.txt"
    clean.write_bytes(CLEAN * 3)
    docs, heldout, reports = load_documents(section([{"type": "text", "path": str(clean), "errors": "skip"}]), tmp_path / "c")
    assert reports == [] and len(docs) + len(heldout) == 6
    hopeless = tmp_path / "hopeless.txt"
    hopeless.write_bytes(b"\xff\n\n\xfe\xfe\n")
    with pytest.raises(EmptyCorpusError) as caught:
        load_documents(section([{"type": "text", "path": str(hopeless), "errors": "skip"}]), tmp_path / "c")
    assert str(caught.value) == (f"data.sources[0]: the corpus is empty (no non-empty documents in {hopeless}); "
                                 "2 line(s) that are not valid UTF-8 were skipped")
    assert not list((tmp_path / "c" / "documents").glob(f"clean-*{hopeless.suffix}*"))  # its clean copy is not kept


@pytest.mark.parametrize("errors", ["strict", "replace", "skip"])
def test_scan_across_chunk_boundaries(tmp_path, monkeypatch, errors):
    """With 7-byte chunks every multi-byte character and most lines straddle a chunk boundary; a
    line is longer than a chunk. The scan must agree with decoding the whole file at once."""
    monkeypatch.setattr(pretrain.data, "CHUNK_BYTES", 7)
    data = ("一行\n" + "很长的一行" * 5 + "\n").encode() + b"x\xc3(y\n" + "中文\n".encode() + b"\xf0\x9f\n" + "尾".encode()
    path = tmp_path / "dirty.txt"
    path.write_bytes(data)
    first = data.index(b"\xc3")
    if errors == "strict":
        with pytest.raises(UndecodableCorpusError) as caught:
            scan_source(path, "text", "k", errors, None, tmp_path / "cache")
        assert (caught.value.line, caught.value.offset) == (3, first)
        return
    scan = scan_source(path, "text", "k", errors, None, tmp_path / "cache")
    assert (scan.bad_lines, scan.first_line, scan.first_offset, scan.has_text) == (2, 3, first, True)
    lines = data.split(b"\n")
    kept = [l.decode("utf-8", "replace").encode() for l in lines] if errors == "replace" else [
        l for l in lines if l == l.decode("utf-8", "ignore").encode()]
    assert open(scan.load, "rb").read() == b"\n".join(kept)
    assert scan.load != str(path) and open(path, "rb").read() == data  # the source is never touched


def test_scan_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "dirty.txt"
    path.write_bytes(dirty_bytes())
    first = scan_source(path, "text", "k", "skip", None, tmp_path / "cache")

    def must_not_read(*args):
        raise AssertionError("read the file again")

    monkeypatch.setattr(pretrain.data, "_scan_file", must_not_read)
    assert scan_source(path, "text", "k", "skip", None, tmp_path / "cache") == first
    path.write_bytes(CLEAN)  # another size and modification time
    with pytest.raises(AssertionError, match="read the file again"):
        scan_source(path, "text", "k", "skip", None, tmp_path / "cache")


def _cache_files(cache):
    folder = cache / "documents"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_scan_notices_a_same_size_change_and_keeps_only_the_latest_clean_copy(tmp_path):
    path = tmp_path / "dirty.txt"
    data = dirty_bytes()
    path.write_bytes(data)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    first = scan_source(path, "text", "k", "skip", None, tmp_path / "cache")
    changed = data.replace(b"ab\xffcd", b"abxycd")  # the same size, line 4 now clean
    path.write_bytes(changed)
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    second = scan_source(path, "text", "k", "skip", None, tmp_path / "cache")
    assert (first.bad_lines, second.bad_lines) == (2, 1) and first.load != second.load
    assert not os.path.exists(first.load)  # the earlier version's clean copy is gone, and its record
    names = _cache_files(tmp_path / "cache")
    assert [n.split("-")[0] for n in names] == ["clean", "scan"] and Path(second.load).name in names
    # a scan of the same file read another way is another source: both are kept
    third = scan_source(path, "text", "k", "replace", None, tmp_path / "cache")
    assert os.path.exists(second.load) and os.path.exists(third.load) and len(_cache_files(tmp_path / "cache")) == 4


def test_a_failed_scan_leaves_nothing_in_the_cache(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(pretrain.data, "CHUNK_BYTES", 16)  # the bad record comes after the clean copy is opened
    cache = tmp_path / "cache"
    strict = tmp_path / "dirty.txt"
    strict.write_bytes(dirty_bytes())
    with pytest.raises(UndecodableCorpusError):
        load_documents(section([{"type": "text", "path": str(strict)}]), cache)
    bad_json = tmp_path / "dirty.jsonl"
    bad_json.write_bytes(b'{"text": "a"}\n{"text": "b\xff"}\n{"text": "c"}\n{"text": "d"\n')
    with pytest.raises(CorpusError, match=r"dirty.jsonl:4: not valid JSON"):
        load_documents(section([{"type": "jsonl", "path": str(bad_json), "errors": "replace"}]), cache)
    assert [n for n in _cache_files(cache) if n.startswith("clean-") or ".tmp" in n] == []


def test_scan_record_names_the_file_by_its_absolute_path(tmp_path, monkeypatch):
    """A record found by the file's resolved path must not hand `datasets` a path relative to the
    folder of the run that wrote it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "corpus.txt").write_bytes(CLEAN)
    (tmp_path / "b" / "a").mkdir(parents=True)
    (tmp_path / "b" / "a" / "corpus.txt").write_bytes(CLEAN * 2)  # the same relative path, from b
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    first = scan_source(Path("a/corpus.txt"), "text", "k", "strict", None, cache)
    assert first.load == str(tmp_path / "a" / "corpus.txt")
    monkeypatch.chdir(tmp_path / "b")
    assert scan_source(tmp_path / "a" / "corpus.txt", "text", "k", "strict", None, cache).load == first.load
