"""A miniature CLUE tree in the official formats (a few invented examples per split and task), used by
`--dry-run` when no `--data-dir` is given, so CI can run every task end to end without the archives."""

from __future__ import annotations

import json
from pathlib import Path

from .submission import atomic_write_text
from .tasks import IFLYTEK_LABELS, NLI_LABELS, TNEWS_LABELS

N = 4
TEXTS = ["今天天气很好，我们去公园散步。", "这家餐厅的菜很好吃，服务也很周到。", "股市今天大涨，投资者信心增强。",
         "新款手机发布，性能提升明显。", "他每天早上跑步，身体越来越好。", "图书馆里很安静，大家都在看书。"]
IDIOMS = ["一丝不苟", "胸有成竹", "半途而废", "三心二意", "画蛇添足", "对牛弹琴", "守株待兔", "亡羊补牢", "杯弓蛇影", "刻舟求剑"]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _t(i: int) -> str:
    return TEXTS[i % len(TEXTS)]


def _write(root: Path, folder: str, name: str, content) -> None:
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    atomic_write_text(root / folder / name, text)


def write_samples(root: str | Path) -> Path:
    root = Path(root)
    splits = ("train", "dev", "test")
    for split in splits:
        test = split == "test"
        idx = lambda i: {"id": i} if test else {}  # noqa: E731
        lab = lambda value: {} if test else {"label": value}  # noqa: E731
        _write(root, "afqmc_public", f"{split}.json", _jsonl(
            {**idx(i), "sentence1": _t(i), "sentence2": _t(i + i % 2), **lab(str(1 - i % 2))} for i in range(N)))
        tnews = _jsonl({**idx(i), **lab(TNEWS_LABELS[i % 3]), **({} if test else {"label_desc": "news"}),
                        "sentence": _t(i), "keywords": ""} for i in range(N))
        _write(root, "tnews_public", f"{split}.json", tnews)
        _write(root, "iflytek_public", f"{split}.json", _jsonl(
            {**idx(i), **lab(IFLYTEK_LABELS[i % 3]), **({} if test else {"label_des": "x"}), "sentence": _t(i)} for i in range(N)))
        nli = _jsonl({**idx(i), "sentence1": _t(i), "sentence2": _t(i + 1), **lab(NLI_LABELS[i % 3])} for i in range(N))
        _write(root, "cmnli_public/cmnli_public", f"{split}.json", nli)
        _write(root, "ocnli_public", "train.50k.json" if split == "train" else f"{split}.json", nli)
        wsc = []
        for i in range(N):
            text = "小明告诉小红，因为他很高兴。"
            noun, at = ("小明", 0) if i % 2 else ("小红", 4)
            wsc.append({"target": {"span2_index": text.index("他"), "span1_index": at, "span1_text": noun,
                                   "span2_text": "他"}, ("id" if test else "idx"): i,
                        **lab("true" if i % 2 else "false"), "text": text})
        _write(root, "cluewsc2020_public", f"{split}.json", _jsonl(wsc))
        _write(root, "csl_public", f"{split}.json", _jsonl(
            {"id": 100 + i, "abst": _t(i), "keyword": [_t(i)[:2], _t(i + 1)[:2]], **lab(str(i % 2))} for i in range(N)))
        paragraphs = []
        for i in range(N):
            context = _t(i) + _t(i + 1)
            paragraphs.append({"id": f"{split.upper()}_{i}", "context": context, "qas": [
                {"question": "哪里？", "id": f"{split.upper()}_{i}_QUERY_0",
                 "answers": [] if test else [{"text": context[2:4], "answer_start": 2}]}]})
        _write(root, "cmrc2018_public", f"{split}.json", {"version": "v1.0", "data": [
            {"paragraphs": [p], "id": p["id"], "title": "t"} for p in paragraphs]})
        docs = [[[_t(i), _t(i + 1)], [{"question": "说的是什么？", "choice": [_t(j)[:4] for j in range(2 + i % 3)],
                                       **({"id": str(i)} if test else {"answer": _t(i % (2 + i % 3))[:4]})}], f"{i}-1"]
                for i in range(N)]
        if test:
            _write(root, "c3_public", "test1.1.json", docs)
            _write(root, "c3_public", "test1.0.json", docs[:2])
        else:
            _write(root, "c3_public", f"d-{split}.json", docs[:2])
            _write(root, "c3_public", f"m-{split}.json", docs[2:])
        base = {"train": 0, "dev": 100, "test": 623377}[split]
        lines, answers = [], {}
        for i in range(N):
            tags = [f"#idiom{base + 2 * i:06d}#", f"#idiom{base + 2 * i + 1:06d}#"]
            lines.append({"content": [f"他做事{tags[0]}，大家都很佩服。", f"可是这次他{tags[1]}了。"], "candidates": IDIOMS})
            answers.update({tags[0]: 0, tags[1]: 2})
        if test:
            _write(root, "chid_public", "test1.1.json", _jsonl(lines))
            _write(root, "chid_public", "test1.0.json", _jsonl(lines[:1]))
        else:
            _write(root, "chid_public", f"{split}.json", _jsonl(lines))
            _write(root, "chid_public", f"{split}_answer.json", answers)
        ner = []
        for i in range(N):
            text = f"张三在北京的腾讯公司工作{i}年。"
            ner.append({**idx(i), "text": text, **lab({"name": {"张三": [[0, 1]]}, "address": {"北京": [[3, 4]]},
                                                         "company": {"腾讯公司": [[6, 9]]}})})
        _write(root, "cluener_public", f"{split}.json", _jsonl(ner))
    for folder in ("tnews_public", "cluewsc2020_public"):  # the 1.0 test files
        atomic_write_text(root / folder / "test1.0.json", (root / folder / "test.json").read_text(encoding="utf-8"))
    _write(root, "clue_diagnostics_public", "diagnostics_test.json", _jsonl(
        {"index": i, "premise": _t(i), "hypothesis": _t(i + 1), "label": NLI_LABELS[i % 3]} for i in range(N)))
    return root
