"""The registry as a static site: an index, a page per model version, a comparison page.

    DIR/index.html                      every model and version, sortable and filterable
    DIR/compare.html                    chosen versions' scores side by side (?m=name@version&m=...)
    DIR/models/<name>/<version>/        index.html, the figures, recipe, card and config of that version
    DIR/assets/site.css, site.js        the only stylesheet and script (no CDN, fonts or remote files)

Everything taken from the registry (names, versions, metric keys, cards, figure titles) is
untrusted text: it is HTML-escaped where it is written, the card goes through the safe Markdown
renderer, and file names from a manifest are used only when they match the names `zoo.publish`
writes. Each page also carries a Content-Security-Policy that allows only the site's own script.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from ..registry import MANIFEST, Registry, RegistryError, default_root
from ..version import __version__
from .markdown import render_card

STATIC = Path(__file__).parent / "static"
MARKER = ".zoo-site"  # written into every built site: only such a folder is ever replaced
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
FIGURE_FILE = re.compile(r"^figure-[a-z0-9._-]+\.png$")
RECIPE_FILES = ("recipe.yaml", "recipe.json")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'")
HEADLINE_COUNT = 4
CURRENT = ' aria-current="page"'
METRIC_CLASS = ' class="metric"'


def e(value) -> str:
    """Escape text for HTML element content and quoted attribute values."""
    return escape("" if value is None else str(value), quote=True)


def segment(text: str) -> str:
    """A path segment for a name or version: itself when plain, else a digest (never '..' or '/')."""
    if SAFE_SEGMENT.match(text) and text not in (".", ".."):
        return text
    return "_" + hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


# --------------------------------------------------------------------------- what the site shows


@dataclass
class SiteEntry:
    """One published version as the site shows it."""

    name: str
    version: str
    commit: str | None = None
    path: Path | None = None
    manifest: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    verified: bool | None = None  # None: not checked (build_site(verify=False))
    problem: str | None = None  # why it failed verification or could not be read
    latest: bool = False
    tokenizer: str = "none"

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def page_dir(self) -> str:
        return f"models/{segment(self.name)}/{segment(self.version)}"

    @property
    def family(self) -> str:
        return str(self.manifest.get("family") or "unknown")

    @property
    def architecture(self) -> str:
        return str(self.manifest.get("architecture") or "")

    @property
    def task(self) -> str:
        from ..families import TASKS

        arch = self.architecture
        for task, (_, suffix) in TASKS.items():
            if task != "base" and arch.endswith(suffix):
                return task
        return "base" if arch.endswith("Model") else "unknown"

    @property
    def parameters(self) -> int | None:
        value = self.manifest.get("num_parameters")
        return value if isinstance(value, int) else None

    @property
    def layers(self) -> int | None:
        return _int(self.config.get("num_hidden_layers"))

    @property
    def hidden(self) -> int | None:
        return _int(self.config.get("hidden_size"))

    @property
    def size(self) -> str:
        """`L-12 H-768 A-12` style, as the released checkpoints are named."""
        if self.layers is None or self.hidden is None:
            return ""
        heads = _int(self.config.get("num_attention_heads"))
        return f"L{self.layers} H{self.hidden}" + (f" A{heads}" if heads else "")

    @property
    def size_in_words(self) -> str:
        if self.layers is None or self.hidden is None:
            return ""
        heads = _int(self.config.get("num_attention_heads"))
        words = f"{self.layers} layer{'s' if self.layers != 1 else ''}, hidden size {self.hidden}"
        return words + (f", {heads} attention head{'s' if heads != 1 else ''}" if heads else "")

    @property
    def created(self) -> str:
        return str(self.manifest.get("created") or "")

    @property
    def metrics(self) -> dict[str, float]:
        raw = self.manifest.get("metrics")
        return {str(k): v for k, v in raw.items() if _number(v) is not None} if isinstance(raw, dict) else {}

    @property
    def files(self) -> dict:
        files = self.manifest.get("files")
        return files if isinstance(files, dict) else {}

    @property
    def figures(self) -> list[dict]:
        """The manifest's figures whose file names are ones `zoo.publish` writes and that it lists."""
        out = []
        for figure in self.manifest.get("figures") or []:
            if isinstance(figure, dict) and FIGURE_FILE.match(str(figure.get("file", ""))) and figure["file"] in self.files:
                out.append({"file": figure["file"], "title": str(figure.get("title") or figure["file"]),
                            "width": _int(figure.get("width")), "height": _int(figure.get("height"))})
        return out

    @property
    def recipe(self) -> str | None:
        recipe = self.manifest.get("recipe")
        return recipe if recipe in RECIPE_FILES and recipe in self.files else None


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def collect(registry: str | os.PathLike | None = None, verify: bool = True) -> list[SiteEntry]:
    """Every version in the registry, newest model version marked, sha256 verified when asked."""
    store = Registry(registry)
    entries = []
    for name in store.names():
        try:
            latest = store.resolve(name, None, verify=False).version
        except (RegistryError, OSError, ValueError):
            latest = None
        for version in store.versions(name):
            site_entry = SiteEntry(name, version, latest=version == latest)
            try:
                entry = store.resolve(name, version, verify=verify)  # one read of each file
                site_entry.verified = True if verify else None
            except (RegistryError, OSError, ValueError) as error:
                site_entry.verified, site_entry.problem = False, str(error)
                try:  # failed verification: the page still shows what can be read
                    if not verify:
                        raise
                    entry = store.resolve(name, version, verify=False)
                except (RegistryError, OSError, ValueError) as unreadable:
                    site_entry.problem = str(unreadable)  # not even that: a page with the error only
                    entries.append(site_entry)
                    continue
            site_entry.commit, site_entry.path, site_entry.manifest = entry.commit, entry.path, entry.manifest
            site_entry.config = _read_json(entry.path / "config.json")
            site_entry.tokenizer = _describe_tokenizer(entry.path)
            entries.append(site_entry)
    return entries


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe_tokenizer(folder: Path) -> str:
    tokenizer = _read_json(folder / "tokenizer.json")
    model = tokenizer.get("model") if isinstance(tokenizer.get("model"), dict) else {}
    if model.get("vocab"):
        return f"{model.get('type') or 'tokenizer'} · {len(model['vocab']):,}"
    try:
        with open(folder / "vocab.txt", encoding="utf-8") as handle:
            return f"vocab.txt · {sum(1 for line in handle if line.strip()):,}"
    except OSError:
        return "none"


