"""`python -m zoo convert | export-junnyu | releases`: the converters from the shell.

    python -m zoo convert chinese_roformer-v2-char_L-12_H-768_A-12.zip --from bert4keras --out converted/base
    python -m zoo convert ./roformer_v2_chinese_char_base --from junnyu --publish roformer-v2-base-zh@junnyu
    python -m zoo export-junnyu roformer-v2-base-zh --out ports/roformer_v2_base
    python -m zoo releases
"""

from __future__ import annotations

import sys
from pathlib import Path

from .conversion import SOURCES


def _eps(value: str) -> str | float:
    if value in ("bert4keras", "config"):
        return value
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"--layer-norm-eps expects 'bert4keras', 'config' or a number, got {value!r}") from None


def cmd_convert(args) -> int:
    from .conversion import convert_checkpoint

    if args.out is None and args.publish is None:
        raise SystemExit("zoo convert: give --out DIR and/or --publish NAME@VERSION")
    try:
        result = convert_checkpoint(
            args.src, source=args.source, out=args.out, publish=args.publish, registry=args.registry,
            family=args.family, vocab=args.vocab, layer_norm_eps=_eps(args.layer_norm_eps),
            softmax_plus_min_len=args.softmax_plus_min_len, reader=args.reader, overwrite=args.overwrite,
        )
    except (FileExistsError, ImportError) as error:  # the other user errors are reported by zoo.__main__
        print(f"zoo convert: error: {error}", file=sys.stderr)
        return 1
    tensors = result.record["tensors"]
    print(f"converted {result.record['source']['path']} ({args.source}, {result.record['family']}): "
          f"{len(tensors['used'])} tensors mapped, {len(tensors['copies_checked'])} copies checked, "
          f"{len(tensors['ignored'])} ignored")
    if result.out is not None:
        print(f"wrote {result.out}")
    if result.ref is not None:
        print(f"published {result.ref}")
    return 0


def cmd_export_junnyu(args) -> int:
    from ..pretrained import from_pretrained, load_tokenizer
    from .junnyu import export_junnyu

    model = from_pretrained(args.ref, registry=args.registry)
    try:
        tokenizer = load_tokenizer(args.ref, registry=args.registry)
    except FileNotFoundError:
        tokenizer = None
    try:
        out = export_junnyu(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite)
    except FileExistsError as error:
        print(f"zoo export-junnyu: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out} (JunnYu layout: config.json, model.safetensors, pytorch_model.bin"
          + (", vocab.txt)" if tokenizer is not None else ")"))
    return 0


def cmd_releases(args) -> int:
    from .install import downloads_dir, release_status

    print(f"downloads folder: {downloads_dir(args.registry)}")
    for row in release_status(args.registry):
        state = "installed" if row["installed"] else ("archive found" if row["archive_found"] else "not downloaded")
        print(f"{row['name']:24} {row['family']:12} {state:16} {row['archive']}")
    return 0


def register_cli(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="convert a released checkpoint (bert4keras, JunnYu, bert4torch)")
    convert.add_argument("src", type=Path, help="a checkpoint folder, file, TF prefix, or release .zip")
    convert.add_argument("--from", dest="source", required=True, choices=sorted(SOURCES), help="source format")
    convert.add_argument("--out", type=Path, help="write a save_pretrained folder here")
    convert.add_argument("--publish", metavar="NAME@VERSION", help="publish into the registry")
    convert.add_argument("--family", choices=["roformer-v2", "gau-alpha"], help="insist on a family (default: detect)")
    convert.add_argument("--vocab", type=Path, help="vocab.txt when it is not next to the config")
    convert.add_argument("--layer-norm-eps", default="bert4keras",
                         help="'bert4keras' (1e-7, training semantics; default), 'config' (the source config's) or a number")
    convert.add_argument("--softmax-plus-min-len", type=int, default=1,
                         help="GAU-α softmax_plus floor on n: 1 = training-era bert4keras (default), 16 = bert4keras 0.11.5")
    convert.add_argument("--reader", default="auto", choices=["auto", "pure", "tensorflow"],
                         help="TensorFlow checkpoint reader (default: pure Python, TensorFlow only as a fallback)")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    convert.set_defaults(fn=cmd_convert)

    export = subparsers.add_parser("export-junnyu", help="write a model in the layout of JunnYu's PyTorch ports")
    export.add_argument("ref", help="a registry name, NAME@VERSION, or folder")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(fn=cmd_export_junnyu)

    releases = subparsers.add_parser("releases", help="the released models and whether they are installed")
    releases.set_defaults(fn=cmd_releases)
