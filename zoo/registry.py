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

Crash litter. Every temporary folder of a publish (`<root>/.stage-<pid>-<tag>` for the files being
saved, `<repo>/.publish-<pid>-<tag>` for the blobs being moved) has a sibling `<folder>.lock`, created
first and removed last, on which the publishing process holds an exclusive `flock` (and writes its
pid). The lock is written and locked under a temporary name and then linked to its own, so it never
exists unlocked. The kernel drops the lock when the process dies, however it dies, so a folder whose
lock can be taken belongs to a publish that was interrupted; so does a folder with no lock file at
all once it is an hour old (STALE_AFTER_S; younger ones are kept). Looking (`leftovers`) writes
nothing: locks are opened read-only and none is created. The
moves into `blobs/` and `snapshots/` happen under a per-model lock (`<repo>/.lock`); outside it, a
snapshot no ref names and a blob no snapshot links to are leftovers of a publish killed between the
moves and the ref. `Registry.leftovers()` lists all of these (`python -m zoo verify`),
`Registry.collect_garbage()` removes them (`python -m zoo gc`, and every publish before it writes), and
a dead publish never blocks a later publish of the same version: its locks died with it, and its ref,
the commit point, was never written.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ZooError

try:
    import fcntl
except ImportError:  # not POSIX: a lock's owner is judged by its pid instead
    fcntl = None

MANIFEST = "zoo_manifest.json"
REPO_PREFIX = "models--zoo--"
STAGING_PREFIXES = (".stage-", ".publish-")  # temporary folders of a publish (root, repo)
LOCK_SUFFIX = ".lock"
STALE_AFTER_S = 3600  # a staging folder with no lock (or a lock with no pid) is litter once this old

logger = logging.getLogger("zoo.registry")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")


