"""Staged pretraining (pretrain/stages.py): recipe validation of `stages:`, a run that grows mid-run
without a loss jump, and resumes on both sides of the growth that reproduce the uninterrupted run.

Runs are one process, fp32 (no autocast) and dropout 0, so the growth is exact: the held-out loss
right after it equals the loss right before it up to fp32 rounding."""

import json
import shutil

import pytest
import yaml

from pretrain.checkpoint import complete_checkpoints
from pretrain.metrics import read_metrics
from pretrain.recipe import RecipeError, load_recipe, parse_recipe

from .test_trainer import corpus_file, cache_dir, launch, losses  # noqa: F401  (fixtures)

GROW = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024}

BASE = {
    "run_name": "r",
    "model": {"preset": "roformer-v2-mini"},
    "training": {"steps": 10},
    "deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4},
}


def staged(stages, **sections):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    raw.update(sections)
    raw["stages"] = stages
    return raw


def test_stages_parse_with_starts_and_defaults():
    recipe = parse_recipe(staged([{"name": "small", "steps": 4}, {"grow": GROW, "lr_rewarm": 2}]), "s.yaml")
    small, grown = recipe.growth_stages
    assert (small.start, small.steps, grown.start, grown.steps) == (0, 4, 4, 6)
    assert grown.name == "stage1" and grown.optimizer_state == "map" and grown.lr_rewarm == 2
    assert "growth_stages" not in recipe.to_dict() and recipe.to_dict()["stages"][1]["grow"] == GROW
    shipped = load_recipe("growth-tiny")
    assert [s.start for s in shipped.growth_stages] == [0, 300]
    assert shipped.growth_stages[1].grow["hidden_size"] == 256


