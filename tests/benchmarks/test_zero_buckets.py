"""scripts/benchmarks/zero_buckets.py, small: its allocation count sees DeepSpeed's default gradient bucket,
and a bucket the size of the model allocates less."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "benchmarks"))

import zero_buckets  # noqa: E402

from ..pretrain.ranks import run_ranks  # noqa: E402


def _allocations(rank, world):
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 10**9,
              "torch_autocast": {"enabled": True, "dtype": "bfloat16"},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}
    default = zero_buckets.step_allocations("deepnet-mini", {**config, "zero_optimization": {"stage": 1}})
    sized = zero_buckets.step_allocations(
        "deepnet-mini", {**config, "zero_optimization": {"stage": 1, "reduce_bucket_size": default["parameters"]}})
    return default, sized


def test_the_default_bucket_is_counted_and_a_model_sized_one_allocates_less():
    default, sized = run_ranks(_allocations, world=1, timeout_s=60)[0]
    assert default["largest_bytes"] >= 5 * 10**8 * 2  # DeepSpeed's 5e8-element bucket (fp32 under autocast here)
    assert sized["largest_bytes"] < 10**8 and sized["peak_bytes"] * 10 < default["peak_bytes"]
    assert sized["parameters"] == default["parameters"] > 0
