"""scripts/benchmarks/store_polling.py, small: watchers on their own connections look at the rate the trainer's do,
and the script writes its table, JSON and plot."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "benchmarks"))

import store_polling  # noqa: E402


def test_watchers_look_every_poll_interval_and_the_report_is_written(tmp_path):
    assert store_polling.main(["--ranks", "6", "--seconds", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "store_polling.json").read_text())
    assert [row["ranks"] for row in result["rows"]] == [0, 6]  # the baseline is always measured
    none, six = result["rows"]
    assert none["looks_per_s"] == 0
    # each watcher looks once per POLL_S (2 s) from a random phase: 2 looks each in 4 s, ±1 at the window's edges
    assert 6 * 1 <= six["looks_per_s"] * 4 <= 6 * 3
    assert six["probes"] > 10 and six["round_trip_ms_median"] > 0
    assert (tmp_path / "store_polling.md").read_text().startswith("| watchers (ranks) |")
    assert (tmp_path / "store_polling.png").stat().st_size > 0
