"""Scenario tests on the simulator, named after the Raft paper and the MIT 6.5840 lab tests."""

from __future__ import annotations

from dataclasses import replace

import pytest

from raftkv.core import Role
from raftkv.sim import ChaosOptions, Profile, SimOptions, Simulation, run_chaos
from raftkv.timing import RaftTiming

ET = 10  # election timeout in ticks (SimOptions default)
ELECT_TICKS = 6 * ET  # generous bound for an election to finish


def started(nodes: int = 3, seed: int = 1, **options: object) -> Simulation:
    sim = Simulation(seed, nodes, SimOptions(**options))  # type: ignore[arg-type]
    assert sim.run_until(lambda: sim.leader() is not None, ELECT_TICKS), "no initial leader"
    return sim


def commit_one(sim: Simulation, max_ticks: int = ELECT_TICKS) -> bytes:
    """Propose at the leader (re-proposing across leader changes) until it commits."""
    data = sim.new_data()
    for _ in range(max_ticks):
        leader = sim.leader()
        proposal = sim.proposals.get(data)
        if leader is not None and (proposal is None or proposal.node != leader):
            sim.propose(data, node=leader)
        sim.run(1)
        if sim.is_committed(data):
            return data
    raise AssertionError(f"{data!r} not committed within {max_ticks} ticks")


def connected_leaders(sim: Simulation, group: list[str]) -> list[str]:
    return [n for n in group if sim.is_up(n) and sim.core(n).role is Role.LEADER]


# ---- elections ---------------------------------------------------------------------------


def test_initial_election() -> None:
    sim = started()
    leader = sim.leader()
    terms = {sim.core(n).term for n in sim.ids}
    assert len(terms) == 1 and terms.pop() >= 1
    term = sim.core(leader).term  # type: ignore[arg-type]
    sim.run(2 * ET)
    assert sim.leader() == leader and sim.core(leader).term == term  # type: ignore[arg-type]
    assert len(sim.leaders()) == 1


def test_re_election() -> None:
    sim = started()
    old = sim.leader()
    assert old is not None
    sim.isolate(old)
    others = [n for n in sim.ids if n != old]
    assert sim.run_until(lambda: len(connected_leaders(sim, others)) == 1, ELECT_TICKS)
    new = connected_leaders(sim, others)[0]
    new_term = sim.core(new).term
    # The old leader rejoins without disrupting the new one.
    sim.heal()
    sim.run(3 * ET)
    assert sim.leaders() == [new] and sim.core(new).term == new_term
    assert sim.core(old).role is Role.FOLLOWER and sim.core(old).leader == new
    # Two of three gone: nobody can lead.
    sim.partition([new], [others[0] if others[0] != new else others[1]], [old])
    sim.run(3 * ET)
    assert sim.leaders() == []
    # A quorum back: a leader again.
    sim.heal()
    assert sim.run_until(lambda: sim.leader() is not None, ELECT_TICKS)


def test_many_elections() -> None:
    sim = started(nodes=7, seed=3)
    for _ in range(10):
        gone = sim.rng.sample(sim.ids, 3)
        majority = [n for n in sim.ids if n not in gone]
        sim.partition(majority, *([g] for g in gone))
        ok = sim.run_until(
            lambda majority=majority: len(connected_leaders(sim, majority)) == 1, ELECT_TICKS
        )
        assert ok, f"no single leader among {majority}"
        sim.run(ET)
        assert len(connected_leaders(sim, majority)) == 1
        sim.heal()
    commit_one(sim)


# ---- agreement ---------------------------------------------------------------------------


def test_basic_agree() -> None:
    sim = started()
    sim.run(3)
    assert sim.max_commit_index == 1  # only the leader's NOOP
    indexes = []
    for _ in range(3):
        proposal = sim.propose()
        assert proposal is not None
        indexes.append(proposal.index)
        sim.run(3)
    assert indexes == [2, 3, 4]
    sim.run(2)
    assert {sim.applied_index(n) for n in sim.ids} == {4}
    assert len({sim.digest(n) for n in sim.ids}) == 1


