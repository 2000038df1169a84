"""scripts/benchmarks/gpu.py end to end in its CPU dry mode: every cell a lent GPU would run (the
compiled cells, GAU-α's attention variants, the bare DeepSpeed loop, inference under autocast and with
bf16 weights) runs at tiny shapes and reaches the table, the ratios and the plot, so the script does not
fail for the first time in a GPU session's few minutes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# slow: 47 s with torch.compile's caches filled, 130 s without (its four compiled cells), on a 2-core CPU;
# .ci/run runs it after the default test run
@pytest.mark.slow
def test_the_gpu_benchmark_runs_every_cell_in_its_dry_mode(tmp_path):
    result = subprocess.run([sys.executable, "scripts/benchmarks/gpu.py", "--dry", "--steps", "2", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    payload = json.loads((tmp_path / "gpu.json").read_text())
    assert payload["dry"] and payload["measured_matmul_tflops"] > 0
    failed = [(c["section"], c["model"], c["error"]) for c in payload["cells"] if "error" in c]
    assert not failed
    cells = {(c["section"], c["model"]) for c in payload["cells"]}
    assert {section for section, _ in cells} == {"train", "gau_attention", "bare_loop", "infer"}
    for model in ("zoo RoFormerV2-base", "zoo GAU-α-base", "zoo DeepNet-12", "transformers BERT-base (sdpa)"):
        assert ("train", model + " compiled") in cells
    assert ("train", "zoo GAU-α-base, explicit attention") in cells
    assert ("gau_attention", "explicit scores (attention_backend=matmul)") in cells
    assert ("train", "zoo GAU-α-base, cuDNN attention") in cells
    assert ("gau_attention", "heads sharing q/k (expand), cuDNN only") in cells
    for model in ("zoo RoFormerV2-base", "zoo GAU-α-base", "zoo DeepNet-12", "zoo GAU-α-base, explicit attention",
                  "transformers BERT-base (sdpa)"):
        assert ("infer", model) in cells and ("infer", model + ", bf16 weights") in cells
    report = (tmp_path / "gpu.md").read_text()
    assert "- S=64: GAU-α / RoFormerV2 tokens/s = " in report
    assert "- S=64: GAU-α-base, explicit attention / RoFormerV2 tokens/s = " in report
    assert "- S=64: compiled, GAU-α / RoFormerV2 tokens/s = " in report
    assert "- S=64: zoo DeepNet-12 compiled / best BERT (BERT-base (sdpa)" in report
    assert "- S=64: DeepNet-12, recompute_elementwise / DeepNet-12 tokens/s = " in report  # against its own model
    goals = report.split("Goals (issue 15):")[1]
    for text in ("zoo RoFormerV2-base MFU at S=64", "zoo DeepNet-12 / best BERT-base tokens/s, S=64",
                 "GAU-α-base, explicit attention / RoFormerV2-base MFU, S=128",
                 "GAU-α-base, recompute_elementwise / RoFormerV2-base peak memory, S=128",
                 "inference zoo GAU-α-base / BERT-base tokens/s, S=32", "roformer-v2-base / the bare loop"):
        assert text in goals, text
    assert "- inference S=128: zoo GAU-α-base, explicit attention / BERT-base = " in report
    assert "- S=64: zoo RoFormerV2-base with its attention through CUDNN_ATTENTION / sdpa's choice = " in report
    assert "- inference S=128: zoo GAU-α-base, bf16 weights / BERT-base, bf16 weights = " in report
    assert (tmp_path / "gpu.png").stat().st_size > 0


def gpu_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts" / "benchmarks"))
    import gpu

    return gpu


def test_the_cells_the_goals_need_come_first(monkeypatch):
    """The budget skips the last cells, so they run in the order of issue 15's goals, across sections:
    the eager training steps of our three families, BERT-base and GAU-α's explicit attention at both
    lengths, and BERT-base compiled (the faster BERT is the yardstick: it came after the bare loop and our
    compiled cells, where the budget skipped it); inference of ours and BERT at the three lengths; the
    bare loop; our compiled cells; then the other training variants and transformers' RoFormer, the other
    inference cells, and GAU-α's attention alone."""
    import argparse

    gpu = gpu_module(monkeypatch)
    cells = [(section, name, length) for section, name, length, _, _ in
             gpu.plan(argparse.Namespace(dry=False, no_compile=False))]
    explicit = ["zoo GAU-α-base, explicit attention", "zoo GAU-α-base, explicit attention, recompute_elementwise"]
    train_goals = [("train", name, length) for length in (512, 2048) for name in [*gpu.OURS, gpu.BERT, *explicit]]
    infer_goals = [("infer", name, length) for length in (128, 512, 2048) for name in [*gpu.OURS, gpu.BERT]]
    bare = [("bare_loop", "zoo RoFormerV2-base, recipe shape, LAMB", 512)]
    compiled = [("train", name + " compiled", 512) for name in gpu.COMPILED if name != gpu.BERT]
    first = train_goals + [("train", gpu.BERT + " compiled", 512)] + infer_goals + bare + compiled
    assert cells[:len(first)] == first
    rest = cells[len(first):]
    train_rest = {name for section, name, _ in rest if section == "train"}
    assert train_rest == {*gpu.VARIANTS, *gpu.PEERS} - set(explicit) - {gpu.BERT}
    infer_rest = {name for section, name, _ in rest if section == "infer"}
    infer_all = {*gpu.INFER_MODELS, *(name + gpu.BF16_WEIGHTS for name in gpu.INFER_MODELS)}
    assert infer_rest == infer_all - {*gpu.OURS, gpu.BERT}
    assert [section for section, _, _ in rest] == sorted((section for section, _, _ in rest),
                                                        key=["train", "infer", "gau_attention"].index)
    assert len(set(cells)) == len(cells)


