"""`harness serve`: browse a store of runs over HTTP.

`/` lists runs newest first (verdict, parameters, links); `/files/<path>` serves a file
or lists a directory under the store; `/zip/<test>/<run>.zip` streams a run as a zip.
Only files under the store's root are served: a path with `..`, or one that resolves
(through a symlink) outside the root, gets 403. Binds to loopback unless told otherwise.

File names are bytes: a page shows them as UTF-8 (other bytes as U+FFFD) and links to the
raw bytes, percent-encoded. A name the file system refuses (too long) is a 404. Threads and
waits are bounded (`harness.bounded_http`): a client that sends half a request holds no
thread, and is dropped after the request timeout.
"""

from __future__ import annotations

import errno
import json
import mimetypes
import os
import shutil
import urllib.parse
import zipfile
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any

import click
import jinja2

from harness.bounded_http import BoundedHTTPServer, GatheredRequestHandler

__all__ = ["RunRow", "list_runs", "make_server", "serve_command"]

TEXT_SUFFIXES = {".jsonl", ".log", ".json", ".edn", ".txt", ".xml"}
CHUNK_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 20.0
MAX_THREADS = 16


@dataclass(frozen=True)
class RunRow:
    """One run of the store, for the listing."""

    path: str  # relative to the store root, with "/", as text (see _text)
    href: str  # the same path's raw bytes, percent-encoded
    test: str
    started: str
    verdict: str  # valid | invalid | unknown | incomplete
    seed: Any
    params: dict[str, Any]
    ops: int
    stale_reads: Any
    has_report: bool


def _verdict(results: dict[str, Any] | None) -> str:
    if results is None:
        return "incomplete"
    valid = results.get("valid")
    return "valid" if valid is True else "invalid" if valid is False else "unknown"


def _run_row(root: Path, run: Path) -> RunRow:
    results: dict[str, Any] | None = None
    try:
        loaded = json.loads((run / "results.json").read_text(encoding="utf-8"))
        results = loaded if isinstance(loaded, dict) else None
    except (OSError, ValueError):
        results = None
    options = (results or {}).get("options") or {}
    params = {
        k: options.get(k)
        for k in ("backend", "nodes", "nemesis", "read_mode", "time_s", "bugs")
        if options.get(k) not in (None, [], "")
    }
    counts = ((results or {}).get("counts") or {}).get("all") or {}
    rel = run.relative_to(root).as_posix()
    return RunRow(
        path=_text(rel),
        href=_href(rel),
        test=_text(run.parent.name),
        started=_text(run.name),
        verdict=_verdict(results),
        seed=(results or {}).get("seed", "?"),
        params=params,
        ops=sum(v for v in counts.values() if isinstance(v, int)),
        stale_reads=(results or {}).get("stale_reads", ""),
        has_report=(run / "report.html").is_file(),
    )


def list_runs(root: Path) -> list[RunRow]:
    """Runs under `root` (`<test>/<start-time>/` holding a history), newest first."""
    runs = []
    for test in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        for run in test.iterdir():
            if run.is_dir() and not run.is_symlink() and (run / "history.jsonl").exists():
                runs.append(run)
    runs.sort(key=lambda r: (r.name, r.parent.name), reverse=True)
    return [_run_row(root, r) for r in runs]


