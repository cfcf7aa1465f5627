"""The nemesis of `--backend sim`: the same fault kinds, choices and records as on real
nodes, acting on a simulated cluster (raftkv.simkv.KVCluster).

Kill, pause and power-loss are the real kinds (nemesis.faults) over `SimProcs`, this
module's ProcessControl. Partitions and packet-loss are the real kinds too: they choose
and record exactly as on real nodes, on Remotes that take their iptables commands and do
nothing (nemesis.fakes.FakeRemote); `SimNetNemesis` gives each recorded grudge or loss
to the simulated network as the start or stop is made (`apply_to_cluster`). Clock faults
change the rate of a node's clock (`SimClockNemesis`); the simulation has no wall clock to
jump, so `clock` draws among the rate settings only, and `clock-strobe` (offset flips) is
refused. `election-crash`, which only the simulation can time, is `ElectionCrash`.

`member` is the real kind's moves (nemesis.membership.plan_move) through `SimMembership`,
this module's Membership: each change a request to the leader, waited for in virtual time
while the clients go on, as the real fault's thread waits while the workers go on. A slot
added again joins under a new Raft id (n4-2, ...), which its add records as "id"; each
change's "elapsed_ms" is the virtual time it took (`SimMemberNemesis`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nemesis.fakes import FakeRemote
from nemesis.faults import (
    CLOCK_KINDS,
    SIM_ONLY,
    SLOW_CLOCK,
    ClockNemesis,
    FaultEvent,
    MemberNemesis,
    Nemesis,
    NemesisContext,
    PacketLossNemesis,
    PartitionNemesis,
    PowerLossNemesis,
    SimOnlyNemesis,
    StrobeNemesis,
    TogetherNemesis,
    apply_move,
    pick_targets,
    settle_members,
)
from nemesis.member_race import MemberRaceNemesis
from nemesis.membership import Members, MembershipError, Move, MoveOp
from raftkv.core import Membership
from raftkv.types import Message, MsgType

__all__ = [
    "SIM_REFUSED",
    "SIM_SETUP_KINDS",
    "ElectionCrash",
    "SimClockNemesis",
    "SimMemberNemesis",
    "SimMembership",
    "SimNetNemesis",
    "SimProcs",
    "apply_to_cluster",
    "heal_everything",
    "replay",
    "replay_members",
    "sim_context",
    "sim_nemeses",
]

# Kinds the simulation cannot model, and why.
SIM_REFUSED = {
    StrobeNemesis.name: "clock-strobe flips clock offsets, and the simulation has no wall "
    "clock to jump (its clock faults change rates)",
}
_SIM_RATES = (0.5, 2.0)
# Kinds that need the nodes set up, which the simulation sets up itself, and those only it
# can run: `all` takes them.
SIM_SETUP_KINDS = (CLOCK_KINDS | {PowerLossNemesis.name} | set(SIM_ONLY)) - set(SIM_REFUSED)


class FaultableCluster(Protocol):
    ids: tuple[str, ...]
    now_ns: int
    on_vote: Callable[[str, str, int], None] | None

    on_send: Callable[[Message], None] | None

    def call_at(self, time_ns: int, fn: Callable[[], None]) -> None: ...
    def kill(self, node: str) -> None: ...
    def restart(self, node: str) -> None: ...
    def pause(self, node: str) -> None: ...
    def resume(self, node: str) -> None: ...
    def power_loss(self, node: str) -> Any: ...
    def set_grudge(self, grudge: dict[str, set[str]]) -> None: ...
    def set_loss(self, drops: dict[str, set[str]], share: float) -> None: ...
    def set_clock_rate(self, node: str, rate: float) -> None: ...
    def leader(self) -> tuple[str | None, int | None]: ...
    def slot_of(self, node_id: str) -> str: ...


class MemberCluster(FaultableCluster, Protocol):
    """What `SimMembership` needs besides the faults (raftkv.simkv.KVCluster)."""

    first_voters: tuple[str, ...]

    def configuration(self) -> Membership | None: ...
    def id_of(self, node: str) -> str: ...
    def next_id(self, node: str) -> str: ...
    def join(self, node: str, node_id: str) -> None: ...
    def leave(self, node: str) -> None: ...


@dataclass
class SimProcs:
    """ProcessControl over the simulated nodes."""

    cluster: FaultableCluster

    def kill(self, node: str) -> None:
        self.cluster.kill(node)

    def restart(self, node: str) -> None:
        self.cluster.restart(node)

    def pause(self, node: str) -> None:
        self.cluster.pause(node)

    def resume(self, node: str) -> None:
        self.cluster.resume(node)


def sim_context(
    cluster: FaultableCluster, seed: int, target_modes: frozenset[str]
) -> NemesisContext:
    """The nemesis context of a simulated run: seeded as on real nodes (seed + 1)."""
    remotes = {n: FakeRemote(n, f"10.255.0.{i}") for i, n in enumerate(cluster.ids, 1)}

    def lose(node: str) -> Callable[[], dict[str, int]]:
        def drop() -> dict[str, int]:
            lost = cluster.power_loss(node)
            return lost if isinstance(lost, dict) else {}

        return drop

    return NemesisContext(
        remotes=dict(remotes),
        procs=SimProcs(cluster),
        rng=random.Random(seed + 1),
        leader=lambda: cluster.leader()[0],
        lose_unsynced={n: lose(n) for n in cluster.ids},
        target_modes=target_modes,
        simulated=True,
    )


@dataclass
class SimNetNemesis:
    """A partition or packet-loss kind that also acts on the simulated network as each of
    its starts and stops is made, as iptables does on real nodes: within faults acting
    together, the network is whole again before the next part stops."""

    kind: Nemesis
    cluster: FaultableCluster
    name: str = field(init=False)
    min_nodes: int = field(init=False)

    def __post_init__(self) -> None:
        self.name, self.min_nodes = self.kind.name, self.kind.min_nodes

    def start(self, ctx: NemesisContext) -> FaultEvent:
        event = self.kind.start(ctx)
        apply_to_cluster(self.kind, event, self.cluster)
        return event

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        event = self.kind.stop(ctx)
        apply_to_cluster(self.kind, event, self.cluster)
        return event


@dataclass
class SimClockNemesis:
    """A clock fault as a clock rate: `clock` sets x0.5 or x2 on `pick_targets`'s nodes,
    `clock-slow-leader` x0.25 on the leader; stop gives every skewed node rate 1. Values
    as on real nodes ({"nodes", "offset_s", "rate", "readings"}), the readings being the
    rates set."""

    cluster: FaultableCluster
    name: str = "clock"
    min_nodes: int = 1
    leader_only: bool = False

    def start(self, ctx: NemesisContext) -> FaultEvent:
        if self.leader_only:
            leader = ctx.leader()
            targets = [leader] if leader in ctx.nodes else []
            rate = SLOW_CLOCK.rate
        else:
            targets = pick_targets(ctx)
            rate = ctx.rng.choice(_SIM_RATES)
        ctx.clocked.update(targets)
        for node in targets:
            self.cluster.set_clock_rate(node, rate)
        readings = {n: {"offset_s": 0.0, "rate": rate} for n in targets}
        value = {"nodes": targets, "offset_s": 0.0, "rate": rate, "readings": readings}
        return FaultEvent("start", self.name, value)

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        done = sorted(ctx.clocked)
        for node in done:
            self.cluster.set_clock_rate(node, 1.0)
        ctx.clocked.clear()
        return FaultEvent("stop", self.name, done)


NS = 1_000_000_000
# How long a change is tried while the leader says it may pass later, how long one request
# waits for its answer, the pause between tries, and how long `members` waits for a
# leader: as etcd's membership API is driven (harness.targets.etcd_members).
CHANGE_TIMEOUT_NS = 12 * NS
ANSWER_TIMEOUT_NS = 5 * NS
RETRY_PAUSE_NS = 100_000_000
LEADER_WAIT_NS = 5 * NS
# Refusals that say nothing happened and that the same change may pass a moment later.
_RETRIED = ("not_leader", "refused", "dropped")

# A request to a node, and virtual time let pass until its answer (None: none within).
Ask = Callable[[str, dict[str, Any], int], dict[str, Any] | None]
# Requests sent at the same instant, and virtual time let pass until every answer (None for
# each without one within).
AskAll = Callable[[list[tuple[str, dict[str, Any]]], int], list[dict[str, Any] | None]]


class SimMembership:
    """`nemesis.membership.Membership` on a simulated cluster, in virtual time.

    `ask(node, request, within_ns)` sends a request and lets virtual time pass until its
    answer or `within_ns`; `wait(ns)` lets time pass: the clients go on meanwhile, and a
    call returns at the virtual time its change ended.
    - `members()`: the leader's configuration (the latest in its log) by slot; waits up
      to LEADER_WAIT_NS for a leader, else MembershipError.
    - `add(node, learner)`: the slot's next Raft id (the slot's name at first, n4-2, ...
      after) added as a learner through the leader, then its server started with an
      empty disk (`join`); as a voter: promoted next.
    - `promote`, `remove`: the change through the leader. `stop`: the server leaves.
    A change is retried while the leader says it may pass later (pending, not committed
    in its term, learner behind), no node leads, or the node asked no longer leads, up to
    CHANGE_TIMEOUT_NS; a refusal for good raises MembershipError (nothing happened), and
    so does a request left without an answer (it may have happened).
    `voters` are the voters as last read, in slot order, for `client_node`."""

    learners_supported = True

    def __init__(
        self, cluster: MemberCluster, ask_all: AskAll, wait: Callable[[int], None]
    ) -> None:
        self.cluster = cluster
        self.slots = cluster.ids
        self.voters = cluster.first_voters
        self._ask_all = ask_all
        self._wait = wait
        # Per change made, in order: the virtual time it took, and an add's Raft id.
        self._records: list[dict[str, Any]] = []
        # The Raft id last proposed for each slot: an add without an answer may be in the
        # configuration, its server never started.
        self._ids: dict[str, str] = {}

    def members(self) -> Members:
        cluster = self.cluster
        end = cluster.now_ns + LEADER_WAIT_NS
        conf = cluster.configuration()
        while conf is None and cluster.now_ns < end:
            self._wait(RETRY_PAUSE_NS)
            conf = cluster.configuration()
        if conf is None:
            raise MembershipError(f"no leader within {LEADER_WAIT_NS // NS} s")
        self.voters = tuple(n for n in self.slots if n in conf.voters) or self.voters
        return Members(tuple(sorted(conf.voters)), tuple(sorted(conf.learners)))

    def add(self, node: str, learner: bool) -> None:
        began, node_id = self.cluster.now_ns, self.cluster.next_id(node)
        self._ids[node] = node_id
        try:
            self._change("add-learner", node_id)
            self.cluster.join(node, node_id)
            if not learner:
                self._change("promote", node_id)
        finally:
            self._record(began, node_id)

    def promote(self, node: str) -> None:
        began = self.cluster.now_ns
        try:
            self._change("promote", self._id(node))
        finally:
            self._record(began)

    def promote_together(self, nodes: Sequence[str], within_s: float) -> dict[str, str | None]:
        """Every promotion sent to the leader at the same virtual instant; each one the
        leader says may pass later is sent again, until `within_s` has passed."""
        began = self.cluster.now_ns
        ids = {self._id(n): n for n in nodes}
        verdicts = self._send("promote", list(ids), began + int(within_s * NS), None)
        for _ in nodes:
            self._record(began)
        return {ids[i]: why for i, why in verdicts.items()}

    def remove(self, node: str) -> None:
        began = self.cluster.now_ns
        try:
            self._change("remove", self._id(node))
        finally:
            self._record(began)
        self.voters = tuple(n for n in self.voters if n != node) or self.voters

    def stop(self, node: str) -> None:
        self.cluster.leave(node)

    def client_node(self, slot: int) -> str:
        """The node the client of worker `slot` uses now: the voters in turn, as on real
        nodes (harness.members)."""
        return self.voters[slot % len(self.voters)]

    def _id(self, node: str) -> str:
        return self._ids.get(node) or self.cluster.id_of(node)

    def _change(self, op: str, node_id: str) -> None:
        end = self.cluster.now_ns + CHANGE_TIMEOUT_NS
        why = self._send(op, [node_id], end, ANSWER_TIMEOUT_NS)[node_id]
        if why is not None:
            raise MembershipError(f"{op} {node_id}: {why}")

    def _send(
        self, op: str, node_ids: list[str], end_ns: int, answer_ns: int | None
    ) -> dict[str, str | None]:
        """`op` for each of `node_ids` sent to the leader at one virtual instant (each
        answer waited for `answer_ns`, or until `end_ns` when None), and each the leader
        says may pass later sent again until `end_ns`: per id, None if done, else why not."""
        cluster = self.cluster
        verdicts: dict[str, str | None] = {i: "no leader" for i in node_ids}
        waiting = list(node_ids)
        while waiting:
            leader = cluster.leader()[0]
            if leader is not None:
                within = answer_ns if answer_ns is not None else max(1, end_ns - cluster.now_ns)
                got = self._ask_all([(leader, self._request(op, i)) for i in waiting], within)
                for node_id, answer in zip(list(waiting), got, strict=True):
                    verdicts[node_id], retry = _verdict(answer)
                    if not retry:
                        waiting.remove(node_id)
            if not waiting or cluster.now_ns >= end_ns:
                break
            self._wait(RETRY_PAUSE_NS)
        return verdicts

    @staticmethod
    def _request(op: str, node_id: str) -> dict[str, Any]:
        return {"op": "member", "change": op, "node": node_id}

    def _record(self, began_ns: int, node_id: str | None = None) -> None:
        record: dict[str, Any] = {"elapsed_ms": round((self.cluster.now_ns - began_ns) / 1e6, 1)}
        if node_id is not None:
            record["id"] = node_id
        self._records.append(record)

    def timed(self, value: Any) -> None:
        """Give the changes of a member record's `value` (as MemberNemesis and
        settle_members make it, in the order they were made) the virtual time each took,
        in place of the wall clock's, and each add the Raft id it proposed."""
        records, self._records = self._records, []
        changes = value.get("changes") if isinstance(value, dict) else None
        for change, record in zip(changes or (), records, strict=False):
            change.update(record)


