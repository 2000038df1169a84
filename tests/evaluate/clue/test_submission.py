"""Predict files: names, formats, ids, line order; the zip's layout; the writer's validation."""

import json
import zipfile

import pytest

from evaluate.clue.loaders import load_task
from evaluate.clue.submission import (
    SubmissionError, format_predictions, predict_name, read_predict_file, validate, write_predict_file, write_zip,
)
from evaluate.clue.tasks import TASKS


@pytest.mark.parametrize("task, version, name", [
    ("afqmc", "", "afqmc_predict.json"),
    ("tnews", "1.1", "tnews11_predict.json"),
    ("tnews", "1.0", "tnews10_predict.json"),
    ("iflytek", "", "iflytek_predict.json"),
    ("cmnli", "", "cmnli_predict.json"),
    ("ocnli", "", "ocnli_50k_predict.json"),
    ("cluewsc2020", "1.1", "cluewsc11_predict.json"),
    ("cluewsc2020", "1.0", "cluewsc10_predict.json"),
    ("csl", "", "csl_predict.json"),
    ("cmrc2018", "", "cmrc2018_predict.json"),
    ("c3", "1.1", "c311_predict.json"),
    ("c3", "1.0", "c310_predict.json"),
    ("chid", "1.1", "chid11_predict.json"),
    ("chid", "1.0", "chid10_predict.json"),
    ("cluener", "", "cluener_predict.json"),
])
def test_predict_names(task, version, name):
    assert predict_name(TASKS[task], version) == name


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_classification_files_keep_ids_order_and_string_labels(fixtures, tmp_path):
    csl = load_task(TASKS["csl"], fixtures)
    path = write_predict_file(TASKS["csl"], csl.tests[""], ["1", "0"], tmp_path)
    assert path.name == "csl_predict.json"
    assert _lines(path) == [{"id": 2415, "label": "1"}, {"id": 2416, "label": "0"}]
    tnews = load_task(TASKS["tnews"], fixtures)
    path = write_predict_file(TASKS["tnews"], tnews.tests["1.1"], ["103", "106", "109"], tmp_path)
    assert path.name == "tnews11_predict.json"
    assert _lines(path) == [{"id": 0, "label": "103"}, {"id": 1, "label": "106"}, {"id": 2, "label": "109"}]
    assert "\\u" not in path.read_text(encoding="utf-8")  # ensure_ascii=False
    wsc = load_task(TASKS["cluewsc2020"], fixtures)
    path = write_predict_file(TASKS["cluewsc2020"], wsc.tests["1.0"], ["true", "false"], tmp_path)
    assert path.name == "cluewsc10_predict.json" and _lines(path) == [{"id": 1, "label": "true"}, {"id": 2, "label": "false"}]
    ocnli = load_task(TASKS["ocnli"], fixtures)
    path = write_predict_file(TASKS["ocnli"], ocnli.tests[""], ["neutral", "contradiction"], tmp_path)
    assert _lines(path) == [{"id": 0, "label": "neutral"}, {"id": 1, "label": "contradiction"}]


def test_c3_file(fixtures, tmp_path):
    c3 = load_task(TASKS["c3"], fixtures)
    path = write_predict_file(TASKS["c3"], c3.tests["1.1"], [1, 0, 2], tmp_path)
    assert path.name == "c311_predict.json"
    assert _lines(path) == [{"id": "0", "label": 1}, {"id": "1", "label": 0}, {"id": "2", "label": 2}]


def test_cmrc_and_chid_files_are_one_object(fixtures, tmp_path):
    cmrc = load_task(TASKS["cmrc2018"], fixtures)
    answers = {"TEST_0_QUERY_0": "山海关", "TEST_0_QUERY_1": "嘉峪关", "TEST_1_QUERY_0": "第二"}
    path = write_predict_file(TASKS["cmrc2018"], cmrc.tests[""], answers, tmp_path)
    assert json.loads(path.read_text(encoding="utf-8")) == answers
    chid = load_task(TASKS["chid"], fixtures)
    picks = {"#idiom623377#": 0, "#idiom623378#": 1, "#idiom623379#": 0}
    path = write_predict_file(TASKS["chid"], chid.tests["1.1"], picks, tmp_path)
    assert path.name == "chid11_predict.json" and json.loads(path.read_text()) == picks
    assert read_predict_file(TASKS["chid"], path) == picks


def test_cluener_file(fixtures, tmp_path):
    ner = load_task(TASKS["cluener"], fixtures)
    spans = [[("address", 0, 1), ("address", 11, 13)], [("name", 0, 1), ("company", 4, 7)]]
    path = write_predict_file(TASKS["cluener"], ner.tests[""], spans, tmp_path)
    assert _lines(path) == [
        {"id": 0, "label": {"address": {"四川": [[0, 1]], "丹棱县": [[11, 13]]}}},
        {"id": 1, "label": {"company": {"腾讯公司": [[4, 7]]}, "name": {"李四": [[0, 1]]}}},
    ]


