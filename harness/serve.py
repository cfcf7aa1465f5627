"""`harness serve`: browse a store of runs over HTTP.

`/` lists runs newest first (verdict, parameters, links); `/files/<path>` serves a file
or lists a directory under the store; `/zip/<test>/<run>.zip` streams a run as a zip.
Only files under the store's root are served: a path with `..`, or one that resolves
(through a symlink) outside the root, gets 403. Binds to loopback unless told otherwise.
"""

from __future__ import annotations

import json
import mimetypes
import shutil
import urllib.parse
import zipfile
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import jinja2

__all__ = ["RunRow", "list_runs", "make_server", "serve_command"]

TEXT_SUFFIXES = {".jsonl", ".log", ".json", ".edn", ".txt", ".xml"}
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class RunRow:
    """One run of the store, for the listing."""

    path: str  # relative to the store root, with "/"
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
    return RunRow(
        path=run.relative_to(root).as_posix(),
        test=run.parent.name,
        started=run.name,
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


class StoreHandler(BaseHTTPRequestHandler):
    """Serves one store; `root` is resolved once, at start."""

    server_version = "harness-serve"

    def __init__(self, *args: Any, root: Path, env: jinja2.Environment, **kw: Any) -> None:
        self.root = root
        self.env = env
        super().__init__(*args, **kw)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._listing()
        elif path.startswith("/files/") or path == "/files":
            self._file(path.removeprefix("/files").lstrip("/"))
        elif path.startswith("/zip/") and path.endswith(".zip"):
            self._zip(path.removeprefix("/zip/").removesuffix(".zip"))
        else:
            self.send_error(HTTPStatus.NOT_FOUND, "no such page")

    def _under_root(self, raw: str) -> Path | None:
        """The file `raw` (URL-quoted, relative) names, if it is under the root."""
        rel = urllib.parse.unquote(raw)
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
        self._send_html(self.env.get_template("index.html.j2").render(runs=rows, root=self.root))

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
            self._directory(target, raw)
            return
        if not target.is_file():
            self.send_error(HTTPStatus.NOT_FOUND, "no such file")
            return
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix in TEXT_SUFFIXES:
            kind = "text/plain"
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(target.stat().st_size))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        with open(target, "rb") as f:
            shutil.copyfileobj(f, self.wfile, CHUNK_BYTES)

    def _directory(self, target: Path, raw: str) -> None:
        entries = []
        for child in sorted(target.iterdir()):
            name = child.name + ("/" if child.is_dir() else "")
            entries.append({"name": name, "href": urllib.parse.quote(name)})
        run = target if (target / "history.jsonl").exists() else None
        rel = urllib.parse.quote(target.relative_to(self.root).as_posix())
        zip_href = f"/zip/{rel}.zip" if run else ""
        page = self.env.get_template("dir.html.j2").render(
            path=target.relative_to(self.root).as_posix(), entries=entries, zip_href=zip_href
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
        name = f"{run.parent.name}-{run.name}"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Disposition", f'attachment; filename="{name}.zip"')
        self.end_headers()
        # Streamed: the socket is not seekable, so zipfile writes data descriptors.
        with zipfile.ZipFile(self.wfile, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(run.rglob("*")):
                if path.is_file() and path.resolve().is_relative_to(self.root):
                    archive.write(path, f"{name}/{path.relative_to(run).as_posix()}")


def make_server(store: Path, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """A server for `store` (not yet serving: call serve_forever)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    handler = partial(StoreHandler, root=store.resolve(), env=env)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


@click.command("serve")
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("store"),
    show_default=True,
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
def serve_command(store: Path, host: str, port: int) -> int:
    """Browse the store's runs, reports and files in a web browser."""
    if not store.is_dir():
        raise click.UsageError(f"no store at {store}: run `harness test` first or pass --store")
    try:
        server = make_server(store, host, port)
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