def _verdict(answer: dict[str, Any] | None) -> tuple[str | None, bool]:
    """A change's answer as (None if done, else why not; whether to send it again)."""
    if answer is None or answer.get("ok") is None:
        why = "no answer" if answer is None else answer.get("error")
        return f"{why}; it may be done", False
    if answer["ok"]:
        return None, False
    error = str(answer.get("error"))
    why = f"{error}: {answer.get('message')}"
    return why, bool(answer.get("retryable")) or error in _RETRIED


@dataclass
class SimMemberNemesis:
    """`member` (or `member-race`, as `kind`) on a simulated cluster: the real kind acting
    through the context's `SimMembership`, its records timed in virtual time
    (`SimMembership.timed`); member-race's cut is given to the simulated network."""

    membership: SimMembership
    name: str = MemberNemesis.name
    min_nodes: int = MemberNemesis.min_nodes
    kind: MemberNemesis | MemberRaceNemesis = field(default_factory=MemberNemesis)

    def start(self, ctx: NemesisContext) -> FaultEvent:
        event = self.kind.start(ctx)
        self.membership.timed(event.value)
        return event

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        event = self.kind.stop(ctx)
        self.membership.timed(event.value)
        return event


# election-crash's timing. The leader is cut off for a moment before it is killed, so that
# its log ends in entries no other node has. A voter dies within half a millisecond of its
# vote leaving (the new leader's first append is a network delay away). The killed nodes
# stay down for a few heartbeats. The first candidate rejoins a few network delays after
# the next vote, or, if no vote comes, after long enough for a restarted node to time out
# and campaign.
_LEADER_CUT_NS = (5_000_000, 50_000_000)
_VOTE_CRASH_NS = (0, 500_000)
_DOWN_NS = (20_000_000, 220_000_000)
_SWAP_NS = (5_000_000, 30_000_000)
_ALONE_NS = 2_500_000_000


