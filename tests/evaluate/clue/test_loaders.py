"""Loaders on the format-exact fixtures: row counts, labels and every quirk of specs/clue.md §2."""

import json
import shutil

import pytest

from evaluate.clue.loaders import (
    DataFormatError, MissingDataError, find_task_dir, from_datasets, load_split, load_task,
)
from evaluate.clue.tasks import TASKS, get_task, parse_tasks, recipe_for

# task: (train, dev, {test version: rows}, folder relative to the fixtures)
COUNTS = {
    "afqmc": (3, 2, {"": 2}, "afqmc_public"),
    "tnews": (3, 2, {"1.1": 3, "1.0": 2}, "tnews_public"),
    "iflytek": (3, 2, {"": 2}, "iflytek_public"),
    "cmnli": (3, 2, {"": 2}, "cmnli_public/cmnli_public"),
    "ocnli": (3, 2, {"": 2}, "ocnli_public"),
    "cluewsc2020": (2, 2, {"1.1": 2, "1.0": 2}, "cluewsc2020_public"),
    "csl": (2, 2, {"": 2}, "csl_public"),
    "cmrc2018": (3, 2, {"": 3}, "cmrc2018_public"),
    "c3": (3, 2, {"1.1": 3, "1.0": 1}, "c3_public"),
    "chid": (2, 1, {"1.1": 2, "1.0": 1}, "chid_public"),
    "cluener": (2, 2, {"": 2}, "cluener_public"),
    "diagnostics": (0, 0, {"": 2}, "clue_diagnostics_public"),
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_row_counts_and_folders(fixtures, name):
    train, dev, tests, folder = COUNTS[name]
    data = load_task(TASKS[name], fixtures)
    assert data.folder == fixtures / folder
    assert (len(data.train), len(data.dev)) == (train, dev)
    assert {v: len(t.examples) for v, t in data.tests.items()} == tests


def test_string_label_codes(fixtures):
    tnews = load_task(TASKS["tnews"], fixtures)
    assert [e.label for e in tnews.train] == ["102", "110", "116"]
    assert [e.label for e in tnews.dev] == ["107", "104"]
    assert all(e.label is None for e in tnews.tests["1.1"].examples)
    assert [e.text_a for e in tnews.tests["1.0"].examples] == ["农民喜迎丰收，粮价稳定", "旅游旺季景区人满为患"]
    assert len(TASKS["tnews"].labels) == 15 and "105" not in TASKS["tnews"].labels and "111" not in TASKS["tnews"].labels
    iflytek = load_task(TASKS["iflytek"], fixtures)
    assert [e.label for e in iflytek.train] == ["0", "1", "118"] and iflytek.dev[0].label == "110"
    labels = [json.loads(line)["label"] for line in (fixtures / "tnews_public/labels.json").read_text().splitlines()]
    assert tuple(labels) == TASKS["tnews"].labels  # model-id order = labels.json order


def test_int_labels_of_fewclue_copies_are_accepted(tmp_path):
    folder = tmp_path / "iflytek"
    folder.mkdir()
    (folder / "dev.json").write_text('{"label": 110, "label_des": "社区超市", "sentence": "送货上门"}\n', encoding="utf-8")
    assert load_split(TASKS["iflytek"], tmp_path, "dev")[0].label == "110"


def test_nli_dash_rows_dropped(fixtures):
    cmnli = load_task(TASKS["cmnli"], fixtures)
    assert [e.label for e in cmnli.dev] == ["neutral", "contradiction"]
    ocnli = load_task(TASKS["ocnli"], fixtures)
    assert [e.label for e in ocnli.dev] == ["entailment", "contradiction"]
    assert [e.uid for e in ocnli.dev] == ["dev-0", "dev-2"]  # raw line kept in the uid
    assert ocnli.dev[0].text_b == "身上至少一件衣服"
    assert TASKS["ocnli"].train_files == ("train.50k.json",)


def test_wsc_spans_and_test_ids(fixtures):
    wsc = load_task(TASKS["cluewsc2020"], fixtures)
    first = wsc.train[0]
    assert first.label == "false" and first.spans == ((5, "床"), (37, "它"))
    test = wsc.tests["1.1"].examples
    (noun_at, noun), (pronoun_at, pronoun) = test[0].spans
    assert (noun, pronoun) == ("老师", "他") and pronoun_at < noun_at  # pronoun before the noun
    assert [e.submit_id for e in test] == [0, 1]  # test lines are keyed "id", not "idx"
    assert [e.submit_id for e in wsc.tests["1.0"].examples] == [1, 2]  # 1.0 test ids start at 1


def test_wsc_span_mismatch_names_file_and_line(fixtures, tmp_path):
    shutil.copytree(fixtures / "cluewsc2020_public", tmp_path / "cluewsc2020_public")
    path = tmp_path / "cluewsc2020_public" / "dev.json"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace('"span1_index": 3', '"span1_index": 4')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"dev\.json:2: span1_text '孩子' is not at span1_index 4"):
        load_task(TASKS["cluewsc2020"], tmp_path)


