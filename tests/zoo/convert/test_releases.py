"""Released names: converted once from the archive (downloads folder or fetched), cached, explained offline."""

import dataclasses
import io
import zipfile

import pytest

import zoo
from zoo.convert import RELEASES, ConversionError, convert_checkpoint, install, releases
from zoo.registry import Registry

from .source_checkpoints import DIMS, bert_config, token_batch, write_bert4keras_folder
from .source_reference import Bert4KerasWeights, assert_model_matches

NAME = "roformer-v2-base-zh"
ARCHIVE = "chinese_roformer-v2-char_L-12_H-768_A-12.zip"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no download may be attempted here")

    monkeypatch.setattr(install.urllib.request, "urlopen", refuse)
    monkeypatch.delenv("ZOO_DOWNLOADS", raising=False)


@pytest.fixture
def tiny_release(monkeypatch, tmp_path):
    """The base release's entry, shrunk to a tiny checkpoint whose zip the test builds."""
    dims = DIMS["roformer-v2"]
    release = dataclasses.replace(RELEASES[NAME], shape=dict(dims))
    monkeypatch.setitem(releases.RELEASES, NAME, release)
    folder = tmp_path / "build" / release.folder_name
    variables = write_bert4keras_folder(folder, "roformer-v2", dims, seed=9)
    archive = tmp_path / "build" / ARCHIVE
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted(folder.iterdir()):
            bundle.write(file, f"{release.folder_name}/{file.name}")
    return release, archive, variables


def _check(model, variables):
    ids, _ = token_batch(DIMS["roformer-v2"]["vocab_size"])
    assert_model_matches(model, Bert4KerasWeights(variables, "roformer-v2"), bert_config("roformer-v2", DIMS["roformer-v2"]),
                         ids, flavour="bert4keras", eps=1e-7)


def test_released_names_and_archives_follow_the_spec():
    assert {name: r.archive for name, r in RELEASES.items()} == {
        "roformer-v2-small-zh": "chinese_roformer-v2-char_L-6_H-384_A-6.zip",
        "roformer-v2-base-zh": "chinese_roformer-v2-char_L-12_H-768_A-12.zip",
        "roformer-v2-large-zh": "chinese_roformer-v2-char_L-24_H-1024_A-16.zip",
        "gau-alpha-base-zh": "chinese_GAU-alpha-char_L-24_H-768.zip",
    }
    for release in RELEASES.values():  # shapes are the presets of the same sizes
        preset = zoo.preset_config(release.name.removesuffix("-zh"))
        assert all(getattr(preset, k) == v for k, v in release.shape.items()), release.name
        assert release.download_urls() == (f"https://open.zhuiyi.ai/releases/nlp/models/zhuiyi/{release.archive}",)


def test_offline_error_says_what_to_download_and_where(registry, no_network):
    with pytest.raises(zoo.ModelNotFoundError) as error:
        zoo.from_pretrained(NAME)
    message = str(error.value)
    assert "offline (HF_HUB_OFFLINE or ZOO_OFFLINE is set)" in message
    assert f"Download {ARCHIVE} from" in message
    assert f"https://open.zhuiyi.ai/releases/nlp/models/zhuiyi/{ARCHIVE}" in message
    assert "mirror: https://pan.baidu.com/s/1qcnN4LVKVe0-mnHlkN3-6Q (extraction code pfoh)" in message
    assert str(registry / "downloads") in message
    assert f"python -m zoo convert <unzipped folder> --from bert4keras --publish {NAME}@zhuiyi-bert4keras" in message
    assert "--from junnyu" in message and "junnyu/roformer_v2_chinese_char_base" in message
    with pytest.raises(zoo.ModelNotFoundError, match="converts as version 'zhuiyi-bert4keras'"):
        zoo.from_pretrained(f"{NAME}@v9")


