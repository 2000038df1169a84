"""Leaderboard predict files and the submission zip (specs/clue.md §4).

Line-format tasks write one JSON object per test line, in test-line order, `{"id": <the line's own
id, else its 0-based index>, "label": ...}`; cmrc2018 and chid write one JSON object. Every file is
validated before it is written (line count, label set, ChID keys/ranges/uniqueness per line, CLUENER
offsets) and written atomically (temporary file + rename), so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import EvaluateError
from .loaders import TestSet, read_json, read_jsonl
from .metrics import spans_to_label
from .tasks import CHID, CLASSIFICATION, MULTIPLE_CHOICE, NER, SPAN_MRC, TaskSpec


class SubmissionError(EvaluateError, ValueError):
    """A predict file that the leaderboard would reject or mis-score; the message says why and where."""


# ------------------------------------------------------------------------------------- atomic I/O


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_zip(files: Sequence[str | Path], zip_path: str | Path) -> Path:
    """Zip the predict files at the archive root (no folders), atomically."""
    zip_path = Path(zip_path)
    names = [Path(f).name for f in files]
    if len(set(names)) != len(names):
        raise SubmissionError(f"two predict files share a name: {sorted(names)}")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".tmp", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for f in sorted(files, key=lambda p: Path(p).name):
                archive.write(f, arcname=Path(f).name)
        os.replace(tmp, zip_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return zip_path


# ------------------------------------------------------------------------------------------ names


def predict_name(task: TaskSpec, version: str) -> str:
    if version not in task.predict_names:
        raise SubmissionError(f"{task.name} has no test version {version!r} (versions: {', '.join(task.predict_names)})")
    return task.predict_names[version]


# ------------------------------------------------------------------------------------- formatting


def format_predictions(task: TaskSpec, test: TestSet, predictions) -> list[dict] | dict:
    """The predict-file content: a list of line objects, or one object for cmrc2018 / chid.

    predictions: classification → label strings; c3 → choice indices; ner → (type, start, end incl.)
    triples per line (or `label` dicts); cmrc2018 → {qid: text}; chid → {tag: index}.
    """
    examples = test.examples
    if task.kind in (SPAN_MRC, CHID):
        return {str(k): (int(v) if task.kind == CHID else str(v)) for k, v in dict(predictions).items()}
    predictions = list(predictions)
    if len(predictions) != len(examples):
        raise SubmissionError(f"{task.name}: {len(predictions)} predictions for {len(examples)} test lines in {test.path}")
    if task.kind == CLASSIFICATION:
        return [{"id": e.submit_id, "label": str(p)} for e, p in zip(examples, predictions)]
    if task.kind == MULTIPLE_CHOICE:
        return [{"id": e.submit_id, "label": int(p)} for e, p in zip(examples, predictions)]
    if task.kind == NER:
        return [{"id": e.submit_id, "label": p if isinstance(p, dict) else spans_to_label(e.text, p)}
                for e, p in zip(examples, predictions)]
    raise ValueError(task.kind)


def validate(task: TaskSpec, test: TestSet, content, where: str = "predictions", check_ids: bool = True) -> None:
    """Raise SubmissionError unless `content` is a predict file the leaderboard accepts for `test`.

    `check_ids`: each line's `id` must be its test line's id (the writer's own check; the leaderboard
    itself reads labels by line order, so `clue score` does not insist on ids)."""
    examples = test.examples
    if task.kind == SPAN_MRC:
        if not isinstance(content, dict):
            raise SubmissionError(f"{where}: cmrc2018 predictions must be one JSON object {{question id: answer}}")
        expected = {e.qid for e in examples}
        missing, extra = expected - set(content), set(content) - expected
        if missing or extra:
            raise SubmissionError(f"{where}: question ids differ from {test.path}: "
                                  f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} unknown (e.g. {sorted(extra)[:3]})")
        for qid, text in content.items():
            if not isinstance(text, str):
                raise SubmissionError(f"{where}: answer of {qid} is {type(text).__name__}, not a string")
        return
    if task.kind == CHID:
        if not isinstance(content, dict):
            raise SubmissionError(f"{where}: chid predictions must be one JSON object {{\"#idiomNNNNNN#\": index}}")
        expected = {b.tag for e in examples for b in e.blanks}
        missing, extra = expected - set(content), set(content) - expected
        if missing or extra:
            raise SubmissionError(f"{where}: placeholders differ from {test.path}: "
                                  f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} unknown (e.g. {sorted(extra)[:3]})")
        for e in examples:
            used = {}
            for b in e.blanks:
                value = content[b.tag]
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(e.candidates):
                    raise SubmissionError(f"{where}: {b.tag} → {value!r} is not a candidate index 0..{len(e.candidates) - 1}")
                if value in used:
                    raise SubmissionError(f"{where}: candidate {value} is used for both {used[value]} and {b.tag} "
                                          f"(line {e.line + 1} of {test.path}); each candidate answers at most one blank")
                used[value] = b.tag
        return
    if not isinstance(content, list):
        raise SubmissionError(f"{where}: {task.name} predictions must be JSON lines, one per test line")
    if len(content) != len(examples):
        raise SubmissionError(f"{where}: {len(content)} lines but {test.path} has {len(examples)} test lines")
    for number, (line, e) in enumerate(zip(content, examples), 1):
        if not isinstance(line, dict) or "label" not in line:
            raise SubmissionError(f"{where}:{number}: expected an object with a 'label'")
        if check_ids and "id" in line and str(line["id"]) != str(e.submit_id):
            raise SubmissionError(f"{where}:{number}: id {line['id']!r} but test line {number} has id {e.submit_id!r} "
                                  "(predictions must follow the test file's line order)")
        label = line["label"]
        if task.kind == CLASSIFICATION:
            if str(label) not in task.labels:
                raise SubmissionError(f"{where}:{number}: label {label!r} is not a {task.name} label")
        elif task.kind == MULTIPLE_CHOICE:
            if not str(label).isdigit() or not 0 <= int(label) < len(e.choices):
                raise SubmissionError(f"{where}:{number}: label {label!r} is not a choice index 0..{len(e.choices) - 1}")
        elif task.kind == NER:
            if not isinstance(label, dict):
                raise SubmissionError(f"{where}:{number}: label must be {{type: {{entity: [[start, end]]}}}}")
            for kind, entities in label.items():
                if kind not in task.labels:
                    raise SubmissionError(f"{where}:{number}: entity type {kind!r} is not one of {', '.join(task.labels)}")
                for entity, positions in entities.items():
                    for pair in positions:
                        if not (isinstance(pair, list) and len(pair) == 2):
                            raise SubmissionError(f"{where}:{number}: {kind} {entity!r}: offsets must be [start, end]")
                        start, end = pair
                        if e.text[start : end + 1] != entity:
                            raise SubmissionError(
                                f"{where}:{number}: {kind} {entity!r} is not at [{start}, {end}] of the text "
                                f"(inclusive end; found {e.text[start:end + 1]!r})")


def dumps(task: TaskSpec, content) -> str:
    if isinstance(content, dict):
        return json.dumps(content, ensure_ascii=False) + "\n"
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in content)


def write_predict_file(task: TaskSpec, test: TestSet, predictions, out_dir: str | Path) -> Path:
    """Format, validate and atomically write `task`'s predict file for `test`; returns its path."""
    path = Path(out_dir) / predict_name(task, test.version)
    content = format_predictions(task, test, predictions)
    validate(task, test, content, where=str(path))
    return atomic_write_text(path, dumps(task, content))


def read_predict_file(task: TaskSpec, path: str | Path):
    """A predict file back as written: one object (cmrc2018/chid) or the list of line objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    if task.kind in (SPAN_MRC, CHID):
        return read_json(path)
    return [obj for _, obj in read_jsonl(path)]
