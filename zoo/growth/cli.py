"""`python -m zoo expand`: grow a published model or folder and write and/or publish the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import GrowthError
from ..families import TASKS, family_of
from .grow import SYMMETRIES, expand
from .sizes import ALPHA_POLICIES, PLACEMENTS


def cmd_expand(args) -> int:
    from ..convert.atomic_folder import atomic_folder, check_target
    from ..pretrained import from_pretrained, load_tokenizer
    from ..publishing import publish
    from ..registry import Registry, check_name, check_version, parse_ref

    if args.out is None and args.publish is None:
        print("zoo expand: error: give --out DIR and/or --publish NAME@VERSION", file=sys.stderr)
        return 1
    name = version = None
    if args.publish is not None:
        name, version = parse_ref(args.publish)
        if version is None:
            print(f"zoo expand: error: --publish needs NAME@VERSION, got {args.publish!r}", file=sys.stderr)
            return 1
        check_name(name)
        check_version(version)
        if version in Registry(args.registry).versions(name):
            print(f"zoo expand: error: {name}@{version} is already published; versions are immutable",
                  file=sys.stderr)
            return 1
    if args.out is not None:
        try:
            check_target(Path(args.out), args.overwrite)
        except FileExistsError as error:
            print(f"zoo expand: error: {error}", file=sys.stderr)
            return 1
    where = args.where
    if where not in PLACEMENTS:
        try:
            where = [int(part) for part in where.split(",") if part.strip()]
        except ValueError:
            raise GrowthError(
                f"--where expects one of {', '.join(PLACEMENTS)} or comma-separated layer indices, got {args.where!r}"
            ) from None
    max_change = None if args.max_change.lower() == "none" else float(args.max_change)
    model = from_pretrained(args.src, task=args.task, registry=args.registry)
    try:
        tokenizer = load_tokenizer(args.src, registry=args.registry)
    except FileNotFoundError:
        tokenizer = None
    big, plan = expand(
        model, hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
        head_size=args.head_size, intermediate_size=args.intermediate_size, expansion_size=args.expansion_size,
        key_size=args.key_size, where=where, symmetry=args.symmetry, seed=args.seed, noise_std=args.noise_std,
        alpha=args.alpha, max_change=max_change, return_plan=True,
    )
    record = {"source": str(args.src), **plan.summary()}
    if args.out is not None:
        with atomic_folder(args.out, overwrite=args.overwrite) as staging:
            big.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            (staging / "growth.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    if name is not None:
        record_json = json.dumps(record, indent=2, ensure_ascii=False)
        card = f"## Growth\n\nGrown with `zoo.expand` from `{args.src}`:\n\n```json\n{record_json}\n```"
        ref = publish(big, tokenizer, name=name, version=version, card=card, registry=args.registry)
        print(f"published {ref}")
    s, b = plan.small_config, plan.big_config
    print(f"grew {family_of(s)}: hidden {s.hidden_size} → {b.hidden_size}, layers {s.num_hidden_layers} → "
          f"{b.num_hidden_layers}, parameters {model.num_parameters():,} → {big.num_parameters():,}; "
          f"max |Δ output| on the probe batch {plan.probe_max_abs_change:.3e}")
    for note in plan.notes:
        print(f"  note: {note}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("expand", help="grow a model to a larger one with the same function (zoo.expand)")
    parser.add_argument("src", help="a registry name, NAME@VERSION, model folder or Hub id")
    parser.add_argument("--task", default="masked-lm", choices=list(TASKS), help="the head to load and grow")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--num-heads", type=int)
    parser.add_argument("--head-size", type=int)
    parser.add_argument("--intermediate-size", type=int, help="FFN width (GAU: expansion width e)")
    parser.add_argument("--expansion-size", type=int, help="GAU expansion width e")
    parser.add_argument("--key-size", type=int, help="GAU q/k width s")
    parser.add_argument("--where", default="interleave",
                        help="depth placement: interleave, top, bottom, or comma-separated old layer indices "
                             "after which each new layer goes (-1 = bottom)")
    parser.add_argument("--symmetry", default="split", choices=SYMMETRIES,
                        help="split: unequal shares (exact); none: equal shares; noise: equal shares + noise")
    parser.add_argument("--noise-std", type=float, default=1e-3, help="relative noise for --symmetry noise")
    parser.add_argument("--alpha", default="depth", choices=ALPHA_POLICIES,
                        help="DeepNet α: follow the new depth or keep the old one")
    parser.add_argument("--max-change", default="1e-4",
                        help="refuse a grown model whose probe outputs differ by more than this × max(1, |output|) "
                             "(post-norm depth growth is exact only up to the norms' ε); 'none' to accept any")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the grown model (save_pretrained folder) here")
    parser.add_argument("--publish", metavar="NAME@VERSION", help="publish the grown model into the registry")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.set_defaults(fn=cmd_expand)

