"""The http target's client against real HTTP servers on loopback: every answer shape and
every way a request can go wrong maps to the right Jepsen outcome."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from harness.targets.base import ClusterSpec
from harness.targets.http import HttpKvClient, HttpTarget
from harness.targets.node_command import NodeCommand
from harness.workload import OPS, Generator, Invocation, WorkloadOptions

pytestmark = pytest.mark.timeout(60)

NODES = ("n1", "n2", "n3")
ADDRESSES = {"n1": "127.0.0.2", "n2": "127.0.0.3", "n3": "127.0.0.4"}

# A node's behaviour: (method, path, JSON body) -> what to do. A tuple (status, body) is
# answered (body: a JSON-able object, or bytes sent as they are); "close" closes the
# connection without answering; "hang" never answers.
Behaviour = Callable[[str, str, Any], Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((ADDRESSES["n1"], 0))
        return int(sock.getsockname()[1])


async def _serve_one(
    behaviour: Behaviour,
    calls: list[str],
    stop: asyncio.Event,
    reader: asyncio.StreamReader,
    writer: Any,
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            calls.append(f"{method} {path}")
            action = behaviour(method, path, json.loads(raw) if raw else None)
            if action == "close":
                return
            if action == "hang":
                await stop.wait()
                return
            if action == "garbage":
                writer.write(b"garbage\r\n\r\n")
                await writer.drain()
                continue
            status, body = action
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@asynccontextmanager
async def cluster_of(
    behaviours: dict[str, Behaviour], op_timeout_s: float = 0.5, port: int | None = None
) -> AsyncIterator[tuple[ClusterSpec, dict[str, list[str]]]]:
    """Servers for the nodes in `behaviours` (the others refuse connections)."""
    port = port or free_port()
    calls: dict[str, list[str]] = {n: [] for n in NODES}
    servers = []
    stop = asyncio.Event()
    for node, behaviour in behaviours.items():

        def handler(r: Any, w: Any, b: Behaviour = behaviour, c: list[str] = calls[node]) -> Any:
            return _serve_one(b, c, stop, r, w)

        servers.append(await asyncio.start_server(handler, ADDRESSES[node], port))
    cluster = ClusterSpec(
        nodes=NODES,
        addresses=ADDRESSES,
        data_root="/nonexistent",
        op_timeout_s=op_timeout_s,
        extra={"http_port": port},
    )
    try:
        yield cluster, calls
    finally:
        stop.set()
        for server in servers:
            server.close()
        await asyncio.sleep(0.05)  # let the handlers end


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def invoke(cluster: ClusterSpec, op: Invocation, node: str = "n1") -> Any:
    client = HttpKvClient(cluster, node)
    try:
        return await client.invoke(op)
    finally:
        await client.close()


def ours(method: str, path: str, body: Any) -> Any:
    if path == "/read/k1":
        return 200, {"ok": True, "value": "17"}
    if body and body.get("op") == "cas":
        return 200, {"ok": False, "error": "cas_mismatch"}
    return 200, {"ok": True}


def seed(method: str, path: str, body: Any) -> Any:
    if path == "/read/k1":
        return 200, {"success": True, "value": "7"}
    if path.startswith("/read/"):
        return 404, {"success": False, "message": "key not found"}
    if body and body.get("op") != "set":
        return 400, {"success": False, "message": f"unknown op {body.get('op')!r}"}
    return 200, {"success": True, "message": "done"}


def test_both_answer_shapes_map_to_ok_and_fail() -> None:
    async def go() -> None:
        async with cluster_of({"n1": ours}) as (cluster, _):
            done = await invoke(cluster, Invocation("read", "k1", None))
            assert (done.type, done.value) == ("ok", 17)
            assert (await invoke(cluster, Invocation("write", "k1", 3))).type == "ok"
            cas = await invoke(cluster, Invocation("cas", "k1", [1, 2]))
            assert (cas.type, cas.error) == ("fail", "cas_mismatch")
        async with cluster_of({"n1": seed}) as (cluster, _):
            done = await invoke(cluster, Invocation("read", "k1", None))
            assert (done.type, done.value) == ("ok", 7)
            absent = await invoke(cluster, Invocation("read", "k2", None))
            assert (absent.type, absent.value) == ("ok", None)
            assert (await invoke(cluster, Invocation("write", "k1", 3))).type == "ok"
            refused = await invoke(cluster, Invocation("cas", "k1", [1, 2]))
            assert refused.type == "fail" and "unknown op" in (refused.error or "")

    run(go())


def seed_follower(method: str, path: str, body: Any) -> Any:
    return 200, {"success": False, "message": "not the leader"}


def test_not_the_leader_follows_the_hint_or_tries_the_next_node() -> None:
    port = free_port()

    def hinting_follower(method: str, path: str, body: Any) -> Any:
        leader = f"{ADDRESSES['n3']}:{port}"
        return 200, {"ok": False, "error": "not_leader", "leader_http": leader}

    async def go() -> None:
        behaviours = {"n1": hinting_follower, "n2": seed_follower, "n3": ours}
        async with cluster_of(behaviours, port=port) as (cluster, calls):
            assert (await invoke(cluster, Invocation("write", "k1", 5))).type == "ok"
            assert (calls["n1"], calls["n2"], calls["n3"]) == (
                ["POST /command"],
                [],
                ["POST /command"],
            )
        async with cluster_of({"n1": seed_follower, "n2": seed_follower, "n3": ours}) as (
            cluster,
            calls,
        ):
            assert (await invoke(cluster, Invocation("write", "k1", 5))).type == "ok"
            assert all(calls[n] == ["POST /command"] for n in NODES)
        async with cluster_of({"n1": seed_follower, "n2": seed_follower}) as (cluster, _):
            # n3 refuses connections: nothing was done anywhere.
            done = await invoke(cluster, Invocation("write", "k1", 5))
            assert done.type == "fail" and "not the leader" in (done.error or "")

    run(go())


def test_refused_connections_fail_and_lost_answers_are_indeterminate() -> None:
    async def go() -> None:
        async with cluster_of({"n2": ours}) as (cluster, calls):
            # n1 refuses: the client moves on to n2, which does the write.
            assert (await invoke(cluster, Invocation("write", "k1", 5))).type == "ok"
        async with cluster_of({}) as (cluster, _):
            done = await invoke(cluster, Invocation("write", "k1", 5))
            assert done.type == "fail" and "refused" in (done.error or "").lower()
        for behaviour in (
            lambda m, p, b: "close",
            lambda m, p, b: "hang",
            lambda m, p, b: (500, b"oops"),
            lambda m, p, b: (503, {"ok": False, "error": "timeout"}),
            lambda m, p, b: (200, {"ok": None, "error": "unknown"}),
            lambda m, p, b: (200, {"success": False, "message": "commit timed out"}),
            lambda m, p, b: "garbage",
        ):
            async with cluster_of({"n1": behaviour, "n2": ours, "n3": ours}, 0.3) as (
                cluster,
                calls,
            ):
                done = await invoke(cluster, Invocation("write", "k1", 5))
                assert done.type == "info", (done, calls)
                # Never retried elsewhere: it may have been done.
                assert calls["n2"] == calls["n3"] == []

    run(go())


def test_kept_alive_connection_is_reused() -> None:
    async def go() -> None:
        async with cluster_of({"n1": ours}) as (cluster, calls):
            client = HttpKvClient(cluster, "n1")
            try:
                for value in range(5):
                    assert (await client.invoke(Invocation("write", "k1", value))).type == "ok"
            finally:
                await client.close()
            assert len(calls["n1"]) == 5

    run(go())


def test_cas_is_detected_and_leaders_come_from_status_or_the_last_write() -> None:
    def with_status(method: str, path: str, body: Any) -> Any:
        if path == "/status":
            return 200, {"role": "leader", "term": 4, "leader": "n2"}
        return ours(method, path, body)

    def follower_status(method: str, path: str, body: Any) -> Any:
        return 200, {"role": "follower", "term": 4, "leader": "n2"}

    async def go() -> None:
        target = HttpTarget()
        async with cluster_of({"n1": follower_status, "n2": with_status, "n3": ours}) as (
            cluster,
            _,
        ):
            assert await target.leader_term(cluster) == ("n2", 4)
            assert await target.supported_ops(cluster) == OPS
        target = HttpTarget()
        async with cluster_of({"n1": seed, "n2": seed, "n3": seed}) as (cluster, _):
            assert await target.leader(cluster) == "n1"  # no /status: the first that answers
            assert await target.supported_ops(cluster) == ("read", "write")
            client = target.client(cluster, "n3")
            try:
                assert (await client.invoke(Invocation("write", "k1", 5))).type == "ok"
            finally:
                await client.close()
            assert await target.leader(cluster) == "n3"  # the node that last took a write

    run(go())


def test_node_command_placeholders_are_filled_per_argv_element() -> None:
    command = NodeCommand.parse(
        "srv --name {id} --listen '{host}:{port}' --raft {peer_port} --peers {peers} "
        "--http-peers {http_peers} --dir {data_dir} --json '{{\"a\": 1}}'",
        ["MODE=fast", "EMPTY="],
    )
    cluster = ClusterSpec(nodes=NODES, addresses=ADDRESSES, data_root="/d")
    argv = command.render("n2", cluster)
    assert argv == [
        "env", "MODE=fast", "EMPTY=",
        "srv", "--name", "n2", "--listen", "127.0.0.3:8001", "--raft", "7001",
        "--peers", "n1=127.0.0.2:7001,n2=127.0.0.3:7001,n3=127.0.0.4:7001",
        "--http-peers", "http://127.0.0.2:8001,http://127.0.0.3:8001,http://127.0.0.4:8001",
        "--dir", "/d/n2", "--json", '{"a": 1}',
    ]  # fmt: skip
    for bad, words in [
        ("srv {port} {peers} {nope}", "{nope}"),
        ("srv {peers}", "{port}"),
        ("srv {port}", "{peers}"),
        ("", "empty"),
        ("srv '{port}", "cannot be split"),
    ]:
        with pytest.raises(ValueError, match=words.replace("{", r"\{").replace("}", r"\}")):
            NodeCommand.parse(bad)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        NodeCommand.parse("srv {port} {peers}", ["=x"])


def test_the_workload_keeps_to_the_ops_a_target_supports() -> None:
    gen = Generator(WorkloadOptions("kv", 3, ops=("read", "write")), random.Random(7))
    fs = {gen.next().f for _ in range(500)}
    assert fs == {"read", "write"}
    everything = Generator(WorkloadOptions("kv", 3), random.Random(7))
    assert {everything.next().f for _ in range(500)} == set(OPS)
    for bad in [("read", "delete"), ()]:
        with pytest.raises(ValueError, match="ops must be some of"):
            WorkloadOptions("kv", 3, ops=bad)
    with pytest.raises(ValueError, match="no weight"):
        WorkloadOptions("kv", 3, mix=(0, 0, 1), ops=("read", "write"))
