"""raftkv in virtual time (`raftkv.simkv`): how much wall time a simulated run costs.

Simulates `--seconds` of a cluster under a cycle of faults (a partition cutting off the
leader, a kill, a pause, a slow clock on the leader, lossy links, a power loss; each for
`--fault-s`, then healed for as long) with `--clients` clients issuing requests back to back, as the
harness's workers do: each bound to a node, following not_leader hints, giving up on a
request after `--op-timeout-ms` and taking a new identity then. Prints the wall time,
simulated ops per wall second, the outcome counts and, with `--profile`, the hottest
functions.

    .venv/bin/python bench/simkv_bench.py [--seconds 60] [--clients 6] [--seed 1] [--bug B]
        [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from raftkv.simkv import KVCluster, KVSimOptions

S = 1_000_000_000
FAULTS = ("partition", "kill", "pause", "clock", "loss", "power-loss")


@dataclass
class _Client:
    name: str
    node: str
    rid: int = 0
    request: dict[str, Any] | None = None
    deadline_ns: int = 0
    seq: int = 0
    incarnation: int = 0


def _new_request(client: _Client, rng: random.Random, value: int) -> dict[str, Any]:
    key = f"k{rng.randrange(5)}"
    roll = rng.random()
    if roll < 0.5:
        return {"op": "get", "key": key}
    client.seq += 1
    who = f"{client.name}.{client.incarnation}"
    if roll < 0.8:
        return {"op": "put", "key": key, "value": value, "client": who, "seq": client.seq}
    expected = rng.randrange(max(1, value))
    return {"op": "cas", "key": key, "expected": expected, "value": value,
            "client": who, "seq": client.seq}  # fmt: skip


class _Nemesis:
    """Starts a fault every `period_ns`, heals it `fault_ns` later."""

    def __init__(self, cluster: KVCluster, rng: random.Random, fault_ns: int) -> None:
        self.cluster, self.rng, self.fault_ns = cluster, rng, fault_ns
        self.next_ns = fault_ns
        self.active: tuple[str, str] | None = None
        self.count = 0

    def step(self, now_ns: int) -> None:
        if now_ns < self.next_ns:
            return
        c = self.cluster
        self.next_ns = now_ns + self.fault_ns
        if self.active is not None:
            kind, node = self.active
            c.set_grudge({})
            c.set_loss({}, 0.0)
            c.restart(node)
            c.resume(node)
            c.set_clock_rate(node, 1.0)
            self.active = None
            return
        kind = FAULTS[self.count % len(FAULTS)]
        self.count += 1
        node = c.leader()[0] or self.rng.choice(c.ids)
        others = {n for n in c.ids if n != node}
        if kind == "partition":
            c.set_grudge({node: others, **{n: {node} for n in others}})
        elif kind == "kill":
            c.kill(node)
        elif kind == "power-loss":
            c.power_loss(node)
        elif kind == "pause":
            c.pause(node)
        elif kind == "clock":
            c.set_clock_rate(node, 0.25)
            c.set_grudge({node: others, **{n: {node} for n in others}})
        else:
            c.set_loss({n: set(c.ids) - {n} for n in c.ids}, 0.2)
        self.active = (kind, node)


def run(
    seconds: float,
    clients: int,
    seed: int,
    op_timeout_ns: int,
    fault_ns: int,
    bugs: frozenset[str] = frozenset(),
) -> Counter[str]:
    cluster = KVCluster(seed, KVSimOptions(bugs=bugs))
    rng = random.Random(seed)
    nemesis = _Nemesis(cluster, rng, fault_ns)
    end_ns = int(seconds * S)
    outcomes: Counter[str] = Counter()
    workers = [_Client(f"c{i}", cluster.ids[i % len(cluster.ids)]) for i in range(clients)]
    by_rid: dict[int, _Client] = {}
    value = 0

    def send(client: _Client, fresh: bool) -> None:
        nonlocal value
        if fresh:
            value += 1
            client.request = _new_request(client, rng, value)
            client.deadline_ns = cluster.now_ns + op_timeout_ns
        assert client.request is not None
        client.rid = cluster.submit(client.node, client.request)
        by_rid[client.rid] = client

    for client in workers:
        send(client, fresh=True)
    first_deadline_ns = min(w.deadline_ns for w in workers)
    while cluster.now_ns < end_ns:
        due = min(end_ns, nemesis.next_ns, first_deadline_ns)
        for rid, resp in cluster.advance_to_reply(max(due, cluster.now_ns)):
            owner = by_rid.pop(rid, None)
            if owner is None or owner.rid != rid:
                continue
            client = owner
            if resp.get("error") == "not_leader" and resp.get("leader"):
                client.node = resp["leader"]
                send(client, fresh=False)
                continue
            outcomes[{True: "ok", False: "fail", None: "info"}[resp.get("ok")]] += 1
            if resp.get("ok") is None:
                client.incarnation += 1
            if resp.get("error") in ("refused", "not_leader"):
                client.node = rng.choice(cluster.ids)
            send(client, fresh=True)
        if cluster.now_ns >= first_deadline_ns:
            for client in workers:
                if cluster.now_ns >= client.deadline_ns:
                    outcomes["timeout"] += 1
                    client.incarnation += 1
                    client.node = rng.choice(cluster.ids)
                    send(client, fresh=True)
            # A lower bound is enough: a deadline only moves later when its op ends.
            first_deadline_ns = min(w.deadline_ns for w in workers)
        nemesis.step(cluster.now_ns)
    outcomes["node_failures"] = len(cluster.failures)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--op-timeout-ms", type=int, default=1000)
    parser.add_argument("--fault-s", type=float, default=3.0)
    parser.add_argument("--bug", action="append", default=[], help="a bug of raftkv.core.BUGS")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    outcomes = run(args.seconds, args.clients, args.seed, args.op_timeout_ms * 1_000_000,
                   int(args.fault_s * S), frozenset(args.bug))  # fmt: skip
    if profiler:
        profiler.disable()
    wall_s = time.perf_counter() - start
    ops = outcomes["ok"] + outcomes["fail"] + outcomes["info"] + outcomes["timeout"]
    rates = f"{ops / args.seconds:.0f} per simulated s, {ops / wall_s:.0f} per wall s"
    print(f"{args.seconds:.0f} s simulated, {args.clients} clients: {wall_s:.2f} s wall, "
          f"{ops} ops ({rates})")  # fmt: skip
    print(dict(sorted(outcomes.items())))
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
