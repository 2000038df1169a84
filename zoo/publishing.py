"""Publishing a model into the registry: `publish` writes an immutable version (weights, config,
tokenizer, model card with metrics, figures, recipe, manifest of sha256 digests).

Loading lives in zoo/pretrained.py, which also publishes evaluations of loaded models on top of
this module; the converters (zoo/convert/) publish through it too, so nothing here loads by name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from . import families
from .errors import UsageError
from .registry import Registry, RegistryError, check_name, check_version, parse_ref
from .tokenizer import default_tokenizer, save_vocab
from .version import __version__


def publish(
    model,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    name: str,
    version: str,
    metrics: dict[str, float] | None = None,
    card: str | None = None,
    registry: str | os.PathLike | None = None,
    max_shard_size: str = "2GB",
    figures: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike] | None = None,
    recipe: str | os.PathLike | Mapping | None = None,
) -> str:
    """Publish `model` (and its tokenizer) as an immutable registry version; returns `name@version`.

    Writes model.safetensors (sharded above `max_shard_size`), config.json, the tokenizer
    (tokenizer.json, tokenizer_config.json, vocab.txt), a model card README.md with `metrics`, and
    the manifest. With `tokenizer=None` the default tokenizer is included when its size matches.

    `figures`: PNG files published with the version (training curves, evaluation plots), a list of
    paths (titled by file stem) or a mapping title → path; stored as `figure-<title>.png` (the title
    lower-cased, other characters as '-'; with `-<8 hex digits of its sha1>` added when letters or
    digits outside a-z0-9, such as Chinese, had to be dropped, so such titles never collide).
    `recipe`: the training recipe, a YAML/JSON file or a mapping (written as recipe.yaml).
    Both are covered by the manifest (`figures`, `recipe` keys) and verified on load like the
    weights; a missing or non-PNG figure, or an unreadable recipe, is refused before anything is
    written; so is an invalid or already published name@version, before the model is saved.
    """
    check_name(name)  # before the ref is joined: a name with '@' would split there
    check_version(version)
    check_new_version(f"{name}@{version}", registry)
    figure_files = collect_figures(figures)
    recipe_file = recipe_payload(recipe)
    store = Registry(registry)
    if tokenizer is None:
        candidate = default_tokenizer()
        tokenizer = candidate if len(candidate) == model.config.vocab_size else None
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise UsageError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    store.root.mkdir(parents=True, exist_ok=True)
    with store.staging(".stage-") as staging:  # locked while in use: `zoo gc` removes it only if we die
        staging = Path(staging)
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
            save_vocab(tokenizer, staging / "vocab.txt")
        (staging / "README.md").write_text(model_card(model, name, version, metrics, card), encoding="utf-8")
        for figure in figure_files:
            shutil.copyfile(figure["source"], staging / figure["file"])
        if recipe_file is not None:
            (staging / recipe_file[0]).write_bytes(recipe_file[1])
        entry = store.publish_folder(
            staging,
            name,
            version,
            extra_manifest={
                "family": families.family_of(model.config),
                "architecture": type(model).__name__,
                "num_parameters": int(model.num_parameters()),
                "metrics": dict(metrics or {}),
                "figures": [{k: v for k, v in figure.items() if k != "source"} for figure in figure_files],
                "recipe": recipe_file[0] if recipe_file is not None else None,
                "zoo_version": __version__,
            },
        )
    return entry.ref


def check_new_version(as_ref: str, registry: str | os.PathLike | None = None) -> tuple[str, str]:
    """(name, version) of `as_ref`, a version about to be published: refused, naming it, when it has no
    version, an invalid name or version, or is already published. Cheap: run it before long work."""
    name, version = parse_ref(str(as_ref))
    if version is None:
        raise UsageError(f"cannot publish as {str(as_ref)!r}: give NAME@VERSION (a new version; versions are immutable)")
    check_name(name)
    check_version(version)
    store = Registry(registry)
    if version in store.versions(name):
        raise RegistryError(f"{name}@{version} is already published in {store.root}; versions are immutable")
    return name, version


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file; ValueError naming the file when it is not a PNG."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    # signature, then the IHDR chunk: length (4), type (4), width (4), height (4)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise UsageError(f"figure {path} is not a PNG file (figures must be PNG images)")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def collect_figures(figures) -> list[dict]:
    """Check the figures given to `publish` and name them: [{file, title, width, height, source}]."""
    if figures is None:
        return []
    if isinstance(figures, (str, os.PathLike)):
        figures = [figures]
    items = list(figures.items()) if isinstance(figures, Mapping) else [(Path(p).stem, p) for p in figures]
    out, taken = [], {}
    for title, source in items:
        source = Path(source).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"figure file not found: {source}")
        width, height = png_size(source)
        file = figure_file_name(str(title))
        if file in taken:
            raise UsageError(f"figures {taken[file]} and {source} would both be stored as {file}: give them distinct titles")
        taken[file] = source
        out.append({"file": file, "title": str(title), "width": width, "height": height, "source": source})
    return out


FIGURE_SLUG_MAX = 80


def figure_file_name(title: str) -> str:
    """`figure-<slug>.png` for a figure title; `figure-<slug>-<sha1 of the title, 8 hex>.png` when the
    slug lost letters or digits (non-ASCII ones, such as Chinese), is empty or was cut to length."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", title.lower()).strip("-.")
    lost = any(ch.isalnum() and not ("a" <= ch <= "z" or "0" <= ch <= "9") for ch in title.lower())
    if lost or not slug or len(slug) > FIGURE_SLUG_MAX:
        digest = hashlib.sha1(title.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        slug = "-".join(part for part in (slug[:FIGURE_SLUG_MAX].strip("-."), digest) if part)
    return f"figure-{slug}.png"


def recipe_payload(recipe) -> tuple[str, bytes] | None:
    """The training recipe to store with a version: (file name, bytes); a file is kept as written."""
    import yaml

    if recipe is None:
        return None
    if isinstance(recipe, Mapping):
        try:
            text = yaml.safe_dump(dict(recipe), sort_keys=False, allow_unicode=True)
        except yaml.YAMLError as error:
            raise UsageError(f"recipe cannot be written as YAML: {error}") from error
        return "recipe.yaml", text.encode("utf-8")
    path = Path(recipe).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    data = path.read_bytes()
    try:
        parsed = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise UsageError(f"recipe {path} is not a YAML or JSON file: {error}") from error
    if not isinstance(parsed, dict):
        raise UsageError(f"recipe {path} is not a mapping of sections (got {type(parsed).__name__})")
    return ("recipe.json" if path.suffix.lower() == ".json" else "recipe.yaml"), data


def model_card(model, name: str, version: str, metrics: dict[str, float] | None, card: str | None) -> str:
    """README.md with Hub front matter (model-index) and a metrics table."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    config = model.config
    results = []
    for key, value in (metrics or {}).items():
        dataset, _, metric = key.rpartition("/")
        results.append(
            EvalResult(task_type="fill-mask", dataset_type=dataset or "embedded-corpus",
                       dataset_name=dataset or "embedded-corpus", metric_type=metric, metric_value=float(value))
        )
    data = ModelCardData(
        language="zh",
        library_name="transformers",
        pipeline_tag="fill-mask",
        tags=["zoo", families.family_of(config), "chinese"],
        model_name=name,
        eval_results=results or None,
    )
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in (metrics or {}).items()) or "| (none) | |"
    body = (
        f"# {name} {version}\n\n"
        f"{families.family_of(config)} encoder: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"vocabulary {config.vocab_size}, {model.num_parameters():,} parameters.\n\n"
        f"Load with `zoo.from_pretrained(\"{name}@{version}\")`.\n\n"
        f"## Metrics\n\n| metric | value |\n| --- | --- |\n{rows}\n"
    )
    if card:
        body += f"\n{card.strip()}\n"
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