def test_csl_ids_are_not_line_numbers(fixtures):
    csl = load_task(TASKS["csl"], fixtures)
    assert [e.submit_id for e in csl.tests[""].examples] == [2415, 2416]
    assert csl.train[0].text_a == "网络延迟；测量方法" and csl.train[0].keywords == ("网络延迟", "测量方法")
    assert csl.train[0].text_b.startswith("针对传统")


def test_cmrc_answer_start_minus_one_is_refound(fixtures):
    cmrc = load_task(TASKS["cmrc2018"], fixtures)
    q0, q1 = cmrc.dev
    assert q0.qid == "DEV_0_QUERY_0" and [a.start for a in q0.answers] == [9, 9]
    assert q1.answers[0].text == "三大故事" and q1.answers[0].start == 39
    assert q1.context[39:43] == "三大故事"
    assert [e.qid for e in cmrc.tests[""].examples] == ["TEST_0_QUERY_0", "TEST_0_QUERY_1", "TEST_1_QUERY_0"]
    assert all(e.answers == () for e in cmrc.tests[""].examples)
    assert cmrc.train[0].answers[0].start == 30


def test_c3_variable_choices_and_text_answers(fixtures):
    c3 = load_task(TASKS["c3"], fixtures)
    assert [len(e.choices) for e in c3.train] == [4, 2, 3]  # d-train then m-train
    assert [e.label for e in c3.train] == [1, 0, 0]
    assert c3.train[0].context == ("男：你今天是怎么来的？", "女：我坐地铁来的，路上很顺利。")
    assert [e.label for e in c3.dev] == [1, 1]
    test = c3.tests["1.1"].examples
    assert [e.submit_id for e in test] == ["0", "1", "2"] and all(e.label is None for e in test)
    assert c3.tests["1.1"].path.name == "test1.1.json" and c3.tests["1.0"].path.name == "test1.0.json"


def test_c3_prefers_test11_and_falls_back_to_test_json(fixtures, tmp_path):
    shutil.copytree(fixtures / "c3_public", tmp_path / "c3")
    (tmp_path / "c3" / "test1.1.json").rename(tmp_path / "c3" / "test.json")
    data = load_task(TASKS["c3"], tmp_path)
    assert data.tests["1.1"].path.name == "test.json" and len(data.tests["1.1"].examples) == 3


def test_chid_blanks_answers_and_placeholders(fixtures):
    chid = load_task(TASKS["chid"], fixtures)
    line = chid.dev[0]
    assert [b.tag for b in line.blanks] == ["#idiom577157#", "#idiom577158#", "#idiom577159#"]
    assert [b.paragraph for b in line.blanks] == [0, 1, 1]  # several blanks, across paragraphs
    assert line.answers == {"#idiom577157#": 0, "#idiom577158#": 1, "#idiom577159#": 2}
    assert len(line.candidates) == 10
    test = chid.tests["1.1"].examples
    assert test[0].blanks[0].tag == "#idiom623377#" and test[0].answers is None
    assert sum(len(e.blanks) for e in chid.train) == 4


def test_chid_missing_answer_file(fixtures, tmp_path):
    shutil.copytree(fixtures / "chid_public", tmp_path / "chid_public")
    (tmp_path / "chid_public" / "dev_answer.json").unlink()
    with pytest.raises(MissingDataError, match=r"chid_public/dev_answer\.json"):
        load_task(TASKS["chid"], tmp_path)


def test_cluener_inclusive_ends_and_repeated_entity(fixtures):
    ner = load_task(TASKS["cluener"], fixtures)
    assert ner.train[0].spans == (("company", 0, 3), ("name", 9, 11))
    twice = ner.dev[1]
    assert [s for s in twice.spans if s[0] == "name"] == [("name", 0, 1), ("name", 7, 8)]
    assert all(twice.text[s:e + 1] == "张三" for _, s, e in twice.spans if _ == "name")
    assert ner.dev[0].spans[:2] == (("organization", 0, 3), ("organization", 5, 10))  # nested/overlapping strings
    assert ner.tests[""].examples[1].spans is None


