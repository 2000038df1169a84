"""Records → model inputs, as the published recipes build them (specs/clue.md §5.3).

Token type ids are never produced (all zero: every Zhuiyi script does this). Each `encode_*` returns
plain-Python feature dicts; `collate` pads a list of them into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loaders import ChidExample, ChoiceExample, ClassificationExample, MrcExample, NerExample

WSC_OPEN, WSC_CLOSE = "[[", "]]"  # RoFormerV2 marks both spans the same way, ordered by position
CHID_OTHER_BLANK = "_____"


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------- classification


def mark_wsc(text: str, spans) -> str:
    """Wrap both WSC spans in [[ ]] (either order: the pronoun may precede the noun)."""
    out = text
    for start, span in sorted(spans, key=lambda s: s[0], reverse=True):
        out = out[:start] + WSC_OPEN + span + WSC_CLOSE + out[start + len(span):]
    return out


def encode_classification(tokenizer, example: ClassificationExample, labels, max_length: int) -> dict:
    text_a = mark_wsc(example.text_a, example.spans) if example.spans else example.text_a
    enc = tokenizer(text_a, example.text_b, truncation=True, max_length=max_length)
    label = labels.index(example.label) if example.label is not None else -100
    return {"input_ids": enc["input_ids"], "label": label}


def encode_pair_separately(tokenizer, example: ClassificationExample, labels, max_length: int) -> dict:
    """CoSENT: the two sentences encoded on their own."""
    a = tokenizer(example.text_a, truncation=True, max_length=max_length)["input_ids"]
    b = tokenizer(example.text_b, truncation=True, max_length=max_length)["input_ids"]
    label = labels.index(example.label) if example.label is not None else -100
    return {"input_ids": a, "input_ids_b": b, "label": label}


# ------------------------------------------------------------------------------------- cmrc2018


@dataclass
class Window:
    qid: str
    input_ids: list[int]
    offsets: list[tuple[int, int] | None]  # context char span per token (None: not context)
    label: tuple[int, int]  # (start token, end token); (0, 0) = [CLS] = answer not in this window


def cmrc_windows(tokenizer, example: MrcExample, max_length: int, stride: int) -> list[Window]:
    """Sliding windows over the context: `[CLS] question [SEP] window [SEP]`; the window is
    max_length − len(question) − 3 characters, starting at 0, stride, 2·stride, …"""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    question = _ids(tokenizer, example.question)[: max_length // 2]
    room = max_length - len(question) - 3
    context = example.context
    answer = next((a for a in example.answers if a.start >= 0), None)
    windows = []
    start = 0
    while True:
        text = context[start : start + room]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"][:room], enc["offset_mapping"][:room]
        input_ids = [cls] + question + [sep] + ids + [sep]
        token_offsets = [None] * (len(question) + 2) + [(s + start, e + start) for s, e in offsets] + [None]
        label = (0, 0)
        if answer is not None:
            a_start, a_end = answer.start, answer.start + len(answer.text)
            first = last = None
            for t, span in enumerate(token_offsets):
                if span is None:
                    continue
                if first is None and span[0] <= a_start < span[1]:
                    first = t
                if span[0] < a_end <= span[1]:
                    last = t
            if first is not None and last is not None and first <= last:
                label = (first, last)
        windows.append(Window(example.qid, input_ids, token_offsets, label))
        if start + room >= len(context):
            break
        start += stride
    return windows


# ------------------------------------------------------------------------------------------- c3


def _fit(parts: list[list[int]], budget: int) -> list[list[int]]:
    """Drop the last token of whichever part is longest until they fit (the C³ recipe)."""
    parts = [list(p) for p in parts]
    while sum(map(len, parts)) > budget:
        longest = max(range(len(parts)), key=lambda i: len(parts[i]))
        parts[longest].pop()
    return parts


def encode_c3(tokenizer, example: ChoiceExample, max_length: int) -> dict:
    """Per choice `[CLS] "||".join(context) [SEP] question [SEP] choice [SEP]`; every choice kept
    (2, 3, 4 or more: padded per batch with masked rows, not with dummy answers)."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    context, question = _ids(tokenizer, "||".join(example.context)), _ids(tokenizer, example.question)
    choices = []
    for choice in example.choices:
        c, q, a = _fit([context, question, _ids(tokenizer, choice)], max_length - 4)
        choices.append([cls] + c + [sep] + q + [sep] + a + [sep])
    return {"choices": choices, "label": example.label if example.label is not None else -100}


