"""The officially released models, by registry name, and how they get into the registry.

`zoo.from_pretrained("roformer-v2-base-zh")` on a registry without it calls `install_release`: find
Zhuiyi's archive in the downloads folder (`$ZOO_DOWNLOADS`, default `<registry>/downloads/`), or
download it when the machine is online, check it, convert it once (bert4keras format) and publish it
as `<name>@zhuiyi-bert4keras`; from then on it is an ordinary verified registry load. Offline, the
error names the archive, its URL(s) and the folder or command to use.

Archives and shapes are from architectures.md §1.5 (RoFormerV2) and §2.6 (GAU-α); the Baidu mirrors
and their extraction codes are from JunnYu's RoFormer_pytorch README. The spec records no sha256 or
size for the zips, so none is invented: `sha256`/`size` are verified when filled in, and every
conversion records the digest of the archive it used (model card and conversion.json).
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..registry import IntegrityError, ModelNotFoundError, Registry, RegistryError, sha256_file
from .mapping import ConversionError

ZHUIYI_DOWNLOADS = "https://open.zhuiyi.ai/releases/nlp/models/zhuiyi/{archive}"
RELEASE_VERSION = "zhuiyi-bert4keras"  # the registry version a converted release is published as
VOCAB_SIZE = 12000


@dataclass(frozen=True)
class Release:
    """One released checkpoint."""

    name: str  # registry name
    family: str
    archive: str  # Zhuiyi's zip
    shape: dict  # the config fields that identify the release
    parameters: str
    hub_ports: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    sha256: str | None = None  # verified when known (the spec gives none)
    size: int | None = None
    version: str = RELEASE_VERSION
    urls: tuple[str, ...] = field(default=())

    def download_urls(self) -> tuple[str, ...]:
        return self.urls or (ZHUIYI_DOWNLOADS.format(archive=self.archive),)

    @property
    def folder_name(self) -> str:
        return self.archive.removesuffix(".zip")


RELEASES: dict[str, Release] = {
    release.name: release
    for release in (
        Release(
            "roformer-v2-small-zh", "roformer-v2", "chinese_roformer-v2-char_L-6_H-384_A-6.zip",
            dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, intermediate_size=1536, vocab_size=VOCAB_SIZE),
            "15.2 M", hub_ports=("junnyu/roformer_v2_chinese_char_small",),
            mirrors=("https://pan.baidu.com/s/1huUrC9P60Afggo8AfiUcmA (extraction code ttn4)",),
        ),
        Release(
            "roformer-v2-base-zh", "roformer-v2", "chinese_roformer-v2-char_L-12_H-768_A-12.zip",
            dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072, vocab_size=VOCAB_SIZE),
            "94.2 M", hub_ports=("junnyu/roformer_v2_chinese_char_base",),
            mirrors=("https://pan.baidu.com/s/1qcnN4LVKVe0-mnHlkN3-6Q (extraction code pfoh)",),
        ),
        Release(
            "roformer-v2-large-zh", "roformer-v2", "chinese_roformer-v2-char_L-24_H-1024_A-16.zip",
            dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096, vocab_size=VOCAB_SIZE),
            "314.3 M", hub_ports=("junnyu/roformer_v2_chinese_char_large",),
            mirrors=("https://pan.baidu.com/s/1QiJWSZrGxn8vek-8myvL6w (extraction code npfv)",),
        ),
        Release(
            "gau-alpha-base-zh", "gau-alpha", "chinese_GAU-alpha-char_L-24_H-768.zip",
            dict(num_hidden_layers=24, hidden_size=768, intermediate_size=1536, attention_key_size=128, vocab_size=VOCAB_SIZE),
            "96.5 M", hub_ports=("junnyu/chinese_GAU-alpha-char_L-24_H-768", "Tongjilibo/chinese_GAU-alpha-char_L-24_H-768"),
        ),
    )
}


class ReleaseUnavailable(Exception):
    """The archive is neither in the downloads folder nor downloadable now."""


def downloads_dir(registry: str | os.PathLike | None = None) -> Path:
    """Where release archives are looked for: `$ZOO_DOWNLOADS`, else `<registry root>/downloads/`."""
    env = os.environ.get("ZOO_DOWNLOADS")
    return Path(env).expanduser() if env else Registry(registry).root / "downloads"


def check_release_config(name: str, config) -> None:
    """Refuse to publish under a released name a model that is not that release's shape."""
    release = RELEASES.get(name)
    if release is None:
        return
    from ..families import family_of

    family = family_of(config)
    wrong = {k: getattr(config, k) for k, v in release.shape.items() if getattr(config, k) != v}
    if family != release.family or wrong:
        found = ", ".join(f"{k}={v}" for k, v in wrong.items()) or f"family {family}"
        raise ConversionError(f"refusing to publish as {name!r}: that name is the released {release.archive} "
                              f"({release.family}, {_shape_text(release)}), but this checkpoint has {found}")


def _shape_text(release: Release) -> str:
    return ", ".join(f"{k}={v}" for k, v in release.shape.items())


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
    from .conversion import convert_checkpoint

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
