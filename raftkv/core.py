"""The pure Raft core: a deterministic state machine with no I/O.

Inputs are `tick()`, `step(message)`, `propose(data)`, `read_index(request_id)`,
`transfer_leadership(to)` and `compact(snapshot)`. Outputs are batched in a `Ready`
(persist, then send, then apply); the driver hands each back with `advance(ready)`.
Time is the number of `tick()` calls; randomness is the injected `random.Random`.

Beyond the Raft paper it implements PreVote, CheckQuorum with leader stickiness,
pipelined and batched replication with fast backtracking, leadership transfer,
ReadIndex and lease reads, and InstallSnapshot, in the manner of etcd-io/raft.

Two message fields carry more than their names say:
- HEARTBEAT.index is the leader's tick stamp at send time, echoed back in
  HEARTBEAT_RESP.index: a lease is counted from when the heartbeat left, not from
  when its answer arrived.
- VOTE.context == CAMPAIGN_TRANSFER marks an election started by TIMEOUT_NOW, which
  voters grant even while they still hear from a leader.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raftkv.log import LogConflict, RaftLog
from raftkv.progress import FollowerProgress, ProgressState
from raftkv.timing import RaftTiming
from raftkv.types import (
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Snapshot,
)

__all__ = [
    "BUGS",
    "CAMPAIGN_TRANSFER",
    "MAX_ENTRIES_PER_APPEND",
    "Config",
    "LogConflict",
    "NotLeader",
    "Raft",
    "Role",
    "hard_state_on_restart",
]

BUGS = frozenset(
    {"commit-old-term", "skip-log-check", "stale-leader-read", "vote-amnesia", "no-fsync"}
)
"""Deliberate bugs a Config may switch on, so the harness can prove it catches them.

- commit-old-term: the leader commits entries of older terms by counting replicas.
- skip-log-check: votes and pre-votes are granted without the log up-to-date check.
- stale-leader-read: no CheckQuorum step-down, and lease reads are always served.
- vote-amnesia: the vote is forgotten on restart (see `hard_state_on_restart`).
- no-fsync: the driver acknowledges before its writes are durable (driver-side only).
"""

MAX_ENTRIES_PER_APPEND = 256
"""Config.max_entries_per_append's default, for whoever offers it as a setting."""

CAMPAIGN_TRANSFER = 1
"""VOTE.context of an election forced by TIMEOUT_NOW (leadership transfer)."""

_VOTE_REQUESTS = frozenset({MsgType.PRE_VOTE, MsgType.VOTE})
_FROM_LEADER = frozenset({MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT})


class Role(enum.Enum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True)
class Config:
    """Static configuration of one Raft node.

    `peers` lists every voter including `id`; `timing` holds the timeouts (in ticks) and
    `check_quorum`, with their contract. Without `pre_vote` a node that times out starts
    a real election at once, disrupting a healthy leader when it rejoins. A leader sends
    at most `max_entries_per_append` entries per append and keeps at most
    `max_inflight_appends` unacknowledged appends per follower.
    """

    id: str
    peers: tuple[str, ...]
    timing: RaftTiming = field(default_factory=RaftTiming)
    pre_vote: bool = True
    max_entries_per_append: int = MAX_ENTRIES_PER_APPEND
    max_inflight_appends: int = 64
    bugs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.id not in self.peers or len(set(self.peers)) != len(self.peers):
            raise ValueError(f"peers {self.peers} must list {self.id!r} once, without repeats")
        if self.max_entries_per_append < 1 or self.max_inflight_appends < 1:
            raise ValueError("max_entries_per_append and max_inflight_appends must be >= 1")
        unknown = set(self.bugs) - BUGS
        if unknown:
            raise ValueError(f"unknown bugs {sorted(unknown)}; known: {sorted(BUGS)}")

    @property
    def quorum(self) -> int:
        return len(self.peers) // 2 + 1


class NotLeader(Exception):
    """This node cannot serve the request; `leader` is the leader it knows of, if any."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader})")
        self.leader = leader


def hard_state_on_restart(config: Config, hard_state: HardState) -> HardState:
    """The hard state a restarting node hands to `Raft`: as persisted, unless the
    `vote-amnesia` bug makes it forget whom it voted for."""
    if "vote-amnesia" in config.bugs:
        return HardState(term=hard_state.term, vote=None, commit=hard_state.commit)
    return hard_state


@dataclass(slots=True)
class _ReadRound:
    """A ReadIndex request waiting for a quorum to confirm this leader's term."""

    round_id: int
    commit_index: int
    request_id: int
    acks: set[str] = field(default_factory=set)


