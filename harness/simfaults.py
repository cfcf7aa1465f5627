"""The nemesis of `--backend sim`: the same fault kinds, choices and records as on real
nodes, acting on a simulated cluster (raftkv.simkv.KVCluster).

Kill, pause and power-loss are the real kinds (nemesis.faults) over `SimProcs`, this
module's ProcessControl. Partitions and packet-loss are the real kinds too: they choose
and record exactly as on real nodes, on Remotes that take their iptables commands and do
nothing (nemesis.fakes.FakeRemote); `apply_to_cluster` then gives the recorded grudge or
losses to the simulated network. Clock faults change the rate of a node's clock
(`SimClockNemesis`); the simulation has no wall clock to jump, so `clock` draws among the
rate settings only, and `clock-strobe` (offset flips) is refused.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nemesis.fakes import FakeRemote
from nemesis.faults import (
    CLOCK_KINDS,
    SLOW_CLOCK,
    ClockNemesis,
    FaultEvent,
    Nemesis,
    NemesisContext,
    PacketLossNemesis,
    PartitionNemesis,
    PowerLossNemesis,
    StrobeNemesis,
    TogetherNemesis,
    pick_targets,
)

__all__ = [
    "SIM_REFUSED",
    "SIM_SETUP_KINDS",
    "SimClockNemesis",
    "SimProcs",
    "apply_to_cluster",
    "heal_everything",
    "replay",
    "sim_context",
    "sim_nemeses",
]

# Kinds the simulation cannot model, and why.
SIM_REFUSED = {
    StrobeNemesis.name: "clock-strobe flips clock offsets, and the simulation has no wall "
    "clock to jump (its clock faults change rates)",
}
_SIM_RATES = (0.5, 2.0)
# Kinds that need the nodes set up, which the simulation sets up itself: `all` takes them.
SIM_SETUP_KINDS = (CLOCK_KINDS | {PowerLossNemesis.name}) - set(SIM_REFUSED)


class FaultableCluster(Protocol):
    ids: tuple[str, ...]

    def kill(self, node: str) -> None: ...
    def restart(self, node: str) -> None: ...
    def pause(self, node: str) -> None: ...
    def resume(self, node: str) -> None: ...
    def power_loss(self, node: str) -> Any: ...
    def set_grudge(self, grudge: dict[str, set[str]]) -> None: ...
    def set_loss(self, drops: dict[str, set[str]], share: float) -> None: ...
    def set_clock_rate(self, node: str, rate: float) -> None: ...
    def leader(self) -> tuple[str | None, int | None]: ...


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


def sim_nemeses(nemeses: list[Nemesis], cluster: FaultableCluster) -> list[Nemesis]:
    """`nemeses` (parse_nemesis's) with the clock kinds made clock rates; ValueError naming
    a kind the simulation cannot model."""
    return [_sim_kind(n, cluster) for n in nemeses]


def _sim_kind(nemesis: Nemesis, cluster: FaultableCluster) -> Nemesis:
    if nemesis.name in SIM_REFUSED:
        raise ValueError(f"--backend sim: {SIM_REFUSED[nemesis.name]}")
    if isinstance(nemesis, TogetherNemesis):
        return TogetherNemesis(nemesis.name, tuple(_sim_kind(p, cluster) for p in nemesis.parts))
    if isinstance(nemesis, ClockNemesis):
        return SimClockNemesis(cluster, nemesis.name, leader_only=nemesis.leader_only)
    return nemesis


def apply_to_cluster(nemesis: Nemesis, event: FaultEvent, cluster: FaultableCluster) -> None:
    """Give the simulated network what a partition or packet-loss event records (the
    others act through SimProcs and SimClockNemesis themselves)."""
    if isinstance(nemesis, TogetherNemesis):
        value = event.value if isinstance(event.value, dict) else {}
        for part in nemesis.parts:
            apply_to_cluster(part, FaultEvent(event.f, part.name, value.get(part.name)), cluster)
        return
    if isinstance(nemesis, PartitionNemesis):
        grudge = event.value if event.f == "start" and isinstance(event.value, dict) else {}
        cluster.set_grudge({n: set(map(str, dropped)) for n, dropped in grudge.items()})
    elif isinstance(nemesis, PacketLossNemesis):
        value = event.value if event.f == "start" and isinstance(event.value, dict) else {}
        drops = {n: set(map(str, senders)) for n, senders in value.get("drops", {}).items()}
        cluster.set_loss(drops, float(value.get("share", 0.0)))


def heal_cluster(cluster: FaultableCluster) -> None:
    """The simulated network whole again and every clock at rate 1 (heal_all did the rest)."""
    cluster.set_grudge({})
    cluster.set_loss({}, 0.0)
    for node in cluster.ids:
        cluster.set_clock_rate(node, 1.0)


def replay(cluster: FaultableCluster, fault: str, f: str, value: Any) -> None:
    """Act on the cluster as a recorded fault event (`fault`, `f`, `value`, as the history
    holds it) says: a shrunk run replays a schedule rather than drawing one."""
    if "+" in fault:
        parts = value if isinstance(value, dict) else {}
        for part in fault.split("+"):
            replay(cluster, part, f, parts.get(part))
        return
    if fault.startswith("partition-"):
        grudge = value if f == "start" and isinstance(value, dict) else {}
        cluster.set_grudge({n: set(map(str, dropped)) for n, dropped in grudge.items()})
    elif fault == PacketLossNemesis.name:
        loss = value if f == "start" and isinstance(value, dict) else {}
        drops = {n: set(map(str, senders)) for n, senders in loss.get("drops", {}).items()}
        cluster.set_loss(drops, float(loss.get("share", 0.0)))
    else:
        nodes = value.get("nodes", []) if isinstance(value, dict) else value or []
        for node in map(str, nodes):
            _replay_on_node(cluster, fault, f, node, value)


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
