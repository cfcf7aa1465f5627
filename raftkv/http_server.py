"""A minimal HTTP/1.1 JSON server on asyncio streams, for humans, curl and HTTP clients.

One coroutine per connection reads requests in turn (keep-alive by default in HTTP/1.1,
`Connection: close` honoured; HTTP/1.0 closes unless it asks for keep-alive), calls the
handler and writes one JSON response each. Bodies need a Content-Length; chunked bodies
are refused with 411.

Every read and write has a deadline and every part of a request has a size limit. A
client that breaks a rule gets a JSON error and its connection is closed:
    400 bad_request          malformed request line, header or body framing
    408 request_timeout      the head or the body did not arrive in time
    411 length_required      Transfer-Encoding instead of Content-Length
    413 body_too_large       Content-Length above max_body_bytes (the body is never read)
    414 uri_too_long         request line above max_line_bytes
    431 headers_too_large    a header line above max_line_bytes, all headers above
                             max_header_bytes, or more than max_headers of them
    505 version_unsupported  anything but HTTP/1.0 and HTTP/1.1
A handler gets a `Request` and returns (status, JSON-able object), or raises HttpError to
answer an error. Any other exception becomes 500 internal (logged); a handler that runs
past handler_timeout_s is cancelled and answered 503 timeout, so the operation it was
doing may or may not have taken effect. The server outlives any client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

__all__ = [
    "Handler",
    "HttpError",
    "Request",
    "error_body",
    "method_not_allowed",
    "not_found",
    "start_http_server",
]

log = logging.getLogger("raftkv.http")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_DIGITS = re.compile(r"[0-9]+")
_MAX_QUERY_FIELDS = 100
_LINGER_S = 1.0
_LINGER_BYTES = 1 << 20


@dataclass
class Request:
    """One request. `path` and `query` are percent-decoded (a "+" in the query is a
    space); `headers` has lower-case names, repeated headers joined with ", "."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]

    def json(self) -> object:
        """The body as JSON; raises HttpError(400) if it is not, or if it is nested too
        deeply to parse."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as err:
            raise HttpError(400, "bad_request", f"body is not valid JSON: {err}") from None
        except RecursionError:
            # The parser recurses per level; a body of brackets alone reaches the limit.
            raise HttpError(400, "bad_request", "body is JSON nested too deeply") from None


Handler = Callable[[Request], Awaitable[tuple[int, object]]]


class HttpError(Exception):
    """Raise to answer `status` with error_body(error, message)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def error_body(error: str, message: str) -> dict[str, object]:
    """The JSON shape of every error answer."""
    return {"ok": False, "error": error, "message": message}


def not_found(path: str) -> tuple[int, object]:
    return 404, error_body("not_found", f"no such resource: {path}")


def method_not_allowed(method: str, allowed: Iterable[str]) -> tuple[int, object]:
    methods = sorted(allowed)
    body = error_body("method_not_allowed", f"{method} not allowed; use {', '.join(methods)}")
    body["allowed"] = methods
    return 405, body


@dataclass(frozen=True)
class _Limits:
    max_line_bytes: int
    max_header_bytes: int
    max_headers: int
    max_body_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    handler_timeout_s: float
    write_timeout_s: float


class _Refused(HttpError):
    """The request cannot be served; answer it and close the connection."""


class _Gone(Exception):
    """The client went away: nothing left to answer."""


async def start_http_server(
    host: str,
    port: int,
    handler: Handler,
    *,
    max_body_bytes: int = 1 << 20,
    header_timeout_s: float = 10.0,
    handler_timeout_s: float = 30.0,
    body_timeout_s: float = 30.0,
    write_timeout_s: float = 10.0,
    max_line_bytes: int = 8192,
    max_header_bytes: int = 64 * 1024,
    max_headers: int = 100,
) -> asyncio.Server:
    """Listen on host:port (port 0: any free port; see `server.sockets`) and serve `handler`.

    header_timeout_s bounds both the wait for a new request on an idle connection and the
    time from its first byte to the end of its headers; body_timeout_s the body;
    write_timeout_s each response. Close with `server.close()`.
    """
    limits = _Limits(
        max_line_bytes,
        max_header_bytes,
        max_headers,
        max_body_bytes,
        header_timeout_s,
        body_timeout_s,
        handler_timeout_s,
        write_timeout_s,
    )

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(reader, writer, handler, limits)

    return await asyncio.start_server(on_connection, host, port, limit=max_line_bytes)


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    limits: _Limits,
) -> None:
    try:
        while True:
            first = await _wait_for_request(reader, limits.header_timeout_s)
            if first is None:
                return
            try:
                request, version = await _read_request(reader, writer, first, limits)
            except _Refused as err:
                refusal = error_body(err.error, err.message)
                await _write(writer, err.status, refusal, False, False, limits)
                await _linger(reader, writer)
                return
            keep_alive = _keep_alive(request, version)
            status, body = await _call(handler, request, limits.handler_timeout_s)
            head_only = request.method == "HEAD"
            await _write(writer, status, body, keep_alive, head_only, limits)
            if not keep_alive:
                return
    except (_Gone, ConnectionError, TimeoutError):
        pass
    except Exception:
        log.exception("http connection failed")
    finally:
        writer.close()
        try:
            async with asyncio.timeout(_LINGER_S):
                await writer.wait_closed()
        except (ConnectionError, TimeoutError):
            pass


