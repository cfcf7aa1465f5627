"""The client against servers that misbehave: every request ends, in time, as a result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from raftkv import wire
from raftkv.client import Client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def with_server(handler: Handler, body: Callable[[str], Awaitable[Any]]) -> Any:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(30):
            return await body(f"127.0.0.1:{port}")
    finally:
        server.close()


def test_a_node_that_closes_at_once_is_a_failure_not_a_crash() -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async def body(addr: str) -> list[dict[str, Any]]:
        client = Client([addr], timeout_s=0.5)
        try:
            return [await client.put("k", i) for i in range(20)]
        finally:
            await client.close()

    answers = asyncio.run(with_server(slam, body))
    # Never ok, and never an exception: not sent (fail) or lost after sending (unknown).
    assert all(a["ok"] in (False, None) for a in answers), answers


def test_a_connection_the_node_stops_reading_is_replaced_not_piled_on() -> None:
    connections: list[asyncio.StreamWriter] = []
    done = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # open, never read from, until the test ends
        await done.wait()

    async def body(addr: str) -> list[dict[str, Any]]:
        client = Client([addr], timeout_s=0.3)
        big = "x" * (256 << 10)
        try:
            answers = []
            for _ in range(3):
                puts = (client.put(f"k{i}", big) for i in range(64))
                answers += await asyncio.gather(*puts)
            return answers
        finally:
            done.set()
            await client.close()

    answers = asyncio.run(with_server(stall, body))
    assert all(a["ok"] is None for a in answers), {a["error"] for a in answers}
    # Waves after the first found its connection full (writing paused): they went out on a
    # new one rather than piling up behind requests the node never read.
    assert len(connections) >= 2


def test_answers_split_across_reads_are_matched_by_id() -> None:
    async def answer_in_pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = wire.FrameReader()
        while data := await reader.read(4096):
            for request in frames.feed(data):
                if isinstance(request, dict) and "id" in request:
                    frame = wire.encode_frame({"ok": True, "value": 7, "id": request["id"]})
                    for i in range(len(frame)):
                        writer.write(frame[i : i + 1])
                        await writer.drain()

    async def body(addr: str) -> list[dict[str, Any]]:
        client = Client([addr], timeout_s=5)
        try:
            return list(await asyncio.gather(*(client.get(f"k{i}") for i in range(5))))
        finally:
            await client.close()

    answers = asyncio.run(with_server(answer_in_pieces, body))
    assert [a["ok"] for a in answers] == [True] * 5
    assert all(a["value"] == 7 for a in answers)


def test_requests_that_start_together_share_the_one_connection_they_open() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        frames = wire.FrameReader()
        while data := await reader.read(4096):
            for request in frames.feed(data):
                if isinstance(request, dict) and "id" in request:
                    writer.write(wire.encode_frame({"ok": True, "value": 1, "id": request["id"]}))

    async def body(addr: str) -> list[dict[str, Any]]:
        client = Client([addr], timeout_s=5)
        try:
            return list(await asyncio.gather(*(client.get(f"k{i}") for i in range(50))))
        finally:
            await client.close()

    answers = asyncio.run(with_server(answer, body))
    assert [a["ok"] for a in answers] == [True] * 50
    assert len(connections) == 1