@dataclass
class ElectionCrash:
    """`election-crash`: crashes in the middle of elections, timed as only a simulation can.

    start cuts the leader L off, kills it 5-50 ms later, and waits for a vote. When a node
    V grants a vote to candidate C, V is killed within half a millisecond (its vote left;
    C's first append as leader cannot have reached it yet) and C is cut off from every node
    (but the votes on their way to it arrive). V and L restart 20-220 ms later. When the
    next vote goes to another candidate D, C hears its voters again and, at random, either
    D stays connected to them (C rejoins 5-30 ms after that vote) or D is cut off from them
    in C's place (as D's first entry of its own term leaves after entries of older terms:
    those may be acknowledged, its own one is lost); if no vote comes within 2.5 s of the
    restart, C rejoins its voters then.
    stop heals everything. These are the moments where the Raft paper's hard cases live: a
    voter that restarts right after voting meets a candidate of the same term (what it
    remembers of its vote decides whether the term gets two leaders), and a leader elected
    after a crash meets the one elected before it, whose entry of a newer term is on no
    majority (the paper's Figure 8).

    The records: the start ({"leader": L, "cut": grudge}); then, `emit`ted as starts of
    this kind, the kill ({"nodes": [L]}), the crash ({"nodes": [V], "voter", "candidate",
    "term", "cut": grudge}), the restart ({"restarted": nodes}) and the rejoin ({"cut":
    grudge, "elected": D or None}); then the stop ({"restarted": nodes, "healed": true}).
    """

    cluster: FaultableCluster
    emit: Callable[[FaultEvent], None]
    name: str = "election-crash"
    min_nodes: int = 3

    def __post_init__(self) -> None:
        self._down: set[str] = set()
        self._votes: dict[tuple[str, int], set[str]] = {}
        self._candidate: str | None = None  # C, once its voter crashed
        self._rng = random.Random(0)
        self._gen = 0  # one per start and stop: what an earlier start left pending lapses
        self._step = 0  # one per step: a rejoin already done lapses
        self._older_sent = False  # the new leader sent entries of older terms

    def start(self, ctx: NemesisContext) -> FaultEvent:
        self._rng, self._votes, self._candidate = ctx.rng, {}, None
        self._gen += 1
        leader = ctx.leader()
        self._down = set()
        self.cluster.on_vote = self._voted
        if leader not in ctx.nodes:
            return FaultEvent("start", self.name, {"leader": None})
        cut = self._cut({leader: set()})
        self._later(_draw(self._rng, _LEADER_CUT_NS), lambda: self._kill_leader(leader))
        return FaultEvent("start", self.name, {"leader": leader, "cut": cut})

    def _kill_leader(self, leader: str) -> None:
        self.cluster.kill(leader)
        self._down.add(leader)
        self.emit(FaultEvent("start", self.name, {"nodes": [leader]}))

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        self.cluster.on_vote = self.cluster.on_send = None
        self._gen += 1
        restarted = sorted(self._down)
        for node in restarted:
            self.cluster.restart(node)
        self._down.clear()
        self.cluster.set_grudge({})
        return FaultEvent("stop", self.name, {"restarted": restarted, "healed": True})

    def _voted(self, voter: str, candidate: str, term: int) -> None:
        voters = self._votes.setdefault((candidate, term), set())
        voters.add(voter)
        if len(voters) > 1:
            return  # later votes for the same candidate only count
        if self._candidate is None and len(self._votes) == 1:
            crash = lambda: self._crash(voter, candidate, term)  # noqa: E731
            self._later(_draw(self._rng, _VOTE_CRASH_NS), crash)
        elif self._candidate not in (None, candidate) and not self._down:
            self.cluster.on_vote = None
            if self._rng.random() < 0.5:  # the new leader is cut off as its own entry leaves
                self._older_sent = False
                self.cluster.on_send = lambda msg: self._watch(msg, candidate, term)
            else:  # the new leader stays, and the first candidate rejoins a moment later
                rejoin = lambda: self._rejoin(candidate, replace=False)  # noqa: E731
                self._later(_draw(self._rng, _SWAP_NS), rejoin)

    def _watch(self, msg: Message, leader: str, term: int) -> None:
        """Cut `leader` off as it sends an entry of its own term after entries of older
        terms (its first append, a probe, carries its own entry too and is refused)."""
        if msg.type is not MsgType.APPEND or not msg.entries:
            return
        if self.cluster.slot_of(msg.src) != leader:
            return
        if any(entry.term == term for entry in msg.entries):
            if self._older_sent:
                self.cluster.on_send = None
                self._later(0, lambda: self._rejoin(leader, replace=True))
        else:
            self._older_sent = True

    def _later(self, after_ns: int, step: Callable[[], None]) -> None:
        gen = self._gen

        def act() -> None:
            if gen == self._gen:  # else stopped meanwhile
                step()

        self.cluster.call_at(self.cluster.now_ns + after_ns, act)

    def _crash(self, voter: str, candidate: str, term: int) -> None:
        self.cluster.kill(voter)
        self._down.add(voter)
        self._candidate = candidate
        cut = self._cut({candidate: set()})
        value = {"nodes": [voter], "voter": voter, "candidate": candidate, "term": term,
                 "cut": cut}  # fmt: skip
        self.emit(FaultEvent("start", self.name, value))
        self._later(_draw(self._rng, _DOWN_NS), self._restart)

    def _restart(self) -> None:
        restarted = sorted(self._down)
        for node in restarted:
            self.cluster.restart(node)
        self._down.clear()
        self.emit(FaultEvent("start", self.name, {"restarted": restarted}))
        step = self._step
        rejoin = lambda: self._rejoin(None, replace=False)  # noqa: E731
        self._later(_ALONE_NS, lambda: rejoin() if step == self._step else None)

    def _rejoin(self, elected: str | None, replace: bool) -> None:
        self._step += 1
        self.cluster.on_vote = self.cluster.on_send = None
        assert self._candidate is not None
        keep = {self._candidate: self._voters_of(self._candidate)}
        if elected is not None and replace:
            keep[elected] = set()  # elected is cut off in the candidate's place
        cut = self._cut(keep)
        self.emit(FaultEvent("start", self.name, {"cut": cut, "elected": elected}))

    def _voters_of(self, candidate: str) -> set[str]:
        return {v for (c, _), vs in self._votes.items() if c == candidate for v in vs}

    def _cut(self, keep: dict[str, set[str]]) -> dict[str, list[str]]:
        """Cut each node of `keep` from every other node but those it maps to, except that
        votes already on their way to it still arrive; the grudge set."""
        cut: dict[str, set[str]] = {}
        for node, heard in keep.items():
            voters = self._voters_of(node)
            for other in self.cluster.ids:
                if other == node or other in heard:
                    continue
                cut.setdefault(other, set()).add(node)
                if other not in voters:
                    cut.setdefault(node, set()).add(other)
        self.cluster.set_grudge(cut)
        return {n: sorted(senders) for n, senders in sorted(cut.items())}