async def _wait_for_request(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """The first byte of the next request; None when the client closes or stays idle."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.readexactly(1)
    except (asyncio.IncompleteReadError, TimeoutError):
        return None


async def _read_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes,
    limits: _Limits,
) -> tuple[Request, tuple[int, int]]:
    try:
        async with asyncio.timeout(limits.header_timeout_s):
            line = first if first == b"\n" else first + await _readline(reader, 414, limits)
            if not line.strip():  # a stray CRLF between requests is allowed
                line = await _readline(reader, 414, limits)
            method, target, version = _parse_request_line(line)
            headers = await _read_headers(reader, limits)
        length = _content_length(headers, limits.max_body_bytes)
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        async with asyncio.timeout(limits.body_timeout_s):
            body = await reader.readexactly(length) if length else b""
    except TimeoutError:
        raise _Refused(408, "request_timeout", "request not received in time") from None
    except asyncio.IncompleteReadError:
        raise _Gone() from None
    path, query = _parse_target(target)
    return Request(method, path, query, body, headers), version


async def _readline(reader: asyncio.StreamReader, status: int, limits: _Limits) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        what = "request line" if status == 414 else "header line"
        error = "uri_too_long" if status == 414 else "headers_too_large"
        raise _Refused(status, error, f"{what} exceeds {limits.max_line_bytes} bytes") from None


def _parse_request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    parts = line.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _Refused(400, "bad_request", "malformed request line")
    version = _VERSION.fullmatch(parts[2])
    if version is None:
        raise _Refused(400, "bad_request", "malformed HTTP version")
    major, minor = int(version[1]), int(version[2])
    if (major, minor) not in ((1, 0), (1, 1)):
        raise _Refused(505, "version_unsupported", "only HTTP/1.0 and HTTP/1.1 are served")
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise _Refused(400, "bad_request", "request target must be ASCII") from None
    return parts[0].decode("ascii"), target, (major, minor)


async def _read_headers(reader: asyncio.StreamReader, limits: _Limits) -> dict[str, str]:
    headers: dict[str, str] = {}
    count = total = 0
    while True:
        line = await _readline(reader, 431, limits)
        total += len(line)
        if total > limits.max_header_bytes:
            message = f"headers exceed {limits.max_header_bytes} bytes"
            raise _Refused(431, "headers_too_large", message)
        line = line.rstrip(b"\r\n")
        if not line:
            return headers
        count += 1
        if count > limits.max_headers:
            message = f"more than {limits.max_headers} headers"
            raise _Refused(431, "headers_too_large", message)
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _Refused(400, "bad_request", "malformed header line")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text


def _content_length(headers: dict[str, str], max_body_bytes: int) -> int:
    if "transfer-encoding" in headers:
        message = "Transfer-Encoding (chunked) is not supported; send a Content-Length body"
        raise _Refused(411, "length_required", message)
    if "content-length" not in headers:
        return 0
    values = {v.strip() for v in headers["content-length"].split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
        raise _Refused(400, "bad_request", "malformed Content-Length")
    length = int(values.pop())
    if length > max_body_bytes:
        message = f"body of {length} bytes exceeds {max_body_bytes}"
        raise _Refused(413, "body_too_large", message)
    return length


def _parse_target(target: str) -> tuple[str, dict[str, str]]:
    if not target.startswith("/"):
        raise _Refused(400, "bad_request", "request target must start with /")
    raw_path, _, raw_query = target.partition("?")
    try:
        path = unquote(raw_path, encoding="utf-8", errors="strict")
        pairs = parse_qsl(
            raw_query,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_QUERY_FIELDS,
        )
    except UnicodeDecodeError:
        raise _Refused(400, "bad_request", "percent-encoding is not valid UTF-8") from None
    except ValueError:
        message = f"more than {_MAX_QUERY_FIELDS} query fields"
        raise _Refused(400, "bad_request", message) from None
    return path, dict(pairs)


def _keep_alive(request: Request, version: tuple[int, int]) -> bool:
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    if version >= (1, 1):
        return "close" not in tokens
    return "keep-alive" in tokens


async def _call(handler: Handler, request: Request, timeout: float) -> tuple[int, object]:
    try:
        async with asyncio.timeout(timeout) as deadline:
            status, body = await handler(request)
    except HttpError as err:
        return err.status, error_body(err.error, err.message)
    except TimeoutError:
        if not deadline.expired():
            log.exception("handler failed: %s %s", request.method, request.path)
            return 500, error_body("internal", "the handler failed")
        message = f"no answer within {timeout} s; the operation may or may not have happened"
        return 503, error_body("timeout", message)
    except Exception as err:
        log.exception("handler failed: %s %s", request.method, request.path)
        return 500, error_body("internal", f"the handler failed: {type(err).__name__}")
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        log.error("handler returned status %r for %s %s", status, request.method, request.path)
        return 500, error_body("internal", "the handler returned an invalid status")
    return status, body


def _render(status: int, body: object, keep_alive: bool, head_only: bool) -> bytes:
    try:
        payload = json.dumps(body, allow_nan=False).encode("utf-8") + b"\n"
    except (TypeError, ValueError):
        log.exception("response body is not JSON: status %d", status)
        status, payload = 500, b'{"ok": false, "error": "internal", "message": "bad body"}\n'
    if status in (204, 304):
        payload = b""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("ascii") + (b"" if head_only else payload)


async def _write(
    writer: asyncio.StreamWriter,
    status: int,
    body: object,
    keep_alive: bool,
    head_only: bool,
    limits: _Limits,
) -> None:
    writer.write(_render(status, body, keep_alive, head_only))
    async with asyncio.timeout(limits.write_timeout_s):
        await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and discard what the client still sends for a moment: closing a socket
    with unread input resets it, and the client might lose the error answer."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(_LINGER_S):
            discarded = 0
            while discarded < _LINGER_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                discarded += len(chunk)
    except (ConnectionError, TimeoutError):
        pass
