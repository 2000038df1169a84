"""The local model registry: immutable, checksummed versions in the Hugging Face Hub cache layout.

    <root>/models--zoo--<name>/
        blobs/<sha256>                     file contents, named by their sha256
        snapshots/<commit>/<file>          relative symlinks into blobs/ (commit = sha1 of the manifest)
        refs/<version>                     the commit of that version (written last: the commit point)
        refs/main                          the commit of the newest version

Because this is the layout `huggingface_hub` reads, transformers resolves it offline too:
`AutoModelForMaskedLM.from_pretrained("zoo/<name>", revision="<version>", cache_dir=<root>)`.

Every snapshot holds `zoo_manifest.json` with the sha256 and size of every other file; loading
verifies it (and that the manifest hashes to the commit) and refuses tampered, missing or extra
files with an error naming the file. Publishing writes into a temporary folder, moves the blobs
and the snapshot into place and only then creates the version's ref with an exclusive link, so a
crash never leaves a half-published version and an existing version is never overwritten.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "zoo_manifest.json"
REPO_PREFIX = "models--zoo--"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")


class RegistryError(Exception):
    """A registry operation that cannot proceed (bad name, existing version, ...)."""


class ModelNotFoundError(RegistryError, LookupError):
    """No model or version of that name."""


class IntegrityError(RegistryError):
    """A published file does not match its manifest."""


def default_root() -> Path:
    """`$ZOO_REGISTRY`, else `checkpoints/registry/` of the source checkout, else ~/.cache/zoo/registry."""
    env = os.environ.get("ZOO_REGISTRY")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "checkpoints").is_dir():
        return checkout / "checkpoints" / "registry"
    return Path.home() / ".cache" / "zoo" / "registry"


def registry_root(registry: str | os.PathLike | None = None) -> Path:
    return Path(registry).expanduser() if registry is not None else default_root()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'name' or 'name@version' → (name, version or None)."""
    name, _, version = ref.partition("@")
    return name, (version or None)


