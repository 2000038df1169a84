"""`python -m zoo` list / show / publish / verify / presets."""

import subprocess
import sys

import zoo
from zoo.__main__ import main
from zoo.registry import Registry


def test_cli_publish_list_show_verify(registry, tmp_path, capsys):
    folder = tmp_path / "saved"
    zoo.create("gau-alpha-mini").save_pretrained(folder)
    zoo.default_tokenizer().save_pretrained(folder)
    assert main(["publish", str(folder), "--name", "gau-mini", "--version", "0.1", "--metric", "heldout/acc=0.5"]) == 0
    assert "published gau-mini@0.1" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "gau-mini@0.1" in out and "gau-alpha" in out and "heldout/acc=0.5" in out
    assert main(["show", "gau-mini"]) == 0
    assert '"model_type": "gau_alpha"' in capsys.readouterr().out
    assert main(["verify", "gau-mini@0.1"]) == 0
    assert "files verified" in capsys.readouterr().out
    blob = (Registry().resolve("gau-mini").path / "config.json").resolve()
    blob.write_text(blob.read_text() + " ")
    assert main(["verify", "gau-mini"]) == 1
    assert "config.json" in capsys.readouterr().err


def test_cli_unknown_name_is_an_error(registry, capsys):
    assert main(["verify", "nothing"]) == 1
    assert "no model named 'nothing'" in capsys.readouterr().err


def test_python_dash_m_zoo_presets():
    out = subprocess.run([sys.executable, "-m", "zoo", "presets"], capture_output=True, text=True, check=True).stdout
    assert "roformer-v2-base" in out and "deepnet-1000" in out and "gau-alpha-base" in out
