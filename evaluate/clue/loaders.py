"""Read the official CLUE files (or a `datasets.DatasetDict`) into typed records (specs/clue.md §2, §7).

Quirks handled here, once: string label codes (tnews "100"–"116", iflytek "0"–"118", int labels of
FewCLUE copies accepted), rows labelled `-` dropped (cmnli/ocnli), WSC spans checked against the text
(either order), CMRC2018 `answer_start = -1` re-found in the context, ChID answers read from the
separate `<split>_answer.json`, placeholders read with the regex in order, C³ variable choice counts
and answers given as text, CLUENER inclusive ends checked, 1.0 and 1.1 test files.

Every error names the file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EvaluateError, UsageError
from .tasks import CHID, CLASSIFICATION, MULTIPLE_CHOICE, NER, SPAN_MRC, TaskSpec

IDIOM_TAG = re.compile(r"#idiom\d{6}#")


class MissingDataError(EvaluateError, FileNotFoundError):
    """A task's data file is not where it is expected; the message says where and where to get it."""


class DataFormatError(EvaluateError, ValueError):
    """A data file does not have the official format; the message names the file and line."""


# ------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class ClassificationExample:
    uid: str
    text_a: str
    text_b: str | None
    label: str | None
    submit_id: int | str
    spans: tuple[tuple[int, str], tuple[int, str]] | None = None  # WSC: (noun span1, pronoun span2)
    keywords: tuple[str, ...] | None = None  # CSL


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset in the context; −1 when the text does not occur in it


@dataclass(frozen=True)
class MrcExample:
    qid: str
    context: str
    question: str
    answers: tuple[Answer, ...]

    @property
    def label(self):
        return [a.text for a in self.answers] or None


@dataclass(frozen=True)
class ChoiceExample:
    qid: str
    context: tuple[str, ...]
    question: str
    choices: tuple[str, ...]
    label: int | None
    submit_id: int | str


@dataclass(frozen=True)
class Blank:
    tag: str  # "#idiom000378#"
    paragraph: int
    start: int  # character offset of the tag in its paragraph


@dataclass(frozen=True)
class ChidExample:
    line: int
    paragraphs: tuple[str, ...]
    candidates: tuple[str, ...]
    blanks: tuple[Blank, ...]
    answers: dict[str, int] | None = field(default=None, hash=False, compare=False)

    @property
    def label(self):
        return self.answers


@dataclass(frozen=True)
class NerExample:
    uid: str
    text: str
    spans: tuple[tuple[str, int, int], ...] | None  # (type, start, end inclusive); None on test
    submit_id: int | str

    @property
    def label(self):
        return self.spans


@dataclass
class TestSet:
    version: str  # "1.1", "1.0" or "" (the task's only test set)
    path: Path
    examples: list


@dataclass
class TaskData:
    task: TaskSpec
    folder: Path | None
    train: list
    dev: list
    tests: dict[str, TestSet]

    def head(self, n: int) -> "TaskData":
        """The first `n` examples of every split (--dry-run)."""
        return TaskData(self.task, self.folder, self.train[:n], self.dev[:n],
                        {v: TestSet(t.version, t.path, t.examples[:n]) for v, t in self.tests.items()})


# ---------------------------------------------------------------------------------------- locating


def find_task_dir(task: TaskSpec, data_dir: str | Path, needed: str | None = None) -> Path:
    """The folder holding `task`'s files (`needed`, default its first training file):
    `<root>/<task>_public/`, `<root>/<task>/` (one extra nesting level tolerated, as in
    cmnli_public.zip), or `<root>` itself when it is named like that."""
    root = Path(data_dir)
    needed = needed or (task.train_files or next(iter(task.test_files.values())))[0]
    candidates = []
    for name in task.dirnames:
        folder = root / name
        if folder.is_dir():
            candidates.append(folder)
            candidates += sorted(p for p in folder.iterdir() if p.is_dir())
    if root.name in task.dirnames:  # --data-dir is the task's own folder
        candidates.append(root)
    for folder in candidates:
        if (folder / needed).is_file():
            return folder
    where = ", ".join(str(root / name / needed) for name in task.dirnames)
    raise MissingDataError(
        f"{task.name}: expected {needed} at {where} (one extra folder level is allowed); "
        f"{task.archive_hint()}"
    )


