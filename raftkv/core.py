"""The pure Raft core: a deterministic state machine with no I/O.

Inputs are `tick()`, `step(message)`, `propose(data)`, `read_index(request_id)`,
`transfer_leadership(to)`, `propose_conf_change(op, node_id)` and `compact(snapshot)`.
Outputs are batched in a `Ready` (persist, then send, then apply); the driver hands each
back with `advance(ready)`. Time is the number of `tick()` calls; randomness is the
injected `random.Random`.

Beyond the Raft paper it implements PreVote, CheckQuorum with leader stickiness,
pipelined and batched replication with fast backtracking, leadership transfer,
ReadIndex and lease reads, InstallSnapshot, and membership changes, in the manner of
etcd-io/raft.

Membership changes are the dissertation's single-server changes (ch. 4), through the log:
- A configuration is a `Membership` (voters, learners). It lives in the log as CONF_CHANGE
  entries, each carrying the whole configuration it results in (`ConfChange`), and in
  snapshots (`Snapshot.peers`, `Snapshot.learners`). Before any change, a node's
  configuration is `Config.peers`, all voters; a node started with `Config.join` has none
  until the leader's log or snapshot gives it one.
- A node uses the latest configuration in its log, committed or not: a change takes
  effect on append, and a truncation that drops it restores the one before.
- `propose_conf_change(op, node_id)` adds a learner, promotes a learner, or removes a
  member. A leader has at most one change uncommitted, and starts none before it has
  committed an entry of its own term (the 2015 fix: two leaders' uncommitted changes
  could otherwise form disjoint majorities). Refusals raise `ConfChangeError`.
- Learners receive appends and snapshots (a new one is caught up like any follower, by
  snapshot when the leader's log no longer reaches back far enough); they are never asked
  for a vote, never count for quorum or commit, and never campaign. A learner is
  promoted only once it has caught up (`learner-behind` otherwise).
- A node that is not a voter of its own configuration does not campaign. A learner
  grants votes (dissertation 4.1: a voter may not yet know of its promotion, and a
  quorum may need it); a vote counts only from a voter of the candidate's
  configuration. A node outside its own configuration (removed, or started with `join`
  and not yet added) grants none. A removed server that never heard of its removal
  cannot win (its log lacks the removal), and leader stickiness (check-quorum) keeps it
  from disrupting.
- An id names one server with its disk. A server whose disk was wiped comes back under
  a new id (as etcd gives a re-added member a new member id): under its old one, a
  stale node's log or an old snapshot would still count it as a voter, and its empty
  disk would vote again in terms it already voted in, for logs it no longer holds.
- A leader keeps replicating to a member it removes until the removal commits, so that
  the member learns of it; a leader that removes itself keeps leading without counting
  itself until the removal commits, then sends TIMEOUT_NOW to an up-to-date voter and
  steps down.
- Messages are handled whatever their sender's membership: a new member must accept its
  leader's appends before it learns it is a member.

The driver's side: `Raft.membership` is the configuration now (read it after
construction); `Ready.membership` is the new one whenever it changes, naming the peers
to dial; a change is done once its entry (at the index `propose_conf_change` returned)
is applied with the term it was proposed in, as for a command. A snapshot the driver
hands to `compact` carries `membership_at(snapshot.index)`. With no change ever proposed,
none of this alters a message or a random draw.

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
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    HardState,
    Membership,
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
    "ConfChangeError",
    "ConfChangeOp",
    "Config",
    "LogConflict",
    "Membership",
    "NotLeader",
    "Raft",
    "Role",
    "changed_membership",
    "hard_state_on_restart",
]

BUGS = frozenset(
    {
        "commit-old-term",
        "skip-log-check",
        "stale-leader-read",
        "vote-amnesia",
        "no-fsync",
        "conf-two-in-flight",
    }
)
"""Deliberate bugs a Config may switch on, so the harness can prove it catches them.

