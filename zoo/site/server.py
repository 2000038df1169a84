"""`python -m zoo serve`: the site on 127.0.0.1, rebuilt when the registry changes.

Each build goes into a fresh folder of a private temporary directory and the server switches to
it only when it is complete, so a reader never sees a half-written site. A watcher thread compares
a fingerprint of the registry (the name, size and modification time of every file under each
model's refs/ and snapshots/, the snapshots' links followed into blobs/) every `poll_interval`
seconds; `refresh()` does the same check on demand. Names starting with '.' (a publish's staging
folders, the locks) are not looked at: a publish in progress causes no rebuild, its ref does.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..registry import REPO_PREFIX, Registry
from .build import collect, write_site


FINGERPRINTED = ("refs", "snapshots")  # what a finished publish changes (blobs/ only through the snapshots)


def registry_fingerprint(root: Path) -> tuple:
    """What changes when a version is published, removed or tampered with."""
    seen = []
    if not root.is_dir():
        return ()
    for repo in sorted(root.iterdir()):
        if not repo.name.startswith(REPO_PREFIX):  # also skips the root's .stage-* folders
            continue
        for top in FINGERPRINTED:
            seen += _fingerprint_files(root, repo / top)
    return tuple(seen)


def _fingerprint_files(root: Path, top: Path) -> list:
    seen = []
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for filename in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder) / filename
            try:
                stat = path.stat()  # follows snapshot links: a changed blob changes its entries
            except OSError:
                continue
            seen.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return seen


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, request, client_address, server):
        super().__init__(request, client_address, server, directory=str(server.site_dir))

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")  # a rebuilt page shows on reload
        super().end_headers()

    def log_message(self, format, *args):  # quiet: the terminal shows the rebuilds instead
        pass


class SiteServer:
    """The site served over HTTP on `host:port` (port 0: any free port), kept up to date."""

    def __init__(self, registry=None, port: int = 8000, host: str = "127.0.0.1", poll_interval: float = 1.0,
                 verify: bool = True, log=print, **site_options):
        self.root = Registry(registry).root
        self.poll_interval = poll_interval
        self.verify = verify
        self.site_options = site_options
        self.log = log
        try:
            self.httpd = ThreadingHTTPServer((host, port), _Handler)
        except OSError as error:
            raise OSError(error.errno, f"cannot serve on {host}:{port}: {error.strerror}") from error
        self.httpd.daemon_threads = True
        try:
            self._work = Path(tempfile.mkdtemp(prefix="zoo-site-"))
        except BaseException:
            self.httpd.server_close()
            raise
        self._serving = False  # serve_forever was handed to a thread: stop() must shut it down
        self._stopped = False
        self._builds = 0
        self._fingerprint = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.httpd.site_dir = self._work / "empty"
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def site_dir(self) -> Path:
        return Path(self.httpd.site_dir)

    def refresh(self) -> bool:
        """Rebuild if the registry changed since the last build; True when it rebuilt."""
        with self._lock:
            fingerprint = registry_fingerprint(self.root)
            if fingerprint == self._fingerprint:
                return False
            self._builds += 1
            dest = self._work / f"build-{self._builds}"
            write_site(dest, collect(self.root, verify=self.verify), self.root, **self.site_options)
            previous, self.httpd.site_dir = self.site_dir, dest
            self._fingerprint = fingerprint
            if previous.parent == self._work and previous.exists():
                shutil.rmtree(previous, ignore_errors=True)
            return True

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                if self.refresh():
                    self.log(f"registry changed: rebuilt the site ({self.url})")
            except Exception as error:  # keep serving the last good build
                self.log(f"zoo serve: rebuilding failed: {error}")

    def start(self) -> "SiteServer":
        """Build the site and serve it; if that fails, everything is released (as by `stop`) and it raises."""
        try:
            self.refresh()
            for target in (self.httpd.serve_forever, self._watch):
                thread = threading.Thread(target=target, daemon=True)
                thread.start()
                self._threads.append(thread)
                if target == self.httpd.serve_forever:
                    self._serving = True
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving and watching, close the socket, remove the builds. Safe to call more than once,
        and on a server that never started (or failed to)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._serving:  # shutdown() waits for serve_forever: only when a thread runs it
            self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> "SiteServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(registry=None, port: int = 8000, poll_interval: float = 1.0, verify: bool = True, **site_options) -> None:
    """Serve the registry's site on 127.0.0.1:`port` until interrupted (Ctrl-C or SIGTERM)."""
    server = SiteServer(registry, port=port, poll_interval=poll_interval, verify=verify,
                        log=lambda message: print(message, flush=True), **site_options)
    stopped = threading.Event()
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())  # so the temporary builds are removed
    except BaseException:  # not the main thread
        server.stop()
        raise
    try:
        server.start()
        print(f"serving the zoo at {server.url} (registry {server.root}; rebuilt when it changes; Ctrl-C to stop)",
              flush=True)
        while not stopped.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
