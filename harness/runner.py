"""One `harness test` run, start to finish.

Cluster up on a backend, concurrent clients and the nemesis for `time_s`,
heal, final reads, check, results. The history reaches disk as it happens.
Whatever happens (an error, Ctrl-C, SIGTERM) every fault is healed and the
backend torn down, unless `leave_running` asks to keep the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import random
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from checker import Verdict
from harness.backends import Backend, NetnsBackend
from harness.backends.owner import current_owner, owner_alive, read_owner, write_owner
from harness.clocks import prepare_clocks
from harness.disks import Disks, bind_disks, mount_disks
from harness.history import HistoryWriter
from harness.leaders import LEADERS_FILE, sample_leaders
from harness.members import ClusterMembers
from harness.node_watch import look_again, watch_nodes
from harness.options import RunOptions, setup_kinds
from harness.progress import ProgressLine
from harness.report import write_run_reports
from harness.results import build_results
from harness.store import new_run_dir, point_latest, write_json
from harness.targets import TARGETS, ClusterSpec, Target
from harness.targets.base import (
    ChangesMembers,
    ChecksNodes,
    Completion,
    DetectsOps,
    PreparesHost,
    PreparesNodes,
    TargetSetupError,
    WaitsReady,
)
from harness.workload import OPS, Generator, Invocation, WorkloadOptions
from nemesis import clock
from nemesis.faults import (
    MEMBER_KINDS,
    FaultEvent,
    Nemesis,
    NemesisContext,
    kinds_of,
    parse_nemesis,
)
from nemesis.schedule import heal_all, run_schedule

__all__ = ["RunOutcome", "make_data_dir", "remove_leftover_data_dirs", "run_test", "spare_slots"]

log = logging.getLogger("harness")

LEADER_TIMEOUT_S = 30.0
# How long after the heal the cluster has to serve the final reads, unless
# --recovery-timeout says (harness.simrun has its own, in simulated time).
RECOVERY_S = 30.0
STATUS_TIMEOUT_S = 5.0
# Node data of backends without a filesystem of their own: `<temp dir>/harness-<run id>-*/`,
# with its owner (`backends.owner`) in `.owner`.
DATA_DIR_OWNER = ".owner"
_DATA_DIR_RE = re.compile(r"^harness-[0-9a-f]{4}-")


@dataclass
class RunOutcome:
    valid: Verdict
    run_dir: Path
    results: dict[str, Any]


def make_backend(opts: RunOptions) -> Backend:
    """The run's backend. It draws a random run id and, while that id's names are taken
    (a leftover, another run), draws again at setup."""
    if opts.backend == "docker":
        from harness.backends.docker import DockerBackend  # the Docker SDK only when used

        return DockerBackend(base_image=opts.base_image, user_image=opts.image)
    if opts.backend == "netns":
        return NetnsBackend()
    if opts.backend == "ssh":
        from harness.backends.ssh import SshBackend  # paramiko only when used

        if opts.ssh is None:
            raise ValueError("the ssh backend needs RunOptions.ssh")
        return SshBackend(opts.ssh)
    raise ValueError(f"unknown backend {opts.backend!r}")


def spare_slots(opts: RunOptions, nemeses: list[Nemesis]) -> list[str]:
    """The node slots provisioned beside the first `opts.nodes`, for nodes that join: up to
    `opts.slot_count` when a member fault runs, else none."""
    if not kinds_of(nemeses) & MEMBER_KINDS:
        return []
    return [f"n{i}" for i in range(opts.nodes + 1, opts.slot_count + 1)]


def make_data_dir(run_id: str, root: Path | None = None) -> str:
    """A new directory for run `run_id`'s node data in the temp dir (or `root`), its owner
    recorded in it before it gets its name, so `remove_leftover_data_dirs` spares it."""
    staging = Path(tempfile.mkdtemp(prefix=f".harness-{run_id}-", dir=root))
    write_owner(staging / DATA_DIR_OWNER, current_owner())
    path = staging.with_name(staging.name.removeprefix("."))
    os.rename(staging, path)  # mkdtemp's random part makes the name unique
    return str(path)


def remove_leftover_data_dirs(root: Path | None = None) -> list[str]:
    """Remove the node data directories (`harness-<run id>-*` in the temp dir, or `root`)
    of runs whose harness is gone, or unknown (made before owners were recorded); returns
    their paths. Those of runs still going are spared."""
    removed = []
    for path in sorted((root or Path(tempfile.gettempdir())).glob("harness-*")):
        if not _DATA_DIR_RE.match(path.name) or path.is_symlink() or not path.is_dir():
            continue
        if owner_alive(read_owner(path / DATA_DIR_OWNER)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


async def run_test(opts: RunOptions) -> RunOutcome:
    """Run one test; the caller validated `opts` (see harness.options.validate)."""
    if opts.backend == "sim":
        from harness.simrun import run_sim  # raftkv's simulation only when used

        valid, run_dir, results = run_sim(opts)
        return RunOutcome(valid, run_dir, results)
    target: Target = TARGETS[opts.target]()
    nemeses = parse_nemesis(
        opts.nemesis, opts.nodes, opts.packet_loss, can_set_up=setup_kinds(opts)
    )
    # A target may need something on this host first (etcd: its binary); before the run
    # makes anything, so a BackendUnavailable here leaves nothing behind.
    if isinstance(target, PreparesHost):
        await asyncio.to_thread(target.prepare, opts.backend)
    run_dir = new_run_dir(opts.store, opts.test_name)
    point_latest(opts.store, run_dir)
    handler = _log_to(run_dir / "harness.log")
    backend = make_backend(opts)
    # Backends whose nodes have a filesystem of their own say where data goes.
    data_root: str | None = getattr(backend, "data_root", None)
    data_dir: str | None = None  # the temp dir made for the others
    nodes = [f"n{i}" for i in range(1, opts.nodes + 1)]
    spares = spare_slots(opts, nemeses)
    slots = nodes + spares
    history = HistoryWriter(run_dir / "history.jsonl")
    ctx: NemesisContext | None = None
    disks: Disks | None = None
    try:
        log.info("run %s: %s", run_dir, asdict(opts))
        # Disks bound into the hosts (docker) are mounted before setup makes the hosts.
        metadata = opts.power_loss_metadata
        disks = await asyncio.to_thread(
            bind_disks, target, nemeses, backend, nodes, run_dir, metadata=metadata
        )
        try:
            await asyncio.to_thread(backend.setup, slots)
        except BaseException:
            # The id names whatever a failed setup may have left: say it (cleanup finds it).
            log.info("%s hosts not ready (id %s)", opts.backend, getattr(backend, "run_id", "-"))
            raise
        # Not from the seed (two runs of one seed may share the machine): the backend's.
        run_id = getattr(backend, "run_id", None) or secrets.token_hex(2)
        log.info("%s hosts ready (id %s)", opts.backend, run_id)
        if data_root is None:
            data_root = data_dir = make_data_dir(run_id)
        cluster = ClusterSpec(
            nodes=tuple(nodes),
            spares=tuple(spares),
            addresses={n: backend.remote(n).address for n in slots},
            data_root=data_root,
            python=getattr(backend, "python", sys.executable),
            read_mode=opts.read_mode,
            bugs=opts.bugs,
            raft_options=opts.raft_options,
            seed=opts.seed,
            op_timeout_s=opts.op_timeout_s,
            extra=dict(opts.extra),
            workload=opts.workload,
        )
        if isinstance(target, ChecksNodes):
            remotes = {n: backend.remote(n) for n in nodes}
            await asyncio.to_thread(target.check_nodes, cluster, remotes)
        if isinstance(target, PreparesNodes):
            await asyncio.to_thread(target.prepare_nodes, cluster, backend)
        clock_files = await asyncio.to_thread(prepare_clocks, backend, nemeses, cluster, target)
        if disks is None:
            disks = await asyncio.to_thread(
                mount_disks, target, nemeses, cluster, backend, run_id, run_dir, metadata=metadata
            )
        for node in nodes:
            (run_dir / "nodes" / node).mkdir(parents=True, exist_ok=True)
            log_path = run_dir / "nodes" / node / f"{target.name}.log"
            argv = target.node_argv(node, cluster)
            if node in clock_files:
                argv = clock.preload_argv(argv, clock_files[node])
            backend.start_process(node, argv, str(log_path))
        if isinstance(target, WaitsReady):
            try:
                await target.wait_ready(cluster)
            except TargetSetupError as exc:  # the nodes never answered
                raise TargetSetupError(f"{exc}; their output: {run_dir}/nodes/") from None
        leader = await wait_for_leader(target, cluster, LEADER_TIMEOUT_S)
        log.info("cluster up; leader %s", leader)
        opts = await _restrict_ops(opts, target, cluster)
        ctx = _nemesis_context(backend, target, cluster, opts.seed, asyncio.get_running_loop())
        ctx.clock_files = clock_files
        ctx.target_modes = frozenset(opts.fault_targets or ())
        if spares and isinstance(target, ChangesMembers):
            control = target.membership(cluster)
            loop = asyncio.get_running_loop()
            ctx.membership = ClusterMembers(control, target, cluster, backend, run_dir, loop)
            ctx.members = set(nodes)
        if disks is not None:
            ctx.lose_unsynced = {n: functools.partial(disks.lose, n) for n in nodes}
        crashes: list[dict[str, Any]] = []
        keys = await _drive(opts, target, cluster, ctx, nemeses, history, crashes)
        recovery = await _final_reads(opts, target, cluster, history, keys)
        await look_again(ctx, history.now_ns, crashes)
        history.close()
        results = build_results(opts, history.ops, run_dir, nemeses, crashes, recovery)
        write_json(run_dir / "results.json", results)
        write_run_reports(run_dir, results, history.ops)
        return RunOutcome(results["valid"], run_dir, results)
    finally:
        history.close()
        await _teardown(opts, backend, ctx, slots, run_dir, data_dir, disks)
        logging.getLogger().removeHandler(handler)
        handler.close()


async def _teardown(
    opts: RunOptions,
    backend: Backend,
    ctx: NemesisContext | None,
    nodes: list[str],
    run_dir: Path,
    data_dir: str | None,
    disks: Disks | None,
) -> None:
    # Shielded: a second Ctrl-C must not leave faults or namespaces behind.
    async def go() -> None:
        if ctx is not None:
            await asyncio.to_thread(heal_all, ctx)
        for node in nodes:
            with contextlib.suppress(Exception):
                backend.fetch_logs(node, str(run_dir / "nodes" / node))
        if opts.leave_running:
            log.warning("leaving the cluster running (--leave-running); `harness cleanup` ends it")
            return
        try:
            await asyncio.to_thread(backend.teardown)
        finally:
            if disks is not None:  # after the nodes stopped: nothing holds a file there
                await asyncio.to_thread(disks.unmount_all)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)

    await asyncio.shield(go())


def _log_to(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


async def wait_for_leader(target: Target, cluster: ClusterSpec, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STATUS_TIMEOUT_S):
                leader = await target.leader(cluster)
            if leader is not None:
                return leader
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no leader within {timeout_s:.0f} s; see the node logs")


async def _restrict_ops(opts: RunOptions, target: Target, cluster: ClusterSpec) -> RunOptions:
    """The options with the ops the workload may use: `opts.ops` if given, else what the
    target finds if it `DetectsOps`; a line says what is left out."""
    ops = opts.ops
    if ops is None and isinstance(target, DetectsOps):
        ops = tuple(await target.supported_ops(cluster))
    if ops is None:
        return opts
    left_out = [f for f in OPS if f not in ops]
    if left_out:
        how = "declared with --ops" if opts.ops is not None else "not supported"
        line = f"{target.name}: {', '.join(left_out)} {how}: left out of the workload"
        log.warning("%s", line)
        print(f"harness: {line}", file=sys.stderr, flush=True)
    return dataclasses.replace(opts, ops=tuple(f for f in OPS if f in ops))


def _nemesis_context(
    backend: Backend,
    target: Target,
    cluster: ClusterSpec,
    seed: int,
    loop: asyncio.AbstractEventLoop,
) -> NemesisContext:
    def leader() -> str | None:
        # Called from a nemesis worker thread: ask on the run's loop, bounded.
        future = asyncio.run_coroutine_threadsafe(target.leader(cluster), loop)
        try:
            return future.result(timeout=STATUS_TIMEOUT_S)
        except Exception:
            future.cancel()
            return None

    remotes = {n: backend.remote(n) for n in cluster.slots}
    return NemesisContext(
        remotes=remotes, procs=backend, rng=random.Random(seed + 1), leader=leader
    )


async def _drive(
    opts: RunOptions,
    target: Target,
    cluster: ClusterSpec,
    ctx: NemesisContext,
    nemeses: list[Any],
    history: HistoryWriter,
    crashes: list[dict[str, Any]],
) -> list[str]:
    """Run the workload and the nemesis for the run's time; the keys the workload used.
    Nodes that exit on their own meanwhile go into `crashes` (harness.node_watch)."""
    gen = Generator(
        WorkloadOptions(opts.workload, opts.keys, ops=opts.ops or OPS), random.Random(opts.seed)
    )
    progress = ProgressLine(opts.time_s, live=opts.live)
    stop = asyncio.Event()

    def emit(event: FaultEvent) -> None:
        op = event.as_op()
        if event.phase == "invoke":
            op["type"] = "invoke"
        history.record(op.pop("type"), op.pop("process"), op.pop("f"), **op)
        progress.fault(event)

    async def flusher() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.5)
            history.flush()
            progress.refresh()

    interval = opts.concurrency / opts.rate if opts.rate else 0.0
    with progress:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(flusher())
            leaders_path = history.path.parent / LEADERS_FILE
            tg.create_task(sample_leaders(target, cluster, leaders_path, history.now_ns, stop))
            tg.create_task(watch_nodes(ctx, history.now_ns, stop, crashes))
            tg.create_task(
                run_schedule(ctx, nemeses, interval_s=opts.nemesis_interval_s, emit=emit, stop=stop)
            )
            place = _placement(cluster, ctx)
            for slot in range(opts.concurrency):
                tg.create_task(
                    _worker(
                        slot,
                        opts.concurrency,
                        interval,
                        target,
                        cluster,
                        place,
                        gen,
                        history,
                        progress,
                        stop,
                    )
                )
            await asyncio.sleep(opts.time_s)
            stop.set()
    return gen.used_keys


def _placement(cluster: ClusterSpec, ctx: NemesisContext) -> Callable[[int], str]:
    """Which node the client of each worker slot uses: the voters in turn while membership
    changes (`ClusterMembers.client_node`), else the nodes in turn, for the whole run."""
    if isinstance(ctx.membership, ClusterMembers):
        return ctx.membership.client_node
    return lambda slot: cluster.nodes[slot % len(cluster.nodes)]


async def _worker(
    slot: int,
    concurrency: int,
    interval_s: float,
    target: Target,
    cluster: ClusterSpec,
    place: Callable[[int], str],
    gen: Generator,
    history: HistoryWriter,
    progress: ProgressLine,
    stop: asyncio.Event,
) -> None:
    """One logical client. After an `info` it continues as a new process (Jepsen's rule).
    It is bound to the node `place(slot)` names, and moves between two ops when that
    changes (membership changes: harness.members)."""
    process = slot
    node = place(slot)
    client = target.client(cluster, node)
    rng = random.Random(slot)
    try:
        while not stop.is_set():
            # Always yield: a client that never waits must not starve the run's clock.
            await asyncio.sleep(rng.uniform(0, 2 * interval_s) if interval_s else 0)
            if place(slot) != node:
                await client.close()
                node = place(slot)
                client = target.client(cluster, node)
            op = gen.next()
            process = await invoke_one(client, op, process, concurrency, history, progress)
    finally:
        await client.close()


async def invoke_one(
    client: Any,
    op: Invocation,
    process: int,
    concurrency: int,
    history: HistoryWriter,
    progress: ProgressLine | None,
) -> int:
    """Invoke and record one op; returns the process id to use next."""
    done = await _invoke_recorded(client, op, process, history)
    if progress is not None:
        progress.op(done.type)
    return process + concurrency if done.type == "info" else process


async def _invoke_recorded(
    client: Any, op: Invocation, process: int, history: HistoryWriter
) -> Completion:
    history.record("invoke", process, op.f, key=op.key, value=op.value)
    done: Completion = await client.invoke(op)
    fields: dict[str, Any] = {"key": op.key, "value": done.value}
    if done.error:
        fields["error"] = done.error
    history.record(done.type, process, op.f, **fields)
    return done


async def _final_reads(
    opts: RunOptions,
    target: Target,
    cluster: ClusterSpec,
    history: HistoryWriter,
    keys: list[str],
) -> dict[str, Any]:
    """Healed: read every key once more from the leader, each read retried (through the
    leader of the moment) until it succeeds or the recovery timeout has passed since the
    heal. A correct cluster serves again well within that. Returns results.json's
    `recovery`: the keys never read (a cluster that did not recover: the run is INVALID)."""
    window_s = opts.recovery_timeout_s or RECOVERY_S
    deadline = time.monotonic() + window_s
    process = 10 * opts.concurrency * 1000  # apart from every worker's ids
    unread: list[str] = []
    client: Any = None
    try:
        for key in keys:
            read = Invocation("read", key, None)
            while True:
                if time.monotonic() >= deadline:
                    unread.append(key)
                    break
                if client is None:
                    client = await _leader_client(target, cluster, deadline)
                if client is not None:
                    done = await _invoke_recorded(client, read, process, history)
                    process += 1
                    if done.type == "ok":
                        break
                    await client.close()  # the leader may have moved: look again
                    client = None
                await asyncio.sleep(0.2)
    finally:
        if client is not None:
            await client.close()
    if unread:
        log.error("not read within %g s after the heal: %s", window_s, ", ".join(unread))
    return {"window_s": window_s, "unread": unread}


async def _leader_client(target: Target, cluster: ClusterSpec, deadline: float) -> Any:
    """A client of the leader found before `deadline`, or None."""
    try:
        leader = await wait_for_leader(target, cluster, max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return None
    return target.client(cluster, leader)