- commit-old-term: the leader commits entries of older terms by counting replicas.
- skip-log-check: votes and pre-votes are granted without the log up-to-date check.
- stale-leader-read: no CheckQuorum step-down, and lease reads are always served.
- vote-amnesia: the vote is forgotten on restart (see `hard_state_on_restart`).
- no-fsync: the driver acknowledges before its writes are durable (driver-side only).
- conf-two-in-flight: a leader starts a configuration change while its previous one is
  still uncommitted, so two changes may separate the configurations nodes hold.
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

    `peers` lists every voter including `id`: the cluster's first configuration, which
    the node uses until its log or snapshot holds another. With `join` the node starts
    with no configuration instead (a node being added to a running cluster, or a server
    back with a wiped disk, under a new id): it grants votes once its log makes it a
    member, and campaigns once it makes it a voter. `timing` holds the timeouts (in
    ticks) and `check_quorum`, with their contract. Without `pre_vote` a node that times
    out starts a real election at once, disrupting a healthy leader when it rejoins. A
    leader sends at most `max_entries_per_append` entries per append and keeps at most
    `max_inflight_appends` unacknowledged appends per follower.
    """

    id: str
    peers: tuple[str, ...]
    timing: RaftTiming = field(default_factory=RaftTiming)
    pre_vote: bool = True
    max_entries_per_append: int = MAX_ENTRIES_PER_APPEND
    max_inflight_appends: int = 64
    bugs: frozenset[str] = frozenset()
    join: bool = False

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


class ConfChangeError(ValueError):
    """The leader refuses a configuration change; the message says why.

    `reason` is one of:
    - "pending": a change is still uncommitted; retry once it commits;
    - "not-committed-in-term": this leader has yet to commit an entry of its term;
      retry shortly;
    - "unknown-node": promote or remove of an id that is not a member;
    - "already-member": add-learner of an id that is already a voter or learner;
    - "not-a-learner": promote of a voter;
    - "last-voter": removing the only voter;
    - "learner-behind": promote of a learner that has not caught up with the commit
      index; retry once it has;
    - "bad-id": an empty node id.
    `retryable` is True for the reasons that go away by themselves.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = reason in _RETRYABLE_CONF_REASONS


_RETRYABLE_CONF_REASONS = frozenset({"pending", "not-committed-in-term", "learner-behind"})


def changed_membership(membership: Membership, op: ConfChangeOp, node_id: str) -> Membership:
    """The configuration after `op` on `node_id`; raises ConfChangeError for a change
    that cannot apply to `membership` (see its reasons)."""
    voters, learners = membership.voters, membership.learners
    if not node_id:
        raise ConfChangeError("bad-id", "a node id must not be empty")
    is_member = node_id in voters or node_id in learners
    if op is ConfChangeOp.ADD_LEARNER:
        if is_member:
            role = "a voter" if node_id in voters else "a learner"
            raise ConfChangeError("already-member", f"{node_id!r} is already {role}")
        return Membership(voters, (*learners, node_id))
    if not is_member:
        raise ConfChangeError("unknown-node", f"{node_id!r} is not a member ({op.value})")
    if op is ConfChangeOp.PROMOTE:
        if node_id in voters:
            raise ConfChangeError("not-a-learner", f"{node_id!r} is a voter, not a learner")
        return Membership((*voters, node_id), tuple(p for p in learners if p != node_id))
    if voters == (node_id,):
        raise ConfChangeError("last-voter", f"{node_id!r} is the last voter")
    return Membership(
        tuple(p for p in voters if p != node_id), tuple(p for p in learners if p != node_id)
    )


@dataclass(slots=True)
class _ConfPoint:
    """The configuration that the entry at (`index`, `term`) brought in; for the first
    point, the one in force at the log's start (snapshot or `Config`)."""

    index: int
    term: int
    membership: Membership


