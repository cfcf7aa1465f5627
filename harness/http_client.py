"""The harness's one HTTP/1.1 client on asyncio streams, for targets that speak HTTP/JSON.

It keeps one connection per address alive between requests and tells apart the two
ways a request can go wrong, because a history needs to know whether an op may have
happened:

    HttpClientError       `timed_out` says whether the deadline ran out (rather than a
     │                    refusal, a reset or a malformed answer)
     ├── NotSentError     nothing reached the server (connect refused or timed out,
     │                    no route): the request certainly had no effect
     └── MaybeSentError   the request may have reached the server (a timeout, a reset or
                          a closed connection while sending or waiting, a malformed
                          answer): it may or may not have had an effect

Answers are framed by Content-Length, chunked (trailers skipped), or, with neither, run
to the end of the connection (RFC 9112 §6.3), which is then not reused. Every request
has a deadline; bodies are bounded (`MAX_BODY_BYTES`), headers and trailers too
(`MAX_HEADER_LINES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HttpClient",
    "HttpClientError",
    "HttpResponse",
    "MaybeSentError",
    "NotSentError",
]

MAX_BODY_BYTES = 1 << 20
MAX_HEADER_LINES = 100
READ_CHUNK_BYTES = 1 << 16
# A connection idle longer than this is replaced before use: a server may have closed it,
# and an answerless close on a fresh connection then means "may have happened", not "stale".
IDLE_REUSE_S = 1.0


class HttpClientError(Exception):
    """A request did not get an answer; see the subclasses for what that means.
    `timed_out` is True when the request's deadline ran out."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class NotSentError(HttpClientError):
    """The request certainly did not reach the server."""


class MaybeSentError(HttpClientError):
    """The request may have reached the server (and taken effect)."""


@dataclass(frozen=True)
class HttpResponse:
    """An answer: `status`, lower-case `headers`, raw `body`."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class HttpClient:
    """Requests to `host:port` addresses, one kept-alive connection per address.

    Safe for concurrent requests from one event loop: a connection in use is taken out of
    the pool, so a second request to the same address opens its own. As an async context
    manager it closes its connections on the way out.
    """

    def __init__(self) -> None:
        self._idle: dict[str, _Connection] = {}

    async def request(
        self,
        address: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float,
        connect_timeout_s: float,
    ) -> HttpResponse:
        """Send one request (a JSON `body` if not None) and read the answer, all within
        `timeout_s` (the connect within `connect_timeout_s` of it). Raises NotSentError or
        MaybeSentError."""
        deadline = time.monotonic() + timeout_s
        conn = await self._connection(address, min(connect_timeout_s, timeout_s))
        try:
            response = await _exchange(conn, address, method, path, body, deadline)
        except BaseException:
            conn.close()
            raise
        if response.headers.get("connection", "").lower() == "close":
            conn.close()
        else:
            conn.last_used = time.monotonic()
            old = self._idle.pop(address, None)
            if old is not None:
                old.close()
            self._idle[address] = conn
        return response

    async def _connection(self, address: str, timeout_s: float) -> _Connection:
        conn = self._idle.pop(address, None)
        if conn is not None:
            if time.monotonic() - conn.last_used <= IDLE_REUSE_S and not conn.reader.at_eof():
                return conn
            conn.close()
        host, _, port = address.rpartition(":")
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(host, int(port))
        except TimeoutError:
            raise NotSentError(
                f"connect to {address} timed out after {timeout_s:.2f} s", timed_out=True
            ) from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise NotSentError(f"connect to {address}: {reason}") from None
        return _Connection(reader, writer)

    async def close(self) -> None:
        """Close the kept-alive connections."""
        for conn in self._idle.values():
            conn.close()
        self._idle.clear()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _exchange(
    conn: _Connection, address: str, method: str, path: str, body: Any, deadline: float
) -> HttpResponse:
    payload = b"" if body is None else json.dumps(body).encode()
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {address}",
        "Accept: application/json",
        f"Content-Length: {len(payload)}",
    ]
    if body is not None:
        head.append("Content-Type: application/json")
    data = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            conn.writer.write(data)
            await conn.writer.drain()
            return await _read_response(conn.reader, method)
    except TimeoutError:
        raise MaybeSentError(f"no answer from {address} in time", timed_out=True) from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise MaybeSentError(f"connection to {address} lost after sending: {exc!r}") from None
    except ValueError as exc:
        raise MaybeSentError(f"bad answer from {address}: {exc}") from None


async def _read_response(reader: asyncio.StreamReader, method: str) -> HttpResponse:
    """Read one response; raises ValueError if it is malformed, IncompleteReadError on EOF."""
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    status = int(parts[1])
    headers = await _read_headers(reader)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return HttpResponse(status, headers, b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return HttpResponse(status, headers, await _read_chunked(reader))
    if "content-length" in headers:
        length = int(headers["content-length"])
        if not 0 <= length <= MAX_BODY_BYTES:
            raise ValueError(f"a body of {length} bytes is too large or negative")
        return HttpResponse(status, headers, await reader.readexactly(length))
    # No framing: the body runs to the end of the connection, which cannot be reused.
    return HttpResponse(status, {**headers, "connection": "close"}, await _read_to_eof(reader))


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    """Header lines up to the blank line, names in lower case."""
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
        if not line:
            return headers
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    raise ValueError(f"more than {MAX_HEADER_LINES} header lines")


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything up to the end of the stream, however many reads it arrives in; the
    request's deadline bounds the wait."""
    body = bytearray()
    while chunk := await reader.read(READ_CHUNK_BYTES):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(f"a body without a length is too large: over {MAX_BODY_BYTES} B")
    return bytes(body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            break
        if len(body) + size > MAX_BODY_BYTES:
            raise ValueError(f"a chunked body is too large: over {MAX_BODY_BYTES} B")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    for _ in range(MAX_HEADER_LINES):  # trailers, up to the blank line
        if (await reader.readuntil(b"\r\n")) == b"\r\n":
            return bytes(body)
    raise ValueError(f"more than {MAX_HEADER_LINES} trailer lines")
