"""The officially released models, by registry name: the table (archives, shapes, ports, mirrors).

A table only: it imports nothing of the conversion. How a release gets into the registry (find or
download the archive, convert it once, publish it as `<name>@zhuiyi-bert4keras`) is
zoo/convert/install.py, which `zoo.from_pretrained` calls for a release name not yet published.

Archives and shapes are from architectures.md §1.5 (RoFormerV2) and §2.6 (GAU-α); the Baidu mirrors
and their extraction codes are from JunnYu's RoFormer_pytorch README. The spec records no sha256 or
size for the zips, so none is invented: `sha256`/`size` are verified when filled in, and every
conversion records the digest of the archive it used (model card and conversion.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..families import family_of
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


def check_release_config(name: str, config) -> None:
    """Refuse to publish under a released name a model that is not that release's shape."""
    release = RELEASES.get(name)
    if release is None:
        return
    family = family_of(config)
    wrong = {k: getattr(config, k) for k, v in release.shape.items() if getattr(config, k) != v}
    if family != release.family or wrong:
        found = ", ".join(f"{k}={v}" for k, v in wrong.items()) or f"family {family}"
        raise ConversionError(f"refusing to publish as {name!r}: that name is the released {release.archive} "
                              f"({release.family}, {_shape_text(release)}), but this checkpoint has {found}")


def _shape_text(release: Release) -> str:
    return ", ".join(f"{k}={v}" for k, v in release.shape.items())