def test_count_message_economy() -> None:
    # A FIFO network with a constant one-tick delay.
    sim = Simulation(1, 3, SimOptions(reorder=False, min_delay_ticks=1, max_delay_ticks=1))
    assert sim.run_until(lambda: sim.leader() is not None, ELECT_TICKS)
    assert sim.stats["sent"] <= 30, dict(sim.stats)
    sim.run(3)
    sim.stats.clear()
    for _ in range(11):
        assert sim.propose(b"x" * 100 + sim.new_data()) is not None
    sim.run(3)
    assert sim.max_commit_index == 12
    # Each entry is sent once per follower, in at most one append per proposal.
    assert sim.stats["APPEND"] <= 2 * 11 and sim.stats["entries_sent"] == 22, dict(sim.stats)
    assert sim.stats["APPEND_RESP_REJECT"] == 0
    sim.stats.clear()
    sim.run(ET)
    # Idle: heartbeats and their answers only, one round per tick.
    assert sim.stats["sent"] <= 2 * 2 * ET and sim.stats["APPEND"] == 0, dict(sim.stats)


def test_follower_failure() -> None:
    sim = started()
    commit_one(sim)
    leader = sim.leader()
    followers = [n for n in sim.ids if n != leader]
    sim.crash(followers[0])
    commit_one(sim)
    sim.crash(followers[1])
    proposal = sim.propose(node=leader)
    assert proposal is not None
    sim.run(5 * ET)
    assert not sim.is_committed(proposal.data)


def test_leader_failure() -> None:
    sim = started()
    commit_one(sim)
    first = sim.leader()
    assert first is not None
    sim.crash(first)
    commit_one(sim)
    second = sim.leader()
    assert second is not None and second != first
    sim.crash(second)
    proposal = sim.propose(node=second) if sim.is_up(second) else None
    data = sim.new_data()
    for nid in sim.up_nodes():
        sim.propose(data, node=nid)
    sim.run(5 * ET)
    assert not sim.is_committed(data) and proposal is None


def test_fail_agree() -> None:
    sim = started()
    leader = sim.leader()
    follower = next(n for n in sim.ids if n != leader)
    sim.isolate(follower)
    for _ in range(4):
        commit_one(sim)
    sim.heal()
    target = sim.max_commit_index
    assert sim.run_until(lambda: sim.applied_index(follower) >= target, ELECT_TICKS)
    commit_one(sim)


def test_fail_no_agree() -> None:
    sim = started(nodes=5)
    leader = sim.leader()
    assert leader is not None
    followers = [n for n in sim.ids if n != leader]
    sim.partition([leader, followers[0]], [followers[1]], [followers[2]], [followers[3]])
    proposal = sim.propose(node=leader)
    assert proposal is not None and proposal.index == 2
    sim.run(5 * ET)
    assert not sim.is_committed(proposal.data)
    sim.heal()
    commit_one(sim, 10 * ET)
    entry = sim.committed_entry(2)
    assert entry is not None  # index 2 now holds whatever the new majority agreed on


def test_concurrent_starts() -> None:
    sim = started()
    proposals = [sim.propose() for _ in range(5)]
    assert all(p is not None for p in proposals)
    assert len({p.term for p in proposals if p}) == 1
    assert sorted(p.index for p in proposals if p) == [2, 3, 4, 5, 6]
    sim.run(5)
    assert all(sim.is_committed(p.data) for p in proposals if p)


def test_rejoin_discards_the_old_leaders_uncommitted_entries() -> None:
    sim = started()
    commit_one(sim)
    old = sim.leader()
    assert old is not None
    sim.isolate(old)
    orphans = [sim.propose(node=old) for _ in range(3)]
    others = [n for n in sim.ids if n != old]
    assert sim.run_until(lambda: len(connected_leaders(sim, others)) == 1, ELECT_TICKS)
    commit_one(sim)
    sim.heal()
    commit_one(sim)
    sim.run(ET)
    assert not any(sim.is_committed(p.data) for p in orphans if p)
    assert len({sim.digest(n) for n in sim.ids}) == 1


