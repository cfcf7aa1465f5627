"""Membership changes: one server at a time through the log (the Raft dissertation, ch. 4).

Unit tests drive one core with hand-built messages; scenario tests drive the simulator,
whose invariants (one leader per term, no two disjoint majorities, ...) run all along.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from core_driver import Driver

from raftkv.core import (
    ConfChangeError,
    ConfChangeOp,
    Config,
    Membership,
    NotLeader,
    Raft,
    Role,
    changed_membership,
)
from raftkv.sim import InvariantViolation, SimOptions, Simulation, run_chaos
from raftkv.types import (
    ConfChange,
    Entry,
    EntryKind,
    HardState,
    MsgType,
    Snapshot,
)

ADD, PROMOTE, REMOVE = ConfChangeOp.ADD_LEARNER, ConfChangeOp.PROMOTE, ConfChangeOp.REMOVE
PEERS3 = ("a", "b", "c")
ET = 10  # election timeout in ticks (the default)
ELECT_TICKS = 6 * ET


# ---- one core, hand-built messages ----------------------------------------------------------


def node(
    node_id: str = "a",
    peers: Sequence[str] = PEERS3,
    entries: Sequence[Entry] = (),
    snapshot: Snapshot | None = None,
    hard_state: HardState | None = None,
    **config: Any,
) -> Driver:
    cfg = Config(id=node_id, peers=tuple(peers), **config)
    return Driver(Raft(cfg, random.Random(7), hard_state or HardState(), snapshot, entries))


def elected(peers: Sequence[str] = PEERS3, commit: bool = True) -> Driver:
    """Node "a" as leader of term 2 (pre-vote, then vote, granted by "b"); with `commit`,
    its no-op committed: it may change the configuration."""
    d = node(peers=peers, hard_state=HardState(term=1))
    d.ticks(2 * ET)
    if len(peers) > 1:
        d.step(MsgType.PRE_VOTE_RESP, "b", term=2)
        d.step(MsgType.VOTE_RESP, "b", term=2)
    assert d.core.role is Role.LEADER and d.core.term == 2
    if commit:
        d.ack(*(p for p in peers if p != "a"))
        assert d.core.commit_index == d.core.last_index
    return d


def conf_entry(term: int, index: int, op: ConfChangeOp, node_id: str, voters: Sequence[str],
               learners: Sequence[str] = ()) -> Entry:  # fmt: skip
    change = ConfChange(op, node_id, tuple(voters), tuple(learners))
    return Entry(term, index, EntryKind.CONF_CHANGE, change.encode())


def refusal(d: Driver, op: ConfChangeOp, node_id: str) -> ConfChangeError:
    with pytest.raises(ConfChangeError) as info:
        d.core.propose_conf_change(op, node_id)
    return info.value


def test_a_follower_refuses_with_not_leader() -> None:
    d = node()
    d.step(MsgType.HEARTBEAT, "b", term=1)
    with pytest.raises(NotLeader) as info:
        d.core.propose_conf_change(ADD, "d")
    assert info.value.leader == "b"


@pytest.mark.parametrize(
    ("op", "node_id", "reason", "words"),
    [
        (REMOVE, "z", "unknown-node", "'z' is not a member"),
        (PROMOTE, "z", "unknown-node", "'z' is not a member"),
        (PROMOTE, "b", "not-a-learner", "'b' is a voter"),
        (ADD, "b", "already-member", "'b' is already a voter"),
        (ADD, "", "bad-id", "must not be empty"),
    ],
)
def test_each_bad_request_answers_a_clear_error(
    op: ConfChangeOp, node_id: str, reason: str, words: str
) -> None:
    d = elected()
    error = refusal(d, op, node_id)
    assert error.reason == reason and words in str(error) and not error.retryable
    assert isinstance(error, ValueError)
    assert d.core.membership == Membership(PEERS3)


def test_adding_an_existing_learner_and_removing_the_last_voter_are_refused() -> None:
    d = elected()
    d.core.propose_conf_change(ADD, "d")
    d.ack("b", "c")
    assert refusal(d, ADD, "d").reason == "already-member"
    alone = elected(peers=("a",))
    error = refusal(alone, REMOVE, "a")
    assert error.reason == "last-voter" and "'a' is the last voter" in str(error)
    with pytest.raises(ConfChangeError, match="last voter"):
        changed_membership(Membership(("a",), ("b",)), REMOVE, "a")


def test_a_new_leader_changes_nothing_before_committing_an_entry_of_its_term() -> None:
    d = elected(commit=False)
    error = refusal(d, ADD, "d")
    assert error.reason == "not-committed-in-term" and error.retryable
    assert "term 2" in str(error)
    d.ack("b")
    assert d.core.propose_conf_change(ADD, "d") == d.core.last_index


def test_one_change_at_a_time() -> None:
    d = elected()
    index = d.core.propose_conf_change(ADD, "d")
    assert d.core.conf_pending and d.core.conf_index == index
    error = refusal(d, ADD, "e")
    assert error.reason == "pending" and error.retryable and str(index) in str(error)
    assert refusal(d, REMOVE, "c").reason == "pending"
    d.ack("b")  # a quorum of the voters: committed
    assert not d.core.conf_pending
    d.core.propose_conf_change(ADD, "e")
    assert d.core.learners == ("d", "e")


def test_a_change_takes_effect_on_append_and_the_driver_hears_of_it() -> None:
    d = elected()
    rd = d.drain()
    index = d.core.propose_conf_change(ADD, "d", context="d.example:7001")
    assert d.core.commit_index < index  # not committed, yet in force
    assert d.core.voters == PEERS3 and d.core.learners == ("d",)
    rd = d.drain()
    assert rd.membership == Membership(PEERS3, ("d",))
    entry = d.core.entry(index)
    assert entry is not None and entry.kind is EntryKind.CONF_CHANGE
    assert ConfChange.decode(entry.data) == ConfChange(ADD, "d", PEERS3, ("d",), "d.example:7001")
    assert entry in rd.entries  # the driver persists it: where it learns the address
    assert "d" in {m.dst for m in rd.messages if m.type is MsgType.APPEND}
    assert d.core.progress("d") is not None


def test_a_learner_does_not_count_for_commitment() -> None:
    d = elected()
    d.core.propose_conf_change(ADD, "d")
    d.ack("b")
    index = d.core.propose(b"x")
    d.ack("d")
    assert d.core.commit_index < index  # the leader and a learner are not a quorum of 3
    d.ack("c")
    assert d.core.commit_index == index


def test_a_learner_far_behind_is_not_promoted() -> None:
    d = elected()
    d.core.propose_conf_change(ADD, "d")
    d.ack("b", "c")
    error = refusal(d, PROMOTE, "d")
    assert error.reason == "learner-behind" and error.retryable
    d.ack("d")
    d.step(MsgType.HEARTBEAT_RESP, "d")
    d.core.propose_conf_change(PROMOTE, "d")
    assert d.core.voters == ("a", "b", "c", "d") and d.core.learners == ()


def test_a_learner_never_campaigns_and_a_candidate_ignores_its_vote() -> None:
    entries = [conf_entry(1, 1, ADD, "d", PEERS3, ("d",))]
    learner = node("d", peers=("d",), join=True, entries=entries, hard_state=HardState(term=1))
    assert learner.core.learners == ("d",)
    rd = learner.ticks(10 * ET)
    assert learner.core.role is Role.FOLLOWER and not rd.messages
    learner.step(MsgType.TIMEOUT_NOW, "a", term=1)
    assert learner.core.role is Role.FOLLOWER
    candidate = node("a", entries=entries, hard_state=HardState(term=1))
    rd = candidate.ticks(2 * ET)
    assert {m.dst for m in rd.messages if m.type is MsgType.PRE_VOTE} == {"b", "c"}
    candidate.step(MsgType.PRE_VOTE_RESP, "d", term=2)
    assert candidate.core.role is Role.PRE_CANDIDATE


def test_a_learner_votes_but_a_node_outside_its_configuration_does_not() -> None:
    entries = [conf_entry(1, 1, ADD, "d", PEERS3, ("d",))]
    learner = node("d", peers=("d",), join=True, entries=entries)
    learner.ticks(ET)  # no leader heard of for an election timeout: no stickiness
    rd = learner.step(MsgType.VOTE, "b", term=2, index=1, log_term=1)
    assert [m.reject for m in rd.messages] == [False]
    joining = node("e", peers=("e",), join=True)
    assert joining.core.membership == Membership()
    joining.ticks(ET)
    rd = joining.step(MsgType.VOTE, "b", term=2, index=1, log_term=1)
    assert [m.reject for m in rd.messages] == [True]
    assert joining.core.term == 2  # it still follows the term


def test_a_joining_node_learns_its_configuration_from_the_leader_s_log() -> None:
    d = node("d", peers=("d",), join=True)
    entries = (Entry(1, 1, EntryKind.NOOP), conf_entry(1, 2, ADD, "d", PEERS3, ("d",)))
    rd = d.step(MsgType.APPEND, "a", term=1, index=0, log_term=0, entries=entries, commit=1)
    assert rd.membership == Membership(PEERS3, ("d",)) and d.core.leader == "a"
    assert [m.index for m in rd.messages if m.type is MsgType.APPEND_RESP] == [2]


def test_a_truncated_change_gives_way_to_the_configuration_before_it() -> None:
    d = node("b", entries=[Entry(1, 1, EntryKind.NOOP)], hard_state=HardState(term=1))
    change = conf_entry(1, 2, REMOVE, "c", ("a", "b"))
    d.step(MsgType.APPEND, "a", term=1, index=1, log_term=1, entries=(change,), commit=1)
    assert d.core.voters == ("a", "b")
    other = Entry(2, 2, EntryKind.NOOP)
    rd = d.step(MsgType.APPEND, "c", term=2, index=1, log_term=1, entries=(other,), commit=1)
    assert d.core.voters == PEERS3 and rd.membership == Membership(PEERS3)
    assert d.memberships == [Membership(("a", "b")), Membership(PEERS3)]


def test_a_restart_takes_the_configuration_from_the_log_then_the_snapshot() -> None:
    snap = Snapshot(5, 1, ("a", "b"), b"image", learners=("c",))
    d = node("a", snapshot=snap, hard_state=HardState(term=1, commit=5))
    assert d.core.membership == Membership(("a", "b"), ("c",))
    entries = [conf_entry(1, 6, PROMOTE, "c", ("a", "b", "c"))]
    d = node("a", snapshot=snap, entries=entries, hard_state=HardState(term=1, commit=5))
    assert d.core.voters == ("a", "b", "c") and d.core.membership_at(5).learners == ("c",)


def test_a_snapshot_must_carry_the_configuration_at_its_index() -> None:
    d = elected()
    d.core.propose_conf_change(ADD, "d")
    d.ack("b", "c")
    index = d.core.propose(b"x")
    d.ack("b", "c")
    d.drain()
    with pytest.raises(AssertionError, match="carries"):
        d.core.compact(Snapshot(index, 2, PEERS3, b"image"))
    d.core.compact(Snapshot(index, 2, PEERS3, b"image", learners=("d",)))
    assert d.core.snapshot_index == index and d.core.learners == ("d",)


def test_a_leader_that_removes_itself_leads_until_the_removal_commits() -> None:
    d = elected()
    index = d.core.propose_conf_change(REMOVE, "a")
    assert d.core.role is Role.LEADER and d.core.voters == ("b", "c")
    d.ack("b")
    assert d.core.role is Role.LEADER  # "a" no longer counts: "b" alone is not a quorum
    assert d.core.commit_index < index
    rd = d.ack("c")
    assert d.core.role is Role.FOLLOWER and d.core.commit_index == index
    assert [m.dst for m in rd.messages if m.type is MsgType.TIMEOUT_NOW] == ["b"]
    rd = d.ticks(10 * ET)  # outside its configuration: it never campaigns
    assert d.core.role is Role.FOLLOWER and not rd.messages


def test_a_removed_member_is_replicated_to_until_its_removal_commits() -> None:
    d = elected()
    d.core.propose_conf_change(REMOVE, "c")
    rd = d.drain()
    assert "c" in {m.dst for m in rd.messages if m.type is MsgType.APPEND}
    d.ack("b")
    assert d.core.progress("c") is None
    rd = d.ticks(2)
    assert {m.dst for m in rd.messages} == {"b"}


def test_no_leadership_transfer_to_a_learner() -> None:
    d = elected()
    d.core.propose_conf_change(ADD, "d")
    with pytest.raises(ValueError, match="learner"):
        d.core.transfer_leadership("d")
    with pytest.raises(ValueError, match="not a peer"):
        d.core.transfer_leadership("z")


def test_conf_change_round_trips_and_refuses_garbage() -> None:
    change = ConfChange(PROMOTE, "d", ("a", "d"), ("e",))
    assert ConfChange.decode(change.encode()) == change
    with_address = ConfChange(ADD, "e", ("a", "d"), ("e",), context="10.0.0.5:7001")
    assert ConfChange.decode(with_address.encode()) == with_address
    for bad in (b"", b"[]", b'{"op":"grow","node":"d","voters":[],"learners":[]}',
                b'{"op":"remove","node":"d","voters":"a","learners":[]}',
                b'{"op":"remove","node":"","voters":[],"learners":[]}',
                b'{"op":"remove","node":"d","voters":[],"learners":[],"context":7}'):  # fmt: skip
        with pytest.raises(ValueError):
            ConfChange.decode(bad)


# ---- scenarios on the simulator -------------------------------------------------------------


def started(nodes: int = 5, voters: int = 3, seed: int = 1, **options: Any) -> Simulation:
    sim = Simulation(seed, nodes, SimOptions(voters=voters, **options))
    assert sim.run_until(lambda: sim.leader() is not None, ELECT_TICKS), "no initial leader"
    return sim


def commit_one(sim: Simulation, max_ticks: int = ELECT_TICKS) -> None:
    data = sim.new_data()
    for _ in range(max_ticks):
        leader = sim.leader()
        proposal = sim.proposals.get(data)
        if leader is not None and (proposal is None or proposal.node != leader):
            sim.propose(data, node=leader)
        sim.run(1)
        if sim.is_committed(data):
            return
    raise AssertionError(f"{data!r} not committed within {max_ticks} ticks")


def change(sim: Simulation, op: ConfChangeOp, node_id: str, max_ticks: int = ELECT_TICKS) -> None:
    """Propose at the leader until accepted, then run until the change commits."""
    accepted = None
    for _ in range(max_ticks):
        leader = sim.leader()
        index = sim.change_membership(op, node_id, node=leader)
        if leader is not None and index is not None:
            accepted = sim.core(leader).entry(index)
            break
        sim.run(1)
    assert accepted is not None, f"{op.value} {node_id} never accepted"
    done = sim.run_until(lambda: sim.committed_entry(accepted.index) == accepted, max_ticks)
    assert done, f"{op.value} {node_id} at {accepted.index} did not commit"


def settled(sim: Simulation, voters: Sequence[str], learners: Sequence[str] = ()) -> None:
    """Every member holds the configuration and has applied what the leader committed."""
    members = [*voters, *learners]
    leader = sim.leader()
    assert leader is not None
    assert sim.run_until(
        lambda: all(sim.core(n).membership.same_as(tuple(voters), tuple(learners))
                    and sim.applied_index(n) >= sim.core(leader).commit_index
                    for n in members),
        ELECT_TICKS,
    ), [(n, sim.core(n).membership) for n in members]  # fmt: skip


def test_a_learner_far_behind_catches_up_by_snapshot_then_is_promoted() -> None:
    sim = started(nodes=4, voters=3, snapshot_every_entries=8)
    for _ in range(40):
        commit_one(sim)
    leader = sim.leader()
    assert leader is not None and sim.core(leader).snapshot_index > 8
    snapshots_sent = sim.stats["SNAPSHOT"]
    change(sim, ADD, "n4")
    settled(sim, ("n1", "n2", "n3"), ("n4",))
    assert sim.stats["SNAPSHOT"] > snapshots_sent
    assert sim.core("n4").snapshot_index > 0
    change(sim, PROMOTE, "n4")
    settled(sim, ("n1", "n2", "n3", "n4"))
    sim.crash("n1")
    sim.crash("n2")  # two of four down: n3 and n4 alone are not a quorum
    data = sim.new_data()
    survivor = sim.leader()
    if survivor is not None:
        sim.propose(data, node=survivor)
    sim.run(3 * ET)
    assert not sim.is_committed(data)


def test_three_voters_to_five_and_back_to_three() -> None:
    sim = started(nodes=5, voters=3)
    for learner in ("n4", "n5"):
        change(sim, ADD, learner)
        change(sim, PROMOTE, learner)
        commit_one(sim)
    settled(sim, ("n1", "n2", "n3", "n4", "n5"))
    sim.isolate("n1")
    sim.crash("n2")  # two of five out: the other three still commit
    commit_one(sim)
    sim.heal()
    sim.restart("n2")
    removed = [n for n in ("n1", "n2", "n3") if n != sim.leader()][:2]
    for voter in removed:
        change(sim, REMOVE, voter)
        commit_one(sim)
    voters = tuple(n for n in sim.ids if n not in removed)
    settled(sim, voters)
    assert len(sim.core(voters[0]).voters) == 3
    sim.crash(voters[0])  # one of three down: still a quorum
    commit_one(sim)


def test_removing_the_leader_hands_over_and_it_never_leads_again() -> None:
    sim = started(nodes=3, voters=3)
    old = sim.leader()
    assert old is not None
    old_term = sim.core(old).term
    start = sim.now_tick
    change(sim, REMOVE, old)
    assert sim.run_until(lambda: sim.leader() not in (None, old), ELECT_TICKS)
    assert sim.now_tick - start < 2 * ET  # TIMEOUT_NOW: no election timeout to wait for
    new = sim.leader()
    assert new is not None and sim.core(new).term == old_term + 1
    commit_one(sim)
    sim.run(10 * ET)
    assert sim.core(old).role is Role.FOLLOWER and old not in sim.core(new).voters
    assert all(holder != old for term, holder in sim.leaders_by_term.items() if term > old_term)


def test_a_removed_node_that_missed_its_removal_does_not_disrupt_the_cluster() -> None:
    sim = started(nodes=4, voters=4)
    leader = sim.leader()
    assert leader is not None
    gone = next(n for n in sim.ids if n != leader)
    commit_one(sim)
    sim.isolate(gone)
    change(sim, REMOVE, gone)
    commit_one(sim)
    assert gone in sim.core(gone).voters  # it never heard of its removal
    term = sim.core(leader).term
    sim.run(4 * ET)  # alone it campaigns, with pre-votes nobody grants
    sim.heal()
    sim.run(10 * ET)
    assert sim.leader() == leader and sim.core(leader).term == term
    commit_one(sim)
    assert sim.core(gone).role is not Role.LEADER


def test_a_removed_node_comes_back_with_a_wiped_disk_as_a_learner_then_a_voter() -> None:
    sim = started(nodes=3, voters=3, snapshot_every_entries=8)
    leader = sim.leader()
    gone = next(n for n in sim.ids if n != leader)
    change(sim, REMOVE, gone)
    for _ in range(20):
        commit_one(sim)
    voters = tuple(n for n in sim.ids if n != gone)
    assert sim.core(gone).membership.members() == voters  # it heard of its removal
    back = sim.wipe(gone)
    assert back == f"{gone}-2" and back in sim.ids and gone not in sim.ids
    assert sim.core(back).membership == Membership() and sim.core(back).last_index == 0
    change(sim, ADD, back)
    settled(sim, voters, (back,))
    assert sim.core(back).snapshot_index > 0  # caught up by snapshot
    change(sim, PROMOTE, back)
    settled(sim, (*voters, back))
    sim.crash(voters[0])  # the wiped server counts for the quorum now
    commit_one(sim)


def test_the_membership_profile_keeps_every_invariant_on_a_few_seeds() -> None:
    for seed in range(20):
        report = run_chaos(seed, "membership")
        assert report.acked_proposals > 0
    assert report.stats["conf_promote"] > 0 and report.stats["conf_remove"] > 0


def test_two_changes_in_flight_are_caught_as_disjoint_majorities() -> None:
    with pytest.raises(InvariantViolation, match="disjoint majorities") as info:
        run_chaos(0, "membership", bugs={"conf-two-in-flight"})
    assert "--bug conf-two-in-flight" in str(info.value)
    run_chaos(0, "membership")  # the same schedule without the bug keeps every invariant
