"""`harness test --backend sim`: a whole run in virtual time, on raftkv's core in a
simulated cluster (raftkv.simkv.KVCluster), with the same workload generator, client
decisions (harness.simclient), fault kinds (harness.simfaults), history, checker, results
and report as a run on real nodes.

One thread, one clock: the driver runs the cluster to its next reply or to the next
timer (a client's or the nemesis's), whichever is first, so a run takes as long as its
events take to compute, and the same options and seed give the same history, byte for byte
(history times are virtual nanoseconds since the clients started).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from checker.history import paused_gc
from harness.history import HistoryWriter
from harness.leaders import LEADERS_FILE
from harness.options import RunOptions
from harness.report import write_run_reports
from harness.results import build_results
from harness.simclient import SimClient
from harness.simfaults import (
    SIM_SETUP_KINDS,
    SimMembership,
    heal_cluster,
    heal_everything,
    replay,
    replay_members,
    sim_context,
    sim_nemeses,
)
from harness.store import new_run_dir, point_latest, write_json
from harness.targets.base import Completion
from harness.targets.raftkv import ATTEMPT_TIMEOUT_S
from harness.workload import OPS, Generator, Invocation, WorkloadOptions
from nemesis.faults import MEMBER_KINDS, FaultEvent, Nemesis, kinds_of, parse_nemesis
from nemesis.schedule import heal_all
from raftkv.settings import RaftSettings
from raftkv.simkv import KVCluster, KVSimOptions

__all__ = ["SimRun", "run_sim"]

log = logging.getLogger("harness")

NS = 1_000_000_000
LEADER_TIMEOUT_NS = 30 * NS
# After every fault healed, a correct cluster serves every key again within this.
RECOVERY_NS = 10 * NS
LEADER_SAMPLE_NS = NS // 2


class SimRun:
    """One simulated run: build it, then `run()`; `history` holds what happened. With a
    `plan` (fault events as a history records them: time, f, fault, value) the nemesis
    replays it instead of drawing faults (harness.shrink)."""

    def __init__(
        self, opts: RunOptions, run_dir: Path, plan: list[dict[str, Any]] | None = None
    ) -> None:
        self.plan = plan
        self.opts = opts
        self.run_dir = run_dir
        parsed = parse_nemesis(opts.nemesis, opts.nodes, opts.packet_loss, SIM_SETUP_KINDS)
        # The member fault's spare slots, as the runner provisions them (runner.spare_slots).
        member = bool(kinds_of(parsed) & MEMBER_KINDS)
        self.cluster = KVCluster(
            opts.seed,
            KVSimOptions(
                nodes=opts.nodes,
                max_nodes=opts.slot_count if member else None,
                read_mode=opts.read_mode or "readindex",
                bugs=frozenset(opts.bugs),
                raft=RaftSettings.parse(opts.raft_options),
            ),
        )
        self.membership: SimMembership | None = None
        if member:
            self.membership = SimMembership(self.cluster, self.ask_all, self._let_pass)
        self.nemeses = sim_nemeses(parsed, self.cluster, self._emit, self.membership)
        self.ctx = sim_context(self.cluster, opts.seed, frozenset(opts.fault_targets or ()))
        if self.membership is not None:
            self.ctx.membership = self.membership
            self.ctx.members = set(self.cluster.first_voters)
        self._t0_ns = 0
        self.history = HistoryWriter(run_dir / "history.jsonl", clock=self._now)
        # [time, order, fn]; fn None: cancelled
        self._timers: list[list[Any]] = []
        self._order = itertools.count()
        self._requests: dict[int, SimClient] = {}
        # Requests of `ask` -> their answer (None: none yet).
        self._asked: dict[int, dict[str, Any] | None] = {}
        self._slots: dict[SimClient, int] = {}
        self._stopping = False
        self._processes: dict[SimClient, int] = {}
        self._leaders: list[str] = []
        self.unread: list[str] = []  # keys the final reads never read (see _final_reads)
        recovery_s = opts.recovery_timeout_s
        self.recovery_ns = RECOVERY_NS if recovery_s is None else int(recovery_s * NS)
        self._active: list[Nemesis] = []  # the fault started and not yet stopped

    def _now(self) -> int:
        return self.cluster.now_ns - self._t0_ns

    def at(self, when_ns: int, fn: Callable[[], None]) -> Callable[[], None]:
        """Call `fn` at `when_ns`; returns what cancels the call."""
        timer = [when_ns, next(self._order), fn]
        heapq.heappush(self._timers, timer)
        return partial(timer.__setitem__, 2, None)

    # -- the clock -------------------------------------------------------------------------

    def step_until(self, end_ns: int, done: Callable[[], bool] | None = None) -> None:
        """Advance to `end_ns`, or until `done()`: the cluster runs to its next reply or
        the next timer, whichever comes first, and both are handled at that time."""
        timers, cluster, requests = self._timers, self.cluster, self._requests
        while done is None or not done():
            if done is None:
                # A cancelled timer would only stop the cluster for a check nobody makes.
                while timers and timers[0][2] is None:
                    heapq.heappop(timers)
            until = min(end_ns, timers[0][0]) if timers else end_ns
            for rid, reply in cluster.advance_to_reply(max(until, cluster.now_ns)):
                client = requests.get(rid)
                if client is not None:
                    client.on_reply(rid, reply)
                elif rid in self._asked:
                    self._asked[rid] = reply
            while timers and timers[0][0] <= cluster.now_ns:
                fn = heapq.heappop(timers)[2]
                if fn is not None:
                    fn()
            if cluster.now_ns >= end_ns:
                return

    def ask_all(
        self, requests: list[tuple[str, dict[str, Any]]], within_ns: int
    ) -> list[dict[str, Any] | None]:
        """Send every (node, request) at this instant and run until all are answered, or
        for `within_ns` (None for each unanswered): a blocking call in virtual time, the
        clients going on meanwhile."""
        asked = self._asked
        rids = [self.cluster.submit(node, request) for node, request in requests]
        for rid in rids:
            asked[rid] = None
        self.step_until(self.cluster.now_ns + within_ns,
                        lambda: all(asked[rid] is not None for rid in rids))  # fmt: skip
        return [asked.pop(rid) for rid in rids]

    def _let_pass(self, span_ns: int) -> None:
        self.step_until(self.cluster.now_ns + span_ns)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> None:
        opts = self.opts
        limit = self.cluster.now_ns + LEADER_TIMEOUT_NS
        self.step_until(limit, lambda: self.cluster.leader()[0] is not None)
        if self.cluster.leader()[0] is None:
            raise TimeoutError("no leader within 30 s of simulated time")
        self._t0_ns = self.cluster.now_ns
        end = self._t0_ns + int(opts.time_s * NS)
        gen = Generator(
            WorkloadOptions(opts.workload, opts.keys, ops=opts.ops or OPS),
            random.Random(opts.seed),
        )
        clients = self._start_clients(gen)
        if self.plan is None:
            self._schedule_nemesis(end)
        else:
            self._schedule_plan(self.plan)
        self._sample_leaders(end)
        self.step_until(end)
        self._stopping = True
        # Ops in flight finish (each within its op timeout), as on real nodes.
        self.step_until(end + int(2 * opts.op_timeout_s * NS) + NS, lambda: all(
            c.op is None for c in clients))  # fmt: skip
        self._heal_all()
        self._final_reads()
        self.history.close()

    def _start_clients(self, gen: Generator) -> list[SimClient]:
        opts, ids = self.opts, self.cluster.first_voters
        clients = []
        for slot in range(opts.concurrency):
            client = SimClient(
                self.cluster,
                ids[slot % len(ids)],
                f"sim-{slot}",
                read_mode=opts.read_mode,
                op_timeout_ns=int(opts.op_timeout_s * NS),
                attempt_timeout_ns=int(min(opts.op_timeout_s / 4, ATTEMPT_TIMEOUT_S) * NS),
                schedule=self.at,
                done=lambda c, op, done: self._completed(c, op, done, gen),
                requests=self._requests,
            )
            self._processes[client] = slot
            self._slots[client] = slot
            clients.append(client)
            self._invoke(client, gen.next())
        return clients

    def _invoke(self, client: SimClient, op: Invocation) -> None:
        if self.membership is not None and client in self._slots:
            # Clients follow the voters, moving between two ops (harness.members).
            client.home = self.membership.client_node(self._slots[client])
        self.history.record_client("invoke", self._processes[client], op.f, op.key, op.value)
        client.begin(op)

    def _completed(
        self, client: SimClient, op: Invocation, done: Completion, gen: Generator | None
    ) -> None:
        process = self._processes[client]
        # An empty error is left out, as None is.
        error = done.error or None
        self.history.record_client(done.type, process, op.f, op.key, done.value, error)
        if done.type == "info":  # Jepsen's rule: the process is gone, a new one goes on
            self._processes[client] = process + self.opts.concurrency
        if gen is not None and not self._stopping:
            self._invoke(client, gen.next())

    def _schedule_nemesis(self, end_ns: int) -> None:
        if not self.nemeses:
            return
        interval = int(self.opts.nemesis_interval_s * NS)
        active = self._active

        def act() -> None:
            if self.cluster.now_ns >= end_ns:
                return
            if not active:
                active.append(self.ctx.rng.choice(self.nemeses))
                self._act(active[0], "start")
            else:
                self._act(active.pop(), "stop")
            self.at(self.cluster.now_ns + interval, act)

        self.at(self.cluster.now_ns + interval, act)

    def _schedule_plan(self, plan: list[dict[str, Any]]) -> None:
        for event in plan:

            def act(event: dict[str, Any] = event) -> None:
                f: Literal["start", "stop"] = "start" if event["f"] == "start" else "stop"
                self._emit(FaultEvent(f, event["fault"], None, phase="invoke"))
                members = partial(replay_members, self.ctx) if self.membership else None
                replay(self.cluster, event["fault"], f, event.get("value"), members)
                self._emit(FaultEvent(f, event["fault"], event.get("value")))

            self.at(self._t0_ns + int(event["time"]), act)

    def _act(self, nemesis: Nemesis, f: str) -> None:
        self._emit(FaultEvent("start" if f == "start" else "stop", nemesis.name, None,
                              phase="invoke"))  # fmt: skip
        event = nemesis.start(self.ctx) if f == "start" else nemesis.stop(self.ctx)
        self._emit(event)

    def _emit(self, event: FaultEvent) -> None:
        op = event.as_op()
        if event.phase == "invoke":
            op["type"] = "invoke"
        self.history.record(op.pop("type"), op.pop("process"), op.pop("f"), **op)

    def _heal_all(self) -> None:
        if self.membership is not None:
            # Settling the members needs the network whole, as heal_all makes it on nodes.
            heal_cluster(self.cluster)
        for event in heal_all(self.ctx, list(self._active)):
            if self.membership is not None and isinstance(event.value, dict):
                self.membership.timed(event.value.get("members"))  # the heal's settling
            self._emit(event)
        if self.plan is not None:  # replayed faults act on the cluster only
            heal_everything(self.cluster)
        heal_cluster(self.cluster)

    def _sample_leaders(self, end_ns: int) -> None:
        def sample() -> None:
            leader, term = self.cluster.leader()
            line = {"time": self._now(), "leader": leader, "term": term}
            self._leaders.append(json.dumps(line))
            if self.cluster.now_ns < end_ns:
                self.at(self.cluster.now_ns + LEADER_SAMPLE_NS, sample)

        sample()

    def _final_reads(self) -> None:
        """Healed: read every key once more from the leader, each retried until it is read
        or the recovery window (RECOVERY_NS unless --recovery-timeout) has passed since the
        heal. A correct cluster serves again well within that; `unread` keeps the keys that
        were never read (a cluster that did not recover)."""
        deadline = self.cluster.now_ns + self.recovery_ns
        self.step_until(deadline, lambda: self.cluster.leader()[0] is not None)
        keys = Generator(WorkloadOptions(self.opts.workload, self.opts.keys), random.Random()).keys
        leader = self.cluster.leader()[0]
        if leader is None:
            log.error("no leader within %g s after healing: final reads skipped",
                      self.recovery_ns / NS)  # fmt: skip
            self.unread = [str(k) for k in keys]
            return
        outcomes: list[str] = []

        def done(client: SimClient, op: Invocation, completion: Completion) -> None:
            outcomes.append(completion.type)
            self._completed(client, op, completion, None)

        reader = SimClient(
            self.cluster,
            leader,
            "sim-final",
            read_mode=self.opts.read_mode,
            op_timeout_ns=int(self.opts.op_timeout_s * NS),
            attempt_timeout_ns=int(min(self.opts.op_timeout_s / 4, ATTEMPT_TIMEOUT_S) * NS),
            schedule=self.at,
            done=done,
            requests=self._requests,
        )
        self._processes[reader] = 10 * self.opts.concurrency * 1000
        for key in keys:
            while True:
                self._invoke(reader, Invocation("read", key, None))
                self.step_until(self.cluster.now_ns + 2 * int(self.opts.op_timeout_s * NS) + NS,
                                lambda: reader.op is None)  # fmt: skip
                self._processes[reader] += 1
                if outcomes[-1:] == ["ok"] or self.cluster.now_ns >= deadline:
                    break
            if outcomes[-1:] != ["ok"]:
                self.unread.append(str(key))

    def write_leaders(self) -> None:
        (self.run_dir / LEADERS_FILE).write_text("".join(f"{line}\n" for line in self._leaders))


def run_sim(
    opts: RunOptions, run_dir: Path | None = None, plan: list[dict[str, Any]] | None = None
) -> tuple[Any, Path, dict[str, Any]]:
    """Run `opts` (backend sim, validated) to its verdict: (valid, run dir, results); in
    `run_dir` if given (else a new one in the store), replaying `plan` if given."""
    if run_dir is None:
        run_dir = new_run_dir(opts.store, opts.test_name)
        point_latest(opts.store, run_dir)
    # A run makes hardly any cyclic garbage, and the collector's passes over its ever
    # larger history cost a tenth of the time from the run to the report.
    with paused_gc():
        sim = SimRun(opts, run_dir, plan)
        try:
            sim.run()
        finally:
            sim.history.close()
            sim.write_leaders()
        crashes = [{"time": f.time_ns - sim._t0_ns, "node": f.node, "what": f.what}
                   for f in sim.cluster.failures]  # fmt: skip
        recovery = {"window_s": sim.recovery_ns / NS, "unread": sim.unread}
        results = build_results(opts, sim.history.ops, run_dir, sim.nemeses, crashes, recovery)
        write_json(run_dir / "results.json", results)
        write_run_reports(run_dir, results, sim.history.ops)
    return results["valid"], run_dir, results
