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


def test_shipped_zero_recipes_size_their_gradient_buckets_to_the_model():
    """ZeRO 1 and 2 stage gradients in buckets of `reduce_bucket_size` elements, 5e8 unless set: for our
    models (95M parameters at base size) that allocated buffers of 2 × 5e8 elements in every backward pass
    (1.9 GiB in bf16 for deepnet-base; 3.7 GiB for deepnet-tiny's fp32 and bf16 pair), many times the
    gradients they stage. Each shipped ZeRO 1/2 recipe sets a bucket of at most its model's size."""
    import torch

    import zoo

    zero_recipes = [load_recipe(path) for path in sorted(RECIPES_DIR.glob("*.yaml"))]
    zero_recipes = [r for r in zero_recipes if r.deepspeed.get("zero_optimization", {}).get("stage", 0) in (1, 2)]
    assert {r.run_name for r in zero_recipes} >= {"deepnet-base", "deepnet-tiny"}
    for r in zero_recipes:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in zoo.create(r.model.preset, task="masked-lm").parameters())
        bucket = r.deepspeed["zero_optimization"].get("reduce_bucket_size")
        assert bucket is not None and bucket <= parameters, (r.run_name, bucket, parameters)


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
        # DeepSpeed's bf16 mode hands FusedLamb bf16 gradients, which its CUDA kernel refuses at the first step
        ({"deepspeed": {"train_batch_size": 8, "gradient_accumulation_steps": 2, "bf16": {"enabled": True},
                        "optimizer": {"type": "Lamb", "params": {}}}},
         r"deepspeed.bf16.enabled with optimizer Lamb: .* use deepspeed.torch_autocast: \{enabled: true, dtype: bfloat16\}"),
        ({"deepspeed": {"train_batch_size": 8, "gradient_accumulation_steps": 2, "bfloat16": {"enabled": True},
                        "optimizer": {"type": "Lamb", "params": {}}}}, r"deepspeed.bfloat16.enabled with optimizer Lamb"),
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


def test_source_errors_option():
    raw = recipe(data={"sources": [{"type": "text", "path": "c.txt", "errors": "skip"}, {"type": "jsonl", "path": "d.jsonl", "errors": "replace"}]})
    assert [s["errors"] for s in parse_recipe(raw).data.sources] == ["skip", "replace"]
    with pytest.raises(RecipeError) as caught:
        parse_recipe(recipe(data={"sources": [{"type": "text", "path": "c.txt", "errors": "ignore"}]}), source="bad.yaml")
    assert str(caught.value) == "bad.yaml: data.sources[0].errors must be 'strict', 'replace' or 'skip', got 'ignore'"
    with pytest.raises(RecipeError) as caught:
        parse_recipe(recipe(data={"sources": [{"type": "datasets", "path": "d", "errors": "skip"}]}), source="bad.yaml")
    assert str(caught.value).startswith("bad.yaml: unknown key 'data.sources[0].errors'")


# --------------------------------------------------------------------------- the deepspeed section, at any depth

DS = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4}