def test_archive_in_downloads_is_converted_once_then_loaded_from_the_registry(registry, no_network, tiny_release, monkeypatch):
    release, archive, variables = tiny_release
    (registry / "downloads").mkdir(parents=True)
    archive.rename(registry / "downloads" / ARCHIVE)
    model = zoo.from_pretrained(NAME)
    assert model.zoo_ref == f"{NAME}@zhuiyi-bert4keras"
    _check(model, variables)
    assert Registry().versions(NAME) == ["zhuiyi-bert4keras"]
    assert len(zoo.load_tokenizer(NAME)) == DIMS["roformer-v2"]["vocab_size"]

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr("zoo.convert.conversion.convert_checkpoint", no_second_conversion)
    again = zoo.from_pretrained(f"{NAME}@zhuiyi-bert4keras", task="sequence-classification", num_labels=3)
    assert again.zoo_ref == f"{NAME}@zhuiyi-bert4keras"


def test_unzipped_folder_under_zoo_downloads_is_used(registry, no_network, tiny_release, tmp_path, monkeypatch):
    release, _, variables = tiny_release
    monkeypatch.setenv("ZOO_DOWNLOADS", str(tmp_path / "build"))
    (tmp_path / "build" / ARCHIVE).unlink()  # only the unzipped folder is there
    _check(zoo.from_pretrained(NAME), variables)


def test_download_when_online(registry, tiny_release, monkeypatch):
    release, archive, variables = tiny_release
    monkeypatch.delenv("ZOO_DOWNLOADS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    fetched = []

    def fake_urlopen(url, timeout):
        fetched.append(url)
        return io.BytesIO(archive.read_bytes())

    monkeypatch.setattr(install.urllib.request, "urlopen", fake_urlopen)
    _check(zoo.from_pretrained(NAME), variables)
    assert fetched == [f"https://open.zhuiyi.ai/releases/nlp/models/zhuiyi/{ARCHIVE}"]
    assert (registry / "downloads" / ARCHIVE).read_bytes() == archive.read_bytes()


def test_failed_download_leaves_nothing_behind(registry, tiny_release, monkeypatch):
    monkeypatch.delenv("ZOO_DOWNLOADS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def unreachable(url, timeout):
        raise install.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(install.urllib.request, "urlopen", unreachable)
    with pytest.raises(zoo.ModelNotFoundError, match=r"download failed \(https://open.zhuiyi.ai/.*Name or service not known"):
        zoo.from_pretrained(NAME)
    assert list((registry / "downloads").iterdir()) == []
    assert Registry().versions(NAME) == []


def test_checksum_is_verified_when_known(registry, no_network, tiny_release, monkeypatch):
    release, archive, _ = tiny_release
    (registry / "downloads").mkdir(parents=True)
    archive.rename(registry / "downloads" / ARCHIVE)
    monkeypatch.setitem(releases.RELEASES, NAME, dataclasses.replace(release, sha256="0" * 64))
    with pytest.raises(zoo.IntegrityError, match=f"does not match the sha256 of {ARCHIVE}: expected 0000"):
        zoo.from_pretrained(NAME)
    actual = install.sha256_file(registry / "downloads" / ARCHIVE)
    monkeypatch.setitem(releases.RELEASES, NAME, dataclasses.replace(release, sha256=actual))
    assert zoo.from_pretrained(NAME).zoo_ref == f"{NAME}@zhuiyi-bert4keras"


def test_released_name_cannot_be_taken_by_another_shape(registry, tmp_path):
    write_bert4keras_folder(tmp_path / "small", "roformer-v2", DIMS["roformer-v2"], seed=1)
    with pytest.raises(ConversionError, match=r"refusing to publish as 'roformer-v2-base-zh': that name is the released "
                                              r"chinese_roformer-v2-char_L-12_H-768_A-12.zip .* this checkpoint has num_hidden_layers=2"):
        convert_checkpoint(tmp_path / "small", "bert4keras", publish=f"{NAME}@mine")
    assert Registry().versions(NAME) == []


def test_unknown_names_suggest_the_releases(registry):
    with pytest.raises(zoo.ModelNotFoundError, match="did you mean: gau-alpha-base-zh"):
        zoo.from_pretrained("gau-alpha-base-z")
