"""A seeded, deterministic simulator of a raftkv cluster, checking Raft's invariants.

Everything random comes from one `random.Random(seed)`: the same seed and options replay
the same run. Time is virtual, in ticks. Per tick, messages due are delivered (a message
sent with delay 0 arrives later in the same tick), then every live node ticks.

The simulated network drops, delays, duplicates and reorders messages, and partitions
nodes (arbitrary groups, or one-way links). A crash keeps only what the node persisted
through `Ready` (with the `no-fsync` bug: minus its last few Ready batches). Each node runs
a tiny state machine: a checksum chain over the applied entries, snapshotted every
`SimOptions.snapshot_every_entries` entries so InstallSnapshot gets exercised.

Membership changes (`change_membership`): with `SimOptions.voters` only the first nodes
start as voters; the others start outside the configuration (`Config.join`), for a change
to add them as learners. `wipe` gives a node an empty disk and, as a server whose disk was
wiped must, a new id (n3 becomes n3-2): `ids` names the live incarnations.

Checked continuously, raising `InvariantViolation` with the seed and a replay recipe:
- election safety: at most one leader per term, whatever configurations the nodes hold;
  and a node becomes leader only as a voter of its own configuration;
- no two disjoint majorities (once a configuration change was proposed, every tick):
  the configurations held by the live nodes that could still matter (those whose log
  holds the latest committed configuration entry and agrees with the committed log)
  pairwise have intersecting majorities, as single-server changes guarantee;
- log matching: an (index, term) pair names one entry with one predecessor term, on
  every node, for the whole run (checked as entries are persisted);
- leader completeness: a leader holds every entry committed in its term or earlier
  (an entry's commit term is that of the first node seen committing it);
- no committed entry lost or changed: once committed anywhere, an index keeps its entry;
- state machine safety: every node's state after applying index i is the same;
- read safety: a ReadState's index is at least the highest commit index anywhere at the
  time the read was requested;
- progress after heal (`check_progress`): with the network healed and every node up,
  a proposal commits within a bounded number of ticks.

Replay a chaos run from the command line: `python -m raftkv.sim --profile NAME --seed N`.
"""

from __future__ import annotations

import argparse
import heapq
import random
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from raftkv.core import ConfChangeError, Config, NotLeader, Raft, Role, hard_state_on_restart
from raftkv.timing import RaftTiming
from raftkv.types import (
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    HardState,
    Membership,
    Message,
    ReadState,
    Ready,
    Snapshot,
)

__all__ = [
    "PROFILES",
    "ChaosOptions",
    "ChaosReport",
    "Disk",
    "DiskBatch",
    "InvariantViolation",
    "Profile",
    "Proposal",
    "ReadRecord",
    "SimOptions",
    "Simulation",
    "run_chaos",
]


class InvariantViolation(AssertionError):
    """A safety or liveness property failed. The message names the seed and how to replay."""


@dataclass(frozen=True)
class SimOptions:
    """Cluster, network and state machine settings of one simulation.

    Raft settings are those of `raftkv.core.Config`, with smaller appends and windows so
    that backtracking and flow control get exercised. Network: each message is dropped with
    `drop_rate`, else delivered after a delay drawn uniformly from
    [`min_delay_ticks`, `max_delay_ticks`], and with `duplicate_rate` delivered twice;
    `reorder` shuffles messages due in the same tick. `unsynced_ready_rounds` is how
    many of its latest Ready batches a crashing node loses under the `no-fsync` bug.
    `check_every_ticks` paces the whole-cluster checks of `check_invariants`. `voters`
    is how many of the nodes (the first ones) start as voters, 0 for all; the others
    start with no configuration, waiting to be added.
    """

    timing: RaftTiming = field(default_factory=RaftTiming)
    pre_vote: bool = True
    max_entries_per_append: int = 64
    max_inflight_appends: int = 16
    bugs: frozenset[str] = frozenset()
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    min_delay_ticks: int = 0
    max_delay_ticks: int = 1
    reorder: bool = True
    snapshot_every_entries: int = 0
    unsynced_ready_rounds: int = 4
    check_every_ticks: int = 10
    max_deliveries_per_tick: int = 100_000
    voters: int = 0


@dataclass(slots=True)
class Proposal:
    """A command a client proposed: `node` accepted it at `index` in `term`.
    `acked` turns True when that node applies it (what a client would be told)."""

    data: bytes
    node: str
    term: int
    index: int
    acked: bool = False


@dataclass(slots=True)
class ReadRecord:
    """A read request and its fate.

    `min_index` is the highest commit index anywhere when the read was requested;
    `index` the ReadState index granted; `status` one of pending, ok (served once the
    node applied `index`), dropped (leadership lost) or lost (the node crashed).
    """

    node: str
    lease: bool
    min_index: int
    requested_tick: int
    status: str = "pending"
    index: int | None = None
    served_index: int | None = None


