"""`python -m zoo` (or `zoo`): the registry and model tools from the shell.

    python -m zoo list
    python -m zoo show NAME[@VERSION]
    python -m zoo verify [NAME[@VERSION]]       (no name: every version, and what crashed publishes left)
    python -m zoo gc [--dry-run]                 remove what interrupted publishes left in the registry
    python -m zoo publish DIR --name NAME --version VERSION [--metric KEY=VALUE ...]
    python -m zoo presets
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .errors import UsageError, ZooError

COMMANDS: dict = {}


def command(name: str, help: str):
    def register(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return register


@command("list", "list the registry's models and versions")
def cmd_list(args) -> int:
    from .pretrained import list_models

    rows = list_models(args.registry)
    if not rows:
        print("(the registry is empty)")
        return 0
    table = [("model", "family", "parameters", "created", "metrics")]
    for row in rows:
        table.append((f"{row['name']}@{row['version']}", row["family"] or "?", f"{row['num_parameters'] or 0:,}",
                      row["created"] or "?", ", ".join(f"{k}={v:.4g}" for k, v in row["metrics"].items())))
    widths = [max(len(line[column]) for line in table) for column in range(4)]  # columns as wide as their cells
    for model, family, parameters, created, metrics in table:
        print(f"{model:<{widths[0]}}  {family:<{widths[1]}}  {parameters:>{widths[2]}}  {created:<{widths[3]}}  {metrics}".rstrip())
    return 0


@command("show", "show one model's manifest and config")
def cmd_show(args) -> int:
    from .registry import Registry, parse_ref

    name, version = parse_ref(args.ref)
    entry = Registry(args.registry).resolve(name, version, verify=False)
    print(json.dumps({"ref": entry.ref, "path": str(entry.path), **entry.manifest}, indent=2, ensure_ascii=False))
    config = entry.path / "config.json"
    if config.is_file():
        print(config.read_text())
    return 0


@command("verify", "check published versions against their manifests (every one without NAME) and list crash leftovers")
def cmd_verify(args) -> int:
    from .registry import Registry, format_size, parse_ref

    registry = Registry(args.registry)
    failed = 0
    if args.ref:
        name, version = parse_ref(args.ref)
        entry = registry.resolve(name, version, verify=True)
        print(f"{entry.ref}: {len(entry.manifest['files'])} files verified ({entry.path})")
    else:
        results = registry.verify_all()
        for ref, entry, error in results:
            if error is None:
                print(f"{ref}: {len(entry.manifest['files'])} files verified ({entry.path})")
            else:
                failed += 1
                print(f"{ref}: FAILED: {error}")
        print(f"{len(results)} version(s) in {registry.root}: {len(results) - failed} verified, {failed} failed")
    leftovers = [item for item in registry.leftovers() if not item.active]
    for item in leftovers:
        print(f"leftover: {item.describe()}")
    if leftovers:
        print(f"{len(leftovers)} leftover(s) of interrupted publishes, {format_size(sum(i.size for i in leftovers))}: "
              "`python -m zoo gc` removes them")
    return 1 if failed else 0


@command("gc", "remove what interrupted publishes left in the registry (never a running publish's files)")
def cmd_gc(args) -> int:
    from .registry import Registry, format_size

    items = Registry(args.registry).collect_garbage(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    removed = [item for item in items if not item.active]
    for item in items:
        print(f"kept {item.describe()}" if item.active else f"{verb} {item.describe()}")
    print(f"{verb} {len(removed)} leftover(s), {format_size(sum(i.size for i in removed))}" if removed else "nothing to remove")
    return 0


@command("publish", "publish a saved model folder (save_pretrained output) as NAME@VERSION")
def cmd_publish(args) -> int:
    from .pretrained import from_pretrained, load_tokenizer, publish

    folder = Path(args.folder)
    model = from_pretrained(folder, task=args.task)
    tokenizer = load_tokenizer(folder) if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file() else None
    metrics = {}
    for item in args.metric or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--metric expects KEY=VALUE, got {item!r}")
        try:
            metrics[key] = float(value)
        except ValueError:
            raise UsageError(f"--metric {key}: {value!r} is not a number") from None
    ref = publish(model, tokenizer, name=args.name, version=args.version, metrics=metrics,
                  card=Path(args.card).read_text() if args.card else None, registry=args.registry,
                  figures=args.figure or None, recipe=args.recipe)
    print(f"published {ref}")
    return 0


@command("fill-mask", "print a masked-LM model's top predictions for each [MASK] in some sentences")
def cmd_fill_mask(args) -> int:
    from transformers import pipeline

    from .pretrained import from_pretrained, load_tokenizer
    from .runtime import parse_device

    device = parse_device(args.device)
    model = from_pretrained(args.ref, registry=args.registry).eval().to(device)
    tokenizer = load_tokenizer(args.ref, registry=args.registry)
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, device=device)
    for text in args.texts:
        if tokenizer.mask_token not in text:
            raise UsageError(f"no {tokenizer.mask_token} in {text!r}")
        results = fill(text, top_k=args.top_k)
        if text.count(tokenizer.mask_token) == 1:
            results = [results]
        print(text)
        for i, candidates in enumerate(results, 1):
            shown = "  ".join(f"{c['token_str']} ({c['score']:.1%})" for c in candidates)
            print(f"  [MASK] {i}: {shown}")
    return 0


@command("presets", "list the model presets")
def cmd_presets(args) -> int:
    from .presets import preset_config, presets

    for name, fields in presets().items():
        config = preset_config(name)
        print(f"{name:22} {fields['family']:12} L={config.num_hidden_layers:<5} H={config.hidden_size:<5} "
              f"params={config.num_parameters():,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="RoFormerV2 / GAU-α / DeepNet model zoo")
    parser.add_argument("--registry", default=None, help="registry root (default: $ZOO_REGISTRY or checkpoints/registry)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help)
        p.set_defaults(fn=fn)
        if name == "show":
            p.add_argument("ref", help="NAME or NAME@VERSION")
        if name == "verify":
            p.add_argument("ref", nargs="?", help="NAME or NAME@VERSION (default: every version of every model)")
        if name == "gc":
            p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
        if name == "fill-mask":
            p.add_argument("ref", help="a registry name, NAME@VERSION, folder or Hub id")
            p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when present)")
            p.add_argument("texts", nargs="+", help="sentences containing [MASK]")
            p.add_argument("--top-k", type=int, default=5)
        if name == "publish":
            p.add_argument("folder")
            p.add_argument("--name", required=True)
            p.add_argument("--version", required=True)
            p.add_argument("--task", default="masked-lm")
            p.add_argument("--metric", action="append", help="KEY=VALUE, repeatable")
            p.add_argument("--card", help="a markdown file appended to the model card")
            p.add_argument("--figure", action="append", help="a PNG published with the version (repeatable)")
            p.add_argument("--recipe", help="the training recipe (YAML) published with the version")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is None or not module_name.startswith(error.name):
                raise
            continue
        module.register_cli(sub)  # adds its subparser(s) with set_defaults(fn=...)
    return parser


# modules that add their own subcommands through `register_cli(subparsers)`
COMMAND_MODULES = ("zoo.growth.cli", "zoo.convert.cli", "zoo.site")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ZooError, FileNotFoundError, FileExistsError) as error:  # anything else keeps its traceback
        print(f"zoo {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
