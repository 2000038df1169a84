"""scripts/benchmarks/gpu.py end to end in its CPU dry mode: every cell a lent GPU would run (the
compiled cells, GAU-α's attention variants, the bare DeepSpeed loop, inference under autocast and with
bf16 weights) runs at tiny shapes and reaches the table, the ratios and the plot, so the script does not
fail for the first time in a GPU session's few minutes."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
    assert "- S=64: zoo DeepNet-12 compiled / best BERT = " in report
    assert "- inference S=128: zoo GAU-α-base, explicit attention / BERT-base = " in report
    assert "- S=64: zoo RoFormerV2-base with its attention through CUDNN_ATTENTION / sdpa's choice = " in report
    assert "- inference S=128: zoo GAU-α-base, bf16 weights / BERT-base, bf16 weights = " in report
    assert (tmp_path / "gpu.png").stat().st_size > 0


def test_the_cells_the_goals_need_come_first(monkeypatch):
    """The budget skips the last cells, so the training section starts with what issue 15's goals are
    measured by: our three families, BERT-base and GAU-α's explicit attention at both lengths, then the
    compiled cells, then the other variants and transformers' RoFormer."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "scripts" / "benchmarks"))
    import gpu

    train = [(name, length) for section, name, length, _, _ in gpu.plan(argparse.Namespace(dry=False, no_compile=False))
             if section == "train"]
    explicit = ["zoo GAU-α-base, explicit attention", "zoo GAU-α-base, explicit attention, recompute_elementwise"]
    goals = [*gpu.OURS, "transformers BERT-base (sdpa)", *explicit]
    assert train[:2 * len(goals)] == [(name, length) for length in (512, 2048) for name in goals]
    assert train[2 * len(goals):2 * len(goals) + len(gpu.COMPILED)] == [(name + " compiled", 512) for name in gpu.COMPILED]
    rest = train[2 * len(goals) + len(gpu.COMPILED):]
    assert {name for name, _ in rest} == {*gpu.VARIANTS, *gpu.PEERS} - set(explicit) - {"transformers BERT-base (sdpa)"}
    assert len(rest) == 2 * len({name for name, _ in rest})