def test_zip_layout(fixtures, tmp_path):
    afqmc = load_task(TASKS["afqmc"], fixtures)
    chid = load_task(TASKS["chid"], fixtures)
    files = [write_predict_file(TASKS["afqmc"], afqmc.tests[""], ["1", "0"], tmp_path / "pred"),
             write_predict_file(TASKS["chid"], chid.tests["1.0"], {"#idiom577200#": 0}, tmp_path / "pred")]
    zip_path = write_zip(files, tmp_path / "out" / "submit_myteam_20240601.zip")
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["afqmc_predict.json", "chid10_predict.json"]  # at the root, no folders
        assert archive.read("afqmc_predict.json") == files[0].read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["submit_myteam_20240601.zip"]  # no temporaries
    with pytest.raises(SubmissionError, match="share a name"):
        write_zip([files[0], files[0]], tmp_path / "x.zip")


def test_line_count_and_label_set_errors_leave_nothing(fixtures, tmp_path):
    tnews = load_task(TASKS["tnews"], fixtures)
    with pytest.raises(SubmissionError, match=r"2 predictions for 3 test lines"):
        write_predict_file(TASKS["tnews"], tnews.tests["1.1"], ["103", "106"], tmp_path)
    with pytest.raises(SubmissionError, match=r"tnews11_predict\.json:2: label '105' is not a tnews label"):
        write_predict_file(TASKS["tnews"], tnews.tests["1.1"], ["103", "105", "109"], tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_validation_of_ids_and_order(fixtures):
    csl = load_task(TASKS["csl"], fixtures)
    swapped = [{"id": 2416, "label": "1"}, {"id": 2415, "label": "0"}]
    with pytest.raises(SubmissionError, match=r"p:1: id 2416 but test line 1 has id 2415"):
        validate(TASKS["csl"], csl.tests[""], swapped, where="p")
    validate(TASKS["csl"], csl.tests[""], swapped, where="p", check_ids=False)  # order is what the board reads
    with pytest.raises(SubmissionError, match=r"3 lines but .* has 2 test lines"):
        validate(TASKS["csl"], csl.tests[""], swapped + swapped[:1])


def test_chid_uniqueness_and_keys(fixtures):
    chid = load_task(TASKS["chid"], fixtures)
    test = chid.tests["1.1"]
    with pytest.raises(SubmissionError, match=r"candidate 1 is used for both #idiom623377# and #idiom623378#"):
        validate(TASKS["chid"], test, {"#idiom623377#": 1, "#idiom623378#": 1, "#idiom623379#": 1})
    with pytest.raises(SubmissionError, match=r"1 missing \(e\.g\. \['#idiom623379#'\]\)"):
        validate(TASKS["chid"], test, {"#idiom623377#": 1, "#idiom623378#": 2})
    with pytest.raises(SubmissionError, match=r"#idiom623379# → 10 is not a candidate index"):
        validate(TASKS["chid"], test, {"#idiom623377#": 1, "#idiom623378#": 2, "#idiom623379#": 10})
    # the same candidate on different lines is fine
    validate(TASKS["chid"], test, {"#idiom623377#": 1, "#idiom623378#": 2, "#idiom623379#": 1})


def test_cluener_offsets_validated(fixtures, tmp_path):
    ner = load_task(TASKS["cluener"], fixtures)
    with pytest.raises(SubmissionError, match=r"cluener_predict\.json:2: company '腾讯公司' is not at \[4, 8\]"):
        write_predict_file(TASKS["cluener"], ner.tests[""],
                           [{}, {"company": {"腾讯公司": [[4, 8]]}}], tmp_path)
    with pytest.raises(SubmissionError, match=r"entity type 'person' is not one of address"):
        validate(TASKS["cluener"], ner.tests[""], [{"id": 0, "label": {}}, {"id": 1, "label": {"person": {}}}])


def test_cmrc_keys_validated(fixtures):
    cmrc = load_task(TASKS["cmrc2018"], fixtures)
    with pytest.raises(SubmissionError, match=r"1 missing .*TEST_1_QUERY_0.*1 unknown .*TEST_9"):
        validate(TASKS["cmrc2018"], cmrc.tests[""], {"TEST_0_QUERY_0": "a", "TEST_0_QUERY_1": "b", "TEST_9": "c"})
    with pytest.raises(SubmissionError, match="one JSON object"):
        validate(TASKS["cmrc2018"], cmrc.tests[""], [])


def test_c3_label_range(fixtures):
    c3 = load_task(TASKS["c3"], fixtures)
    with pytest.raises(SubmissionError, match=r":2: label 2 is not a choice index 0\.\.1"):
        format_and_validate = format_predictions(TASKS["c3"], c3.tests["1.1"], [0, 2, 0])
        validate(TASKS["c3"], c3.tests["1.1"], format_and_validate)
