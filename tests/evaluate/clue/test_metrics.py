"""Metrics against hand-computed values (specs/clue.md §3)."""

import numpy as np
import pytest

from evaluate.clue import decoding
from evaluate.clue.loaders import Blank, ChidExample
from evaluate.clue.metrics import (
    CMRC_PUNCTUATION, accuracy, chid_accuracy, cluener_scores, cmrc2018_scores, cmrc_em, cmrc_f1,
    leaderboard_averages, mixed_segmentation, remove_punctuation, score_task, span_micro_f1,
)
from evaluate.clue.tasks import TASKS


def test_accuracy():
    assert accuracy(["1", "0", "1", "1"], ["1", "1", "1", "0"]) == 50.0
    with pytest.raises(ValueError, match="3 predictions for 2 gold labels"):
        accuracy([1, 2, 3], [1, 2])


def test_cmrc_punctuation_set_is_the_official_one():
    assert len(CMRC_PUNCTUATION) == 33 and "……" in CMRC_PUNCTUATION
    for kept in ",.?!()‘":  # ASCII , . ? ! ( ) and ‘ are not in the official list
        assert remove_punctuation(f"a{kept}b") == f"a{kept}b"
    assert remove_punctuation(" 《战国无双3》：Ω-Force ") == "战国无双3ω" + "force"


def test_mixed_segmentation():
    # CJK chars are single tokens; "-" is removed before buffering, so "ω-force" → "ωforce"
    assert mixed_segmentation("光荣和ω-force开发") == ["光", "荣", "和", "ωforce", "开", "发"]
    assert mixed_segmentation("你好,世界") == ["你", "好", ",", "世", "界"]
    assert mixed_segmentation("北京 2008 奥运") == ["北", "京", "2008", "奥", "运"]


@pytest.mark.parametrize("answers, prediction, em, f1", [
    (["光荣和ω-force"], "光荣和ω-force", 1.0, 1.0),
    (["《战国无双3》"], "战国无双3", 1.0, 1.0),  # 《 》 are removed before comparing
    (["北京大学"], "北京", 0.0, 2 / 3),  # lcs 2: P = 1, R = 1/2
    (["ω-force开发"], "force开发", 0.0, 2 / 3),  # [ωforce, 开, 发] vs [force, 开, 发]: lcs 2
    (["北京大学", "北京"], "北京", 1.0, 1.0),  # max over golds
    (["你好,世界"], "你好世界", 0.0, 2 * 0.5 * 0.4 / 0.9),  # ASCII comma kept: lcs 2, P 2/4, R 2/5
    (["三大故事"], "武田信玄", 0.0, 0.0),
    (["北京"], "北京北京", 0.0, 2 * 1 * 0.5 / 1.5),  # longest common *substring*
])
def test_cmrc_em_f1_examples(answers, prediction, em, f1):
    assert cmrc_em(answers, prediction) == em
    assert cmrc_f1(answers, prediction) == pytest.approx(f1)


def test_cmrc_scores_count_unanswered_as_zero():
    golds = {"Q0": ["北京大学"], "Q1": ["三大故事"], "Q2": ["光荣"]}
    scores = cmrc2018_scores({"Q0": "北京", "Q1": "三大故事"}, golds)
    assert scores["em"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1) / 3)
    assert scores["average"] == pytest.approx((scores["em"] + scores["f1"]) / 2)


def test_cluener_macro_vs_micro():
    gold = [{"name": {"张三": [[0, 1], [7, 8]]}, "address": {"上海": [[3, 4]]}},
            {"name": {"李四": [[0, 1]]}}]
    pred = [{"name": {"张三": [[0, 1]]}},  # one of the two occurrences, address missed
            {"name": {"李四": [[0, 1]], "王五": [[3, 4]]}}]  # one false positive
    macro = cluener_scores(pred, gold, ["name", "address"])
    # name: entity-string sets per line → TP 2, FP 1, FN 0 → F1 0.8; address: TP 0 → 0 (0/0 guarded)
    assert macro["per_type"] == pytest.approx({"name": 80.0, "address": 0.0})
    assert macro["f1"] == pytest.approx(40.0)
    from evaluate.clue.metrics import label_to_spans

    micro = span_micro_f1([label_to_spans(p) for p in pred], [label_to_spans(g) for g in gold])
    # triples: TP 2, FP 1, FN 2 → P 2/3, R 1/2, F1 4/7
    assert micro["f1"] == pytest.approx(100 * 4 / 7)
    assert micro["precision"] == pytest.approx(200 / 3) and micro["recall"] == pytest.approx(50.0)


def test_cluener_zero_division_guard():
    scores = cluener_scores([{}, {}], [{}, {"name": {"张三": [[0, 1]]}}], ["name", "book"])
    assert scores == {"f1": 0.0, "per_type": {"name": 0.0, "book": 0.0}}


def test_chid_assignment_beats_independent_argmax():
    scores = np.array([[0.9, 0.8, 0.1],   # blank A: slightly prefers candidate 0
                       [0.95, 0.2, 0.1]])  # blank B: strongly prefers candidate 0
    assert decoding.independent_argmax(scores) == [0, 0]  # candidate 0 used twice
    assert decoding.chid_assign(scores) == [1, 0]  # one candidate per blank, total 1.75 > any other
    gold = {"#idiom000000#": 1, "#idiom000001#": 0}
    tags = list(gold)
    assert chid_accuracy(dict(zip(tags, decoding.independent_argmax(scores))), gold) == 50.0
    assert chid_accuracy(dict(zip(tags, decoding.chid_assign(scores))), gold) == 100.0
    assert chid_accuracy({}, gold) == 0.0  # missing blanks are wrong


def test_chid_assignment_more_blanks_than_candidates_falls_back():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    out = decoding.chid_assign(scores)
    assert sorted(out[:2]) == [0, 1] and out[2] == 0


def test_chid_score_task_counts_blanks_not_lines():
    lines = [ChidExample(0, ("#idiom000000#",), tuple("abcdefghij"), (Blank("#idiom000000#", 0, 0),), {"#idiom000000#": 3}),
             ChidExample(1, ("#idiom000001##idiom000002#",), tuple("abcdefghij"),
                         (Blank("#idiom000001#", 0, 0), Blank("#idiom000002#", 0, 13)),
                         {"#idiom000001#": 1, "#idiom000002#": 2})]
    result = score_task(TASKS["chid"], lines, {"#idiom000000#": 0, "#idiom000001#": 1, "#idiom000002#": 2})
    assert result["score"] == pytest.approx(200 / 3) and result["n"] == 3


def test_leaderboard_averages():
    scores = dict(afqmc=70, tnews=50, iflytek=60, cmnli=80, ocnli=74, cluewsc2020=80, csl=84,
                  cmrc2018=72, chid=85, c3=66)
    averages = leaderboard_averages(scores)
    assert averages["classification_1.1"] == pytest.approx((70 + 50 + 60 + 74 + 80 + 84) / 6)
    assert averages["classification_1.0"] == pytest.approx((70 + 50 + 60 + 80 + 80 + 84) / 6)
    assert averages["reading_comprehension"] == pytest.approx((72 + 85 + 66) / 3)
    assert averages["overall_1.1"] == pytest.approx((70 + 50 + 60 + 74 + 80 + 84 + 72 + 85 + 66) / 9)
    assert leaderboard_averages({"afqmc": 70})["classification_1.1"] is None