def _find_file(task: TaskSpec, folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise MissingDataError(
        f"{task.name}: expected the {what} file {folder / names[0]}"
        + (f" (or {', '.join(names[1:])})" if len(names) > 1 else "") + f"; {task.archive_hint()}"
    )


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-empty line of a JSON-lines file."""
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{path}:{number}: not a JSON object ({error.msg})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            rows.append((number, obj))
    return rows


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def _need(obj: dict, key: str, path: Path, number: int):
    if key not in obj:
        raise DataFormatError(f"{path}:{number}: missing field {key!r} (fields: {', '.join(obj)})")
    return obj[key]


# ---------------------------------------------------------------------------------- classification


def _label(task: TaskSpec, obj: dict, path: Path, number: int) -> str | None:
    if "label" not in obj:
        return None
    label = obj["label"]
    if isinstance(label, bool):
        label = str(label).lower()
    label = str(label)
    if label in task.drop_labels:
        return label
    if label not in task.labels:
        shown = ", ".join(task.labels[:16]) + (" …" if len(task.labels) > 16 else "")
        raise DataFormatError(f"{path}:{number}: label {label!r} is not a {task.name} label ({shown})")
    return label


def _check_span(text: str, index: int, span: str, path: Path, number: int, which: str) -> None:
    if not isinstance(index, int) or text[index : index + len(span)] != span:
        raise DataFormatError(
            f"{path}:{number}: {which}_text {span!r} is not at {which}_index {index} of the text "
            f"(found {text[index:index + len(span)]!r})"
        )


def read_classification(task: TaskSpec, path: Path, split: str) -> list[ClassificationExample]:
    out = []
    for line, (number, obj) in enumerate(read_jsonl(path)):
        label = _label(task, obj, path, number)
        if label is not None and label in task.drop_labels:
            continue  # no annotator majority: dropped as every baseline does
        submit_id = obj.get("id", obj.get("idx", obj.get("index", line)))
        spans = keywords = None
        text_b = None
        if task.fields == "single":
            text_a = _need(obj, "sentence", path, number)
        elif task.fields == "pair":
            text_a, text_b = _need(obj, "sentence1", path, number), _need(obj, "sentence2", path, number)
        elif task.fields == "diagnostics":
            text_a = obj.get("premise", obj.get("sentence1"))
            text_b = obj.get("hypothesis", obj.get("sentence2"))
            if text_a is None or text_b is None:
                raise DataFormatError(f"{path}:{number}: expected premise/hypothesis fields")
        elif task.fields == "wsc":
            text_a = _need(obj, "text", path, number)
            target = _need(obj, "target", path, number)
            for which in ("span1", "span2"):
                _check_span(text_a, target.get(f"{which}_index"), target.get(f"{which}_text", ""), path, number, which)
            spans = ((target["span1_index"], target["span1_text"]), (target["span2_index"], target["span2_text"]))
        elif task.fields == "csl":
            keywords = tuple(_need(obj, "keyword", path, number))
            text_a, text_b = "；".join(keywords), _need(obj, "abst", path, number)
        else:
            raise ValueError(f"{task.name}: unknown classification format {task.fields!r}")
        out.append(ClassificationExample(f"{split}-{line}", text_a, text_b, label, submit_id, spans, keywords))
    return out


# ------------------------------------------------------------------------------------------- cmrc


def _locate(context: str, text: str, start: int) -> int:
    if isinstance(start, int) and start >= 0 and context[start : start + len(text)] == text:
        return start
    found = [m.start() for m in re.finditer(re.escape(text), context)] if text else []
    if not found:
        return -1
    return min(found, key=lambda s: abs(s - start)) if isinstance(start, int) and start >= 0 else found[0]


def read_cmrc(task: TaskSpec, path: Path, split: str) -> list[MrcExample]:
    data = read_json(path)
    if not isinstance(data, dict) or "data" not in data:
        raise DataFormatError(f"{path}: expected a SQuAD-style object with a 'data' list")
    out = []
    for article in data["data"]:
        for paragraph in article.get("paragraphs", []):
            context = paragraph["context"]
            for qa in paragraph.get("qas", []):
                answers = tuple(
                    Answer(a["text"], _locate(context, a["text"], a.get("answer_start", -1)))
                    for a in qa.get("answers", []) if a.get("text")
                )
                out.append(MrcExample(str(qa["id"]).strip(), context, qa["question"], answers))
    return out


# ------------------------------------------------------------------------------------------- c3


def read_c3(task: TaskSpec, paths: list[Path], split: str) -> list[ChoiceExample]:
    out = []
    for path in paths:
        documents = read_json(path)
        if not isinstance(documents, list):
            raise DataFormatError(f"{path}: expected a JSON array of [context, questions, id] documents")
        for d, document in enumerate(documents):
            if not (isinstance(document, list) and len(document) >= 2):
                raise DataFormatError(f"{path}: document {d} is not [context, questions, id]")
            context, questions = tuple(document[0]), document[1]
            doc_id = document[2] if len(document) > 2 else str(d)
            for q, qa in enumerate(questions):
                choices = tuple(qa["choice"])
                label = None
                if qa.get("answer"):
                    if qa["answer"] not in choices:
                        raise DataFormatError(f"{path}: document {doc_id} question {q}: answer {qa['answer']!r} "
                                              f"is not among the choices {list(choices)}")
                    label = choices.index(qa["answer"])
                submit_id = qa.get("id", len(out))
                out.append(ChoiceExample(f"{doc_id}-{q}", context, qa["question"], choices, label, submit_id))
    return out


# ------------------------------------------------------------------------------------------- chid


def read_chid(task: TaskSpec, path: Path, split: str, answer_path: Path | None) -> list[ChidExample]:
    answers = read_json(answer_path) if answer_path is not None else None
    out, seen = [], {}
    for line, (number, obj) in enumerate(read_jsonl(path)):
        paragraphs = tuple(_need(obj, "content", path, number))
        candidates = tuple(_need(obj, "candidates", path, number))
        blanks = []
        for p, text in enumerate(paragraphs):
            for match in IDIOM_TAG.finditer(text):
                tag = match.group()
                if tag in seen:
                    raise DataFormatError(f"{path}:{number}: placeholder {tag} already on line {seen[tag]}")
                seen[tag] = number
                blanks.append(Blank(tag, p, match.start()))
        if not blanks:
            raise DataFormatError(f"{path}:{number}: no #idiomNNNNNN# placeholder in the content")
        labels = None
        if answers is not None:
            labels = {}
            for blank in blanks:
                if blank.tag not in answers:
                    raise DataFormatError(f"{answer_path}: no answer for {blank.tag} ({path}:{number})")
                value = int(answers[blank.tag])
                if not 0 <= value < len(candidates):
                    raise DataFormatError(f"{answer_path}: answer {value} of {blank.tag} is not a candidate index")
                labels[blank.tag] = value
        out.append(ChidExample(line, paragraphs, candidates, tuple(blanks), labels))
    return out


# -------------------------------------------------------------------------------------------- ner


def read_ner(task: TaskSpec, path: Path, split: str) -> list[NerExample]:
    out = []
    for line, (number, obj) in enumerate(read_jsonl(path)):
        text = _need(obj, "text", path, number)
        spans = None
        if "label" in obj and obj["label"] is not None:
            spans = []
            for kind, entities in obj["label"].items():
                if kind not in task.labels:
                    raise DataFormatError(f"{path}:{number}: entity type {kind!r} is not one of {', '.join(task.labels)}")
                for entity, positions in entities.items():
                    for start, end in positions:
                        if text[start : end + 1] != entity:  # end is inclusive
                            raise DataFormatError(
                                f"{path}:{number}: {kind} {entity!r} is not at [{start}, {end}] "
                                f"(inclusive end; found {text[start:end + 1]!r})")
                        spans.append((kind, start, end))
            spans = tuple(sorted(set(spans), key=lambda s: (s[1], s[2], s[0])))
        out.append(NerExample(f"{split}-{line}", text, spans, obj.get("id", line)))
    return out


# ------------------------------------------------------------------------------------------ splits


def _read(task: TaskSpec, paths: list[Path], split: str) -> list:
    if task.kind == CLASSIFICATION:
        return [e for p in paths for e in read_classification(task, p, split)]
    if task.kind == SPAN_MRC:
        return [e for p in paths for e in read_cmrc(task, p, split)]
    if task.kind == MULTIPLE_CHOICE:
        return read_c3(task, paths, split)
    if task.kind == CHID:
        out = []
        for p in paths:
            answer = p.with_name(p.stem + "_answer.json")
            out += read_chid(task, p, split, answer if answer.is_file() else None)
        return out
    if task.kind == NER:
        return [e for p in paths for e in read_ner(task, p, split)]
    raise ValueError(task.kind)


def split_files(task: TaskSpec, folder: Path, split: str) -> list[Path]:
    names = {"train": task.train_files, "dev": task.dev_files}.get(split)
    if names is None:
        raise UsageError(f"unknown split {split!r}")
    if task.kind == CHID and split != "test":
        for name in names:
            answer = folder / (Path(name).stem + "_answer.json")
            if not answer.is_file():
                raise MissingDataError(f"{task.name}: expected the answer file {answer}; {task.archive_hint()}")
    return [_find_file(task, folder, (name,), split) for name in names]


def load_split(task: TaskSpec, data_dir: str | Path, split: str) -> list:
    """One split: `train`, `dev`, or `test` / `test1.0` / `test1.1` (the test version)."""
    if split.startswith("test"):
        version = split[4:] if split[4:] in task.test_files else next(iter(task.test_files))
        needed = task.test_files.get(version, ("test.json",))[0]
    else:
        needed = {"train": task.train_files, "dev": task.dev_files}.get(split, ("",))[0]
    folder = find_task_dir(task, data_dir, needed)
    if split.startswith("test"):
        version = split[4:]
        if version not in task.test_files:
            version = next(iter(task.test_files)) if version == "" else version
        if version not in task.test_files:
            raise UsageError(f"{task.name} has no test version {version!r} (versions: {', '.join(task.versions)})")
        return _read(task, [_find_file(task, folder, task.test_files[version], "test")], split)
    return _read(task, split_files(task, folder, split), split)


def load_task(task: TaskSpec, data_dir: str | Path, versions: tuple[str, ...] | None = None) -> TaskData:
    """train, dev and every available test version of `task` from `data_dir`.

    The first test version listed in the task table (1.1) is required; older versions are read when
    their file is present.
    """
    folder = find_task_dir(task, data_dir)
    train = [] if task.test_only else _read(task, split_files(task, folder, "train"), "train")
    dev = [] if task.test_only else _read(task, split_files(task, folder, "dev"), "dev")
    tests = {}
    for i, (version, names) in enumerate(task.test_files.items()):
        if versions is not None and len(task.test_files) > 1 and version not in versions:
            continue
        present = [n for n in names if (folder / n).is_file()]
        if not present and i > 0:
            continue  # an optional older test version
        path = _find_file(task, folder, names, "test")
        tests[version] = TestSet(version, path, _read(task, [path], "test"))
    return TaskData(task, folder, train, dev, tests)


# ------------------------------------------------------------------------------ datasets.DatasetDict


def from_datasets(task: TaskSpec, dataset_dict) -> TaskData:
    """Records from a Hugging Face `DatasetDict` of the `clue` dataset (§7): ClassLabel ints are mapped
    back to strings at once, `idx`/`id`/`corpus_id` become submit ids."""
    splits = {"train": "train", "dev": "validation", "test": "test"}
    out = {}
    for ours, theirs in splits.items():
        if theirs not in dataset_dict:
            out[ours] = []
            continue
        ds = dataset_dict[theirs]
        feature = ds.features.get("label") if hasattr(ds, "features") else None
        rows = []
        for i, row in enumerate(ds):
            rows.append(_hf_record(task, ours, i, row, feature))
        out[ours] = [r for r in rows if r is not None]
    version = next(iter(task.test_files))
    return TaskData(task, None, out["train"], out["dev"],
                    {version: TestSet(version, Path(f"<datasets:{task.name}/test>"), out["test"])} if out["test"] else {})


def _hf_record(task: TaskSpec, split: str, i: int, row: dict, feature):
    if task.kind == CLASSIFICATION:
        label = row.get("label")
        if isinstance(label, int):
            label = None if label < 0 else (feature.int2str(label) if hasattr(feature, "int2str") else str(label))
        if label is not None and label in task.drop_labels:
            return None
        submit_id = row.get("corpus_id", row.get("idx", i))
        if task.fields == "single":
            return ClassificationExample(f"{split}-{i}", row["sentence"], None, label, submit_id)
        if task.fields in ("pair", "diagnostics"):
            return ClassificationExample(f"{split}-{i}", row["sentence1"], row["sentence2"], label, submit_id)
        if task.fields == "wsc":
            t = row["target"]
            return ClassificationExample(f"{split}-{i}", row["text"], None, label, submit_id,
                                         ((t["span1_index"], t["span1_text"]), (t["span2_index"], t["span2_text"])))
        if task.fields == "csl":
            keywords = tuple(row["keyword"])
            return ClassificationExample(f"{split}-{i}", "；".join(keywords), row["abst"], label, submit_id,
                                         keywords=keywords)
    if task.kind == SPAN_MRC:
        answers = tuple(Answer(t, _locate(row["context"], t, s))
                        for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"]) if t)
        return MrcExample(row["id"], row["context"], row["question"], answers)
    if task.kind == MULTIPLE_CHOICE:
        choices = tuple(row["choice"])
        label = choices.index(row["answer"]) if row.get("answer") else None
        return ChoiceExample(f"{split}-{i}", tuple(row["context"]), row["question"], choices, label,
                             row["id"] if split == "test" else i)
    if task.kind == CHID:
        paragraphs = tuple(row["content"])
        blanks = tuple(Blank(m.group(), p, m.start()) for p, text in enumerate(paragraphs)
                       for m in IDIOM_TAG.finditer(text))
        answers = None
        if row.get("answers") and row["answers"].get("candidate_id"):
            answers = {b.tag: int(c) for b, c in zip(blanks, row["answers"]["candidate_id"])}
        return ChidExample(row.get("idx", i), paragraphs, tuple(row["candidates"]), blanks, answers)
    raise UsageError(f"{task.name}: reading from datasets is not supported for kind {task.kind}")
