"""Faults as data: each kind starts and stops, and says what it did as a `FaultEvent`.

Kinds (names as `--nemesis` takes them; `partition` is short for `partition-halves`):

    partition-halves          random halves cut from each other (smaller side floor(n/2))
    partition-one             one random node cut from the rest
    partition-leader          the current leader cut from the rest (nothing if unknown)
    partition-majorities-ring every node hears a different majority
    partition-bridge          two halves joined by one node that hears both
    partition-one-way         one node hears nothing, the others still hear it
    kill                      SIGKILL targets; stop restarts them (same argv, same data)
    pause                     SIGSTOP targets; stop sends SIGCONT
    clock                     skew targets' clocks (libfaketime); stop sets offset 0, rate 1
    packet-loss               a share of packets dropped (default 20%) between a random
                              pair or around one node, one way or both (nemesis.netfaults)
    power-loss                SIGKILL targets, then drop all their disks did not make durable
                              (nemesis.lazyfs); stop restarts them on what is left

    member                    change the cluster's membership by one move: add a spare node
                              (a learner, promoted at stop), or remove a voter or the leader;
                              never below 3 voters (nemesis.membership)
    member-race               two spare nodes join as learners; the other voters are cut
                              off from the leader and them; both are promoted at once (a
                              correct cluster refuses the second while the first is
                              pending); stop heals and promotes (nemesis.member_race)

    election-crash            sim backend only: cut the leader off and kill it; when a node
                              then grants a vote, kill it within half a millisecond (its
                              vote sent, the new leader's first append not yet there) and
                              cut the candidate off; restart both, then let the candidate
                              rejoin as the next leader is elected; stop heals
                              (harness.simfaults.ElectionCrash)

`delay` (tc netem) is refused with a sentence saying why (see netfaults.delay_refusal).
Kinds of SIM_ONLY are refused, saying why, unless the caller says it simulates them.

Pause picks its targets at random among: one random node, a random minority ((n-1)//2
nodes, when that is 2 or more), or the leader (one random node when the leader is unknown).
A minority keeps the cluster able to make progress while the fault lasts. Clock picks its
targets the same way. Kill and power-loss also pick a random majority or every node, as
Jepsen's kill does: only a crash of most nodes at once shows writes acknowledged before they
were durable. Power-loss needs each node's data on the lazy filesystem
(`NemesisContext.lose_unsynced`), so `all` takes it only where the caller set that up.

Clock sets one of CLOCK_SETTINGS (offset jumps of 0.5 and 2 s either way, a clock at x0.5 or
x2) through `nemesis.clock` and checks it with a probe on each target before recording it;
it needs the nodes started under libfaketime (`NemesisContext.clock_files`), so `all` leaves
it out.

Member needs the target's membership API and spare node slots (`NemesisContext.membership`),
so `all` takes it only where the caller set that up. While it runs, `ctx.nodes` are the
current members: the other faults act on them alone.

Every start and stop runs under `ctx.lock`, so a heal never interleaves with a half-applied
fault. `start`/`stop` block (they call Remote and ProcessControl); async callers run them in
a thread (see `nemesis.schedule`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from nemesis import clock, iptables, netfaults
from nemesis import grudge as grudges
from nemesis.membership import Members, Membership, MembershipError, Move, plan_move
from nemesis.remote import ProcessControl, Remote, RemoteError

__all__ = [
    "KINDS",
    "MEMBER_KINDS",
    "SIM_ONLY",
    "TARGET_MODES",
    "ClockNemesis",
    "FaultEvent",
    "KillNemesis",
    "MemberNemesis",
    "Nemesis",
    "NemesisContext",
    "PacketLossNemesis",
    "PartitionNemesis",
    "PauseNemesis",
    "PowerLossNemesis",
    "SimOnlyNemesis",
    "StrobeNemesis",
    "TogetherNemesis",
    "parse_nemesis",
    "parse_target_modes",
    "settle_members",
    "sync_members",
    "uses_clock",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultEvent:
    """One nemesis history record. `value` is JSON-able.

    `f` is "start" or "stop"; `fault` the kind's name. `phase` is "invoke" just before the
    nemesis acts (value None) and "complete" after (value: what it did). Values: partitions
    record the grudge as {node: sorted list of nodes it drops}; their stop records
    "network-healed"; kill and pause record the sorted list of nodes they acted on.
    `error` is set when the fault could not be applied in full (an operating error).
    """

    f: Literal["start", "stop"]
    fault: str
    value: object
    error: str | None = None
    phase: Literal["invoke", "complete"] = "complete"

    def as_op(self) -> dict[str, Any]:
        """The fields of a history op: Jepsen's nemesis ops are `info` ops of process nemesis."""
        op: dict[str, Any] = {
            "type": "info",
            "process": "nemesis",
            "f": self.f,
            "value": self.value,
            "fault": self.fault,
        }
        if self.error is not None:
            op["error"] = self.error
        return op