def _text(name: str) -> str:
    """A file name (or path) as text: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def _href(name: str) -> str:
    """A file name (or path) as a URL path: its raw bytes, percent-encoded."""
    return urllib.parse.quote(os.fsencode(name))


def _attachment(filename: str) -> str:
    """A Content-Disposition for `filename` (RFC 6266): the UTF-8 name (RFC 5987), and an
    ASCII one for clients that know only that."""
    ascii_name = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename)
    utf8_name = urllib.parse.quote(filename, safe="")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{utf8_name}"


# What a file system error means to the client; anything else is a 500.
_ERROR_STATUS = {
    errno.ENOENT: (HTTPStatus.NOT_FOUND, "no such file"),
    errno.ENOTDIR: (HTTPStatus.NOT_FOUND, "no such file"),
    errno.ENAMETOOLONG: (HTTPStatus.NOT_FOUND, "no such file (name too long)"),
    errno.ELOOP: (HTTPStatus.NOT_FOUND, "no such file (too many links)"),
    errno.EACCES: (HTTPStatus.FORBIDDEN, "not readable"),
    errno.EPERM: (HTTPStatus.FORBIDDEN, "not readable"),
}


class StoreHandler(GatheredRequestHandler):
    """Serves one store; `root` is resolved once, at start. Every file system lookup happens
    before the status line is sent, so its failure can still be answered with a status."""

    server_version = "harness-serve"

    def __init__(self, *args: Any, root: Path, env: jinja2.Environment, **kw: Any) -> None:
        self.root = root
        self.env = env
        super().__init__(*args, **kw)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            self._route(path)
        except (ConnectionError, TimeoutError):
            raise
        except OSError as exc:
            status, why = _ERROR_STATUS.get(
                exc.errno or 0, (HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot read: {exc.strerror}")
            )
            self.send_error(status, why)

    def _route(self, path: str) -> None:
        if path in ("/", "/index.html"):
            self._listing()
        elif path.startswith("/files/") or path == "/files":
            self._file(path.removeprefix("/files").lstrip("/"))
        elif path.startswith("/zip/") and path.endswith(".zip"):
            self._zip(path.removeprefix("/zip/").removesuffix(".zip"))
        else:
            self.send_error(HTTPStatus.NOT_FOUND, "no such page")

    def _under_root(self, raw: str) -> Path | None:
        """The file `raw` (a URL path, relative) names, if it is under the root."""
        # http.server decoded the request line as Latin-1: back to its bytes, then to the
        # file system's names, whatever bytes they hold.
        rel = os.fsdecode(urllib.parse.unquote_to_bytes(raw.encode("latin-1")))
        parts = rel.replace("\\", "/").split("/")
        if "\x00" in rel or ".." in parts or rel.startswith("/"):
            return None
        candidate = (self.root / rel).resolve()
        return candidate if candidate.is_relative_to(self.root) else None

    def _send_html(self, html: str) -> None:
        body = html.encode("utf-8")
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _listing(self) -> None:
        rows = list_runs(self.root)
        page = self.env.get_template("index.html.j2").render(runs=rows, root=_text(str(self.root)))
        self._send_html(page)

    def _file(self, raw: str) -> None:
        target = self._under_root(raw)
        if target is None:
            self.send_error(HTTPStatus.FORBIDDEN, "outside the store")
            return
        if target.is_dir():
            if raw and not raw.endswith("/"):
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", f"/files/{raw}/")
                self.end_headers()
                return
            self._directory(target)
            return
        if not target.is_file():
            self.send_error(HTTPStatus.NOT_FOUND, "no such file")
            return
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix in TEXT_SUFFIXES:
            kind = "text/plain"
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        with open(target, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(size))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            shutil.copyfileobj(f, self.wfile, CHUNK_BYTES)

    def _directory(self, target: Path) -> None:
        entries = []
        for child in sorted(target.iterdir()):
            name = child.name + ("/" if child.is_dir() else "")
            entries.append({"name": _text(name), "href": _href(name)})
        rel = target.relative_to(self.root).as_posix()
        zip_href = f"/zip/{_href(rel)}.zip" if (target / "history.jsonl").exists() else ""
        page = self.env.get_template("dir.html.j2").render(
            path=_text(rel), entries=entries, zip_href=zip_href
        )
        self._send_html(page)

    def _zip(self, raw: str) -> None:
        run = self._under_root(raw)
        if run is None:
            self.send_error(HTTPStatus.FORBIDDEN, "outside the store")
            return
        if not run.is_dir() or not (run / "history.jsonl").exists():
            self.send_error(HTTPStatus.NOT_FOUND, "no such run")
            return
        # Entry names are UTF-8 in a zip: a name's other bytes become U+FFFD there too.
        name = _text(f"{run.parent.name}-{run.name}")
        files = [p for p in sorted(run.rglob("*")) if p.is_file()]
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Disposition", _attachment(f"{name}.zip"))
        self.end_headers()
        # Streamed: the socket is not seekable, so zipfile writes data descriptors.
        with zipfile.ZipFile(self.wfile, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                if path.resolve().is_relative_to(self.root):
                    archive.write(path, f"{name}/{_text(path.relative_to(run).as_posix())}")


def make_server(
    store: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    timeout_s: float = REQUEST_TIMEOUT_S,
    max_threads: int = MAX_THREADS,
) -> BoundedHTTPServer:
    """A server for `store` (not yet serving: call serve_forever); `timeout_s` bounds each
    wait for a client, `max_threads` the threads that answer."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    handler = partial(StoreHandler, root=store.resolve(), env=env)
    return BoundedHTTPServer((host, port), handler, timeout_s=timeout_s, max_threads=max_threads)


@click.command("serve")
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("store"),
    show_default=True,
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--request-timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=REQUEST_TIMEOUT_S,
    show_default=True,
    help="Seconds a client may take to send a request, or to take a piece of the answer.",
)
@click.option(
    "--max-threads",
    type=click.IntRange(1, 1024),
    default=MAX_THREADS,
    show_default=True,
    help="Requests answered at once; more wait in a queue as long again, then get 503.",
)
def serve_command(store: Path, host: str, port: int, timeout_s: float, max_threads: int) -> int:
    """Browse the store's runs, reports and files in a web browser."""
    if not store.is_dir():
        raise click.UsageError(f"no store at {store}: run `harness test` first or pass --store")
    try:
        server = make_server(store, host, port, timeout_s=timeout_s, max_threads=max_threads)
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound_port = server.server_address[1]
    click.echo(f"serving {store} at http://{host}:{bound_port}/ (Ctrl-C stops)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