@pytest.mark.parametrize(
    "extra,message",
    [
        # top-level keys DeepSpeed reads one by one (get_scalar_param)
        ({"zero_optimisation": {"stage": 2}}, "unknown key 'deepspeed.zero_optimisation' (did you mean 'deepspeed.zero_optimization'?)"),
        ({"gradient_clippin": 1.0}, "unknown key 'deepspeed.gradient_clippin' (did you mean 'deepspeed.gradient_clipping'?)"),
        ({"zero_optimization": {"stage": 0}, "no_such_setting": 1}, "unknown key 'deepspeed.no_such_setting'"),
        # blocks read by DeepSpeed's pydantic config models, nested ones too
        ({"zero_optimization": {"stag": 2}}, "unknown key 'deepspeed.zero_optimization.stag' (did you mean 'deepspeed.zero_optimization.stage'?)"),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"devic": "cpu"}}},
         "unknown key 'deepspeed.zero_optimization.offload_optimizer.devic' (did you mean 'deepspeed.zero_optimization.offload_optimizer.device'?)"),
        ({"bf16": {"enabld": True}}, "unknown key 'deepspeed.bf16.enabld' (did you mean 'deepspeed.bf16.enabled'?)"),
        ({"tensorboard": {"enabled": False, "output_pth": "x"}},
         "unknown key 'deepspeed.tensorboard.output_pth' (did you mean 'deepspeed.tensorboard.output_path'?)"),
        # blocks read key by key
        ({"optimizer": {"type": "AdamW", "parms": {"lr": 1e-3}}}, "unknown key 'deepspeed.optimizer.parms' (did you mean 'deepspeed.optimizer.params'?)"),
        ({"torch_autocast": {"enabled": True, "dtyp": "bfloat16"}},
         "unknown key 'deepspeed.torch_autocast.dtyp' (did you mean 'deepspeed.torch_autocast.dtype'?)"),
        ({"activation_checkpointing": {"partition_activation": True}},
         "unknown key 'deepspeed.activation_checkpointing.partition_activation' (did you mean 'deepspeed.activation_checkpointing.partition_activations'?)"),
        ({"data_efficiency": {"enabled": True, "data_sampling": {"enabled": True, "curriculum_learning": {"enabled": False, "curriculum_metrcs": {}}}}},
         ("unknown key 'deepspeed.data_efficiency.data_sampling.curriculum_learning.curriculum_metrcs' "
          "(did you mean 'deepspeed.data_efficiency.data_sampling.curriculum_learning.curriculum_metrics'?)")),
        # blocks DeepSpeed copies (copy.copy) before reading them: the copy's lookups count
        ({"data_efficiency": {"enabled": True, "data_sampling": {"enabld": True}}},
         "unknown key 'deepspeed.data_efficiency.data_sampling.enabld' (did you mean 'deepspeed.data_efficiency.data_sampling.enabled'?)"),
        ({"data_efficiency": {"data_sampling": {"dynamic_batching": {"enabled": True, "max_tokens": 64, "metrics_pth": "m"}}}},
         ("unknown key 'deepspeed.data_efficiency.data_sampling.dynamic_batching.metrics_pth' "
          "(did you mean 'deepspeed.data_efficiency.data_sampling.dynamic_batching.metrics_path'?)")),
        # blocks switched off: only the keys the block has when enabled, suggested from that block
        ({"data_efficiency": {"enabled": False, "train_batch_size": 3}}, "unknown key 'deepspeed.data_efficiency.train_batch_size'"),
        ({"data_efficiency": {"enabled": False, "data_sampling": {"enabled": False, "num_epoch": 2}}},
         "unknown key 'deepspeed.data_efficiency.data_sampling.num_epoch' (did you mean 'deepspeed.data_efficiency.data_sampling.num_epochs'?)"),
        ({"data_efficiency": {"data_sampling": {"dynamic_batching": {"enabled": False, "max_token": 64}}}},
         ("unknown key 'deepspeed.data_efficiency.data_sampling.dynamic_batching.max_token' "
          "(did you mean 'deepspeed.data_efficiency.data_sampling.dynamic_batching.max_tokens'?)")),
        ({"torch_autocast": {"enabled": False, "dtyp": "bfloat16"}},
         "unknown key 'deepspeed.torch_autocast.dtyp' (did you mean 'deepspeed.torch_autocast.dtype'?)"),
        ({"flops_profiler": {"enabled": False, "gradient_clipping": 1.0}}, "unknown key 'deepspeed.flops_profiler.gradient_clipping'"),
        # values DeepSpeed refuses, named by key
        ({"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 10, "prefetch_bucket_size": 10}},
         "keys 'stage3_prefetch_bucket_size' and 'prefetch_bucket_size' in 'deepspeed.zero_optimization' name the same setting; keep one"),
        ({"zero_optimization": {"stage": "two"}}, "key 'deepspeed.zero_optimization.stage': Input should be 0, 1, 2, 3 or 3 (got 'two')"),
        ({"torch_autocast": {"enabled": True, "dtype": "bf17"}},
         "DeepSpeed cannot read the deepspeed section (at 'deepspeed.torch_autocast.dtype'): 'bf17' is not a valid DtypeEnum"),
    ],
)
def test_deepspeed_keys_are_checked_against_deepspeed(extra, message):
    with pytest.raises(RecipeError) as caught:
        parse_recipe(recipe(deepspeed={**DS, **extra}), source="bad.yaml")
    assert str(caught.value) == f"bad.yaml: {message}"


@pytest.mark.parametrize(
    "extra",
    [
        {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}},  # the optimizer's own arguments
        {"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}},
        {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 10}},  # a field's alias
        {"bfloat16": {"enabled": False}},  # the old name DeepSpeed still reads
        {"sequence_parallel_size": 1, "vocabulary_size": 12000},  # read by deepspeed.initialize / its warning check
        {"pipeline": {"stages": 1}},
        {"data_efficiency": {"enabled": False, "data_sampling": {"enabled": False,
                             "curriculum_learning": {"enabled": False, "curriculum_metrics": {}}}}},  # switched off
        {"data_efficiency": {"data_routing": {"random_ltd": {"enabled": False, "random_ltd_layer_num": 2}}}},
        # a key DeepSpeed reads later from its copy of the block
        {"data_efficiency": {"data_sampling": {"dynamic_batching": {"enabled": True, "max_tokens": 64, "metrics_path": "m"}}}},
        {"checkpoint": {"tag_validation": "Warn", "load_universal": False}},
        {"flops_profiler": {"enabled": False, "profile_step": 2}, "wall_clock_breakdown": False, "steps_per_print": 100},
    ],
)
def test_deepspeed_keys_deepspeed_reads_are_accepted(extra):
    assert parse_recipe(recipe(deepspeed={**DS, **extra})).deepspeed == {**DS, **extra}


