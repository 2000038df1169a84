"""scripts/benchmarks/kernel_build.py: its child builds (or here loads from the cache) the three modules
both ways, its table, and a build that leaves a module out stops it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "benchmarks"))

import kernel_build  # noqa: E402


@pytest.mark.parametrize("way", kernel_build.WAYS)
def test_the_child_builds_every_module_its_way(way):
    """In the test environment's extension cache, where the modules are built already (loading them takes
    a second): the child's code runs and reports every module, each way."""
    result = subprocess.run([sys.executable, "-c", kernel_build.CHILD, way], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["built"] == {"dropout": True, "attention": True, "elementwise": True}
    assert record["seconds"] > 0


def test_the_report_gives_each_way_and_the_ratio():
    text = kernel_build.report({"one at a time": [60.0, 62.0], "at once": [30.0, 31.0]}, "a CPU, 2 cores")
    assert text.startswith("First build of the three CPU kernel modules (a CPU, 2 cores)")
    assert "| one at a time | 60.0, 62.0 | 61.0 |" in text
    assert "| at once | 30.0, 31.0 | 30.5 |" in text
    assert text.endswith("one at a time / at once: 2.00×\n")


def test_a_module_left_unbuilt_stops_the_benchmark(monkeypatch):
    record = {"seconds": 1.0, "built": {"dropout": True, "attention": False, "elementwise": True}}
    monkeypatch.setattr(kernel_build.subprocess, "run",
                        lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, json.dumps(record) + "\n", ""))
    with pytest.raises(SystemExit, match=r"the 'at once' build left modules unbuilt .*'attention': False"):
        kernel_build.build_once("at once")