def test_cluener_offset_error(tmp_path):
    (tmp_path / "cluener").mkdir()
    (tmp_path / "cluener" / "train.json").write_text(
        '{"text": "李四去了腾讯公司。", "label": {"company": {"腾讯公司": [[4, 8]]}}}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"train\.json:1: company '腾讯公司' is not at \[4, 8\] \(inclusive end"):
        load_split(TASKS["cluener"], tmp_path, "train")


def test_unknown_label_and_bad_json_name_the_line(tmp_path):
    (tmp_path / "afqmc").mkdir()
    path = tmp_path / "afqmc" / "dev.json"
    path.write_text('{"sentence1": "a", "sentence2": "b", "label": "0"}\n{"sentence1": "a", "sentence2": "b", "label": "2"}\n')
    with pytest.raises(DataFormatError, match=r"dev\.json:2: label '2' is not a afqmc label"):
        load_split(TASKS["afqmc"], tmp_path, "dev")
    path.write_text('{"sentence1": "a", "sentence2": "b", "label": "0"}\n{not json\n')
    with pytest.raises(DataFormatError, match=r"dev\.json:2: not a JSON object"):
        load_split(TASKS["afqmc"], tmp_path, "dev")


def test_missing_data_names_path_and_archive(tmp_path):
    with pytest.raises(MissingDataError) as error:
        find_task_dir(TASKS["cmnli"], tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cmnli_public" / "train.json") in message
    assert "https://storage.googleapis.com/cluebenchmark/tasks/cmnli_public.zip" in message


def test_optional_old_test_version_and_required_new_one(fixtures, tmp_path):
    shutil.copytree(fixtures / "tnews_public", tmp_path / "tnews")
    (tmp_path / "tnews" / "test1.0.json").unlink()
    assert list(load_task(TASKS["tnews"], tmp_path).tests) == ["1.1"]
    (tmp_path / "tnews" / "test.json").unlink()
    with pytest.raises(MissingDataError, match=r"tnews/test\.json"):
        load_task(TASKS["tnews"], tmp_path)
    assert [e.text_a for e in load_split(TASKS["tnews"], fixtures, "test1.0")][0] == "农民喜迎丰收，粮价稳定"


def test_datasets_dict_maps_classlabels_back_to_strings():
    import datasets
    features = datasets.Features({
        "idx": datasets.Value("int32"), "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["true", "false"]),  # HF: 0 = true
        "target": {"span1_text": datasets.Value("string"), "span2_text": datasets.Value("string"),
                   "span1_index": datasets.Value("int32"), "span2_index": datasets.Value("int32")},
    })
    row = {"idx": 0, "text": "小明说他来了", "label": 0,
           "target": {"span1_text": "小明", "span2_text": "他", "span1_index": 0, "span2_index": 3}}
    test_row = {**row, "idx": 7, "label": -1}
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([row], features=features),
        "validation": datasets.Dataset.from_list([{**row, "label": 1}], features=features),
        "test": datasets.Dataset.from_list([test_row], features=features),
    })
    data = from_datasets(TASKS["cluewsc2020"], dd)
    assert data.train[0].label == "true" and data.dev[0].label == "false"
    assert data.tests["1.1"].examples[0].label is None and data.tests["1.1"].examples[0].submit_id == 7
    assert data.train[0].spans == ((0, "小明"), (3, "他"))


def test_task_table():
    assert len([t for t in TASKS.values() if not t.extra and not t.test_only]) == 11
    assert get_task("wsc").name == "cluewsc2020"
    with pytest.raises(ValueError, match=r"unknown CLUE task 'tnew'; did you mean tnews"):
        get_task("tnew")
    assert [t.name for t in parse_tasks("afqmc,tnews,afqmc")] == ["afqmc", "tnews"]
    assert recipe_for(TASKS["cluewsc2020"]).epochs == 30
    assert recipe_for(TASKS["cmrc2018"]).max_length == 512 and recipe_for(TASKS["cmrc2018"], "fast").max_length == 256
    assert recipe_for(TASKS["afqmc"], lr=1e-4).lr == 1e-4


def test_data_dir_may_be_the_task_folder_itself(fixtures):
    assert find_task_dir(TASKS["afqmc"], fixtures / "afqmc_public") == fixtures / "afqmc_public"
    with pytest.raises(MissingDataError):  # another task's folder is not mistaken for tnews
        find_task_dir(TASKS["tnews"], fixtures / "afqmc_public")