@dataclass(slots=True)
class DiskBatch:
    """One write to a node's disk, applied in this order: the snapshots (`install`, one
    received from the leader; `compact`, one of the node's own state machine that drops
    the log prefix it covers), then `entries` (replacing any stored at or after the first
    one's index), then the hard state. Shared with `raftkv.simkv`."""

    hard_state: HardState | None = None
    install: Snapshot | None = None
    entries: tuple[Entry, ...] = ()
    compact: Snapshot | None = None


@dataclass(slots=True)
class Disk:
    """A node's stored Raft state: hard state, snapshot, and the log after it. The
    simulators apply `DiskBatch`es to it and restart a node from it."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def offset(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    def term_at(self, index: int) -> int | None:
        if self.snapshot and index == self.snapshot.index:
            return self.snapshot.term
        pos = index - self.offset() - 1
        return self.entries[pos].term if 0 <= pos < len(self.entries) else None

    def apply(self, batch: DiskBatch) -> None:
        for snap in (batch.install, batch.compact):
            if snap is None or snap.index <= self.offset():
                continue
            keep = self.term_at(snap.index) == snap.term
            self.entries = self.entries[snap.index - self.offset() :] if keep else []
            self.snapshot = snap
        if batch.entries:
            first = batch.entries[0].index
            assert self.offset() < first <= self.offset() + len(self.entries) + 1, first
            del self.entries[first - self.offset() - 1 :]
            self.entries.extend(batch.entries)
        if batch.hard_state is not None:
            self.hard_state = batch.hard_state


@dataclass(slots=True)
class _StateMachine:
    """A checksum chain over applied entries: equal states mean equal applied prefixes."""

    applied_index: int = 0
    applied_term: int = 0
    digest: int = 0

    def apply(self, entry: Entry) -> None:
        head = f"{entry.term}:{int(entry.kind)}:".encode()
        self.digest = zlib.crc32(head + entry.data, self.digest)
        self.applied_index, self.applied_term = entry.index, entry.term

    def snapshot(self, membership: Membership) -> Snapshot:
        data = f"{self.applied_index}:{self.applied_term}:{self.digest}".encode()
        return Snapshot(
            self.applied_index, self.applied_term, membership.voters, data, membership.learners
        )

    @classmethod
    def restore(cls, snap: Snapshot | None) -> _StateMachine:
        if snap is None:
            return cls()
        index, term, digest = (int(part) for part in snap.data.decode().split(":"))
        assert (index, term) == (snap.index, snap.term), "snapshot header mismatch"
        return cls(index, term, digest)


@dataclass(slots=True)
class _Node:
    id: str
    config: Config
    disk: Disk = field(default_factory=Disk)
    unsynced: deque[DiskBatch] = field(default_factory=deque)
    core: Raft | None = None
    sm: _StateMachine = field(default_factory=_StateMachine)
    seen_commit: int = 0
    led_term: int = 0
    waiting_reads: list[ReadState] = field(default_factory=list)


class Simulation:
    """A cluster of `nodes` Raft cores ("n1".."nN") on a simulated network.

    Drive it with `run(ticks)`, inject faults with `partition`/`isolate`/`block`/`heal`/
    `crash`/`restart`, act as clients with `propose`/`read`/`transfer`, and as an
    operator with `change_membership`/`wipe`. Every method that lets time pass checks
    the invariants listed in the module docstring.
    `replay` is the recipe printed in violations (default: this constructor call).
    """

    def __init__(
        self,
        seed: int,
        nodes: int = 5,
        options: SimOptions | None = None,
        replay: str | None = None,
    ) -> None:
        self.seed = seed
        self.options = options or SimOptions()
        self.replay = replay or f"Simulation(seed={seed}, nodes={nodes}, options={self.options!r})"
        self.rng = random.Random(seed)
        self.ids = tuple(f"n{i}" for i in range(1, nodes + 1))
        self.first_voters = self.ids[: self.options.voters] if self.options.voters else self.ids
        self._incarnations: Counter[str] = Counter()
        self.now_tick = 0
        self.stats: Counter[str] = Counter()
        self.proposals: dict[bytes, Proposal] = {}
        self.reads: dict[int, ReadRecord] = {}
        self.max_commit_index = 0
        self.leaders_by_term: dict[int, str] = {}
        self._queue: list[tuple[int, float, int, Message]] = []
        self._seq = 0
        self._blocked: set[tuple[str, str]] = set()
        self._committed: dict[int, Entry] = {}
        self._commit_term: dict[int, int] = {}
        self._committed_data: set[bytes] = set()
        self._entry_at: dict[tuple[int, int], tuple[EntryKind, bytes, int | None]] = {}
        self._digest_at: dict[int, int] = {}
        self._next_read_id = 1
        self._next_data_id = 1
        self._committed_conf_index = 0
        self._conf_changed = False
        self._nodes = {nid: _Node(nid, self._config(nid)) for nid in self.ids}
        for nid in self.ids:
            self.restart(nid)

    def _config(self, nid: str, join: bool = False) -> Config:
        o = self.options
        voters = self.first_voters
        return Config(
            id=nid,
            peers=voters if nid in voters else self.ids,
            timing=o.timing,
            pre_vote=o.pre_vote,
            max_entries_per_append=o.max_entries_per_append,
            max_inflight_appends=o.max_inflight_appends,
            bugs=o.bugs,
            join=join or nid not in voters,
        )

    # ---- inspection -----------------------------------------------------------------

    def core(self, nid: str) -> Raft:
        """The live core of `nid` (asserts the node is up)."""
        core = self._nodes[nid].core
        assert core is not None, f"{nid} is down"
        return core

    def is_up(self, nid: str) -> bool:
        return self._nodes[nid].core is not None

    def up_nodes(self) -> list[str]:
        return [nid for nid in self.ids if self._nodes[nid].core is not None]

    def leaders(self) -> list[str]:
        """Live nodes that believe they lead, in id order."""
        return [n for n in self.up_nodes() if self.core(n).role is Role.LEADER]

    def leader(self) -> str | None:
        """The live leader of the highest term, if any."""
        leaders = self.leaders()
        return max(leaders, key=lambda n: self.core(n).term) if leaders else None

    def applied_index(self, nid: str) -> int:
        return self._nodes[nid].sm.applied_index

    def digest(self, nid: str) -> int:
        """The state machine checksum of `nid` after its applied index."""
        return self._nodes[nid].sm.digest

    def committed_entry(self, index: int) -> Entry | None:
        """The entry committed at `index` (anywhere, ever), if any."""
        return self._committed.get(index)

    def is_committed(self, data: bytes) -> bool:
        return data in self._committed_data

    def disk(self, nid: str) -> tuple[HardState, Snapshot | None, list[Entry]]:
        """What `nid` has durably stored: hard state, snapshot, log after it."""
        disk = self._nodes[nid].disk
        return disk.hard_state, disk.snapshot, list(disk.entries)

    # ---- faults ---------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network between groups; a node in no group is isolated."""
        group_of: dict[str, int] = {}
        for gid, group in enumerate(groups):
            for nid in group:
                group_of[nid] = gid
        self._blocked = {
            (a, b)
            for a in self.ids
            for b in self.ids
            if a != b and (a not in group_of or group_of.get(a) != group_of.get(b))
        }

    def isolate(self, nid: str) -> None:
        self.partition([nid], [n for n in self.ids if n != nid])

    def block(self, src: str, dst: str) -> None:
        """Drop every message from `src` to `dst` (one way) until `heal`."""
        self._blocked.add((src, dst))

    def heal(self) -> None:
        self._blocked.clear()

    def crash(self, nid: str) -> None:
        """Stop `nid`; it keeps only what it persisted (less its unsynced tail under no-fsync)."""
        node = self._nodes[nid]
        if node.core is None:
            return
        node.core = None
        node.unsynced.clear()
        node.waiting_reads.clear()
        for record in self.reads.values():
            if record.node == nid and record.status == "pending":
                record.status = "lost"
        self.stats["crashes"] += 1

    def wipe(self, nid: str) -> str:
        """Crash `nid` and start its server again with an empty disk, under a new id and
        outside any configuration (`Config.join`), ready to be added; returns the new id.

        A new id, as etcd gives a re-added member: under its old id, configurations from
        before its removal (in a stale node's log, or a snapshot sent to it) would count
        the empty disk as a voter that remembers nothing it promised."""
        self.crash(nid)
        slot = nid.split("-")[0]
        self._incarnations[slot] += 1
        new = f"{slot}-{self._incarnations[slot] + 1}"
        del self._nodes[nid]
        self.ids = tuple(new if n == nid else n for n in self.ids)
        self._nodes[new] = _Node(new, self._config(new, join=True))
        self.stats["wipes"] += 1
        self.restart(new)
        return new

    def restart(self, nid: str) -> None:
        """Start `nid` from its durable state (a no-op if it is up)."""
        node = self._nodes[nid]
        if node.core is not None:
            return
        disk = node.disk
        hard_state = hard_state_on_restart(node.config, disk.hard_state)
        rng = random.Random(self.rng.getrandbits(64))
        with self._guard(nid):
            node.core = Raft(node.config, rng, hard_state, disk.snapshot, list(disk.entries))
            node.sm = _StateMachine.restore(disk.snapshot)
            node.seen_commit = node.core.snapshot_index
            node.led_term = 0
            self._process(node)

    # ---- clients --------------------------------------------------------------------

    def new_data(self) -> bytes:
        """A fresh command payload, unique in this run."""
        self._next_data_id += 1
        return f"c{self._next_data_id - 1}".encode()

    def propose(self, data: bytes | None = None, node: str | None = None) -> Proposal | None:
        """Propose `data` (default: fresh) at `node` (default: `leader()`).
        Returns None when that node is down or refuses (not the leader)."""
        nid = node or self.leader()
        if nid is None or not self.is_up(nid):
            return None
        data = self.new_data() if data is None else data
        core = self.core(nid)
        try:
            with self._guard(nid):
                index = core.propose(data)
        except NotLeader:
            return None
        proposal = Proposal(data, nid, core.term, index)
        self.proposals[data] = proposal
        self._process(self._nodes[nid])
        return proposal

    def read(self, node: str | None = None, lease: bool = False) -> int | None:
        """Request a linearizable read at `node` (default: `leader()`); returns its id
        (see `reads`), or None when that node is down or refuses."""
        nid = node or self.leader()
        if nid is None or not self.is_up(nid):
            return None
        request_id = self._next_read_id
        record = ReadRecord(nid, lease, self.max_commit_index, self.now_tick)
        try:
            with self._guard(nid):
                self.core(nid).read_index(request_id, lease=lease)
        except NotLeader:
            return None
        self._next_read_id += 1
        self.reads[request_id] = record
        self._process(self._nodes[nid])
        return request_id

    def transfer(self, to: str, node: str | None = None) -> bool:
        """Ask `node` (default: `leader()`) to hand leadership to `to`."""
        nid = node or self.leader()
        if nid is None or not self.is_up(nid):
            return False
        try:
            with self._guard(nid):
                self.core(nid).transfer_leadership(to)
        except (NotLeader, ValueError):
            return False
        self._process(self._nodes[nid])
        return True

    def change_membership(
        self, op: ConfChangeOp, node_id: str, node: str | None = None
    ) -> int | None:
        """Propose `op` on `node_id` at `node` (default: `leader()`); returns the entry's
        index, or None when that node is down, not the leader, or refuses the change
        (counted in `stats` as `conf_refused_<reason>`)."""
        nid = node or self.leader()
        if nid is None or not self.is_up(nid):
            return None
        self._conf_changed = True
        try:
            with self._guard(nid):
                index = self.core(nid).propose_conf_change(op, node_id)
        except NotLeader:
            return None
        except ConfChangeError as exc:
            self.stats[f"conf_refused_{exc.reason}"] += 1
            return None
        self.stats[f"conf_{op.value}"] += 1
        self._process(self._nodes[nid])
        return index

    # ---- time -----------------------------------------------------------------------

    def run(self, ticks: int) -> None:
        """Let `ticks` ticks of virtual time pass."""
        for _ in range(ticks):
            self._tick_once()

    def run_until(self, done: Callable[[], bool], max_ticks: int) -> bool:
        """Run until `done()` holds (checked after each tick); False after `max_ticks`."""
        for _ in range(max_ticks):
            if done():
                return True
            self._tick_once()
        return bool(done())

    def _tick_once(self) -> None:
        self.now_tick += 1
        self._deliver_due()
        for nid in self.ids:
            node = self._nodes[nid]
            if node.core is not None:
                with self._guard(nid):
                    node.core.tick()
                    self._process(node)
        self._deliver_due()
        if self._conf_changed:
            self.check_majorities()
        if self.now_tick % self.options.check_every_ticks == 0:
            self.check_invariants()

    def _deliver_due(self) -> None:
        delivered = 0
        queue = self._queue
        while queue and queue[0][0] <= self.now_tick:
            msg = heapq.heappop(queue)[3]
            delivered += 1
            if delivered > self.options.max_deliveries_per_tick:
                raise self.violation(f"more than {delivered - 1} deliveries in one tick")
            node = self._nodes.get(msg.dst)
            if node is None or node.core is None or (msg.src, msg.dst) in self._blocked:
                self.stats["undelivered"] += 1
                continue
            self.stats["delivered"] += 1
            with self._guard(msg.dst):
                node.core.step(msg)
                self._process(node)

    def _send(self, messages: list[Message]) -> None:
        o, rng = self.options, self.rng
        for msg in messages:
            self.stats["sent"] += 1
            self.stats[msg.type.name] += 1
            if msg.reject:
                self.stats[f"{msg.type.name}_REJECT"] += 1
            self.stats["entries_sent"] += len(msg.entries)
            if o.drop_rate and rng.random() < o.drop_rate:
                self.stats["dropped"] += 1
                continue
            copies = 2 if o.duplicate_rate and rng.random() < o.duplicate_rate else 1
            for _ in range(copies):
                delay = o.min_delay_ticks
                if o.max_delay_ticks > o.min_delay_ticks:
                    delay = rng.randint(o.min_delay_ticks, o.max_delay_ticks)
                order = rng.random() if o.reorder else 0.0
                self._seq += 1
                heapq.heappush(self._queue, (self.now_tick + delay, order, self._seq, msg))

    # ---- one node's Ready -------------------------------------------------------------

    def _process(self, node: _Node) -> None:
        core = node.core
        assert core is not None
        self._observe(node, core)
        while core.has_ready():
            rd = core.ready()
            self._persist(node, core, rd)
            self._send(rd.messages)
            if rd.snapshot is not None:
                self._install(node, rd.snapshot)
            for entry in rd.committed:
                self._apply(node, entry)
            for read_state in rd.reads:
                self._read_granted(node, read_state)
            for request_id in rd.dropped_reads:
                self.reads[request_id].status = "dropped"
            core.advance(rd)
            self._serve_reads(node)
            self._maybe_compact(node, core)

    def _persist(self, node: _Node, core: Raft, rd: Ready) -> None:
        for entry in rd.entries:
            prev_term = core.log.term_at(entry.index - 1)
            fact = (entry.kind, entry.data, prev_term)
            seen = self._entry_at.setdefault((entry.index, entry.term), fact)
            if seen != fact:
                raise self.violation(
                    f"log matching: {node.id} persisted {entry} after term {prev_term}, "
                    f"but (index {entry.index}, term {entry.term}) was {seen} before"
                )
        if rd.hard_state is None and rd.snapshot is None and not rd.entries:
            return
        self._write(node, DiskBatch(rd.hard_state, rd.snapshot, tuple(rd.entries)))

    def _write(self, node: _Node, batch: DiskBatch) -> None:
        if "no-fsync" not in self.options.bugs:
            node.disk.apply(batch)
            return
        node.unsynced.append(batch)
        while len(node.unsynced) > self.options.unsynced_ready_rounds:
            node.disk.apply(node.unsynced.popleft())

    def _install(self, node: _Node, snap: Snapshot) -> None:
        node.sm = _StateMachine.restore(snap)
        self._check_digest(node, snap.index, f"installed snapshot {snap.index}")

    def _apply(self, node: _Node, entry: Entry) -> None:
        sm = node.sm
        if entry.index != sm.applied_index + 1:
            raise self.violation(
                f"{node.id} applied index {entry.index} after {sm.applied_index} (out of order)"
            )
        sm.apply(entry)
        self._check_digest(node, entry.index, f"applied {entry}")
        proposal = self.proposals.get(entry.data)
        if proposal and proposal.node == node.id and proposal.index == entry.index:
            proposal.acked = proposal.term == entry.term

    def _check_digest(self, node: _Node, index: int, what: str) -> None:
        digest = self._digest_at.setdefault(index, node.sm.digest)
        if digest != node.sm.digest:
            raise self.violation(
                f"state machine safety: {node.id} {what} and its state at index {index} "
                f"differs from another node's (committed there: {self._committed.get(index)})"
            )

    def _maybe_compact(self, node: _Node, core: Raft) -> None:
        every = self.options.snapshot_every_entries
        if not every or node.sm.applied_index - core.snapshot_index < every:
            return
        snap = node.sm.snapshot(core.membership_at(node.sm.applied_index))
        self._write(node, DiskBatch(compact=snap))
        core.compact(snap)
        self.stats["snapshots"] += 1

    # ---- reads ----------------------------------------------------------------------

    def _read_granted(self, node: _Node, read_state: ReadState) -> None:
        record = self.reads[read_state.request_id]
        record.index = read_state.index
        if read_state.index < record.min_index:
            kind = "lease" if record.lease else "ReadIndex"
            raise self.violation(
                f"read safety: {node.id} granted {kind} read {read_state.request_id} at index "
                f"{read_state.index}, but index {record.min_index} was committed before it "
                f"was requested (tick {record.requested_tick})"
            )
        node.waiting_reads.append(read_state)

    def _serve_reads(self, node: _Node) -> None:
        if not node.waiting_reads:
            return
        still = []
        for read_state in node.waiting_reads:
            if node.sm.applied_index >= read_state.index:
                record = self.reads[read_state.request_id]
                record.status, record.served_index = "ok", node.sm.applied_index
            else:
                still.append(read_state)
        node.waiting_reads = still

    # ---- invariants -----------------------------------------------------------------

    def violation(self, what: str) -> InvariantViolation:
        """An InvariantViolation naming `what`, the seed, the tick and the replay recipe."""
        return InvariantViolation(
            f"{what}\n  seed={self.seed} tick={self.now_tick}\n  replay: {self.replay}"
        )

    @contextmanager
    def _guard(self, nid: str) -> Iterator[None]:
        try:
            yield
        except InvariantViolation:
            raise
        except AssertionError as exc:
            raise self.violation(f"assertion in {nid}: {exc}") from exc

    def _observe(self, node: _Node, core: Raft) -> None:
        if core.role is Role.LEADER and node.led_term != core.term:
            node.led_term = core.term
            holder = self.leaders_by_term.setdefault(core.term, node.id)
            if holder != node.id:
                raise self.violation(
                    f"election safety: {node.id} and {holder} both led term {core.term}"
                )
            if node.id not in core.voters:
                raise self.violation(
                    f"{node.id} became leader of term {core.term} but is not a voter of its "
                    f"configuration {core.membership}"
                )
            self._check_leader_log(node.id, core)
        commit = core.commit_index
        if commit <= node.seen_commit:
            return
        for index in range(max(node.seen_commit, core.snapshot_index) + 1, commit + 1):
            entry = core.entry(index)
            assert entry is not None
            known = self._committed.setdefault(index, entry)
            self._commit_term.setdefault(index, core.term)
            if known != entry:
                raise self.violation(
                    f"committed entry changed: {node.id} committed {entry}, "
                    f"but {known} was committed at index {index} before"
                )
            if entry.kind is EntryKind.NORMAL:
                self._committed_data.add(entry.data)
            elif entry.kind is EntryKind.CONF_CHANGE:
                self._committed_conf_index = max(self._committed_conf_index, index)
        node.seen_commit = commit
        self.max_commit_index = max(self.max_commit_index, commit)

    def _check_leader_log(self, nid: str, core: Raft) -> None:
        for index in range(core.snapshot_index + 1, self.max_commit_index + 1):
            committed = self._committed.get(index)
            # An older entry may commit only in a later term, with a later leader.
            if committed is None or self._commit_term[index] > core.term:
                continue
            if core.entry(index) != committed:
                raise self.violation(
                    f"leader completeness: {nid} leads term {core.term} without committed "
                    f"{committed} (has {core.entry(index)})"
                )

    def check_invariants(self) -> None:
        """Whole-cluster checks (the per-event ones run all the time)."""
        for nid in self.up_nodes():
            core = self.core(nid)
            if core.role is Role.LEADER:
                self._check_leader_log(nid, core)
            for index in range(core.snapshot_index + 1, core.commit_index + 1):
                if core.entry(index) != self._committed.get(index):
                    raise self.violation(
                        f"{nid} holds {core.entry(index)} at its committed index {index}, "
                        f"but {self._committed.get(index)} was committed there"
                    )

    def committed_membership(self) -> Membership:
        """The latest configuration committed anywhere (before any: the first voters)."""
        entry = self._committed.get(self._committed_conf_index)
        if entry is None:
            return Membership(self.first_voters)
        return ConfChange.decode(entry.data).membership

    def check_majorities(self) -> None:
        """No two disjoint majorities: the configurations held by live nodes that hold the
        latest committed configuration entry, and agree with the committed log as far as
        both go, must pairwise share a member of every pair of majorities. (A node left
        behind, or holding an entry the committed log replaced, cannot win an election:
        its log is not up to date.)"""
        held: list[tuple[str, Membership]] = []
        for nid in self.up_nodes():
            core = self.core(nid)
            upto = min(core.last_index, self.max_commit_index)
            if upto < self._committed_conf_index or not core.voters:
                continue
            committed = self._committed.get(upto)
            diverged = committed is not None and core.entry(upto) != committed
            if upto > core.snapshot_index and diverged:
                continue
            held.append((nid, core.membership))
        for pos, (first, first_membership) in enumerate(held):
            for second, second_membership in held[pos + 1 :]:
                if _disjoint_majorities(first_membership.voters, second_membership.voters):
                    raise self.violation(
                        f"disjoint majorities: {first} holds voters {first_membership.voters} "
                        f"and {second} holds {second_membership.voters} (latest committed "
                        f"configuration entry: {self._committed_conf_index})"
                    )

    def _proposal_alive(self, proposal: Proposal | None, leader: str) -> bool:
        return (
            proposal is not None
            and proposal.node == leader
            and self.core(leader).term == proposal.term
        )

    def check_progress(self, max_ticks: int) -> int:
        """Heal the network (no partitions, drops or duplicates; delays of at most one
        tick), restart every node, and require a fresh proposal to commit within
        `max_ticks`; returns the ticks it took."""
        self.heal()
        self.options = replace(
            self.options,
            drop_rate=0.0,
            duplicate_rate=0.0,
            min_delay_ticks=min(self.options.min_delay_ticks, 1),
            max_delay_ticks=min(self.options.max_delay_ticks, 1),
        )
        for nid in self.ids:
            self.restart(nid)
        start = self.now_tick
        pending: Proposal | None = None
        while self.now_tick - start < max_ticks:
            if pending is not None and self.is_committed(pending.data):
                return self.now_tick - start
            leader = self.leader()
            if leader is not None and not self._proposal_alive(pending, leader):
                pending = self.propose(node=leader) or pending
            self._tick_once()
        if pending is not None and self.is_committed(pending.data):
            return self.now_tick - start
        raise self.violation(
            f"no progress: nothing committed within {max_ticks} ticks after healing "
            f"(leaders: {[(n, self.core(n).term) for n in self.leaders()]})"
        )