def headline_metrics(entries: list[SiteEntry], wanted: list[str] | None = None, count: int = HEADLINE_COUNT) -> list[str]:
    """The metrics shown as index columns: `wanted`, else the `count` most widely reported."""
    if wanted:
        return list(dict.fromkeys(wanted))
    seen: dict[str, int] = {}
    for entry in entries:
        for key in entry.metrics:
            seen[key] = seen.get(key, 0) + 1
    return sorted(seen, key=lambda k: (-seen[k], k))[:count]


# --------------------------------------------------------------------------- building


def build_site(
    out: str | os.PathLike,
    registry: str | os.PathLike | None = None,
    *,
    verify: bool = True,
    headline: list[str] | None = None,
    compare: list[str] | None = None,
    title: str = "zoo",
) -> Path:
    """Write the registry as a static site into `out`; returns the path of its index.html.

    `verify`: check every version's sha256 digests (shown as verified / failed on the pages).
    `headline`: the metrics shown as columns of the index (default: the most widely reported).
    `compare`: the `name@version`s the comparison page starts with (default: all).
    The site is written next to `out` (`.<out>.build-<pid>-*`) and moved into place when complete;
    an existing `out` is replaced only if it is an earlier build (it holds the `.zoo-site` marker)
    or empty, and put back if the new one cannot be moved in. What a killed build left next to
    `out` is cleaned up first (see `_clean_stale_builds`).
    """
    out = Path(out).expanduser().absolute()
    if out.parent.is_dir():
        _clean_stale_builds(out)
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"refusing to replace {out}: it is not a site built by zoo (no {MARKER} in it)")
    root = Registry(registry).root.absolute()
    entries = collect(root, verify=verify)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-{os.getpid()}-", dir=out.parent))
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the site from a web server's user
    try:
        write_site(staging, entries, root, headline=headline, compare=compare, title=title)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            os.replace(out, old / "site")
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(old / "site", out)  # the old site goes back (if this fails too, it stays in `old`)
                os.rmdir(old)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "index.html"


