"""raftkv in virtual time: a client's view of `raftkv.simkv.KVCluster`.

Each test drives the cluster as the harness would (submit, advance, faults) and looks only
at the replies, as a linearizability checker does.
"""

from __future__ import annotations

from typing import Any

import pytest

from raftkv.core import BUGS, Membership
from raftkv.simkv import KVCluster, KVSimOptions

S = 1_000_000_000
MS = 1_000_000


def call(
    cluster: KVCluster, node: str, request: dict[str, Any], within_ns: int = 3 * S
) -> dict[str, Any] | None:
    """Submit `request` to `node` and run until its reply; None when none came in time."""
    rid = cluster.submit(node, request)
    end = cluster.now_ns + within_ns
    while True:
        for got, resp in cluster.advance_to_reply(end):
            if got == rid:
                return resp
        if cluster.now_ns >= end:
            return None


def leader(cluster: KVCluster, within_ns: int = 5 * S) -> str:
    end = cluster.now_ns + within_ns
    while cluster.now_ns < end:
        cluster.advance(cluster.now_ns + 50 * MS)
        node, _ = cluster.leader()
        if node is not None:
            return node
    raise AssertionError("no leader")


def put(cluster: KVCluster, node: str, key: str, value: Any, **session: Any) -> dict[str, Any]:
    resp = call(cluster, node, {"op": "put", "key": key, "value": value, **session})
    assert resp is not None
    return resp


def get(cluster: KVCluster, node: str, key: str, mode: str | None = None) -> Any:
    resp = call(cluster, node, {"op": "get", "key": key, "mode": mode})
    assert resp is not None and resp["ok"] is True, resp
    return resp["value"]


def cut_off(cluster: KVCluster, node: str) -> None:
    others = {n for n in cluster.ids if n != node}
    cluster.set_grudge({node: others, **{n: {node} for n in others}})


def restart_all(cluster: KVCluster) -> str:
    for node in cluster.ids:
        cluster.restart(node)
    return leader(cluster)


def scripted_run(seed: int) -> list[tuple[int, int, dict[str, Any]]]:
    cluster = KVCluster(seed, KVSimOptions(read_mode="lease"))
    seen: list[tuple[int, int, dict[str, Any]]] = []
    for step in range(200):
        node = cluster.ids[step % 3]
        cluster.submit(node, {"op": "put", "key": f"k{step % 4}", "value": step})
        cluster.submit(node, {"op": "get", "key": f"k{step % 4}"})
        if step == 60:
            cut_off(cluster, "n1")
        if step == 90:
            cluster.set_grudge({})
            cluster.kill("n2")
        if step == 120:
            cluster.restart("n2")
            cluster.pause("n3")
        if step == 150:
            cluster.resume("n3")
        seen.extend(
            (cluster.now_ns, rid, resp) for rid, resp in cluster.advance(cluster.now_ns + 37 * MS)
        )
    return seen


def test_same_seed_and_calls_give_the_same_replies_at_the_same_times() -> None:
    first = scripted_run(7)
    assert first == scripted_run(7)
    assert first != scripted_run(8)
    assert sum(resp["ok"] is True for _, _, resp in first) >= 50


@pytest.mark.parametrize("mode", ["log", "readindex", "lease", "local"])
def test_a_put_then_a_get_through_each_linearizable_mode(mode: str) -> None:
    cluster = KVCluster(1)
    node = leader(cluster)
    assert put(cluster, node, "x", "v1") == {"ok": True, "value": None}
    assert get(cluster, node, "x", mode) == "v1"


def test_follower_reads_are_stale_behind_a_partition() -> None:
    cluster = KVCluster(2)
    node = leader(cluster)
    follower = next(n for n in cluster.ids if n != node)
    put(cluster, node, "x", 1)
    cluster.advance(cluster.now_ns + 200 * MS)
    assert get(cluster, follower, "x", "follower") == 1
    cut_off(cluster, follower)
    assert put(cluster, node, "x", 2)["ok"] is True
    assert get(cluster, node, "x", "readindex") == 2
    assert get(cluster, follower, "x", "follower") == 1


def test_a_follower_answers_not_leader_with_a_hint() -> None:
    cluster = KVCluster(3)
    node = leader(cluster)
    follower = next(n for n in cluster.ids if n != node)
    for request in ({"op": "put", "key": "x", "value": 1}, {"op": "get", "key": "x"}):
        resp = call(cluster, follower, request)
        assert resp is not None
        assert (resp["ok"], resp["error"], resp["leader"]) == (False, "not_leader", node)


def test_a_killed_node_refuses_at_once_and_serves_again_after_restart() -> None:
    cluster = KVCluster(4)
    node = leader(cluster)
    cluster.kill(node)
    rid = cluster.submit(node, {"op": "get", "key": "x"})
    assert cluster.advance(cluster.now_ns) == [(rid, {"ok": False, "error": "refused"})]
    cluster.restart(node)
    cluster.restart(node)  # idempotent
    resp = call(cluster, node, {"op": "status"})
    assert resp is not None and resp["ok"] is True and resp["id"] == node


