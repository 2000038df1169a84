"""The registry as a browsable site: `zoo.build_site(out)`, `python -m zoo site|serve`.

    python -m zoo site --out checkpoints/site      # static: open checkpoints/site/index.html
    python -m zoo serve --port 8000                # http://127.0.0.1:8000/, rebuilt on change

Offline by construction: plain HTML and CSS and one small script (sorting, filtering, choosing
columns), no CDN, fonts or remote files; see build.py for the layout and the escaping rules.
"""

from __future__ import annotations

from pathlib import Path

from .build import build_site, collect
from .server import SiteServer, serve

__all__ = ["SiteServer", "build_site", "collect", "register_cli", "serve"]


def register_cli(subparsers) -> None:
    site = subparsers.add_parser("site", help="write the registry as a static web site (index, model pages, comparison)")
    site.add_argument("--out", required=True, type=Path, help="the folder to write (replaced if it is an earlier build)")
    _site_options(site)
    site.set_defaults(fn=cmd_site)
    served = subparsers.add_parser("serve", help="serve the site on 127.0.0.1, rebuilt when the registry changes")
    served.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port; default 8000)")
    served.add_argument("--poll", type=float, default=1.0, help="seconds between checks of the registry")
    _site_options(served)
    served.set_defaults(fn=cmd_serve)


def _site_options(parser) -> None:
    parser.add_argument("--no-verify", action="store_true", help="do not check the sha256 digests (faster on big models)")
    parser.add_argument("--headline", action="append", metavar="METRIC", help="a metric shown on the index (repeatable)")
    parser.add_argument("--compare", action="append", metavar="NAME@VERSION", help="preselected on the comparison page")


def cmd_site(args) -> int:
    index = build_site(args.out, args.registry, verify=not args.no_verify, headline=args.headline, compare=args.compare)
    print(f"wrote the zoo site: {index}")
    print(f"open {index.as_uri()}  (or: python -m zoo serve)")
    return 0


def cmd_serve(args) -> int:
    import sys

    try:
        serve(args.registry, port=args.port, poll_interval=args.poll, verify=not args.no_verify,
              headline=args.headline, compare=args.compare)
    except OSError as error:  # the port is taken, or not ours to bind
        print(f"zoo serve: error: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0
