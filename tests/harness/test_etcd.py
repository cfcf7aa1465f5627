"""The etcd target: its gateway client against real sockets, a real etcd member driven op by
op (outcomes under kill and pause), and whole `harness test` runs of a 3-member etcd cluster
on network namespaces."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from harness.analysis import stale_reads
from harness.backends import NetnsBackend
from harness.history import ops_from_json, pair_ops
from harness.targets import ClusterSpec, EtcdTarget
from harness.targets.etcd import EtcdClient, completion
from harness.workload import Invocation

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith("hns-")]


def spec(address: str, port_node: str = "n1", **kw: Any) -> ClusterSpec:
    return ClusterSpec(nodes=(port_node,), addresses={port_node: address}, data_root="/x", **kw)


# --- outcome mapping of gateway answers -------------------------------------------------


def test_answers_map_to_ok_fail_and_info() -> None:
    read, write = Invocation("read", "k0", None), Invocation("write", "k0", 3)
    cas = Invocation("cas", "k0", [3, 4])
    value = {"kvs": [{"key": "azA=", "value": "Mw=="}], "count": "1"}  # "3" -> 3
    assert completion(read, 200, value).value == 3 and completion(read, 200, value).type == "ok"
    assert completion(read, 200, {"header": {}}) == completion(read, 200, {"count": "0"})
    assert completion(read, 200, {}).value is None
    assert completion(write, 200, {"header": {}}).type == "ok"
    assert completion(cas, 200, {"succeeded": True}).type == "ok"
    # proto3 leaves `succeeded: false` out: a missing field is a compare that did not hold.
    assert completion(cas, 200, {"header": {}}).type == "fail"

    def error(message: str, code: int = 14) -> dict[str, Any]:
        return {"error": message, "message": message, "code": code}

    for indeterminate in (
        "etcdserver: request timed out",
        "etcdserver: request timed out, possibly due to previous leader failure",
        "etcdserver: leader changed",
        "etcdserver: no leader",
        "etcdserver: server stopped",
        "something never seen before",
    ):
        for op in (write, cas):
            assert completion(op, 503, error(indeterminate)).type == "info", indeterminate
        # A read changes nothing: whatever went wrong, it certainly did not happen.
        assert completion(read, 503, error(indeterminate)).type == "fail"
    for rejected in ("etcdserver: too many requests", "raft proposal dropped"):
        assert completion(write, 503, error(rejected)).type == "fail"
    assert completion(cas, 400, error("etcdserver: key is not provided", 3)).type == "fail"


# --- the client over real sockets ------------------------------------------------------


async def _serve(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                 body: Callable[[int], Awaitable[None]]) -> None:  # fmt: skip
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await body(port)
    finally:
        server.close()


async def _read_request(reader: asyncio.StreamReader) -> dict[str, Any]:
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return json.loads(await reader.readexactly(length))


def _client(port: int, timeout_s: float = 0.5) -> EtcdClient:
    import harness.targets.etcd as etcd

    client = EtcdClient(spec("127.0.0.1", op_timeout_s=timeout_s), "n1")
    client._address = f"127.0.0.1:{port}"  # the test server's port instead of 2379
    assert etcd.CLIENT_PORT == 2379
    return client


def test_chunked_answers_with_trailers_over_one_kept_connection() -> None:
    connections: list[int] = []
    seen: list[dict[str, Any]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while not reader.at_eof():
            try:
                seen.append(await _read_request(reader))
            except (asyncio.IncompleteReadError, ValueError):
                break
            payload = json.dumps({"succeeded": True}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n0\r\nGrpc-Trailer: x\r\n\r\n" % (len(payload), payload)
            )
            await writer.drain()

    async def body(port: int) -> None:
        client = _client(port)
        try:
            for old, new in ((None, 1), (1, 2)):
                done = await client.invoke(Invocation("cas", "k1", [old, new]))
                assert done.type == "ok" and done.value == [old, new]
        finally:
            await client.close()

    asyncio.run(_serve(handler, body))
    assert len(connections) == 1, "the connection was not kept alive"
    absent, present = (s["compare"][0] for s in seen)
    assert absent == {"key": "azE=", "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    assert present["target"] == "VALUE" and present["value"] == "MQ=="  # JSON text "1"
    assert seen[1]["success"] == [{"request_put": {"key": "azE=", "value": "Mg=="}}]


def test_an_answer_without_a_length_is_read_to_the_end_of_the_stream() -> None:
    value = {"kvs": [{"key": "azA=", "value": _b64_json(list(range(2000)))}], "count": "1"}
    payload = json.dumps(value).encode()

    async def in_pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        for start in range(0, len(payload), 1000):
            writer.write(payload[start : start + 1000])
            await writer.drain()
            await asyncio.sleep(0.02)  # each piece arrives on its own
        writer.close()

    async def too_large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(40):
                writer.write(b" " * 65536)
                await writer.drain()
        writer.close()

    async def on_pieces(port: int) -> None:
        client = _client(port, timeout_s=5.0)
        for _ in range(2):  # the closed connection is replaced by a new one
            done = await client.invoke(Invocation("read", "k0", None))
            assert (done.type, done.value) == ("ok", list(range(2000))), done
        await client.close()

    async def on_too_large(port: int) -> None:
        client = _client(port, timeout_s=5.0)
        done = await client.invoke(Invocation("write", "k0", 1))
        assert done.type == "info" and "too large" in str(done.error), done
        await client.close()

    asyncio.run(_serve(in_pieces, on_pieces))
    asyncio.run(_serve(too_large, on_too_large))


def _b64_json(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode("ascii")


def test_refused_is_fail_silence_after_sending_is_info_and_a_lost_read_is_no_write() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    async def on_silent(port: int) -> None:
        client = _client(port, timeout_s=0.3)
        assert (await client.invoke(Invocation("write", "k0", 1))).type == "info"
        assert (await client.invoke(Invocation("read", "k0", None))).type == "info"
        await client.close()

    async def on_hang_up(port: int) -> None:
        client = _client(port)
        lost = await client.invoke(Invocation("cas", "k0", [1, 2]))
        assert lost.type == "info" and "after sending" in str(lost.error)
        assert (await client.invoke(Invocation("read", "k0", None))).type == "fail"
        await client.close()

    async def refused() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens there now
        client = _client(port)
        done = await client.invoke(Invocation("write", "k0", 1))
        assert done.type == "fail" and "connect" in str(done.error)
        await client.close()

    asyncio.run(_serve(silent, on_silent))
    asyncio.run(_serve(hang_up, on_hang_up))
    asyncio.run(refused())


# --- one real etcd member ---------------------------------------------------------------


@pytest.mark.root
@pytest.mark.etcd
@pytest.mark.timeout(120)
def test_a_real_member_answers_each_op_and_kill_and_pause_map_to_fail_and_info() -> None:
    target = EtcdTarget()
    data_root = tempfile.mkdtemp(prefix="harness-etcdtest-")
    backend = NetnsBackend()
    try:
        backend.setup(["n1"])
        address = backend.remote("n1").address
        cluster = ClusterSpec(("n1",), {"n1": address}, data_root, op_timeout_s=1.0)
        log_path = os.path.join(data_root, "etcd.log")
        backend.start_process("n1", target.node_argv("n1", cluster), log_path)
        asyncio.run(_drive_one_member(target, cluster, backend))
    finally:
        backend.teardown()
        shutil.rmtree(data_root, ignore_errors=True)


async def _drive_one_member(target: EtcdTarget, cluster: ClusterSpec, backend: Any) -> None:
    for _ in range(100):
        if await target.leader(cluster) == "n1":
            break
        await asyncio.sleep(0.1)
    assert await target.leader(cluster) == "n1"
    leader, term = await target.leader_term(cluster)
    assert leader == "n1" and term is not None and term >= 1
    client = target.client(cluster, "n1")
    serializable = target.client(ClusterSpec(**{**cluster.__dict__, "read_mode": "serializable"}),
                                 "n1")  # fmt: skip
    try:
        assert (await client.invoke(Invocation("read", "k0", None))).value is None
        assert (await client.invoke(Invocation("cas", "k0", [5, 6]))).type == "fail"
        assert (await client.invoke(Invocation("cas", "k0", [None, 7]))).type == "ok"
        assert (await client.invoke(Invocation("cas", "k0", [None, 8]))).type == "fail"
        assert (await client.invoke(Invocation("write", "k0", 9))).type == "ok"
        assert (await client.invoke(Invocation("cas", "k0", [9, 10]))).type == "ok"
        assert (await client.invoke(Invocation("read", "k0", None))).value == 10
        assert (await serializable.invoke(Invocation("read", "k0", None))).value == 10
        backend.pause("n1")
        paused = await client.invoke(Invocation("write", "k0", 11))
        assert paused.type == "info", paused
        backend.resume("n1")
        backend.kill("n1")
        down = await client.invoke(Invocation("write", "k0", 12))
        assert down.type == "fail" and "connect" in str(down.error), down
        backend.restart("n1")  # the same argv: etcd finds its data dir and keeps its data
        for _ in range(100):
            again = await client.invoke(Invocation("read", "k0", None))
            if again.type == "ok":
                break
            await asyncio.sleep(0.1)
        assert again.type == "ok" and again.value in (10, 11), again
    finally:
        await client.close()
        await serializable.close()


# --- whole runs -------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.etcd
@pytest.mark.timeout(300)
@pytest.mark.parametrize("nemesis", ["partition,kill", "packet-loss"])
def test_etcd_with_linearizable_reads_stays_valid_under_partitions_kills_and_lossy_links(
    tmp_path: Path, nemesis: str
) -> None:
    proc = harness(
        "test", "--backend", "netns", "--target", "etcd", "--nemesis", nemesis,
        "--read-mode", "linearizable", "--time", "15", "--nemesis-interval", "2",
        "--seed", "3", "--store", str(tmp_path), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert r["valid"] is True and r["stale_reads"] == 0
    assert r["counts"]["all"]["ok"] > 200
    faults = {op["fault"] for op in r["nemesis_schedule"] if op["f"] == "start"}
    assert faults, "no fault was started"
    for node in ("n1", "n2", "n3"):
        assert "etcd" in (tmp_path / "latest" / "nodes" / node / "etcd.log").read_text()
    # Other runs may share the machine: look for this run's names only.
    run_id = re.search(r"\(id ([0-9a-f]{4})\)", (tmp_path / "latest" / "harness.log").read_text())
    assert run_id is not None
    assert not [ns for ns in namespaces() if ns.startswith(f"hns-{run_id[1]}-")]
    assert not list(Path(tempfile.gettempdir()).glob(f"harness-{run_id[1]}-*"))


def _isolation_windows(
    history: list[dict[str, Any]], nodes: list[str]
) -> list[tuple[str, int, int]]:
    """(node, start ns, end ns) for every grudge that cut one node off from all others."""
    windows: list[tuple[str, int, int]] = []
    isolated: tuple[str, int] | None = None
    for op in history:
        if op["process"] != "nemesis" or op["type"] != "info":
            continue
        if op["f"] == "start" and isinstance(op["value"], dict):
            alone = [n for n in nodes if set(op["value"].get(n, [])) == set(nodes) - {n}]
            isolated = (alone[0], op["time"]) if alone else None
        elif op["f"] == "stop" and isolated is not None:
            windows.append((isolated[0], isolated[1], op["time"]))
            isolated = None
    if isolated is not None:
        windows.append((isolated[0], isolated[1], history[-1]["time"]))
    return windows


@pytest.mark.root
@pytest.mark.etcd
@pytest.mark.timeout(300)
def test_serializable_reads_on_a_cut_off_member_are_stale(tmp_path: Path) -> None:
    concurrency, nodes = 9, ["n1", "n2", "n3"]
    proc = harness(
        "test", "--backend", "netns", "--target", "etcd", "--read-mode", "serializable",
        "--nemesis", "partition-one", "--time", "15", "--nemesis-interval", "1.5",
        "--concurrency", str(concurrency), "--test-count", "3", "--seed", "21",
        "--store", str(tmp_path), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    r = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert r["valid"] is False and r["stale_reads"] > 0
    lines = (tmp_path / "latest" / "history.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    invokes = {op["index"]: op for op in history}
    windows = _isolation_windows(history, nodes)
    assert windows, "no member was ever cut off"
    # Clients are bound to members: worker slot s talks to nodes[s % 3] for the whole run.
    from_cut_off = []
    for stale in stale_reads(pair_ops(ops_from_json(history))):
        op = invokes[stale.read_index]
        if not isinstance(op["process"], int) or op["process"] >= 1000 * concurrency:
            continue
        node = nodes[(op["process"] % concurrency) % len(nodes)]
        if any(n == node and start <= op["time"] <= end for n, start, end in windows):
            from_cut_off.append(stale)
    assert from_cut_off, "no stale read came from a member while it was cut off"


def test_etcd_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    for args, words in (
        (["--read-mode", "local"], "linearizable, serializable"),
        (["--bug", "no-fsync"], "no-fsync"),
    ):
        proc = harness("test", "--target", "etcd", "--backend", "netns", *args,
                       "--store", str(tmp_path), timeout=60)  # fmt: skip
        assert proc.returncode == 254, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())
