"""Fault kinds with fakes: what each does, what it records, and parse_nemesis."""

from __future__ import annotations

import json
import random

import pytest

from nemesis import iptables
from nemesis.fakes import FakeProcessControl, FakeRemote
from nemesis.faults import (
    KINDS,
    NEEDS_SETUP,
    SIM_ONLY,
    FaultEvent,
    NemesisContext,
    parse_nemesis,
)
from nemesis.remote import RemoteError


def make_ctx(n: int = 5, seed: int = 1, leader: str | None = None) -> NemesisContext:
    nodes = [f"n{i}" for i in range(1, n + 1)]
    remotes = {node: FakeRemote(node, f"10.9.0.{10 + i}") for i, node in enumerate(nodes, 1)}
    return NemesisContext(
        remotes=dict(remotes),
        procs=FakeProcessControl(nodes),
        rng=random.Random(seed),
        leader=lambda: leader,
    )


def fake(ctx: NemesisContext, node: str) -> FakeRemote:
    remote = ctx.remotes[node]
    assert isinstance(remote, FakeRemote)
    return remote


def address_of(ctx: NemesisContext) -> dict[str, str]:
    return {fake(ctx, n).address: n for n in ctx.nodes}


def firewall(ctx: NemesisContext) -> dict[str, set[str]]:
    """The grudge the fake firewalls enforce: node -> nodes whose packets it drops."""
    names = address_of(ctx)
    return {n: {names[a] for a in fake(ctx, n).dropped_sources()} for n in ctx.nodes}


PARTITIONS = [k for k in KINDS if k.startswith("partition-")]


@pytest.mark.parametrize("kind", PARTITIONS)
def test_partition_enforces_the_recorded_grudge_and_stop_heals(kind: str) -> None:
    ctx = make_ctx(leader="n3")
    [nemesis] = parse_nemesis(kind, 5)
    event = nemesis.start(ctx)
    assert event.f == "start" and event.fault == kind and event.error is None
    assert isinstance(event.value, dict)
    assert firewall(ctx) == {n: set(event.value[n]) for n in ctx.nodes}
    assert any(event.value.values())
    json.dumps(event.as_op())
    stopped = nemesis.stop(ctx)
    assert stopped == FaultEvent("stop", kind, "network-healed")
    assert all(not dropped for dropped in firewall(ctx).values())
    nemesis.stop(ctx)


def test_partition_leader_isolates_the_leader_or_records_that_it_could_not() -> None:
    ctx = make_ctx(leader="n4")
    [nemesis] = parse_nemesis("partition-leader", 5)
    event = nemesis.start(ctx)
    assert isinstance(event.value, dict) and event.value["n4"] == ["n1", "n2", "n3", "n5"]
    nobody = make_ctx(leader=None)
    event = nemesis.start(nobody)
    assert event.value is None and event.error and "leader unknown" in event.error
    assert all(not dropped for dropped in firewall(nobody).values())


def test_kill_targets_one_a_minority_a_majority_all_or_the_leader_and_stop_restarts() -> None:
    chosen = []
    for seed in range(60):
        ctx = make_ctx(seed=seed, leader="n2")
        procs = ctx.procs
        assert isinstance(procs, FakeProcessControl)
        [kill] = parse_nemesis("kill", 5)
        old_pids = dict(procs.pids)
        event = kill.start(ctx)
        assert isinstance(event.value, list)
        targets = event.value
        assert len(targets) in (1, 2, 3, 5)
        assert {n for n, s in procs.state.items() if s == "killed"} == set(targets)
        stop = kill.stop(ctx)
        assert stop.value == targets
        assert set(procs.state.values()) == {"running"}
        assert all(procs.pids[n] != old_pids[n] for n in targets)
        assert kill.stop(ctx).value == []
        chosen.append(tuple(targets))
    assert ("n2",) in chosen and any(len(t) == 2 for t in chosen)
    assert any(len(t) == 3 for t in chosen) and ("n1", "n2", "n3", "n4", "n5") in chosen