def _draw(rng: random.Random, span: tuple[int, int]) -> int:
    low, high = span
    return low + int(rng.random() * (high - low))


def sim_nemeses(
    nemeses: list[Nemesis],
    cluster: FaultableCluster,
    emit: Callable[[FaultEvent], None],
    membership: SimMembership | None = None,
) -> list[Nemesis]:
    """`nemeses` (parse_nemesis's) with the clock kinds made clock rates, the kinds only
    the simulation runs made real (`emit` records what they do between start and stop),
    and `member` acting through `membership`; ValueError naming a kind the simulation
    cannot model."""
    return [_sim_kind(n, cluster, emit, membership) for n in nemeses]


def _sim_kind(
    nemesis: Nemesis,
    cluster: FaultableCluster,
    emit: Callable[[FaultEvent], None],
    membership: SimMembership | None,
) -> Nemesis:
    if nemesis.name in SIM_REFUSED:
        raise ValueError(f"--backend sim: {SIM_REFUSED[nemesis.name]}")
    if isinstance(nemesis, TogetherNemesis):
        parts = tuple(_sim_kind(p, cluster, emit, membership) for p in nemesis.parts)
        return TogetherNemesis(nemesis.name, parts)
    if isinstance(nemesis, (PartitionNemesis, PacketLossNemesis)):
        return SimNetNemesis(nemesis, cluster)
    if isinstance(nemesis, (MemberNemesis, MemberRaceNemesis)):
        if membership is None:
            raise ValueError(
                f"--backend sim: the {nemesis.name} nemesis needs the cluster's spare slots"
            )
        if isinstance(nemesis, MemberRaceNemesis):
            race = MemberRaceNemesis(cut=SimNetNemesis(nemesis.cut, cluster))
            return SimMemberNemesis(membership, race.name, race.min_nodes, race)
        return SimMemberNemesis(membership)
    if isinstance(nemesis, ClockNemesis):
        return SimClockNemesis(cluster, nemesis.name, leader_only=nemesis.leader_only)
    if isinstance(nemesis, SimOnlyNemesis):
        return ElectionCrash(cluster, emit)
    return nemesis


