"""The result table (markdown + JSON) with the published scores beside ours, and a bar chart PNG."""

from __future__ import annotations

from pathlib import Path

from .metrics import leaderboard_averages
from .submission import atomic_write_json, atomic_write_text
from .tasks import PUBLISHED, TASKS

METRIC_NAMES = {"accuracy": "acc", "cmrc2018": "EM (F1)", "cluener": "macro F1 (micro)"}


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def _cell(entry: dict | None, task) -> str:
    if not entry:
        return "—"
    if task.metric == "cmrc2018":
        return f"{entry['em']:.2f} ({entry['f1']:.2f})"
    if task.metric == "cluener":
        return f"{entry['macro_f1']:.2f} ({entry['micro_f1']:.2f})"
    return _fmt(entry.get("score"))


def markdown(results: dict) -> str:
    names = list(results["tasks"])
    sources = [s for s in PUBLISHED if any(n in PUBLISHED[s] for n in names)]
    head = ["task", "metric", "dev (ours)", "test (ours)", "steps", "time"] + sources
    lines = [f"# CLUE results: {results['model']}", "",
             f"recipe `{results['recipe']}`, seed {results['seed']}"
             + (", randomly initialised" if results.get("random_init") else "")
             + (", DRY RUN (a handful of examples per split: the numbers mean nothing)" if results.get("dry_run") else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        r, task = results["tasks"][name], TASKS[name]
        row = [name, METRIC_NAMES.get(task.metric, task.metric), _cell(r.get("dev"), task), _cell(r.get("test"), task),
               str(r.get("steps", "—")), f"{r.get('seconds', 0):.0f}s"]
        row += [_fmt(PUBLISHED[s].get(name)) for s in sources]
        lines.append("| " + " | ".join(row) + " |")
    averages = results.get("averages", {})
    if any(v is not None for v in averages.values()):
        lines += ["", "Leaderboard averages (dev, ours): " + ", ".join(f"{k} {_fmt(v)}" for k, v in averages.items())]
    if sources:
        lines += ["", "Published columns (specs/clue.md §6): GAU-α/PaddleNLP rows are dev-set, blog-8998 rows are test "
                  "submissions, all Base/Small models pretrained on far more text; cmrc2018 in the GAU-α row is the "
                  "stricter start/end accuracy."]
    if results.get("submission"):
        lines += ["", f"Submission: `{results['submission']}` ({', '.join(results.get('predict_files', []))})"]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results["tasks"].items() if r.get("dev")]
    sources = [s for s in PUBLISHED if any(n in PUBLISHED[s] for n in names)]
    series = [("ours (dev)", [results["tasks"][n]["dev"]["score"] for n in names])]
    if any(results["tasks"][n].get("test") for n in names):
        series.append(("ours (test)", [(results["tasks"][n].get("test") or {}).get("score", 0.0) for n in names]))
    series += [(s, [PUBLISHED[s].get(n, 0.0) for n in names]) for s in sources]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names) * max(1, len(series)) / 3), 4.5))
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        ax.bar([i + k * width for i in range(len(names))], values, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"CLUE: {results['model']}" + (" (random init)" if results.get("random_init") else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write(results: dict, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    scores = {n: r["dev"]["score"] for n, r in results["tasks"].items() if r.get("dev")}
    results["averages"] = leaderboard_averages(scores)
    paths = {"json": atomic_write_json(out_dir / "results.json", results),
             "markdown": atomic_write_text(out_dir / "results.md", markdown(results))}
    if any(r.get("dev") for r in results["tasks"].values()):
        paths["png"] = plot(results, out_dir / "results.png")
    return paths


def compare(runs, out_dir: str | Path, title: str = "CLUE pipeline") -> dict[str, Path]:
    """Several runs' results side by side: `runs` is a list of (label, results.json content) pairs (or a
    dict); labels may repeat across tasks. Writes compare.md/.json/.png."""
    runs = list(runs.items()) if isinstance(runs, dict) else list(runs)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    tasks = list(dict.fromkeys(t for _, r in runs for t in r["tasks"]))
    rows = []
    for task in tasks:
        for label, r in runs:
            entry = r["tasks"].get(task)
            if not entry:
                continue
            dev, test = entry.get("dev") or {}, entry.get("test") or {}
            rows.append({"task": task, "run": label, "model": r["model"], "random_init": r.get("random_init", False),
                         "dev": dev.get("score"), "test": test.get("score"), "test_micro_f1": test.get("micro_f1"),
                         "steps": entry.get("steps"), "seconds": entry.get("seconds")})
    metric = {t: METRIC_NAMES.get(TASKS[t].metric, TASKS[t].metric) for t in tasks}
    lines = [f"| task | metric | run | dev | test | steps | time |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        test = _fmt(row["test"]) + (f" (micro {row['test_micro_f1']:.2f})" if row["test_micro_f1"] is not None else "")
        lines.append(f"| {row['task']} | {metric[row['task']]} | {row['run']} | {_fmt(row['dev'])} | {test} | "
                     f"{row['steps']} | {row['seconds']:.0f}s |")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        width = 0.8 / max(1, len(mine))
        for k, r in enumerate(mine):
            values = [r["dev"] or 0.0, r["test"] or 0.0]
            bars = ax.bar([x + k * width for x in range(2)], values, width, label=r["run"])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(2)], ["dev", "test"])
        ax.set_title(f"{task} ({metric[task]})")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "compare.png"
    tmp = out_dir / ".compare.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)
    return {"json": atomic_write_json(out_dir / "compare.json", {"rows": rows}),
            "markdown": atomic_write_text(out_dir / "compare.md", "\n".join(lines) + "\n"), "png": png}