def cell(section, model, length, tokens, tflops=None, peak=1000.0, **extra):
    """A measured cell of gpu.json, made up."""
    c = {"section": section, "model": model, "seq_len": length, "batch": 1, "tokens_per_s": tokens,
         "model_tflops": tflops or tokens / 1e3, "peak_mb": peak, **extra}
    if tflops:
        c["mfu"] = tflops / 989.4
    return c


def test_the_goals_say_pass_fail_or_not_measured(monkeypatch, tmp_path):
    """Each goal against its threshold from the cells, a missing cell (skipped, failed) NOT MEASURED, and
    the pretraining loop's figures from its metrics.jsonl, the first logged interval (warm-up) left out."""
    gpu = gpu_module(monkeypatch)
    cells = [cell("train", "zoo RoFormerV2-base", 512, 300e3, tflops=470.0, peak=10e3),
             cell("train", "transformers BERT-base (sdpa)", 512, 250e3),
             cell("train", "transformers BERT-base (sdpa) compiled", 512, 190e3),
             cell("train", "zoo GAU-α-base", 512, 270e3, tflops=480.0, peak=7.5e3),
             cell("train", "zoo RoFormerV2-base", 2048, 200e3, tflops=400.0, peak=10e3),
             cell("train", "zoo GAU-α-base", 2048, 150e3, tflops=390.0, peak=9e3),
             cell("infer", "zoo RoFormerV2-base", 128, 1.3e6), cell("infer", "transformers BERT-base (sdpa)", 128, 1e6),
             cell("bare_loop", "zoo RoFormerV2-base, recipe shape, LAMB", 512, 420e3),
             {"section": "train", "model": "zoo DeepNet-12", "seq_len": 512, "batch": 32, "error": "skipped: time budget"}]
    metrics = tmp_path / "metrics.jsonl"
    steps = [(10, 100e3, 0.1), (20, 390e3, 0.46), (30, 385e3, 0.455), (40, 380e3, 0.45)]
    metrics.write_text("".join(json.dumps({"kind": "train", "step": step, "tokens_per_s": tokens, "mfu": mfu,
                                           "mfu_basis": "datasheet"}) + "\n" for step, tokens, mfu in steps))
    payload = {"cells": cells, "train_lengths": [512, 2048], "infer_lengths": [128, 512, 2048]}
    gpu.attach_pretrain_metrics(payload, [f"roformer-v2-base={metrics}"])
    assert payload["pretrain"]["roformer-v2-base"]["steps"] == [20, 30, 40]
    lines = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in gpu.goal_lines(payload)}

    def verdict(text):
        return next(key.split("]")[0][3:] for key in lines if text in key)

    assert verdict("RoFormerV2-base MFU in `python -m pretrain --config roformer-v2-base`") == "PASS"  # 45.5%
    assert verdict("zoo RoFormerV2-base / best BERT-base tokens/s, S=512") == "FAIL"  # 300 / 250 = 1.2
    assert "against transformers BERT-base (sdpa)" in lines[next(k for k in lines if "RoFormerV2-base / best BERT" in k)]
    assert verdict("zoo DeepNet-12 MFU at S=512") == "NOT MEASURED"
    assert verdict("zoo DeepNet-12 / best BERT-base") == "NOT MEASURED"
    assert verdict("] GAU-α-base / RoFormerV2-base MFU, S=512") == "PASS"  # 480 / 470
    assert verdict("] GAU-α-base / RoFormerV2-base peak memory, S=512") == "PASS"  # 0.75
    assert verdict("] GAU-α-base / RoFormerV2-base MFU, S=2048") == "FAIL"  # 0.975
    assert verdict("] GAU-α-base / RoFormerV2-base peak memory, S=2048") == "FAIL"  # 0.9
    assert verdict("inference zoo RoFormerV2-base / BERT-base tokens/s, S=128") == "PASS"  # 1.3
    assert verdict("inference zoo RoFormerV2-base / BERT-base tokens/s, S=512") == "NOT MEASURED"
    assert verdict("roformer-v2-base / the bare loop") == "FAIL"  # 385 / 420 = 0.92
    # GAU-α-base meets both at 512, neither at 2048; its other configurations were not measured
    assert verdict("GAU-α-base in one configuration") == "NOT MEASURED"
    assert "GAU-α-base (no), GAU-α-base, explicit attention (not measured)" in lines[
        next(k for k in lines if "in one configuration" in k)]