def apply_to_cluster(nemesis: Nemesis, event: FaultEvent, cluster: FaultableCluster) -> None:
    """Give the simulated network what a partition or packet-loss event records (the
    others act through SimProcs and SimClockNemesis themselves); `SimNetNemesis` calls it."""
    if isinstance(nemesis, TogetherNemesis):
        value = event.value if isinstance(event.value, dict) else {}
        for part in nemesis.parts:
            apply_to_cluster(part, FaultEvent(event.f, part.name, value.get(part.name)), cluster)
        return
    if isinstance(nemesis, PartitionNemesis):
        grudge = event.value if event.f == "start" and isinstance(event.value, dict) else {}
        cluster.set_grudge(_senders(grudge))
    elif isinstance(nemesis, PacketLossNemesis):
        value = event.value if event.f == "start" and isinstance(event.value, dict) else {}
        drops = _senders(value.get("drops", {}))
        cluster.set_loss(drops, float(value.get("share", 0.0)))


def _senders(recorded: dict[str, Any]) -> dict[str, set[str]]:
    """A grudge or a loss map as a history records it (node -> senders, as lists)."""
    return {str(n): set(map(str, senders)) for n, senders in recorded.items()}


def heal_cluster(cluster: FaultableCluster) -> None:
    """The simulated network whole again and every clock at rate 1 (heal_all did the rest)."""
    cluster.set_grudge({})
    cluster.set_loss({}, 0.0)
    for node in cluster.ids:
        cluster.set_clock_rate(node, 1.0)


