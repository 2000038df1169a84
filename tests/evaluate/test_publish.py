"""`--publish NAME@VERSION` on the evaluate commands and `zoo.publish_evaluation`: an evaluation is published
as a new version carrying the evaluated model (weights, tokenizer, card, metrics, figures, recipe) plus its
own metrics and figures; a bad or taken target is refused before the run."""

import json
import struct
import zlib

import pytest
import torch

import zoo
from evaluate.clue.cli import main as clue_main
from evaluate.extrapolation.cli import main as extrapolation_main
from evaluate.robustness import main as robustness_main
from zoo.registry import Registry, RegistryError

from .clue.conftest import FIXTURES
from .test_extrapolation import PNG, N, tiny_model

BASE_METRICS = {"heldout/mlm_accuracy": 0.25, "heldout/loss": 5.5}
RECIPE = {"run_name": "tiny", "data": {"seq_len": N}, "training": {"max_steps": 3}}
CARD = f"## Training\n\nPretrained for 3 steps (sequence length {N})."


def write_png(path, rgb=(200, 30, 30)):
    """A 1×1 PNG."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    path.write_bytes(PNG + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" + bytes(rgb))) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def base(registry, tmp_path):
    """tiny@1.0 in the test registry, published with metrics, a card, a figure and a recipe."""
    curves = write_png(tmp_path / "curves.png")
    ref = zoo.publish(tiny_model(), name="tiny", version="1.0", metrics=BASE_METRICS, card=CARD,
                      figures={"training curves": curves}, recipe=RECIPE)
    assert ref == "tiny@1.0"
    return Registry(registry).resolve("tiny", "1.0")


def check_published(base, ref, prefix, figures):
    """`ref` carries the base's weights, tokenizer, card, metrics, figure and recipe, plus metrics named
    `prefix...` and the `figures` (title → the file the command wrote); returns the new manifest."""
    name, version = ref.split("@")
    entry = Registry().resolve(name, version)  # verified: every file's sha256
    manifest = entry.manifest
    old, new = zoo.from_pretrained(base.ref).state_dict(), zoo.from_pretrained(ref).state_dict()
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    assert manifest["architecture"] == base.manifest["architecture"]
    assert manifest["files"]["model.safetensors"]["sha256"] == base.manifest["files"]["model.safetensors"]["sha256"]
    assert zoo.load_tokenizer(ref).get_vocab() == zoo.load_tokenizer(base.ref).get_vocab()
    metrics = manifest["metrics"]
    assert {k: metrics[k] for k in BASE_METRICS} == BASE_METRICS
    added = {k: v for k, v in metrics.items() if k.startswith(prefix)}
    assert added and set(metrics) == set(BASE_METRICS) | set(added)
    # the figures: the base's training curves, then the evaluation's plots, byte for byte
    stored = {f["title"]: f for f in manifest["figures"]}
    assert set(stored) == {"training curves"} | set(figures)
    assert (entry.path / stored["training curves"]["file"]).read_bytes() == (base.path / "figure-training-curves.png").read_bytes()
    for title, source in figures.items():
        assert (entry.path / stored[title]["file"]).read_bytes() == source.read_bytes()
        assert source.read_bytes()[:8] == PNG
    assert manifest["recipe"] == "recipe.yaml"
    assert (entry.path / "recipe.yaml").read_bytes() == (base.path / "recipe.yaml").read_bytes()
    card = (entry.path / "README.md").read_text()
    assert f"# {name} {version}" in card and CARD in card and "## Evaluation" in card and f"`{base.ref}`" in card
    assert "# tiny 1.0" not in card and card.count("## Metrics") == 1  # the base's own heading and table are not copied
    return manifest, added


def test_clue_dry_run_publishes(base, tmp_path):
    out = tmp_path / "clue"
    rc = clue_main(["--model", "tiny@1.0", "--data-dir", str(FIXTURES), "--dry-run", "--tasks", "afqmc,tnews",
                    "--output", str(out), "--no-progress", "--no-bf16", "--publish", "tiny@eval1"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    _, added = check_published(base, "tiny@eval1", "clue/", {"clue results": out / "results.png"})
    assert added == {f"clue/{task}/dev": results["tasks"][task]["dev"]["score"] for task in ("afqmc", "tnews")}
    assert "CLUE (dry run), published recipe, seed 42" in (Registry().resolve("tiny", "eval1").path / "README.md").read_text()


def test_extrapolation_publishes(base, tmp_path, capsys):
    out = tmp_path / "extrapolation"
    rc = extrapolation_main(["--model", "tiny@1.0", "--lengths", "1,2", "--sets", "natural,repeated",
                             "--variants", "baseline,ntk", "--max-tokens", "256", "--out", str(out), "--quiet",
                             "--publish", "tiny@eval1"])
    assert rc == 0
    assert "published tiny@eval1" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    _, added = check_published(base, "tiny@eval1", "extrapolation/", {"extrapolation accuracy": out / "accuracy.png",
                                                                      "extrapolation entropy": out / "entropy.png"})
    expected = {f"extrapolation/{name}/{v}/L={length}/accuracy": results["results"][name][v][str(length)]["accuracy"]
                for name in ("natural", "repeated") for v in ("baseline", "ntk") for length in (N, 2 * N)}
    assert added == expected and "extrapolation/natural/baseline/L=8/accuracy" in added
    # the card still records the training length: the published evaluation can be evaluated again
    rc = extrapolation_main(["--model", "tiny@eval1", "--lengths", "1", "--sets", "natural", "--variants", "baseline",
                             "--max-tokens", "128", "--out", str(tmp_path / "again"), "--quiet", "--publish", "tiny@eval2"])
    assert rc == 0
    again = Registry().resolve("tiny", "eval2").manifest
    assert {f["title"] for f in again["figures"]} == {"training curves", "extrapolation accuracy", "extrapolation entropy"}
    assert again["metrics"]["extrapolation/natural/baseline/L=8/accuracy"] == pytest.approx(
        json.loads((tmp_path / "again" / "results.json").read_text())["results"]["natural"]["baseline"]["8"]["accuracy"])
    assert again["metrics"]["extrapolation/repeated/ntk/L=16/accuracy"] == added["extrapolation/repeated/ntk/L=16/accuracy"]


def test_robustness_publishes(base, tmp_path):
    out = tmp_path / "robustness"
    rc = robustness_main(["--model", "tiny", "--lengths", "1,2", "--probes", "offset_1,stride_2", "--max-tokens", "128",
                          "--out", str(out), "--quiet", "--publish", "tiny@eval1"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    _, added = check_published(base, "tiny@eval1", "robustness/", {"robustness": out / "robustness.png"})
    cells = results["results"]
    expected = {f"robustness/baseline/natural/L={length}/accuracy": cells["natural"][str(length)]["accuracy"]
                for length in (N, 2 * N)}
    expected.update({f"robustness/baseline/{probe}/L={length}/accuracy_change": cells[probe][str(length)]["accuracy_change"]
                     for probe in ("offset_1", "stride_2") for length in (N, 2 * N)})
    assert added == expected


BAD_TARGETS = [
    ("tiny", "error: cannot publish as 'tiny': give NAME@VERSION (a new version; versions are immutable)"),
    ("tiny@", "error: cannot publish as 'tiny@': give NAME@VERSION (a new version; versions are immutable)"),
    ("Tiny@2", "error: invalid model name 'Tiny': use lower-case letters, digits, '.', '_' and '-'"),
    ("tiny@main", "error: invalid version 'main': use letters, digits, '.', '_', '+' and '-' (not 'main')"),
    ("tiny@1.0", "error: tiny@1.0 is already published in {registry}; versions are immutable"),
]
COMMANDS = {
    "clue": (clue_main, ["--model", "tiny@1.0", "--data-dir", str(FIXTURES), "--dry-run", "--tasks", "afqmc",
                         "--no-progress", "--no-bf16", "--output"]),
    "extrapolation": (extrapolation_main, ["--model", "tiny@1.0", "--lengths", "1", "--max-tokens", "128", "--quiet", "--out"]),
    "robustness": (robustness_main, ["--model", "tiny@1.0", "--lengths", "1", "--max-tokens", "128", "--quiet", "--out"]),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_publish_target_fails_before_the_run(command, base, registry, tmp_path, capsys, monkeypatch):
    main, args = COMMANDS[command]
    import zoo.pretrained

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before --publish was checked")

    monkeypatch.setattr(zoo.pretrained, "from_pretrained", no_loading)
    monkeypatch.setattr(zoo, "from_pretrained", no_loading)
    for target, message in BAD_TARGETS:
        out = tmp_path / "out"
        assert main([*args, str(out), "--publish", target]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [message.format(registry=registry)]
        assert not out.exists()  # nothing was run
    assert Registry(registry).versions("tiny") == ["1.0"]


def test_clue_publish_refuses_random_init(base, tmp_path, capsys):
    out = tmp_path / "out"
    assert clue_main(["--model", "tiny@1.0", "--random-init", "--dry-run", "--tasks", "afqmc", "--output", str(out),
                      "--publish", "tiny@eval1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --publish publishes --model's weights: the scores of a --random-init run are not theirs")
    assert not out.exists()


def test_publish_evaluation_library(base, registry, tmp_path):
    figure = write_png(tmp_path / "plot.png", rgb=(0, 0, 255))
    with pytest.raises(RegistryError, match=r"^tiny@1\.0 is already published in .*; versions are immutable$"):
        zoo.publish_evaluation("tiny@1.0", "tiny@1.0", metrics={"x/y": 1.0})
    with pytest.raises(ValueError, match=r"cannot publish as 'tiny'"):
        zoo.publish_evaluation("tiny@1.0", "tiny", metrics={"x/y": 1.0})
    # a new key wins over the base's; a figure with the base figure's title replaces it
    ref = zoo.publish_evaluation("tiny", "tiny-eval@1", metrics={"heldout/loss": 4.0, "probe/score": 0.5},
                                 figures={"Training Curves": figure}, note="a probe")
    entry = Registry(registry).resolve("tiny-eval", "1")
    assert ref == "tiny-eval@1"
    assert entry.manifest["metrics"] == {"heldout/mlm_accuracy": 0.25, "heldout/loss": 4.0, "probe/score": 0.5}
    assert [(f["title"], f["file"]) for f in entry.manifest["figures"]] == [("Training Curves", "figure-training-curves.png")]
    assert (entry.path / "figure-training-curves.png").read_bytes() == figure.read_bytes()
    assert "## Evaluation: a probe" in (entry.path / "README.md").read_text()
    # a plain folder: no base metrics, figures or recipe
    folder = tmp_path / "folder"
    tiny_model().save_pretrained(folder)
    zoo.default_tokenizer().save_pretrained(folder)
    zoo.publish_evaluation(folder, "from-folder@1", metrics={"probe/score": 0.5}, figures=[figure])
    entry = Registry(registry).resolve("from-folder", "1")
    assert entry.manifest["metrics"] == {"probe/score": 0.5} and entry.manifest["recipe"] is None
    assert [f["title"] for f in entry.manifest["figures"]] == ["plot"]
    old, new = zoo.from_pretrained(folder).state_dict(), zoo.from_pretrained("from-folder@1").state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old)
