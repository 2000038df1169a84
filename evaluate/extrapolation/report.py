"""Writing results: markdown tables, JSON and PNG plots, each file written atomically (temporary
file in the same folder, then renamed), plus the run record B.6 item 9 asks for."""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path


def _publish(tmp: str, path: Path) -> None:
    """Give the finished temporary file the usual permissions (mkstemp makes it 0600), then rename it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, data: dict) -> Path:
    return atomic_write_text(path, json.dumps(_finite(data), indent=2, ensure_ascii=False) + "\n")


def atomic_save_figure(fig, path: Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _finite(value):
    """JSON has no NaN: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def git_revision() -> dict:
    """Commit of the checkout this code runs from, and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def markdown_table(title: str, row_names: list[str], column_names: list[str], cell) -> str:
    """A markdown table; `cell(row, column)` returns the text of one cell."""
    lines = [f"### {title}", "", "| | " + " | ".join(column_names) + " |",
             "| --- | " + " | ".join("---:" for _ in column_names) + " |"]
    for row in row_names:
        lines.append(f"| {row} | " + " | ".join(cell(row, column) for column in column_names) + " |")
    return "\n".join(lines) + "\n"


def percent(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def variant_style(name: str, index_of_method: dict[str, int]):
    """Colour by method, dashed for the log n† combination, so a method and its +logn_dagger pair up."""
    method = name.replace("+logn_dagger", "").replace("+logn_train", "")
    if method not in index_of_method:
        index_of_method[method] = len(index_of_method)
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    color = cmap(index_of_method[method] % 20)
    return {"color": color, "linestyle": "--" if "logn" in name and method != name else "-"}