@pytest.mark.parametrize(
    "stages,sections,message",
    [
        ([{"steps": 10}], {}, r"a single stage has nothing to grow"),
        ([{"steps": 4}, {"steps": 4, "grow": GROW}], {}, r"stages' steps add up to 8 but training.steps is 10"),
        ([{"steps": 4}, {"grow": GROW, "stpes": 6}], {}, r"unknown key 'stages\[1\].stpes' \(did you mean 'stages\[1\].steps'\?\)"),
        ([{}, {"grow": GROW}], {}, r"missing key 'stages\[0\].steps'"),
        ([{"steps": 4, "grow": GROW}, {"grow": GROW}], {}, r"'stages\[0\].grow': the first stage trains"),
        ([{"steps": 4}, {"steps": 6}], {}, r"missing key 'stages\[1\].grow'"),
        ([{"steps": 4}, {"grow": {"hiden_size": 256}}], {}, r"unknown key 'stages\[1\].grow.hiden_size' \(did you mean 'stages\[1\].grow.hidden_size'"),
        ([{"steps": 4}, {"grow": {"where": "top"}}], {}, r"stages\[1\].grow names no size to grow"),
        ([{"steps": 4}, {"grow": {"hidden_size": "big"}}], {}, r"key 'stages\[1\].grow.hidden_size' must be an int"),
        ([{"steps": 4}, {"grow": {"hidden_size": 64}}], {}, r"stages\[1\].grow: hidden_size=64 would shrink the model \(it has 128\)"),
        ([{"steps": 4}, {"grow": {"head_size": 96}}], {}, r"stages\[1\].grow: head_size=96 cannot keep RoPE exact"),
        ([{"steps": 4}, {"grow": {"hidden_size": 256, "symmetry": "random"}}], {}, r"'stages\[1\].grow.symmetry' must be one of"),
        ([{"steps": 4}, {"grow": GROW, "optimizer_state": "keep"}], {}, r"'stages\[1\].optimizer_state' must be one of \['map', 'reset'\]"),
        ([{"steps": 4}, {"grow": GROW, "lr_rewarm": 7}], {}, r"'stages\[1\].lr_rewarm' \(7\) is longer than the stage \(6 steps\)"),
        ([{"steps": 4}, {"grow": GROW}], {"deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
                                                        "zero_optimization": {"stage": 3}}},
         r"deepspeed.zero_optimization.stage=3: growth stages support ZeRO 0, 1 and 2"),
        ([{"steps": 4}, {"grow": GROW}], {"deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
                                                        "fp16": {"enabled": True}}}, r"deepspeed.fp16.enabled"),
        ([{"steps": 4}, {"grow": GROW}], {"deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
                                                        "bf16": {"enabled": True}}}, r"deepspeed.bf16.enabled with zero_optimization.stage=0"),
        ([{"steps": 4}, {"grow": GROW}], {"deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
                                                        "scheduler": {"type": "WarmupLR"}}}, r"deepspeed.scheduler: growth stages need"),
        ([{"steps": 4}, 5], {}, r"key 'stages\[1\]' must be a mapping"),
        ([{"steps": 4, "name": "a"}, {"grow": GROW, "name": "a"}], {}, r"stage names must differ"),
    ],
)
def test_bad_stages_name_the_key(stages, sections, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(staged(stages, **sections), "bad.yaml")


# --------------------------------------------------------------------------- runs


def write_staged(tmp_path, corpus_file, cache_dir, name, zero=0, optimizer="lamb", steps=8, grow_at=4, rewarm=4):
    optimizers = {
        "lamb": {"type": "Lamb", "params": {"lr": 0.005, "weight_decay": 0.01, "bias_correction": False}},
        "adamw": {"type": "AdamW", "params": {"lr": 0.002, "weight_decay": 0.01, "torch_adam": True}},
    }
    recipe = {
        "run_name": name,
        "seed": 5,
        "model": {"preset": "roformer-v2-mini", "config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
        "data": {"sources": [{"type": "text", "path": str(corpus_file)}], "seq_len": 32, "cache_dir": str(cache_dir),
                 "heldout": {"fraction": 0.05, "max_sequences": 32}},
        "training": {"steps": steps, "lr_schedule": {"type": "warmup_linear", "warmup": 2, "final": 0.5},
                     "eval_every": 100, "checkpoint_every": 3, "keep_checkpoints": 10, "log_every": 1,
                     "output_dir": str(tmp_path / name), "peak_tflops": 1.0},
        "stages": [{"name": "small", "steps": grow_at},
                   {"name": "grown", "grow": {**GROW, "seed": 3}, "lr_rewarm": rewarm}],
        "deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0,
                      "zero_optimization": {"stage": zero}, "optimizer": optimizers[optimizer]},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path


def growth_records(run_dir):
    return read_metrics(run_dir / "metrics.jsonl", "growth")


def assert_lossless_growth(record):
    assert record["loss_after"] == pytest.approx(record["loss_before"], rel=1e-5, abs=1e-5)
    assert record["accuracy_after"] == record["accuracy_before"]
    assert record["parameters_after"] > 3 * record["parameters_before"]
    assert record["to"]["hidden_size"] == 256 and record["to"]["num_hidden_layers"] == 4


def resume_run(recipe, run_dir):
    """Relaunch with --resume; returns the last resume record and every metrics record from it on."""
    code, output = launch(recipe, ranks=1, args=["--resume"])
    assert code == 0, output[-3000:]
    everything = read_metrics(run_dir / "metrics.jsonl")
    resume = [r for r in everything if r["kind"] == "resume"][-1]
    return resume, everything[everything.index(resume):]


def assert_same_losses(records, reference, steps):
    continued = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    assert sorted(continued) == steps
    for step, loss in continued.items():
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=1e-6), step


def test_staged_run_grows_mid_run_and_resumes_across_the_boundary(tmp_path, corpus_file, cache_dir):
    recipe = write_staged(tmp_path, corpus_file, cache_dir, "staged")
    code, output = launch(recipe, ranks=1)
    assert code == 0, output[-3000:]
    run = tmp_path / "staged"
    reference = losses(run)
    assert sorted(reference) == list(range(1, 9))
    (growth,) = growth_records(run)
    assert growth["step"] == 4 and growth["stage"] == 1 and growth["optimizer_state"] == "map"
    assert_lossless_growth(growth)
    # checkpoints on both sides of the growth, each recording its stage (and the grown config after it)
    by_tag = {c.tag: c for c in complete_checkpoints(run / "checkpoints")}
    assert {"step_0000003", "step_0000004", "step_0000004_stage1", "step_0000006", "step_0000008"} <= set(by_tag)
    assert by_tag["step_0000004"].stage == 0 and by_tag["step_0000004_stage1"].stage == 1
    assert by_tag["step_0000004_stage1"].meta["model_config"]["hidden_size"] == 256
    assert by_tag["step_0000003"].meta["model_config"]["hidden_size"] == 128
    records = read_metrics(run / "metrics.jsonl", "train")
    assert [r["stage"] for r in records] == [0] * 4 + [1] * 4
    flops = [r["train_flops"] for r in records]
    assert flops[5] - flops[4] > 3 * (flops[1] - flops[0])  # a grown step costs more
    # the schedule continues at the global step, re-warmed over 4 steps (the logged lr is the next step's):
    # after step 5 it is 0.005 × (1 − 0.5·(5 − 2)/6) × 2/4
    assert records[4]["lr"] == pytest.approx(0.005 * 0.75 * 0.5)
    assert records[3]["lr"] == pytest.approx(0.005 * (1 - 0.5 * 2 / 6))  # before the growth: the schedule
    export = json.loads((run / "export" / "config.json").read_text())
    assert (export["hidden_size"], export["num_hidden_layers"]) == (256, 4)

    # resume from the checkpoint before the growth: it grows again at step 4 and follows the same curve
    for tag in ("step_0000004_stage1", "step_0000006", "step_0000008"):
        shutil.rmtree(by_tag[tag].path)
    shutil.rmtree(run / "export")
    resume, after = resume_run(recipe, run)
    assert (resume["step"], resume["stage"], resume["tag"]) == (4, 0, "step_0000004")
    regrown = [r for r in after if r["kind"] == "growth"]
    assert len(regrown) == 1 and regrown[0]["loss_after"] == pytest.approx(growth["loss_after"], rel=1e-6)
    assert_same_losses(after, reference, steps=[5, 6, 7, 8])

    # resume from the checkpoint after the growth: the grown model is built directly, no second growth
    for info in complete_checkpoints(run / "checkpoints"):
        if info.step > 4:
            shutil.rmtree(info.path)
    resume, after = resume_run(recipe, run)
    assert (resume["step"], resume["stage"], resume["tag"]) == (4, 1, "step_0000004_stage1")
    assert not [r for r in after if r["kind"] == "growth"]
    assert_same_losses(after, reference, steps=[5, 6, 7, 8])


def test_zero1_growth_carries_the_partitioned_adam_state(tmp_path, corpus_file, cache_dir):
    """ZeRO 1 keeps Adam's moments in flat partitions: they are read and written through DeepSpeed's
    tensor-fragment API, and the grown run continues from them without a loss jump."""
    recipe = write_staged(tmp_path, corpus_file, cache_dir, "zero1", zero=1, optimizer="adamw", steps=6, grow_at=3,
                          rewarm=0)
    code, output = launch(recipe, ranks=1)
    assert code == 0, output[-3000:]
    run = tmp_path / "zero1"
    (growth,) = growth_records(run)
    assert growth["step"] == 3 and growth["optimizer_state"] == "map"
    assert_lossless_growth(growth)
    curve = losses(run)
    assert sorted(curve) == list(range(1, 7))
    assert all(loss < curve[1] + 0.5 for loss in curve.values())  # no blow-up after the growth


@pytest.mark.slow
def test_a_compiled_run_compiles_each_stage_afresh(tmp_path, corpus_file, cache_dir):
    """training.compile with two growths: the grown model's forward is the same code, so dynamo counted
    each stage's training and evaluation graphs as recompilations of one function (two per growth) and,
    past its limit of 8, would have run eager without saying so. The graphs of a stage it leaves are
    dropped (torch._dynamo.reset), so each stage recompiles once (evaluation after training, or the
    reverse), and the run finishes its 6 steps compiled. (Slow: six inductor compilations on the CPU.)"""
    recipe = yaml.safe_load(write_staged(tmp_path, corpus_file, cache_dir, "compiled", steps=6, grow_at=2).read_text())
    recipe["training"]["compile"] = True
    recipe["stages"] = [{"name": "small", "steps": 2}, {"name": "wide", "steps": 2, "grow": {**GROW, "seed": 3}},
                        {"name": "deep", "grow": {"num_layers": 6, "seed": 4}}]
    path = tmp_path / "compiled.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, output = launch(path, ranks=1, env_extra={"TORCH_LOGS": "recompiles"})
    assert code == 0, output[-3000:]
    assert len(growth_records(tmp_path / "compiled")) == 2
    recompiles = [line for line in output.splitlines() if "Recompiling function forward" in line]
    assert len(recompiles) <= 3, "\n".join(recompiles)
    assert "recompile_limit" not in output and "cache_size_limit" not in output


def _old_engine_after_growth(rank, world, recipe_path):
    """Train a staged recipe in this process; whether the small model and its engine outlived grow()."""
    import weakref

    from pretrain.trainer import Trainer

    trainer = Trainer(load_recipe(recipe_path), restart=True)
    grow, alive = trainer.grow, {}

    def watched_grow(stage):
        engine, model = weakref.ref(trainer.engine), weakref.ref(trainer.model)
        grow(stage)
        alive.update(engine=engine() is not None, model=model() is not None)

    trainer.grow = watched_grow
    trainer.train()
    return alive


def test_growth_frees_the_small_model_and_its_engine(tmp_path, corpus_file, cache_dir):
    """grow() dropped the engine but kept self.model until the grown model replaced it: DeepSpeed's hooks on
    the small model hold its engine, so the collection in grow() freed neither, and afterwards they were a
    cycle that waited for a later full collection, with the small model's weights and optimizer moments
    held (on a GPU, 12 bytes a parameter of the small model through the next steps)."""
    from .ranks import run_ranks

    recipe = write_staged(tmp_path, corpus_file, cache_dir, "freed", steps=3, grow_at=2, rewarm=0)
    alive, = run_ranks(_old_engine_after_growth, world=1, timeout_s=60, args=(str(recipe),))
    assert alive == {"engine": False, "model": False}