def replay(
    cluster: FaultableCluster,
    fault: str,
    f: str,
    value: Any,
    members: Callable[[str, Any], None] | None = None,
) -> None:
    """Act on the cluster as a recorded fault event (`fault`, `f`, `value`, as the history
    holds it) says: a shrunk run replays a schedule rather than drawing one. A member
    event goes to `members(f, value)` (`replay_members`); without it, ValueError."""
    if "+" in fault:
        parts = value if isinstance(value, dict) else {}
        for part in fault.split("+"):
            replay(cluster, part, f, parts.get(part), members)
        return
    if fault == MemberRaceNemesis.name:
        raise ValueError(
            "a member-race event does not replay: its promotions race each other, which a "
            "schedule of changes made one after another cannot repeat"
        )
    if fault == MemberNemesis.name:
        if members is None:
            raise ValueError("a member event replays only in a run with the member nemesis")
        members(f, value)
        return
    if fault == ElectionCrash.name:
        _replay_election_crash(cluster, f, value if isinstance(value, dict) else {})
        return
    if fault.startswith("partition-"):
        grudge = value if f == "start" and isinstance(value, dict) else {}
        cluster.set_grudge(_senders(grudge))
    elif fault == PacketLossNemesis.name:
        loss = value if f == "start" and isinstance(value, dict) else {}
        drops = _senders(loss.get("drops", {}))
        cluster.set_loss(drops, float(loss.get("share", 0.0)))
    else:
        nodes = value.get("nodes", []) if isinstance(value, dict) else value or []
        for node in map(str, nodes):
            _replay_on_node(cluster, fault, f, node, value)