def test_backup_fast_backtracking() -> None:
    sim = started(nodes=5, seed=2, max_entries_per_append=8)
    commit_one(sim)
    leader = sim.leader()
    assert leader is not None
    f = [n for n in sim.ids if n != leader]
    # The leader and one follower accumulate 50 uncommitted entries.
    sim.partition([leader, f[0]], f[1:])
    for _ in range(50):
        sim.propose(node=leader)
    sim.run(2)
    # The other three elect a leader and commit 50 entries.
    assert sim.run_until(lambda: len(connected_leaders(sim, f[1:])) == 1, ELECT_TICKS)
    for _ in range(50):
        sim.propose()
    sim.run(5)
    # Its leader and one follower split off and accumulate 50 more uncommitted entries.
    second = connected_leaders(sim, f[1:])[0]
    other = next(n for n in f[1:] if n != second)
    sim.partition([second, other], [n for n in f[1:] if n not in (second, other)])
    for _ in range(50):
        sim.propose(node=second)
    sim.run(2)
    # The first group comes back and commits 50 more with the third group's node.
    third = next(n for n in f[1:] if n not in (second, other))
    sim.partition([leader, f[0], third], [second, other])
    assert sim.run_until(lambda: len(connected_leaders(sim, [leader, f[0], third])) == 1, 100)
    for _ in range(50):
        sim.propose()
    sim.run(5)
    sim.heal()
    sim.stats.clear()
    commit_one(sim, 10 * ET)
    target = sim.max_commit_index
    assert sim.run_until(lambda: min(sim.applied_index(n) for n in sim.ids) >= target, 5 * ET)
    # Each divergent follower needs about one rejection per conflicting term, not per entry.
    assert sim.stats["APPEND_RESP_REJECT"] <= 12, dict(sim.stats)
    assert len({sim.digest(n) for n in sim.ids}) == 1


# ---- persistence -------------------------------------------------------------------------


def test_persist1_committed_entries_survive_restarts() -> None:
    sim = started()
    data = [commit_one(sim) for _ in range(3)]
    for nid in sim.ids:
        sim.crash(nid)
    for nid in sim.ids:
        sim.restart(nid)
    commit_one(sim)
    leader = sim.leader()
    assert leader is not None
    sim.crash(leader)
    sim.restart(leader)
    commit_one(sim)
    follower = next(n for n in sim.ids if n != sim.leader())
    sim.crash(follower)
    sim.restart(follower)
    commit_one(sim)
    assert all(sim.is_committed(d) for d in data)
    sim.run(3)
    assert len({sim.digest(n) for n in sim.ids}) == 1


def test_persist2_only_an_up_to_date_node_can_win() -> None:
    sim = started(nodes=5, seed=4)
    for _ in range(5):
        commit_one(sim, 10 * ET)
        leader = sim.leader()
        assert leader is not None
        stale = [n for n in sim.ids if n != leader][:2]
        for nid in stale:
            sim.crash(nid)
        commit_one(sim, 10 * ET)
        fresh = [n for n in sim.ids if n not in stale]
        for nid in fresh:
            sim.crash(nid)
        for nid in stale:
            sim.restart(nid)
        sim.restart(fresh[0])
        commit_one(sim, 20 * ET)
        assert sim.leader() == fresh[0]
        for nid in sim.ids:
            sim.restart(nid)


def test_persist3_partitioned_leader_and_crashed_follower() -> None:
    sim = started()
    commit_one(sim)
    leader = sim.leader()
    assert leader is not None
    f1, f2 = (n for n in sim.ids if n != leader)
    sim.isolate(f2)
    commit_one(sim)
    sim.crash(leader)
    sim.crash(f1)
    sim.heal()
    sim.restart(f1)
    commit_one(sim)
    sim.restart(leader)
    commit_one(sim)
    sim.run(3)
    assert len({sim.digest(n) for n in sim.ids}) == 1


# ---- randomized lab tests ----------------------------------------------------------------

