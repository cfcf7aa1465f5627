"""raftkv in virtual time: a cluster that a test harness drives as its clients would.

`KVCluster` runs `raftkv.core` nodes on a simulated network and disk, answering client
requests with the semantics of `raftkv.node.Node.handle` (read modes, writes through the
log with client sessions in `raftkv.kv.KVStore`, not_leader with a hint, the node's own
request deadline). Unlike `raftkv.sim.Simulation` it checks no invariant: with a planted
bug the cluster misbehaves as a real one would, and only the histories its clients record
can tell. An assertion inside a node (the core refusing to rewrite a committed entry, say)
crashes that node, as it would end the real process; it is listed in `failures`.

Time is virtual, in nanoseconds, and everything random comes from one
`random.Random(seed)`: the same seed, options and calls give the same replies at the same
times. Events wait in one heap: node ticks (every `tick_ms / rate`), messages, client
requests and replies, request deadlines, fsyncs ending and the lazy flushes of `no-fsync`.
A driver whose clients answer each reply at once runs `advance_to_reply` in a loop.

Model, and where it departs from a real node:
- Links are FIFO, as TCP is: a message leaves after a delay drawn from `net_delay_ns` but
  never overtakes an earlier one on its link. A grudge drops, at arrival, every message
  from the senders a node holds it against; lossy links drop a message with `share`
  (TCP would retransmit it late; Raft retransmits it itself). Clients are never cut off.
- Disk without bugs: a Ready batch that must be durable (entries, a snapshot, a new term
  or vote) is, before anything of it but a leader's own appends and heartbeats is acted
  on; the node carries out the rest once its fsync is over (`fsync_ns`) and meanwhile
  queues what arrives, handling it all in one batch after, as `raftkv.node` does. `kill`
  and `power_loss` both keep every batch.
- Disk with `no-fsync`, as `raftkv.node` with `raftkv.storage` (fsync=False) on a disk
  that keeps only what was fsynced: a batch is acknowledged at once but stays in the
  process until the next lazy flush (every `lazy_flush_ns` of the node's clock, as
  `raftkv.node.LAZY_FLUSH_S`), which writes it to the OS; snapshots are written through to
  the OS at once, after what was buffered. Nothing is ever fsynced. So `kill` loses what
  was not flushed yet, and `power_loss` loses everything the node ever wrote since it
  started from an empty disk: it comes back with no log, no term and no vote.
- A paused node neither ticks nor handles anything; what arrives waits. On resume it
  handles, as the node's event loop would, first its expired timers (request deadlines,
  the lazy flush), then peer messages, then client requests, then the ticks it missed
  (at most four election timeouts' worth, as the node's ticker catches up).
- A node's clock rate scales its ticks, its request deadlines and its lazy flushes.
- A request sent to a node that is down is refused at once; one that is in flight or open
  when its node crashes is never answered.
- Membership changes go through the core as a node would serve them: a request
  {"op": "member", "change", "node"} to the leader is answered once the change is applied.
  The cluster has `max_nodes` slots; a server joins a slot with an empty disk and
  `Config.join` (`next_id`, then `join`), and leaves it for good (`leave`). A slot's
  later servers get new Raft ids (n4-2, ...), as docs/membership.md requires of a server
  whose disk was wiped. Messages go to any server the cores address; grudges, losses,
  faults and clients name slots.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from raftkv.core import (
    BUGS,
    ConfChangeError,
    ConfChangeOp,
    Config,
    Membership,
    NotLeader,
    Raft,
    Role,
    hard_state_on_restart,
)
from raftkv.kv import BadRequest, Command, KVStore, Result, encode_command, parse_command
from raftkv.node import LAZY_FLUSH_S, LEADER_MESSAGES, READ_MODES, reply
from raftkv.settings import DEFAULT_RAFT, RaftSettings
from raftkv.sim import Disk, DiskBatch
from raftkv.timing import NODE_TIMING, RaftTiming
from raftkv.types import Entry, EntryKind, Message, MsgType, Ready, Snapshot

__all__ = ["KVCluster", "KVSimOptions", "NodeFailure"]

# Event kinds, in the heap as (time_ns, seq, kind, a, b); _CORE_TICK only waits in inboxes.
_TICK, _MSG, _ARRIVE, _DEADLINE, _REPLY, _FLUSH, _SYNCED, _CORE_TICK, _CALL = range(9)
# The order in which a resumed node handles what waited: timers, peers, clients.
_RESUME_ORDER = {_DEADLINE: 0, _FLUSH: 0, _SYNCED: 0, _MSG: 1, _CORE_TICK: 1, _ARRIVE: 2}
_APPLIED = Result(ok=True)


@dataclass(frozen=True)
class KVSimOptions:
    """One simulated cluster: size, node settings, and the network's and clients' delays.

    `read_mode` is a node's default (`raftkv.node.READ_MODES`; a request's "mode" wins),
    `bugs` are `raftkv.core.BUGS`, `timing` the Raft timeouts with `tick_ms` the virtual
    length of a tick, `raft` the operator's Raft settings (its check-quorum wins).
    Delays are drawn uniformly from [low, high] ns: `net_delay_ns` between nodes,
    `client_delay_ns` each way between a client and a node.
    `request_timeout_ns` is a node's own deadline for a request (as
    `NodeOptions.request_timeout_s`), `fsync_ns` how long an fsync takes (a node that
    must persist a batch goes on with it once that is over, as `raftkv.node` does, and
    meanwhile queues what arrives, so that it handles it in one batch after; (0, 0): no
    wait), `snapshot_entries` how many applied entries make a
    node snapshot (as `NodeOptions.snapshot_entries`), `lazy_flush_ns` how often a node
    with `no-fsync` writes its buffered batches to the OS. `max_nodes` is the number of
    node slots (None: `nodes`): the first `nodes` start as the first configuration's
    voters, the others are spares that `join` starts when a change adds them.
    """

    nodes: int = 3
    max_nodes: int | None = None
    read_mode: str = "readindex"
    bugs: frozenset[str] = frozenset()
    timing: RaftTiming = NODE_TIMING
    raft: RaftSettings = DEFAULT_RAFT
    net_delay_ns: tuple[int, int] = (100_000, 2_000_000)
    client_delay_ns: tuple[int, int] = (50_000, 500_000)
    request_timeout_ns: int = 2_000_000_000
    fsync_ns: tuple[int, int] = (200_000, 1_000_000)
    snapshot_entries: int = 10_000
    lazy_flush_ns: int = int(LAZY_FLUSH_S * 1e9)

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if self.max_nodes is not None and self.max_nodes < self.nodes:
            raise ValueError(f"max_nodes {self.max_nodes} is below nodes {self.nodes}")
        if self.read_mode not in READ_MODES:
            raise ValueError(f"unknown read mode {self.read_mode!r}; expected one of {READ_MODES}")
        unknown = set(self.bugs) - BUGS
        if unknown:
            raise ValueError(f"unknown bugs {sorted(unknown)}; known: {sorted(BUGS)}")
        for name in ("net_delay_ns", "client_delay_ns", "fsync_ns"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")
        if self.request_timeout_ns < 1 or self.snapshot_entries < 1 or self.lazy_flush_ns < 1:
            raise ValueError("request_timeout_ns, snapshot_entries, lazy_flush_ns must be >= 1")


@dataclass(frozen=True)
class NodeFailure:
    """A node that crashed on its own at `time_ns`: an assertion in it said `what`."""

    time_ns: int
    node: str
    what: str


@dataclass(slots=True)
class _Request:
    node: str
    epoch: int
    body: Any
    key: str = ""


@dataclass(slots=True)
class _SimNode:
    """One server: what its disk holds, and while it runs, its process. `id` is its Raft
    id, `slot` the node name it runs as (the same, but for a slot's later servers)."""

    id: str
    config: Config
    slot: str = ""
    # Out of the cluster: a spare not started yet, or a server stopped after it left;
    # `restart` leaves it down. `used`: its id was handed out (or it ran) once.
    out: bool = False
    used: bool = True
    disk: Disk = field(default_factory=Disk)
    buffered: list[DiskBatch] = field(default_factory=list)
    core: Raft | None = None
    kv: KVStore = field(default_factory=KVStore)
    applied: int = 0
    applied_term: int = 0
    epoch: int = 0
    paused: bool = False
    # A batch waiting for its fsync, with the messages to send after it.
    syncing: tuple[Ready, list[Message]] | None = None
    durable_vote: tuple[int, str | None] = (0, None)
    draining: bool = False
    inbox: list[tuple[int, Any, Any]] = field(default_factory=list)
    rate: float = 1.0
    tick_interval_ns: int = 0
    next_tick_ns: int = 0
    tick_gen: int = 0
    proposals: dict[int, tuple[int, int]] = field(default_factory=dict)
    reads: dict[int, int] = field(default_factory=dict)
    next_read_id: int = 1
    waiters: list[tuple[int, int]] = field(default_factory=list)
    requests: set[int] = field(default_factory=set)


class KVCluster:
    """A raftkv cluster of `options.nodes` nodes ("n1".."nN") in virtual time.

    Clients `submit` requests (as `raftkv.node.Node.handle` takes them) and collect the
    replies `advance` delivers; a nemesis calls the fault methods, which take effect at
    `now_ns`. See the module docstring for the model.

    `ids` are the node slots, `options.max_nodes` of them: the first `options.nodes`
    are the voters of the first configuration, the rest spares, down until a change adds
    them. Every method takes a slot. A slot's first server has the slot's name as its
    Raft id; a server started on a slot again, with an empty disk, gets a new one (n4-2,
    n4-3, ...: docs/membership.md), which `slot_of` maps back.
    """

    def __init__(self, seed: int, options: KVSimOptions | None = None) -> None:
        self.seed = seed
        self.options = options = options or KVSimOptions()
        self.rng = random.Random(seed)
        slots = options.nodes if options.max_nodes is None else options.max_nodes
        self.ids = tuple(f"n{i}" for i in range(1, slots + 1))
        self.first_voters = self.ids[: options.nodes]
        self.now_ns = 0
        self.failures: list[NodeFailure] = []
        self._queue: list[tuple[int, int, int, Any, Any]] = []
        self._seq = 0
        self._blocked: frozenset[tuple[str, str]] = frozenset()
        self._lossy: frozenset[tuple[str, str]] = frozenset()
        self._loss_share = 0.0
        self._link_free_ns: dict[tuple[str, str], int] = {}
        self._requests: dict[int, _Request] = {}
        self._next_rid = 1
        self._delivered: list[tuple[int, dict[str, Any]]] = []
        self._current: _SimNode | None = None
        self._lazy = "no-fsync" in options.bugs
        self._tick_ns = options.timing.tick_ms * 1_000_000
        self._net_low, self._net_span = _span(options.net_delay_ns)
        self._client_low, self._client_span = _span(options.client_delay_ns)
        self._fsync_low, self._fsync_span = _span(options.fsync_ns)
        self._syncs = options.fsync_ns[1] > 0 and not self._lazy
        self._handlers: tuple[Callable[[Any, Any], None], ...] = (
            self._on_tick,
            self._on_message,
            self._on_arrive,
            self._on_deadline,
            self._on_reply,
            self._on_flush,
            self._on_synced,
            self._on_core_tick,
            self._on_call,
        )
        # When set, called as each granted vote leaves its voter, durable by then (voter,
        # candidate, term). It must not call the fault methods itself; it may `call_at`.
        self.on_vote: Callable[[str, str, int], None] | None = None
        # When set, called with each message a node sends, as it leaves; the same contract.
        self.on_send: Callable[[Message], None] | None = None
        # Servers by Raft id, every one there ever was; the server of each slot now.
        self._nodes = {nid: self._new_node(nid, nid) for nid in self.ids}
        self._slots = dict(self._nodes)
        self._slot_of = {nid: nid for nid in self.ids}
        for nid in self.first_voters:
            self.restart(nid)

    def _new_node(self, nid: str, slot: str) -> _SimNode:
        o = self.options
        if nid in self.first_voters:
            config = o.raft.config(nid, self.first_voters, o.timing, o.bugs)
            return _SimNode(nid, config, slot, tick_interval_ns=self._tick_ns)
        # A server that joins a running cluster: no configuration until the leader's log
        # or snapshot gives it one (docs/membership.md, for the drivers).
        config = replace(o.raft.config(nid, (nid,), o.timing, o.bugs), join=True)
        return _SimNode(nid, config, slot, out=True, used=nid != slot,
                        tick_interval_ns=self._tick_ns)  # fmt: skip

    # ---- clients ----------------------------------------------------------------------

    def submit(self, node: str, request: dict[str, Any]) -> int:
        """Send `request` to `node`; returns the request id its reply will carry.

        A node that is down refuses it at once ({"ok": False, "error": "refused"}, in the
        next `advance`); otherwise it arrives after a client delay, and its reply takes
        another; a node that crashes first never answers.
        """
        rid = self._next_rid
        self._next_rid += 1
        target = self._slots[node]
        if target.core is None:
            self._push(self.now_ns, _REPLY, rid, reply(False, error="refused"))
            return rid
        self._requests[rid] = _Request(target.id, target.epoch, request)
        self._push(self.now_ns + self._client_delay(), _ARRIVE, rid, None)
        return rid

    def advance(self, until_ns: int) -> list[tuple[int, dict[str, Any]]]:
        """Run virtual time up to `until_ns`; the replies delivered to clients meanwhile,
        as (request id, reply), in delivery order."""
        self._run(until_ns, stop_at_reply=False)
        self.now_ns = until_ns
        return self._delivered

    def advance_to_reply(self, until_ns: int) -> list[tuple[int, dict[str, Any]]]:
        """As `advance`, but stop as soon as a reply is delivered: then `now_ns` is its
        time, and the list holds it alone. A driver that answers each reply at once (a
        client issuing its next request) calls this rather than `advance` per event."""
        if not self._run(until_ns, stop_at_reply=True):
            self.now_ns = until_ns
        return self._delivered

    def _run(self, until_ns: int, stop_at_reply: bool) -> bool:
        """Handle the events due by `until_ns`; True when it stopped at a reply."""
        if until_ns < self.now_ns:
            raise ValueError(f"cannot go back in time: {until_ns} < {self.now_ns}")
        delivered = self._delivered = []
        queue, handlers = self._queue, self._handlers
        pop = heapq.heappop
        while queue and queue[0][0] <= until_ns:
            time_ns, _, kind, a, b = pop(queue)
            self.now_ns = time_ns
            if kind == _REPLY:  # the one event that reaches the driver (_on_reply's work)
                delivered.append((a, b))
                if stop_at_reply:
                    return True
                continue
            try:
                handlers[kind](a, b)
            except AssertionError as exc:
                self._fail(exc)
        return False

    def next_event_ns(self) -> int | None:
        """When the next event is due (None: nothing is), so a driver can skip idle time."""
        return self._queue[0][0] if self._queue else None

    # ---- inspection ---------------------------------------------------------------------

    def leader(self) -> tuple[str | None, int | None]:
        """The node that leads in the highest term among those that would answer a status
        request (up, not paused), and that term; (None, None) when none believes it leads."""
        best: tuple[str | None, int | None] = (None, None)
        for node in self._slots.values():
            core = node.core
            if core is None or node.paused or core.role is not Role.LEADER:
                continue
            if best[1] is None or core.term > best[1]:
                best = (node.slot, core.term)
        return best

    def is_up(self, node: str) -> bool:
        return self._slots[node].core is not None

    def is_paused(self, node: str) -> bool:
        return self._slots[node].paused

    def status(self, node: str) -> dict[str, Any]:
        """What a status request to a running `node` would answer (asserts it is up)."""
        return self._status(self._slots[node])

    def slot_of(self, node_id: str) -> str:
        """The slot a Raft id's server runs (ran) on."""
        return self._slot_of[node_id]

    def id_of(self, node: str) -> str:
        """The Raft id of `node`'s server now."""
        return self._slots[node].id

    def configuration(self) -> Membership | None:
        """The configuration the leader (as `leader` picks it) holds, the latest in its
        log, maybe uncommitted, by slot; None while no node leads."""
        leader = self.leader()[0]
        if leader is None:
            return None
        core = self._slots[leader].core
        assert core is not None
        slot_of = self._slot_of
        voters = dict.fromkeys(slot_of[n] for n in core.membership.voters)
        learners = dict.fromkeys(slot_of[n] for n in core.membership.learners)
        return Membership(tuple(voters), tuple(n for n in learners if n not in voters))

    # ---- membership ---------------------------------------------------------------------

    def next_id(self, node: str) -> str:
        """The Raft id for a server to join on the slot `node` (to propose, then `join`
        under): the slot's name for a spare never used, else a new id, since a server
        that comes back with an empty disk must not answer to its old one."""
        current = self._slots[node]
        if not current.used:
            current.used = True
            return current.id
        count = sum(1 for slot in self._slot_of.values() if slot == node) + 1
        nid = f"{node}-{count}"
        self._slot_of[nid] = node
        self._nodes[nid] = self._new_node(nid, node)
        self._nodes[nid].used = True
        return nid

    def join(self, node: str, node_id: str) -> None:
        """Start on the slot `node` the server `next_id` named `node_id`, with an empty
        disk and no configuration (`Config.join`): the leader's log or snapshot gives it
        one. A server still running on the slot is stopped first."""
        server = self._nodes[node_id]
        assert self._slot_of[node_id] == node and server.core is None
        assert server.disk.snapshot is None and not server.disk.entries, f"{node_id} ran before"
        old = self._slots[node]
        self._crash(old)
        old.out = True
        server.rate, server.tick_interval_ns = old.rate, old.tick_interval_ns
        self._slots[node] = server
        server.out = False
        self.restart(node)

    def leave(self, node: str) -> None:
        """Stop the server of `node` for good (it left the cluster): `restart` no longer
        starts it; a later `join` starts another."""
        target = self._slots[node]
        self._crash(target)
        target.out = True

    # ---- faults -------------------------------------------------------------------------

    def set_grudge(self, grudge: Mapping[str, Iterable[str]]) -> None:
        """Each node drops the messages of the nodes it holds a grudge against
        (`nemesis.grudge`'s shape: node -> senders); {} heals."""
        self._blocked = frozenset((src, dst) for dst, srcs in grudge.items() for src in srcs)

    def set_loss(self, drops: Mapping[str, Iterable[str]], share: float) -> None:
        """Each receiver drops each message from the given senders with probability
        `share`; {} heals."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self._lossy = frozenset((src, dst) for dst, srcs in drops.items() for src in srcs)
        self._loss_share = share

    def kill(self, node: str) -> None:
        """Crash `node`'s process: what it wrote to the OS survives (see the module
        docstring for what `no-fsync` had not written yet). It stays down until `restart`."""
        self._crash(self._slots[node])

    def power_loss(self, node: str) -> dict[str, int]:
        """Crash `node` with its machine: only what was fsynced survives. Without bugs that
        is everything; with `no-fsync`, nothing (the node never fsyncs). Returns what was
        lost: {"entries": log entries, "snapshots": snapshots (0 or 1)}. A node already
        down (killed: the harness's power-loss kills first) loses what its process had
        written to the OS and never fsynced all the same."""
        target = self._slots[node]
        if not self._lazy:
            self._crash(target)
            return {"entries": 0, "snapshots": 0}
        buffered = sum(len(batch.entries) for batch in target.buffered)
        lost = {
            "entries": len(target.disk.entries) + buffered,
            "snapshots": int(target.disk.snapshot is not None),
        }
        self._crash(target)
        target.disk = Disk()
        return lost

    def restart(self, node: str) -> None:
        """Start `node` from what its disk holds; nothing happens if it is running, or out
        of the cluster (a spare, or a server stopped by `leave`)."""
        target = self._slots[node]
        if target.core is not None or target.out:
            return
        disk, snap = target.disk, target.disk.snapshot
        hard_state = hard_state_on_restart(target.config, disk.hard_state)
        rng = random.Random(self.rng.getrandbits(64))
        target.core = Raft(target.config, rng, hard_state, snap, list(disk.entries))
        target.kv = KVStore.restore(snap.data) if snap else KVStore()
        target.applied, target.applied_term = (snap.index, snap.term) if snap else (0, 0)
        target.next_read_id = 1
        target.durable_vote = (disk.hard_state.term, disk.hard_state.vote)
        # Nodes come up at different moments within a tick.
        target.next_tick_ns = self.now_ns + 1 + int(self.rng.random() * target.tick_interval_ns)
        self._push(target.next_tick_ns, _TICK, target.id, target.tick_gen)
        if self._lazy:
            self._push(self.now_ns + self._node_ns(target, self.options.lazy_flush_ns),
                       _FLUSH, target.id, target.epoch)  # fmt: skip
        self._guarded(target, self._process)

    def pause(self, node: str) -> None:
        """SIGSTOP: `node` neither ticks nor handles anything until `resume`."""
        target = self._slots[node]
        if target.core is None or target.paused:
            return
        target.paused = True
        target.tick_gen += 1

    def resume(self, node: str) -> None:
        """SIGCONT: `node` handles what waited, catches up on its ticks, and runs on."""
        target = self._slots[node]
        if target.core is None or not target.paused:
            return
        target.paused = False
        target.tick_gen += 1
        waiting = sorted(target.inbox, key=lambda event: _RESUME_ORDER[event[0]])
        target.inbox = []
        self._drain(target, waiting)
        if target.core is not None:
            self._guarded(target, self._catch_up)

    def set_clock_rate(self, node: str, rate: float) -> None:
        """`node`'s clock runs at `rate` (0.25: four times slow): its ticks come every
        `tick_ms / rate` of virtual time, and its deadlines and flushes stretch alike."""
        if not rate > 0:
            raise ValueError(f"a clock rate must be positive, got {rate}")
        target = self._slots[node]
        target.rate = rate
        target.tick_interval_ns = max(1, round(self._tick_ns / rate))

    def call_at(self, time_ns: int, fn: Callable[[], None]) -> None:
        """Call `fn` at `time_ns` (not before now), among the cluster's own events: a
        fault that must act within a message delay of something it saw (a vote) acts on
        time. `fn` may call the fault methods."""
        self._push(max(time_ns, self.now_ns), _CALL, fn, None)

    # ---- events -------------------------------------------------------------------------

    def _push(self, time_ns: int, kind: int, a: Any, b: Any) -> None:
        seq = self._seq = self._seq + 1
        heapq.heappush(self._queue, (time_ns, seq, kind, a, b))

    def _client_delay(self) -> int:
        return self._client_low + int(self.rng.random() * self._client_span)

    def _node_ns(self, node: _SimNode, node_ns: int) -> int:
        """Virtual time for a span of `node_ns` on `node`'s clock."""
        return node_ns if node.rate == 1.0 else max(1, round(node_ns / node.rate))

    def _on_tick(self, nid: str, gen: int) -> None:
        node = self._nodes[nid]
        if gen != node.tick_gen or node.core is None:
            return
        node.next_tick_ns += node.tick_interval_ns
        self._push(node.next_tick_ns, _TICK, nid, gen)
        if node.syncing is not None:
            node.inbox.append((_CORE_TICK, nid, None))
            return
        self._on_core_tick(nid, None)

    def _on_core_tick(self, nid: str, _: None) -> None:
        node = self._nodes[nid]
        assert node.core is not None
        self._current = node
        node.core.tick()
        self._process(node)

    def _catch_up(self, node: _SimNode) -> None:
        core, interval = node.core, node.tick_interval_ns
        assert core is not None
        if self.now_ns >= node.next_tick_ns:
            cap = 4 * self.options.timing.election_timeout_ticks
            due = min((self.now_ns - node.next_tick_ns) // interval + 1, cap)
            node.next_tick_ns = max(node.next_tick_ns + due * interval, self.now_ns)
            if node.syncing is not None:
                node.inbox.extend((_CORE_TICK, node.id, None) for _ in range(due))
            else:
                for _ in range(due):
                    core.tick()
                self._process(node)
        self._push(node.next_tick_ns, _TICK, node.id, node.tick_gen)

    def _on_message(self, msg: Message, epoch: int) -> None:
        node = self._nodes[msg.dst]
        if node.core is None or node.epoch != epoch:
            return
        if self._blocked or self._lossy:  # grudges and losses name slots
            link = (self._slot_of[msg.src], node.slot)
            if link in self._blocked:
                return
            if link in self._lossy and self.rng.random() < self._loss_share:
                return
        if node.paused or node.syncing is not None:
            node.inbox.append((_MSG, msg, epoch))
            return
        self._current = node
        node.core.step(msg)
        self._process(node)

    def _send(self, messages: list[Message]) -> None:
        if self.on_vote is not None:
            self._tell_votes(messages)
        if self.on_send is not None:
            for msg in messages:
                if self.on_send is not None:
                    self.on_send(msg)
        nodes, link_free, random = self._nodes, self._link_free_ns, self.rng.random
        low, span, now = self._net_low, self._net_span, self.now_ns
        queue, push, seq = self._queue, heapq.heappush, self._seq
        for msg in messages:
            dst = nodes.get(msg.dst)
            if dst is None or dst.core is None:
                continue
            link = (msg.src, msg.dst)
            arrive = now + low + int(random() * span)
            free = link_free.get(link, 0)
            if free > arrive:
                arrive = free
            link_free[link] = arrive
            seq += 1  # _push, inlined: one call fewer per message
            push(queue, (arrive, seq, _MSG, msg, dst.epoch))
        self._seq = seq

    def _tell_votes(self, messages: list[Message]) -> None:
        for msg in messages:
            if msg.type is MsgType.VOTE_RESP and not msg.reject and self.on_vote is not None:
                self.on_vote(self._slot_of[msg.src], self._slot_of[msg.dst], msg.term)

    def _on_call(self, fn: Callable[[], None], _: None) -> None:
        fn()

    def _on_flush(self, nid: str, epoch: int) -> None:
        node = self._nodes[nid]
        if node.core is None or node.epoch != epoch:
            return
        if node.paused:
            node.inbox.append((_FLUSH, nid, epoch))
            return
        self._current = node
        self._flush(node)
        self._push(self.now_ns + self._node_ns(node, self.options.lazy_flush_ns),
                   _FLUSH, nid, epoch)  # fmt: skip

    def _on_reply(self, rid: int, resp: dict[str, Any]) -> None:
        self._delivered.append((rid, resp))

    # ---- one node's Ready ---------------------------------------------------------------

    def _process(self, node: _SimNode) -> None:
        core = node.core
        assert core is not None
        if node.draining or node.syncing is not None:
            return
        while core.has_ready():
            rd = core.ready()
            hard_state = rd.hard_state
            if rd.entries or rd.snapshot is not None:
                self._persist(node, DiskBatch(hard_state, rd.snapshot, tuple(rd.entries)))
            elif hard_state is not None:
                if self._lazy:
                    node.buffered.append(DiskBatch(hard_state))
                else:
                    node.disk.hard_state = hard_state
            if self._syncs and (
                rd.entries
                or rd.snapshot is not None
                or (
                    hard_state is not None
                    and (hard_state.term, hard_state.vote) != node.durable_vote
                )
            ):
                self._start_sync(node, rd)
                return
            if rd.messages:
                self._send(rd.messages)
            self._finish(node, core, rd)

    def _start_sync(self, node: _SimNode, rd: Ready) -> None:
        # A leader's own messages may leave before its fsync (Raft thesis 10.2.1).
        early: list[Message] = []
        later: list[Message] = []
        for msg in rd.messages:
            (early if msg.type in LEADER_MESSAGES else later).append(msg)
        if early:
            self._send(early)
        if rd.hard_state is not None:
            node.durable_vote = (rd.hard_state.term, rd.hard_state.vote)
        node.syncing = (rd, later)
        done_ns = self.now_ns + self._fsync_low + int(self.rng.random() * self._fsync_span)
        self._push(done_ns, _SYNCED, node.id, node.epoch)

    def _on_synced(self, nid: str, epoch: int) -> None:
        node = self._nodes[nid]
        if node.core is None or node.epoch != epoch:
            return
        if node.paused:
            node.inbox.append((_SYNCED, nid, epoch))
            return
        self._current = node
        assert node.syncing is not None
        rd, later = node.syncing
        node.syncing = None
        if later:
            self._send(later)
        self._finish(node, node.core, rd)
        if not node.draining:  # else the drain under way hands over the rest
            waiting, node.inbox = node.inbox, []
            self._drain(node, waiting)

    def _drain(self, node: _SimNode, events: list[tuple[int, Any, Any]]) -> None:
        """Hand `node` what waited, in order, then carry out one Ready for all of it."""
        node.draining = True
        for kind, a, b in events:
            self._current = node
            try:
                self._handlers[kind](a, b)
            except AssertionError as exc:
                node.draining = False
                self._fail(exc)
            if node.core is None:
                return
        node.draining = False
        self._guarded(node, self._process)

    def _finish(self, node: _SimNode, core: Raft, rd: Ready) -> None:
        if rd.snapshot is not None:
            self._install(node, rd.snapshot)
        for entry in rd.committed:
            self._apply(node, entry)
        for read_state in rd.reads:
            rid = node.reads.pop(read_state.request_id, None)
            if rid is not None:
                heapq.heappush(node.waiters, (read_state.index, rid))
        for read_id in rd.dropped_reads:
            rid = node.reads.pop(read_id, None)
            if rid is not None:
                self._answer(rid, self._not_leader(core.leader))
        core.advance(rd)
        waiters = node.waiters
        while waiters and waiters[0][0] <= node.applied:
            rid = heapq.heappop(waiters)[1]
            request = self._requests.get(rid)
            if request is not None:
                self._answer(rid, reply(True, value=node.kv.get(request.key)))
        if node.applied - core.snapshot_index >= self.options.snapshot_entries:
            self._snapshot(node, core)

    def _persist(self, node: _SimNode, batch: DiskBatch) -> None:
        if not self._lazy:
            node.disk.apply(batch)
            return
        if batch.install is not None:
            # A snapshot is written through at once, after what was buffered.
            self._flush(node)
            node.disk.apply(DiskBatch(install=batch.install))
            batch = DiskBatch(batch.hard_state, None, batch.entries)
        node.buffered.append(batch)

    def _flush(self, node: _SimNode) -> None:
        for batch in node.buffered:
            node.disk.apply(batch)
        node.buffered.clear()

    def _install(self, node: _SimNode, snap: Snapshot) -> None:
        if snap.index <= node.applied:
            return
        node.kv = KVStore.restore(snap.data)
        node.applied, node.applied_term = snap.index, snap.term
        # Proposals the snapshot covers may or may not be in it.
        for index in [i for i in node.proposals if i <= snap.index]:
            self._answer(node.proposals.pop(index)[1], reply(None, error="unknown"))

    def _apply(self, node: _SimNode, entry: Entry) -> None:
        if entry.index <= node.applied:
            return
        assert entry.index == node.applied + 1, f"apply gap: {node.applied} -> {entry.index}"
        node.applied, node.applied_term = entry.index, entry.term
        result = _APPLIED
        if entry.kind == EntryKind.NORMAL:
            result = node.kv.apply(entry.index, entry.data)
        proposal = node.proposals.pop(entry.index, None)
        if proposal is None:
            return
        term, rid = proposal
        if term != entry.term:
            # Another leader's entry took this index: ours is certainly not in the log.
            self._answer(rid, reply(False, error="dropped"))
        elif result.ok:
            self._answer(rid, reply(True, value=result.value))
        else:
            self._answer(rid, reply(False, error=result.error, value=result.value))

    def _snapshot(self, node: _SimNode, core: Raft) -> None:
        membership = core.membership_at(node.applied)
        snap = Snapshot(node.applied, node.applied_term, membership.voters, node.kv.snapshot(),
                        membership.learners)  # fmt: skip
        if self._lazy:
            self._flush(node)
        node.disk.apply(DiskBatch(compact=snap))
        core.compact(snap)

    # ---- requests -----------------------------------------------------------------------

    def _on_arrive(self, rid: int, _: None) -> None:
        request = self._requests.get(rid)
        if request is None:
            return
        node = self._nodes[request.node]
        if node.core is None or node.epoch != request.epoch:
            del self._requests[rid]
            return
        if node.paused or node.syncing is not None:
            node.inbox.append((_ARRIVE, rid, None))
            return
        self._current = node
        self._handle(node, rid, request)

    def _handle(self, node: _SimNode, rid: int, request: _Request) -> None:
        body = request.body
        op = body.get("op") if isinstance(body, dict) else None
        if op == "status":
            self._answer(rid, reply(True, **self._status(node)))
            return
        if op == "member":
            self._handle_change(node, rid, body)
            return
        try:
            cmd = parse_command(body)
            mode = body.get("mode")
            if mode is None:
                mode = self.options.read_mode
            if mode not in READ_MODES:
                raise BadRequest(f"unknown read mode {mode!r}; expected one of {READ_MODES}")
        except BadRequest as exc:
            self._answer(rid, reply(False, error="bad_request", message=str(exc)))
            return
        node.requests.add(rid)
        deadline = self.now_ns + self._node_ns(node, self.options.request_timeout_ns)
        # The deadline takes its place in the event order now, but enters the heap only
        # if the request is still open: a third of them are answered at once (not_leader).
        seq = self._seq = self._seq + 1
        try:
            if cmd.op == "get" and mode != "log":
                self._read(node, rid, request, cmd.key, mode)
            else:
                self._write(node, rid, cmd)
        except NotLeader as refused:
            self._answer(rid, self._not_leader(refused.leader))
        finally:
            if rid in self._requests:
                heapq.heappush(self._queue, (deadline, seq, _DEADLINE, rid, None))

    def _handle_change(self, node: _SimNode, rid: int, body: dict[str, Any]) -> None:
        """{"op": "member", "change": a ConfChangeOp value, "node": a Raft id}, as a leader
        serves it: answered once the change is applied with its term ({"ok": true}), or
        refused ({"ok": false, "error": the ConfChangeError reason, "retryable"}), or
        not_leader."""
        node_id = body.get("node")
        try:
            change = ConfChangeOp(body.get("change"))
        except ValueError:
            change = None
        if change is None or not isinstance(node_id, str):
            self._answer(rid, reply(False, error="bad_request", message=f"bad change {body}"))
            return
        core = node.core
        assert core is not None
        node.requests.add(rid)
        deadline = self.now_ns + self._node_ns(node, self.options.request_timeout_ns)
        seq = self._seq = self._seq + 1
        try:
            index = core.propose_conf_change(change, node_id)
            node.proposals[index] = (core.term, rid)
            self._process(node)
        except NotLeader as not_leader:
            self._answer(rid, self._not_leader(not_leader.leader))
        except ConfChangeError as refused:  # a name of its own: mypyc types one per name
            self._answer(rid, reply(False, error=refused.reason, message=str(refused),
                                    retryable=refused.retryable))  # fmt: skip
        finally:
            if rid in self._requests:
                heapq.heappush(self._queue, (deadline, seq, _DEADLINE, rid, None))

    def _write(self, node: _SimNode, rid: int, cmd: Command) -> None:
        core = node.core
        assert core is not None
        if core.role is not Role.LEADER:  # propose's NotLeader, without raising it
            self._answer(rid, self._not_leader(core.leader))
            return
        index = core.propose(encode_command(cmd, parsed=True))
        node.proposals[index] = (core.term, rid)
        self._process(node)

    def _read(self, node: _SimNode, rid: int, request: _Request, key: str, mode: str) -> None:
        core = node.core
        assert core is not None
        if mode == "local" and core.role is not Role.LEADER:
            raise NotLeader(core.leader)
        if mode in ("follower", "local"):
            self._answer(rid, reply(True, value=node.kv.get(key)))
            return
        request.key = key
        read_id = node.next_read_id
        node.next_read_id += 1
        if core.role is not Role.LEADER:  # read_index's NotLeader, without raising it
            self._answer(rid, self._not_leader(core.leader))
            return
        core.read_index(read_id, lease=(mode == "lease"))
        node.reads[read_id] = rid
        self._process(node)

    def _on_deadline(self, rid: int, _: None) -> None:
        request = self._requests.get(rid)
        if request is None:
            return
        node = self._nodes[request.node]
        if node.paused:
            node.inbox.append((_DEADLINE, rid, None))
            return
        # A timeout may hide a commit: the outcome is unknown.
        self._answer(rid, reply(None, error="timeout"))

    def _answer(self, rid: int, resp: dict[str, Any]) -> None:
        request = self._requests.pop(rid, None)
        if request is None:
            return
        self._nodes[request.node].requests.discard(rid)
        body = request.body
        if isinstance(body, dict) and "id" in body:
            resp["id"] = body["id"]
        self._push(self.now_ns + self._client_delay(), _REPLY, rid, resp)

    def _status(self, node: _SimNode) -> dict[str, Any]:
        core = node.core
        assert core is not None, f"{node.id} is down"
        return {
            "id": node.id,
            "role": core.role.name.lower(),
            "term": core.term,
            "leader": core.leader,
            "commit_index": core.commit_index,
            "last_applied": node.applied,
            "last_index": core.last_index,
            "snapshot_index": core.snapshot_index,
            "read_mode": self.options.read_mode,
        }

    def _not_leader(self, leader: str | None) -> dict[str, Any]:
        # Nodes here have no addresses: the hint is the leader's slot, its name.
        hint = None if leader is None else self._slot_of.get(leader, leader)
        return reply(False, error="not_leader", leader=hint, leader_addr=None, leader_http=None)

    # ---- crashes ------------------------------------------------------------------------

    def _crash(self, node: _SimNode) -> None:
        if node.core is None:
            return
        node.core = None
        node.epoch += 1
        node.tick_gen += 1
        node.paused = False
        node.syncing = None
        node.draining = False
        for kind, a, _ in node.inbox:
            if kind == _ARRIVE:
                self._requests.pop(a, None)
        node.inbox.clear()
        node.buffered.clear()
        node.proposals.clear()
        node.reads.clear()
        node.waiters.clear()
        for rid in node.requests:
            self._requests.pop(rid, None)
        node.requests.clear()

    def _guarded(self, node: _SimNode, action: Callable[[_SimNode], None]) -> None:
        self._current = node
        try:
            action(node)
        except AssertionError as exc:
            self._fail(exc)

    def _fail(self, exc: AssertionError) -> None:
        node = self._current
        assert node is not None, "an assertion outside any node"
        self.failures.append(NodeFailure(self.now_ns, node.slot, f"{type(exc).__name__}: {exc}"))
        self._crash(node)


def _span(delay_ns: tuple[int, int]) -> tuple[int, int]:
    """(low, number of values) of a uniform integer draw in [low, high]."""
    low, high = delay_ns
    return low, high - low + 1
