"""The fine-tuning loop: best-dev weights kept, R-Drop, ChildTuning-D, CoSENT."""

import math

import pytest
import torch

import zoo
from evaluate.clue.finetune import Options, child_tuning_masks, finetune
from evaluate.clue.loaders import ClassificationExample, load_task
from evaluate.clue.runners import CoSENTRunner, make_runner
from evaluate.clue.tasks import TASKS, recipe_for
from pretrain.optim import parameter_groups

from .conftest import TINY


def _model(task, runner, **extra):
    torch.manual_seed(0)
    return zoo.create("roformer-v2-mini", task=task.head, **TINY, **runner.model_kwargs(), **extra)


def _fast(task, **kw):
    return recipe_for(task, "fast", max_length=32, batch_size=2, **kw)


def test_best_dev_weights_are_kept(fixtures, tokenizer, monkeypatch):
    task = TASKS["afqmc"]
    data = load_task(task, fixtures)
    runner = make_runner(task, tokenizer, _fast(task, lr=1e-2, warmup=0.0))
    model = _model(task, runner)
    scores, snapshots = iter([50.0, 90.0, 60.0]), []

    def fake_evaluate(m, examples):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"score": next(scores)}

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    result = finetune(model, runner, data.train, data.dev, Options(max_steps=3, eval_every=1, progress=False, bf16=False))
    assert (result.best_score, result.best_step, result.steps) == (90.0, 2, 3)
    assert [h["dev"] for h in result.history] == [50.0, 90.0, 60.0]
    assert not torch.equal(snapshots[1]["classifier.weight"], snapshots[2]["classifier.weight"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][key]), key  # the model left behind is the step-2 one


def test_training_lowers_the_loss_with_bf16_autocast(fixtures, tokenizer):
    task = TASKS["cluener"]
    data = load_task(task, fixtures)
    runner = make_runner(task, tokenizer, _fast(task, lr=3e-3, warmup=0.0), bf16=True)
    model = _model(task, runner, hidden_dropout_prob=0.0)
    batch = runner.collate(runner.train_items(data.train))
    with torch.no_grad():
        before = float(runner.loss(runner.logits(model, batch), batch))
    finetune(model, runner, data.train, data.dev, Options(max_steps=8, progress=False, bf16=True))
    model.train()
    with torch.no_grad():
        after = float(runner.loss(runner.logits(model, batch), batch))
    assert after < before


def test_rdrop_kl():
    runner = make_runner(TASKS["afqmc"], zoo.default_tokenizer(), recipe_for(TASKS["afqmc"]))
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert float(runner.rdrop_kl(a, a)) == pytest.approx(0.0, abs=1e-7)
    b = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    p, q = torch.softmax(a[0], -1), torch.softmax(b[0], -1)
    kl = float((p * (p / q).log()).sum() + (q * (q / p).log()).sum()) / 2 / 2  # symmetric, batch mean
    assert float(runner.rdrop_kl(a, b)) == pytest.approx(kl, rel=1e-5)


def test_rdrop_run_changes_the_loss_path(fixtures, tokenizer):
    task = TASKS["tnews"]
    data = load_task(task, fixtures)
    runner = make_runner(task, tokenizer, _fast(task))
    model = _model(task, runner, hidden_dropout_prob=0.3)
    result = finetune(model, runner, data.train, data.dev, Options(rdrop=1.0, max_steps=2, progress=False, bf16=False))
    assert result.steps == 2 and result.best_score is not None


def test_child_tuning_d_updates_only_the_child_network(fixtures, tokenizer):
    task = TASKS["afqmc"]
    data = load_task(task, fixtures)
    runner = make_runner(task, tokenizer, _fast(task, lr=1e-2, weight_decay=0.0, warmup=0.0))
    model = _model(task, runner, hidden_dropout_prob=0.0)
    masks = child_tuning_masks(model, runner, runner.train_items(data.train), 0.3, 2, 4)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(kept / total - 0.3) < 0.02 and all(n.startswith("encoder.") for n in masks)
    before = {k: v.clone() for k, v in model.named_parameters()}
    finetune(model, runner, data.train, data.dev, Options(child_tuning_d=0.3, max_steps=2, progress=False, bf16=False))
    params = dict(model.named_parameters())
    frozen = changed = 0
    for name, mask in masks.items():
        moved = params[name].detach() != before[name]
        assert not (moved & (mask == 0)).any(), name  # weights outside the child network never move
        frozen += int((mask == 0).sum())
        changed += int(moved.sum())
    assert changed > 0 and frozen > 0
    assert not torch.equal(params["classifier.weight"], before["classifier.weight"])  # the head always trains


def test_cosent_loss_and_threshold(fixtures, tokenizer):
    task = TASKS["afqmc"]
    runner = CoSENTRunner(task, tokenizer, _fast(task))
    batch = {"labels": torch.tensor([1, 0])}
    good = runner.loss(torch.tensor([0.9, 0.1]), batch)  # similar pair scored higher: tiny loss
    bad = runner.loss(torch.tensor([0.1, 0.9]), batch)
    assert float(good) == pytest.approx(math.log1p(math.exp(-16)), abs=1e-6)
    assert float(bad) == pytest.approx(math.log1p(math.exp(16)), rel=1e-4)
    with pytest.raises(ValueError, match="CoSENT needs a binary sentence-pair task"):
        CoSENTRunner(TASKS["tnews"], tokenizer, _fast(TASKS["tnews"]))
    data = load_task(task, fixtures)
    model = _model(task, runner)
    result = finetune(model, runner, data.train, data.dev, Options(max_steps=2, progress=False, bf16=False))
    assert result.best_score is not None and -1.0 <= runner.threshold <= 1.0
    assert set(runner.predict(model, data.tests[""].examples)) <= {"0", "1"}


def test_sentence_pair_cosent_ranks_by_cosine(tokenizer):
    task = TASKS["afqmc"]
    runner = CoSENTRunner(task, tokenizer, _fast(task))
    examples = [ClassificationExample("a", "花呗", "花呗", "1", 0), ClassificationExample("b", "花呗", "股票", "0", 1)]
    batch = runner.collate(runner.train_items(examples))
    assert batch["input_ids"].shape[0] == 2 and "input_ids_b" in batch


@pytest.mark.parametrize("preset", ["roformer-v2-mini", "gau-alpha-mini", "deepnet-mini"])
def test_fine_tuning_decays_the_parameters_pretraining_decays(preset, fixtures, tokenizer, monkeypatch):
    """One weight-decay rule (zoo/weight_decay.py) for both paths: the groups AdamW gets here are the
    groups pretraining gives LAMB (GAU-α's q/k scales decay in both, norms and biases in neither)."""
    task = TASKS["afqmc"]
    data = load_task(task, fixtures)
    runner = make_runner(task, tokenizer, _fast(task))
    torch.manual_seed(0)
    model = zoo.create(preset, task=task.head, **TINY, **runner.model_kwargs())
    seen = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            params = list(params)
            seen.append([([id(p) for p in g["params"]], g["weight_decay"]) for g in params])
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    finetune(model, runner, data.train, data.dev, Options(max_steps=1, progress=False, bf16=False))
    expected = [([id(p) for p in g["params"]], g["weight_decay"]) for g in parameter_groups(model, runner.recipe.weight_decay)]
    assert seen == [expected]
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[i] for i in expected[0][0]}
    if preset.startswith("gau-alpha"):
        assert "encoder.layers.0.gau.q_scaleoffset.weight" in decayed
    assert not any(n.endswith(".bias") for n in decayed)
