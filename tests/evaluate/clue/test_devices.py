"""CLUE fine-tuning and prediction hand the model only batches that went through the runtime's transfer
(tests/device_tracking.py), for every kind of task: the CPU-side check of device correctness."""

import json

import pytest

import evaluate.clue.cli as clue_cli
from evaluate.clue.cli import main
from tests.device_tracking import refuse_untransferred, track_transfers


@pytest.fixture
def strict_models(monkeypatch):
    track_transfers(monkeypatch.setattr)
    load = clue_cli.load_model
    monkeypatch.setattr(clue_cli, "load_model", lambda *args, **kwargs: refuse_untransferred(load(*args, **kwargs)))


def test_every_task_kind_moves_its_batches(fixtures, tiny_folder, tmp_path, strict_models):
    out = tmp_path / "run"
    # classification, sentence pairs with CoSENT, span MRC, multiple choice, ChID and NER
    tasks = "tnews,afqmc,cmrc2018,c3,chid,cluener"
    code = main(["--model", str(tiny_folder), "--data-dir", str(fixtures), "--dry-run", "--tasks", tasks,
                 "--cosent", "--output", str(out), "--no-progress", "--device", "cpu"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == tasks.split(",")
    assert all(entry["steps"] >= 1 for entry in results["tasks"].values())


def test_the_stand_in_catches_an_unmoved_batch(fixtures, tiny_folder, tmp_path, strict_models, monkeypatch):
    from evaluate.clue.runners import Runner

    monkeypatch.setattr(Runner, "batch", lambda self, items: self.collate(items))
    with pytest.raises(RuntimeError, match="input_ids reached .* without Runtime.to_device"):
        main(["--model", str(tiny_folder), "--data-dir", str(fixtures), "--dry-run", "--tasks", "tnews",
              "--output", str(tmp_path / "run"), "--no-progress", "--device", "cpu"])


def test_fine_tuning_falls_back_to_fp32_where_bf16_would_be_emulated(monkeypatch, capsys):
    """A GPU before Ampere, or a CPU without AVX-512, runs bf16 autocast emulated, slower than fp32: CLUE's
    default bf16 becomes fp32 there, with a note; where bf16 is native it stays."""
    import torch

    from evaluate.clue import runners

    monkeypatch.setattr(runners, "bf16_is_native", lambda device: True)  # an AVX-512 or AMX CPU
    assert runners.fine_tuning_runtime("cpu", bf16=True).compute_dtype == torch.bfloat16
    assert runners.fine_tuning_runtime("cpu", bf16=False).compute_dtype == torch.float32
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(runners, "bf16_is_native", lambda device: False)
    monkeypatch.setattr(runners, "_SAID_FP32", set())
    for _ in range(2):  # a run of several tasks says it once
        assert runners.fine_tuning_runtime("cpu", bf16=True).compute_dtype == torch.float32
    assert capsys.readouterr().err == ("clue: cpu has no bf16 arithmetic (bf16 would be emulated, slower than fp32): "
                                       "fine-tuning in fp32\n")
