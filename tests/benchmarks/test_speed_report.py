"""scripts/benchmarks/speed.py's report: the table's ratios and the chart, redrawn from a results file."""

import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "benchmarks"
sys.path.insert(0, str(SCRIPTS))

import speed  # noqa: E402


def row(model, family, mode, seq_len, tokens_per_s, dropout=0.1):
    return dict(mode=mode, model=model, family=family, seq_len=seq_len, dtype="bf16", attention_dropout=dropout,
                tokens_per_s=tokens_per_s, peak_fraction=tokens_per_s / 2000)


def test_replot_writes_the_table_and_the_chart(tmp_path):
    results = []
    for seq_len in (128, 2048):
        results += [row("zoo-roformer-v2", "roformer-v2", "train", seq_len, 1800.0),
                    row("zoo-gau-alpha", "gau-alpha", "train", seq_len, 1500.0),
                    row("transformers-bert-eager", "roformer-v2", "train", seq_len, 900.0),
                    row("junnyu-gau-alpha", "gau-alpha", "train", seq_len, 1000.0)]
    payload = {"peaks_gflops": {"fp32": 90.0, "bf16": 190.0}, "threads": 1, "torch": "test", "results": results}
    (tmp_path / "speed.json").write_text(json.dumps(payload))
    assert speed.main(["--replot", str(tmp_path)]) == 0
    table = (tmp_path / "speed.md").read_text()
    assert "| train | 0.1 | bf16 | 2048 | 1,800 (90%) | 1,500 (75%) | 900 (45%) | 1,000 (50%) |" in table
    assert "roformer-v2 2.00× (transformers-bert-eager)" in table
    assert "gau-alpha 1.50× (junnyu-gau-alpha)" in table
    png = (tmp_path / "speed.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