def _first_membership(config: Config, snapshot: Snapshot | None) -> Membership:
    bootstrap = Membership(() if config.join else config.peers)
    if snapshot is None or not snapshot.peers:
        return bootstrap
    if bootstrap.same_as(snapshot.peers, snapshot.learners):
        return bootstrap  # the same set in Config's order, which orders the messages
    return snapshot.membership


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
        assert hard_state.vote is None or hard_state.term > 0, hard_state
        self.config = config
        self._rng = rng
        self.id = config.id
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.log = RaftLog(snapshot, entries, hard_state.commit)
        log = self.log
        self._conf_points = [
            _ConfPoint(log.offset, log.offset_term, _first_membership(config, snapshot))
        ]
        self._conf_points.extend(
            _ConfPoint(e.index, e.term, ConfChange.decode(e.data).membership)
            for e in log.entries
            if e.kind is EntryKind.CONF_CHANGE
        )
        self._membership_news = False
        self._use_membership(self._conf_points[-1].membership)
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

    @property
    def membership(self) -> Membership:
        """The configuration this node uses now: the latest in its log, maybe uncommitted."""
        return self._membership

    @property
    def voters(self) -> tuple[str, ...]:
        return self._membership.voters

    @property
    def learners(self) -> tuple[str, ...]:
        return self._membership.learners

    @property
    def conf_index(self) -> int:
        """The index of the entry that brought in `membership` (for a configuration from
        the snapshot or `Config`: the snapshot's index, or 0)."""
        return self._conf_points[-1].index

    @property
    def conf_pending(self) -> bool:
        """A configuration change is in the log and not yet known to be committed."""
        return self._conf_points[-1].index > self.log.committed

    def membership_at(self, index: int) -> Membership:
        """The configuration in force once the entry at `index` is in the log (`index` at
        least `snapshot_index`, at most `last_index`): the one a snapshot at `index` carries."""
        assert self.log.offset <= index <= self.log.last_index(), index
        found = self._conf_points[0].membership
        for point in self._conf_points:
            if point.index > index:
                break
            found = point.membership
        return found

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
        if msg.src == self.id:
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
        if to not in self._vote_peers:
            if to == self.id:
                return
            if to in self._membership.learners:
                raise ValueError(f"{to!r} is a learner, not a voter")
            raise ValueError(f"{to!r} is not a peer")
        if self._transfer_target == to:
            return
        self._transfer_target = to
        self._transfer_elapsed_ticks = 0
        if self._progress[to].match_index == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def propose_conf_change(self, op: ConfChangeOp, node_id: str, context: str = "") -> int:
        """Append a configuration change on the leader; returns its index.

        Raises NotLeader (as `propose`) or ConfChangeError. The change takes effect at
        once (a new learner is replicated to from now on); it is done once its index is
        applied with this term. A leader that removes itself steps down when the removal
        commits. `context` rides in the entry (`ConfChange.context`) for the drivers.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transfer_target is not None:
            raise NotLeader(self._transfer_target)
        if not self._committed_in_term():
            raise ConfChangeError(
                "not-committed-in-term",
                f"leader {self.id} has not yet committed an entry of its term {self.term}",
            )
        if self.conf_pending and "conf-two-in-flight" not in self.config.bugs:
            raise ConfChangeError(
                "pending",
                f"the configuration change at index {self.conf_index} is not committed yet",
            )
        membership = changed_membership(self._membership, op, node_id)
        if op is ConfChangeOp.PROMOTE:
            # A voter far behind would leave the new quorum waiting for it.
            pr = self._progress[node_id]
            lag = self.log.committed - pr.match_index
            replicating = pr.state is ProgressState.REPLICATE and pr.recent_active
            if not replicating or lag > self.config.max_entries_per_append:
                raise ConfChangeError(
                    "learner-behind",
                    f"learner {node_id!r} holds index {pr.match_index}, not caught up with "
                    f"the commit index {self.log.committed}",
                )
        index = self.log.last_index() + 1
        change = ConfChange(op, node_id, membership.voters, membership.learners, context)
        self.log.append([Entry(self.term, index, EntryKind.CONF_CHANGE, change.encode())])
        self._conf_points.append(_ConfPoint(index, self.term, membership))
        self._change_membership(membership)
        self._bcast_pending = True
        self._maybe_commit()
        return index

    def compact(self, snapshot: Snapshot) -> None:
        """The driver snapshotted its state machine at `snapshot.index` (<= applied):
        drop the covered log prefix and keep the snapshot for lagging followers. The
        snapshot must carry `membership_at(snapshot.index)`."""
        if snapshot.index <= self.log.offset:
            return
        membership = self.membership_at(snapshot.index)
        assert membership.same_as(snapshot.peers, snapshot.learners), (
            f"snapshot at {snapshot.index} carries {snapshot.membership}, not {membership}"
        )
        self.log.compact(snapshot)
        later = [p for p in self._conf_points[1:] if p.index > snapshot.index]
        self._conf_points = [_ConfPoint(snapshot.index, snapshot.term, membership), *later]

    # ---- outputs --------------------------------------------------------------------

    def has_ready(self) -> bool:
        if self._msgs or self._reads or self._dropped_reads or self._bcast_pending:
            return True
        if self._membership_news:
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
            membership=self._membership if self._membership_news else None,
        )
        self._membership_news = False
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
            if self._is_voter:
                self._start_election(pre_vote=self.config.pre_vote)
            else:
                self._election_elapsed_ticks = 0

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
        if self._simple_quorum:
            active = 1 + sum(pr.recent_active for pr in self._progress.values())
        else:
            voters = self._voter_set
            active = int(self._is_voter) + sum(
                pr.recent_active for peer, pr in self._progress.items() if peer in voters
            )
        return active >= self._quorum

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
        for peer in self._vote_peers:
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
        if granted >= self._quorum:
            if self.role is Role.PRE_CANDIDATE:
                self._start_election(pre_vote=False)
            else:
                self._become_leader()
        elif rejected > len(self._voter_set) - self._quorum:
            self._become_follower(self.term, None)

    def _become_leader(self) -> None:
        self.role, self.leader = Role.LEADER, self.id
        self._votes.clear()
        self._reset_timers()
        self._leader_contact_elapsed_ticks = 0
        self._lease_forfeited = False
        self._transfer_target = None
        self._others = self._targets()
        self._simple_quorum = self._is_voter and self._others == self._vote_peers
        next_index = self.log.last_index() + 1
        self._progress = {
            p: FollowerProgress(next_index=next_index, progress_tick=self._now_tick)
            for p in self._others
        }
        self.log.append([Entry(self.term, next_index, EntryKind.NOOP)])
        self._bcast_append()
        self._maybe_commit()

    # ---- membership -----------------------------------------------------------------

    def _use_membership(self, membership: Membership) -> None:
        """Make `membership` this node's configuration; the leader then calls `_retarget`."""
        self._membership = membership
        voters = membership.voters
        self._voter_set = frozenset(voters)
        self._is_voter = self.id in self._voter_set
        self._is_member = self._is_voter or self.id in membership.learners
        self._vote_peers = tuple(p for p in voters if p != self.id)
        self._quorum = len(voters) // 2 + 1
        self._others = self._targets()
        self._simple_quorum = self._is_voter and self._others == self._vote_peers

    def _targets(self) -> tuple[str, ...]:
        """Whom a leader replicates to: every member but itself and, until a removal
        commits, the removed member, so that it learns of its removal."""
        members = self._membership.members()
        points = self._conf_points
        if len(points) > 1 and points[-1].index > self.log.committed:
            before = points[-2].membership.members()
            members += tuple(p for p in before if p not in members)
        return tuple(p for p in members if p != self.id)

    def _change_membership(self, membership: Membership) -> None:
        self._use_membership(membership)
        self._membership_news = True
        if self.role is Role.LEADER:
            self._retarget()

    def _retarget(self) -> None:
        """Bring the leader's progress in line with `_others`."""
        progress, targets = self._progress, self._others
        for peer in targets:
            if peer not in progress:
                progress[peer] = FollowerProgress(
                    next_index=self.log.last_index(), progress_tick=self._now_tick
                )
        for peer in [p for p in progress if p not in targets]:
            del progress[peer]
        if self._transfer_target is not None and self._transfer_target not in self._vote_peers:
            self._transfer_target = None

    def _track_conf(self, entries: Sequence[Entry]) -> None:
        """Follow the log after a follower's append: drop the configurations of truncated
        entries, take those of appended CONF_CHANGE entries."""
        points, log = self._conf_points, self.log
        changed = False
        while len(points) > 1 and log.term_at(points[-1].index) != points[-1].term:
            points.pop()
            changed = True
        for entry in entries:
            if (
                entry.kind is EntryKind.CONF_CHANGE
                and entry.index > points[-1].index
                and log.term_at(entry.index) == entry.term
            ):
                points.append(
                    _ConfPoint(entry.index, entry.term, ConfChange.decode(entry.data).membership)
                )
                changed = True
        if changed:
            self._change_membership(points[-1].membership)

    def _restore_conf(self, snapshot: Snapshot) -> None:
        membership = _first_membership(self.config, snapshot)
        self._conf_points = [_ConfPoint(snapshot.index, snapshot.term, membership)]
        if membership != self._membership:
            self._change_membership(membership)

    def _conf_committed(self) -> None:
        """The leader's latest configuration committed: stop replicating to a removed
        member; a leader that removed itself hands over and steps down."""
        self._others = self._targets()
        self._simple_quorum = self._is_voter and self._others == self._vote_peers
        self._retarget()
        if self._is_voter:
            return
        last = self.log.last_index()
        for peer in self._vote_peers:
            if self._progress[peer].match_index == last:
                self._send_timeout_now(peer)
                break
        self._become_follower(self.term, None)

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
        # A learner votes too (dissertation 4.1): it may be a voter that has yet to hear of
        # its promotion, and a quorum may need it; its vote counts only for a candidate
        # whose configuration makes it a voter. A node outside its configuration is
        # nobody's voter any more, or not yet.
        can_vote = self._is_member and (
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
        if msg.src not in self._voter_set:
            return
        self._votes.setdefault(msg.src, not msg.reject)
        self._tally_votes()

    def _step_follower(self, msg: Message) -> None:
        if msg.type is MsgType.TIMEOUT_NOW:
            if self._is_voter:
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
            if msg.entries:
                self._track_conf(msg.entries)
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
            self._restore_conf(snap)
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
            if self.role is not Role.LEADER:  # it removed itself, and that committed
                return
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
        if self._simple_quorum:
            matches = [pr.match_index for pr in self._progress.values()]
            matches.append(self.log.last_index())
        else:
            voters = self._voter_set
            matches = [pr.match_index for peer, pr in self._progress.items() if peer in voters]
            if self._is_voter:
                matches.append(self.log.last_index())
        matches.sort(reverse=True)
        index = matches[self._quorum - 1]
        committed = self.log.committed
        if index <= committed:
            return False
        # Figure 8: counting replicas proves only entries of the leader's own term committed.
        if self.log.term_at(index) != self.term and "commit-old-term" not in self.config.bugs:
            return False
        self.log.commit_to(index)
        if committed < self._conf_points[-1].index <= index:
            self._conf_committed()
            if self.role is not Role.LEADER:
                return True
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
        if (lease and self._lease_valid()) or (self._quorum == 1 and self._is_voter):
            self._reads.append(ReadState(request_id, self.log.committed))
            return
        acks = {self.id} if self._is_voter else set()
        read_round = _ReadRound(self._next_round_id, self.log.committed, request_id, acks)
        self._next_round_id += 1
        self._read_rounds.append(read_round)
        self._bcast_heartbeat(read_round.round_id)

    def _lease_valid(self) -> bool:
        if "stale-leader-read" in self.config.bugs:
            return True
        if not self.config.timing.check_quorum or self._lease_forfeited or self._transfer_target:
            return False
        if self._simple_quorum:
            stamps = [self._now_tick, *(pr.lease_stamp_tick for pr in self._progress.values())]
        else:
            voters = self._voter_set
            stamps = [pr.lease_stamp_tick for p, pr in self._progress.items() if p in voters]
            if self._is_voter:
                stamps.append(self._now_tick)
        stamps.sort(reverse=True)
        return self._now_tick - stamps[self._quorum - 1] < self.config.timing.lease_ticks

    def _ack_read_round(self, round_id: int, peer: str) -> None:
        if peer not in self._voter_set:
            return
        for read_round in self._read_rounds:
            if read_round.round_id == round_id:
                read_round.acks.add(peer)
                if len(read_round.acks) >= self._quorum:
                    self._release_reads_through(round_id)
                return

    def _release_reads_through(self, round_id: int) -> None:
        # A quorum confirming a later round also confirms every earlier one.
        while self._read_rounds and self._read_rounds[0].round_id <= round_id:
            done = self._read_rounds.pop(0)
            self._reads.append(ReadState(done.request_id, done.commit_index))

    def _hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)
