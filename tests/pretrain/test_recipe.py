"""Recipe loading: every shipped recipe is valid; mistakes fail fast naming the key."""

from pathlib import Path

import pytest

from pretrain.recipe import RECIPES_DIR, RecipeError, load_recipe, parse_recipe

MINIMAL = {
    "run_name": "r",
    "model": {"preset": "roformer-v2-mini"},
    "deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4},
}


def recipe(**changes):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MINIMAL.items()}
    for dotted, value in changes.items():
        node = raw
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return raw


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_are_valid(path):
    r = load_recipe(path)
    assert r.run_name and r.deepspeed["train_batch_size"] >= 1


def test_recipe_by_name_and_overrides():
    r = load_recipe("roformer-v2-tiny", ["training.steps=5", "deepspeed.zero_optimization.stage=0", "data.seq_len=64"])
    assert (r.training.steps, r.data.seq_len) == (5, 64)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"training": {"stpes": 10}}, r"unknown key 'training.stpes' \(did you mean 'training.steps'\?\)"),
        ({"training": {"steps": "ten"}}, r"key 'training.steps' must be int"),
        ({"model": {"preset": "roformer-v2-mini", "family": "deepnet"}}, r"exactly one of model.preset"),
        ({"model": {"preset": "roformer-v3-mini"}}, r"model.preset 'roformer-v3-mini' is not a preset"),
        ({"data": {"sources": [{"type": "csv", "path": "x"}]}}, r"data.sources\[0\] needs a type"),
        ({"data": {"sources": [{"type": "jsonl"}]}}, r"data.sources\[0\].path is required"),
        ({"data": {"masking": {"rate": 0.15, "mask": 0.9, "random": 0.2}}}, r"data.masking needs"),
        ({"deepspeed": {"train_batch_size": 8}}, r"deepspeed needs two of"),
        ({"deepspeed": {"train_batch_size": 8, "gradient_accumulation_steps": 2, "sparse_attention": {}}}, r"Sparse Attention has been removed"),
        ({"deepspeed": {"train_batch_size": 8, "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 2},
                        "optimizer": {"type": "Lamb", "params": {}}}}, r"zero_optimization.stage=2 with optimizer Lamb"),
        ({"training": {"lr_schedule": {"type": "piecewise_linear", "points": {"a": 1}}}}, r"lr_schedule.points entry"),
        ({"publish": {"name": "Bad Name"}}, r"publish: invalid model name"),
        ({"publish": {"version": "1"}}, r"publish: missing required key"),
    ],
)
def test_bad_recipes_name_the_key(changes, message):
    raw = dict(MINIMAL)
    raw.update(changes)
    with pytest.raises(RecipeError, match=message):
        parse_recipe(raw, source="bad.yaml")


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="must look like section.key=value"):
        load_recipe("roformer-v2-tiny", ["training.steps"])