class RegistryError(ZooError):
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
        self._stagings_open = 0  # staging() blocks of this object now open (the outermost sweeps)

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
        with self.staging(".publish-", parent=repo) as staging:
            blobs = {}
            for p in files:
                blobs[p.name] = manifest["files"][p.name]["sha256"]
                shutil.copyfile(p, staging / blobs[p.name])
            (staging / MANIFEST).write_bytes(manifest_bytes)
            blobs[MANIFEST] = hashlib.sha256(manifest_bytes).hexdigest()
            os.replace(staging / MANIFEST, staging / blobs[MANIFEST])
            with self._repo_lock(repo):  # gc never sweeps blobs and snapshots while they are moved
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
        return self.resolve(name, version)

    # -- crash litter
    @contextlib.contextmanager
    def staging(self, prefix: str = ".stage-", parent: Path | None = None) -> Iterator[Path]:
        """An empty temporary folder for a publish, owned by this process until the block ends.

        Its lock file (`<folder>.lock`) is created and locked before the folder exists and removed
        after it is gone, so a folder whose lock is free was left by a process that died. The lock
        never appears unlocked: it is written and locked under a temporary name (itself a lock of
        the same kind, `<folder>.tmp.lock`) and then linked to its name. What dead publishes left is
        removed first, before this one writes anything (once per registry object: a staging opened
        inside another, as `publish` does around `publish_folder`, does not sweep again)."""
        if prefix not in STAGING_PREFIXES:
            raise ValueError(f"staging prefix must be one of {STAGING_PREFIXES}, got {prefix!r}")
        parent = Path(parent) if parent is not None else self.root
        parent.mkdir(parents=True, exist_ok=True)
        if not self._stagings_open:
            self._collect_garbage_quietly()
        token = f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        lock_path, folder = parent / f"{token}{LOCK_SUFFIX}", parent / token
        tmp_path = parent / f"{token}.tmp{LOCK_SUFFIX}"
        fd = os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        linked = False
        self._stagings_open += 1
        try:
            try:
                if fcntl is not None:  # blocking: a sweep may hold it for a moment (it finds no pid: active)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode())
                os.link(tmp_path, lock_path)  # appears locked, with its pid
                linked = True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp_path.unlink()
            folder.mkdir()
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            self._stagings_open -= 1
            if linked:
                with contextlib.suppress(FileNotFoundError):
                    lock_path.unlink()
            os.close(fd)

    @contextlib.contextmanager
    def _repo_lock(self, repo: Path, wait: bool = True, create: bool = True) -> Iterator[bool]:
        """Hold `<repo>/.lock` exclusively; yields False (holding nothing) when `wait` is off and it is busy.

        The lock is opened read-only (flock needs no more); with `create` off, as when only listing,
        it is not created either, and a missing lock is free (no publish ever moved files there):
        yields True, holding nothing."""
        if fcntl is None:
            yield True
            return
        try:
            fd = os.open(repo / LOCK_SUFFIX, os.O_RDONLY | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if create:
                raise
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def leftovers(self) -> list[Leftover]:
        """What interrupted publishes left behind, and (marked `active`) the folders of running ones."""
        return self._sweep(remove=False)

    def collect_garbage(self, dry_run: bool = False) -> list[Leftover]:
        """Remove the leftovers of interrupted publishes (not those of publishes still running); returns them."""
        return self._sweep(remove=not dry_run)

    def _collect_garbage_quietly(self) -> None:
        try:
            for item in self.collect_garbage():
                if not item.active:
                    logger.info("removed %s", item.describe())
        except OSError as error:  # someone else's litter we may not delete must not stop a publish
            logger.warning("could not remove the leftovers of an interrupted publish in %s: %s", self.root, error)

    def _sweep(self, remove: bool) -> list[Leftover]:
        """Listing (`remove` off) writes nothing: a read-only registry is listed, and what cannot be
        read is skipped with a warning, as is what cannot be removed."""
        if not self.root.is_dir():
            return []
        found = self._staging_leftovers(self.root, remove)
        try:
            repos = sorted(p for p in self.root.iterdir() if p.name.startswith(REPO_PREFIX) and p.is_dir())
        except PermissionError as error:
            _warn_skipped(self.root, error)
            return found
        for repo in repos:
            found += self._staging_leftovers(repo, remove)
            try:
                found += self._orphans(repo, remove)
            except PermissionError as error:
                _warn_skipped(repo, error)
        return found

    def _staging_leftovers(self, parent: Path, remove: bool) -> list[Leftover]:
        try:
            entries = sorted(p for p in parent.iterdir() if p.name.startswith(STAGING_PREFIXES))
        except PermissionError as error:
            _warn_skipped(parent, error)
            return []
        found = []
        for entry in entries:
            try:
                item = self._staging_leftover(entry, remove)
            except PermissionError as error:
                _warn_skipped(entry, error)
                continue
            if item is not None:
                found.append(item)
        return found

    def _staging_leftover(self, entry: Path, remove: bool) -> Leftover | None:
        if entry.name.endswith(LOCK_SUFFIX):
            folder = entry.with_name(entry.name[: -len(LOCK_SUFFIX)])
            with _owner_lock(entry) as (free, owner):
                if free is None:  # the lock went away: that publish just finished
                    return None
                path, kind = (folder, "staging folder") if os.path.lexists(folder) else (entry, "staging lock")
                item = Leftover(path, kind, owner, _size(path), active=not free)
                if free and remove:
                    shutil.rmtree(folder, ignore_errors=True)
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()  # while still holding it, so no one else takes it in between
                return item
        lock = entry.with_name(entry.name + LOCK_SUFFIX)
        if os.path.lexists(lock):
            return None  # its lock speaks for it
        # no lock: left by a zoo from before locks, or by a cleanup that was interrupted; kept while young
        try:
            young = time.time() - entry.lstat().st_mtime < STALE_AFTER_S
        except FileNotFoundError:
            return None
        is_dir = entry.is_dir() and not entry.is_symlink()
        item = Leftover(entry, "staging folder" if is_dir else "staging file", None, _size(entry), active=young)
        if remove and not young and not os.path.lexists(lock):
            if is_dir:
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return item

    def _orphans(self, repo: Path, remove: bool) -> list[Leftover]:
        """Snapshots no ref names and blobs no kept snapshot links to (a publish killed mid-move)."""
        snapshots, blobs = repo / "snapshots", repo / "blobs"
        if not snapshots.is_dir() and not blobs.is_dir():
            return []
        with self._repo_lock(repo, wait=False, create=remove) as held:
            if not held:
                return []  # a publish is moving files right now
            refs = repo / "refs"
            commits = {p.read_text().strip() for p in refs.rglob("*") if p.is_file()} if refs.is_dir() else set()
            found, linked = [], set()
            for snapshot in sorted(snapshots.iterdir()) if snapshots.is_dir() else []:
                if snapshot.name in commits:
                    linked.update(os.path.basename(os.readlink(f)) for f in snapshot.iterdir() if f.is_symlink())
                else:
                    found.append(Leftover(snapshot, "unreferenced snapshot", None, _size(snapshot)))
            for blob in sorted(blobs.iterdir()) if blobs.is_dir() else []:
                if blob.name not in linked:
                    found.append(Leftover(blob, "unreferenced blob", None, _size(blob)))
            if remove:
                for item in found:
                    if item.path.is_dir() and not item.path.is_symlink():
                        shutil.rmtree(item.path, ignore_errors=True)
                    else:
                        item.path.unlink(missing_ok=True)
            return found

    def verify_all(self) -> list[tuple[str, Entry | None, Exception | None]]:
        """Verify every version of every model: (ref, entry or None, the error or None)."""
        results = []
        for name in self.names():
            for version in self.versions(name):
                try:
                    results.append((f"{name}@{version}", self.resolve(name, version, verify=True), None))
                except (RegistryError, OSError, ValueError) as error:
                    results.append((f"{name}@{version}", None, error))
        return results


@dataclass(frozen=True)
class Leftover:
    """A file or folder an interrupted publish left in the registry (or, `active`, one a running publish owns)."""

    path: Path
    kind: str  # "staging folder", "staging lock", "staging file", "unreferenced snapshot", "unreferenced blob"
    owner: int | None  # the pid that wrote it, when its lock says
    size: int  # bytes
    active: bool = False

    def describe(self) -> str:
        if self.active and self.owner is None:  # no lock, or a lock with no pid yet
            return (f"{self.path} ({self.kind} of a publish that may still be running: no pid on record, "
                    f"kept until it is {STALE_AFTER_S // 60} minutes old; {format_size(self.size)})")
        if self.active:
            return f"{self.path} ({self.kind} of a publish in progress, pid {self.owner}; {format_size(self.size)})"
        owner = f", pid {self.owner} is gone" if self.owner is not None else ""
        return f"{self.path} ({self.kind} of an interrupted publish{owner}; {format_size(self.size)})"


def format_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _size(path: Path) -> int:
    """Bytes under `path` (links not followed); 0 when it is gone."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
        return sum(f.lstat().st_size for f in path.rglob("*") if not f.is_dir() or f.is_symlink())
    except FileNotFoundError:
        return 0


@contextlib.contextmanager
def _owner_lock(lock_path: Path):
    """(free, owner pid) of a staging lock, held for the block when free; free=None when it is gone.

    Opened read-only (flock needs no more). Taken, it is still checked: the file we locked may be one
    a finished publish has just unlinked (then it is gone), and a lock with no pid yet counts as
    active (its publish is still writing it) until it is older than STALE_AFTER_S."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        yield None, None
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free = True
            except BlockingIOError:
                free = False
        owner = None
        with contextlib.suppress(ValueError, TypeError, AttributeError, OSError):
            owner = int(json.loads(os.read(fd, 4096).decode() or "{}").get("pid"))
        if fcntl is None:
            free = owner is None or not _pid_alive(owner)
        if free:
            held = os.fstat(fd)
            try:
                on_disk = os.stat(lock_path)
            except FileNotFoundError:
                on_disk = None
            if on_disk is None or held.st_nlink == 0 or (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino):
                yield None, None  # we locked a file its publish had already unlinked: it finished
                return
            if owner is None and time.time() - held.st_mtime < STALE_AFTER_S:
                free = False
        yield free, owner
    finally:
        os.close(fd)


def _warn_skipped(path: Path, error: OSError) -> None:
    logger.warning("warning: skipped %s while looking for leftovers of interrupted publishes: %s", path, error)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