@dataclass(frozen=True)
class Entry:
    """One published version."""

    name: str
    version: str
    commit: str
    path: Path  # the snapshot folder
    manifest: dict

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Registry:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = registry_root(root)

    # -- layout
    def repo_dir(self, name: str) -> Path:
        return self.root / f"{REPO_PREFIX}{name}"

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name[len(REPO_PREFIX):]
            for p in self.root.iterdir()
            if p.name.startswith(REPO_PREFIX) and (p / "refs").is_dir() and self.versions(p.name[len(REPO_PREFIX):])
        )

    def versions(self, name: str) -> list[str]:
        refs = self.repo_dir(name) / "refs"
        if not refs.is_dir():
            return []
        entries = [p for p in refs.iterdir() if p.name != "main" and not p.name.startswith(".")]
        return [p.name for p in sorted(entries, key=lambda p: p.stat().st_mtime_ns)]

    # -- lookup
    def resolve(self, name: str, version: str | None = None, verify: bool = True) -> Entry:
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(self._unknown_name_message(name))
        if version is None:
            main = self.repo_dir(name) / "refs" / "main"
            commit = main.read_text().strip() if main.is_file() else None
            version = next((v for v in reversed(versions) if self._read_ref(name, v) == commit), versions[-1])
        elif version not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} in {self.repo_dir(name)}; versions: {', '.join(versions)}"
            )
        commit = self._read_ref(name, version)
        path = self.repo_dir(name) / "snapshots" / commit
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise IntegrityError(f"{name}@{version}: manifest missing: {manifest_path}")
        manifest_bytes = manifest_path.read_bytes()
        if verify and hashlib.sha1(manifest_bytes).hexdigest() != commit:
            raise IntegrityError(f"{name}@{version}: manifest {manifest_path} was modified (its hash is not the commit {commit})")
        entry = Entry(name, version, commit, path, json.loads(manifest_bytes))
        if verify:
            verify_folder(path, entry.manifest, label=entry.ref)
        return entry

    def _read_ref(self, name: str, version: str) -> str:
        return (self.repo_dir(name) / "refs" / version).read_text().strip()

    def _unknown_name_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        message = f"no model named {name!r} in the registry at {self.root}"
        if close:
            message += f"; did you mean: {', '.join(close)}?"
        elif known:
            message += f"; published models: {', '.join(known)}"
        else:
            message += " (the registry is empty: publish with zoo.publish or `python -m zoo publish`)"
        return message

    def entries(self) -> list[Entry]:
        out = []
        for name in self.names():
            for version in self.versions(name):
                out.append(self.resolve(name, version, verify=False))
        return out

    # -- publishing
    def publish_folder(self, folder: Path, name: str, version: str, extra_manifest: dict | None = None) -> Entry:
        """Publish the files of `folder` (flat) as `name@version`. The folder is left untouched."""
        check_name(name)
        check_version(version)
        if version in self.versions(name):
            raise RegistryError(f"{name}@{version} is already published in {self.root}; versions are immutable")
        files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name != MANIFEST)
        if not files:
            raise RegistryError(f"nothing to publish in {folder}")
        manifest = {
            "name": name,
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra_manifest or {}),
            "files": {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in files},
        }
        manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode()
        commit = hashlib.sha1(manifest_bytes).hexdigest()

        repo = self.repo_dir(name)
        for sub in ("blobs", "snapshots", "refs"):
            (repo / sub).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=repo))
        try:
            blobs = {}
            for p in files:
                blobs[p.name] = manifest["files"][p.name]["sha256"]
                shutil.copyfile(p, staging / blobs[p.name])
            (staging / MANIFEST).write_bytes(manifest_bytes)
            blobs[MANIFEST] = hashlib.sha256(manifest_bytes).hexdigest()
            os.replace(staging / MANIFEST, staging / blobs[MANIFEST])
            snapshot = staging / "snapshot"
            snapshot.mkdir()
            for filename, digest in blobs.items():
                blob = repo / "blobs" / digest
                if not blob.exists():
                    os.replace(staging / digest, blob)
                os.symlink(os.path.join("..", "..", "blobs", digest), snapshot / filename)
            target = repo / "snapshots" / commit
            if target.exists():
                shutil.rmtree(target)  # an orphan from an interrupted publish of identical content
            os.replace(snapshot, target)
            ref_tmp = staging / "ref"
            ref_tmp.write_text(commit)
            try:
                os.link(ref_tmp, repo / "refs" / version)  # exclusive: fails if the version exists
            except FileExistsError:
                raise RegistryError(f"{name}@{version} is already published in {self.root}; versions are immutable")
            main_tmp = staging / "main"
            main_tmp.write_text(commit)
            os.replace(main_tmp, repo / "refs" / "main")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.resolve(name, version)


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise RegistryError(f"invalid model name {name!r}: use lower-case letters, digits, '.', '_' and '-'")


def check_version(version: str) -> None:
    if not isinstance(version, str) or not VERSION_PATTERN.match(version) or version == "main":
        raise RegistryError(f"invalid version {version!r}: use letters, digits, '.', '_', '+' and '-' (not 'main')")


def verify_folder(path: Path, manifest: dict, label: str | None = None) -> None:
    """Check every file listed in `manifest` against its sha256; refuse missing and unlisted files."""
    label = label or str(path)
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise IntegrityError(f"{label}: manifest {path / MANIFEST} lists no files")
    present = {p.name for p in Path(path).iterdir() if p.name != MANIFEST}
    for filename, meta in sorted(listed.items()):
        file = Path(path) / filename
        if not file.exists():
            raise IntegrityError(f"{label}: file {filename} is missing (expected at {file})")
        if file.stat().st_size != meta["size"]:
            raise IntegrityError(
                f"{label}: file {filename} has {file.stat().st_size} bytes, the manifest says {meta['size']} (tampered or truncated)"
            )
        actual = sha256_file(file)
        if actual != meta["sha256"]:
            raise IntegrityError(f"{label}: file {filename} does not match its sha256 (tampered): expected {meta['sha256']}, got {actual}")
    extra = sorted(present - set(listed))
    if extra:
        raise IntegrityError(f"{label}: files not in the manifest: {', '.join(extra)}")