def test_a_paused_node_answers_only_after_resume() -> None:
    cluster = KVCluster(5)
    node = leader(cluster)
    cluster.pause(node)
    rid = cluster.submit(node, {"op": "status"})
    assert cluster.advance(cluster.now_ns + 5 * S) == []
    assert cluster.leader()[0] not in (None, node)  # the others moved on
    cluster.resume(node)
    replies = cluster.advance(cluster.now_ns + 10 * MS)
    assert [r for r, _ in replies] == [rid]
    assert replies[0][1]["role"] == "follower"  # it heard of the new term first


def test_a_write_to_a_cut_off_leader_times_out_at_the_node_deadline() -> None:
    cluster = KVCluster(6)
    node = leader(cluster)
    cut_off(cluster, node)
    rid = cluster.submit(node, {"op": "put", "key": "x", "value": 1})
    assert cluster.advance(cluster.now_ns + 1900 * MS) == []
    assert cluster.advance(cluster.now_ns + 200 * MS) == [(rid, {"ok": None, "error": "timeout"})]


def test_kill_keeps_acknowledged_writes_even_with_no_fsync() -> None:
    cluster = KVCluster(7, KVSimOptions(bugs=frozenset({"no-fsync"})))
    node = leader(cluster)
    assert put(cluster, node, "x", 1)["ok"] is True
    cluster.advance(cluster.now_ns + 600 * MS)  # a lazy flush wrote it to the OS
    for n in cluster.ids:
        cluster.kill(n)
    assert get(cluster, restart_all(cluster), "x") == 1


def test_power_loss_with_no_fsync_loses_an_acknowledged_write() -> None:
    options = KVSimOptions(bugs=frozenset({"no-fsync"}))
    for seed in range(20):
        cluster = KVCluster(seed, options)
        node = leader(cluster)
        assert put(cluster, node, "x", 1)["ok"] is True
        cluster.advance(cluster.now_ns + 600 * MS)
        lost = [cluster.power_loss(n) for n in cluster.ids]
        assert all(record["entries"] >= 2 for record in lost)  # the leader's no-op and x
        if get(cluster, restart_all(cluster), "x") is None:
            break
    else:
        raise AssertionError("no seed lost the write")
    assert seed == 0  # nothing is ever fsynced: every seed loses it


def test_power_loss_without_bugs_loses_nothing() -> None:
    cluster = KVCluster(8)
    node = leader(cluster)
    for value in range(5):
        assert put(cluster, node, "x", value)["ok"] is True
    for n in cluster.ids:
        assert cluster.power_loss(n) == {"entries": 0, "snapshots": 0}
    assert get(cluster, restart_all(cluster), "x") == 4


def lease_read_after_cut(rate: float) -> dict[str, Any] | None:
    """Cut off a leader whose clock runs at `rate`, write through the new leader, then
    read at the old one with a lease."""
    cluster = KVCluster(9, KVSimOptions(read_mode="lease"))
    old = leader(cluster)
    put(cluster, old, "x", 1)
    cluster.advance(cluster.now_ns + 200 * MS)  # heartbeats answered: a lease
    cluster.set_clock_rate(old, rate)
    cut_off(cluster, old)
    start = cluster.now_ns
    new = None
    while new is None and cluster.now_ns - start < 2 * S:
        cluster.advance(cluster.now_ns + 10 * MS)
        leaders = [n for n in cluster.ids if n != old and cluster.status(n)["role"] == "leader"]
        new = leaders[0] if leaders else None
    assert new is not None
    assert put(cluster, new, "x", 2)["ok"] is True
    return call(cluster, old, {"op": "get", "key": "x"}, within_ns=S)


def test_a_slow_clock_on_a_cut_off_leader_serves_a_stale_lease_read() -> None:
    # Its lease outlives, on its slow clock, the others' election timeout.
    assert lease_read_after_cut(0.25) == {"ok": True, "value": 1}
    # On a true clock the lease runs out first: no stale value is served.
    resp = lease_read_after_cut(1.0)
    assert resp is None or resp["ok"] is not True, resp


def test_a_retried_write_of_a_session_applies_once() -> None:
    cluster = KVCluster(10)
    node = leader(cluster)
    assert put(cluster, node, "x", 1, client="a", seq=1)["ok"] is True
    assert put(cluster, node, "x", 2, client="b", seq=1)["ok"] is True
    assert put(cluster, node, "x", 1, client="a", seq=1) == {"ok": True, "value": None}
    assert get(cluster, node, "x") == 2


