"""`python -m evaluate clue`: the dry run end to end, `clue score`, errors, --random-init, the extra tasks."""

import json
import zipfile

import pytest
import torch

import zoo
from evaluate.__main__ import main as evaluate_main
from evaluate.clue import extra_tasks
from evaluate.clue.cli import load_model, main
from evaluate.clue.loaders import load_split, load_task
from evaluate.clue.runners import make_runner
from evaluate.clue.submission import read_predict_file, validate
from evaluate.clue.tasks import CLUE_TASKS, TASKS, recipe_for
from zoo.corpus import TaggedSentence

PNG = b"\x89PNG\r\n\x1a\n"
EXPECTED_ZIP = sorted([
    "afqmc_predict.json", "tnews11_predict.json", "tnews10_predict.json", "iflytek_predict.json", "cmnli_predict.json",
    "ocnli_50k_predict.json", "cluewsc11_predict.json", "cluewsc10_predict.json", "csl_predict.json",
    "cmrc2018_predict.json", "c311_predict.json", "c310_predict.json", "chid11_predict.json", "chid10_predict.json",
    "cluener_predict.json", "diagnostics_predict.json",
])


def test_dry_run_every_task_end_to_end(fixtures, tiny_folder, tmp_path, capsys):
    # fine-tuned with the model's default dropout, as users run it: that path once crashed in the first
    # backward pass of a classification task (issue 16)
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["hidden_dropout_prob"] > 0 and config["attention_probs_dropout_prob"] > 0
    out = tmp_path / "run"
    rc = evaluate_main(["clue", "--model", str(tiny_folder), "--data-dir", str(fixtures), "--dry-run",
                        "--output", str(out), "--submission", "submit_zoo_20240601.zip", "--no-progress", "--no-bf16"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == list(CLUE_TASKS) + ["diagnostics"]
    for name in CLUE_TASKS:
        entry = results["tasks"][name]
        assert entry["steps"] >= 1 and 0.0 <= entry["dev"]["score"] <= 100.0 and entry["device"] == "cpu"
    assert results["tasks"]["cmrc2018"]["dev"].keys() >= {"em", "f1"}
    assert results["tasks"]["cluener"]["dev"].keys() >= {"macro_f1", "micro_f1", "per_type"}
    assert results["tasks"]["diagnostics"]["predicted_with"] == "ocnli"
    with zipfile.ZipFile(out / "submit_zoo_20240601.zip") as archive:
        assert sorted(archive.namelist()) == EXPECTED_ZIP
    # every file in the zip is a valid submission for its test file
    for name in CLUE_TASKS:
        data = load_task(TASKS[name], fixtures)
        for version, test in data.tests.items():
            path = out / "predictions" / TASKS[name].predict_names[version]
            validate(TASKS[name], test, read_predict_file(TASKS[name], path), where=str(path))
    assert (out / "results.png").read_bytes()[:8] == PNG
    table = (out / "results.md").read_text()
    assert "| cmrc2018 | EM (F1) |" in table and "RoFormerV2 small (test, blog 8998)" in table
    assert "| tnews | acc |" in capsys.readouterr().out


def test_dry_run_without_data_dir_uses_builtin_samples(tiny_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["--model", str(tiny_folder), "--dry-run", "--tasks", "chid,c3", "--output", str(out),
                 "--no-progress", "--no-bf16"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == ["chid", "c3"]
    assert (out / "dry-run-data" / "chid_public" / "train_answer.json").is_file()
    with zipfile.ZipFile(results["submission"]) as archive:
        assert sorted(archive.namelist()) == ["c310_predict.json", "c311_predict.json", "chid10_predict.json", "chid11_predict.json"]


def test_missing_data_error_names_file_and_archive(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--model", str(tiny_folder), "--data-dir", str(tmp_path / "clue"), "--tasks", "afqmc,cmnli",
               "--output", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"expected train.json at {tmp_path / 'clue' / 'afqmc_public' / 'train.json'}" in err
    assert "https://storage.googleapis.com/cluebenchmark/tasks/afqmc_public.zip" in err
    assert not out.exists()  # nothing written


def test_score_command(fixtures, tmp_path, capsys):
    # cmnli dev: predictions for every line of the file, the '-' row included, in line order
    lines = [{"id": 0, "label": "neutral"}, {"id": 1, "label": "entailment"}, {"id": 2, "label": "neutral"}]
    path = tmp_path / "cmnli_predict.json"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["score", "--task", "cmnli", "--data-dir", str(fixtures), "--split", "dev", "--predictions", str(path),
                 "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["score"] == 50.0
    # cmrc2018 dev: official EM/F1
    cmrc = tmp_path / "cmrc2018_predict.json"
    cmrc.write_text(json.dumps({"DEV_0_QUERY_0": "光荣和ω-force", "DEV_0_QUERY_1": "三大"}, ensure_ascii=False))
    capsys.readouterr()
    assert main(["score", "--task", "cmrc2018", "--data-dir", str(fixtures), "--predictions", str(cmrc)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["em"] == pytest.approx(50.0) and scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    # cluener dev: macro over the 10 types and span micro F1
    ner = tmp_path / "cluener_predict.json"
    ner.write_text(json.dumps({"label": {"name": {"北京": [[0, 1]]}}}, ensure_ascii=False) + "\n"
                   + json.dumps({"label": {"name": {"张三": [[0, 1], [7, 8]]}, "address": {"上海": [[3, 4]]}}}, ensure_ascii=False) + "\n")
    assert main(["score", "--task", "cluener", "--data-dir", str(fixtures), "--predictions", str(ner)]) == 0
    scores = json.loads(capsys.readouterr().out)
    # name: FP 1 (line 1), TP 1; address: TP 1, FN 1; organization: FN 2 → macro (2/3 + 2/3 + 0) / 10
    assert scores["score"] == pytest.approx(100 * (2 / 3 + 2 / 3) / 10)
    assert scores["micro_f1"] == pytest.approx(100 * 2 * (3 / 4) * (3 / 6) / (3 / 4 + 3 / 6))
    # a file with the wrong number of lines is refused with the reason
    path.write_text(json.dumps(lines[0]) + "\n")
    assert main(["score", "--task", "cmnli", "--data-dir", str(fixtures), "--predictions", str(path)]) == 2
    assert "1 lines but" in capsys.readouterr().err


def test_random_init_keeps_the_architecture_not_the_weights(tiny_folder, tokenizer):
    task = TASKS["afqmc"]
    runner = make_runner(task, tokenizer, recipe_for(task))
    pretrained = load_model(str(tiny_folder), task, runner, random_init=False, seed=0)
    fresh = load_model(str(tiny_folder), task, runner, random_init=True, seed=0)
    assert type(pretrained) is type(fresh) and pretrained.config.hidden_size == fresh.config.hidden_size == 32
    key = "encoder.embeddings.word_embeddings.weight"
    reference = zoo.from_pretrained(str(tiny_folder), task="base").state_dict()
    assert torch.equal(pretrained.state_dict()[key], reference[key.removeprefix("encoder.")])
    assert not torch.equal(fresh.state_dict()[key], pretrained.state_dict()[key])


def test_people_daily_to_cluener_format():
    sentence = TaggedSentence(
        ("新华社", "记者", "兰", "红光", "摄", "，", "北京", "上海", "江", "泽民", "。", "中国", "人民"),
        ("nt", "n", "nr", "nr", "Vg", "w", "ns", "ns", "nr", "nr", "w", "ns", "n"))
    pieces = extra_tasks.ner_pieces(sentence)
    assert pieces[0] == {"text": "新华社记者兰红光摄，北京上海江泽民。", "label": {
        "organization": {"新华社": [[0, 2]]}, "person": {"兰红光": [[5, 7]], "江泽民": [[14, 16]]},
        "place": {"北京": [[10, 11]], "上海": [[12, 13]]}}}  # consecutive nr tokens form one person
    assert pieces[1] == {"text": "中国人民", "label": {"place": {"中国": [[0, 1]]}}}
    short = extra_tasks.ner_pieces(sentence, max_chars=8)
    assert [p["text"] for p in short][:2] == ["新华社记者兰红光", "摄，北京上海"]  # cut at word boundaries


def test_extra_tasks_are_deterministic_and_load_as_clue_tasks(tmp_path):
    first = extra_tasks.sentiment_splits()
    assert first == extra_tasks.sentiment_splits()
    assert len(first["dev"]) == 1000 and len(first["test"]) == 878  # test = the corpus' held-out reviews
    assert {row["label"] for row in first["test"]} == {"0", "1"} and first["test"][0]["id"] == 0
    folder = extra_tasks.materialize("sentiment", tmp_path)
    data = load_task(TASKS["sentiment"], tmp_path)
    from zoo.corpus import reviews

    assert folder == tmp_path / "sentiment"
    assert len(data.train) + len(data.dev) + len(data.tests[""].examples) == len(reviews())
    assert all(e.label in ("0", "1") for e in data.tests[""].examples)
    assert json.loads((folder / "SOURCE.json").read_text())["counts"]["test"] == 878
    assert len(load_split(TASKS["sentiment"], tmp_path, "test")) == 878


def test_python_entry_point_takes_a_datasets_dict(tiny_folder, tmp_path):
    import datasets

    from evaluate.clue.cli import run_clue

    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["0", "1"]), "idx": datasets.Value("int32")})
    rows = [{"sentence1": "花呗怎么还", "sentence2": "花呗还款", "label": 1, "idx": 0},
            {"sentence1": "借呗利息", "sentence2": "余额宝收益", "label": 0, "idx": 1}]
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(rows, features=features),
        "validation": datasets.Dataset.from_list(rows, features=features),
        "test": datasets.Dataset.from_list([{**r, "label": -1, "idx": 10 + i} for i, r in enumerate(rows)], features=features),
    })
    results = run_clue(str(tiny_folder), datasets={"afqmc": dd}, output=str(tmp_path / "run"), dry_run=True,
                       progress=False, bf16=False)
    assert list(results["tasks"]) == ["afqmc"] and results["tasks"]["afqmc"]["dev"]["n"] == 2
    lines = (tmp_path / "run" / "predictions" / "afqmc_predict.json").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [10, 11]


def test_compare_runs_side_by_side(tmp_path, capsys):
    def results(model, random_init, dev, test):
        return {"model": model, "random_init": random_init, "tasks": {
            "sentiment": {"dev": {"score": dev}, "test": {"score": test}, "steps": 10, "seconds": 5.0},
            "pd-ner": {"dev": {"score": dev / 2, "micro_f1": 1.0}, "test": {"score": test / 2, "micro_f1": 40.0},
                       "steps": 10, "seconds": 6.0}}}
    for name, r in {"a": results("ckpt", False, 80.0, 82.0), "b": results("ckpt", True, 70.0, 71.0)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    assert main(["compare", f"pretrained={tmp_path / 'a'}", f"random={tmp_path / 'b'}", "--output", str(tmp_path / "c")]) == 0
    table = (tmp_path / "c" / "compare.md").read_text()
    assert "| sentiment | acc | pretrained | 80.00 | 82.00 | 10 | 5s |" in table
    assert "| pd-ner | macro F1 (micro) | random | 35.00 | 35.50 (micro 40.00) | 10 | 6s |" in table
    assert (tmp_path / "c" / "compare.png").read_bytes()[:8] == PNG
    assert main(["compare", f"x={tmp_path / 'missing'}", "--output", str(tmp_path / "d")]) == 2
    assert "x: no results.json in" in capsys.readouterr().err
