"""Membership changes of real raftkv processes on loopback: `serve --join`, promote, remove
(the leader too), the refusals, `raftkv member`, and restarts after changes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from raftkv.client import Client
from raftkv.localcluster import LocalCluster
from raftkv.members import claim_data_dir
from raftkv.storage import StorageError

pytestmark = pytest.mark.timeout(180)


def http(cluster: LocalCluster, node: str, path: str, body: object = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{cluster.http_ports[node]}{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def raftkv(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "raftkv.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


async def change(client: Client, op: str, node: str, **kw: str) -> dict[str, Any]:
    """A change retried while the refusal says it may pass later (a learner catching up)."""
    deadline = time.monotonic() + 30
    while True:
        resp = await client.change_member(op, node, kw.get("address"), kw.get("http"))
        if not resp.get("retryable") or time.monotonic() > deadline:
            return resp
        await asyncio.sleep(0.1)


async def wait_for(predicate: Any, what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await predicate()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def test_a_joined_learner_catches_up_by_snapshot_is_promoted_and_the_leader_can_leave(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, 3, spares=1, extra_args=("--snapshot-entries", "100"))
    cluster.start()

    async def go() -> None:
        leader = await cluster.wait_for_leader()
        client = Client(cluster.addrs[:3])
        try:
            for i in range(300):
                assert (await client.put(f"k{i}", i))["ok"] is True
            cluster.start("n4")  # serve --join: asks the leader to add it as a learner

            async def n4_caught_up() -> bool:
                status = (await cluster.statuses())["n4"]
                return bool(status.get("ok")) and status.get("last_applied", 0) >= 300

            await wait_for(n4_caught_up, "n4 applied the writes")
            members = await client.members(cluster.addr(leader))
            assert members["learners"] == ["n4"] and len(members["voters"]) == 3
            assert members["members"]["n4"]["address"] == cluster.addr("n4")
            status = (await cluster.statuses())["n4"]
            assert status["snapshot_index"] > 0  # it came by snapshot, not from index 1
            promoted = await change(client, "promote", "n4")
            assert promoted["ok"] is True and "n4" in promoted["voters"], promoted
            follower = next(n for n in cluster.initial if n != leader)
            gone = await change(client, "remove", follower)
            assert gone["ok"] is True and follower not in gone["voters"], gone
            cluster.kill(follower)
            gone = await change(client, "remove", leader)
            assert gone["ok"] is True and leader not in gone["voters"], gone
            new_leader = await cluster.wait_for_leader(exclude={leader, follower})
            assert new_leader not in (leader, follower)
            cluster.kill(leader, signal.SIGTERM)
            await asyncio.sleep(0.2)  # the client sees its connection to it close
            for i in range(300, 320):
                put = await client.put(f"k{i}", i)
                assert put["ok"] is True, put
            for i in range(320):
                assert (await client.get(f"k{i}"))["value"] == i
            left = sorted({"n1", "n2", "n3", "n4"} - {leader, follower})
            final = await client.members(cluster.addr(new_leader))
            assert (final["voters"], final["learners"]) == (left, [])
        finally:
            await client.close()
        # Every survivor, restarted, comes back with the configuration from its own disk.
        for node in left:
            cluster.kill(node)
        for node in left:
            cluster.start(node)
        await cluster.wait_for_leader(exclude={leader, follower})
        for node in left:
            status, body = http(cluster, node, "/members")
            assert status == 200 and (body["voters"], body["learners"]) == (left, []), body
        client = Client([cluster.addr(n) for n in left])
        try:
            assert (await client.get("k319"))["value"] == 319
        finally:
            await client.close()

    try:
        asyncio.run(go())
    finally:
        cluster.stop()


def test_bad_changes_get_clear_refusals_and_a_follower_names_the_leader(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 3, spares=2) as cluster:

        async def go() -> None:
            leader = await cluster.wait_for_leader()
            follower = next(n for n in cluster.initial if n != leader)
            status, body = http(cluster, leader, "/members", {"op": "remove", "id": "n9"})
            assert status == 409 and body["reason"] == "unknown-node", body
            assert body["retryable"] is False and "'n9' is not a member" in body["message"]
            status, body = http(cluster, follower, "/members", {"op": "remove", "id": "n1"})
            assert body["error"] == "not_leader" and body["leader"] == leader, body
            assert body["leader_http"] == f"127.0.0.1:{cluster.http_ports[leader]}"
            status, body = http(cluster, leader, "/members", {"op": "add-learner", "id": "n4"})
            assert status == 400 and "address" in body["message"], body
            status, body = http(cluster, leader, "/members", {"op": "evict", "id": "n4"})
            assert status == 400 and "evict" in body["message"], body
            # Two changes at once: the second is refused while the first is uncommitted.
            pending = None
            for attempt in range(20):
                first, second = await asyncio.gather(*(
                    asyncio.to_thread(http, cluster, leader, "/members", {
                        "op": "add-learner", "id": f"x{attempt}{i}", "address": "127.0.0.1:9",
                    }) for i in range(2)
                ))  # fmt: skip
                for code, answer in (first, second):
                    if answer.get("reason") == "pending":
                        pending = code, answer
                for name in (f"x{attempt}0", f"x{attempt}1"):
                    http(cluster, leader, "/members", {"op": "remove", "id": name})
                if pending:
                    break
            assert pending is not None, "no change was ever refused as pending"
            assert pending[0] == 409 and pending[1]["retryable"] is True

        asyncio.run(go())


def test_the_last_voter_cannot_leave(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 1) as cluster:
        asyncio.run(cluster.wait_for_leader())
        status, body = http(cluster, "n1", "/members", {"op": "remove", "id": "n1"})
        assert status == 409 and body["reason"] == "last-voter" and not body["retryable"]


def test_raftkv_member_commands_end_to_end(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 3, spares=1) as cluster:
        leader = asyncio.run(cluster.wait_for_leader())
        some = cluster.addr(next(n for n in cluster.initial if n != leader))
        n4, n4_http = cluster.addr("n4"), f"127.0.0.1:{cluster.http_ports['n4']}"
        added = raftkv("member", "add", "n4", n4, "--http", n4_http, "--cluster", some)
        assert added.returncode == 0 and "add-learner n4: done" in added.stdout, added
        cluster.start("n4")  # --join finds itself added already
        listed = raftkv("member", "list", "--cluster", some)
        assert listed.returncode == 0, listed
        assert f"n4 learner {n4} http {n4_http}" in listed.stdout
        assert f"{leader} voter {cluster.addr(leader)}" in listed.stdout
        deadline = time.monotonic() + 30
        while True:
            promoted = raftkv("member", "promote", "n4", "--cluster", some)
            if promoted.returncode == 0 or time.monotonic() > deadline:
                break
            assert "retryable" in promoted.stderr, promoted
            time.sleep(0.2)
        assert promoted.returncode == 0, promoted
        refused = raftkv("member", "promote", "n4", "--cluster", some)
        assert refused.returncode == 1 and "refused (not-a-learner)" in refused.stderr
        removed = raftkv("member", "remove", "n4", "--cluster", some, "--json")
        assert removed.returncode == 0 and "n4" not in json.loads(removed.stdout)["voters"]
        unknown = raftkv("member", "remove", "n4", "--cluster", some)
        assert unknown.returncode == 1 and "unknown-node" in unknown.stderr
        usage = raftkv("member", "add", "n5", "nowhere", "--cluster", some)
        assert usage.returncode == 254


def test_join_refuses_a_data_dir_with_another_nodes_state(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 1) as cluster:
        asyncio.run(cluster.wait_for_leader())
    data = tmp_path / "n1"
    with pytest.raises(StorageError, match="--join needs an empty data directory"):
        claim_data_dir(data, "n1", join=True, has_state=True)
    with pytest.raises(StorageError, match="holds the state of node 'n1', not 'n2'"):
        claim_data_dir(data, "n2", join=False, has_state=True)
    proc = raftkv(
        "serve", "--id", "n1", "--peers", "n1=127.0.0.1:1", "--data-dir", str(data),
        "--join", "127.0.0.1:2",
    )  # fmt: skip
    assert proc.returncode == 1 and "--join needs an empty data directory" in proc.stderr
    # A node that joined comes back from its own disk with the same --join argv.
    joined = tmp_path / "n9"
    joined.mkdir()
    assert claim_data_dir(joined, "n9", join=True, has_state=False) is True
    assert claim_data_dir(joined, "n9", join=True, has_state=True) is True
    assert claim_data_dir(joined, "n9", join=False, has_state=True) is True