def _unknown_leader() -> str | None:
    return None


@dataclass
class NemesisContext:
    """What faults act on.

    `remotes` maps each node name to its Remote; `procs` controls the service processes;
    `rng` is the seeded source of every random choice; `leader()` returns the node the cluster
    says leads, or None if unknown. Faults call `leader()` from a worker thread and it may
    block, so keep it bounded (a few seconds); an asyncio harness can bridge to its loop with
    `asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=...)`.
    `killed` and `paused` record the nodes faults have killed or paused and not yet healed,
    and `network_faulted` whether a partition may be in place, so `heal_all` can undo them
    even if a fault object is lost. `lock` serializes faults. `clock_files` maps each node
    started under libfaketime to its control file (see `nemesis.clock`; empty: no clock
    faults possible) and `clocked` the nodes a clock fault has skewed and not yet healed.
    `target_modes`, when not empty, are the ways faults on processes may pick their nodes
    (TARGET_MODES; `--fault-targets`). `simulated`: the nodes are a simulation driven by
    one thread, so faults act on them one after another. `lose_unsynced` maps each node
    whose data lies on the lazy filesystem to the call that drops what it did not make
    durable, answering what was lost (empty: no power-loss).
    `membership` changes the cluster's members (None: no member fault possible); `remotes`
    then holds every slot, spares too, and `members` the nodes now in the cluster, which
    `nodes` returns (None: every node of `remotes`); `all_nodes` is every slot.
    """

    remotes: dict[str, Remote]
    procs: ProcessControl
    rng: random.Random
    leader: Callable[[], str | None] = _unknown_leader
    killed: set[str] = field(default_factory=set)
    paused: set[str] = field(default_factory=set)
    network_faulted: bool = False
    clock_files: dict[str, str] = field(default_factory=dict)
    clocked: set[str] = field(default_factory=set)
    lose_unsynced: dict[str, Callable[[], dict[str, int]]] = field(default_factory=dict)
    target_modes: frozenset[str] = frozenset()
    simulated: bool = False
    membership: Membership | None = None
    members: set[str] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        for name, remote in self.remotes.items():
            if remote.node != name:
                raise ValueError(f"remote for {name!r} says it is {remote.node!r}")

    @property
    def nodes(self) -> list[str]:
        """The nodes faults act on: the cluster's current members."""
        return sorted(self.remotes if self.members is None else self.members)

    @property
    def all_nodes(self) -> list[str]:
        """Every node slot, member or not: heals reach them all."""
        return sorted(self.remotes)


class Nemesis(Protocol):
    """One fault kind. `start` applies it and returns what it did; `stop` heals it.

    `stop` is idempotent and safe when nothing is active. Both may raise RemoteError when a
    node cannot be reached; the fault then counts as possibly applied, and a later `stop` or
    `heal_all` undoes whatever part of it took effect.
    """

    name: str
    min_nodes: int

    def start(self, ctx: NemesisContext) -> FaultEvent: ...

    def stop(self, ctx: NemesisContext) -> FaultEvent: ...


def for_each_node(
    nodes: Iterable[str], action: Callable[[str], None], at_once: bool = True
) -> None:
    """Run `action` on every node at once (so a partition lands on all nodes together), or
    one after another in the order given when not `at_once` (a simulated cluster, where
    the order must not depend on threads).

    Waits for all; then raises the first failure, if any, after logging the others.
    """
    node_list = list(nodes)
    if not node_list:
        return
    if not at_once:
        for node in node_list:
            action(node)
        return
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=len(node_list), thread_name_prefix="nemesis") as pool:
        futures = [pool.submit(action, node) for node in node_list]
        for future in futures:
            exc = future.exception()
            if exc is not None:
                errors.append(exc)
    for extra in errors[1:]:
        log.warning("nemesis: %s", extra)
    if errors:
        raise errors[0]


def heal_partitions(ctx: NemesisContext) -> None:
    """Flush our iptables chain on every node (a node that left the cluster too)."""
    for_each_node(ctx.all_nodes, lambda n: iptables.heal(ctx.remotes[n]))