class Raft:
    """One Raft node's protocol state. Not thread-safe; the driver serialises calls.

    `entries` is the persisted log after `snapshot`. After construction the driver
    restores its state machine from `snapshot` itself; `Ready.committed` then replays the
    entries after it. Call `advance(ready)` before asking for the next `ready()`.
    """

    def __init__(
        self,
        config: Config,
        rng: random.Random,
        hard_state: HardState,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
    ) -> None:
        assert hard_state.vote is None or hard_state.vote in config.peers, hard_state
        self.config = config
        self._rng = rng
        self.id = config.id
        self._others = tuple(p for p in config.peers if p != config.id)
        self._quorum = config.quorum
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.log = RaftLog(snapshot, entries, hard_state.commit)
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self._now_tick = 0
        self._election_elapsed_ticks = 0
        self._leader_contact_elapsed_ticks = 0
        self._heartbeat_elapsed_ticks = 0
        self._timeout_ticks = self._random_timeout_ticks()
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, FollowerProgress] = {}
        self._msgs: list[Message] = []
        self._reads: list[ReadState] = []
        self._dropped_reads: list[int] = []
        self._waiting_reads: list[tuple[int, bool]] = []
        self._read_rounds: list[_ReadRound] = []
        self._next_round_id = 1
        self._transfer_target: str | None = None
        self._transfer_elapsed_ticks = 0
        self._lease_forfeited = False
        self._bcast_pending = False
        self._persisted_hard_state = hard_state
        self._ready_outstanding = False

    # ---- inspection -----------------------------------------------------------------

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index()

    @property
    def snapshot_index(self) -> int:
        return self.log.offset

    @property
    def transfer_target(self) -> str | None:
        return self._transfer_target

    def entry(self, index: int) -> Entry | None:
        """The log entry at `index`, or None when compacted or absent."""
        return self.log.entry(index)

    def progress(self, peer: str) -> FollowerProgress | None:
        """The leader's view of `peer`'s log (None unless leader)."""
        return self._progress.get(peer)

    # ---- inputs ---------------------------------------------------------------------

    def tick(self) -> None:
        """Advance time by one tick."""
        self._now_tick += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, msg: Message) -> None:
        """Handle one message from a peer; stale, duplicated and reordered ones are safe."""
        assert msg.dst == self.id, f"{self.id} got a message for {msg.dst}"
        if msg.src not in self._others:
            return
        if msg.term > self.term:
            if not self._accept_higher_term(msg):
                return
        elif msg.term < self.term:
            self._answer_stale(msg)
            return
        if msg.type in _VOTE_REQUESTS:
            self._handle_vote_request(msg)
        elif self.role is Role.LEADER:
            self._step_leader(msg)
        elif self.role is Role.FOLLOWER:
            self._step_follower(msg)
        else:
            self._step_candidate(msg)

    def propose(self, data: bytes) -> int:
        """Append a command on the leader; returns its index. Raises NotLeader."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transfer_target is not None:
            raise NotLeader(self._transfer_target)
        index = self.log.last_index() + 1
        self.log.append([Entry(self.term, index, EntryKind.NORMAL, data)])
        self._bcast_pending = True
        self._maybe_commit()
        return index

    def read_index(self, request_id: int, lease: bool = False) -> None:
        """Ask for a linearizable read point. Raises NotLeader.

        The answer is a `ReadState(request_id, index)` in a later `Ready.reads`: the
        read may be served once the state machine has applied `index`. If leadership is
        lost first, `request_id` appears in `Ready.dropped_reads` instead. With
        `lease=True` and a valid lease the answer comes without a heartbeat round.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if not self._committed_in_term():
            self._waiting_reads.append((request_id, lease))
            return
        self._start_read(request_id, lease)

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to `to`: catch it up, then tell it to campaign at once.

        Proposals are refused (NotLeader naming `to`) until the transfer ends: when this
        node steps down, or after an election timeout without success.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if to not in self._others:
            if to == self.id:
                return
            raise ValueError(f"{to!r} is not a peer")
        if self._transfer_target == to:
            return
        self._transfer_target = to
        self._transfer_elapsed_ticks = 0
        if self._progress[to].match_index == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def compact(self, snapshot: Snapshot) -> None:
        """The driver snapshotted its state machine at `snapshot.index` (<= applied):
        drop the covered log prefix and keep the snapshot for lagging followers."""
        self.log.compact(snapshot)

    # ---- outputs --------------------------------------------------------------------

    def has_ready(self) -> bool:
        if self._msgs or self._reads or self._dropped_reads or self._bcast_pending:
            return True
        log = self.log
        return (
            log.pending_snapshot is not None
            or log.unstable_from <= log.offset + len(log.entries)
            or log.committed > log.applied
            or self._hard_state_changed()
        )

    def _hard_state_changed(self) -> bool:
        # Compared field by field: has_ready runs after every event, a HardState per call
        # was a tenth of a simulated run.
        persisted = self._persisted_hard_state
        return (
            self.term != persisted.term
            or self.vote != persisted.vote
            or self.log.committed != persisted.commit
        )

    def ready(self) -> Ready:
        """The next batch of effects; see `Ready` for the order to carry them out."""
        assert not self._ready_outstanding, "advance() the previous Ready first"
        if self._bcast_pending:
            self._bcast_pending = False
            self._bcast_append()
        log = self.log
        last_index = log.last_index()
        # Most batches have nothing to persist or apply: no slices then.
        rd = Ready(
            hard_state=self._hard_state() if self._hard_state_changed() else None,
            entries=log.slice(log.unstable_from, last_index + 1)
            if log.unstable_from <= last_index
            else [],
            snapshot=log.pending_snapshot,
            messages=self._msgs,
            committed=log.slice(log.applied + 1, log.committed + 1)
            if log.committed > log.applied
            else [],
            reads=self._reads,
            dropped_reads=self._dropped_reads,
        )
        self._msgs, self._reads, self._dropped_reads = [], [], []
        self._ready_outstanding = True
        return rd

    def advance(self, ready: Ready) -> None:
        """The driver carried out `ready`: its writes are durable and its entries applied."""
        self._ready_outstanding = False
        log = self.log
        if ready.hard_state is not None:
            self._persisted_hard_state = ready.hard_state
        if ready.snapshot is not None and log.pending_snapshot is ready.snapshot:
            log.pending_snapshot = None
        if ready.entries:
            last = ready.entries[-1]
            # A suffix replaced since ready() is not durable: its terms differ.
            if log.term_at(last.index) == last.term:
                log.unstable_from = max(log.unstable_from, last.index + 1)
        if ready.committed:
            log.applied = max(log.applied, ready.committed[-1].index)

    # ---- timers and role changes -----------------------------------------------------

    def _random_timeout_ticks(self) -> int:
        et = self.config.timing.election_timeout_ticks
        return et + self._rng.randrange(et)

    def _tick_election(self) -> None:
        self._election_elapsed_ticks += 1
        self._leader_contact_elapsed_ticks += 1
        if self._election_elapsed_ticks >= self._timeout_ticks:
            self._start_election(pre_vote=self.config.pre_vote)

    def _tick_leader(self) -> None:
        timing = self.config.timing
        self._leader_contact_elapsed_ticks = 0
        self._election_elapsed_ticks += 1
        if self._transfer_target is not None:
            self._transfer_elapsed_ticks += 1
            if self._transfer_elapsed_ticks >= timing.election_timeout_ticks:
                self._transfer_target = None
        if self._election_elapsed_ticks >= timing.election_timeout_ticks:
            self._election_elapsed_ticks = 0
            if (
                timing.check_quorum
                and "stale-leader-read" not in self.config.bugs
                and not self._quorum_recently_active()
            ):
                self._become_follower(self.term, None)
                return
            for pr in self._progress.values():
                pr.recent_active = False
        self._heartbeat_elapsed_ticks += 1
        if self._heartbeat_elapsed_ticks >= timing.heartbeat_ticks:
            self._heartbeat_elapsed_ticks = 0
            context = self._read_rounds[-1].round_id if self._read_rounds else 0
            self._bcast_heartbeat(context)

    def _quorum_recently_active(self) -> bool:
        active = 1 + sum(pr.recent_active for pr in self._progress.values())
        return active >= self.config.quorum

    def _reset_timers(self) -> None:
        self._election_elapsed_ticks = 0
        self._heartbeat_elapsed_ticks = 0
        self._timeout_ticks = self._random_timeout_ticks()

    def _become_follower(self, term: int, leader: str | None) -> None:
        was_leader = self.role is Role.LEADER
        if term != self.term:
            self.term, self.vote = term, None
        self.role, self.leader = Role.FOLLOWER, leader
        self._votes.clear()
        self._reset_timers()
        if was_leader:
            self._end_leadership()

    def _end_leadership(self) -> None:
        self._dropped_reads.extend(request_id for request_id, _ in self._waiting_reads)
        self._dropped_reads.extend(r.request_id for r in self._read_rounds)
        self._waiting_reads.clear()
        self._read_rounds.clear()
        self._progress.clear()
        self._transfer_target = None
        self._bcast_pending = False

    def _start_election(self, pre_vote: bool, transfer: bool = False) -> None:
        self._reset_timers()
        self.leader = None
        self._votes = {self.id: True}
        if pre_vote:
            self.role = Role.PRE_CANDIDATE
            vote_type, vote_term = MsgType.PRE_VOTE, self.term + 1
        else:
            self.role = Role.CANDIDATE
            self.term, self.vote = self.term + 1, self.id
            vote_type, vote_term = MsgType.VOTE, self.term
        context = CAMPAIGN_TRANSFER if transfer else 0
        for peer in self._others:
            self._send(
                vote_type,
                peer,
                term=vote_term,
                index=self.log.last_index(),
                log_term=self.log.last_term(),
                context=context,
            )
        self._tally_votes()

    def _tally_votes(self) -> None:
        granted = sum(self._votes.values())
        rejected = len(self._votes) - granted
        if granted >= self.config.quorum:
            if self.role is Role.PRE_CANDIDATE:
                self._start_election(pre_vote=False)
            else:
                self._become_leader()
        elif rejected > len(self.config.peers) - self.config.quorum:
            self._become_follower(self.term, None)

    def _become_leader(self) -> None:
        self.role, self.leader = Role.LEADER, self.id
        self._votes.clear()
        self._reset_timers()
        self._leader_contact_elapsed_ticks = 0
        self._lease_forfeited = False
        self._transfer_target = None
        next_index = self.log.last_index() + 1
        self._progress = {
            p: FollowerProgress(next_index=next_index, progress_tick=self._now_tick)
            for p in self._others
        }
        self.log.append([Entry(self.term, next_index, EntryKind.NOOP)])
        self._bcast_append()
        self._maybe_commit()

    # ---- message handling -----------------------------------------------------------

    def _send(self, msg_type: MsgType, dst: str, **fields: Any) -> None:
        fields.setdefault("term", self.term)
        self._msgs.append(Message(type=msg_type, src=self.id, dst=dst, **fields))

    def _heard_from_leader_recently(self) -> bool:
        return (
            self.config.timing.check_quorum
            and self._leader_contact_elapsed_ticks < self.config.timing.election_timeout_ticks
        )

    def _accept_higher_term(self, msg: Message) -> bool:
        """Move to `msg.term` if the message warrants it; False: drop the message."""
        if msg.type in (MsgType.PRE_VOTE, MsgType.VOTE):
            forced = msg.type is MsgType.VOTE and msg.context == CAMPAIGN_TRANSFER
            if not forced and self._heard_from_leader_recently():
                return False
        if msg.type is MsgType.PRE_VOTE or (msg.type is MsgType.PRE_VOTE_RESP and not msg.reject):
            # A pre-vote names the term its sender would campaign in; nobody moves yet.
            return True
        from_leader = msg.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT)
        self._become_follower(msg.term, msg.src if from_leader else None)
        return True

    def _answer_stale(self, msg: Message) -> None:
        if msg.type in (MsgType.APPEND, MsgType.HEARTBEAT):
            # Tell a deposed leader about the newer term so it steps down.
            self._send(MsgType.APPEND_RESP, msg.src)
        elif msg.type is MsgType.PRE_VOTE:
            self._send(MsgType.PRE_VOTE_RESP, msg.src, reject=True)

    def _handle_vote_request(self, msg: Message) -> None:
        pre = msg.type is MsgType.PRE_VOTE
        can_vote = (
            self.vote == msg.src
            or (self.vote is None and self.leader is None)
            or (pre and msg.term > self.term)
        )
        up_to_date = "skip-log-check" in self.config.bugs or self.log.is_up_to_date(
            msg.index, msg.log_term
        )
        resp_type = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        if can_vote and up_to_date:
            if not pre:
                self.vote = msg.src
                self._election_elapsed_ticks = 0
            self._send(resp_type, msg.src, term=msg.term)
        else:
            self._send(resp_type, msg.src, reject=True)

    def _step_candidate(self, msg: Message) -> None:
        if msg.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self._become_follower(self.term, msg.src)
            self._step_follower(msg)
            return
        pre = self.role is Role.PRE_CANDIDATE
        expected = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        if msg.type is not expected:
            return
        if pre and not msg.reject and msg.term != self.term + 1:
            return
        self._votes.setdefault(msg.src, not msg.reject)
        self._tally_votes()

    def _step_follower(self, msg: Message) -> None:
        if msg.type is MsgType.TIMEOUT_NOW:
            self._start_election(pre_vote=False, transfer=True)
            return
        if msg.type not in _FROM_LEADER:
            return
        self.leader = msg.src
        self._election_elapsed_ticks = 0
        self._leader_contact_elapsed_ticks = 0
        if msg.type is MsgType.APPEND:
            self._handle_append(msg)
        elif msg.type is MsgType.HEARTBEAT:
            self.log.commit_to(msg.commit)
            # Built here rather than by _send: this and the append path are most messages.
            self._msgs.append(
                Message(MsgType.HEARTBEAT_RESP, self.id, msg.src, self.term,
                        index=msg.index, context=msg.context)
            )  # fmt: skip
        else:
            self._handle_snapshot(msg)

    def _handle_append(self, msg: Message) -> None:
        log = self.log
        if msg.index < log.committed:
            self._send(MsgType.APPEND_RESP, msg.src, index=log.committed)
            return
        last_new = log.maybe_append(msg.index, msg.log_term, msg.entries)
        if last_new is not None:
            log.commit_to(min(msg.commit, last_new))
            self._msgs.append(
                Message(MsgType.APPEND_RESP, self.id, msg.src, self.term, index=last_new)
            )
            return
        hint_index, hint_term = log.find_conflict_by_term(
            min(msg.index, log.last_index()), msg.log_term
        )
        self._send(
            MsgType.APPEND_RESP,
            msg.src,
            index=msg.index,
            reject=True,
            reject_hint=hint_index,
            hint_term=hint_term,
        )

    def _handle_snapshot(self, msg: Message) -> None:
        snap, log = msg.snapshot, self.log
        if snap is None:
            return
        if snap.index <= log.committed:
            self._send(MsgType.APPEND_RESP, msg.src, index=log.committed)
            return
        if log.match_term(snap.index, snap.term):
            log.commit_to(snap.index)
        else:
            log.restore(snap)
        self._send(MsgType.APPEND_RESP, msg.src, index=snap.index)

    # ---- the leader -----------------------------------------------------------------

    def _step_leader(self, msg: Message) -> None:
        pr = self._progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if msg.type is MsgType.APPEND_RESP:
            if msg.reject:
                self._handle_append_reject(pr, msg)
            else:
                self._handle_append_ack(pr, msg)
        elif msg.type is MsgType.HEARTBEAT_RESP:
            self._handle_heartbeat_resp(pr, msg)

    def _handle_append_reject(self, pr: FollowerProgress, msg: Message) -> None:
        if pr.state is ProgressState.REPLICATE:
            current = msg.index > pr.match_index
        else:
            current = pr.state is ProgressState.PROBE and msg.index == pr.next_index - 1
        if not current:
            return
        probe_index = msg.reject_hint
        if msg.hint_term > 0:
            probe_index, _ = self.log.find_conflict_by_term(msg.reject_hint, msg.hint_term)
        pr.become_probe(self._now_tick)
        pr.next_index = max(min(msg.index, probe_index + 1), pr.match_index + 1)
        self._send_append(msg.src)

    def _handle_append_ack(self, pr: FollowerProgress, msg: Message) -> None:
        if pr.acknowledge(msg.index, self._now_tick):
            if pr.state is ProgressState.PROBE or (
                pr.state is ProgressState.SNAPSHOT and pr.match_index >= pr.snapshot_index
            ):
                pr.become_replicate(self._now_tick)
            self._maybe_commit()
            if msg.src == self._transfer_target and pr.match_index == self.log.last_index():
                self._send_timeout_now(msg.src)
        self._send_append(msg.src)

    def _handle_heartbeat_resp(self, pr: FollowerProgress, msg: Message) -> None:
        pr.lease_stamp_tick = max(pr.lease_stamp_tick, msg.index)
        behind = pr.match_index < self.log.last_index()
        # A lost append or snapshot leaves a follower waiting; retransmit once it is overdue.
        retransmit_ticks = max(2, self.config.timing.election_timeout_ticks // 2)
        overdue = self._now_tick - pr.progress_tick >= retransmit_ticks
        if behind and pr.state is not ProgressState.PROBE and overdue:
            pr.become_probe(self._now_tick)
        if pr.state is ProgressState.PROBE:
            pr.probe_sent = False
        if behind:
            self._send_append(msg.src)
        if msg.context:
            self._ack_read_round(msg.context, msg.src)

    def _maybe_commit(self) -> bool:
        matches = [pr.match_index for pr in self._progress.values()]
        matches.append(self.log.last_index())
        matches.sort(reverse=True)
        index = matches[self._quorum - 1]
        if index <= self.log.committed:
            return False
        # Figure 8: counting replicas proves only entries of the leader's own term committed.
        if self.log.term_at(index) != self.term and "commit-old-term" not in self.config.bugs:
            return False
        self.log.commit_to(index)
        if self._waiting_reads and self._committed_in_term():
            waiting, self._waiting_reads = self._waiting_reads, []
            for request_id, lease in waiting:
                self._start_read(request_id, lease)
        return True

    def _committed_in_term(self) -> bool:
        return self.log.term_at(self.log.committed) == self.term

    def _bcast_append(self) -> None:
        for peer in self._others:
            self._send_append(peer)

    def _send_append(self, peer: str) -> None:
        pr, log = self._progress[peer], self.log
        if pr.paused(self.config.max_inflight_appends):
            return
        prev_index = pr.next_index - 1
        prev_term = log.term_at(prev_index)
        if prev_term is None:
            self._send_snapshot(peer, pr)
            return
        hi = min(log.last_index() + 1, pr.next_index + self.config.max_entries_per_append)
        entries = tuple(log.slice(pr.next_index, hi)) if pr.next_index < hi else ()
        if not entries and pr.state is ProgressState.REPLICATE:
            return
        self._msgs.append(
            Message(MsgType.APPEND, self.id, peer, self.term,
                    log_term=prev_term, index=prev_index, entries=entries, commit=log.committed)
        )  # fmt: skip
        if pr.state is ProgressState.REPLICATE:
            pr.next_index = entries[-1].index + 1
            pr.inflight.append(entries[-1].index)
        else:
            pr.probe_sent = True

    def _send_snapshot(self, peer: str, pr: FollowerProgress) -> None:
        snap = self.log.snapshot
        assert snap is not None, "log compacted without a snapshot"
        self._send(MsgType.SNAPSHOT, peer, snapshot=snap)
        pr.become_snapshot(snap.index, self._now_tick)

    def _send_timeout_now(self, peer: str) -> None:
        # The target's election skips leader stickiness, so no lease is safe from now on.
        self._lease_forfeited = True
        self._send(MsgType.TIMEOUT_NOW, peer)

    def _bcast_heartbeat(self, context: int) -> None:
        committed, progress, msgs = self.log.committed, self._progress, self._msgs
        for peer in self._others:
            commit = min(progress[peer].match_index, committed)
            msgs.append(
                Message(MsgType.HEARTBEAT, self.id, peer, self.term,
                        index=self._now_tick, commit=commit, context=context)
            )  # fmt: skip

    # ---- reads ----------------------------------------------------------------------

    def _start_read(self, request_id: int, lease: bool) -> None:
        if (lease and self._lease_valid()) or self.config.quorum == 1:
            self._reads.append(ReadState(request_id, self.log.committed))
            return
        read_round = _ReadRound(self._next_round_id, self.log.committed, request_id, {self.id})
        self._next_round_id += 1
        self._read_rounds.append(read_round)
        self._bcast_heartbeat(read_round.round_id)

    def _lease_valid(self) -> bool:
        if "stale-leader-read" in self.config.bugs:
            return True
        if not self.config.timing.check_quorum or self._lease_forfeited or self._transfer_target:
            return False
        stamps = sorted(
            [self._now_tick, *(pr.lease_stamp_tick for pr in self._progress.values())],
            reverse=True,
        )
        return self._now_tick - stamps[self.config.quorum - 1] < self.config.timing.lease_ticks

    def _ack_read_round(self, round_id: int, peer: str) -> None:
        for read_round in self._read_rounds:
            if read_round.round_id == round_id:
                read_round.acks.add(peer)
                if len(read_round.acks) >= self.config.quorum:
                    self._release_reads_through(round_id)
                return

    def _release_reads_through(self, round_id: int) -> None:
        # A quorum confirming a later round also confirms every earlier one.
        while self._read_rounds and self._read_rounds[0].round_id <= round_id:
            done = self._read_rounds.pop(0)
            self._reads.append(ReadState(done.request_id, done.commit_index))

    def _hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)
