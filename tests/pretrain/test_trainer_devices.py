"""The training loop, evaluation and resume hand the model only batches that went through the runtime's
transfer (tests/device_tracking.py): the CPU-side check for the crash a GPU showed (gpu.md §1)."""

import os
import subprocess
import sys

import yaml

from pretrain.metrics import read_metrics

from .test_trainer import ROOT, cache_dir, corpus_file, free_port, write_recipe  # noqa: F401  (fixtures)

SCRIPT = """
import sys
import pretrain.trainer as trainer
from tests.device_tracking import refuse_untransferred, track_transfers

track_transfers()
{skip}
build, rebuild = trainer.build_model, trainer.model_from_config
trainer.build_model = lambda recipe: refuse_untransferred(build(recipe))
trainer.model_from_config = lambda config, recipe: refuse_untransferred(rebuild(config, recipe))
from pretrain.__main__ import main
sys.exit(main(sys.argv[1:]))
"""
# what the training loop of gpu.md §1 did: the loader's tensors handed to the engine as they were
SKIP_TRANSFER = "from zoo.runtime import Runtime\nRuntime.to_device = lambda self, batch: batch"


def run(recipe, *args, skip=""):
    command = [sys.executable, "-c", SCRIPT.format(skip=skip), "--config", str(recipe), *args]
    env = {**os.environ, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    return result.returncode, result.stdout + result.stderr


def prefetching(path):
    recipe = yaml.safe_load(path.read_text())
    recipe["training"]["prefetch_steps"] = 2  # the CUDA default: batches collated on a thread
    recipe["training"]["checkpoint_every"] = 2
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_every_batch_reaches_the_model_through_the_runtime(tmp_path, corpus_file, cache_dir):
    recipe = prefetching(write_recipe(tmp_path, corpus_file, cache_dir, "strict", steps=4, optimizer="adamw"))
    code, output = run(recipe)
    assert code == 0, output[-3000:]
    code, output = run(recipe, "--resume", "2")
    assert code == 0, output[-3000:]
    records = read_metrics(tmp_path / "strict" / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]  # each step once after the resume
    assert all(r["grad_norm"] > 0 for r in records if r["kind"] == "train")


def test_the_stand_in_catches_a_loop_that_skips_the_transfer(tmp_path, corpus_file, cache_dir):
    recipe = write_recipe(tmp_path, corpus_file, cache_dir, "skips", steps=2, optimizer="adamw")
    code, output = run(recipe, skip=SKIP_TRANSFER)
    assert code != 0
    assert "input_ids reached RoFormerV2ForMaskedLM without Runtime.to_device" in output