def replay_members(ctx: NemesisContext, f: str, value: Any) -> None:
    """Make the changes a member start records again, in order (each may now be refused:
    the replay goes on), then act on the configuration they left, as the kind does; a stop
    settles the members (every learner promoted, every node that left stopped)."""
    membership = ctx.membership
    assert isinstance(membership, SimMembership), "a member replay needs SimMembership"
    if f == "stop":
        settle_members(ctx)
    else:
        for change in value.get("changes") or () if isinstance(value, dict) else ():
            op = str(change.get("op"))
            if op in _MOVES:
                move = Move(_MOVES[op], str(change.get("node")), bool(change.get("fresh")))
                apply_move(ctx, membership, move)
        try:
            now = set(membership.members().all)
        except MembershipError:
            now = set(ctx.nodes)
        for node in sorted(set(ctx.nodes) - now):
            membership.stop(node)
        ctx.members = now
    membership.timed(None)  # the replay records what the run recorded, not its own times


_MOVES: dict[str, MoveOp] = {
    "add-learner": "add-learner", "add-voter": "add-voter", "promote": "promote", "remove": "remove"
}  # fmt: skip


def _replay_election_crash(cluster: FaultableCluster, f: str, value: dict[str, Any]) -> None:
    for node in map(str, value.get("restarted", [])):
        cluster.restart(node)
    if f == "stop":
        cluster.set_grudge({})
        return
    for node in map(str, value.get("nodes", [])):
        cluster.kill(node)
    if isinstance(value.get("cut"), dict):
        cluster.set_grudge(_senders(value["cut"]))


def _replay_on_node(cluster: FaultableCluster, fault: str, f: str, node: str, value: Any) -> None:
    if f == "stop":
        if fault in ("kill", PowerLossNemesis.name):
            cluster.restart(node)
        elif fault == "pause":
            cluster.resume(node)
        elif fault in CLOCK_KINDS:
            cluster.set_clock_rate(node, 1.0)
    elif fault == "kill":
        cluster.kill(node)
    elif fault == "pause":
        cluster.pause(node)
    elif fault == PowerLossNemesis.name:
        cluster.kill(node)
        cluster.power_loss(node)
    elif fault in CLOCK_KINDS:
        cluster.set_clock_rate(node, float(value.get("rate", 1.0)))


def heal_everything(cluster: FaultableCluster) -> None:
    """Every node up and running, the network whole, every clock at rate 1."""
    for node in cluster.ids:
        cluster.restart(node)
        cluster.resume(node)
    heal_cluster(cluster)