def _clean_stale_builds(out: Path) -> None:
    """Remove what killed builds of `out` left next to it: `.<out>.build-<pid>-*` (a half-written site)
    and `.<out>.old-<pid>-*` (the site being replaced: moved back to `out` when `out` is missing).

    Only folders whose pid is not a running process on this machine are touched: a build in progress
    is never disturbed (a reused pid only delays the cleanup). The name of another output
    never matches: the pid and mkdtemp's 8-character suffix must follow the prefix exactly."""
    from ..registry import _pid_alive

    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(build|old)-(\d{{1,9}})-[a-z0-9_]{{8}}$")
    for path in sorted(out.parent.iterdir()):
        match = pattern.match(path.name)
        if not match or not path.is_dir() or path.is_symlink() or _pid_alive(int(match.group(2))):
            continue
        kept = path / "site"
        if match.group(1) == "old" and not os.path.lexists(out) and (kept / MARKER).is_file():
            os.replace(kept, out)  # killed between moving the old site out and the new one in
        shutil.rmtree(path, ignore_errors=True)


def write_site(dest: Path, entries: list[SiteEntry], registry_root: Path, *, headline=None, compare=None,
               title: str = "zoo") -> None:
    """Write every page of the site into the (empty) folder `dest`."""
    context = {
        "title": title,
        "root": registry_root,
        "built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "zoo_version": __version__,
    }
    (dest / "assets").mkdir(parents=True, exist_ok=True)
    for asset in ("site.css", "site.js"):
        shutil.copyfile(STATIC / asset, dest / "assets" / asset)
    keys = headline_metrics(entries, headline)
    (dest / "index.html").write_text(index_page(entries, keys, context), encoding="utf-8")
    (dest / "compare.html").write_text(compare_page(entries, compare, context), encoding="utf-8")
    for entry in entries:
        page_dir = dest / entry.page_dir
        page_dir.mkdir(parents=True, exist_ok=True)
        local = _copy_version_files(entry, page_dir)
        siblings = [other for other in entries if other.name == entry.name]
        (page_dir / "index.html").write_text(model_page(entry, siblings, local, context), encoding="utf-8")
    (dest / MARKER).write_text(f"built by zoo {__version__} from {registry_root}\n", encoding="utf-8")


def _copy_version_files(entry: SiteEntry, page_dir: Path) -> set[str]:
    """Copy what the page shows or links (figures, recipe, card, config) next to it."""
    if entry.path is None:
        return set()
    wanted = [f["file"] for f in entry.figures] + [f for f in (entry.recipe, "README.md", "config.json") if f]
    copied = set()
    for filename in wanted:
        source = entry.path / filename
        if filename in entry.files and source.is_file():
            shutil.copyfile(source, page_dir / filename)
            copied.add(filename)
    return copied


# --------------------------------------------------------------------------- pages


