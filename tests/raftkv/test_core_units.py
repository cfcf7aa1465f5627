"""Unit tests of the Raft core with hand-built messages: votes, hints, commits, Ready."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import pytest
from core_driver import Driver

from raftkv.core import (
    CAMPAIGN_TRANSFER,
    Config,
    NotLeader,
    Raft,
    Role,
    hard_state_on_restart,
)
from raftkv.progress import ProgressState
from raftkv.timing import RaftTiming
from raftkv.types import Entry, EntryKind, HardState, Message, MsgType, Ready, Snapshot

PEERS3 = ("a", "b", "c")
TIMING_FIELDS = frozenset(f.name for f in dataclasses.fields(RaftTiming))


def sent(rd: Ready, msg_type: MsgType) -> list[Message]:
    return [m for m in rd.messages if m.type is msg_type]


def make(
    node_id: str = "a",
    peers: Sequence[str] = PEERS3,
    hard_state: HardState | None = None,
    entries: Sequence[Entry] = (),
    snapshot: Snapshot | None = None,
    **config: Any,
) -> Driver:
    cfg = config_of(node_id, peers, **config)
    core = Raft(cfg, random.Random(7), hard_state or HardState(), snapshot, entries)
    return Driver(core)


def config_of(node_id: str = "a", peers: Sequence[str] = PEERS3, **settings: Any) -> Config:
    """A Config from flat settings: those of RaftTiming go into its `timing`."""
    timing = {k: settings.pop(k) for k in list(settings) if k in TIMING_FIELDS}
    return Config(id=node_id, peers=tuple(peers), timing=RaftTiming(**timing), **settings)


def log_of(*terms: int) -> list[Entry]:
    return [Entry(term=t, index=i + 1, data=f"e{i + 1}".encode()) for i, t in enumerate(terms)]


def elect(h: Driver) -> Ready:
    """Make the core leader: time out, then answer its pre-votes and votes."""
    h.ticks(2 * h.core.config.timing.election_timeout_ticks)
    others = [p for p in h.core.config.peers if p != h.core.id]
    if h.core.role is Role.PRE_CANDIDATE:
        h.step(MsgType.PRE_VOTE_RESP, others[0], term=h.core.term + 1)
    assert h.core.role is Role.CANDIDATE
    rd = h.step(MsgType.VOTE_RESP, others[0], term=h.core.term)
    assert h.core.role is Role.LEADER
    return rd


def ack_all(h: Driver) -> Ready:
    rd = Ready()
    for peer in h.core.config.peers:
        if peer != h.core.id:
            rd = h.step(MsgType.APPEND_RESP, peer, index=h.core.last_index)
    return rd


# ---- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"lease_ticks": 10},
        {"heartbeat_ticks": 10},
        {"bugs": frozenset({"no-such-bug"})},
        {"election_timeout_ticks": 1},
    ],
)
def test_config_rejects_unsafe_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        config_of(**bad)


def test_config_requires_self_among_peers() -> None:
    with pytest.raises(ValueError):
        Config(id="z", peers=PEERS3)


def test_vote_amnesia_forgets_only_the_vote() -> None:
    hs = HardState(term=4, vote="b", commit=3)
    plain = Config(id="a", peers=PEERS3)
    buggy = Config(id="a", peers=PEERS3, bugs=frozenset({"vote-amnesia"}))
    assert hard_state_on_restart(plain, hs) == hs
    assert hard_state_on_restart(buggy, hs) == HardState(term=4, vote=None, commit=3)


# ---- elections ---------------------------------------------------------------------------


def test_election_timeout_is_randomized_within_one_to_two_timeouts() -> None:
    seen = set()
    for seed in range(40):
        cfg = config_of(election_timeout_ticks=10)
        core = Raft(cfg, random.Random(seed), HardState(), None, [])
        ticks = 0
        while core.role is Role.FOLLOWER:
            core.tick()
            ticks += 1
        assert 10 <= ticks < 20
        seen.add(ticks)
    assert len(seen) > 3


def test_pre_candidate_keeps_its_term_until_a_quorum_grants() -> None:
    h = make(hard_state=HardState(term=3))
    rd = h.ticks(20)
    assert h.core.role is Role.PRE_CANDIDATE and h.core.term == 3
    pre_votes = sent(rd, MsgType.PRE_VOTE)
    assert {m.dst for m in pre_votes} == {"b", "c"} and all(m.term == 4 for m in pre_votes)
    assert rd.hard_state is None  # nothing to persist: no term or vote change
    rd = h.step(MsgType.PRE_VOTE_RESP, "b", term=4)
    assert h.core.role is Role.CANDIDATE and h.core.term == 4 and h.core.vote == "a"
    assert rd.hard_state == HardState(term=4, vote="a", commit=0)
    assert {m.dst for m in sent(rd, MsgType.VOTE)} == {"b", "c"}


def test_pre_candidate_gives_up_after_a_quorum_rejects() -> None:
    h = make(peers=("a", "b", "c", "d", "e"), hard_state=HardState(term=3))
    h.ticks(20)
    for peer in ("b", "c", "d"):
        h.step(MsgType.PRE_VOTE_RESP, peer, term=3, reject=True)
    assert h.core.role is Role.FOLLOWER and h.core.term == 3


def test_new_leader_appends_a_noop_in_its_term() -> None:
    h = make(hard_state=HardState(term=1), entries=log_of(1, 1))
    rd = elect(h)
    assert h.core.last_index == 3
    noop = h.core.entry(3)
    assert noop is not None and noop.kind is EntryKind.NOOP and noop.term == h.core.term
    assert noop in rd.entries


def _vote_request(h: Driver, src: str, term: int, index: int, log_term: int, **kw: Any) -> Ready:
    return h.step(MsgType.VOTE, src, term=term, index=index, log_term=log_term, **kw)


@pytest.mark.parametrize(
    ("index", "log_term", "granted"),
    [
        (3, 2, True),  # same last term, same length
        (4, 2, True),  # same last term, longer
        (1, 3, True),  # higher last term wins even when shorter
        (2, 2, False),  # same last term, shorter
        (9, 1, False),  # lower last term loses even when longer
    ],
)
def test_vote_requires_an_up_to_date_log(index: int, log_term: int, granted: bool) -> None:
    h = make(entries=log_of(1, 2, 2), hard_state=HardState(term=2), check_quorum=False)
    rd = _vote_request(h, "b", term=3, index=index, log_term=log_term)
    (resp,) = sent(rd, MsgType.VOTE_RESP)
    assert resp.reject is not granted
    assert h.core.term == 3
    assert h.core.vote == ("b" if granted else None)


def test_skip_log_check_bug_votes_for_a_stale_log() -> None:
    h = make(
        entries=log_of(1, 2, 2),
        hard_state=HardState(term=2),
        check_quorum=False,
        bugs=frozenset({"skip-log-check"}),
    )
    rd = _vote_request(h, "b", term=3, index=1, log_term=1)
    assert not sent(rd, MsgType.VOTE_RESP)[0].reject


def test_one_vote_per_term_and_the_vote_is_persisted_with_the_answer() -> None:
    h = make(check_quorum=False)
    rd = _vote_request(h, "b", term=1, index=0, log_term=0)
    assert rd.hard_state == HardState(term=1, vote="b")
    assert not sent(rd, MsgType.VOTE_RESP)[0].reject
    assert sent(_vote_request(h, "c", term=1, index=5, log_term=1), MsgType.VOTE_RESP)[0].reject
    # A duplicated request from the same candidate is granted again.
    assert not sent(_vote_request(h, "b", term=1, index=0, log_term=0), MsgType.VOTE_RESP)[0].reject


def test_pre_vote_grant_changes_neither_term_nor_vote() -> None:
    h = make(hard_state=HardState(term=2, vote="c"), check_quorum=False)
    rd = h.step(MsgType.PRE_VOTE, "b", term=3, index=0, log_term=0)
    (resp,) = sent(rd, MsgType.PRE_VOTE_RESP)
    assert not resp.reject and resp.term == 3
    assert (h.core.term, h.core.vote) == (2, "c")
    assert rd.hard_state is None


def test_leader_stickiness_ignores_votes_while_a_leader_is_heard() -> None:
    h = make(hard_state=HardState(term=1))
    h.ticks(10)  # past the start-up quiet period
    h.step(MsgType.HEARTBEAT, "c", term=1)
    assert h.core.leader == "c"
    rd = _vote_request(h, "b", term=2, index=5, log_term=1)
    assert not rd.messages and h.core.term == 1
    rd = h.step(MsgType.PRE_VOTE, "b", term=2, index=5, log_term=1)
    assert not rd.messages
    # A transfer's forced election is not disruption: it is granted.
    rd = _vote_request(h, "b", term=2, index=5, log_term=1, context=CAMPAIGN_TRANSFER)
    assert not sent(rd, MsgType.VOTE_RESP)[0].reject and h.core.term == 2


def test_stickiness_expires_after_an_election_timeout_without_the_leader() -> None:
    h = make(hard_state=HardState(term=1), election_timeout_ticks=10)
    h.step(MsgType.HEARTBEAT, "c", term=1)
    h.ticks(9)
    assert not _vote_request(h, "b", term=2, index=5, log_term=1).messages
    h.ticks(1)
    rd = _vote_request(h, "b", term=2, index=5, log_term=1)
    assert not sent(rd, MsgType.VOTE_RESP)[0].reject


def test_a_restarted_node_waits_an_election_timeout_before_voting() -> None:
    h = make(hard_state=HardState(term=1))
    assert not _vote_request(h, "b", term=2, index=0, log_term=0).messages
    h.ticks(10)
    assert not sent(_vote_request(h, "b", term=2, index=0, log_term=0), MsgType.VOTE_RESP)[0].reject


def test_stale_term_append_is_answered_with_the_current_term() -> None:
    h = make(hard_state=HardState(term=5))
    rd = h.step(MsgType.APPEND, "b", term=3, index=0, log_term=0)
    (resp,) = sent(rd, MsgType.APPEND_RESP)
    assert resp.term == 5 and h.core.term == 5


def test_leader_steps_down_on_a_higher_term() -> None:
    h = make()
    elect(h)
    h.core.read_index(77)
    rd = h.step(MsgType.APPEND_RESP, "b", term=h.core.term + 1)
    assert h.core.role is Role.FOLLOWER and h.core.leader is None
    assert rd.dropped_reads == [77]


# ---- CheckQuorum --------------------------------------------------------------------------


def test_check_quorum_leader_without_contact_steps_down() -> None:
    h = make()
    elect(h)
    h.ticks(2 * h.core.config.timing.election_timeout_ticks)
    assert h.core.role is Role.FOLLOWER


def test_check_quorum_leader_with_contact_stays() -> None:
    h = make()
    elect(h)
    for _ in range(30):
        h.ticks(1)
        h.step(MsgType.HEARTBEAT_RESP, "b")
    assert h.core.role is Role.LEADER


def test_stale_leader_read_bug_never_steps_down() -> None:
    h = make(bugs=frozenset({"stale-leader-read"}))
    elect(h)
    h.ticks(50)
    assert h.core.role is Role.LEADER


# ---- replication, hints and commits --------------------------------------------------------


def test_follower_rejects_with_a_conflict_hint() -> None:
    # Follower log terms by index: 1 1 1 4 4 5 5 6 6 6 (the Raft paper's Figure 7 (f)-like).
    h = make(entries=log_of(1, 1, 1, 4, 4, 5, 5, 6, 6, 6), hard_state=HardState(term=6))
    rd = h.step(MsgType.APPEND, "b", term=8, index=10, log_term=8)
    (resp,) = sent(rd, MsgType.APPEND_RESP)
    assert resp.reject and resp.index == 10
    # Largest index whose term is <= 8: the follower's last entry.
    assert (resp.reject_hint, resp.hint_term) == (10, 6)
    rd = h.step(MsgType.APPEND, "b", term=8, index=9, log_term=3)
    (resp,) = sent(rd, MsgType.APPEND_RESP)
    assert (resp.reject_hint, resp.hint_term) == (3, 1)


def test_follower_past_its_log_hints_its_last_index() -> None:
    h = make(entries=log_of(1, 1), hard_state=HardState(term=1))
    rd = h.step(MsgType.APPEND, "b", term=2, index=40, log_term=2)
    (resp,) = sent(rd, MsgType.APPEND_RESP)
    assert (resp.reject_hint, resp.hint_term) == (2, 1)


def test_leader_skips_a_whole_conflicting_term_on_a_hint() -> None:
    # Leader terms: 1 1 1 4 4 4 4 (+ NOOP of its term); follower has 1 1 1 2 2 2 2 2 2.
    h = make(entries=log_of(1, 1, 1, 4, 4, 4, 4), hard_state=HardState(term=4))
    elect(h)
    rd = h.step(MsgType.APPEND_RESP, "b", index=7, reject=True, reject_hint=7, hint_term=2)
    (probe,) = [m for m in sent(rd, MsgType.APPEND) if m.dst == "b"]
    # The follower's entries of term 2 cannot match anything of ours: back to index 3.
    assert (probe.index, probe.log_term) == (3, 1)
    rd = h.step(MsgType.APPEND_RESP, "b", index=h.core.last_index)
    assert h.core.progress("b") is not None
    assert h.core.progress("b").state is ProgressState.REPLICATE  # type: ignore[union-attr]


def test_stale_reject_is_ignored() -> None:
    h = make(entries=log_of(1, 1, 1), hard_state=HardState(term=1))
    elect(h)
    ack_all(h)
    rd = h.step(MsgType.APPEND_RESP, "b", index=2, reject=True, reject_hint=1, hint_term=1)
    assert not sent(rd, MsgType.APPEND)
    assert h.core.progress("b").match_index == h.core.last_index  # type: ignore[union-attr]


def test_follower_commit_is_bounded_by_the_entries_the_message_vouches_for() -> None:
    h = make(entries=log_of(1, 1, 1, 1, 1, 1), hard_state=HardState(term=1))
    entries = tuple(log_of(1, 1, 1)[1:])
    h.step(MsgType.APPEND, "b", term=1, index=1, log_term=1, entries=entries, commit=6)
    # Entries 4..6 may differ from the leader's: only up to index 3 is known committed.
    assert h.core.commit_index == 3


def test_reordered_older_append_never_truncates() -> None:
    h = make(hard_state=HardState(term=2))
    full = tuple(Entry(2, i, data=b"x") for i in (1, 2, 3, 4))
    h.step(MsgType.APPEND, "b", term=2, index=0, log_term=0, entries=full)
    h.step(MsgType.APPEND, "b", term=2, index=0, log_term=0, entries=full[:2])
    assert h.core.last_index == 4


def test_conflicting_suffix_is_replaced() -> None:
    h = make(entries=log_of(1, 1, 2, 2), hard_state=HardState(term=2))
    new = (Entry(3, 3, data=b"n3"),)
    rd = h.step(MsgType.APPEND, "b", term=3, index=2, log_term=1, entries=new)
    assert h.core.last_index == 3 and h.core.entry(3) == new[0]
    assert rd.entries == list(new)


def test_leader_commits_only_entries_of_its_own_term() -> None:
    # Old entry (term 1) at index 2, then the leader's NOOP (term 2) at index 3.
    h = make(entries=log_of(1, 1), hard_state=HardState(term=1, commit=1))
    elect(h)
    assert h.core.term == 2
    h.step(MsgType.APPEND_RESP, "b", index=2)
    assert h.core.commit_index == 1  # Figure 8: a replica count proves nothing for term 1
    h.step(MsgType.APPEND_RESP, "b", index=3)
    assert h.core.commit_index == 3


def test_commit_old_term_bug_commits_by_replica_count() -> None:
    h = make(
        entries=log_of(1, 1),
        hard_state=HardState(term=1, commit=1),
        bugs=frozenset({"commit-old-term"}),
    )
    elect(h)
    h.step(MsgType.APPEND_RESP, "b", index=2)
    assert h.core.commit_index == 2


def test_response_and_entries_come_in_one_ready_so_persisting_precedes_sending() -> None:
    h = make(hard_state=HardState(term=1))
    entries = (Entry(1, 1, data=b"x"),)
    h.core.step(Message(MsgType.APPEND, "b", "a", term=1, entries=entries))
    rd = h.core.ready()
    assert rd.entries == list(entries)
    assert [m.type for m in rd.messages] == [MsgType.APPEND_RESP]
    h.core.advance(rd)
    assert not h.core.has_ready()


def test_proposals_between_readies_are_batched_into_one_append_per_follower() -> None:
    h = make()
    elect(h)
    ack_all(h)
    for i in range(5):
        h.core.propose(f"p{i}".encode())
    rd = h.drain()
    appends = sent(rd, MsgType.APPEND)
    assert len(appends) == 2 and all(len(m.entries) == 5 for m in appends)


def test_pipelining_is_bounded_by_max_inflight_appends() -> None:
    h = make(max_inflight_appends=3)
    elect(h)
    ack_all(h)
    appends = []
    for i in range(6):
        h.core.propose(f"p{i}".encode())
        appends += [m for m in sent(h.drain(), MsgType.APPEND) if m.dst == "b"]
    # Three in flight without waiting for answers, then paused.
    assert len(appends) == 3
    assert [m.index for m in appends] == [1, 2, 3]
    rd = h.step(MsgType.APPEND_RESP, "b", index=4)
    (batch,) = [m for m in sent(rd, MsgType.APPEND) if m.dst == "b"]
    assert batch.index == 4 and [e.index for e in batch.entries] == [5, 6, 7]


def test_propose_on_a_follower_names_the_leader() -> None:
    h = make(hard_state=HardState(term=1))
    h.step(MsgType.HEARTBEAT, "c", term=1)
    with pytest.raises(NotLeader) as info:
        h.core.propose(b"x")
    assert info.value.leader == "c"


def test_committed_entries_are_applied_in_order_once() -> None:
    h = make()
    elect(h)
    ack_all(h)
    for i in range(3):
        h.core.propose(f"p{i}".encode())
    h.drain()
    ack_all(h)
    assert [e.index for e in h.applied] == [1, 2, 3, 4]
    ack_all(h)
    assert [e.index for e in h.applied] == [1, 2, 3, 4]


# ---- snapshots ---------------------------------------------------------------------------


def test_follower_installs_a_snapshot_past_its_log() -> None:
    h = make(entries=log_of(1, 1), hard_state=HardState(term=1))
    snap = Snapshot(index=10, term=3, peers=PEERS3, data=b"image")
    rd = h.step(MsgType.SNAPSHOT, "b", term=3, snapshot=snap)
    assert rd.snapshot == snap
    assert (h.core.snapshot_index, h.core.last_index, h.core.commit_index) == (10, 10, 10)
    assert sent(rd, MsgType.APPEND_RESP)[0].index == 10
    assert not rd.committed  # the snapshot replaces applying entries 1..10
    rd = h.step(
        MsgType.APPEND, "b", term=3, index=10, log_term=3, entries=(Entry(3, 11),), commit=11
    )
    assert [e.index for e in rd.committed] == [11]


def test_leader_sends_its_snapshot_to_a_follower_behind_the_compacted_prefix() -> None:
    h = make()
    elect(h)
    h.step(MsgType.APPEND_RESP, "b", index=1)
    for i in range(5):
        h.core.propose(f"p{i}".encode())
    h.drain()
    h.step(MsgType.APPEND_RESP, "b", index=h.core.last_index)
    snap = Snapshot(index=5, term=h.core.term, peers=PEERS3, data=b"image")
    h.core.compact(snap)
    assert h.core.snapshot_index == 5
    rd = h.step(MsgType.APPEND_RESP, "c", index=0, reject=True, reject_hint=0)
    snaps = sent(rd, MsgType.SNAPSHOT)
    assert len(snaps) == 1 and snaps[0].snapshot == snap and snaps[0].dst == "c"


def test_restart_keeps_snapshot_and_replays_entries_after_it() -> None:
    snap = Snapshot(index=4, term=2, peers=PEERS3, data=b"image")
    entries = [Entry(2, 5, data=b"5"), Entry(2, 6, data=b"6")]
    h = make(snapshot=snap, entries=entries, hard_state=HardState(term=2, commit=6))
    assert (h.core.snapshot_index, h.core.last_index, h.core.commit_index) == (4, 6, 6)
    assert [e.index for e in h.drain().committed] == [5, 6]


# ---- reads and transfer ---------------------------------------------------------------------


def test_read_index_waits_for_a_quorum_heartbeat_round() -> None:
    h = make()
    elect(h)
    ack_all(h)
    h.core.read_index(9)
    rd = h.drain()
    beats = sent(rd, MsgType.HEARTBEAT)
    assert len(beats) == 2 and not rd.reads
    rd = h.step(MsgType.HEARTBEAT_RESP, "b", context=beats[0].context)
    assert [(r.request_id, r.index) for r in rd.reads] == [(9, h.core.commit_index)]


def test_read_index_waits_for_a_commit_in_the_leaders_term() -> None:
    h = make()
    elect(h)
    h.core.read_index(9)
    assert not h.drain().reads and not h.core.has_ready()
    rd = h.step(MsgType.APPEND_RESP, "b", index=1)  # NOOP committed
    (beat, *_) = sent(rd, MsgType.HEARTBEAT)
    rd = h.step(MsgType.HEARTBEAT_RESP, "b", context=beat.context)
    assert [r.request_id for r in rd.reads] == [9]


def test_lease_read_is_served_at_once_while_the_lease_holds() -> None:
    h = make(lease_ticks=5)
    elect(h)
    ack_all(h)
    rd = h.ticks(1)
    stamp = sent(rd, MsgType.HEARTBEAT)[0].index
    h.step(MsgType.HEARTBEAT_RESP, "b", index=stamp)
    h.core.read_index(1, lease=True)
    rd = h.drain()
    assert [r.request_id for r in rd.reads] == [1] and not sent(rd, MsgType.HEARTBEAT)
    h.ticks(5)  # the lease ran out: fall back to a ReadIndex round
    h.core.read_index(2, lease=True)
    rd = h.drain()
    assert not rd.reads and sent(rd, MsgType.HEARTBEAT)


def test_transfer_catches_up_the_target_then_sends_timeout_now() -> None:
    h = make()
    elect(h)
    h.step(MsgType.APPEND_RESP, "b", index=1)
    h.core.propose(b"x")
    h.drain()
    h.core.transfer_leadership("c")
    with pytest.raises(NotLeader) as info:
        h.core.propose(b"y")
    assert info.value.leader == "c"
    rd = h.step(MsgType.APPEND_RESP, "c", index=h.core.last_index)
    assert [m.dst for m in sent(rd, MsgType.TIMEOUT_NOW)] == ["c"]


def test_timeout_now_starts_a_forced_election_at_once() -> None:
    h = make(hard_state=HardState(term=2))
    h.step(MsgType.HEARTBEAT, "b", term=2)
    rd = h.step(MsgType.TIMEOUT_NOW, "b", term=2)
    assert h.core.role is Role.CANDIDATE and h.core.term == 3
    votes = sent(rd, MsgType.VOTE)
    assert votes and all(m.context == CAMPAIGN_TRANSFER for m in votes)