def test_pause_stops_and_resumes() -> None:
    ctx = make_ctx(n=3)
    procs = ctx.procs
    assert isinstance(procs, FakeProcessControl)
    [pause] = parse_nemesis("pause", 3)
    event = pause.start(ctx)
    assert isinstance(event.value, list) and len(event.value) == 1
    assert procs.state[event.value[0]] == "paused"
    assert pause.stop(ctx).value == event.value
    assert set(procs.state.values()) == {"running"}


def test_kill_works_on_a_single_node_cluster() -> None:
    ctx = make_ctx(n=1)
    [kill] = parse_nemesis("kill", 1)
    assert kill.start(ctx).value == ["n1"]


def test_a_failing_node_raises_after_the_others_are_done() -> None:
    ctx = make_ctx(n=3)
    fake(ctx, "n2").add_script(["iptables"], returncode=4, stderr="boom")
    [nemesis] = parse_nemesis("partition-one", 3)
    with pytest.raises(RemoteError, match="n2"):
        nemesis.start(ctx)
    assert ctx.network_faulted, "a half-applied partition is still healed later"


def test_parse_combines_dedups_and_expands_all() -> None:
    assert [n.name for n in parse_nemesis("partition", 3)] == ["partition-halves"]
    assert [n.name for n in parse_nemesis(" kill , pause,kill ", 3)] == ["kill", "pause"]
    plain = [k for k in KINDS if k not in NEEDS_SETUP and k not in SIM_ONLY]
    assert [n.name for n in parse_nemesis("all", 5)] == plain
    with_clock = parse_nemesis("all", 5, can_set_up=["clock"])
    assert [n.name for n in with_clock] == [k for k in KINDS if k in plain or k == "clock"]
    simulated = parse_nemesis("all", 5, can_set_up=SIM_ONLY)
    assert [n.name for n in simulated] == [k for k in KINDS if k in plain or k in SIM_ONLY]
    with pytest.raises(ValueError, match="use --backend sim"):
        parse_nemesis("kill,election-crash", 3)
    assert [n.name for n in parse_nemesis("all", 1)] == ["kill", "pause"]
    two = [n.name for n in parse_nemesis("all", 2)]
    assert "partition-bridge" not in two and "partition-halves" in two
    assert parse_nemesis("none", 3) == []
    assert [n.name for n in parse_nemesis("Partition-Bridge", 3)] == ["partition-bridge"]


@pytest.mark.parametrize(
    ("spec", "nodes", "message"),
    [
        ("partiton", 3, "unknown nemesis 'partiton'; known: partition-halves"),
        ("", 3, "empty nemesis name"),
        ("kill,", 3, "empty nemesis name"),
        ("none,kill", 3, "cannot be combined"),
        ("partition", 1, "needs at least 2 nodes; the cluster has 1"),
        ("partition-majorities-ring", 2, "needs at least 3 nodes"),
        ("partition-bridge", 2, "needs at least 3 nodes"),
        ("kill", 0, "at least 1 node"),
    ],
)
def test_parse_rejects_bad_specs_clearly(spec: str, nodes: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_nemesis(spec, nodes)


def test_context_rejects_a_remote_under_the_wrong_name() -> None:
    with pytest.raises(ValueError, match="says it is"):
        NemesisContext(
            remotes={"n1": FakeRemote("n2", "10.9.0.12")},
            procs=FakeProcessControl(["n1"]),
            rng=random.Random(0),
        )


def test_partitions_use_only_our_chain() -> None:
    ctx = make_ctx(n=3)
    for nemesis in parse_nemesis("all", 3):
        nemesis.start(ctx)
        nemesis.stop(ctx)
    for node in ctx.nodes:
        for argv in fake(ctx, node).calls:
            if argv[3] in ("-F", "-A", "-N", "-X"):
                assert argv[4] == iptables.CHAIN
