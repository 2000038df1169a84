"""Getting a released model into the registry: `install_release`.

`zoo.from_pretrained("roformer-v2-base-zh")` on a registry without it calls `install_release`: find
Zhuiyi's archive in the downloads folder (`$ZOO_DOWNLOADS`, default `<registry>/downloads/`), or
download it when the machine is online, check it, convert it once (bert4keras format) and publish it
as `<name>@zhuiyi-bert4keras`; from then on it is an ordinary verified registry load. Offline, the
error names the archive, its URL(s) and the folder or command to use. The releases themselves are
the table in zoo/convert/releases.py.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..registry import IntegrityError, ModelNotFoundError, Registry, RegistryError, sha256_file
from .conversion import convert_checkpoint
from .releases import RELEASES, Release


class ReleaseUnavailable(Exception):
    """The archive is neither in the downloads folder nor downloadable now."""


def downloads_dir(registry: str | os.PathLike | None = None) -> Path:
    """Where release archives are looked for: `$ZOO_DOWNLOADS`, else `<registry root>/downloads/`."""
    env = os.environ.get("ZOO_DOWNLOADS")
    return Path(env).expanduser() if env else Registry(registry).root / "downloads"


def _offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("ZOO_OFFLINE", "HF_HUB_OFFLINE"))


def find_archive(release: Release, downloads: Path) -> Path | None:
    """The release's zip in `downloads`, or the folder it was unzipped into."""
    for candidate in (downloads / release.archive, downloads / release.folder_name):
        if candidate.exists():
            return candidate
    return None


def verify_archive(release: Release, archive: Path) -> None:
    """Size and sha256 against the release record, when it has them (zips only)."""
    if not archive.is_file():
        return
    if release.size is not None and archive.stat().st_size != release.size:
        raise IntegrityError(f"{archive} has {archive.stat().st_size} bytes; {release.archive} has {release.size} "
                             "(truncated or a different file): delete it and download again")
    if release.sha256 is not None:
        actual = sha256_file(archive)
        if actual != release.sha256:
            raise IntegrityError(f"{archive} does not match the sha256 of {release.archive}: expected "
                                 f"{release.sha256}, got {actual}; delete it and download again")


def download(release: Release, downloads: Path, timeout: float = 60.0) -> Path:
    """Fetch the archive into `downloads` (via a temporary file, renamed when complete)."""
    if _offline():
        raise ReleaseUnavailable("offline (HF_HUB_OFFLINE or ZOO_OFFLINE is set)")
    downloads.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in release.download_urls():
        handle, partial = tempfile.mkstemp(prefix=f".{release.archive}.", suffix=".part", dir=downloads)
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                total = getattr(response, "headers", {}).get("Content-Length")
                with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                          desc=f"downloading {release.archive}") as progress:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        progress.update(len(chunk))
            target = downloads / release.archive
            os.replace(partial, target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as error:
            failures.append(f"{url}: {error}")
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    raise ReleaseUnavailable("download failed (" + "; ".join(failures) + ")")


def unavailable_message(release: Release, downloads: Path, registry_root: Path, reason: str) -> str:
    urls = "\n".join(f"    {u}" for u in release.download_urls())
    mirrors = "".join(f"\n    mirror: {m}" for m in release.mirrors)
    ports = "".join(f"\n    python -m zoo convert <folder of {p}> --from "
                    f"{'junnyu' if p.startswith('junnyu/') else 'bert4torch'} --publish {release.name}@<version>"
                    for p in release.hub_ports)
    return (
        f"{release.name} is a released model ({release.family}, {release.parameters} parameters) that is not in the "
        f"registry at {registry_root} yet; zoo converts Zhuiyi's bert4keras checkpoint once and caches it, but the "
        f"archive is not available: {reason}.\n"
        f"  Download {release.archive} from\n{urls}{mirrors}\n"
        f"  and put it (zipped, or unzipped as {release.folder_name}/) in\n    {downloads}\n"
        f"  (set ZOO_DOWNLOADS to use another folder); the next zoo.from_pretrained({release.name!r}) converts it.\n"
        f"  Or unzip it anywhere and run\n"
        f"    python -m zoo convert <unzipped folder> --from bert4keras --publish {release.name}@{release.version}"
        + (f"\n  Or convert a community PyTorch port:{ports}" if ports else "")
    )


def install_release(name: str, version: str | None = None, registry: str | os.PathLike | None = None):
    """Make `name@version` of a release available in the registry, converting it if needed; the Entry."""
    release = RELEASES[name]
    store = Registry(registry)
    if version is not None and version != release.version:
        published = store.versions(name)
        raise ModelNotFoundError(f"{name} has no version {version!r} in {store.root}"
                                 + (f" (versions: {', '.join(published)})" if published else "")
                                 + f"; the released checkpoint converts as version {release.version!r}")
    if release.version in store.versions(name):
        return store.resolve(name, release.version)
    downloads = downloads_dir(registry)
    archive = find_archive(release, downloads)
    if archive is None:
        try:
            archive = download(release, downloads)
        except ReleaseUnavailable as error:
            raise ModelNotFoundError(unavailable_message(release, downloads, store.root, str(error))) from None
    verify_archive(release, archive)
    try:
        convert_checkpoint(archive, "bert4keras", publish=f"{name}@{release.version}", registry=store.root,
                           family=release.family)
    except RegistryError:
        if release.version not in store.versions(name):  # not a concurrent install of the same version
            raise
    return store.resolve(name, release.version)


def release_status(registry: str | os.PathLike | None = None) -> list[dict]:
    """Each release: whether it is installed, and whether its archive is waiting in downloads."""
    store = Registry(registry)
    downloads = downloads_dir(registry)
    rows = []
    for release in RELEASES.values():
        archive = find_archive(release, downloads)
        rows.append({
            "name": release.name, "family": release.family, "archive": release.archive,
            "installed": release.version in store.versions(release.name),
            "archive_found": str(archive) if archive else None, "url": release.download_urls()[0],
        })
    return rows
