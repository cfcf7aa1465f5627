"""The asyncio driver of the Raft core: real TCP, real disk.

One task owns the core, the storage and the state machine (`_raft_loop`);
everything else (peer readers, client handlers, the ticker) hands it events
through a queue, so the core is never touched between `ready()` and
`advance()`. Per batch: persist and fsync, then send, then apply, then
answer clients: an acknowledged write is always on disk on a majority.

Membership (docs/membership.md, "For the drivers"): the node dials the members of its
configuration (`Raft.membership`, then every `Ready.membership`), and a member being
removed while the leader still replicates to it; it finds their addresses in its address
book (`raftkv.members`), which every configuration change and every snapshot carries.
A member change is proposed by `change_member` on the leader and answered once applied.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from raftkv import wire
from raftkv.core import ConfChangeError, NotLeader, Raft, Role, hard_state_on_restart
from raftkv.kv import (
    BadRequest,
    Command,
    KVStore,
    Result,
    SnapshotError,
    encode_command,
    parse_command,
)
from raftkv.members import (
    Address,
    MemberChange,
    claim_data_dir,
    decode_book,
    encode_book,
    parse_change,
)
from raftkv.peerauth import ACCEPTOR, CONNECTOR, Handshake, is_nonce, new_nonce
from raftkv.settings import DEFAULT_RAFT, RaftSettings
from raftkv.storage import Storage, StorageError
from raftkv.timing import NODE_TIMING, RaftTiming
from raftkv.transport import PeerLink, split_addr
from raftkv.types import (
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    Ready,
    Snapshot,
)

log = logging.getLogger("raftkv.node")
T = TypeVar("T")

READ_MODES = ("log", "readindex", "lease", "local", "follower")
# A connection must finish its hello (and proof) this soon after it opens, however busy it
# keeps the line, and only so many may be at it at once: until then nobody is known.
HELLO_TIMEOUT_S = 5.0
MAX_CONNECTIONS_BEFORE_HELLO = 64
# A misconfigured peer reconnects every few ticks: one line per reason this often, with a count.
REFUSAL_LOG_INTERVAL_S = 10.0
PEER_IDLE_TIMEOUT_S = 60.0
CLIENT_IDLE_TIMEOUT_S = 600.0
MAX_REQUESTS_IN_FLIGHT = 4096
LAZY_FLUSH_S = 0.5
LEADER_MESSAGES = frozenset({MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT})


@dataclass(frozen=True)
class NodeOptions:
    """Everything a node needs; `peers` maps id -> (host, port) and includes this node.

    `http`: the address of this node's HTTP face, which whoever runs the node serves
    (`raftkv serve` does, through `raftkv.http_routes`); the node only tells its peers,
    so that a not-leader answer can name the leader's HTTP address.
    `join`: start with no configuration (`Config.join`), to be added to a running cluster;
    the data directory must then be empty, or hold this node's state from when it joined
    (`raftkv.members.claim_data_dir`). A node that joined comes back in join mode anyway:
    its configuration is in its log and snapshot, never in `peers`, which need only list
    this node.
    `cluster_token`: the secret every node of the cluster shares (see `raftkv.peerauth`);
    None accepts any peer that names itself, as nodes did before tokens (with a warning).
    `raft`: the operator's Raft settings (check-quorum, pre-vote, append size); the
    check-quorum of `raft` overrides `timing`'s.
    """

    id: str
    peers: dict[str, tuple[str, int]]
    data_dir: Path
    http: tuple[str, int] | None = None
    read_mode: str = "readindex"
    bugs: frozenset[str] = frozenset()
    timing: RaftTiming = NODE_TIMING
    raft: RaftSettings = DEFAULT_RAFT
    snapshot_entries: int = 10_000
    request_timeout_s: float = 5.0
    seed: int | None = None
    cluster_token: bytes | None = None
    join: bool = False


def reply(ok: bool | None, **fields: Any) -> dict[str, Any]:
    """A client response: ok True (done), False (certainly not done), None (unknown)."""
    return {"ok": ok, **fields}


async def wait_until(fut: asyncio.Future[T], deadline: float) -> T:
    """Await one of our own futures, failing it with TimeoutError at `deadline`
    (loop time). On the hot path this costs a fraction of `asyncio.timeout`."""
    handle = asyncio.get_running_loop().call_at(deadline, _expire, fut)
    try:
        return await fut
    finally:
        handle.cancel()


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


@dataclass
class _Proposal:
    term: int
    future: asyncio.Future[Result]


@dataclass
class _Waiters:
    """Futures waiting for the state machine to reach an index."""

    by_index: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, index: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.by_index.append((index, next(self.counter), fut))
        return fut

    def release(self, applied: int) -> None:
        keep = []
        for item in self.by_index:
            if item[0] <= applied:
                if not item[2].done():
                    item[2].set_result(None)
            else:
                keep.append(item)
        self.by_index = keep


class Node:
    """One raftkv node. `await node.run()` serves its peer port (peers and msgpack
    clients) until `node.stop()`; its HTTP face is served apart (`raftkv.http_routes`)."""

    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.storage = Storage.open(opts.data_dir, fsync="no-fsync" not in opts.bugs)
        stored = self.storage
        has_state = bool(stored.snapshot or stored.entries or stored.hard_state != HardState())
        try:
            join = claim_data_dir(opts.data_dir, opts.id, opts.join, has_state)
        except StorageError:
            stored.close()
            raise
        # A node that joins asks the leader to add it; one back from its own disk is in.
        self.needs_join = opts.join and not has_state
        peers = (opts.id,) if join else tuple(sorted(opts.peers))
        config = opts.raft.config(opts.id, peers, opts.timing, frozenset(opts.bugs), join)
        rng = random.Random(opts.seed)
        snap = self.storage.snapshot
        hard_state = hard_state_on_restart(config, self.storage.hard_state)
        self.core = Raft(config, rng, hard_state, snap, list(self.storage.entries))
        try:
            self.kv = KVStore.restore(snap.data) if snap else KVStore()
        except SnapshotError as exc:
            self.storage.close()
            raise StorageError(f"snapshot in {opts.data_dir} does not restore: {exc}") from None
        self._book: dict[str, Address] = self._first_book()
        self._durable_vote = (self.storage.hard_state.term, self.storage.hard_state.vote)
        self.applied = snap.index if snap else 0
        self.applied_term = snap.term if snap else 0
        self._events: deque[Callable[[], None]] = deque()
        self._wake = asyncio.Event()
        self._proposals: dict[int, _Proposal] = {}
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._read_ids = itertools.count(1)
        self._apply_waiters = _Waiters()
        self._hello: dict[str, object] = {}
        self._links: dict[str, PeerLink] = {}
        self._link_tasks: dict[str, asyncio.Task[None]] = {}
        self._link_group: asyncio.TaskGroup | None = None
        self._unknown_addresses: set[str] = set()
        # Peer addresses from hellos (bounded by the handshake), for peers the book lacks:
        # a node that joins answers its leader before any entry names the members.
        self._greeted: dict[str, str] = {}
        self._peer_http: dict[str, str] = {}
        self._stopping = asyncio.Event()
        self._connections: set[_Connection] = set()
        self._greeting: set[_Connection] = set()
        self._refusing_connections = False
        self._untokened_warned = False
        # reason -> (when last logged, refusals since): a few fixed reasons, so bounded.
        self._refusals: dict[str, tuple[float, int]] = {}
        # A received snapshot's state machine, restored (so checked) before the core saw it.
        self._restored: tuple[Snapshot, KVStore] | None = None
        self._request_tasks: set[asyncio.Task[None]] = set()
        self._busy_requests = 0
        # The no-fsync bug: acknowledge at once, write to the OS only every so often
        # (as a store that fsyncs "periodically" does); a crash of most nodes loses
        # acknowledged writes.
        self._lazy_writes = "no-fsync" in opts.bugs

    # ---- lifecycle -------------------------------------------------------

    async def run(self) -> None:
        host, port = self.opts.peers[self.opts.id]
        http_addr = f"{self.opts.http[0]}:{self.opts.http[1]}" if self.opts.http else None
        if http_addr:
            self._peer_http[self.opts.id] = http_addr
        self._hello = {
            "hello": "peer", "id": self.opts.id, "http": http_addr, "address": f"{host}:{port}",
        }  # fmt: skip
        if self.opts.cluster_token is None:
            log.warning(
                "node %s has no cluster token: anyone who reaches port %d can speak as a peer",
                self.opts.id, port,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._connection, host, port)
        log.info("node %s listening on %s:%d (http %s)", self.opts.id, host, port, http_addr)
        try:
            async with asyncio.TaskGroup() as tg:
                self._link_group = tg
                self._sync_links()
                tg.create_task(self._ticker())
                if self._lazy_writes:
                    tg.create_task(self._lazy_flusher())
                tg.create_task(self._raft_loop())
                await self._stopping.wait()
                raise _Stop
        except* _Stop:
            pass
        finally:
            self._link_group = None
            server.close()
            for conn in list(self._connections):
                conn.close()
            for task in list(self._request_tasks):
                task.cancel()
            self.storage.close()

    def stop(self) -> None:
        self._stopping.set()

    # ---- the loop that owns the core --------------------------------------

    def _submit(self, event: Callable[[], None]) -> None:
        self._events.append(event)
        self._wake.set()

    async def _ticker(self) -> None:
        timing = self.opts.timing
        tick_s = timing.tick_ms / 1000
        next_tick = time.monotonic() + tick_s
        while True:
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            # A late loop (load, SIGSTOP) catches up on the ticks it missed, so
            # timeouts and leases follow the monotonic clock, up to a cap.
            due = min(int((now - next_tick) / tick_s) + 1, 4 * timing.election_timeout_ticks)
            next_tick = max(next_tick + due * tick_s, now)
            for _ in range(due):
                self._submit(self.core.tick)

    async def _lazy_flusher(self) -> None:
        while True:
            await asyncio.sleep(LAZY_FLUSH_S)
            self.storage.sync()

    async def _raft_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._events:
                event = self._events.popleft()
                event()
            while self.core.has_ready():
                await self._handle_ready(self.core.ready())
            self._restored = None

    async def _handle_ready(self, rd: Ready) -> None:
        book_news = self._learn_addresses(rd)
        if rd.snapshot is not None:
            self.storage.save_snapshot(rd.snapshot)
        if rd.entries:
            self.storage.append(rd.entries)
        hs = rd.hard_state
        if hs is not None:
            self.storage.set_hard_state(hs)
        # The commit index is a hint: a change of it alone rides with the next fsync.
        vote_changed = hs is not None and (hs.term, hs.vote) != self._durable_vote
        needs_sync = rd.snapshot is not None or bool(rd.entries) or vote_changed
        if needs_sync and not self._lazy_writes:
            # A leader's own messages may leave before its own fsync (Raft thesis
            # 10.2.1): commits are only counted after this batch, once it is durable.
            later = []
            for msg in rd.messages:
                if msg.type in LEADER_MESSAGES:
                    self._send(msg)
                else:
                    later.append(msg)
            if self.core.role is Role.LEADER and self._busy_requests > 1:
                # Under load the leader reads and parses the next batch meanwhile.
                await asyncio.to_thread(self.storage.sync)
            else:
                # Otherwise the thread hop only adds latency to the critical path.
                self.storage.sync()
            if hs is not None:
                self._durable_vote = (hs.term, hs.vote)
        else:
            later = rd.messages
        for msg in later:
            self._send(msg)
        if rd.snapshot is not None:
            self._install_snapshot(rd.snapshot)
        for entry in rd.committed:
            self._apply(entry)
        for rs in rd.reads:
            fut = self._reads.pop(rs.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)
        for request_id in rd.dropped_reads:
            fut = self._reads.pop(request_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(NotLeader(self.core.leader))
        self.core.advance(rd)
        self._apply_waiters.release(self.applied)
        if book_news or rd.membership is not None or (rd.committed and _has_conf(rd.committed)):
            # After the sends: a removed member still gets what was for it in this batch.
            self._sync_links()
        self._maybe_snapshot()

    def _send(self, msg: Message) -> None:
        link = self._links.get(msg.dst)
        if link is not None:
            link.send(msg)

    def _install_snapshot(self, snap: Snapshot) -> None:
        if snap.index <= self.applied:
            return
        if self._restored is not None and self._restored[0] is snap:
            self.kv = self._restored[1]
        else:
            self.kv = KVStore.restore(snap.data)
        self.applied, self.applied_term = snap.index, snap.term
        # Proposals covered by the snapshot may or may not be in it.
        for index in [i for i in self._proposals if i <= snap.index]:
            prop = self._proposals.pop(index)
            if not prop.future.done():
                prop.future.set_result(Result(ok=False, error="unknown"))

    def _apply(self, entry: Entry) -> None:
        if entry.index <= self.applied:
            return
        assert entry.index == self.applied + 1, f"apply gap: {self.applied} -> {entry.index}"
        self.applied, self.applied_term = entry.index, entry.term
        result = Result(ok=True)
        if entry.kind == EntryKind.NORMAL:
            # Never raises: an undecodable entry is skipped the same way on every replica.
            result = self.kv.apply(entry.index, entry.data)
        prop = self._proposals.pop(entry.index, None)
        if prop is None or prop.future.done():
            return
        if prop.term == entry.term:
            prop.future.set_result(result)
        else:
            # Another leader's entry took this index: ours is certainly not in the log.
            prop.future.set_result(Result(ok=False, error="dropped"))

    def _maybe_snapshot(self) -> None:
        if self.applied - self.core.snapshot_index < self.opts.snapshot_entries:
            return
        membership = self.core.membership_at(self.applied)
        self.kv.meta = encode_book(self._book_of(membership.members()))
        snap = Snapshot(
            self.applied, self.applied_term, membership.voters, self.kv.snapshot(),
            membership.learners,
        )  # fmt: skip
        self.storage.save_snapshot(snap)
        self.core.compact(snap)
        log.info("node %s snapshot at index %d", self.opts.id, snap.index)

    # ---- membership --------------------------------------------------------

    def _first_book(self) -> dict[str, Address]:
        """The addresses known at start: `peers`, then the snapshot's book, then the books
        of the configuration changes in the log, each newer than the one before."""
        book: dict[str, Address] = {n: (f"{h}:{p}", None) for n, (h, p) in self.opts.peers.items()}
        try:
            book.update(decode_book(self.kv.meta))
        except ValueError as exc:
            log.warning("node %s: the snapshot's address book is unreadable: %s", self.opts.id, exc)
        for entry in self.storage.entries:
            if entry.kind is EntryKind.CONF_CHANGE:
                book.update(self._book_in(entry))
        return self._with_own_address(book)

    def _with_own_address(self, book: dict[str, Address]) -> dict[str, Address]:
        host, port = self.opts.peers[self.opts.id]
        http = "{}:{}".format(*self.opts.http) if self.opts.http else None
        book[self.opts.id] = (f"{host}:{port}", http)
        return book

    def _book_in(self, entry: Entry) -> dict[str, Address]:
        try:
            return decode_book(ConfChange.decode(entry.data).context)
        except ValueError as exc:
            log.warning(
                "node %s: entry %d carries no address book: %s", self.opts.id, entry.index, exc
            )
            return {}

    def _learn_addresses(self, rd: Ready) -> bool:
        """Take the address books of a batch's snapshot and configuration changes."""
        before = dict(self._book)
        if rd.snapshot is not None:
            restored = self._restored
            if restored is not None and restored[0] is rd.snapshot:
                meta = restored[1].meta
            else:
                meta = KVStore.restore(rd.snapshot.data).meta
            try:
                self._book.update(decode_book(meta))
            except ValueError as exc:
                log.warning(
                    "node %s: a snapshot's address book is unreadable: %s", self.opts.id, exc
                )
        for entry in rd.entries:
            if entry.kind is EntryKind.CONF_CHANGE:
                self._book.update(self._book_in(entry))
        if self._book == before:
            return False
        self._with_own_address(self._book)
        return True

    def _book_of(self, members: tuple[str, ...]) -> dict[str, Address]:
        return {n: self._book[n] for n in members if n in self._book}

    def _may_be_peer(self, peer: str) -> bool:
        """Whom the peer handshake accepts: members of the configuration, nodes the book
        knows (a removed member may still be told of its removal), and anyone while this
        node has no configuration yet (it joins: its leader is nobody it knows)."""
        members = self.core.membership.members()
        return peer in self._book or peer in members or not members

    def _sync_links(self) -> None:
        """Dial every member of the configuration, and a member being removed while the
        leader still replicates to it; close the links to everybody else."""
        group, core, me = self._link_group, self.core, self.opts.id
        if group is None:
            return
        members = core.membership.members()
        wanted = {p for p in members if p != me}
        wanted |= {p for p in self._links if core.progress(p) is not None}
        if not members:
            wanted |= self._greeted.keys()
        for peer in sorted(wanted - self._links.keys()):
            greeted = self._greeted.get(peer)
            entry = self._book.get(peer) or ((greeted, None) if greeted else None)
            try:
                host, port = split_addr(entry[0]) if entry else ("", 0)
            except ValueError:
                entry = None
            if entry is None:
                if peer not in self._unknown_addresses:
                    self._unknown_addresses.add(peer)
                    log.warning("node %s: no address known for member %s", me, peer)
                continue
            link = PeerLink(self._hello, peer, host, port, self.opts.cluster_token)
            self._links[peer] = link
            self._link_tasks[peer] = group.create_task(link.run())
            log.info("node %s: dialing member %s at %s", me, peer, entry[0])
        for peer in sorted(self._links.keys() - wanted):
            del self._links[peer]
            self._link_tasks.pop(peer).cancel()
            log.info("node %s: closed the link to %s, no longer a member", me, peer)

    def members(self) -> dict[str, Any]:
        """This node's view of the configuration (the latest in its log, maybe not yet
        committed: `pending`), with the members' addresses and the leader it knows."""
        core = self.core
        membership = core.membership
        leader = core.leader
        leader_addr, leader_http = self._book.get(leader, (None, None)) if leader else (None, None)
        book = self._book_of(membership.members())
        return {
            "node_id": self.opts.id,
            "role": core.role.name.lower(),
            "term": core.term,
            "leader": leader,
            "leader_addr": leader_addr,
            "leader_http": self._peer_http.get(leader, leader_http) if leader else None,
            "voters": list(membership.voters),
            "learners": list(membership.learners),
            "pending": core.conf_pending,
            "conf_index": core.conf_index,
            "members": {n: {"address": a, "http": h} for n, (a, h) in sorted(book.items())},
        }

    async def change_member(self, change: MemberChange) -> dict[str, Any]:
        """Propose `change` on the leader and answer once it is applied: ok with the
        configuration after it; not_leader; conf_change (refused: `reason`, `retryable`);
        dropped (another leader's entry took its place); timeout or unknown (it may
        happen). Adding a learner that is already a member at the same address, with no
        change pending, answers ok at once (`unchanged`): a node that joins may ask after
        an operator added it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        deadline = loop.time() + self.opts.request_timeout_s
        proposed: list[int] = []

        def propose() -> None:
            core = self.core
            if self._already_member(change):
                fut.set_result(Result(ok=True, value="unchanged"))
                return
            members = tuple(m for m in core.membership.members() if m != change.node)
            book = self._book_of(members)
            if change.op is ConfChangeOp.ADD_LEARNER:
                assert change.address is not None
                book[change.node] = (change.address, change.http)
            try:
                index = core.propose_conf_change(change.op, change.node, encode_book(book))
            except (NotLeader, ConfChangeError) as exc:
                fut.set_exception(exc)
                return
            proposed.append(index)
            self._proposals[index] = _Proposal(core.term, fut)

        self._submit(propose)
        try:
            result = await wait_until(fut, deadline)
        except NotLeader as exc:
            return self._not_leader(exc.leader)
        except ConfChangeError as exc:
            return reply(
                False, error="conf_change", reason=exc.reason, retryable=exc.retryable,
                message=str(exc),
            )  # fmt: skip
        except TimeoutError:
            message = f"not applied within {self.opts.request_timeout_s} s: it may still happen"
            return reply(None, error="timeout", message=message)
        if result.error == "dropped":
            return reply(False, error="dropped", message="a new leader replaced the change")
        if result.error is not None:
            return reply(None, error=result.error, message="the change may or may not be in")
        unchanged = {"unchanged": True} if result.value == "unchanged" else {}
        return reply(True, index=proposed[0] if proposed else None, **unchanged, **self.members())

    def _already_member(self, change: MemberChange) -> bool:
        core = self.core
        return (
            change.op is ConfChangeOp.ADD_LEARNER
            and core.role is Role.LEADER
            and not core.conf_pending
            and change.node in core.membership.members()
            and self._book.get(change.node, ("", None))[0] == change.address
        )

    # ---- requests ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "id": self.opts.id,
            "role": self.core.role.name.lower(),
            "term": self.core.term,
            "leader": self.core.leader,
            "commit_index": self.core.commit_index,
            "last_applied": self.applied,
            "last_index": self.core.last_index,
            "snapshot_index": self.core.snapshot_index,
            "read_mode": self.opts.read_mode,
            "raft_options": self.opts.raft.words(),
        }

    def _not_leader(self, leader: str | None) -> dict[str, Any]:
        peer, http = self._book.get(leader, (None, None)) if leader else (None, None)
        return reply(
            False,
            error="not_leader",
            leader=leader,
            leader_addr=peer,
            leader_http=self._peer_http.get(leader, http) if leader else None,
        )

    async def handle(self, request: object) -> dict[str, Any]:
        """Serve one client request (a decoded dict); never raises for bad input."""
        if isinstance(request, dict) and request.get("op") == "status":
            return reply(True, **self.status())
        if isinstance(request, dict) and request.get("op") == "members":
            return reply(True, **self.members())
        if isinstance(request, dict) and request.get("op") == "member":
            fields = (request.get(f) for f in ("change", "node", "address", "http"))
            try:
                change = parse_change(*fields)
            except BadRequest as exc:
                return reply(False, error="bad_request", message=str(exc))
            return await self.change_member(change)
        try:
            cmd = parse_command(request)
            mode = request.get("mode") if isinstance(request, dict) else None
            if mode is None:
                mode = self.opts.read_mode
            if mode not in READ_MODES:
                raise BadRequest(f"unknown read mode {mode!r}; expected one of {READ_MODES}")
        except BadRequest as exc:
            return reply(False, error="bad_request", message=str(exc))
        deadline = asyncio.get_running_loop().time() + self.opts.request_timeout_s
        try:
            if cmd.op == "get" and mode != "log":
                return await self._read(cmd.key, mode, deadline)
            return await self._write(cmd, deadline)
        except NotLeader as exc:
            return self._not_leader(exc.leader)
        except TimeoutError:
            # Fails only where certainly nothing happened; a timeout may hide a commit.
            return reply(None, error="timeout")

    async def _write(self, cmd: Command, deadline: float) -> dict[str, Any]:
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        data = encode_command(cmd)

        def propose() -> None:
            try:
                index = self.core.propose(data)
            except NotLeader as exc:
                fut.set_exception(exc)
                return
            self._proposals[index] = _Proposal(self.core.term, fut)

        self._submit(propose)
        result = await wait_until(fut, deadline)
        if result.error == "unknown":
            return reply(None, error="unknown")
        if result.error == "dropped":
            return reply(False, error="dropped")
        if result.ok:
            return reply(True, value=result.value)
        return reply(False, error=result.error, value=result.value)

    async def _read(self, key: str, mode: str, deadline: float) -> dict[str, Any]:
        if mode == "follower":
            return reply(True, value=self.kv.get(key))
        if mode == "local":
            if self.core.role != Role.LEADER:
                raise NotLeader(self.core.leader)
            return reply(True, value=self.kv.get(key))
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        request_id = next(self._read_ids)

        def read_index() -> None:
            try:
                self.core.read_index(request_id, lease=(mode == "lease"))
            except NotLeader as exc:
                fut.set_exception(exc)
                return
            self._reads[request_id] = fut

        self._submit(read_index)
        try:
            index = await wait_until(fut, deadline)
        finally:
            self._reads.pop(request_id, None)
        if self.applied < index:
            await wait_until(self._apply_waiters.add(index), deadline)
        return reply(True, value=self.kv.get(key))

    # ---- connections -------------------------------------------------------

    def _connection(self) -> _Connection:
        return _Connection(self)

    def _peer_message(self, peer: str, obj: object) -> None:
        msg = wire.message_from_obj(obj)
        if msg.src != peer or msg.dst != self.opts.id:
            raise wire.FrameError(f"message {msg.src}->{msg.dst} on the link from {peer}")
        if msg.snapshot is None:
            self._submit(functools.partial(self.core.step, msg))
            return
        # Checked before the core sees it: once stepped, the core would have moved its
        # term, commit index and log to a snapshot that the driver must then persist.
        try:
            kv = KVStore.restore(msg.snapshot.data)
        except SnapshotError as exc:
            log.warning(
                "node %s: refused a snapshot from %s (index %d, term %d): %s",
                self.opts.id, peer, msg.snapshot.index, msg.snapshot.term, exc,
            )  # fmt: skip
            return
        self._submit(functools.partial(self._step_snapshot, msg, kv))

    def _step_snapshot(self, msg: Message, kv: KVStore) -> None:
        assert msg.snapshot is not None
        self._restored = (msg.snapshot, kv)
        self.core.step(msg)

    def _log_refusal(self, who: str, what: str) -> None:
        now = time.monotonic()
        last, quiet = self._refusals.get(what, (-REFUSAL_LOG_INTERVAL_S, 0))
        if now - last < REFUSAL_LOG_INTERVAL_S:
            self._refusals[what] = (last, quiet + 1)
            return
        self._refusals[what] = (now, 0)
        more = f" ({quiet} more like it in the last {now - last:.0f} s)" if quiet else ""
        log.warning("node %s: refused a peer connection %s: %s%s", self.opts.id, who, what, more)

    def _known_peer(self, hello: dict[Any, Any]) -> str | None:
        """The peer a hello names, if it is one of ours."""
        peer = hello.get("id")
        if not isinstance(peer, str) or peer == self.opts.id or not self._may_be_peer(peer):
            return None
        if self.opts.cluster_token is None and "nonce" in hello and not self._untokened_warned:
            self._untokened_warned = True
            log.warning(
                "node %s: peer %s proves a cluster token, but this node has none",
                self.opts.id, peer,
            )  # fmt: skip
        return peer

    def _peer_joined(self, peer: str, hello: dict[Any, Any]) -> None:
        http = hello.get("http")
        if isinstance(http, str):
            self._peer_http[peer] = http
        address = hello.get("address")
        if isinstance(address, str) and peer not in self._book:
            self._greeted[peer] = address
            if not self.core.membership.members():
                self._sync_links()

    async def _answer(self, req: object, conn: _Connection) -> None:
        self._busy_requests += 1
        try:
            resp = await self.handle(req)
            if isinstance(req, dict) and "id" in req:
                resp["id"] = req["id"]
            conn.write(resp)
        finally:
            self._busy_requests -= 1
            conn.request_done()


class _Connection(asyncio.Protocol):
    """One inbound connection. Its first frame, the hello, says who speaks: a peer (then
    Raft messages, handed to the loop that owns the core) or a client (then requests,
    each answered by a task as it completes, matched by request id).

    Until the hello is done nobody is known: frames are at most MAX_HELLO_FRAME_BYTES, the
    hello must be done within HELLO_TIMEOUT_S of the connection opening, and a connection
    beyond MAX_CONNECTIONS_BEFORE_HELLO still at it is closed at once. A peer's hello is
    done once its proof of the cluster token is checked (`raftkv.peerauth`); then frames
    may reach wire.MAX_FRAME_BYTES. A client's requests may reach MAX_REQUEST_FRAME_BYTES.

    A protocol rather than a stream: a frame costs no task switch and no timer. Idle
    connections are closed by one timer per connection that re-arms itself (its first run
    is the hello deadline); a client that has MAX_REQUESTS_IN_FLIGHT requests open, or does
    not read its answers, is not read from until that changes.
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._loop = asyncio.get_running_loop()
        self._reader = wire.FrameReader(wire.MAX_HELLO_FRAME_BYTES)
        self._transport: asyncio.Transport | None = None
        self._greeting = True
        self._handshake: Handshake | None = None
        self._hello: dict[Any, Any] = {}
        self._peer: str | None = None
        self._open_requests = 0
        self._reading_paused = False
        self._writing_paused = False
        self._last_seen = 0.0
        self._idle_s = HELLO_TIMEOUT_S
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        node = self._node
        if len(node._greeting) >= MAX_CONNECTIONS_BEFORE_HELLO:
            if not node._refusing_connections:
                log.warning(
                    "node %s: %d connections without a hello: closing new ones until some finish",
                    node.opts.id, len(node._greeting),
                )  # fmt: skip
                node._refusing_connections = True
            transport.abort()
            return
        node._connections.add(self)
        node._greeting.add(self)
        self._last_seen = self._loop.time()
        self._idle_timer = self._loop.call_later(self._idle_s, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._node._connections.discard(self)
        self._greeted()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._transport = None

    def _greeted(self) -> None:
        self._greeting = False
        node = self._node
        node._greeting.discard(self)
        if node._refusing_connections and len(node._greeting) < MAX_CONNECTIONS_BEFORE_HELLO:
            node._refusing_connections = False

    def _check_idle(self) -> None:
        if self._greeting:
            log.debug("connection closed: no hello within %.1f s", self._idle_s)
            self.close()
            return
        quiet = self._loop.time() - self._last_seen
        if quiet >= self._idle_s and self._open_requests == 0:
            log.debug("connection closed: idle for %.0f s", quiet)
            self.close()
        else:
            again_in = max(1.0, self._idle_s - quiet)
            self._idle_timer = self._loop.call_later(again_in, self._check_idle)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._last_seen = self._loop.time()
        try:
            while self._greeting:
                # One frame at a time: the hello decides the limit for the frames after it.
                frames = self._reader.feed(data, max_frames=1)
                data = b""
                if not frames or not self._greet(frames[0]):
                    return
            for obj in self._reader.feed(data):
                if self._peer is not None:
                    self._node._peer_message(self._peer, obj)
                else:
                    self._request(obj)
        except wire.FrameError as exc:
            # A peer that breaks the protocol is worth a warning (a bug or an attack); a
            # client's bad request is answered and is the client's business.
            level = logging.WARNING if self._peer is not None else logging.DEBUG
            log.log(level, "connection from %s closed: %s", self._peer or "a client", exc)
            if not self._greeting and self._peer is None:
                self.write(reply(False, error="bad_request", message=str(exc)))
            self.close()

    def eof_received(self) -> bool:
        try:
            self._reader.check_eof()
        except wire.FrameError as exc:
            log.debug("connection closed: %s", exc)
        return False  # the transport closes itself

    def _greet(self, frame: object) -> bool:
        """Take one frame of the hello; False when the connection was refused."""
        if self._handshake is not None:
            return self._check_proof(frame)
        kind = frame.get("hello") if isinstance(frame, dict) else None
        if kind == "peer":
            assert isinstance(frame, dict)
            return self._peer_hello(frame)
        if kind == "client":
            self._open(CLIENT_IDLE_TIMEOUT_S, wire.MAX_REQUEST_FRAME_BYTES)
            return True
        self.write(reply(False, error="bad_request", message="first frame must be a hello"))
        self.close()
        return False

    def _peer_hello(self, hello: dict[Any, Any]) -> bool:
        peer = self._node._known_peer(hello)
        if peer is None:
            return self._refuse(f"{hello.get('id')!r:.100}", "a hello from an unknown peer")
        token = self._node.opts.cluster_token
        if token is None:
            self._peer_joined(peer, hello)
            return True
        if not is_nonce(hello.get("nonce")):
            return self._refuse(peer, "a hello without a proof of the cluster token")
        self._hello = hello
        self._handshake = Handshake(peer, self._node.opts.id, hello["nonce"], new_nonce())
        proof = self._handshake.proof(token, ACCEPTOR)
        self.write({"nonce": self._handshake.acceptor_nonce, "proof": proof})
        return True

    def _check_proof(self, frame: object) -> bool:
        shake, token = self._handshake, self._node.opts.cluster_token
        assert shake is not None and token is not None
        proof = frame.get("proof") if isinstance(frame, dict) else None
        if not shake.verify(token, CONNECTOR, proof):
            return self._refuse(shake.connector, "a wrong proof of the cluster token")
        self._peer_joined(shake.connector, self._hello)
        return True

    def _peer_joined(self, peer: str, hello: dict[Any, Any]) -> None:
        self._peer = peer
        self._node._peer_joined(peer, hello)
        self._open(PEER_IDLE_TIMEOUT_S, wire.MAX_FRAME_BYTES)

    def _open(self, idle_s: float, max_frame_bytes: int) -> None:
        self._greeted()
        self._idle_s = idle_s
        self._reader.max_frame_bytes = max_frame_bytes

    def _refuse(self, peer: str, what: str) -> bool:
        addr = self._transport.get_extra_info("peername") if self._transport else None
        self._node._log_refusal(f"as {peer} from {addr}", what)
        self.close()
        return False

    def _request(self, req: object) -> None:
        self._open_requests += 1
        if self._open_requests >= MAX_REQUESTS_IN_FLIGHT:
            self._pause_reading()
        task = asyncio.create_task(self._node._answer(req, self))
        self._node._request_tasks.add(task)
        task.add_done_callback(self._node._request_tasks.discard)

    def request_done(self) -> None:
        self._open_requests -= 1
        self._maybe_resume_reading()

    def write(self, obj: object) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(wire.encode_frame(obj))

    # Flow control: the transport tells us when its write buffer is too full.
    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._maybe_resume_reading()

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self._writing_paused
            and self._open_requests < MAX_REQUESTS_IN_FLIGHT // 2
            and self._transport is not None
        ):
            self._reading_paused = False
            self._transport.resume_reading()


def _has_conf(entries: list[Entry]) -> bool:
    return any(e.kind is EntryKind.CONF_CHANGE for e in entries)


class _Stop(Exception):
    """Raised inside the task group to end it cleanly."""
