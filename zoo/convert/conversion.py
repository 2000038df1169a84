"""Turning a released checkpoint into one of our models: open → config → name map → model → outputs.

    result = convert_checkpoint("chinese_roformer-v2-char_L-12_H-768_A-12.zip", source="bert4keras",
                                out="converted/roformer-v2-base", publish="roformer-v2-base-zh@zhuiyi-bert4keras")

The model is built on the meta device and receives the mapped tensors directly (nothing is randomly
initialised and then overwritten); the MLM decoder is tied to the token embedding afterwards. The
vocabulary file becomes our tokenizer. Outputs are a `save_pretrained` folder (`out`, written
atomically, with `conversion.json` recording the source files' sha256, the options and what became
of every source tensor) and/or an immutable registry version (`publish`).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from ..families import model_class
from ..publishing import publish as publish_model
from ..registry import Registry, RegistryError, check_name, check_version, parse_ref, sha256_file
from ..tokenizer import save_vocab, tokenizer_from_vocab
from ..version import __version__
from . import bert4keras, bert4torch, junnyu
from .atomic_folder import atomic_folder, check_target
from .mapping import ConversionError, apply_name_map
from .releases import check_release_config
from .sources import SourceCheckpoint, family_config

SOURCES = {"bert4keras": bert4keras, "junnyu": junnyu, "bert4torch": bert4torch}
CONVERSION_RECORD = "conversion.json"


@dataclass
class ConversionResult:
    """The converted model (masked LM, eval mode), its tokenizer, the record, and where it went."""

    model: torch.nn.Module
    tokenizer: object
    record: dict
    out: Path | None = None
    ref: str | None = None


def extract_zip(archive: Path, into: Path) -> Path:
    """Unpack a release zip safely (no absolute paths, no '..', no links) and return the folder."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                name = Path(member.filename)
                if name.is_absolute() or ".." in name.parts or (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ConversionError(f"{archive}: refusing to extract unsafe member {member.filename!r}")
            bundle.extractall(into)
    except zipfile.BadZipFile as error:
        raise ConversionError(f"{archive} is truncated or not a zip archive: {error}") from error
    return into


def open_source(src: Path, source: str, family: str | None, reader: str) -> SourceCheckpoint:
    if source not in SOURCES:
        raise ConversionError(f"unknown source format {source!r}; formats: {', '.join(SOURCES)}")
    if family is not None and family not in ("roformer-v2", "gau-alpha"):
        raise ConversionError(f"family={family!r}: released checkpoints are 'roformer-v2' or 'gau-alpha'")
    if not src.exists() and not (source == "bert4keras" and Path(f"{src}.index").is_file()):
        raise FileNotFoundError(f"no checkpoint at {src}")
    return SOURCES[source].open_checkpoint(src, family=family, reader=reader)


def load_tokenizer_for(checkpoint: SourceCheckpoint, vocab: Path | None, vocab_size: int):
    vocab_file = Path(vocab) if vocab is not None else checkpoint.vocab_file
    if vocab_file is None:
        raise FileNotFoundError(f"no vocab.txt next to {checkpoint.config_file}; pass vocab= (--vocab) with the "
                                "release's vocab.txt")
    try:
        tokenizer = tokenizer_from_vocab(vocab_file)
    except ValueError as error:
        raise ConversionError(f"{vocab_file}: {error}") from error
    if len(tokenizer) != vocab_size:
        raise ConversionError(f"{vocab_file} has {len(tokenizer)} tokens but {checkpoint.config_file} says "
                              f"vocab_size={vocab_size}")
    return tokenizer, vocab_file


def build_model(checkpoint: SourceCheckpoint, config):
    """Our masked-LM model holding the checkpoint's tensors (mapped by name, shapes checked)."""
    cls = model_class(config, "masked-lm")
    with torch.device("meta"):
        model = cls(config)
    tied = dict(getattr(cls, "_tied_weights_keys", None) or {})
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}
    label = f"{checkpoint.config_file.name} ({checkpoint.family}, {config.num_hidden_layers} layers, hidden {config.hidden_size})"
    state, report = apply_name_map(checkpoint.tensors, checkpoint.name_map(config), expected,
                                   config_label=label, num_layers=config.num_hidden_layers)
    dtypes = {t.dtype for t in state.values()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if not dtype.is_floating_point:
        raise ConversionError(f"{checkpoint.tensors.label} stores its weights as {dtype}, not floating point")
    # own, freshly allocated (aligned) memory: sources may be memory-mapped files or numpy buffers
    state = {k: v.to(dtype).clone() for k, v in state.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys or set(result.missing_keys) - set(tied):
        raise RuntimeError(f"converter bug: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    model.tie_weights()
    still_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise RuntimeError(f"converter bug: parameters without values: {still_meta[:5]}")
    model.config.dtype = dtype
    return model.eval(), report


def source_files_record(checkpoint: SourceCheckpoint, archive: Path | None, vocab_file: Path) -> dict:
    files = {}
    for path in ([archive] if archive else []) + list(checkpoint.files) + [checkpoint.config_file, vocab_file]:
        path = Path(path)
        files[path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


def convert_checkpoint(
    src: str | os.PathLike,
    source: str = "bert4keras",
    *,
    out: str | os.PathLike | None = None,
    publish: str | None = None,
    registry: str | os.PathLike | None = None,
    family: str | None = None,
    vocab: str | os.PathLike | None = None,
    layer_norm_eps: str | float = "bert4keras",
    softmax_plus_min_len: int = 1,
    reader: str = "auto",
    overwrite: bool = False,
) -> ConversionResult:
    """Convert the checkpoint at `src` (folder, file, prefix or release .zip) from `source` format.

    Args:
        source: "bert4keras" (Zhuiyi's TF checkpoints), "junnyu" or "bert4torch" (PyTorch ports).
        out: write a `save_pretrained` folder here (atomically; `overwrite` to replace a non-empty one).
        publish: "name@version" to publish into the registry (`registry`, default $ZOO_REGISTRY).
        family: "roformer-v2" or "gau-alpha" to insist on one (default: detected from the tensors).
        vocab: the vocab.txt to use when it is not next to the config.
        layer_norm_eps: "bert4keras" (1e-7, the training semantics), "config" (the source config's
            value, e.g. JunnYu's 1e-12) or a number.
        softmax_plus_min_len: GAU-α's floor on n (1 = training-era bert4keras; 16 = bert4keras 0.11.5).
        reader: TensorFlow checkpoints only: "auto", "pure" or "tensorflow" (see tf_checkpoint).
    """
    src = Path(src).expanduser()
    name = version = None
    if publish is not None:
        name, version = parse_ref(publish)
        if not version:
            raise ConversionError(f"publish={publish!r}: give NAME@VERSION")
        check_name(name)
        check_version(version)
        if version in Registry(registry).versions(name):  # fail before the (long) conversion, not after
            raise RegistryError(f"{name}@{version} is already published in {Registry(registry).root}; "
                                "versions are immutable")
    if out is not None:
        check_target(Path(out), overwrite)  # fail before the (long) conversion, not after
    with ExitStack() as stack:
        archive = None
        if src.is_file() and src.suffix == ".zip":
            archive = src
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zoo-convert-")))
            src = extract_zip(archive, workdir)
        checkpoint = open_source(src, source, family, reader)
        fields = dict(checkpoint.fields)
        vocab_size = fields.get("vocab_size")
        tokenizer, vocab_file = load_tokenizer_for(checkpoint, vocab, vocab_size)
        config = family_config(checkpoint.family, fields, checkpoint.config_file, source_eps=checkpoint.source_eps,
                               layer_norm_eps=layer_norm_eps, softmax_plus_min_len=softmax_plus_min_len,
                               pad_token_id=tokenizer.pad_token_id)
        if name is not None:
            check_release_config(name, config)
        model, report = build_model(checkpoint, config)
        record = {
            "source": {"format": checkpoint.format, "path": str(archive or src),
                       "files": source_files_record(checkpoint, archive, vocab_file)},
            "family": checkpoint.family,
            "options": {"layer_norm_eps": layer_norm_eps, "softmax_plus_min_len": softmax_plus_min_len,
                        "tensor_reader": type(checkpoint.tensors).__name__},
            "config": {"layer_norm_eps": config.layer_norm_eps, "softmax_plus_min_len": config.softmax_plus_min_len},
            "tensors": report.to_json(),
            "zoo_version": __version__,
        }
        result = ConversionResult(model, tokenizer, record)
        if out is not None:
            with atomic_folder(out, overwrite) as staging:
                model.save_pretrained(staging)
                tokenizer.save_pretrained(staging)
                save_vocab(tokenizer, staging / "vocab.txt")
                (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n",
                                                         encoding="utf-8")
            result.out = Path(out)
        if name is not None:
            result.ref = publish_model(model, tokenizer, name=name, version=version, card=model_card_section(record),
                                       registry=registry)
    return result


def model_card_section(record: dict) -> str:
    """Provenance for the registry's model card: where the weights came from and how they were read."""
    source = record["source"]
    rows = "\n".join(f"| {name} | {meta['size']:,} | `{meta['sha256']}` |" for name, meta in source["files"].items())
    options = record["config"]
    return (
        "## Provenance\n\n"
        f"Converted by `zoo.convert` from the {source['format']} checkpoint `{Path(source['path']).name}` "
        f"({record['family']}); every tensor read by name, shapes checked, none left over.\n\n"
        "| file | bytes | sha256 |\n| --- | --- | --- |\n" + rows + "\n\n"
        f"Norm ε = {options['layer_norm_eps']:g}; softmax_plus minimum length = {options['softmax_plus_min_len']} "
        "(architectures.md §1.1, §2.2).\n"
    )


__all__ = ["CONVERSION_RECORD", "SOURCES", "ConversionError", "ConversionResult", "convert_checkpoint"]