FIGURE8 = Profile(
    5,
    SimOptions(max_delay_ticks=2),
    ChaosOptions(
        ticks=400, crash_rate=0.0, leader_crash_rate=0.1, restart_rate=0.3, partition_rate=0.0
    ),
)
FIGURE8_UNRELIABLE = Profile(
    5,
    SimOptions(drop_rate=0.1, duplicate_rate=0.05, max_delay_ticks=5),
    ChaosOptions(ticks=400, crash_rate=0.0, leader_isolate_rate=0.1, heal_rate=0.1),
)
RELIABLE_CHURN = Profile(
    5,
    SimOptions(),
    ChaosOptions(ticks=400, propose_rate=1.0, crash_rate=0.05, restart_rate=0.2),
)
UNRELIABLE_CHURN = Profile(
    5,
    SimOptions(drop_rate=0.1, duplicate_rate=0.1, max_delay_ticks=3),
    ChaosOptions(ticks=400, propose_rate=1.0, crash_rate=0.05, partition_rate=0.05),
)


@pytest.mark.parametrize(
    "profile",
    [FIGURE8, FIGURE8_UNRELIABLE, RELIABLE_CHURN, UNRELIABLE_CHURN],
    ids=["figure8", "figure8_unreliable", "reliable_churn", "unreliable_churn"],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lab_randomized(profile: Profile, seed: int) -> None:
    report = run_chaos(seed, profile)
    # Acknowledged writes are committed (run_chaos checks), and the run did real work.
    assert report.leaders >= 2 and report.acked_proposals >= 20, report


def test_unreliable_agree() -> None:
    sim = started(nodes=5, drop_rate=0.1, duplicate_rate=0.1, max_delay_ticks=3)
    data = []
    for _ in range(20):
        data += [p.data for p in (sim.propose() for _ in range(4)) if p]
        sim.run(2)
    sim.options = replace(sim.options, drop_rate=0.0)
    commit_one(sim, 10 * ET)
    assert len(data) >= 60 and all(sim.is_committed(d) for d in data)


# ---- snapshots ---------------------------------------------------------------------------


def test_snapshot_basic_keeps_the_log_short() -> None:
    sim = started(snapshot_every_entries=10)
    for _ in range(60):
        sim.propose()
        sim.run(1)
    sim.run(5)
    assert sim.stats["snapshots"] >= 3 * 5
    for nid in sim.ids:
        core = sim.core(nid)
        assert core.last_index - core.snapshot_index <= 12
        assert len(sim.disk(nid)[2]) <= 12


@pytest.mark.parametrize("crash", [False, True], ids=["install", "install_crash"])
def test_snapshot_install(crash: bool) -> None:
    sim = started(snapshot_every_entries=10, drop_rate=0.05 if crash else 0.0)
    leader = sim.leader()
    lagging = next(n for n in sim.ids if n != leader)
    if crash:
        sim.crash(lagging)
    else:
        sim.isolate(lagging)
    for _ in range(40):
        commit_one(sim)
    sim.heal()
    sim.restart(lagging)
    target = sim.max_commit_index
    assert sim.run_until(lambda: sim.applied_index(lagging) >= target, 10 * ET)
    assert sim.stats["SNAPSHOT"] >= 1
    assert sim.core(lagging).snapshot_index >= 30
    assert sim.digest(lagging) == sim.digest(sim.leader())  # type: ignore[arg-type]


def test_snapshot_all_crash_next_index_never_decreases() -> None:
    sim = started(snapshot_every_entries=5)
    for _ in range(5):
        for _ in range(7):
            commit_one(sim)
        before = {n: sim.core(n).last_index for n in sim.ids}
        for nid in sim.ids:
            sim.crash(nid)
        for nid in sim.ids:
            sim.restart(nid)
        assert all(sim.core(n).last_index >= before[n] for n in sim.ids)
        commit_one(sim)


def test_snapshot_init_survives_later_persists() -> None:
    sim = started(snapshot_every_entries=5)
    for _ in range(12):
        commit_one(sim)
    snaps = {n: sim.core(n).snapshot_index for n in sim.ids}
    assert min(snaps.values()) >= 5
    for nid in sim.ids:
        sim.crash(nid)
        sim.restart(nid)
    commit_one(sim)
    for nid in sim.ids:
        sim.crash(nid)
        sim.restart(nid)
    assert all(sim.core(n).snapshot_index >= snaps[n] for n in sim.ids)
    commit_one(sim)


# ---- leadership transfer, reads, PreVote, CheckQuorum ----------------------------------------


def test_leadership_transfer_to_a_lagging_follower() -> None:
    sim = started()
    leader = sim.leader()
    assert leader is not None
    target = next(n for n in sim.ids if n != leader)
    sim.isolate(target)
    for _ in range(5):
        commit_one(sim)
    sim.heal()
    term = sim.core(leader).term
    assert sim.transfer(target)
    assert sim.propose(node=leader) is None  # proposals refused during the transfer
    assert sim.run_until(lambda: sim.leader() == target, 3 * ET)
    assert sim.core(target).term == term + 1
    commit_one(sim)


def test_read_index_read_is_served_on_a_healthy_leader() -> None:
    sim = started()
    commit_one(sim)
    request = sim.read()
    assert request is not None
    sim.run(2)
    record = sim.reads[request]
    assert record.status == "ok" and record.index == sim.max_commit_index


def test_partitioned_old_leader_cannot_complete_a_read_index_read() -> None:
    sim = started()
    commit_one(sim)
    old = sim.leader()
    assert old is not None
    sim.isolate(old)
    request = sim.read(node=old)
    assert request is not None
    sim.run(ET // 2)
    assert sim.reads[request].status == "pending"
    others = [n for n in sim.ids if n != old]
    assert sim.run_until(lambda: len(connected_leaders(sim, others)) == 1, ELECT_TICKS)
    commit_one(sim)
    sim.run(2 * ET)
    assert sim.reads[request].status == "dropped"  # the old leader stepped down


def test_lease_read_is_immediate_with_quorum_contact() -> None:
    sim = started()
    commit_one(sim)
    sim.run(2)
    beats = sim.stats["HEARTBEAT"]
    request = sim.read(lease=True)
    assert request is not None
    assert sim.reads[request].status == "ok"  # served before any time passed
    assert sim.stats["HEARTBEAT"] == beats


def test_lease_read_falls_back_without_quorum_contact() -> None:
    sim = started()
    commit_one(sim)
    old = sim.leader()
    assert old is not None
    sim.isolate(old)
    sim.run(sim.options.timing.lease_ticks)
    assert sim.core(old).role is Role.LEADER
    request = sim.read(node=old, lease=True)
    assert request is not None
    sim.run(2)
    assert sim.reads[request].status == "pending"
    sim.run(3 * ET)
    assert sim.reads[request].status == "dropped"


def test_stale_leader_read_bug_serves_a_stale_lease_read() -> None:
    sim = started(bugs=frozenset({"stale-leader-read"}))
    commit_one(sim)
    old = sim.leader()
    assert old is not None
    sim.isolate(old)
    others = [n for n in sim.ids if n != old]
    assert sim.run_until(lambda: len(connected_leaders(sim, others)) == 1, ELECT_TICKS)
    commit_one(sim)
    with pytest.raises(AssertionError, match="read safety"):
        sim.read(node=old, lease=True)


@pytest.mark.parametrize("pre_vote", [True, False])
def test_pre_vote_rejoining_node_does_not_disrupt_the_leader(pre_vote: bool) -> None:
    sim = started(pre_vote=pre_vote, timing=RaftTiming(check_quorum=pre_vote))
    leader = sim.leader()
    assert leader is not None
    term = sim.core(leader).term
    loner = next(n for n in sim.ids if n != leader)
    sim.isolate(loner)
    sim.run(10 * ET)
    sim.heal()
    sim.run(3 * ET)
    disrupted = sim.core(sim.leader() or leader).term != term  # type: ignore[arg-type]
    # Without PreVote (and CheckQuorum) the rejoining node's inflated term forces an election.
    assert disrupted is not pre_vote


@pytest.mark.parametrize("check_quorum", [True, False])
def test_check_quorum_isolated_leader_steps_down(check_quorum: bool) -> None:
    sim = started(timing=RaftTiming(check_quorum=check_quorum))
    leader = sim.leader()
    assert leader is not None
    sim.isolate(leader)
    sim.run(3 * ET)
    assert (sim.core(leader).role is Role.LEADER) is not check_quorum
