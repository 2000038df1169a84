"""Model cards (Markdown) as safe HTML for the site.

CommonMark (markdown-it-py) with raw HTML disabled, so a card's `<script>` or `<img onerror=...>`
arrives as text; markdown-it refuses `javascript:`, `vbscript:`, `file:` and most `data:` links
itself. On top of that, the site stays offline and its links unbroken:
- an image loads only when it is a file published with the version (a figure); any other image
  (a remote URL, say) becomes a link, so a page never fetches from the network;
- a relative link is kept only when it points at a file the page has next to it, otherwise its
  text is kept without the link;
- headings move down one level (the page's own title is the <h1>).
"""

from __future__ import annotations

import re
from html import escape
from urllib.parse import urlsplit

from markdown_it import MarkdownIt

FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n.*?^---[ \t]*\r?\n", re.DOTALL | re.MULTILINE)
SAFE_SCHEMES = ("http", "https", "mailto")


def strip_front_matter(text: str) -> str:
    """The card without its YAML front matter (the Hub metadata block)."""
    return FRONT_MATTER.sub("", text, count=1)


def render_card(text: str, local_files: set[str] | frozenset[str] = frozenset()) -> str:
    """HTML for the Markdown `text`; `local_files` are the file names published next to the page."""
    return _parser().render(strip_front_matter(text), {"local_files": set(local_files)})


def _is_local(target: str, env: dict) -> bool:
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc and parts.path in env.get("local_files", ())


def _render_image(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    src = token.attrGet("src") or ""
    alt = self.renderInlineAsText(token.children or [], options, env)
    if _is_local(src, env):
        return f'<img src="{escape(src)}" alt="{escape(alt)}">'
    if urlsplit(src).scheme in ("http", "https"):
        return f'<a href="{escape(src)}" rel="noopener noreferrer nofollow">[image: {escape(alt or src)}]</a>'
    return f'<span class="dead-link" title="{escape(src)}">[image: {escape(alt or src)}]</span>'


def _render_link_open(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    href = token.attrGet("href") or ""
    parts = urlsplit(href)
    if parts.scheme in SAFE_SCHEMES:
        token.attrSet("rel", "noopener noreferrer nofollow")
    elif not (href.startswith("#") or _is_local(href, env)):
        # no target the site has: keep the text, drop the link (and its closing tag)
        closing = next(i for i in range(idx + 1, len(tokens)) if tokens[i].type == "link_close")
        tokens[closing].tag = "span"
        token.tag = "span"
        token.attrs = {"class": "dead-link", "title": href}
    return self.renderToken(tokens, idx, options, env)


def _render_heading(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    token.tag = f"h{min(6, int(token.tag[1]) + 1)}"
    return self.renderToken(tokens, idx, options, env)


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("image", _render_image)
    md.add_render_rule("link_open", _render_link_open)
    md.add_render_rule("heading_open", _render_heading)
    md.add_render_rule("heading_close", _render_heading)
    return md
