"""`python -m zoo convert | export-junnyu | releases`."""

import subprocess
import sys

import pytest
import torch

import zoo
from zoo.__main__ import main

from .source_checkpoints import DIMS, bert4keras_variables, write_bert4keras_folder


def test_convert_to_folder_and_registry(tmp_path, registry, capsys):
    write_bert4keras_folder(tmp_path / "release", "gau-alpha", DIMS["gau-alpha"], seed=1)
    code = main(["convert", str(tmp_path / "release"), "--from", "bert4keras", "--out", str(tmp_path / "out"),
                 "--publish", "tiny-gau@1", "--softmax-plus-min-len", "16", "--layer-norm-eps", "1e-6"])
    assert code == 0
    out = capsys.readouterr().out
    assert "(bert4keras, gau-alpha): 14 tensors mapped" in out and "published tiny-gau@1" in out
    model = zoo.from_pretrained("tiny-gau")
    assert model.config.softmax_plus_min_len == 16 and model.config.layer_norm_eps == 1e-6
    from_folder = zoo.from_pretrained(tmp_path / "out")
    assert all(torch.equal(v, from_folder.state_dict()[k]) for k, v in model.state_dict().items())


def test_export_junnyu_and_back_is_bit_identical(tmp_path, registry, capsys):
    write_bert4keras_folder(tmp_path / "release", "roformer-v2", DIMS["roformer-v2"], seed=2)
    assert main(["convert", str(tmp_path / "release"), "--from", "bert4keras", "--publish", "tiny-v2@1"]) == 0
    assert main(["export-junnyu", "tiny-v2@1", "--out", str(tmp_path / "port")]) == 0
    assert "vocab.txt" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "port"), "--from", "junnyu", "--publish", "tiny-v2@from-port"]) == 0
    original, back = zoo.from_pretrained("tiny-v2@1"), zoo.from_pretrained("tiny-v2@from-port")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in original.state_dict().items())
    assert main(["export-junnyu", "tiny-v2@1", "--out", str(tmp_path / "port")]) == 1
    assert "is not empty" in capsys.readouterr().err


def test_bad_checkpoint_is_an_error_exit_with_the_variable_named(tmp_path, capsys):
    variables = bert4keras_variables("roformer-v2", DIMS["roformer-v2"], seed=3)
    del variables["bert/encoder/layer_0/attention/self/value/kernel"]
    write_bert4keras_folder(tmp_path / "release", "roformer-v2", DIMS["roformer-v2"], seed=3, variables=variables)
    code = main(["convert", str(tmp_path / "release"), "--from", "bert4keras", "--out", str(tmp_path / "out")])
    assert code == 1
    assert "missing: bert/encoder/layer_0/attention/self/value/kernel" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(tmp_path / "nowhere"), "--from", "junnyu", "--out", str(tmp_path / "out")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err


def test_convert_needs_an_output(tmp_path):
    with pytest.raises(SystemExit, match="give --out DIR and/or --publish NAME@VERSION"):
        main(["convert", str(tmp_path), "--from", "bert4keras"])


def test_releases_lists_names_and_the_downloads_folder(registry, monkeypatch):
    monkeypatch.delenv("ZOO_DOWNLOADS", raising=False)
    out = subprocess.run([sys.executable, "-m", "zoo", "releases"], capture_output=True, text=True, check=True).stdout
    assert f"downloads folder: {registry / 'downloads'}" in out
    for name in ("roformer-v2-small-zh", "roformer-v2-base-zh", "roformer-v2-large-zh", "gau-alpha-base-zh"):
        assert name in out
    assert "not downloaded" in out and "chinese_GAU-alpha-char_L-24_H-768.zip" in out
