"""Loading models by name: `from_pretrained`, `load_tokenizer`, `list_models`; and `publish_evaluation`,
which loads a published model and publishes it again with an evaluation (`publish` itself, which
loads nothing, is zoo/publishing.py's; it is re-exported here).

A reference is resolved in this order:
    1. a local folder (verified against its `zoo_manifest.json` when it has one);
    2. `name` or `name@version` in the local registry (verified);
    3. an official release name (zoo/convert/releases.py) not yet in the registry: converted once from
       its archive (downloads folder, or fetched when online) and published, then as 2;
    4. a Hub repo id `org/name` (through huggingface_hub: honours HF_HUB_OFFLINE and its cache).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from . import families
from .errors import UsageError
from .publishing import check_new_version, collect_figures, publish
from .registry import MANIFEST, IntegrityError, ModelNotFoundError, Registry, parse_ref, verify_folder

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
        from .convert.install import install_release
        from .convert.releases import RELEASES

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

    Extra keyword arguments go to the config where they name one of its fields (`num_labels=3`,
    `attention_backend="sdpa"`, `hidden_dropout_prob=0.0`), else to transformers' `from_pretrained`
    (`dtype=torch.bfloat16`, `device_map=...`, `max_memory=...`, `offload_folder=...`), which refuses
    what it does not take.
    """
    resolved = resolve(ref, registry, revision)
    load_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _LOAD_KWARGS}
    config, unused = AutoConfig.from_pretrained(resolved.path, return_unused_kwargs=True, **kwargs)
    cls = families.model_class(config, task)
    check_weights_match_config(resolved.path, cls, config)
    model = cls.from_pretrained(resolved.path, config=config, **load_kwargs, **unused)
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


# loader options that a config would take for a field of its own (its `dtype`) or keep: sent to the loader
_LOAD_KWARGS = {"dtype", "device_map", "output_loading_info", "ignore_mismatched_sizes", "low_cpu_mem_usage", "state_dict"}


def load_tokenizer(ref: str | os.PathLike, registry: str | os.PathLike | None = None, revision: str | None = None):
    """The tokenizer published with a model (same resolution and verification as `from_pretrained`)."""
    resolved = resolve(ref, registry, revision)
    if not (resolved.path / "tokenizer.json").is_file() and not (resolved.path / "vocab.txt").is_file():
        raise FileNotFoundError(f"{resolved.ref} has no tokenizer (tokenizer.json or vocab.txt) in {resolved.path}")
    return AutoTokenizer.from_pretrained(resolved.path)


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


__all__ = ["IntegrityError", "ModelNotFoundError", "check_new_version", "from_pretrained", "list_models", "load_tokenizer",
           "publish", "publish_evaluation", "resolve"]
