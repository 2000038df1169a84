"""Loading and publishing models by name: `from_pretrained`, `publish`, `list_models`.

A reference is resolved in this order:
    1. a local folder (verified against its `zoo_manifest.json` when it has one);
    2. `name` or `name@version` in the local registry (verified);
    3. an official release name (zoo/convert/releases.py) not yet in the registry: converted once from
       its archive (downloads folder, or fetched when online) and published, then as 2;
    4. a Hub repo id `org/name` (through huggingface_hub: honours HF_HUB_OFFLINE and its cache).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from . import families
from .errors import UsageError
from .registry import MANIFEST, IntegrityError, ModelNotFoundError, Registry, parse_ref, verify_folder
from .tokenizer import default_tokenizer, save_vocab

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Resolved:
    """Where a reference points: the folder to load and what it is."""

    path: Path
    source: str  # "folder", "registry" or "hub"
    ref: str


def resolve(ref: str | os.PathLike, registry: str | os.PathLike | None = None, revision: str | None = None) -> Resolved:
    """Find the folder behind `ref`, verifying checksums; raises ModelNotFoundError with suggestions."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / MANIFEST).is_file():
            verify_folder(path, json.loads((path / MANIFEST).read_text()), label=str(path))
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model folder: config.json is missing")
        return Resolved(path, "folder", str(ref))
    ref = str(ref)
    name, version = parse_ref(ref)
    store = Registry(registry)
    if "/" not in name:
        wanted = version or revision
        published = store.versions(name)
        if published and (wanted is None or wanted in published):
            entry = store.resolve(name, wanted)
            return Resolved(entry.path, "registry", entry.ref)
        from .convert.releases import RELEASES, install_release

        if name in RELEASES:  # an official release: convert it from its archive once, then it is published
            entry = install_release(name, wanted, registry=store.root)
            return Resolved(entry.path, "registry", entry.ref)
        if published:
            store.resolve(name, wanted)  # raises: names the versions there are
        raise ModelNotFoundError(_not_found_message(ref, store))
    return _resolve_hub(name, version or revision, ref)


def _resolve_hub(repo_id: str, revision: str | None, ref: str) -> Resolved:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError) as error:
        raise ModelNotFoundError(
            f"{ref!r} is not a local folder, not in the registry, and could not be fetched from the Hub "
            f"(offline={os.environ.get('HF_HUB_OFFLINE', '0')}): {error}"
        ) from error
    if (folder / MANIFEST).is_file():
        verify_folder(folder, json.loads((folder / MANIFEST).read_text()), label=ref)
    return Resolved(folder, "hub", ref)


def _not_found_message(ref: str, store: Registry) -> str:
    from .convert.releases import RELEASES
    from .presets import PRESETS

    known = sorted(set(store.names()) | set(RELEASES))
    message = f"no model {ref!r}: not a folder, and not in the registry at {store.root}"
    if ref in PRESETS:
        return message + f"; {ref!r} is a preset (a size, not trained weights): build it with zoo.create({ref!r})"
    close = difflib.get_close_matches(ref, known, n=5, cutoff=0.5)
    if close:
        return message + f"; did you mean: {', '.join(close)}?"
    published = store.names()
    message += f"; released models: {', '.join(RELEASES)}"
    if published:
        return message + f"; published models: {', '.join(published)}"
    return message + " (the registry is empty)"


def from_pretrained(
    ref: str | os.PathLike,
    task: str = "masked-lm",
    registry: str | os.PathLike | None = None,
    revision: str | None = None,
    **kwargs,
):
    """Load a zoo model for `task` from a registry name, `name@version`, folder or Hub repo id.

    Extra keyword arguments go to the config / `from_pretrained` (e.g. `num_labels=3`,
    `dtype=torch.bfloat16`, `attention_backend="sdpa"`, `hidden_dropout_prob=0.0`).
    """
    resolved = resolve(ref, registry, revision)
    config_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k not in _LOAD_KWARGS}
    config = AutoConfig.from_pretrained(resolved.path, **config_kwargs)
    cls = families.model_class(config, task)
    check_weights_match_config(resolved.path, cls, config)
    model = cls.from_pretrained(resolved.path, config=config, **kwargs)
    model.zoo_ref = resolved.ref
    return model


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the safetensors weights in `folder` (headers only)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    shapes = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise IntegrityError(f"{file} is not a readable safetensors file: {error}") from error
    return shapes


