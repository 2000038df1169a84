"""The registry as a web site (zoo/site/): publishing figures and recipes, the pages, their escaping,
the server, and the pages as headless Chromium renders them (skipped only where Chromium is missing).

The browser tests drive Debian's `chromium` over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: JSON messages ending in NUL on fds 3 and 4), so nothing but the
standard library is needed. Screenshots go to $ZOO_SITE_ARTEFACTS, else a temporary folder the
test prints.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

import zoo
from zoo.__main__ import main
from zoo.registry import IntegrityError, Registry
from zoo.site import SiteServer, build_site
from zoo.site import build as build_site_module
from zoo.site import server as site_server

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
HOSTILE_CARD = """## About <script>window.__pwned = 1</script>

<img src=x onerror="window.__pwned = 2"> <b id="pwned">bold?</b>

[a link](javascript:window.__pwned=3) and ![tracker](http://example.invalid/pixel.png) and [raw](model.safetensors)

| col | <i>x</i> |
| --- | --- |
| <svg onload="window.__pwned=4"> | 1 |
"""
HOSTILE_METRIC = '<img src=x onerror="window.__pwned=5">'
HOSTILE_NAME = '<svg onload="window.__pwned=6">'


# --------------------------------------------------------------------------- fixtures: a small registry


def write_png(path: Path, title: str, seed: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = torch.Generator().manual_seed(seed)
    steps = torch.arange(1, 201)
    loss = 9.4 * steps.float() ** -0.28 + 0.05 * torch.randn(200, generator=rng)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, loss, label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("MLM loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def publish_tiny(preset: str, name: str, version: str, metrics: dict, registry, **kwargs) -> str:
    model = zoo.create(preset, **TINY)
    return zoo.publish(model, name=name, version=version, metrics=metrics, registry=registry, **kwargs)


@pytest.fixture(scope="module")
def zoo_registry(tmp_path_factory):
    """Four versions of three tiny models with figures, a recipe and metrics; plus a hostile one."""
    root = tmp_path_factory.mktemp("site-registry")
    figures = tmp_path_factory.mktemp("figures")
    recipe = figures / "roformer-v2-tiny.yaml"
    recipe.write_text("run_name: roformer-v2-tiny\nmodel: {preset: roformer-v2-tiny}\ntraining: {steps: 2000}\n"
                      "deepspeed: {train_batch_size: 64}\n")
    publish_tiny("roformer-v2-tiny", "roformer-v2-tiny-zh", "1.0",
                 {"heldout/mlm_accuracy": 0.412, "heldout/mlm_loss": 3.21}, root,
                 figures={"training curves": write_png(figures / "a.png", "roformer-v2-tiny-zh 1.0", 0)}, recipe=recipe,
                 card="## Training\n\nTrained on the **embedded corpus**; see [the recipe](recipe.yaml).\n\n"
                      "![curves](figure-training-curves.png)")
    publish_tiny("roformer-v2-tiny", "roformer-v2-tiny-zh", "1.1",
                 {"heldout/mlm_accuracy": 0.437, "heldout/mlm_loss": 3.02, "clue/tnews": 0.531}, root,
                 figures={"training curves": write_png(figures / "b.png", "roformer-v2-tiny-zh 1.1", 1),
                          "extrapolation": write_png(figures / "c.png", "accuracy by length", 2)},
                 recipe={"run_name": "roformer-v2-tiny", "training": {"steps": 4000}})
    publish_tiny("gau-alpha-tiny", "gau-alpha-tiny-zh", "1.0",
                 {"heldout/mlm_accuracy": 0.455, "heldout/mlm_loss": 2.95, "clue/tnews": 0.544}, root)
    publish_tiny("deepnet-tiny", "deepnet-tiny-zh", "0.1", {"heldout/mlm_accuracy": 0.298}, root)
    return root


@pytest.fixture(scope="module")
def hostile_registry(tmp_path_factory):
    """A card, a metric key, a figure title and a model name that try to inject markup."""
    root = tmp_path_factory.mktemp("hostile-registry")
    figures = tmp_path_factory.mktemp("hostile-figures")
    publish_tiny("roformer-v2-tiny", "hostile", "1.0", {HOSTILE_METRIC: 0.5}, root, card=HOSTILE_CARD,
                 figures={'"><script>window.__pwned=7</script>': write_png(figures / "x.png", "x", 3)})
    # a name zoo.publish would refuse, put there by hand
    os.rename(root / "models--zoo--hostile", root / f"models--zoo--{HOSTILE_NAME}")
    return root


@pytest.fixture(scope="module")
def site(zoo_registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    build_site(out, zoo_registry)
    return out


def page(site: Path, ref: str) -> str:
    name, version = ref.split("@")
    return (site / "models" / name / version / "index.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- publish: figures and recipe


def test_publish_stores_figures_and_recipe_under_the_manifest(registry, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run_name: r\nmodel: {preset: roformer-v2-tiny}\n")
    curves = write_png(tmp_path / "curves.png", "curves", 0)
    ref = publish_tiny("roformer-v2-tiny", "fig", "1.0", {}, None, figures=[curves], recipe=recipe)
    entry = Registry().resolve("fig", "1.0")  # verifies every file, figures and recipe included
    assert entry.manifest["figures"] == [{"file": "figure-curves.png", "title": "curves", "width": 400, "height": 240}]
    assert entry.manifest["recipe"] == "recipe.yaml"
    assert set(entry.manifest["files"]) >= {"figure-curves.png", "recipe.yaml"}
    assert (entry.path / "figure-curves.png").read_bytes() == curves.read_bytes()
    assert (entry.path / "recipe.yaml").read_text() == recipe.read_text()
    zoo.from_pretrained(ref)  # still loads, verified

    blob = (entry.path / "figure-curves.png").resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError, match="figure-curves.png"):
        zoo.from_pretrained(ref)


def test_publish_recipe_mapping_is_written_as_yaml(registry):
    import yaml

    recipe = {"run_name": "r", "training": {"steps": 10, "lr_schedule": {"type": "constant"}}}
    publish_tiny("gau-alpha-tiny", "rec", "1.0", {}, None, recipe=recipe)
    entry = Registry().resolve("rec")
    assert yaml.safe_load((entry.path / "recipe.yaml").read_text()) == recipe


@pytest.mark.parametrize("problem", ["missing", "not-png", "missing-recipe", "bad-recipe", "same-title"])
def test_publish_refuses_bad_figures_and_recipes_before_writing(registry, tmp_path, problem):
    good = write_png(tmp_path / "good.png", "good", 0)
    fake = tmp_path / "plot.png"
    fake.write_bytes(b"GIF89a not a png at all")
    bad_recipe = tmp_path / "recipe.yaml"
    bad_recipe.write_text("- just\n- a list\n")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    kwargs, expected = {
        "missing": ({"figures": [good, tmp_path / "nope.png"]}, (FileNotFoundError, r"figure file not found: .*nope\.png")),
        "not-png": ({"figures": [good, fake]}, (ValueError, r"figure .*plot\.png is not a PNG")),
        "missing-recipe": ({"recipe": tmp_path / "gone.yaml"}, (FileNotFoundError, r"recipe file not found: .*gone\.yaml")),
        "bad-recipe": ({"recipe": bad_recipe}, (ValueError, r"recipe .*recipe\.yaml is not a mapping")),
        "same-title": ({"figures": [good, shutil.copy(good, other_dir / "good.png")]},
                       (ValueError, r"figure-good\.png: give them distinct titles")),
    }[problem]
    with pytest.raises(expected[0], match=expected[1]):
        publish_tiny("roformer-v2-tiny", "bad", "1.0", {}, None, **kwargs)
    assert Registry().versions("bad") == []
    assert not [p for p in registry.rglob("*") if p.name.startswith(".stage-")]  # nothing half-written


def test_cli_publish_with_figure_and_recipe(registry, tmp_path, capsys):
    folder = tmp_path / "saved"
    zoo.create("roformer-v2-tiny", **TINY).save_pretrained(folder)
    zoo.default_tokenizer().save_pretrained(folder)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run_name: r\n")
    png = write_png(tmp_path / "loss.png", "loss", 0)
    assert main(["publish", str(folder), "--name", "cli", "--version", "1", "--figure", str(png), "--recipe", str(recipe)]) == 0
    manifest = Registry().resolve("cli").manifest
    assert [f["file"] for f in manifest["figures"]] == ["figure-loss.png"] and manifest["recipe"] == "recipe.yaml"
    assert main(["publish", str(folder), "--name", "cli", "--version", "2", "--figure", str(recipe)]) == 1
    assert "r.yaml is not a PNG" in capsys.readouterr().err


# --------------------------------------------------------------------------- the built pages


def test_index_lists_every_version_with_its_facts(site, zoo_registry):
    index = (site / "index.html").read_text(encoding="utf-8")
    rows = re.findall(r'<tr data-family="([^"]+)" data-task="([^"]+)" data-ref="([^"]+)">(.*?)</tr>', index, re.S)
    assert [(family, task, ref) for family, task, ref, _ in rows] == [
        ("deepnet", "masked-lm", "deepnet-tiny-zh@0.1"),
        ("gau-alpha", "masked-lm", "gau-alpha-tiny-zh@1.0"),
        ("roformer-v2", "masked-lm", "roformer-v2-tiny-zh@1.0"),
        ("roformer-v2", "masked-lm", "roformer-v2-tiny-zh@1.1"),
    ]
    gau = dict((ref, cells) for _, _, ref, cells in rows)["gau-alpha-tiny-zh@1.0"]
    params = Registry(zoo_registry).resolve("gau-alpha-tiny-zh").manifest["num_parameters"]
    assert f"{params:,}" in gau and "L1 H32 A2" in gau and "WordPiece · 12,000" in gau and "✓ verified" in gau
    assert '<span class="badge latest">latest</span>' in dict((r, c) for _, _, r, c in rows)["roformer-v2-tiny-zh@1.1"]
    assert "latest" not in dict((r, c) for _, _, r, c in rows)["roformer-v2-tiny-zh@1.0"]
    # headline metrics: the most widely reported, as sortable columns with their numbers
    headers = [re.sub(r"<[^>]+>", "", head) for head in re.findall(
        r'<th scope="col" data-type="number" aria-sort="none" class="metric"><button type="button" class="sort">(.*?)</button>', index)]
    assert headers == ["heldout/mlm_accuracy", "heldout/mlm_loss", "clue/tnews"]
    assert '<td data-value="0.455" class="num">0.455</td>' in gau and '<td data-value="0.544" class="num">0.544</td>' in gau
    # the filters offer exactly the families and tasks there are
    assert re.findall(r'<option value="([^"]+)">', index) == ["deepnet", "gau-alpha", "roformer-v2", "masked-lm"]


def test_model_page_shows_card_metrics_figures_recipe_and_snippets(site):
    html_text = page(site, "roformer-v2-tiny-zh@1.1")
    metrics = dict(re.findall(r'<tr><th scope="row">([^<]+)</th><td class="num">([^<]+)</td></tr>', html_text))
    assert metrics == {"clue/tnews": "0.531", "heldout/mlm_accuracy": "0.437", "heldout/mlm_loss": "3.02"}
    images = re.findall(r'<img src="([^"]+)" alt="([^"]+)" width="(\d+)" height="(\d+)"', html_text)
    assert [(src, alt) for src, alt, _, _ in images] == [("figure-training-curves.png", "training curves"),
                                                         ("figure-extrapolation.png", "extrapolation")]
    folder = site / "models" / "roformer-v2-tiny-zh" / "1.1"
    for src, _, width, height in images:
        assert (folder / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (int(width), int(height)) == (400, 240)
    assert "run_name: roformer-v2-tiny" in html_text and "steps: 4000" in html_text
    assert (folder / "recipe.yaml").is_file()
    assert "<h2>Metrics</h2>" in html_text and '<article class="card"><h2>roformer-v2-tiny-zh 1.1</h2>' in html_text
    # the card's own Markdown of version 1.0: bold, a link to the recipe published next to it, its figure
    card = page(site, "roformer-v2-tiny-zh@1.0")
    assert "<strong>embedded corpus</strong>" in card and '<a href="recipe.yaml">the recipe</a>' in card
    assert '<img src="figure-training-curves.png" alt="curves">' in card
    assert 'href="../../../models/roformer-v2-tiny-zh/1.0/index.html">1.0</a>' in html_text  # other versions


def test_model_page_snippets_load_the_model(site, zoo_registry, monkeypatch, tmp_path):
    html_text = page(site, "gau-alpha-tiny-zh@1.0")
    codes = {title: html.unescape(code) for title, code in re.findall(
        r'<div class="snippet-head"><span>([^<]+)</span>.*?<code id="snippet-\d+">(.*?)</code>', html_text, re.S)}
    assert set(codes) == {"zoo", "transformers", "fill-mask"}
    assert f'cache_dir="{zoo_registry}"' in codes["transformers"] and 'revision="1.0"' in codes["transformers"]
    monkeypatch.setenv("ZOO_REGISTRY", str(zoo_registry))
    ids = torch.tensor([[101, 2769, 103, 102]])
    outputs = []
    for title in ("zoo", "transformers"):
        scope: dict = {}
        exec(codes[title], scope)  # the page's snippet, as a user would paste it
        assert len(scope["tokenizer"]) == 12000
        outputs.append(scope["model"].eval()(input_ids=ids).logits)
    assert torch.equal(outputs[0], outputs[1])
    monkeypatch.delenv("ZOO_REGISTRY")
    command = codes["fill-mask"]
    assert command.startswith(f"python -m zoo --registry {zoo_registry} fill-mask gau-alpha-tiny-zh@1.0 ")
    result = subprocess.run(command.replace("python", sys.executable, 1), shell=True, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[MASK] 1:" in result.stdout


def test_compare_page_sets_scores_side_by_side(zoo_registry, tmp_path):
    out = tmp_path / "site"
    build_site(out, zoo_registry, compare=["gau-alpha-tiny-zh@1.0", "roformer-v2-tiny-zh@1.1"])
    text = (out / "compare.html").read_text(encoding="utf-8")
    heads = re.findall(r'<th scope="col" data-col="(\d+)"( hidden)?><a href="[^"]+">([^<]+)</a>', text)
    assert [(ref, bool(hidden)) for _, hidden, ref in heads] == [
        ("deepnet-tiny-zh@0.1", True), ("gau-alpha-tiny-zh@1.0", False),
        ("roformer-v2-tiny-zh@1.0", True), ("roformer-v2-tiny-zh@1.1", False)]
    row = re.search(r'<tr class="metric" data-metric="clue/tnews">(.*?)</tr>', text).group(1)
    assert re.findall(r">([^<]*)</td>", row) == ["—", "0.544", "—", "0.531"]


def test_verification_status_and_site_replacement(registry, tmp_path, capsys):
    publish_tiny("roformer-v2-tiny", "a", "1", {"x": 1.0}, None)
    publish_tiny("roformer-v2-tiny", "b", "1", {"x": 2.0}, None)
    blob = (Registry().resolve("b").path / "config.json").resolve()
    blob.write_text(blob.read_text() + " ")
    out = tmp_path / "site"
    assert main(["site", "--out", str(out)]) == 0
    assert f"open {(out / 'index.html').as_uri()}" in capsys.readouterr().out
    assert "✓ verified" in page(out, "a@1") and "✗ failed" not in page(out, "a@1")
    assert "✗ failed" in page(out, "b@1") and "file config.json has" in page(out, "b@1")
    # an earlier build is replaced; any other folder is not
    (out / "stale.html").write_text("old")
    build_site(out, verify=False)
    assert not (out / "stale.html").exists() and "not checked" in page(out, "b@1")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a site built by zoo"):
        build_site(precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "registry", "site"]  # no staging left


def parsed_tags(text: str) -> list[tuple[str, list]]:
    """Every start tag of an HTML document, as a browser's tokenizer reads it, with its attributes."""
    from html.parser import HTMLParser

    tags = []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: tags.append((tag, attrs))
    parser.feed(text)
    return tags


def test_empty_registry_and_chosen_headline_metrics(registry, tmp_path):
    text = build_site(tmp_path / "empty").read_text(encoding="utf-8")
    assert "The registry is empty" in text and "<table" not in text
    publish_tiny("roformer-v2-tiny", "m", "1", {"a": 1.0, "b": 2.0, "c": 3.0}, None)
    text = build_site(tmp_path / "one", headline=["c", "missing"]).read_text(encoding="utf-8")
    heads = re.findall(r'class="metric"><button type="button" class="sort">(.*?)</button>', text)
    assert heads == ["c", "missing"]
    row = re.search(r'<tr data-family=.*?</tr>', text, re.S).group(0)
    assert row.endswith('<td data-value="3.0" class="num">3</td><td data-value="" class="num"></td></tr>')


def test_hostile_text_is_escaped_in_the_html(hostile_registry, tmp_path):
    out = tmp_path / "site"
    build_site(out, hostile_registry)
    pages = [out / "index.html", out / "compare.html", *(out / "models").rglob("index.html")]
    assert len(pages) == 3
    for path in pages:
        text = path.read_text(encoding="utf-8")
        scripts = re.findall(r"<script\b[^>]*>", text)
        assert scripts == [f'<script src="{"../../../" if path.parent.parent.parent.name == "models" else ""}assets/site.js" defer>'], path
        for injected in ("<svg", "<img src=x", "<b id", "<i>"):
            assert injected not in text, (path, injected)
        tags = parsed_tags(text)
        assert not {tag for tag, _ in tags} & {"svg", "b", "i", "iframe", "object"}, path
        assert not [(tag, attrs) for tag, attrs in tags for key, value in attrs
                    if key.startswith("on") or "javascript:" in (value or "")], path
    model_page_text = pages[2].read_text(encoding="utf-8")
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in model_page_text
    assert "http://example.invalid/pixel.png" in model_page_text and 'src="http://example.invalid' not in model_page_text
    assert '<span class="dead-link" title="model.safetensors">raw</span>' in model_page_text
    assert pages[2].parent.parent.name.startswith("_")  # the hostile name is not a path


# --------------------------------------------------------------------------- serving


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


def test_server_rebuilds_when_the_registry_changes(registry):
    publish_tiny("roformer-v2-tiny", "first", "1", {}, None)
    with SiteServer(port=0, poll_interval=3600) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert "first@1" in fetch(server.url) and "second@1" not in fetch(server.url)
        assert server.refresh() is False  # nothing changed
        publish_tiny("roformer-v2-tiny", "second", "1", {"acc": 0.5}, None)
        assert server.refresh() is True
        index = fetch(server.url + "index.html")
        assert "first@1" in index and "second@1" in index
        assert "acc" in fetch(server.url + "models/second/1/index.html")


def test_cli_serve_serves_on_localhost_and_follows_the_registry(registry, tmp_path, capsys):
    publish_tiny("roformer-v2-tiny", "served", "1", {}, None)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "serve", "--port", "0", "--poll", "0.2"], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "ZOO_REGISTRY": str(registry), "TMPDIR": str(scratch)})
    try:
        line = proc.stdout.readline()
        url = re.search(r"serving the zoo at (http://127\.0\.0\.1:\d+/)", line).group(1)
        assert "served@1" in fetch(url)
        publish_tiny("roformer-v2-tiny", "late", "1", {}, None)
        # the watcher notices and says so (perhaps more than once while the publish is under way)
        for _ in range(20):
            assert proc.stdout.readline().startswith("registry changed: rebuilt the site")
            if "late@1" in fetch(url):
                break
        else:
            pytest.fail("the served site never showed late@1")
        assert "served@1" in fetch(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0 and list(scratch.iterdir()) == []  # stopped cleanly, its builds removed
    # a port that is taken is an error that says so
    with SiteServer(port=0) as busy:
        taken = busy.url.rstrip("/").rsplit(":", 1)[1]
        assert main(["serve", "--port", taken]) == 1
        assert f"cannot serve on 127.0.0.1:{taken}" in capsys.readouterr().err


def run_with_timeout(fn, seconds: float = 30):
    """fn() in a thread: fails instead of hanging the suite when it does not return in time."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as error:  # re-raised in the test's thread
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} did not return within {seconds} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The temporary folder the server keeps its builds in (tempfile's default), to see what it leaves."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_stopping_a_server_that_never_started_returns_and_releases_everything(registry, scratch):
    server = SiteServer(port=0)
    assert len(list(scratch.iterdir())) == 1
    run_with_timeout(server.stop)
    assert server.httpd.socket.fileno() == -1 and list(scratch.iterdir()) == []
    run_with_timeout(server.stop)  # again: nothing to do


def test_a_failed_first_build_releases_the_socket_and_the_builds(registry, scratch, monkeypatch):
    def collect(*args, **kwargs):
        raise RuntimeError("the first build failed")

    monkeypatch.setattr(site_server, "collect", collect)
    server = SiteServer(port=0)
    with pytest.raises(RuntimeError, match="the first build failed"):
        run_with_timeout(server.start)
    assert server.httpd.socket.fileno() == -1 and list(scratch.iterdir()) == []
    run_with_timeout(server.stop)
    with pytest.raises(RuntimeError, match="the first build failed"):  # as `zoo serve` runs it (main thread: signals)
        site_server.serve(port=0)
    assert list(scratch.iterdir()) == []


def test_a_publish_in_progress_causes_no_rebuild_but_its_ref_does(registry):
    publish_tiny("roformer-v2-tiny", "first", "1", {}, None)
    repo = registry / "models--zoo--first"
    with SiteServer(port=0, poll_interval=3600) as server:
        store = Registry()
        with store.staging(".stage-") as saving, store.staging(".publish-", parent=repo) as moving:
            (saving / "model.safetensors").write_bytes(b"x" * 100)
            (moving / ("0" * 64)).write_bytes(b"a blob being copied")
            (repo / "blobs" / ("1" * 64)).write_bytes(b"a blob moved, its snapshot not yet")
            assert server.refresh() is False
        assert server.refresh() is False
        publish_tiny("roformer-v2-tiny", "first", "2", {}, None)
        assert server.refresh() is True and "first@2" in fetch(server.url)
        blob = (store.resolve("first", "1").path / "config.json").resolve()
        blob.write_text(blob.read_text() + " ")  # tampered: seen through the snapshot's link
        assert server.refresh() is True


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_failed_switch_puts_the_old_site_back_and_killed_builds_are_removed(registry, tmp_path, monkeypatch):
    from zoo.site.build import MARKER

    web = tmp_path / "web"
    out = web / "site"
    build_site(out)
    (out / "stale.html").write_text("the old site")
    dead = dead_pid()
    killed = web / f".site.build-{dead}-abcd_123"  # a build killed while writing
    (killed / "models").mkdir(parents=True)
    running = web / f".site.build-{os.getppid()}-abcd_123"  # a build in progress: its process runs
    running.mkdir()
    other = web / f".site2.build-{dead}-abcd_123"  # another output's
    other.mkdir()
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".site.build-"):
            raise OSError("no space left to switch")
        return real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace)
        with pytest.raises(OSError, match="no space left to switch"):
            build_site(out)
    assert (out / "stale.html").read_text() == "the old site" and (out / MARKER).is_file()
    assert sorted(p.name for p in web.iterdir()) == sorted([running.name, other.name, "site"])
    # killed between moving the old site out and the new one in: the next build finds it
    stranded = web / f".site.old-{dead}-abcd_123"
    stranded.mkdir()
    real_replace(out, stranded / "site")
    build_site_module._clean_stale_builds(out)
    assert (out / "stale.html").read_text() == "the old site" and not stranded.exists()
    build_site(out)
    assert not (out / "stale.html").exists()
    assert sorted(p.name for p in web.iterdir()) == sorted([running.name, other.name, "site"])


def test_snippets_name_the_registry_by_its_absolute_path(tmp_path, monkeypatch):
    from zoo.site.build import SiteEntry, snippets

    monkeypatch.chdir(tmp_path)  # the site is built here, and read from anywhere
    entry = SiteEntry("m", "1", path=tmp_path, manifest={"architecture": "RoFormerV2ForMaskedLM"}, tokenizer="vocab.txt · 5")
    codes = dict(snippets(entry, Path("registry")))
    assert f'cache_dir="{tmp_path / "registry"}"' in codes["transformers"]
    assert f" --registry {tmp_path / 'registry'} fill-mask " in codes["fill-mask"]


# --------------------------------------------------------------------------- in a real browser


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


needs_chromium = pytest.mark.skipif(
    chromium_path() is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium; or set $CHROMIUM): the site is not checked in a browser",
)


def high_fd(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium over the DevTools protocol on a pipe: one tab, its events recorded."""

    DEADLINE = 60.0  # seconds to wait for any one reply or event before declaring the browser stuck

    def __init__(self, executable: str, profile: Path):
        # numbered above 4, so that bash's `3<&… 4>&…` never overwrites one with the other
        self._to_chrome_r, self._to_chrome = map(high_fd, os.pipe())
        self._from_chrome, self._from_chrome_w = map(high_fd, os.pipe())
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 "--mute-audio", "about:blank"]
        # the DevTools pipe is fds 3 (commands in) and 4 (replies out) of the browser
        shell = f'exec "$0" "$@" 3<&{self._to_chrome_r} 4>&{self._from_chrome_w}'
        self.proc = subprocess.Popen(["bash", "-c", shell, executable, *flags], pass_fds=(self._to_chrome_r, self._from_chrome_w),
                                     stdout=subprocess.DEVNULL, stderr=open(profile / "chromium.log", "wb"))
        self.log = profile / "chromium.log"
        os.close(self._to_chrome_r)
        os.close(self._from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=1440, height=900, deviceScaleFactor=1, mobile=False)

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], self.DEADLINE)
            chunk = os.read(self._from_chrome, 1 << 20) if ready else b""
            if not chunk:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Chromium stopped answering on the DevTools pipe; its log ends:\n{tail}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, session: bool = False, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read_message())

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")
        self.js("new Promise(resolve => requestAnimationFrame(() => resolve(true)))")

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element."""
        box = self.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                      " el.scrollIntoView({block: 'center', inline: 'center'}); const r = el.getBoundingClientRect();"
                      " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, failed or 4xx/5xx loads since the page was opened."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Network.loadingFailed":
                found.append(f"load failed: {params.get('errorText')}")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                found.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
        return found

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png"}
        if full_page:
            width, height = self.js("[document.documentElement.scrollWidth, Math.ceil(document.body.getBoundingClientRect().bottom)]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": min(height, 4000), "scale": 1})
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", session=True, **params)["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except RuntimeError:
            pass
        os.close(self._to_chrome)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = Browser(chromium_path(), tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def served(zoo_registry):
    with SiteServer(zoo_registry, port=0, poll_interval=3600) as server:
        yield server


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    folder = Path(os.environ.get("ZOO_SITE_ARTEFACTS") or tmp_path_factory.mktemp("site-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nsite screenshots: {folder}")
    return folder


def check_links_and_images(browser: Browser, base_url: str) -> list[str]:
    """Every image drawn, every link, stylesheet and script of the site answering 200; returns their paths."""
    images = browser.js("Array.from(document.images).map(i => [i.currentSrc, i.complete && i.naturalWidth > 0])")
    assert all(ok for _, ok in images), images
    urls = browser.js("Array.from(document.querySelectorAll('a[href], link[href], script[src], img[src]'))"
                      ".map(e => e.href || e.src)")
    internal = sorted({url.split("#")[0] for url in urls if url.startswith(base_url)})
    for url in internal:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200, url
    external = [url for url in urls if not url.startswith((base_url, "data:"))]
    assert external == [], external  # nothing leaves the machine
    return [url[len(base_url) - 1:] for url in internal]


@needs_chromium
def test_browser_index_lists_sorts_and_filters(browser, served, artefacts):
    browser.open(served.url)
    assert browser.problems() == []
    refs = browser.js("Array.from(document.querySelectorAll('#models tbody tr')).map(r => r.dataset.ref)")
    assert refs == ["deepnet-tiny-zh@0.1", "gau-alpha-tiny-zh@1.0", "roformer-v2-tiny-zh@1.0", "roformer-v2-tiny-zh@1.1"]
    links = check_links_and_images(browser, served.url)
    assert {"/index.html", "/compare.html", "/assets/site.css", "/assets/site.js",
            "/models/gau-alpha-tiny-zh/1.0/index.html", "/models/deepnet-tiny-zh/0.1/index.html"} <= set(links)
    browser.screenshot(artefacts / "index.png", full_page=True)

    # sort by held-out accuracy with real clicks on the column header: ascending, then descending
    column = "#models thead th:nth-child(11) button"
    assert browser.js(f"document.querySelector({json.dumps(column)}).textContent") == "heldout/mlm_accuracy"
    visible = "Array.from(document.querySelectorAll('#models tbody tr')).filter(r => !r.hidden).map(r => r.dataset.ref)"
    browser.click(column)
    assert browser.js(visible) == ["deepnet-tiny-zh@0.1", "roformer-v2-tiny-zh@1.0", "roformer-v2-tiny-zh@1.1", "gau-alpha-tiny-zh@1.0"]
    assert browser.js("document.querySelector('#models thead th:nth-child(11)').getAttribute('aria-sort')") == "ascending"
    browser.click(column)
    assert browser.js(visible) == ["gau-alpha-tiny-zh@1.0", "roformer-v2-tiny-zh@1.1", "roformer-v2-tiny-zh@1.0", "deepnet-tiny-zh@0.1"]
    # clue/tnews: the versions without it stay last in both directions
    browser.click("#models thead th:nth-child(13) button")
    assert browser.js(visible)[:2] == ["roformer-v2-tiny-zh@1.1", "gau-alpha-tiny-zh@1.0"]

    # filter by family, then by text
    browser.js("(() => { const s = document.getElementById('filter-family'); s.value = 'roformer-v2';"
               " s.dispatchEvent(new Event('change')); })()")
    assert sorted(browser.js(visible)) == ["roformer-v2-tiny-zh@1.0", "roformer-v2-tiny-zh@1.1"]
    assert browser.js("document.getElementById('shown-count').textContent") == "2 of 4 shown"
    browser.open(served.url + "index.html?family=gau-alpha")
    assert browser.js(visible) == ["gau-alpha-tiny-zh@1.0"]

    # pick two versions and compare them
    browser.open(served.url)
    browser.click('input[value="gau-alpha-tiny-zh@1.0"]')
    browser.click('input[value="roformer-v2-tiny-zh@1.1"]')
    browser.click("#compare-selected")
    browser.wait_for("Page.loadEventFired")
    assert browser.js("location.pathname + location.search") == \
        "/compare.html?m=gau-alpha-tiny-zh%401.0&m=roformer-v2-tiny-zh%401.1"
    shown = browser.js("Array.from(document.querySelectorAll('#compare thead th[data-col]')).filter(c => !c.hidden)"
                       ".map(c => c.textContent)")
    assert shown == ["gau-alpha-tiny-zh@1.0", "roformer-v2-tiny-zh@1.1"]
    tnews = browser.js("Array.from(document.querySelectorAll('#compare tr[data-metric=\"clue/tnews\"] td'))"
                       ".filter(c => !c.hidden).map(c => c.textContent)")
    assert tnews == ["0.544", "0.531"]
    assert browser.problems() == []


@needs_chromium
def test_browser_model_page_shows_metrics_and_figures(browser, served, artefacts):
    browser.open(served.url + "models/roformer-v2-tiny-zh/1.1/index.html")
    assert browser.problems() == []
    metrics = browser.js("Array.from(document.querySelectorAll('#metrics tbody tr'))"
                         ".map(r => [r.cells[0].textContent, r.cells[1].textContent])")
    assert metrics == [["clue/tnews", "0.531"], ["heldout/mlm_accuracy", "0.437"], ["heldout/mlm_loss", "3.02"]]
    figures = browser.js("Array.from(document.querySelectorAll('#figures-section img'))"
                         ".map(i => [i.alt, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width > 100])")
    assert figures == [["training curves", 400, 240, True], ["extrapolation", 400, 240, True]]
    links = check_links_and_images(browser, served.url)
    folder = "/models/roformer-v2-tiny-zh/"
    assert {folder + "1.0/index.html", folder + "1.1/figure-training-curves.png", folder + "1.1/figure-extrapolation.png",
            folder + "1.1/recipe.yaml", "/assets/site.css", "/assets/site.js"} <= set(links)
    assert "zoo.from_pretrained(\"roformer-v2-tiny-zh@1.1\")" in browser.js("document.body.innerText")
    browser.screenshot(artefacts / "model.png", full_page=True)
    # the page whose card embeds its figure
    browser.open(served.url + "models/roformer-v2-tiny-zh/1.0/index.html")
    assert browser.problems() == []
    assert browser.js("document.querySelector('article.card img').naturalWidth") == 400
    check_links_and_images(browser, served.url)


@needs_chromium
def test_browser_site_works_from_files_too(browser, site):
    browser.open((site / "index.html").as_uri())
    assert browser.problems() == []
    browser.click("#models thead th:nth-child(7) button")  # parameters, ascending
    params = browser.js("Array.from(document.querySelectorAll('#models tbody tr')).map(r => Number(r.cells[6].dataset.value))")
    assert params == sorted(params) and len(set(params)) > 1
    browser.open((site / "models" / "roformer-v2-tiny-zh" / "1.1" / "index.html").as_uri())
    assert browser.problems() == []
    assert browser.js("Array.from(document.images).every(i => i.complete && i.naturalWidth === 400)") is True


@needs_chromium
def test_browser_hostile_card_and_names_stay_text(browser, hostile_registry):
    with SiteServer(hostile_registry, port=0, poll_interval=3600) as server:
        browser.open(server.url)
        link = browser.js("document.querySelector('#models td.name a').getAttribute('href')")
        assert browser.js("document.querySelector('#models td.name a').textContent") == HOSTILE_NAME
        assert browser.js("document.querySelector('#models th.metric').textContent") == HOSTILE_METRIC
        for url in (server.url, server.url + "compare.html", server.url + link):
            browser.open(url)
            assert browser.problems() == []
            assert browser.js("window.__pwned === undefined") is True, url
            assert browser.js("document.querySelectorAll('script').length") == 1
            assert browser.js("document.querySelectorAll('svg, #pwned, [onerror], [onload]').length") == 0
        text = browser.js("document.querySelector('article.card').innerText")
        assert "<script>window.__pwned = 1</script>" in text and '<img src=x onerror="window.__pwned = 2">' in text
        assert browser.js("document.querySelector('#figures-section figcaption').textContent") == \
            '"><script>window.__pwned=7</script>'