def apply_grudge(ctx: NemesisContext, grudge: grudges.Grudge) -> None:
    """Make every node drop exactly the sources its grudge names (others: nothing)."""
    full = grudges.complete(grudge, ctx.nodes)
    ctx.network_faulted = True

    def one(node: str) -> None:
        iptables.apply(ctx.remotes[node], [ctx.remotes[d].address for d in full[node]])

    for_each_node(ctx.nodes, one)


GrudgeMaker = Callable[[NemesisContext], grudges.Grudge | None]


@dataclass
class PartitionNemesis:
    """Cuts the network as the grudge `make_grudge` returns (None: nothing to do)."""

    name: str
    min_nodes: int
    make_grudge: GrudgeMaker

    def start(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            grudge = self.make_grudge(ctx)
            if grudge is None:
                return FaultEvent("start", self.name, None, error="leader unknown: nothing done")
            apply_grudge(ctx, grudge)
            return FaultEvent("start", self.name, grudges.to_json(grudge))

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            heal_partitions(ctx)
            ctx.network_faulted = False
            return FaultEvent("stop", self.name, "network-healed")


@dataclass
class PacketLossNemesis:
    """Drops `share` of the packets on the links of a random shape (netfaults.pick_shape):
    each receiver gets one statistic rule in our chain; stop flushes the chain."""

    share: float = netfaults.DEFAULT_LOSS_SHARE
    name: str = "packet-loss"
    min_nodes: int = 2

    def start(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            shape = netfaults.pick_shape(ctx.nodes, ctx.rng)
            drops = netfaults.loss_map(shape, ctx.nodes)
            # Set before acting: a start that fails halfway is still flushed by heal_all.
            ctx.network_faulted = True

            def one(node: str) -> None:
                senders = [ctx.remotes[s].address for s in drops[node]]
                rules = [netfaults.loss_rule(senders, self.share)] if senders else []
                iptables.set_rules(ctx.remotes[node], rules)

            for_each_node(ctx.nodes, one)
            return FaultEvent("start", self.name, netfaults.loss_value(shape, self.share, drops))

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            heal_partitions(ctx)
            ctx.network_faulted = False
            return FaultEvent("stop", self.name, "network-healed")


# How a fault on processes picks its nodes (`--fault-targets`).
TARGET_MODES = ("one", "minority", "majority", "all", "leader")


def parse_target_modes(text: str) -> frozenset[str]:
    """The modes a comma-separated `text` names (see TARGET_MODES); ValueError naming the
    unknown ones."""
    modes = frozenset(m.strip().lower() for m in text.split(",") if m.strip())
    unknown = sorted(modes - set(TARGET_MODES))
    if unknown:
        raise ValueError(
            f"unknown {', '.join(unknown)}; expected some of {', '.join(TARGET_MODES)}"
        )
    if not modes:
        raise ValueError(f"expected some of {', '.join(TARGET_MODES)}; got {text!r}")
    return modes


def pick_targets(ctx: NemesisContext, wide: bool = False) -> list[str]:
    """One random node, a random minority, or the leader; with `wide` also a random
    majority or every node (see the module docstring). `ctx.target_modes`, when set,
    chooses among those modes instead (a minority there may be a single node)."""
    nodes = ctx.nodes
    minority = (len(nodes) - 1) // 2
    if ctx.target_modes:
        modes = [m for m in TARGET_MODES if m in ctx.target_modes]
        minority = max(minority, 1)
    else:
        modes = ["one", "leader"] + (["minority"] if minority >= 2 else [])
        if wide and len(nodes) > 1:
            modes += ["majority", "all"]
    mode = ctx.rng.choice(modes)
    if mode == "minority":
        return sorted(ctx.rng.sample(nodes, minority))
    if mode == "majority":
        return sorted(ctx.rng.sample(nodes, len(nodes) // 2 + 1))
    if mode == "all":
        return list(nodes)
    if mode == "leader":
        leader = ctx.leader()
        if leader in nodes:
            return [leader]
    return [ctx.rng.choice(nodes)]


@dataclass
class _ProcessFault:
    """A fault on the nodes' processes: `_act` on the targets at start, `_undo` on every
    node in `_record(ctx)` at stop (so a lost fault object is still healed)."""

    name: str
    min_nodes: int = 1
    wide: ClassVar[bool] = False

    def _record(self, ctx: NemesisContext) -> set[str]:
        raise NotImplementedError

    def _act(self, ctx: NemesisContext, node: str) -> None:
        raise NotImplementedError

    def _undo(self, ctx: NemesisContext, node: str) -> None:
        raise NotImplementedError

    def start(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            targets = pick_targets(ctx, wide=self.wide)
            # Recorded before acting: a fault that fails halfway is still undone on heal.
            self._record(ctx).update(targets)
            for node in targets:
                self._act(ctx, node)
            return FaultEvent("start", self.name, targets)

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            record = self._record(ctx)
            done = sorted(record)
            for node in done:
                self._undo(ctx, node)
                record.discard(node)
            return FaultEvent("stop", self.name, done)


@dataclass
class KillNemesis(_ProcessFault):
    """SIGKILLs targets; stop restarts every node faults killed (ctx.killed)."""

    name: str = "kill"
    wide: ClassVar[bool] = True

    def _record(self, ctx: NemesisContext) -> set[str]:
        return ctx.killed

    def _act(self, ctx: NemesisContext, node: str) -> None:
        ctx.procs.kill(node)

    def _undo(self, ctx: NemesisContext, node: str) -> None:
        ctx.procs.restart(node)


@dataclass
class PauseNemesis(_ProcessFault):
    """SIGSTOPs targets; stop resumes every node faults paused (ctx.paused)."""

    name: str = "pause"

    def _record(self, ctx: NemesisContext) -> set[str]:
        return ctx.paused

    def _act(self, ctx: NemesisContext, node: str) -> None:
        ctx.procs.pause(node)

    def _undo(self, ctx: NemesisContext, node: str) -> None:
        ctx.procs.resume(node)


@dataclass
class PowerLossNemesis(_ProcessFault):
    """SIGKILLs targets and drops what their disks did not make durable (the kill first, so
    nothing the process does comes after the loss); stop restarts every node faults killed
    (ctx.killed), as kill's does. The start's value: {"nodes", "lost": {node: {"files",
    "pages", "dir_changes", "failed"}}}, what each node's disk dropped."""

    name: str = "power-loss"
    wide: ClassVar[bool] = True

    def start(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            if not ctx.lose_unsynced:
                return FaultEvent("start", self.name, None, error="node data not on lazyfs")
            targets = [n for n in pick_targets(ctx, wide=True) if n in ctx.lose_unsynced]
            ctx.killed.update(targets)
            for_each_node(targets, ctx.procs.kill, at_once=not ctx.simulated)
            lost: dict[str, dict[str, int]] = {}

            def lose(node: str) -> None:  # on every target at once, as the power goes
                lost[node] = ctx.lose_unsynced[node]()

            for_each_node(targets, lose, at_once=not ctx.simulated)
            lost = dict(sorted(lost.items()))
            return FaultEvent("start", self.name, {"nodes": targets, "lost": lost})

    def _record(self, ctx: NemesisContext) -> set[str]:
        return ctx.killed

    def _undo(self, ctx: NemesisContext, node: str) -> None:
        ctx.procs.restart(node)


# Clock faults: offset jumps forward and back, a slow and a fast clock.
CLOCK_SETTINGS = (
    clock.ClockSetting(offset_s=2.0),
    clock.ClockSetting(offset_s=-2.0),
    clock.ClockSetting(offset_s=0.5),
    clock.ClockSetting(offset_s=-0.5),
    clock.ClockSetting(rate=0.5),
    clock.ClockSetting(rate=2.0),
)

# The leader's clock in `clock-slow-leader`: a lease it counts lasts four times as long.
SLOW_CLOCK = clock.ClockSetting(rate=0.25)


@dataclass
class ClockNemesis:
    """Sets one random clock setting (CLOCK_SETTINGS) on the targets (`pick_targets`), each
    checked by a probe on the node before the start is recorded; stop writes the true clock
    to every node in `ctx.clocked`. The start's value: {"nodes", "offset_s", "rate",
    "readings": {node: {"offset_s", "rate"}}}, the readings being what the probes saw."""

    name: str = "clock"
    min_nodes: int = 1
    settings: tuple[clock.ClockSetting, ...] = CLOCK_SETTINGS
    # Only the leader (nothing when it is unknown), not pick_targets's choice.
    leader_only: bool = False

    def start(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            if not ctx.clock_files:
                return FaultEvent("start", self.name, None, error="nodes not under libfaketime")
            targets = [n for n in self._targets(ctx) if n in ctx.clock_files]
            setting = ctx.rng.choice(self.settings)
            ctx.clocked.update(targets)
            readings: dict[str, object] = {}
            for node in targets:
                remote, path = ctx.remotes[node], ctx.clock_files[node]
                readings[node] = clock.apply(remote, path, setting).__dict__
            value = {"nodes": targets, **setting.as_json(), "readings": readings}
            return FaultEvent("start", self.name, value)

    def _targets(self, ctx: NemesisContext) -> list[str]:
        if not self.leader_only:
            return pick_targets(ctx)
        leader = ctx.leader()
        return [leader] if leader in ctx.nodes else []

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            done = sorted(ctx.clocked)
            for node in done:
                clock.write_setting(ctx.remotes[node], ctx.clock_files[node], clock.HEALED)
                ctx.clocked.discard(node)
            return FaultEvent("stop", self.name, done)


@dataclass
class StrobeNemesis:
    """`clock-strobe`: the targets' clocks (`pick_targets`) flip between `offset_s` ahead and
    the true time every `period_s` until stop, as Jepsen's strobe does; the first flip is
    checked by a probe before the start is recorded. A thread writes the flips; stop ends
    it (bounded wait) and writes the true clock to every node in `ctx.clocked`. The start's
    value: {"nodes", "offset_s", "period_s", "readings"}."""

    name: str = "clock-strobe"
    min_nodes: int = 1
    offset_s: float = 0.5
    period_s: float = 0.2
    _halt: threading.Event = field(default_factory=threading.Event)
    _flipper: threading.Thread | None = None

    def start(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            if not ctx.clock_files:
                return FaultEvent("start", self.name, None, error="nodes not under libfaketime")
            self._end_flips()
            targets = [n for n in pick_targets(ctx) if n in ctx.clock_files]
            ctx.clocked.update(targets)
            ahead = clock.ClockSetting(offset_s=self.offset_s)
            readings: dict[str, object] = {}
            for node in targets:
                remote, path = ctx.remotes[node], ctx.clock_files[node]
                readings[node] = clock.apply(remote, path, ahead).__dict__
            self._halt = threading.Event()
            self._flipper = threading.Thread(
                target=self._flip, args=(ctx, targets), name="clock-strobe", daemon=True
            )
            self._flipper.start()
            value = {"nodes": targets, "offset_s": self.offset_s, "period_s": self.period_s}
            return FaultEvent("start", self.name, {**value, "readings": readings})

    def _flip(self, ctx: NemesisContext, targets: list[str]) -> None:
        settings = (clock.HEALED, clock.ClockSetting(offset_s=self.offset_s))
        flips = 0
        while not self._halt.wait(self.period_s):
            flips += 1
            # Not blocking: a stop holding the lock waits for this thread to end.
            if not ctx.lock.acquire(blocking=False):
                continue
            try:
                # A heal (heal_all) takes nodes out of ctx.clocked: no flips for them after.
                healed = [n for n in targets if n not in ctx.clocked]
                if len(healed) == len(targets):
                    return
                for node in targets:
                    if node not in healed:
                        self._flip_one(ctx, node, settings[flips % 2])
            finally:
                ctx.lock.release()

    def _flip_one(self, ctx: NemesisContext, node: str, setting: clock.ClockSetting) -> None:
        try:
            clock.write_setting(ctx.remotes[node], ctx.clock_files[node], setting)
        except RemoteError as exc:  # the next flip or the heal tries again
            log.warning("nemesis: clock-strobe: %s", exc)

    def _end_flips(self) -> None:
        self._halt.set()
        if self._flipper is not None:
            self._flipper.join(timeout=clock.WRITE_TIMEOUT_S * 2)
            self._flipper = None

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            self._end_flips()
            done = sorted(ctx.clocked)
            for node in done:
                clock.write_setting(ctx.remotes[node], ctx.clock_files[node], clock.HEALED)
                ctx.clocked.discard(node)
            return FaultEvent("stop", self.name, done)


@dataclass
class MemberNemesis:
    """`member`: one membership move per start (`nemesis.membership.plan_move`): add a spare
    slot (wiped, started with the member list; a learner where the target has them), or
    remove a voter or the leader (then stop it), never below MIN_VOTERS voters; a learner
    left waiting is promoted first. Stop promotes a waiting learner (`settle_members`), so
    between a stop and the next start every member is a voter.

    Each event's value: {"changes": [{"op", "node", "elapsed_ms", "fresh" (adds), "error"
    (a change that failed)}], "voters", "learners"}, the configuration read back after the
    change (or, when it cannot be read, the one last known)."""

    name: str = "member"
    min_nodes: int = 3
    # Slots that were members at some time: adding one again is a re-add.
    _used: set[str] = field(default_factory=set)

    def start(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            if ctx.membership is None:
                return FaultEvent("start", self.name, None, error="no membership changes here")
            try:
                now = ctx.membership.members()
            except MembershipError as exc:
                return FaultEvent("start", self.name, None, error=f"member list: {exc}")
            self._used.update(now.all)
            move = plan_move(
                now, ctx.membership.slots, self._used, ctx.rng, ctx.leader,
                ctx.membership.learners_supported,
            )  # fmt: skip
            if move is None:
                value = {"changes": [], **now.as_json()}
                return FaultEvent("start", self.name, value, error="no move possible")
            change = apply_move(ctx, ctx.membership, move)
            self._used.add(move.node)
            after, error = sync_members(ctx, ctx.membership)
            error = "; ".join(e for e in (change.get("error"), error) if e) or None
            return FaultEvent("start", self.name, {"changes": [change], **after}, error=error)

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            if ctx.membership is None:
                return FaultEvent("stop", self.name, None)
            value, errors = settle_members(ctx)
            return FaultEvent("stop", self.name, value, error="; ".join(errors) or None)


def change_errors(changes: list[dict[str, Any]]) -> list[str]:
    """One line per change (`apply_move`'s record) that failed: "promote n4: why"."""
    return [f"{c['op']} {c['node']}: {c['error']}" for c in changes if "error" in c]


def apply_move(ctx: NemesisContext, membership: Membership, move: Move) -> dict[str, Any]:
    """Make `move` through `membership`; the change as the member fault records it. A node
    that leaves is stopped, and no longer killed or paused for the heal to undo."""
    change: dict[str, Any] = {"op": move.op, "node": move.node}
    if move.op in ("add-learner", "add-voter"):
        change["fresh"] = move.fresh
    began = time.monotonic()
    try:
        if move.op == "promote":
            membership.promote(move.node)
        elif move.op == "remove":
            ctx.killed.discard(move.node)
            ctx.paused.discard(move.node)
            membership.remove(move.node)
            if ctx.members is not None:
                ctx.members.discard(move.node)
            membership.stop(move.node)
        else:
            membership.add(move.node, learner=move.op == "add-learner")
            if ctx.members is not None:
                ctx.members.add(move.node)
    except MembershipError as exc:
        log.warning("nemesis: member %s %s: %s", move.op, move.node, exc)
        change["error"] = str(exc)
    change["elapsed_ms"] = round((time.monotonic() - began) * 1000, 1)
    return change


def sync_members(
    ctx: NemesisContext, membership: Membership
) -> tuple[dict[str, list[str]], str | None]:
    """Read the configuration back: faults now act on its members, and every node that
    left it is stopped. Returns it as JSON, with the error if it could not be read (then the
    last known configuration)."""
    try:
        now = membership.members()
    except MembershipError as exc:
        known = sorted(ctx.members if ctx.members is not None else ctx.remotes)
        return {"voters": known, "learners": []}, f"member list: {exc}"
    before = set(ctx.members if ctx.members is not None else ctx.remotes)
    ctx.members = set(now.all)
    errors = []
    for node in sorted(before - ctx.members):
        try:
            membership.stop(node)
        except MembershipError as exc:
            errors.append(f"stopping {node}: {exc}")
    return now.as_json(), "; ".join(errors) or None


def settle_members(ctx: NemesisContext) -> tuple[dict[str, Any], list[str]]:
    """Bring the cluster to a stable configuration: promote every learner (one that cannot
    be promoted is removed; when that fails too, the others are left as they are), stop
    every node that is no longer a member. Returns what it did ({"changes", "voters",
    "learners"}) and the errors. The caller holds `ctx.lock`."""
    assert ctx.membership is not None
    membership = ctx.membership
    changes: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        now: Members | None = membership.members()
    except MembershipError as exc:
        now = None
        errors.append(f"member list: {exc}")
    for learner in now.learners if now is not None else ():
        change = apply_move(ctx, membership, Move("promote", learner))
        changes.append(change)
        if "error" in change:
            changes.append(apply_move(ctx, membership, Move("remove", learner)))
            if "error" in changes[-1]:
                # Neither change passed: a cluster that takes none would only make every
                # other learner wait out two timeouts more.
                errors.append("the cluster takes no membership change: the rest left as is")
                break
    errors += change_errors(changes)
    after, error = sync_members(ctx, membership)
    if error:
        errors.append(error)
    return {"changes": changes, **after}, errors


def _leader_grudge(ctx: NemesisContext) -> grudges.Grudge | None:
    leader = ctx.leader()
    return grudges.leader(ctx.nodes, leader) if leader in ctx.nodes else None


# Partition kinds: name -> (minimum cluster size, grudge maker). Order is the order of `all`.
_PARTITIONS: dict[str, tuple[int, GrudgeMaker]] = {
    "partition-halves": (2, lambda c: grudges.halves(c.nodes, c.rng)),
    "partition-one": (2, lambda c: grudges.one(c.nodes, c.rng)),
    "partition-leader": (2, _leader_grudge),
    "partition-majorities-ring": (3, lambda c: grudges.majorities_ring(c.nodes, c.rng)),
    "partition-bridge": (3, lambda c: grudges.bridge(c.nodes, c.rng)),
    "partition-one-way": (2, lambda c: grudges.one_way(c.nodes, c.rng)),
}


@dataclass
class SimOnlyNemesis:
    """A kind only the sim backend can run (SIM_ONLY): parse_nemesis hands it out only to a
    caller that simulates it, which puts its own in its place (harness.simfaults)."""

    name: str
    min_nodes: int

    def start(self, ctx: NemesisContext) -> FaultEvent:
        raise RuntimeError(SIM_ONLY[self.name])

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        raise RuntimeError(SIM_ONLY[self.name])


# Kinds only the sim backend can run, and why.
SIM_ONLY = {
    "election-crash": "nemesis 'election-crash' crashes a node within half a millisecond of its "
    "vote, which only the simulation can see and time: use --backend sim",
}
# Every kind name -> the smallest cluster it applies to.
KINDS: dict[str, int] = {
    **{name: least for name, (least, _) in _PARTITIONS.items()},
    KillNemesis.name: KillNemesis.min_nodes,
    PauseNemesis.name: PauseNemesis.min_nodes,
    PacketLossNemesis.name: PacketLossNemesis.min_nodes,
    PowerLossNemesis.name: PowerLossNemesis.min_nodes,
    ClockNemesis.name: ClockNemesis.min_nodes,
    "clock-slow-leader": ClockNemesis.min_nodes,
    StrobeNemesis.name: StrobeNemesis.min_nodes,
    MemberNemesis.name: MemberNemesis.min_nodes,
    "member-race": 3,
    "election-crash": 3,
}
# Kinds that need the nodes set up for them before they start: clock (under libfaketime,
# which a static binary ignores), power-loss (data on the lazy filesystem) and member (the
# target's membership API, spare node slots).
# `all` takes them only where the caller says that setup can be made (`parse_nemesis`).
CLOCK_KINDS = frozenset({ClockNemesis.name, "clock-slow-leader", StrobeNemesis.name})
# The kinds that change the cluster's members (nemesis.membership; nemesis.member_race).
MEMBER_KINDS = frozenset({MemberNemesis.name, "member-race"})
NEEDS_SETUP = CLOCK_KINDS | {PowerLossNemesis.name} | MEMBER_KINDS
ALIASES = {"partition": "partition-halves"}


def parse_nemesis(
    spec: str,
    nodes: int,
    packet_loss: float = netfaults.DEFAULT_LOSS_SHARE,
    can_set_up: Collection[str] = (),
) -> list[Nemesis]:
    """The fault kinds a `--nemesis` value names, for a cluster of `nodes` nodes.

    `spec` is a comma-separated list of kind names (see the module docstring), `all` (every
    kind that applies to this cluster size) or `none` (no faults: an empty list). Duplicates
    are dropped. Raises ValueError naming the problem for an unknown name, an empty spec,
    `none` mixed with faults, or a kind the cluster is too small for (partitions need 2
    nodes; bridge and majorities-ring need 3). `packet_loss` is the share of packets
    `packet-loss` drops (0 < share <= 1). `delay` raises ValueError saying why it cannot run
    (it probes the kernel: netfaults.delay_refusal). `all` takes a kind of NEEDS_SETUP only
    if `can_set_up` names it (the run can set the nodes up for it); a kind of SIM_ONLY is
    refused unless `can_set_up` names it (the run simulates it).
    """
    netfaults.check_share(packet_loss)
    if nodes < 1:
        raise ValueError(f"a cluster needs at least 1 node, got {nodes}")
    names = [part.strip().lower() for part in spec.split(",")]
    if not spec.strip() or any(not n for n in names):
        raise ValueError(f"empty nemesis name in {spec!r}; try one of: {_known()}")
    if "none" in names:
        if len(set(names)) > 1:
            raise ValueError("nemesis 'none' cannot be combined with other faults")
        return []
    chosen: list[str] = []
    for name in names:
        if "+" in name:
            parts = (_check_kind(part.strip(), nodes, can_set_up) for part in name.split("+"))
            chosen.append("+".join(parts))
            continue
        if name == "all":
            chosen.extend(
                k
                for k, least in KINDS.items()
                if nodes >= least and (k not in NEEDS_SETUP | set(SIM_ONLY) or k in can_set_up)
            )
            continue
        chosen.append(_check_kind(name, nodes, can_set_up))
    return [_make(kind, packet_loss) for kind in dict.fromkeys(chosen)]


def _check_kind(name: str, nodes: int, can_set_up: Collection[str]) -> str:
    """The kind `name` names, if a cluster of `nodes` nodes can take it; else ValueError."""
    kind = ALIASES.get(name, name)
    if kind == "delay":
        raise ValueError(netfaults.delay_refusal())
    if kind in SIM_ONLY and kind not in can_set_up:
        raise ValueError(SIM_ONLY[kind])
    if kind not in KINDS:
        raise ValueError(f"unknown nemesis {name!r}; known: {_known()}")
    least = KINDS[kind]
    if nodes < least:
        raise ValueError(f"nemesis {name!r} needs at least {least} nodes; the cluster has {nodes}")
    return kind


def _known() -> str:
    return ", ".join([*KINDS, *ALIASES, "all", "none"])


@dataclass
class TogetherNemesis:
    """Several kinds at once (`--nemesis a+b`): starts `parts` in order, stops them in
    reverse. The start's value maps each part's name to its start value; errors are joined."""

    name: str
    parts: tuple[Nemesis, ...]
    min_nodes: int = field(init=False)

    def __post_init__(self) -> None:
        self.min_nodes = max(p.min_nodes for p in self.parts)

    def start(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            return self._each(ctx, "start", list(self.parts))

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            return self._each(ctx, "stop", list(reversed(self.parts)))

    def _each(
        self, ctx: NemesisContext, f: Literal["start", "stop"], parts: list[Nemesis]
    ) -> FaultEvent:
        events = [p.start(ctx) if f == "start" else p.stop(ctx) for p in parts]
        errors = [f"{p.name}: {e.error}" for p, e in zip(parts, events, strict=True) if e.error]
        value = {p.name: e.value for p, e in zip(parts, events, strict=True)}
        return FaultEvent(f, self.name, value, error="; ".join(errors) or None)


def uses_clock(nemeses: Iterable[Nemesis]) -> bool:
    """Whether any of `nemeses` is (or includes) a clock fault: the nodes then need starting
    under libfaketime."""
    return bool(kinds_of(nemeses) & CLOCK_KINDS)


def kinds_of(nemeses: Iterable[Nemesis]) -> set[str]:
    """The kind names of `nemeses`, those acting together (`a+b`) each on its own."""
    return {
        kind
        for n in nemeses
        for kind in (kinds_of(n.parts) if isinstance(n, TogetherNemesis) else {n.name})
    }


def _make(kind: str, packet_loss: float) -> Nemesis:
    if "+" in kind:
        parts = tuple(_make(part, packet_loss) for part in kind.split("+"))
        return TogetherNemesis(kind, parts)
    if kind == PacketLossNemesis.name:
        return PacketLossNemesis(share=packet_loss)
    if kind == KillNemesis.name:
        return KillNemesis()
    if kind == PauseNemesis.name:
        return PauseNemesis()
    if kind == PowerLossNemesis.name:
        return PowerLossNemesis()
    if kind == ClockNemesis.name:
        return ClockNemesis()
    if kind == "clock-slow-leader":
        return ClockNemesis(kind, settings=(SLOW_CLOCK,), leader_only=True)
    if kind == StrobeNemesis.name:
        return StrobeNemesis()
    if kind == MemberNemesis.name:
        return MemberNemesis()
    if kind == "member-race":
        from nemesis.member_race import MemberRaceNemesis  # it builds on this module

        return MemberRaceNemesis()
    if kind in SIM_ONLY:
        return SimOnlyNemesis(kind, KINDS[kind])
    least, make = _PARTITIONS[kind]
    return PartitionNemesis(kind, least, make)