def layout(title: str, body: str, *, base: str, context: dict, current: str = "") -> str:
    """A whole HTML document: `base` is the relative path from the page to the site root."""
    nav = "".join(
        f'<a href="{base}{href}"{CURRENT if current == href else ""}>{label}</a>'
        for href, label in (("index.html", "Models"), ("compare.html", "Compare"))
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{e(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{base}assets/site.css">
<script src="{base}assets/site.js" defer></script>
</head>
<body>
<header class="top"><a class="brand" href="{base}index.html">{e(context['title'])}</a><nav>{nav}</nav></header>
<main>
{body}
</main>
<footer>Built {e(context['built'])} by zoo {e(context['zoo_version'])} from the registry at <code>{e(context['root'])}</code>.</footer>
</body>
</html>
"""


def fmt_metric(value: float) -> str:
    return f"{value:.4g}"


def fmt_date(created: str) -> str:
    return created.replace("T", " ").replace("Z", " UTC") if created else ""


def verified_badge(entry: SiteEntry) -> str:
    if entry.verified is None:
        return '<span class="badge unknown" title="not checked (built with verify=False)">not checked</span>'
    if entry.verified:
        return '<span class="badge ok" title="every file matches the sha256 in its manifest">✓ verified</span>'
    return f'<span class="badge bad" title="{e(entry.problem)}">✗ failed</span>'


def _cell(text: str, value="", cls: str = "", title: str = "") -> str:
    cls_attr = f' class="{cls}"' if cls else ""
    title_attr = f' title="{e(title)}"' if title else ""
    return f'<td data-value="{e(value)}"{cls_attr}{title_attr}>{text}</td>'


def metric_label(key: str) -> str:
    """A metric key for a column head: its group ('heldout/') on a line of its own."""
    group, sep, metric = key.rpartition("/")
    return f'<span class="group">{e(group + sep)}</span>{e(metric)}' if sep else e(key)


def _option_list(values: list[str]) -> str:
    return "".join(f'<option value="{e(v)}">{e(v)}</option>' for v in values)


def index_page(entries: list[SiteEntry], keys: list[str], context: dict) -> str:
    columns = [("Model", "text"), ("Version", "text"), ("Family", "text"), ("Task", "text"), ("Size", "number"),
               ("Parameters", "number"), ("Tokenizer", "text"), ("Published", "text"), ("sha256", "text")]
    columns += [(key, "number") for key in keys]
    head = '<th class="pick" scope="col"><span class="visually-hidden">compare</span></th>' + "".join(
        f'<th scope="col" data-type="{kind}" aria-sort="none"{METRIC_CLASS if i >= 9 else ""}>'
        f'<button type="button" class="sort">{metric_label(label) if i >= 9 else e(label)}</button></th>'
        for i, (label, kind) in enumerate(columns)
    )
    rows = []
    for entry in entries:
        metrics = entry.metrics
        name_cell = f'<a href="{e(entry.page_dir)}/index.html">{e(entry.name)}</a>'
        version_cell = e(entry.version) + (' <span class="badge latest">latest</span>' if entry.latest else "")
        size_value = entry.layers * 1_000_000 + entry.hidden if entry.layers and entry.hidden else ""
        cells = [
            f'<td class="pick"><input type="checkbox" value="{e(entry.ref)}" aria-label="compare {e(entry.ref)}"></td>',
            _cell(name_cell, entry.name, "name"),
            _cell(version_cell, entry.version, "nowrap"),
            _cell(e(entry.family), entry.family, "nowrap"),
            _cell(e(entry.task), entry.task, "nowrap"),
            _cell(e(entry.size), size_value, "nowrap", entry.size_in_words),
            _cell(f"{entry.parameters:,}" if entry.parameters is not None else "", entry.parameters or "", "num"),
            _cell(e(entry.tokenizer), entry.tokenizer, "nowrap"),
            _cell(e(entry.created[:10]), entry.created, "nowrap", fmt_date(entry.created)),
            _cell(verified_badge(entry), {True: "verified", False: "failed", None: "not checked"}[entry.verified]),
        ]
        cells += [_cell(e(fmt_metric(metrics[k])) if k in metrics else "", metrics.get(k, ""), "num") for k in keys]
        rows.append(f'<tr data-family="{e(entry.family)}" data-task="{e(entry.task)}" data-ref="{e(entry.ref)}">'
                    + "".join(cells) + "</tr>")
    families = sorted({entry.family for entry in entries})
    tasks = sorted({entry.task for entry in entries})
    models = len({entry.name for entry in entries})
    if entries:
        table = f"""<table id="models" class="models sortable">
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>"""
    else:
        table = ('<p class="empty">The registry is empty. Publish a model with <code>zoo.publish(...)</code> or '
                 '<code>python -m zoo publish</code>, then build the site again.</p>')
    body = f"""<h1>Models</h1>
<p class="lede">{len(entries)} version{"s" if len(entries) != 1 else ""} of {models} model{"s" if models != 1 else ""}.
Click a column to sort; pick versions to compare their scores.</p>
<div class="filters needs-js" role="search">
<label>Family <select id="filter-family"><option value="">all</option>{_option_list(families)}</select></label>
<label>Task <select id="filter-task"><option value="">all</option>{_option_list(tasks)}</select></label>
<label>Search <input id="filter-text" type="search" placeholder="name or version"></label>
<button type="button" id="compare-selected">Compare selected</button>
<output id="shown-count" aria-live="polite"></output>
</div>
<div class="table-wrap">
{table}
</div>"""
    return layout(f"{context['title']}: models", body, base="", context=context, current="index.html")


def compare_page(entries: list[SiteEntry], chosen: list[str] | None, context: dict) -> str:
    chosen_set = set(chosen) if chosen else {entry.ref for entry in entries}
    picks = "".join(
        f'<label><input type="checkbox" value="{e(entry.ref)}" data-col="{i}"{" checked" if entry.ref in chosen_set else ""}> '
        f"{e(entry.ref)}</label>"
        for i, entry in enumerate(entries)
    )
    keys = sorted({key for entry in entries for key in entry.metrics})

    def hidden(entry):
        return "" if entry.ref in chosen_set else " hidden"

    head = "".join(
        f'<th scope="col" data-col="{i}"{hidden(entry)}><a href="{e(entry.page_dir)}/index.html">{e(entry.ref)}</a></th>'
        for i, entry in enumerate(entries)
    )
    facts = [
        ("family", lambda en: e(en.family)),
        ("task", lambda en: e(en.task)),
        ("size", lambda en: e(en.size)),
        ("parameters", lambda en: f"{en.parameters:,}" if en.parameters is not None else ""),
        ("published", lambda en: e(fmt_date(en.created))),
        ("sha256", verified_badge),
    ]
    rows = []
    for label, show in facts:
        cells = "".join(f'<td data-col="{i}"{hidden(en)}>{show(en)}</td>' for i, en in enumerate(entries))
        rows.append(f'<tr class="fact"><th scope="row">{e(label)}</th>{cells}</tr>')
    for key in keys:
        cells = "".join(
            f'<td class="num" data-col="{i}"{hidden(en)}>{e(fmt_metric(en.metrics[key])) if key in en.metrics else "—"}</td>'
            for i, en in enumerate(entries)
        )
        rows.append(f'<tr class="metric" data-metric="{e(key)}"><th scope="row">{e(key)}</th>{cells}</tr>')
    body = f"""<h1>Compare</h1>
<p class="lede">Scores of the chosen versions side by side ({len(keys)} metric{"s" if len(keys) != 1 else ""}).
A link to this page can name its versions: <code>compare.html?m=name@version&amp;m=…</code>.</p>
<fieldset id="compare-pick" class="needs-js"><legend>Versions</legend>{picks}</fieldset>
<div class="table-wrap">
<table id="compare" class="compare">
<thead><tr><th scope="col">metric</th>{head}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</div>"""
    return layout(f"{context['title']}: compare", body, base="", context=context, current="compare.html")


def snippets(entry: SiteEntry, registry_root: Path) -> list[tuple[str, str]]:
    """(title, code) of the copy-paste snippets for loading `entry`."""
    from ..families import TASKS

    ref = entry.ref
    task_arg = "" if entry.task in ("masked-lm", "unknown") else f", task={entry.task!r}"
    out = [("zoo", f'import zoo\n\nmodel = zoo.from_pretrained({json.dumps(ref, ensure_ascii=False)}{task_arg})\n'
                   f'tokenizer = zoo.load_tokenizer({json.dumps(ref, ensure_ascii=False)})')]
    auto = TASKS.get(entry.task, (None, ""))[0]
    shown_root = str(Path(registry_root).absolute())  # the page is read from anywhere: never relative
    if auto is not None:
        repo = json.dumps(f"zoo/{entry.name}", ensure_ascii=False)
        where = f"revision={json.dumps(entry.version, ensure_ascii=False)}, cache_dir={json.dumps(shown_root, ensure_ascii=False)}"
        out.append((
            "transformers",
            "import zoo  # registers the RoFormerV2 / GAU-α / DeepNet classes with the Auto classes\n"
            f"from transformers import {auto.__name__}, AutoTokenizer\n\n"
            f"model = {auto.__name__}.from_pretrained({repo}, {where})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({repo}, {where})",
        ))
    if entry.task == "masked-lm" and entry.tokenizer != "none":
        registry_arg = "" if Path(registry_root).absolute() == default_root().absolute() else f" --registry {_shell_quote(shown_root)}"
        out.append(("fill-mask", f'python -m zoo{registry_arg} fill-mask {_shell_quote(ref)} "北[MASK]是中国的首都。"'))
    return out


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def model_page(entry: SiteEntry, siblings: list[SiteEntry], local: set[str], context: dict) -> str:
    base = "../../../"
    metrics = entry.metrics
    facts = [
        ("Family", e(entry.family)),
        ("Task", e(entry.task) + (f" <code>{e(entry.architecture)}</code>" if entry.architecture else "")),
        ("Size", e(entry.size_in_words) or "—"),
        ("Parameters", f"{entry.parameters:,}" if entry.parameters is not None else "—"),
        ("Tokenizer", e(entry.tokenizer)),
        ("Published", e(fmt_date(entry.created)) or "—"),
        ("Commit", f"<code>{e(entry.commit)}</code>" if entry.commit else "—"),
        ("sha256", verified_badge(entry) + (f' <span class="problem">{e(entry.problem)}</span>' if entry.problem else "")),
    ]
    facts_html = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    versions = " ".join(
        f'<a href="{base}{e(other.page_dir)}/index.html"{CURRENT if other is entry else ""}>{e(other.version)}</a>'
        for other in siblings
    )
    snippet_html = "".join(
        f'<div class="snippet"><div class="snippet-head"><span>{e(title)}</span>'
        f'<button type="button" class="copy needs-js" data-target="snippet-{i}">Copy</button></div>'
        f'<pre><code id="snippet-{i}">{e(code)}</code></pre></div>'
        for i, (title, code) in enumerate(snippets(entry, context["root"]))
    ) if entry.path is not None else ""
    if metrics:
        metric_rows = "".join(f'<tr><th scope="row">{e(k)}</th><td class="num">{e(fmt_metric(v))}</td></tr>'
                              for k, v in sorted(metrics.items()))
        metrics_html = f'<table id="metrics" class="metrics"><thead><tr><th scope="col">metric</th><th scope="col">value</th></tr></thead><tbody>{metric_rows}</tbody></table>'
    else:
        metrics_html = '<p class="empty">No metrics were published with this version.</p>'
    figures = [f for f in entry.figures if f["file"] in local]
    if figures:
        figures_html = '<div class="figures">' + "".join(
            f'<figure><a href="{e(f["file"])}"><img src="{e(f["file"])}" alt="{e(f["title"])}"'
            + (f' width="{f["width"]}" height="{f["height"]}"' if f["width"] and f["height"] else "")
            + f'></a><figcaption>{e(f["title"])}</figcaption></figure>'
            for f in figures
        ) + "</div>"
    else:
        figures_html = '<p class="empty">No figures were published with this version.</p>'
    card_html = (render_card(_read_text(entry.path / "README.md"), local) if "README.md" in local
                 else '<p class="empty">No model card.</p>')
    if entry.recipe and entry.recipe in local:
        recipe_html = (f'<p><a href="{e(entry.recipe)}" download>{e(entry.recipe)}</a></p>'
                       f'<pre class="recipe"><code>{e(_read_text(entry.path / entry.recipe))}</code></pre>')
    else:
        recipe_html = '<p class="empty">No training recipe was published with this version.</p>'
    file_rows = "".join(
        f'<tr><td><code>{e(name)}</code></td><td class="num">{_file_size(meta)}</td>'
        f'<td><code class="digest">{e(meta.get("sha256", "") if isinstance(meta, dict) else "")}</code></td></tr>'
        for name, meta in sorted(entry.files.items())
    )
    body = f"""<p class="crumbs"><a href="{base}index.html">Models</a> › {e(entry.name)}</p>
<h1>{e(entry.name)} <span class="version">{e(entry.version)}</span></h1>
<p class="versions">Versions: {versions}</p>
<div class="overview">
<dl class="facts">{facts_html}</dl>
<section class="snippets" aria-label="use it">{snippet_html}</section>
</div>
<section id="metrics-section"><h2>Metrics</h2>{metrics_html}</section>
<section id="figures-section"><h2>Figures</h2>{figures_html}</section>
<section id="card-section"><h2>Model card</h2><article class="card">{card_html}</article></section>
<section id="recipe-section"><h2>Training recipe</h2>{recipe_html}</section>
<section id="files-section"><h2>Files</h2>
<div class="table-wrap"><table class="files"><thead><tr><th scope="col">file</th><th scope="col">bytes</th><th scope="col">sha256</th></tr></thead>
<tbody>{file_rows}</tbody></table></div>
<p>Manifest: <code>{e(MANIFEST)}</code>{f" in <code>{e(entry.path)}</code>" if entry.path else ""}.</p></section>"""
    return layout(f"{entry.ref} · {context['title']}", body, base=base, context=context)


def _file_size(meta) -> str:
    size = meta.get("size") if isinstance(meta, dict) else None
    return f"{size:,}" if _int(size) is not None else ""


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")
