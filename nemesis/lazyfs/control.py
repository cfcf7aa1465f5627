"""The control socket: a unix stream socket that takes one command line and answers
one line. Commands: `lose` (drop every change not durable; answers `lost files=...`),
`pending` (answers `pending files=N dir_changes=M`), `ping` (answers `ok`).
An unknown command answers `error: ...`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable

__all__ = ["ControlServer", "send_command"]

_MAX_LINE_BYTES = 256
_log = logging.getLogger(__name__)


class ControlServer:
    """Serves `handlers` (command -> answer) on `path` in a daemon thread until `close`."""

    def __init__(self, path: str, handlers: dict[str, Callable[[], str]]) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.path = path
        self._handlers = handlers
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        os.chmod(path, 0o600)
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, name="lazyfs-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(5.0)
                try:
                    conn.sendall(self._answer(_read_line(conn)).encode() + b"\n")
                except OSError as exc:
                    _log.warning("control connection: %s", exc)

    def _answer(self, command: str) -> str:
        handler = self._handlers.get(command)
        if handler is None:
            return f"error: unknown command {command!r} (known: {', '.join(self._handlers)})"
        try:
            return handler()
        except OSError as exc:
            return f"error: {exc}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _read_line(conn: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) < _MAX_LINE_BYTES:
        chunk = conn.recv(_MAX_LINE_BYTES)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def send_command(path: str, command: str, timeout_s: float) -> str:
    """Send `command` to the control socket at `path`; its one-line answer.

    Raises OSError (also socket.timeout) when the filesystem does not answer in time.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        return _read_line(sock)
