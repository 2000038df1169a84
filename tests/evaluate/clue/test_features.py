"""Input construction and decoding of the published recipes (specs/clue.md §5.3)."""

import torch

import zoo
from evaluate.clue import decoding, features
from evaluate.clue.loaders import Answer, ChoiceExample, ClassificationExample, MrcExample, NerExample, load_task
from evaluate.clue.tasks import TASKS

from .conftest import TINY


def test_wsc_marking_in_either_order():
    assert features.mark_wsc("他走进教室时，老师已经在等了。", ((7, "老师"), (0, "他"))) == "[[他]]走进教室时，[[老师]]已经在等了。"
    assert features.mark_wsc("小明说他来了", ((0, "小明"), (3, "他"))) == "[[小明]]说[[他]]来了"


def test_classification_encoding_pair_without_token_types(tokenizer):
    example = ClassificationExample("dev-0", "花呗", "借呗", "1", 0)
    item = features.encode_classification(tokenizer, example, ("0", "1"), 16)
    assert tokenizer.convert_ids_to_tokens(item["input_ids"]) == ["[CLS]", "花", "呗", "[SEP]", "借", "呗", "[SEP]"]
    assert item["label"] == 1 and "token_type_ids" not in item
    long = ClassificationExample("x", "甲" * 20, "乙" * 5, None, 0)
    ids = features.encode_classification(tokenizer, long, ("0", "1"), 12)["input_ids"]
    # longest first: the long side is cut down to the short one, then both lose a token in turn
    assert len(ids) == 12 and ids.count(tokenizer.convert_tokens_to_ids("甲")) == 5
    assert ids.count(tokenizer.convert_tokens_to_ids("乙")) == 4


def test_cmrc_windows_labels_and_offsets(tokenizer):
    context = "一二三四五六七八九十" * 3  # 30 characters
    example = MrcExample("Q", context, "问？", (Answer(context[21:23], 21),))
    windows = features.cmrc_windows(tokenizer, example, max_length=20, stride=5)
    room = 20 - 2 - 3
    assert [len(w.input_ids) for w in windows] == [20] * 4  # windows at 0, 5, 10, 15 (the last reaches the end)
    assert windows[0].label == (0, 0)  # answer outside the first window → [CLS]
    with_answer = [w for w in windows if w.label != (0, 0)]
    assert len(with_answer) == 2  # windows [10, 25) and [15, 30) hold chars 21..22
    for w in with_answer:
        i, j = w.label
        assert context[w.offsets[i][0]:w.offsets[j][1]] == "二三"
    assert windows[1].offsets[4] == (5, 6) and room == 15


def test_cmrc_decoding_keeps_the_best_window(tokenizer):
    context = "一二三四五六七八九十" * 3
    example = MrcExample("Q", context, "问？", ())
    windows = features.cmrc_windows(tokenizer, example, max_length=20, stride=5)
    grids = [torch.full((20, 20), -5.0) for _ in windows]
    grids[0][0, 0] = 100.0  # [CLS] is never an answer
    grids[0][5, 6] = 1.0  # "一二" in window 0
    grids[2][5, 7] = 3.0  # window 2 starts at char 10 (token 4): tokens 5..7 = chars 11..13 = "二三四"
    assert decoding.cmrc_answers(windows, grids, {"Q": context}) == {"Q": "二三四"}


def test_c3_every_choice_kept_and_fitted(tokenizer):
    example = ChoiceExample("0", ("男：" + "很" * 30, "女：好"), "问题？", ("甲", "乙", "丙"), 2, "0")
    item = features.encode_c3(tokenizer, example, 24)
    assert len(item["choices"]) == 3 and item["label"] == 2
    for choice in item["choices"]:
        assert len(choice) == 24
        tokens = tokenizer.convert_ids_to_tokens(choice)
        assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 3 and tokens[-2] in "甲乙丙"
        assert "".join(tokens[tokens.index("[SEP]") + 1:]).startswith("问题？")  # the long context was cut, not the question
    other = features.encode_c3(tokenizer, ChoiceExample("1", ("好",), "问", ("是", "否"), 0, "1"), 24)
    batch = features.collate_choices([item, other])
    assert batch["input_ids"].shape == (2, 3, 24)
    assert batch["attention_mask"][1, 2].sum() == 0  # the missing third choice is a masked row


def test_multiple_choice_model_ignores_padded_choices(tokenizer):
    model = zoo.create("roformer-v2-mini", task="multiple-choice", **TINY).eval()
    a = features.encode_c3(tokenizer, ChoiceExample("0", ("天气好",), "问", ("甲", "乙", "丙", "丁"), 0, "0"), 16)
    b = features.encode_c3(tokenizer, ChoiceExample("1", ("天气好",), "问", ("甲", "乙"), 1, "1"), 16)
    batch = features.collate_choices([a, b])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (2, 4) and torch.isfinite(logits[0]).all()
    assert (logits[1, 2:] < -1e30).all() and torch.isfinite(logits[1, :2]).all()


def test_chid_contexts_mask_other_blanks_and_trim(fixtures, tokenizer):
    line = load_task(TASKS["chid"], fixtures).dev[0]
    contexts = features.chid_contexts(line, budget=56)
    assert contexts[1] == ("作者", "地完成了它，又_____地加了一笔。")
    assert contexts[2] == ("作者_____地完成了它，又", "地加了一笔。")
    short = features.chid_contexts(line, budget=6)
    assert short[1] == ("作者", "地完成了") and short[2] == ("它，又", "地加了")  # the longer side is cut first
    items = features.encode_chid(tokenizer, line, 64)
    assert [it["tag"] for it in items] == ["#idiom577157#", "#idiom577158#", "#idiom577159#"]
    assert [it["label"] for it in items] == [0, 1, 2] and all(len(it["choices"]) == 10 for it in items)
    tokens = tokenizer.convert_ids_to_tokens(items[0]["choices"][3])
    assert "".join(tokens) == "[CLS]这幅画[SEP]对牛弹琴[SEP]，栩栩如生。[SEP]"


def test_ner_encoding_and_global_pointer_decoding_round_trip(fixtures, tokenizer):
    types = TASKS["cluener"].labels
    example = load_task(TASKS["cluener"], fixtures).dev[1]  # 张三 twice, 上海
    item = features.encode_ner(tokenizer, example, types, 64)
    assert len(item["spans"]) == 3
    grid = torch.full((len(types), len(item["input_ids"]), len(item["input_ids"])), -3.0)
    for kind, i, j in item["spans"]:
        grid[kind, i, j] = 2.0
    assert decoding.global_pointer_spans(grid, item["offsets"], types) == list(example.spans)
    grid[0, 0, 0] = 5.0  # [CLS] positions never decode
    assert decoding.global_pointer_spans(grid, item["offsets"], types) == list(example.spans)


def test_ner_latin_word_pieces_keep_char_offsets(tokenizer):
    example = NerExample("x", "生生不息CSOL生化狂潮", (("game", 4, 7),), 0)
    item = features.encode_ner(tokenizer, example, TASKS["cluener"].labels, 32)
    ((kind, i, j),) = item["spans"]
    assert (item["offsets"][i][0], item["offsets"][j][1] - 1) == (4, 7)
