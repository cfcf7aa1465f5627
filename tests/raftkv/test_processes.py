"""Real raftkv processes on loopback: elections, client ops, kill -9, recovery."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from raftkv.client import Client
from raftkv.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(180)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def http(cluster: LocalCluster, node: str, path: str, body: object = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{cluster.http_ports[node]}{path}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def cluster3(tmp_path: Path):  # type: ignore[no-untyped-def]
    with LocalCluster(tmp_path, 3) as cluster:
        yield cluster


def test_three_nodes_elect_and_serve_every_op(cluster3: LocalCluster) -> None:
    async def go() -> None:
        await cluster3.wait_for_leader()
        client = Client(cluster3.addrs)
        try:
            assert (await client.put("a", 1))["ok"] is True
            assert (await client.get("a"))["value"] == 1
            assert (await client.cas("a", 1, 2))["ok"] is True
            miss = await client.cas("a", 1, 3)
            assert miss["ok"] is False and miss["error"] == "cas_mismatch" and miss["value"] == 2
            assert (await client.delete("a"))["ok"] is True
            assert (await client.get("a"))["value"] is None
            for mode in ("log", "readindex", "lease", "local"):
                await client.put("m", mode)
                assert (await client.get("m", mode=mode))["value"] == mode
        finally:
            await client.close()

    run(go())


def test_http_face_speaks_the_seed_api(cluster3: LocalCluster) -> None:
    leader = run(cluster3.wait_for_leader())
    follower = next(i for i in cluster3.ids if i != leader)
    status, body = http(cluster3, leader, "/command", {"op": "set", "key": "x", "value": "1"})
    assert (status, body["ok"]) == (200, True)
    status, body = http(cluster3, leader, "/read/x")
    assert (status, body) == (200, {"ok": True, "value": "1"})
    status, body = http(cluster3, follower, "/command", {"op": "set", "key": "x", "value": "2"})
    assert body["ok"] is False and body["error"] == "not_leader"
    assert body["leader"] == leader
    assert body["leader_http"] == f"127.0.0.1:{cluster3.http_ports[leader]}"
    status, body = http(cluster3, leader, "/command", {"op": "frobnicate", "key": "x"})
    assert status == 400 and "frobnicate" in body["message"]
    status, body = http(cluster3, leader, "/command", b"{not json")
    assert status == 400 and body["error"] == "bad_request"
    status, body = http(cluster3, leader, "/read/x?mode=bogus")
    assert status == 400 and "bogus" in body["message"]
    status, body = http(cluster3, follower, "/status")
    assert status == 200 and body["role"] == "follower" and body["leader"] == leader
    assert set(body) >= {
        "id",
        "role",
        "term",
        "leader",
        "commit_index",
        "last_applied",
        "last_index",
        "snapshot_index",
        "read_mode",
    }
    assert body["raft_options"] == []


def test_raft_options_reach_the_node_and_bad_ones_are_refused(tmp_path: Path) -> None:
    words = ("check-quorum=off", "pre-vote=off", "max-append-entries=1")
    args = tuple(a for w in words for a in ("--raft-option", w))
    with LocalCluster(tmp_path / "c", 3, extra_args=args) as cluster:

        async def go() -> str:
            leader = await cluster.wait_for_leader()
            client = Client(cluster.addrs)
            try:
                for i in range(5):  # one entry per append still replicates and commits
                    assert (await client.put("k", i))["ok"] is True
                assert (await client.get("k"))["value"] == 4
            finally:
                await client.close()
            return leader

        leader = run(go())
        status, body = http(cluster, leader, "/status")
        assert status == 200 and body["raft_options"] == list(words)
    bad = LocalCluster(tmp_path / "bad", 1, extra_args=("--raft-option", "pre-vote=maybe"),
                       cluster_token=False)  # fmt: skip
    proc = subprocess.run(bad.argv("n1"), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "pre-vote takes on or off" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_garbage_on_the_wire_does_not_hurt_the_node(cluster3: LocalCluster) -> None:
    leader = run(cluster3.wait_for_leader())
    port = cluster3.peer_ports[leader]
    payloads = [
        b"\xff" * 64,
        b"\x7f\xff\xff\xff" + b"x" * 10,
        b"\x00\x00\x00\x03abc",
        b"\x00\x00\x00\x05\x81\xa5hello",
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    _, body = http(cluster3, leader, "/command", {"op": "put", "key": "k", "value": 1})
    assert body["ok"] is True
    assert cluster3.procs[leader].poll() is None


def test_cli_client_exit_codes(cluster3: LocalCluster) -> None:
    run(cluster3.wait_for_leader())
    cluster = ",".join(cluster3.addrs)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "raftkv.cli", *args, "--cluster", cluster],
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert cli("put", "k", "v1").returncode == 0
    got = cli("get", "k", "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["value"] == "v1"
    assert cli("cas", "k", "v1", "v2").returncode == 0
    miss = cli("cas", "k", "v1", "v3")
    assert miss.returncode == 1 and "cas_mismatch" in miss.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "raftkv.cli", "get", "k", "--cluster", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 254 and "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_five_nodes_survive_leader_kill(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 5) as cluster:

        async def go() -> None:
            leader = await cluster.wait_for_leader()
            client = Client(cluster.addrs, timeout_s=10)
            try:
                assert (await client.put("before", 1))["ok"] is True
                cluster.kill(leader)
                new_leader = await cluster.wait_for_leader(exclude={leader})
                assert new_leader != leader
                assert (await client.put("after", 2))["ok"] is True
                assert (await client.get("before"))["value"] == 1
                cluster.start(leader)
                await cluster.wait_for_leader()
                old = Client([cluster.addr(leader)])
                deadline = asyncio.get_running_loop().time() + 10
                while (await old.get("after", mode="follower")).get("value") != 2:
                    assert asyncio.get_running_loop().time() < deadline, "rejoined node lags"
                    await asyncio.sleep(0.1)
                await old.close()
            finally:
                await client.close()

        run(go())


async def _load(client: Client, prefix: str, acked: dict[str, int], stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        key = f"{prefix}-{i % 20}"
        resp = await client.put(key, i)
        if resp["ok"] is True:
            acked[key] = max(acked.get(key, -1), i)
        i += 1


def test_kill_every_node_mid_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    # Snapshots every 200 entries so recovery runs through snapshot + log tail.
    cluster = LocalCluster(tmp_path, 3, extra_args=("--snapshot-entries", "200"))
    rng = random.Random(7)

    async def go() -> None:
        for round_no in range(3):
            await cluster.wait_for_leader()
            acked: dict[str, int] = {}
            stop = asyncio.Event()
            clients = [Client(cluster.addrs, timeout_s=2) for _ in range(8)]
            tasks = [
                asyncio.create_task(_load(c, f"r{round_no}c{j}", acked, stop))
                for j, c in enumerate(clients)
            ]
            await asyncio.sleep(1.0 + rng.random())
            for node_id in cluster.ids:
                cluster.kill(node_id)
            stop.set()
            await asyncio.gather(*tasks)
            for c in clients:
                await c.close()
            assert acked, "no write was acknowledged before the kill"
            cluster.start()
            await cluster.wait_for_leader(timeout_s=20)
            reader = Client(cluster.addrs, timeout_s=10)
            for key, value in acked.items():
                got = await reader.get(key)
                assert got["ok"] is True, got
                # Later unacknowledged writes may also have landed: never an older one.
                assert got["value"] >= value, f"{key}: acked {value}, read {got['value']}"
            await reader.close()

    with cluster:
        run(go())


def test_corrupt_log_makes_the_node_refuse_to_start(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, 3)

    async def write_some() -> None:
        await cluster.wait_for_leader()
        client = Client(cluster.addrs)
        for i in range(50):
            assert (await client.put(f"k{i}", "x" * 100))["ok"] is True
        await client.close()

    with cluster:
        run(write_some())
    files = sorted(
        (f for f in (tmp_path / "n1").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size
    )
    biggest = files[-1]
    data = bytearray(biggest.read_bytes())
    data[len(data) // 3] ^= 0xFF
    biggest.write_bytes(bytes(data))
    proc = subprocess.run(cluster.argv("n1"), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "refusing to start" in proc.stderr and biggest.name in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nodes_prove_the_cluster_token_and_a_node_with_another_cannot_join(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, 3)
    cluster.start("n1")
    cluster.start("n2")
    stranger = tmp_path / "other-token"
    stranger.write_text("not the cluster's token\n")
    stranger.chmod(0o600)
    argv = cluster.argv("n3")
    argv[argv.index("--cluster-token") + 1] = str(stranger)
    with open(tmp_path / "n3.log", "ab") as log:
        cluster.procs["n3"] = subprocess.Popen(argv, stdout=log, stderr=log)

    async def go() -> None:
        await cluster.wait_for_leader(exclude={"n3"})
        client = Client(cluster.addrs[:2])
        assert (await client.put("k", "v"))["ok"] is True
        await client.close()
        await asyncio.sleep(1.0)
        n3 = (await cluster.statuses())["n3"]
        assert n3["ok"] is True and n3["commit_index"] == 0 and n3["leader"] is None, n3

    try:
        run(go())
    finally:
        cluster.stop()
    assert str(cluster.token_path) in " ".join(cluster.argv("n1")), "a path, not the token"
    token = cluster.token_path.read_text().strip() if cluster.token_path else ""
    assert token and token not in " ".join(cluster.argv("n1"))
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in cluster.ids}
    assert "wrong proof of the cluster token" in logs["n3"], logs["n3"]
    assert "no cluster token" not in logs["n1"] + logs["n2"]