def test_a_goal_is_not_measured_against_half_its_yardstick(monkeypatch, tmp_path):
    """Ours against BERT without BERT compiled (a budget cut) is NOT MEASURED, the figure against eager BERT
    said beside it; the loop against a bare loop measured on another GPU (the session's two calls on two
    machines) is NOT MEASURED; GAU-α's goal is met only by a configuration that meets MFU and memory at both
    lengths."""
    gpu = gpu_module(monkeypatch)
    rof = [cell("train", "zoo RoFormerV2-base", n, 300e3, tflops=470.0, peak=10e3) for n in (512, 2048)]
    gau = {name: [cell("train", name, n, 1e5, tflops=t, peak=m) for n, t, m in shape]
           for name, shape in (("zoo GAU-α-base", [(512, 480.0, 9e3), (2048, 480.0, 9e3)]),  # memory: no
                               ("zoo GAU-α-base, recompute_elementwise", [(512, 460.0, 7e3), (2048, 480.0, 7e3)]),  # MFU
                               ("zoo GAU-α-base, explicit attention", [(512, 480.0, 7e3), (2048, 475.0, 7.9e3)]),
                               ("zoo GAU-α-base, explicit attention, recompute_elementwise",
                                [(512, 400.0, 6e3), (2048, 400.0, 6e3)]))}
    cells = [*rof, *(c for cs in gau.values() for c in cs), cell("train", gpu.BERT, 512, 190e3),
             {"section": "train", "model": gpu.BERT + " compiled", "seq_len": 512, "batch": 32,
              "error": "skipped: time budget"},
             cell("bare_loop", "zoo RoFormerV2-base, recipe shape, LAMB", 512, 420e3)]
    metrics = tmp_path / "metrics.jsonl"
    records = [{"kind": "run", "step": 0, "devices": {"NVIDIA H100 80GB HBM3": 1}}] + [
        {"kind": "train", "step": step, "tokens_per_s": 430e3, "mfu": 0.46, "mfu_basis": "datasheet"} for step in (2, 4)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    payload = {"cells": cells, "train_lengths": [512, 2048], "infer_lengths": [128], "device": "NVIDIA H200"}
    gpu.attach_pretrain_metrics(payload, [f"roformer-v2-base={metrics}"])

    def line(text):
        return next(item for item in gpu.goal_lines(payload) if text in item)

    assert line("zoo RoFormerV2-base / best BERT-base tokens/s").startswith("- [NOT MEASURED]")
    assert line("zoo RoFormerV2-base / best BERT-base tokens/s").endswith(
        "(BERT-base compiled not measured; against eager BERT-base 1.58)")
    assert line("the bare loop").startswith("- [NOT MEASURED]")
    assert "the run on NVIDIA H100 80GB HBM3, the bare loop on NVIDIA H200" in line("the bare loop")
    assert line("in one configuration") == (
        "- [PASS] GAU-α-base in one configuration: MFU ≥ 1.00 and peak memory ≤ 0.80 of RoFormerV2-base's at "
        "S=512 and 2048: GAU-α-base, explicit attention")
    gau["zoo GAU-α-base, explicit attention"][1]["peak_mb"] = 8.5e3  # now none meets everything
    assert line("in one configuration").startswith("- [FAIL]")
    # with --no-compile the eager BERT is the yardstick, and with the run on the bare loop's GPU the loop is judged
    payload["no_compile"], payload["device"] = True, "NVIDIA H100 80GB HBM3"
    assert line("zoo RoFormerV2-base / best BERT-base tokens/s").startswith("- [PASS] ")
    assert line("zoo RoFormerV2-base / best BERT-base tokens/s").endswith("(against transformers BERT-base (sdpa), eager only: --no-compile)")
    assert line("the bare loop").startswith("- [PASS]")  # 430 / 420
