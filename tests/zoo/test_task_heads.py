"""The task models' losses and GlobalPointer's scores in fp64, against formulas written out here.

An fp64 model is the exact reference the others are compared with, so its loss must stay in fp64: a
loss rounded to fp32 on the way (a `.float()` of the logits) is off by about 1e-8 relative, which the
1e-12 tolerance below catches; fp64 evaluation of the same formula agrees to ~1e-15.
"""

import math

import pytest
import torch

from zoo.families import model_class

from . import reference
from .test_models import batch, make_config, randomize

TOLERANCE = dict(rtol=1e-12, atol=1e-12)


def build(task, **overrides):
    config = make_config("roformer-v2", num_labels=overrides.pop("num_labels", 3), **overrides)
    return randomize(model_class(config, task)(config).double()).eval()


def cross_entropy(logits, targets, ignore=None):
    """Mean −log softmax(logits)[target] over the rows whose target is not `ignore`."""
    keep = torch.ones_like(targets, dtype=torch.bool) if ignore is None else targets != ignore
    logits, targets = logits[keep], targets[keep]
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    return (torch.logsumexp(logits, -1) - picked).mean()


def assert_fp64_loss(loss, expected):
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, **TOLERANCE)


@pytest.mark.parametrize("sparse", [False, True])
def test_masked_lm_loss(sparse):
    model = build("masked-lm")
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 1::3] = ids[:, 1::3]
    out = model(ids, attention_mask=mask, labels=labels, masked_positions_only=sparse)
    if sparse:  # logits only at the labelled positions, in their flat order
        expected = cross_entropy(out.logits, labels[labels != -100])
    else:
        expected = cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore=-100)
    assert_fp64_loss(out.loss, expected)


@pytest.mark.parametrize("problem", ["single_label_classification", "regression", "multi_label_classification"])
def test_sequence_classification_loss(problem):
    num_labels = 1 if problem == "regression" else 3
    model = build("sequence-classification", num_labels=num_labels)
    ids, mask = batch()
    generator = torch.Generator().manual_seed(3)
    if problem == "single_label_classification":
        labels = torch.tensor([2, 0, 1])
    elif problem == "regression":
        labels = torch.rand(3, generator=generator, dtype=torch.float64)
    else:  # inferred from the labels' dtype (not an integer one): one sigmoid per label
        labels = (torch.rand(3, num_labels, generator=generator) > 0.5).double()
    out = model(ids, attention_mask=mask, labels=labels)
    logits = out.logits
    if problem == "single_label_classification":
        expected = cross_entropy(logits, labels)
    elif problem == "regression":
        expected = ((logits.squeeze(-1) - labels) ** 2).mean()
    else:  # −y·log σ(x) − (1 − y)·log(1 − σ(x)), written stably
        expected = (torch.log1p(torch.exp(-logits.abs())) + logits.clamp(min=0) - labels * logits).mean()
    assert_fp64_loss(out.loss, expected)


def test_token_classification_loss():
    model = build("token-classification")
    ids, mask = batch()
    labels = (ids % 3).masked_fill(mask == 0, -100)
    out = model(ids, attention_mask=mask, labels=labels)
    assert_fp64_loss(out.loss, cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore=-100))


def test_question_answering_loss():
    model = build("question-answering")
    ids, mask = batch()
    start, end = torch.tensor([3, 2, 40]), torch.tensor([7, 9, 41])  # the third span lies past the sequence
    out = model(ids, attention_mask=mask, start_positions=start, end_positions=end)
    assert (out.start_logits[mask == 0] == torch.finfo(torch.float64).min).all()
    seq = ids.shape[1]
    expected = (cross_entropy(out.start_logits, start.clamp(0, seq), ignore=seq)
                + cross_entropy(out.end_logits, end.clamp(0, seq), ignore=seq)) / 2
    assert_fp64_loss(out.loss, expected)


def test_multiple_choice_loss_with_a_padded_choice():
    model = build("multiple-choice")
    ids, mask = batch(lengths=(9, 6, 4, 9, 7, 5))
    ids, mask = ids.view(2, 3, -1), mask.view(2, 3, -1).clone()
    mask[1, 2] = 0  # the second question has two choices
    labels = torch.tensor([2, 1])
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits[1, 2] == torch.finfo(torch.float64).min
    assert_fp64_loss(out.loss, cross_entropy(out.logits, labels))


def global_pointer_scores(head, hidden, mask, efficient):
    """s_α(i, j) for the spans (i ≤ j, both tokens real), −1e12 elsewhere, from the head's weights (RoPE as
    tests/zoo/reference.py writes it from bert4keras)."""
    size = head.head_size
    positions = torch.arange(hidden.shape[1])[None]  # [1, S]: broadcast over the batch (and heads)
    if efficient:
        p = hidden @ head.p_dense.weight.T
        q, k = reference.rope(p[..., 0::2], positions), reference.rope(p[..., 1::2], positions)
        shared = q @ k.transpose(-1, -2) / math.sqrt(size)
        bias = (p @ head.q_dense.weight.T / 2).transpose(1, 2)  # [B, 2·types, S]: end, start per type
        scores = shared[:, None] + bias[:, 0::2, None, :] + bias[:, 1::2, :, None]
    else:
        qk = (hidden @ head.dense.weight.T).unflatten(-1, (head.heads, 2 * size)).transpose(1, 2)
        q, k = reference.rope(qk[..., :size], positions), reference.rope(qk[..., size:], positions)
        scores = q @ k.transpose(-1, -2) / math.sqrt(size)
    valid = mask.bool()
    spans = torch.ones(scores.shape[-2:], dtype=torch.bool).triu() & valid[:, None, :, None] & valid[:, None, None, :]
    return scores.masked_fill(~spans, -1e12)


def multilabel_loss(scores, labels):
    """Mean over (sequence, type) of log(1 + Σ_neg e^s) + log(1 + Σ_pos e^−s) over all S×S spans."""
    total = []
    for s, y in zip(scores.flatten(0, 1).flatten(1), labels.flatten(0, 1).flatten(1).bool()):
        zero = s.new_zeros(1)
        total.append(torch.logsumexp(torch.cat([s[~y], zero]), 0) + torch.logsumexp(torch.cat([-s[y], zero]), 0))
    return torch.stack(total).mean()


@pytest.mark.parametrize("efficient", [True, False])
def test_global_pointer_scores_and_loss(efficient):
    model = build("global-pointer", num_labels=2, global_pointer_head_size=8, global_pointer_efficient=efficient)
    ids, mask = batch()
    labels = torch.zeros(3, 2, ids.shape[1], ids.shape[1], dtype=torch.long)
    labels[0, 0, 1, 3] = labels[0, 1, 4, 4] = labels[1, 0, 0, 2] = labels[2, 1, 2, 4] = 1
    out = model(ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    scores = global_pointer_scores(model.global_pointer, out.hidden_states[-1], mask, efficient)
    assert out.logits.dtype == torch.float64
    torch.testing.assert_close(out.logits, scores, **TOLERANCE)
    assert_fp64_loss(out.loss, multilabel_loss(scores, labels))


def test_bf16_logits_give_an_fp32_loss():
    """Below fp32 the loss is still widened to fp32 (what autocast leaves in bf16 is not summed in it)."""
    model = build("sequence-classification")
    ids, mask = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.float()(ids, attention_mask=mask, labels=torch.tensor([2, 0, 1]))
    assert out.logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, cross_entropy(out.logits.double(), torch.tensor([2, 0, 1])).float())