def test_planted_bugs_never_stop_a_run() -> None:
    cluster = KVCluster(11, KVSimOptions(bugs=BUGS))
    for step in range(300):
        node = cluster.ids[step % 3]
        cluster.submit(node, {"op": "put", "key": "x", "value": step})
        if step % 50 == 10:
            cut_off(cluster, cluster.leader()[0] or "n1")
        if step % 50 == 30:
            cluster.set_grudge({})
            cluster.power_loss(cluster.ids[(step // 50) % 3])
        if step % 50 == 40:
            restart_all(cluster)
        cluster.advance(cluster.now_ns + 20 * MS)
    assert cluster.now_ns > 6 * S


def test_a_cluster_without_bugs_never_fails_a_node() -> None:
    assert scripted_run(12)
    cluster = KVCluster(12)
    for step in range(300):
        cluster.submit(
            cluster.ids[step % 3], {"op": "cas", "key": "x", "expected": None, "value": 1}
        )
        if step % 40 == 0:
            cluster.power_loss(cluster.ids[step % 3])
        if step % 40 == 20:
            restart_all(cluster)
        cluster.advance(cluster.now_ns + 20 * MS)
    assert cluster.failures == []


# ---- membership ---------------------------------------------------------------------------


def change(cluster: KVCluster, op: str, node_id: str, within_ns: int = 10 * S) -> dict[str, Any]:
    """Ask the leader for a change, retrying what the leader says may pass later."""
    end = cluster.now_ns + within_ns
    while True:
        resp = call(cluster, leader(cluster), {"op": "member", "change": op, "node": node_id})
        assert resp is not None
        if resp["ok"] or not (resp.get("retryable") or resp["error"] == "not_leader"):
            return resp
        assert cluster.now_ns < end, resp
        cluster.advance(cluster.now_ns + 100 * MS)


def grow(cluster: KVCluster, node: str) -> str:
    """Add the slot `node` as a learner, start it, promote it; its Raft id."""
    node_id = cluster.next_id(node)
    assert change(cluster, "add-learner", node_id)["ok"] is True
    cluster.join(node, node_id)
    assert change(cluster, "promote", node_id)["ok"] is True
    return node_id


def test_spare_slots_stay_down_until_a_change_adds_them() -> None:
    cluster = KVCluster(3, KVSimOptions(nodes=3, max_nodes=5))
    assert cluster.ids == ("n1", "n2", "n3", "n4", "n5")
    first = leader(cluster)
    assert not cluster.is_up("n4") and call(cluster, "n4", {"op": "status"}) == {
        "ok": False, "error": "refused"}  # fmt: skip
    cluster.restart("n4")  # a spare has no process to restart
    assert not cluster.is_up("n4")
    assert cluster.configuration() == Membership(("n1", "n2", "n3"))
    assert grow(cluster, "n4") == "n4"
    put(cluster, first, "k", 1)
    assert cluster.configuration() == Membership(("n1", "n2", "n3", "n4"))
    cluster.advance(cluster.now_ns + 200 * MS)  # the commit reaches the follower
    assert get(cluster, "n4", "k", mode="follower") == 1


def test_the_leader_refuses_what_the_core_refuses_and_a_follower_says_not_leader() -> None:
    cluster = KVCluster(4, KVSimOptions(nodes=3, max_nodes=4))
    first = leader(cluster)
    follower = next(n for n in cluster.first_voters if n != first)
    resp = call(cluster, follower, {"op": "member", "change": "remove", "node": first})
    assert resp is not None and resp["error"] == "not_leader" and resp["leader"] == first
    resp = change(cluster, "promote", "n1")
    assert resp == {"ok": False, "error": "not-a-learner", "retryable": False,
                    "message": "'n1' is a voter, not a learner"}  # fmt: skip
    resp = call(cluster, first, {"op": "member", "change": "grow", "node": "n4"})
    assert resp is not None and resp["error"] == "bad_request"


def test_a_removed_leader_steps_down_and_a_left_node_refuses_its_clients() -> None:
    cluster = KVCluster(5, KVSimOptions(nodes=3, max_nodes=4))
    grow(cluster, "n4")
    first = leader(cluster)
    assert change(cluster, "remove", cluster.id_of(first))["ok"] is True
    cluster.leave(first)
    second = leader(cluster)
    assert second != first and first not in cluster.configuration().voters  # type: ignore[union-attr]
    assert call(cluster, first, {"op": "get", "key": "k"}) == {"ok": False, "error": "refused"}
    cluster.restart(first)  # it left: the heal's restart does not bring it back
    assert not cluster.is_up(first)
    assert put(cluster, second, "k", 2)["ok"] is True


def test_a_slot_added_again_joins_under_a_new_id_from_the_leader_snapshot() -> None:
    cluster = KVCluster(6, KVSimOptions(nodes=3, max_nodes=4, snapshot_entries=20))
    grow(cluster, "n4")
    first = leader(cluster)
    gone = next(n for n in ("n2", "n3", "n4") if n != first)
    assert change(cluster, "remove", cluster.id_of(gone))["ok"] is True
    cluster.leave(gone)
    for i in range(50):  # past a snapshot: the new server is caught up by one
        put(cluster, leader(cluster), f"k{i % 5}", i)
    assert grow(cluster, gone) == f"{gone}-2"
    assert cluster.slot_of(f"{gone}-2") == gone and cluster.id_of(gone) == f"{gone}-2"
    assert gone in cluster.configuration().voters  # type: ignore[union-attr]
    assert cluster.status(gone)["id"] == f"{gone}-2"
    cluster.advance(cluster.now_ns + 200 * MS)
    assert get(cluster, gone, "k4", mode="follower") == 49
    assert cluster.next_id(gone) == f"{gone}-3"
    assert cluster.failures == []