def _disjoint_majorities(first: tuple[str, ...], second: tuple[str, ...]) -> bool:
    """Can a majority of `first` and a majority of `second` have no voter in common?"""
    a, b = set(first), set(second)
    both = len(a & b)
    need_a = max(0, len(a) // 2 + 1 - len(a - b))
    need_b = max(0, len(b) // 2 + 1 - len(b - a))
    return need_a + need_b <= both


# ---- randomized fault runs ---------------------------------------------------------------


@dataclass(frozen=True)
class ChaosOptions:
    """A random fault schedule. Rates are per-tick probabilities.

    `leader_crash_rate` crashes, `leader_isolate_rate` isolates, the current leader (the
    Figure 8 schedules).
    Clients propose at, and read from, a random node that believes it leads (stale leaders
    included); `lease_read_fraction` of reads ask for a lease. After `ticks` ticks the run
    heals, restarts everyone, and requires progress within `progress_bound_ticks`.

    With `conf_change_rate`, a leader is asked for a configuration change: add a learner
    (a node outside the configuration; a server that was a member before and whose
    removal committed comes back wiped, under a new id, with probability
    `wipe_fraction`), promote a learner while there are fewer than
    `max_voters` voters, or remove a learner or (while there are more than `min_voters`)
    a voter, the leader included.
    """

    ticks: int = 200
    propose_rate: float = 0.5
    read_rate: float = 0.2
    lease_read_fraction: float = 0.5
    crash_rate: float = 0.01
    leader_crash_rate: float = 0.0
    leader_isolate_rate: float = 0.0
    restart_rate: float = 0.1
    partition_rate: float = 0.02
    one_way_rate: float = 0.01
    heal_rate: float = 0.04
    transfer_rate: float = 0.0
    progress_bound_ticks: int = 300
    conf_change_rate: float = 0.0
    min_voters: int = 3
    max_voters: int = 5
    wipe_fraction: float = 0.5


@dataclass(frozen=True)
class Profile:
    """A named kind of chaos run: cluster size, simulator and fault options."""

    nodes: int
    sim: SimOptions
    chaos: ChaosOptions


PROFILES: dict[str, Profile] = {
    "reliable": Profile(3, SimOptions(), ChaosOptions(crash_rate=0.0, partition_rate=0.0)),
    "faults": Profile(
        5,
        SimOptions(drop_rate=0.05, duplicate_rate=0.03, max_delay_ticks=2),
        ChaosOptions(),
    ),
    "small": Profile(
        3,
        SimOptions(drop_rate=0.05, duplicate_rate=0.05, max_delay_ticks=2),
        ChaosOptions(ticks=150, crash_rate=0.02),
    ),
    "snapshots": Profile(
        3,
        SimOptions(drop_rate=0.03, max_delay_ticks=2, snapshot_every_entries=8),
        ChaosOptions(crash_rate=0.02, propose_rate=0.8),
    ),
    "figure8": Profile(
        3,
        SimOptions(max_entries_per_append=1, pre_vote=False, max_delay_ticks=2),
        ChaosOptions(
            crash_rate=0.0,
            leader_isolate_rate=0.6,
            heal_rate=0.05,
            partition_rate=0.0,
            one_way_rate=0.0,
            read_rate=0.0,
        ),
    ),
    "amnesia": Profile(
        3,
        SimOptions(
            timing=RaftTiming(election_timeout_ticks=4, lease_ticks=3, check_quorum=False),
            pre_vote=False,
            max_delay_ticks=4,
            duplicate_rate=0.3,
        ),
        ChaosOptions(
            crash_rate=0.3,
            restart_rate=1.0,
            partition_rate=0.1,
            one_way_rate=0.1,
            heal_rate=0.1,
            read_rate=0.0,
        ),
    ),
    "churn": Profile(
        5,
        SimOptions(drop_rate=0.1, duplicate_rate=0.05, max_delay_ticks=3, max_entries_per_append=4),
        ChaosOptions(
            ticks=300,
            crash_rate=0.04,
            restart_rate=0.2,
            partition_rate=0.05,
            transfer_rate=0.01,
        ),
    ),
    "membership": Profile(
        5,
        SimOptions(drop_rate=0.03, max_delay_ticks=2, snapshot_every_entries=12, voters=3),
        ChaosOptions(
            ticks=300,
            conf_change_rate=0.15,
            crash_rate=0.015,
            restart_rate=0.15,
            partition_rate=0.03,
            transfer_rate=0.01,
        ),
    ),
    "membership-churn": Profile(
        5,
        SimOptions(
            timing=RaftTiming(election_timeout_ticks=6, lease_ticks=4, check_quorum=False),
            pre_vote=False,
            drop_rate=0.08,
            duplicate_rate=0.05,
            max_delay_ticks=3,
            max_entries_per_append=4,
            snapshot_every_entries=8,
            voters=3,
        ),
        ChaosOptions(
            ticks=300,
            conf_change_rate=0.3,
            crash_rate=0.04,
            restart_rate=0.2,
            partition_rate=0.05,
            one_way_rate=0.02,
            leader_crash_rate=0.01,
            read_rate=0.1,
        ),
    ),
}
"""Named profiles, so a failing run replays with `python -m raftkv.sim --profile NAME`."""


@dataclass(frozen=True)
class ChaosReport:
    """What a chaos run did: enough to see that it exercised something."""

    seed: int
    ticks: int
    commit_index: int
    leaders: int
    reads_ok: int
    acked_proposals: int
    stats: dict[str, int]


def run_chaos(
    seed: int, profile: str | Profile = "faults", bugs: Iterable[str] = ()
) -> ChaosReport:
    """Run one seeded chaos schedule; raises InvariantViolation on any failed invariant."""
    bug_set = frozenset(bugs)
    if isinstance(profile, str):
        name, spec = profile, PROFILES[profile]
        flags = "".join(f" --bug {b}" for b in sorted(bug_set))
        recipe = f"python -m raftkv.sim --profile {name} --seed {seed}{flags}"
    else:
        spec = profile
        recipe = f"raftkv.sim.run_chaos({seed}, {profile!r}, bugs={sorted(bug_set)!r})"
    options = replace(spec.sim, bugs=spec.sim.bugs | bug_set)
    sim = Simulation(seed, spec.nodes, options, replay=recipe)
    for _ in range(spec.chaos.ticks):
        _chaos_step(sim, spec.chaos)
        sim.run(1)
    sim.check_progress(spec.chaos.progress_bound_ticks)
    sim.check_invariants()
    lost = [p for p in sim.proposals.values() if p.acked and not sim.is_committed(p.data)]
    if lost:
        raise sim.violation(f"acknowledged proposals not committed: {lost[:3]}")
    return ChaosReport(
        seed=seed,
        ticks=sim.now_tick,
        commit_index=sim.max_commit_index,
        leaders=len(sim.leaders_by_term),
        reads_ok=sum(r.status == "ok" for r in sim.reads.values()),
        acked_proposals=sum(p.acked for p in sim.proposals.values()),
        stats=dict(sim.stats),
    )


def _chaos_step(sim: Simulation, chaos: ChaosOptions) -> None:
    rng = sim.rng
    up = sim.up_nodes()
    down = [n for n in sim.ids if n not in up]
    if up and rng.random() < chaos.crash_rate:
        sim.crash(rng.choice(up))
    if chaos.leader_crash_rate and rng.random() < chaos.leader_crash_rate:
        leader = sim.leader()
        if leader is not None:
            sim.crash(leader)
    if chaos.leader_isolate_rate and rng.random() < chaos.leader_isolate_rate:
        leader = sim.leader()
        if leader is not None:
            sim.isolate(leader)
    if down and rng.random() < chaos.restart_rate:
        sim.restart(rng.choice(down))
    if rng.random() < chaos.partition_rate:
        ids = list(sim.ids)
        rng.shuffle(ids)
        cut = rng.randrange(1, len(ids))
        sim.partition(ids[:cut], ids[cut:])
    if rng.random() < chaos.one_way_rate:
        src, dst = rng.sample(sim.ids, 2)
        sim.block(src, dst)
    if rng.random() < chaos.heal_rate:
        sim.heal()
    leaders = sim.leaders()
    if not leaders:
        return
    if rng.random() < chaos.propose_rate:
        sim.propose(node=rng.choice(leaders))
    if rng.random() < chaos.read_rate:
        sim.read(node=rng.choice(leaders), lease=rng.random() < chaos.lease_read_fraction)
    if rng.random() < chaos.transfer_rate:
        sim.transfer(rng.choice(sim.ids), node=rng.choice(leaders))
    if chaos.conf_change_rate and rng.random() < chaos.conf_change_rate:
        _change_membership(sim, chaos, rng.choice(leaders))


def _change_membership(sim: Simulation, chaos: ChaosOptions, leader: str) -> None:
    rng, core = sim.rng, sim.core(leader)
    membership = core.membership
    outside = [n for n in sim.ids if n not in membership.members() and n != leader]
    removable = list(membership.learners)
    if len(membership.voters) > chaos.min_voters:
        removable += membership.voters
    ops = []
    if outside:
        ops.append(ConfChangeOp.ADD_LEARNER)
    if membership.learners and len(membership.voters) < chaos.max_voters:
        ops.append(ConfChangeOp.PROMOTE)
    if removable:
        ops.append(ConfChangeOp.REMOVE)
    if not ops:
        return
    op = rng.choice(ops)
    if op is ConfChangeOp.ADD_LEARNER:
        target = rng.choice(outside)
        was_member = sim.disk(target)[0].term > 0
        removed = target not in sim.committed_membership().members()
        if was_member and removed and rng.random() < chaos.wipe_fraction:
            target = sim.wipe(target)
    elif op is ConfChangeOp.PROMOTE:
        target = rng.choice(membership.learners)
    else:
        target = rng.choice(removable)
    sim.change_membership(op, target, node=leader)


def main(argv: list[str] | None = None) -> int:
    """Replay one chaos run: `python -m raftkv.sim --profile faults --seed 7`."""
    parser = argparse.ArgumentParser(prog="python -m raftkv.sim", description=main.__doc__)
    parser.add_argument("--profile", default="faults", choices=sorted(PROFILES))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--bug", action="append", default=[], help="a bug from raftkv.core.BUGS")
    args = parser.parse_args(argv)
    try:
        report = run_chaos(args.seed, args.profile, bugs=args.bug)
    except InvariantViolation as exc:
        print(f"FAIL: {exc}")
        return 1
    print(f"ok: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