# ----------------------------------------------------------------------------------------- chid


def chid_contexts(example: ChidExample, budget: int) -> list[tuple[str, str]]:
    """(left, right) context of every blank: other blanks of the paragraph become `_____`, and the
    pair is trimmed to `budget` characters (the longer side first: left from its start, right from its end)."""
    out = []
    for blank in example.blanks:
        text = example.paragraphs[blank.paragraph]
        left, right = text[: blank.start], text[blank.start + len(blank.tag):]
        left = _other_blanks(left)
        right = _other_blanks(right)
        while len(left) + len(right) > budget:
            if len(left) >= len(right):
                left = left[1:]
            else:
                right = right[:-1]
        out.append((left, right))
    return out


def _other_blanks(text: str) -> str:
    from .loaders import IDIOM_TAG

    return IDIOM_TAG.sub(CHID_OTHER_BLANK, text)


def encode_chid(tokenizer, example: ChidExample, max_length: int) -> list[dict]:
    """One item per blank: per candidate `[CLS] left [SEP] idiom [SEP] right [SEP]`."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    idiom_len = max(len(c) for c in example.candidates)
    items = []
    candidates = [_ids(tokenizer, c) for c in example.candidates]
    for blank, (left, right) in zip(example.blanks, chid_contexts(example, max_length - 4 - idiom_len)):
        l_ids, r_ids = _ids(tokenizer, left), _ids(tokenizer, right)
        choices = []
        for cand in candidates:
            l, c, r = _fit([l_ids, cand, r_ids], max_length - 4)
            choices.append([cls] + l + [sep] + c + [sep] + r + [sep])
        label = example.answers[blank.tag] if example.answers is not None else -100
        items.append({"choices": choices, "label": label, "line": example.line, "tag": blank.tag})
    return items


# ------------------------------------------------------------------------------------------ ner


def encode_ner(tokenizer, example: NerExample, types, max_length: int) -> dict:
    """`[CLS] text [SEP]` with char offsets; gold spans as (type, start token, end token)."""
    enc = tokenizer(example.text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    offsets = [tuple(o) if o[1] > o[0] else None for o in enc["offset_mapping"]]
    offsets[0] = offsets[-1] = None  # [CLS], [SEP]
    starts = {o[0]: t for t, o in enumerate(offsets) if o is not None}
    ends = {o[1] - 1: t for t, o in enumerate(offsets) if o is not None}
    spans = []
    for kind, start, end in example.spans or ():
        if start in starts and end in ends:
            spans.append((types.index(kind), starts[start], ends[end]))
    return {"input_ids": enc["input_ids"], "offsets": offsets, "spans": spans}


# -------------------------------------------------------------------------------------- collate


def pad(sequences: list[list[int]], value: int = 0) -> torch.Tensor:
    width = max((len(s) for s in sequences), default=1) or 1
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate_sequences(items: list[dict], pad_id: int = 0, key: str = "input_ids") -> dict:
    ids = pad([it[key] for it in items], pad_id)
    mask = pad([[1] * len(it[key]) for it in items], 0)
    return {"input_ids": ids, "attention_mask": mask}


def collate_choices(items: list[dict], pad_id: int = 0) -> dict:
    """[B, C, S] with C the most choices in the batch; missing choices are all-zero mask rows."""
    n_choices = max(len(it["choices"]) for it in items)
    width = max(len(c) for it in items for c in it["choices"])
    ids = torch.full((len(items), n_choices, width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), n_choices, width), dtype=torch.long)
    for i, it in enumerate(items):
        for j, choice in enumerate(it["choices"]):
            ids[i, j, : len(choice)] = torch.tensor(choice)
            mask[i, j, : len(choice)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([it["label"] for it in items])}
