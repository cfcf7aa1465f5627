"""The HTTP/JSON face, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from raftkv.http_routes import serve_http
from raftkv.http_server import (
    HttpError,
    Request,
    method_not_allowed,
    not_found,
    start_http_server,
)

TIMEOUT_S = 5.0


async def echo(request: Request) -> tuple[int, object]:
    """Routes for the tests: /echo answers the request; the others misbehave on purpose."""
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path == "/slow":
        await asyncio.sleep(60)
    if request.path == "/json":
        return 200, {"got": request.json()}
    if request.path == "/teapot":
        raise HttpError(418, "teapot", "short and stout")
    if request.path == "/not-json":
        return 200, {"bytes": b"x"}
    if request.path == "/only-get" and request.method != "GET":
        return method_not_allowed(request.method, ["GET"])
    if not request.path.startswith("/echo"):
        return not_found(request.path)
    return 200, {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "body": request.body.decode("utf-8", "replace"),
        "headers": request.headers,
    }


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[int]:
    server = await start_http_server("127.0.0.1", 0, echo, **options)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TIMEOUT_S * 2))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    async with asyncio.timeout(TIMEOUT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, json.loads(body) if body else None


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes, read one response, and check the server then closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        response = await read_response(reader)
        async with asyncio.timeout(TIMEOUT_S):
            assert await reader.read() == b""
        return response
    finally:
        writer.close()


async def closes_silently(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(TIMEOUT_S):
        return await reader.read() == b""


def test_get_with_percent_decoded_path_and_query() -> None:
    async def go() -> None:
        async with serving() as port:
            status, headers, body = await exchange(
                port,
                b"GET /echo/a%20b%2Fc?x=1&y=%C3%A9+z&x=2 HTTP/1.1\r\nConnection: close\r\n\r\n",
            )
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert body["path"] == "/echo/a b/c"
        assert body["query"] == {"x": "2", "y": "é z"}
        assert body["method"] == "GET"

    run(go)


def test_post_with_json_body_through_http_client() -> None:
    def post(port: int) -> tuple[int, str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        try:
            payload = json.dumps({"op": "put", "key": "k", "value": "ü"})
            conn.request("POST", "/json", body=payload, headers={"X-Test": "yes"})
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), json.load(response)
        finally:
            conn.close()

    async def go() -> None:
        async with serving() as port:
            status, content_type, body = await asyncio.to_thread(post, port)
        assert status == 200
        assert content_type == "application/json"
        assert body == {"got": {"op": "put", "key": "k", "value": "ü"}}

    run(go)


def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    async def go() -> None:
        async with serving() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /echo/1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            first = await read_response(reader)
            writer.write(b"GET /echo/2 HTTP/1.1\r\nHost: x\r\n\r\n")
            second = await read_response(reader)
            writer.write(b"GET /echo/3 HTTP/1.1\r\nConnection: close\r\n\r\n")
            third = await read_response(reader)
            assert await closes_silently(reader)
            writer.close()
        assert (first[0], first[1]["connection"], first[2]["body"]) == (200, "keep-alive", "hello")
        assert (second[0], second[2]["path"], second[2]["headers"]["host"]) == (200, "/echo/2", "x")
        assert (third[0], third[1]["connection"]) == (200, "close")

    run(go)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def go() -> None:
        async with serving() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /echo/a HTTP/1.1\r\n\r\nGET /echo/b HTTP/1.1\r\n\r\n")
            paths = [(await read_response(reader))[2]["path"] for _ in range(2)]
            writer.close()
        assert paths == ["/echo/a", "/echo/b"]

    run(go)


def test_http_1_0_closes_unless_asked_to_keep_alive() -> None:
    async def go() -> None:
        async with serving() as port:
            status, headers, _ = await exchange(port, b"GET /echo HTTP/1.0\r\n\r\n")
            assert (status, headers["connection"]) == (200, "close")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /echo HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            assert (await read_response(reader))[1]["connection"] == "keep-alive"
            writer.write(b"GET /echo HTTP/1.0\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            writer.close()

    run(go)


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (b"NONSENSE\r\n\r\n", 400, "malformed request line"),
        (b"GET /echo\r\n\r\n", 400, "malformed request line"),
        (b"G(T /echo HTTP/1.1\r\n\r\n", 400, "malformed request line"),
        (b"GET /echo HTTP/x\r\n\r\n", 400, "malformed HTTP version"),
        (b"GET /echo HTTP/2.0\r\n\r\n", 505, "only HTTP/1.0 and HTTP/1.1"),
        (b"GET echo HTTP/1.1\r\n\r\n", 400, "must start with /"),
        (b"GET /echo/%FF HTTP/1.1\r\n\r\n", 400, "not valid UTF-8"),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400, "must be ASCII"),
        (b"GET /echo HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header line"),
        (b"GET /echo HTTP/1.1\r\n folded: x\r\n\r\n", 400, "malformed header line"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "malformed Content-Length"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "Len"),
        (
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
            "Transfer-Encoding (chunked) is not supported",
        ),
    ],
)
def test_malformed_requests_get_a_json_error_and_a_close(
    request_bytes: bytes, status: int, message: str
) -> None:
    async def go() -> None:
        async with serving() as port:
            got, headers, body = await exchange(port, request_bytes)
        assert got == status
        assert headers["connection"] == "close"
        assert body["ok"] is False
        assert body["error"] in ("bad_request", "length_required", "version_unsupported")
        assert message in body["message"]

    run(go)


def test_huge_header_line_is_refused() -> None:
    async def go() -> None:
        async with serving(max_line_bytes=1024) as port:
            big = b"X-Big: " + b"a" * 5000 + b"\r\n"
            status, _, body = await exchange(port, b"GET /echo HTTP/1.1\r\n" + big + b"\r\n")
        assert (status, body["error"]) == (431, "headers_too_large")
        assert "header line exceeds 1024 bytes" in body["message"]

    run(go)


def test_too_many_header_bytes_or_headers_are_refused() -> None:
    async def go() -> None:
        async with serving(max_header_bytes=2000, max_headers=10) as port:
            many = b"".join(b"X-%d: %s\r\n" % (n, b"v" * 300) for n in range(8))
            status, _, body = await exchange(port, b"GET /echo HTTP/1.1\r\n" + many + b"\r\n")
            assert (status, body["message"]) == (431, "headers exceed 2000 bytes")
            many = b"".join(b"X-%d: v\r\n" % n for n in range(11))
            status, _, body = await exchange(port, b"GET /echo HTTP/1.1\r\n" + many + b"\r\n")
            assert (status, body["message"]) == (431, "more than 10 headers")

    run(go)


def test_huge_request_line_is_refused() -> None:
    async def go() -> None:
        async with serving(max_line_bytes=1024) as port:
            line = b"GET /" + b"a" * 4000 + b" HTTP/1.1\r\n\r\n"
            status, _, body = await exchange(port, line)
        assert (status, body["error"]) == (414, "uri_too_long")

    run(go)


def test_oversized_body_is_refused_without_reading_it() -> None:
    async def go() -> None:
        async with serving(max_body_bytes=100) as port:
            # The body is never sent: a server that waited for it would time out instead.
            status, _, body = await exchange(
                port, b"POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n"
            )
            assert (status, body["error"]) == (413, "body_too_large")
            assert body["message"] == "body of 101 bytes exceeds 100"
            # A client that does send the body still gets the answer, not a reset.
            status, _, _ = await exchange(
                port, b"POST /echo HTTP/1.1\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200000
            )
            assert status == 413

    run(go)


def test_body_at_the_limit_is_accepted() -> None:
    async def go() -> None:
        async with serving(max_body_bytes=100) as port:
            data = b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
            status, _, body = await exchange(port, data + b"y" * 100)
        assert (status, body["body"]) == (200, "y" * 100)

    run(go)


def test_expect_100_continue_gets_an_interim_answer() -> None:
    async def go() -> None:
        async with serving() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
            )
            async with asyncio.timeout(TIMEOUT_S):
                assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ok")
            status, _, body = await read_response(reader)
            writer.close()
        assert (status, body["body"]) == (200, "ok")

    run(go)


def test_slow_client_times_out_with_408() -> None:
    async def go() -> None:
        async with serving(header_timeout_s=0.2) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /echo HTTP/1.1\r\nHost:")  # and then nothing
            status, _, body = await read_response(reader)
            assert await closes_silently(reader)
            writer.close()
        assert (status, body["error"]) == (408, "request_timeout")

    run(go)


def test_slow_body_times_out_with_408() -> None:
    async def go() -> None:
        async with serving(body_timeout_s=0.2) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            status, _, _ = await read_response(reader)
            writer.close()
        assert status == 408

    run(go)


def test_idle_keep_alive_connection_is_closed_quietly() -> None:
    async def go() -> None:
        async with serving(header_timeout_s=0.2) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /echo HTTP/1.1\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            assert await closes_silently(reader)
            writer.close()

    run(go)


def test_handler_exception_is_a_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go() -> None:
        async with serving() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /boom HTTP/1.1\r\n\r\n")
            status, _, body = await read_response(reader)
            assert (status, body["error"]) == (500, "internal")
            assert "RuntimeError" in body["message"]
            writer.write(b"GET /echo/again HTTP/1.1\r\n\r\n")  # same connection still works
            assert (await read_response(reader))[0] == 200
            writer.close()
            status, _, _ = await exchange(port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert status == 200

    with caplog.at_level(logging.ERROR, logger="raftkv.http"):
        run(go)
    assert any("handler failed" in r.message and r.exc_info for r in caplog.records)


def test_unencodable_handler_answer_is_a_500() -> None:
    async def go() -> None:
        async with serving() as port:
            status, _, body = await exchange(
                port, b"GET /not-json HTTP/1.1\r\nConnection: close\r\n\r\n"
            )
        assert (status, body["error"]) == (500, "internal")

    run(go)


def test_slow_handler_is_answered_503_timeout() -> None:
    async def go() -> None:
        async with serving(handler_timeout_s=0.1) as port:
            status, _, body = await exchange(
                port, b"GET /slow HTTP/1.1\r\nConnection: close\r\n\r\n"
            )
        assert (status, body["error"]) == (503, "timeout")
        assert "may or may not" in body["message"]

    run(go)


def test_http_error_helpers() -> None:
    async def go() -> None:
        async with serving() as port:
            close = b"Connection: close\r\n\r\n"
            status, _, body = await exchange(port, b"GET /nowhere HTTP/1.1\r\n" + close)
            assert (status, body["error"]) == (404, "not_found")
            status, _, body = await exchange(port, b"DELETE /only-get HTTP/1.1\r\n" + close)
            assert (status, body["error"], body["allowed"]) == (405, "method_not_allowed", ["GET"])
            status, _, body = await exchange(port, b"GET /teapot HTTP/1.1\r\n" + close)
            assert (status, body) == (
                418,
                {"ok": False, "error": "teapot", "message": "short and stout"},
            )
            status, _, body = await exchange(
                port, b"POST /json HTTP/1.1\r\nContent-Length: 3\r\n" + close + b"{no"
            )
            assert (status, body["error"]) == (400, "bad_request")
            assert "not valid JSON" in body["message"]

    run(go)


def test_head_gets_headers_only() -> None:
    async def go() -> None:
        async with serving() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HEAD /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(TIMEOUT_S):
                data = await reader.read()
            writer.close()
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: " in head
        assert rest == b""

    run(go)


def test_a_client_that_vanishes_mid_body_does_not_hurt_the_server() -> None:
    async def go() -> None:
        async with serving() as port:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nab")
            await writer.drain()
            writer.close()
            status, _, _ = await exchange(port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert status == 200

    run(go)


@pytest.mark.parametrize("path", ["/json", "/command"])
def test_deeply_nested_json_is_a_400_naming_the_nesting(path: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000

    async def go() -> None:
        # /command is the node's own route; the body is refused before the node is asked.
        server = await (
            serve_http(None, "127.0.0.1", 0)  # type: ignore[arg-type]
            if path == "/command"
            else start_http_server("127.0.0.1", 0, echo)
        )
        port = server.sockets[0].getsockname()[1]
        try:
            head = f"POST {path} HTTP/1.1\r\nContent-Length: {len(deep)}\r\n"
            request = head.encode() + b"Connection: close\r\n\r\n" + deep
            status, _, body = await exchange(port, request)
            assert (status, body["error"]) == (400, "bad_request"), body
            assert "nested too deeply" in body["message"], body
        finally:
            server.close()
            await server.wait_closed()

    run(go)