def check_weights_match_config(folder: Path, cls, config) -> None:
    """Refuse weights whose encoder tensors disagree with config.json (shapes, missing, extra layers).

    transformers would re-initialise such tensors (or ignore extra ones); for a published model
    that is always a mistake, so the error names the file and the first offending tensors.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    found = checkpoint_shapes(folder)
    prefix = cls.base_model_prefix + "."
    if not any(k.startswith(prefix) for k in found):  # saved from a bare encoder
        found = {prefix + k: v for k, v in found.items()}
    if not any(k.startswith(prefix) for k in expected):  # loading into a bare encoder
        expected = {prefix + k: v for k, v in expected.items()}
    encoder_expected = {k: v for k, v in expected.items() if k.startswith(prefix)}
    encoder_found = {k: v for k, v in found.items() if k.startswith(prefix)}
    problems = []
    for key, shape in encoder_expected.items():
        if key not in encoder_found:
            problems.append(f"{key} is missing from the weights")
        elif encoder_found[key] != shape:
            problems.append(f"{key} is {list(encoder_found[key])} in the weights but {list(shape)} by config.json")
    problems += [f"{key} is in the weights but not in the model config.json describes" for key in encoder_found if key not in encoder_expected]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UsageError(f"config/weights mismatch in {folder}: {shown}")


_LOAD_KWARGS = {"dtype", "device_map", "output_loading_info", "ignore_mismatched_sizes", "low_cpu_mem_usage", "state_dict"}


def load_tokenizer(ref: str | os.PathLike, registry: str | os.PathLike | None = None, revision: str | None = None):
    """The tokenizer published with a model (same resolution and verification as `from_pretrained`)."""
    resolved = resolve(ref, registry, revision)
    if not (resolved.path / "tokenizer.json").is_file() and not (resolved.path / "vocab.txt").is_file():
        raise FileNotFoundError(f"{resolved.ref} has no tokenizer (tokenizer.json or vocab.txt) in {resolved.path}")
    return AutoTokenizer.from_pretrained(resolved.path)


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
    from .registry import check_name, check_version

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
                "zoo_version": _zoo_version(),
            },
        )
    return entry.ref


def check_new_version(as_ref: str, registry: str | os.PathLike | None = None) -> tuple[str, str]:
    """(name, version) of `as_ref`, a version about to be published: refused, naming it, when it has no
    version, an invalid name or version, or is already published. Cheap: run it before long work."""
    from .registry import RegistryError, check_name, check_version

    name, version = parse_ref(str(as_ref))
    if version is None:
        raise UsageError(f"cannot publish as {str(as_ref)!r}: give NAME@VERSION (a new version; versions are immutable)")
    check_name(name)
    check_version(version)
    store = Registry(registry)
    if version in store.versions(name):
        raise RegistryError(f"{name}@{version} is already published in {store.root}; versions are immutable")
    return name, version


def publish_evaluation(
    ref: str | os.PathLike,
    as_ref: str,
    *,
    metrics: Mapping[str, float],
    figures: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike] | None = None,
    registry: str | os.PathLike | None = None,
    note: str | None = None,
) -> str:
    """Publish the model behind `ref` again, as the new version `as_ref` (`name@version`), with an evaluation.

    The new version carries the base's weights, tokenizer, card, metrics, figures and recipe, plus
    `metrics` and `figures` (as `publish` takes them; a new key or figure title replaces the base's),
    and its card gains a section naming the evaluation (`note`). `ref` is anything `from_pretrained`
    takes; a folder or Hub id without a manifest brings no metrics, figures or recipe. Returns `name@version`.
    """
    name, version = check_new_version(as_ref, registry)
    resolved = resolve(ref, registry)
    manifest_path = resolved.path / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    config = AutoConfig.from_pretrained(resolved.path)
    built = {manifest.get("architecture"), *(getattr(config, "architectures", None) or [])}
    task = next((t for t, cls in families.FAMILIES[families.family_of(config)]["models"].items() if cls.__name__ in built),
                "masked-lm")  # re-saved with the class the base was saved with, so the files hold the same tensors
    model = from_pretrained(resolved.path, task=task, dtype="auto")
    has_tokenizer = (resolved.path / "tokenizer.json").is_file() or (resolved.path / "vocab.txt").is_file()
    tokenizer = AutoTokenizer.from_pretrained(resolved.path) if has_tokenizer else None
    try:
        new_metrics = {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError) as error:
        raise UsageError(f"metrics must map names to numbers: {error}") from error
    merged_figures = {f["file"]: (f["title"], resolved.path / f["file"]) for f in manifest.get("figures") or []}
    new_figures = collect_figures(figures)
    merged_figures.update({f["file"]: (f["title"], f["source"]) for f in new_figures})
    recipe = resolved.path / manifest["recipe"] if manifest.get("recipe") else None
    card = _card_text(resolved.path / "README.md")
    section = (f"## Evaluation{': ' + note.strip() if note else ''}\n\nPublished from `{resolved.ref}` (the same weights, "
               f"tokenizer and recipe) with {len(new_metrics)} metrics from this evaluation"
               + (f" (figures: {', '.join(f['title'] for f in new_figures)})" if new_figures else "") + ".\n")
    return publish(model, tokenizer, name=name, version=version, registry=registry,
                   metrics={**(manifest.get("metrics") or {}), **new_metrics},
                   card=(card + "\n\n" if card else "") + section,
                   figures={title: source for title, source in merged_figures.values()} or None, recipe=recipe)


def _card_text(readme: Path) -> str:
    """A model card's own text: without the front matter and, for a zoo card, without the heading,
    description and metrics table `model_card` writes (the new version writes its own)."""
    if not readme.is_file():
        return ""
    body = re.sub(r"\A---\n.*?\n---\n", "", readme.read_text(encoding="utf-8"), flags=re.DOTALL).strip()
    head, found, rest = body.partition("\n## Metrics\n")
    if not (found and head.startswith("# ")):
        return body
    lines = rest.strip("\n").splitlines()
    while lines and lines[0].startswith("|"):
        lines.pop(0)
    return "\n".join(lines).strip()


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


def _zoo_version() -> str:
    from . import __version__

    return __version__


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


def list_models(registry: str | os.PathLike | None = None) -> list[dict]:
    """Every published version: name, version, family, parameters, metrics, created, path."""
    rows = []
    for entry in Registry(registry).entries():
        m = entry.manifest
        rows.append({
            "name": entry.name, "version": entry.version, "family": m.get("family"),
            "num_parameters": m.get("num_parameters"), "metrics": m.get("metrics", {}),
            "created": m.get("created"), "path": str(entry.path),
        })
    return rows


__all__ = ["IntegrityError", "ModelNotFoundError", "from_pretrained", "list_models", "load_tokenizer", "publish", "resolve"]