def test_deepspeed_typo_in_an_override_names_the_recipe_file():
    with pytest.raises(RecipeError) as caught:
        load_recipe("roformer-v2-tiny", ["deepspeed.zero_optimization.stagee=1"])
    assert str(caught.value) == (f"{RECIPES_DIR / 'roformer-v2-tiny.yaml'}: unknown key "
                                 "'deepspeed.zero_optimization.stagee' (did you mean 'deepspeed.zero_optimization.stage'?)")


def test_a_copy_of_a_block_records_into_the_block():
    import copy

    from pretrain.deepspeed_keys import _Block

    blocks = []
    block = _Block({"a": 1, "b": {"c": 2}}, (), blocks)
    for twin in (copy.copy(block), block.copy(), copy.deepcopy(block)):
        twin["x"] = 0  # DeepSpeed writes into its copies; the block is unchanged
        assert twin.get("a") == 1 and not dict.__contains__(block, "x") and not block.whole
    assert block.looked == ["a"] and block.copied
    copy.deepcopy(block)["b"].get("c")  # a deep copy's inner blocks record into theirs
    assert blocks[1].looked == ["c"] and not blocks[1].whole
    dict(copy.copy(block))  # iterating a copy uses the block as a whole
    assert block.whole


def test_deepspeed_keys_refuse_to_run_without_deepspeeds_source(monkeypatch):
    import inspect

    from pretrain import deepspeed_keys

    def no_source(obj):
        raise OSError("could not get source code")

    deepspeed_keys._outside_keys.cache_clear()
    monkeypatch.setattr(inspect, "getsource", no_source)
    try:
        with pytest.raises(deepspeed_keys.DeepSpeedKeysUnavailable, match=r"cannot check the keys of the deepspeed section "
                           r"on this DeepSpeed \(0\.19\.8\): the source of deepspeed\.initialize.*OSError: could not get source"):
            parse_recipe(recipe(deepspeed={**DS, "vocabulary_size": 12000}), source="r.yaml")
    finally:
        deepspeed_keys._outside_keys.cache_clear()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [None, "bfloat16", "float16"])
def test_torch_autocast_without_a_dtype_runs_in_bf16_on_every_device(device, dtype):
    """DeepSpeed reads a missing torch_autocast dtype as None and hands that to torch.autocast, whose default
    is bf16 on the CPU but fp16 on CUDA (with no loss scale: DeepSpeed makes one only for float16 named).
    The config the trainer hands DeepSpeed names bf16 then, the dtype the trainer evaluates in and takes
    its MFU peak for; a named dtype stays."""
    import torch
    from deepspeed.runtime.config import get_torch_autocast_dtype

    from pretrain.trainer import _compute_dtype, deepspeed_config

    block = {"enabled": True} if dtype is None else {"enabled": True, "dtype": dtype}
    config, _ = deepspeed_config(parse_recipe(recipe(deepspeed={**DS, "torch_autocast": block})), torch.device(device))
    expected = torch.float16 if dtype == "float16" else torch.bfloat16
    assert get_torch_autocast_dtype(config) == _compute_dtype(config) == expected
    assert get_torch_autocast_dtype({**DS, "torch_autocast": {"enabled": True}}) is None  # what DeepSpeed reads alone


@pytest.mark.parametrize(
    "checkpoint,message",
    [
        ({"writer": {"decoupled": True}},
         "deepspeed.checkpoint.writer.decoupled: true is not supported: the decoupled writer saves in a background "
         "process and commits the files only at the next training step (never after the last step or a growth), so a "
         "checkpoint would be marked COMPLETE before its files exist; remove the key"),
        ({"use_node_local_storage": True},
         "deepspeed.checkpoint.use_node_local_storage: true is not supported: each node would keep its part of a "
         "checkpoint on its own disk, which a resume, the export and the COMPLETE marker (written by rank 0) cannot "
         "see; remove the key and put training.output_dir on a file system every node sees"),
    ],
)
def test_checkpoint_modes_that_break_the_complete_marker_are_refused(checkpoint, message):
    with pytest.raises(RecipeError) as caught:
        parse_recipe(recipe(deepspeed={**DS, "checkpoint": checkpoint}), source="bad.yaml")
    assert str(caught.value) == f"bad.yaml: {message}"
    # switched off, they are DeepSpeed's defaults
    off = {key: ({"decoupled": False} if key == "writer" else False) for key in checkpoint}
    assert parse_recipe(recipe(deepspeed={**DS, "checkpoint": off})).deepspeed["checkpoint"] == off


def test_a_refused_checkpoint_mode_in_an_override_names_the_recipe_file():
    with pytest.raises(RecipeError) as caught:
        load_recipe("roformer-v2-tiny", ["deepspeed.checkpoint.use_node_local_storage=true"])
    assert str(caught.value).startswith(f"{RECIPES_DIR / 'roformer-v2-tiny.yaml'}: deepspeed.checkpoint.use_node_local_storage: "
                                        "true is not supported")
