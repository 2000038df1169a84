"""Metrics as the leaderboard computes them (specs/clue.md §3): accuracy, CMRC2018 EM/F1 (official
`cmrc2018_evaluate.py` v5: punctuation set, mixed segmentation, longest common substring), CLUENER
official macro F1 (entity-string sets per type, zero divisions guarded) and span micro F1, ChID
accuracy over blanks, and the leaderboard averages. Scores are in percent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from ..errors import UsageError
from .tasks import CLASSIFICATION_10, CLASSIFICATION_11, OVERALL_11, READING

# ----------------------------------------------------------------------------------------- accuracy


def accuracy(predictions: Sequence, golds: Sequence) -> float:
    if len(predictions) != len(golds):
        raise UsageError(f"{len(predictions)} predictions for {len(golds)} gold labels")
    if not golds:
        return 0.0
    return 100.0 * sum(p == g for p, g in zip(predictions, golds)) / len(golds)


def chid_accuracy(predictions: Mapping[str, int], golds: Mapping[str, int]) -> float:
    """Accuracy over blanks (not lines): every gold placeholder counts, a missing one is wrong."""
    if not golds:
        return 0.0
    return 100.0 * sum(predictions.get(tag) == gold for tag, gold in golds.items()) / len(golds)


# --------------------------------------------------------------------------------------- CMRC2018

# the official `sp_char` list; "……" is one two-character item and so never matches a single char
CMRC_PUNCTUATION = (
    "-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
    "，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、",
    "「", "」", "（", "）", "－", "～", "『", "』",
)
_PUNCT = set(CMRC_PUNCTUATION)
_CJK = re.compile(r"[\u4e00-\u9fa5]")
# stand-in for nltk.word_tokenize when nltk is not installed: words, decimals, single symbols
_WORDS = re.compile(r"\d+(?:[.,]\d+)+|\w+|[^\w\s]")


def _word_tokenize(text: str) -> list[str]:
    try:  # the official script uses nltk; keep it when it (and its punkt data) is available
        import nltk

        return nltk.word_tokenize(text)
    except Exception:
        return _WORDS.findall(text)


def mixed_segmentation(text: str, remove_punctuation: bool = True) -> list[str]:
    """Official mixed segmentation: each CJK char (U+4E00–U+9FA5) is a token, runs of other chars are
    word-tokenized; punctuation chars are dropped first when `remove_punctuation`."""
    text = str(text).lower().strip()
    out, buffer = [], ""
    for char in text:
        if remove_punctuation and char in _PUNCT:
            continue
        if _CJK.match(char) or char in _PUNCT:
            if buffer:
                out.extend(_word_tokenize(buffer))
                buffer = ""
            out.append(char)
        else:
            buffer += char
    if buffer:
        out.extend(_word_tokenize(buffer))
    return out


def remove_punctuation(text: str) -> str:
    return "".join(c for c in str(text).lower().strip() if c not in _PUNCT)


def longest_common_substring(a: Sequence, b: Sequence) -> int:
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def cmrc_f1(answers: Iterable[str], prediction: str) -> float:
    scores = []
    prediction_tokens = mixed_segmentation(prediction)
    for answer in answers:
        answer_tokens = mixed_segmentation(answer)
        lcs = longest_common_substring(answer_tokens, prediction_tokens)
        if lcs == 0:
            scores.append(0.0)
            continue
        precision, recall = lcs / len(prediction_tokens), lcs / len(answer_tokens)
        scores.append(2 * precision * recall / (precision + recall))
    return max(scores, default=0.0)


def cmrc_em(answers: Iterable[str], prediction: str) -> float:
    prediction = remove_punctuation(prediction)
    return float(any(remove_punctuation(a) == prediction for a in answers))


def cmrc2018_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """EM, F1 and their average over every gold question (unanswered ones count 0)."""
    em = f1 = 0.0
    for qid, answers in golds.items():
        if qid not in predictions:
            continue
        prediction = str(predictions[qid])
        em += cmrc_em(answers, prediction)
        f1 += cmrc_f1(answers, prediction)
    n = max(len(golds), 1)
    em, f1 = 100.0 * em / n, 100.0 * f1 / n
    return {"em": em, "f1": f1, "average": (em + f1) / 2}


# ---------------------------------------------------------------------------------------- CLUENER

Spans = Iterable[tuple[str, int, int]]


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def spans_to_label(text: str, spans: Spans) -> dict[str, dict[str, list[list[int]]]]:
    """(type, start, end inclusive) triples → the CLUENER `label` dict."""
    label: dict[str, dict[str, list[list[int]]]] = {}
    for kind, start, end in sorted(spans, key=lambda s: (s[0], s[1], s[2])):
        label.setdefault(kind, {}).setdefault(text[start : end + 1], []).append([start, end])
    return label


def cluener_scores(predictions: Sequence[Mapping], golds: Sequence[Mapping], types: Sequence[str]) -> dict:
    """Official `score.py`: per type and line, compare the sets of entity strings; TP/FP/FN summed over
    lines; F1 per type; "f1" = macro average over `types` (a type with no predictions scores 0 instead
    of dividing by zero). `predictions`/`golds` are `label` dicts in line order."""
    if len(predictions) != len(golds):
        raise UsageError(f"{len(predictions)} prediction lines for {len(golds)} gold lines")
    per_type = {}
    for kind in types:
        tp = fp = fn = 0
        for pred, gold in zip(predictions, golds):
            p, g = set((pred or {}).get(kind, {})), set((gold or {}).get(kind, {}))
            tp += len(p & g)
            fp += len(p - g)
            fn += len(g - p)
        per_type[kind] = 100.0 * _prf(tp, fp, fn)[2]
    return {"f1": sum(per_type.values()) / len(types), "per_type": per_type}


def span_micro_f1(predictions: Sequence[Spans], golds: Sequence[Spans]) -> dict[str, float]:
    """Micro P/R/F1 over exact (type, start, end) triples (bojone's dev metric)."""
    tp = fp = fn = 0
    for pred, gold in zip(predictions, golds):
        p, g = set(map(tuple, pred)), set(map(tuple, gold))
        tp += len(p & g)
        fp += len(p - g)
        fn += len(g - p)
    p, r, f = _prf(tp, fp, fn)
    return {"precision": 100 * p, "recall": 100 * r, "f1": 100 * f}


# ------------------------------------------------------------------------------------ leaderboard


def _mean(scores: Mapping[str, float], names: Sequence[str]) -> float | None:
    if not all(n in scores for n in names):
        return None
    return sum(scores[n] for n in names) / len(names)


def leaderboard_averages(scores: Mapping[str, float]) -> dict[str, float | None]:
    """Classification (1.1 and 1.0 sets), reading comprehension (cmrc2018 by EM) and the overall 1.1
    mean of 9 tasks; None where a task is missing. `scores` maps task → headline score in percent."""
    return {
        "classification_1.1": _mean(scores, CLASSIFICATION_11),
        "classification_1.0": _mean(scores, CLASSIFICATION_10),
        "reading_comprehension": _mean(scores, READING),
        "overall_1.1": _mean(scores, OVERALL_11),
    }


# ------------------------------------------------------------------------------------ task scores


def label_to_spans(label: Mapping) -> list[tuple[str, int, int]]:
    return sorted({(kind, s, e) for kind, entities in (label or {}).items()
                   for positions in entities.values() for s, e in positions})


def score_task(task, examples: Sequence, predictions) -> dict:
    """The task's leaderboard metric from submission-style predictions; "score" is the headline
    (accuracy, CMRC2018 EM, CLUENER macro F1), other keys are reported beside it.

    predictions: classification → label strings; c3 → indices; cmrc2018 → {qid: text};
    chid → {tag: index}; ner → (type, start, end) lists or `label` dicts, in example order.
    """
    from .tasks import CHID, CLASSIFICATION, MULTIPLE_CHOICE, NER, SPAN_MRC

    if task.kind == CLASSIFICATION:
        golds = [e.label for e in examples]
        return {"score": accuracy([str(p) for p in predictions], golds), "n": len(golds)}
    if task.kind == MULTIPLE_CHOICE:
        golds = [e.label for e in examples]
        return {"score": accuracy([int(p) for p in predictions], golds), "n": len(golds)}
    if task.kind == SPAN_MRC:
        scores = cmrc2018_scores(predictions, {e.qid: [a.text for a in e.answers] for e in examples})
        return {"score": scores["em"], **scores, "n": len(examples)}
    if task.kind == CHID:
        golds = {tag: v for e in examples for tag, v in (e.answers or {}).items()}
        return {"score": chid_accuracy(predictions, golds), "n": len(golds)}
    if task.kind == NER:
        predictions = list(predictions)
        pred_spans = [label_to_spans(p) if isinstance(p, Mapping) else list(p) for p in predictions]
        gold_spans = [list(e.spans or ()) for e in examples]
        macro = cluener_scores([spans_to_label(e.text, p) for e, p in zip(examples, pred_spans)],
                               [spans_to_label(e.text, g) for e, g in zip(examples, gold_spans)], task.labels)
        micro = span_micro_f1(pred_spans, gold_spans)
        return {"score": macro["f1"], "macro_f1": macro["f1"], "per_type": macro["per_type"],
                "micro_f1": micro["f1"], "micro_precision": micro["precision"], "micro_recall": micro["recall"],
                "n": len(examples)}
    raise ValueError(task.kind)
