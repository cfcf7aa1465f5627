"""`harness serve`: browse a store of runs over HTTP.

`/` lists runs newest first (verdict, parameters, links); `/files/<path>` serves a file
or lists a directory under the store; `/zip/<test>/<run>.zip` streams a run as a zip.
Only files under the store's root are served: a path with `..`, or one that resolves
(through a symlink) outside the root, gets 403. Binds to loopback unless told otherwise.

File names are bytes: a page shows them as UTF-8 (other bytes as U+FFFD) and links to the
raw bytes, percent-encoded. A name the file system refuses (too long) is a 404. Threads and
waits are bounded (`StoreServer`): a client that sends half a request holds no thread, and
is dropped after the request timeout.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import mimetypes
import os
import queue
import selectors
import shutil
import socket
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import click
import jinja2

__all__ = ["RunRow", "StoreServer", "list_runs", "make_server", "serve_command"]

TEXT_SUFFIXES = {".jsonl", ".log", ".json", ".edn", ".txt", ".xml"}
CHUNK_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 20.0
MAX_THREADS = 16
# Connections whose request head is still arriving; beyond, the longest waiting is dropped.
MAX_WAITING = 512
# http.server refuses a longer request line (414) or header line (431) itself.
MAX_HEAD_BYTES = 128 * 1024
# Connections accepted per wake-up at most: a burst of connects is taken before the listen
# backlog fills (a SYN dropped there is retried only after a second), and the heads already
# waiting are still read between bursts.
MAX_ACCEPTS_PER_WAKEUP = 256


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


class StoreHandler(BaseHTTPRequestHandler):
    """Serves one store; `root` is resolved once, at start. Every file system lookup happens
    before the status line is sent, so its failure can still be answered with a status."""

    server_version = "harness-serve"
    server: StoreServer

    def __init__(self, *args: Any, root: Path, env: jinja2.Environment, **kw: Any) -> None:
        self.root = root
        self.env = env
        super().__init__(*args, **kw)

    def setup(self) -> None:
        sock, head = self.request
        self.request = sock
        super().setup()
        self.connection.settimeout(self.server.timeout_s)
        self.rfile.close()
        self.rfile = io.BufferedReader(_Replay(head, sock))

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


class _Replay(io.RawIOBase):
    """A connection's input: the bytes already received (`head`), then the socket's."""

    def __init__(self, head: bytes, sock: socket.socket) -> None:
        self._head = memoryview(head)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._head:
            return self._sock.recv_into(buffer)
        n = min(len(buffer), len(self._head))
        buffer[:n] = self._head[:n]
        self._head = self._head[n:]
        return n


@dataclass
class _Waiting:
    """A connection whose request head is still arriving."""

    address: Any
    deadline: float  # time.monotonic()
    head: bytearray = field(default_factory=bytearray)


class StoreServer(HTTPServer):
    """An HTTP server whose threads and waits are bounded.

    A connection costs no thread until its request head has arrived whole: `serve_forever`
    accepts connections and gathers their heads all at once in one thread, at most
    `MAX_WAITING` of them (beyond, the one waiting longest is dropped) and each for at most
    `timeout_s` (then it gets 408). A whole head goes to one of `max_threads` threads, which
    answer it with `timeout_s` on every read and write; when all are busy and as many heads
    again are queued, the connection gets 503 at once rather than waiting unseen. One request
    per connection (HTTP/1.0), so a thread is held only while it answers.
    """

    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], handler: Any, *, timeout_s: float, max_threads: int
    ) -> None:
        super().__init__(address, handler)
        self.socket.setblocking(False)
        self.timeout_s = timeout_s
        self._waiting: dict[socket.socket, _Waiting] = {}
        self._ready: queue.Queue[tuple[socket.socket, Any, bytes]] = queue.Queue(2 * max_threads)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed = threading.Event()
        for i in range(max_threads):
            threading.Thread(target=self._work, name=f"serve-{i}", daemon=True).start()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop.is_set():
                    for key, _ in selector.select(self._select_timeout(poll_interval)):
                        if key.fileobj is self.socket:
                            self._accept_burst(selector)
                        else:
                            self._gather(selector, key.fileobj)  # type: ignore[arg-type]
                    self._expire(selector)
        finally:
            for sock in list(self._waiting):
                self._drop(sock, None)
            self._stop.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait(timeout=10)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()
        while True:
            try:
                sock, _, _ = self._ready.get_nowait()
            except queue.Empty:
                break
            sock.close()

    def _select_timeout(self, poll_interval: float) -> float:
        if not self._waiting:
            return poll_interval
        oldest = next(iter(self._waiting.values()))
        return max(0.0, min(poll_interval, oldest.deadline - time.monotonic()))

    def _accept_burst(self, selector: selectors.BaseSelector) -> None:
        for _ in range(MAX_ACCEPTS_PER_WAKEUP):
            if not self._accept(selector):
                return

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accept one connection into the waiting set; False when none was taken (none is
        queued, or no file descriptor is left)."""
        try:
            sock, address = self.socket.accept()
        except OSError as exc:
            # Out of file descriptors: make room (the connection stays queued), else wait.
            if exc.errno in (errno.EMFILE, errno.ENFILE) and self._waiting:
                self._drop(next(iter(self._waiting)), selector)
            elif exc.errno in (errno.EMFILE, errno.ENFILE):
                self._stop.wait(0.05)
            return False
        if len(self._waiting) >= MAX_WAITING:
            self._drop(next(iter(self._waiting)), selector, HTTPStatus.REQUEST_TIMEOUT)
        sock.setblocking(False)
        self._waiting[sock] = _Waiting(address, time.monotonic() + self.timeout_s)
        selector.register(sock, selectors.EVENT_READ)
        return True

    def _gather(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        waiting = self._waiting[sock]
        try:
            chunk = sock.recv(CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        waiting.head += chunk
        whole = b"\r\n\r\n" in waiting.head or b"\n\n" in waiting.head
        if chunk and not whole and len(waiting.head) <= MAX_HEAD_BYTES:
            return
        selector.unregister(sock)
        del self._waiting[sock]
        if not waiting.head:
            sock.close()  # gone before a byte: nothing to answer
            return
        # A head cut short by the client's end goes on too: the handler answers 400.
        try:
            self._ready.put_nowait((sock, waiting.address, bytes(waiting.head)))
        except queue.Full:
            _refuse(sock, HTTPStatus.SERVICE_UNAVAILABLE)

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._waiting:
            sock, oldest = next(iter(self._waiting.items()))
            if oldest.deadline > now:
                return
            self._drop(sock, selector, HTTPStatus.REQUEST_TIMEOUT)

    def _drop(
        self,
        sock: socket.socket,
        selector: selectors.BaseSelector | None,
        status: HTTPStatus | None = None,
    ) -> None:
        del self._waiting[sock]
        if selector is not None:
            selector.unregister(sock)
        if status is None:
            sock.close()
        else:
            _refuse(sock, status)

    def _work(self) -> None:
        while not self._closed.is_set():
            try:
                sock, address, head = self._ready.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                sock.setblocking(True)
                self.finish_request((sock, head), address)  # type: ignore[arg-type]
            except OSError:
                pass  # the client went away or stopped reading: nothing left to tell it
            except Exception:
                self.handle_error(sock, address)
            finally:
                self.shutdown_request(sock)


def _refuse(sock: socket.socket, status: HTTPStatus) -> None:
    """Answer `status` on a connection that is not being served, as far as it takes it
    without waiting, and close it."""
    body = f"{status.phrase}\n".encode()
    head = (
        f"HTTP/1.0 {status.value} {status.phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def make_server(
    store: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    timeout_s: float = REQUEST_TIMEOUT_S,
    max_threads: int = MAX_THREADS,
) -> StoreServer:
    """A server for `store` (not yet serving: call serve_forever); `timeout_s` bounds each
    wait for a client, `max_threads` the threads that answer."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    handler = partial(StoreHandler, root=store.resolve(), env=env)
    return StoreServer((host, port), handler, timeout_s=timeout_s, max_threads=max_threads)


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
