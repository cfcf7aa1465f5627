"""A bounded HTTP/1.0 server: one thread gathers request heads, a fixed pool answers them.

`BoundedHTTPServer` takes the place of `ThreadingHTTPServer` where clients may be hostile: a
connection holds no thread until its request head has arrived whole, at most `MAX_WAITING`
connections wait for theirs, each for at most the request timeout, and a fixed number of
threads answer. Its handlers derive from `GatheredRequestHandler`, which reads the gathered
head before the rest of the connection. `harness serve` is its user.
"""

from __future__ import annotations

import contextlib
import errno
import io
import queue
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

__all__ = ["BoundedHTTPServer", "GatheredRequestHandler"]

RECV_BYTES = 64 * 1024
# Connections whose request head is still arriving; beyond, the longest waiting is dropped.
MAX_WAITING = 512
# http.server refuses a longer request line (414) or header line (431) itself.
MAX_HEAD_BYTES = 128 * 1024
# Connections accepted per wake-up at most: a burst of connects is taken before the listen
# backlog fills (a SYN dropped there is retried only after a second), and the heads already
# waiting are still read between bursts.
MAX_ACCEPTS_PER_WAKEUP = 256


class GatheredRequestHandler(BaseHTTPRequestHandler):
    """A request handler of a `BoundedHTTPServer`: it reads the request head the server
    gathered, then the connection, with the server's timeout on every read and write."""

    server: BoundedHTTPServer

    def setup(self) -> None:
        sock, head = self.request
        self.request = sock
        super().setup()
        self.connection.settimeout(self.server.timeout_s)
        self.rfile.close()
        self.rfile = io.BufferedReader(_Replay(head, sock))


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


class BoundedHTTPServer(HTTPServer):
    """An HTTP server whose threads and waits are bounded.

    A connection costs no thread until its request head has arrived whole: `serve_forever`
    accepts connections and gathers their heads all at once in one thread, at most
    `MAX_WAITING` of them (beyond, the one waiting longest is dropped) and each for at most
    `timeout_s` (then it gets 408). A whole head goes to one of `max_threads` threads, which
    answer it with `timeout_s` on every read and write; when all are busy and as many heads
    again are queued, the connection gets 503 at once rather than waiting unseen. One request
    per connection (HTTP/1.0), so a thread is held only while it answers. `handler` is a
    `GatheredRequestHandler`: its request is the socket and the head read so far.
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
            chunk = sock.recv(RECV_BYTES)
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
