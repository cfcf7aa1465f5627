"""What a system must provide to be tested: the target plugin interface.

A target says how to run one node (`node_argv`), how to find the leader (for
leader-aware faults), and how to turn requests into Jepsen outcomes (`client`).
The backend runs the argv on each node; the nemesis never needs to know the
system. Outcomes are Jepsen's: `ok` (done), `fail` (certainly not done), `info`
(may have happened: a timeout, a connection lost after sending).

Beyond `Target`, a target may offer optional hooks, in the manner of Jepsen's optional
DB protocols (`jepsen.db/Kill`, `Pause`, `Primary`, `LogFiles`): one small
runtime-checkable Protocol per hook, listed in `TARGET_HOOKS` in the order a run calls
them. The run asks `isinstance(target, Hook)` at each call site, which checks only that
the one attribute exists; a target declares the hooks it offers as base classes, so that
mypy checks their signatures too. Each hook's docstring says what it is for, when the
run calls it, and what a target without it gets.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from harness.workload import Invocation
from nemesis.membership import Members

if TYPE_CHECKING:
    from harness.backends.base import Backend
    from nemesis.remote import Remote

__all__ = [
    "TARGET_HOOKS",
    "ChangesMembers",
    "ChecksNodes",
    "ClusterSpec",
    "Completion",
    "DetectsOps",
    "HasSets",
    "IgnoresPreload",
    "KeepsData",
    "MemberControl",
    "Members",
    "NamesLinearizableReads",
    "PreloadProgram",
    "PreparesHost",
    "PreparesNodes",
    "ReportsLeaderTerm",
    "SwapsForPreload",
    "Target",
    "TargetClient",
    "TargetSetupError",
    "ValidatesOptions",
    "WaitsReady",
]


class TargetSetupError(Exception):
    """The target cannot run as the user configured it (a node command that is not found,
    or nodes that never answer): bad usage, exit 254. The message says what to fix."""


@dataclass(frozen=True)
class ClusterSpec:
    """The cluster a target runs on: node names, their addresses, and run options.

    `nodes` are the members the cluster starts with; `spares` the node slots provisioned
    for membership changes, not started (empty unless the `member` fault runs); `addresses`
    has both. `slots` is every one of them, in order."""

    nodes: tuple[str, ...]
    addresses: dict[str, str]
    data_root: str
    read_mode: str | None = None
    bugs: tuple[str, ...] = ()
    # raftkv's `--raft-option` words.
    raft_options: tuple[str, ...] = ()
    seed: int = 0
    op_timeout_s: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)
    # The Python interpreter on the nodes; the backend says (netns: the harness's own).
    python: str = sys.executable
    spares: tuple[str, ...] = ()
    # What the clients' reads return: a register's value, or for `set` a set's elements.
    workload: str = "kv"

    @property
    def slots(self) -> tuple[str, ...]:
        return self.nodes + self.spares


@dataclass(frozen=True)
class Completion:
    """How an invocation ended: `type` ok | fail | info, with the value seen or written."""

    type: Literal["ok", "fail", "info"]
    value: Any = None
    error: str | None = None


class TargetClient(Protocol):
    """One logical client. `invoke` must never raise for an operating error: it
    returns `fail` only when the op certainly did not happen, else `info`."""

    async def invoke(self, op: Invocation) -> Completion: ...

    async def close(self) -> None: ...


class Target(Protocol):
    """A system under test: what every target provides. The optional hooks are the
    Protocols of `TARGET_HOOKS`; a target offers those it needs."""

    name: str
    read_modes: tuple[str, ...]
    default_read_mode: str
    bugs: tuple[str, ...]

    def node_argv(self, node: str, cluster: ClusterSpec) -> list[str]:
        """The command that runs `node` in the foreground (the backend supervises it)."""
        ...

    def client(self, cluster: ClusterSpec, node: str) -> TargetClient:
        """A client bound to `node`: its requests start there (Jepsen binds each
        worker to a node, so faults of one node show in what its clients see)."""
        ...

    async def leader(self, cluster: ClusterSpec) -> str | None:
        """The node that currently leads, if the system has one and it is known."""
        ...


@runtime_checkable
class ValidatesOptions(Protocol):
    """`validate_options(extra, nodes, backend)`: reject the target's own options early.

    Called when the options of `harness test`, `compare-reads` or the pytest plugin are
    validated, before anything is made, with the run's `extra` options, node count and
    backend name. Raises ValueError saying what to fix; the run stops as bad usage, exit 254.
    Without it the target's options are taken as given. The http target checks `--node-cmd`.
    """

    def validate_options(self, extra: dict[str, Any], nodes: int, backend: str) -> None: ...


@runtime_checkable
class PreparesHost(Protocol):
    """`prepare(backend)`: make sure the system can run on that backend (by its name).

    Called in a thread before a run makes anything, so a failure leaves nothing behind.
    Raises BackendUnavailable (exit 254) when the system cannot run there. Without it the
    run assumes the nodes have what `node_argv` runs. etcd installs its binary for netns.
    """

    def prepare(self, backend: str) -> None: ...


@runtime_checkable
class IgnoresPreload(Protocol):
    """`preload_refusal`: a sentence saying why the node program ignores `LD_PRELOAD`.

    Read when options are validated: a clock nemesis (libfaketime is preloaded) is then
    refused with exit 254 and this sentence, and `all` leaves the clock kinds out. Without
    it the program is taken to read time through the dynamic libc. etcd (a static Go binary)
    offers it.
    """

    preload_refusal: str


@dataclass(frozen=True)
class PreloadProgram:
    """A build of a node program that runs under LD_PRELOAD: its `path` on the nodes, and
    `hint`, a sentence on why it is needed and how to get it."""

    path: str
    hint: str


@runtime_checkable
class SwapsForPreload(Protocol):
    """`preload_program`: a build of the node program (PreloadProgram) run instead of the
    usual one when a clock fault preloads libfaketime (the node's command sees LD_PRELOAD
    and chooses).

    It is checked before the nodes start: on this host for netns (a run that names a clock
    fault without it is refused, exit 254, and `all` leaves the clock kinds out), on each
    node for docker and ssh (BackendUnavailable naming the node). The node image carries
    this host's copy. redis offers it (Debian's jemalloc build cannot start under
    libfaketime).
    """

    preload_program: PreloadProgram


@runtime_checkable
class KeepsData(Protocol):
    """`data_dir(cluster, node)`: the directory that holds everything a node keeps.

    Read before the nodes start: `power-loss` mounts its lazy filesystem there (so it must
    be the node's own directory, made by no one else). Without it `power-loss` is refused
    with exit 254 and `all` leaves it out. raftkv, etcd and http offer it.
    """

    def data_dir(self, cluster: ClusterSpec, node: str) -> str: ...


@runtime_checkable
class ChecksNodes(Protocol):
    """`check_nodes(cluster, remotes)`: check what only the nodes can tell, before any starts.

    Called in a thread once the nodes exist and before any process starts, with each node's
    `Remote` by name. Raises TargetSetupError (exit 254) naming the node. Without it a node
    that cannot run shows as a process that exits, and the run as no leader in time. The
    http target checks that its program is on every node.
    """

    def check_nodes(self, cluster: ClusterSpec, remotes: Mapping[str, Remote]) -> None: ...


@runtime_checkable
class PreparesNodes(Protocol):
    """`prepare_nodes(cluster, backend)`: put onto the nodes what they need to start.

    Called in a thread after `check_nodes` and before any process starts; secrets go
    through `Backend.write_private_file`, never on a command line. Raises BackendError when
    a node cannot be written. Without it nothing is put on the nodes. raftkv writes the
    run's cluster token.
    """

    def prepare_nodes(self, cluster: ClusterSpec, backend: Backend) -> None: ...


@runtime_checkable
class WaitsReady(Protocol):
    """`async wait_ready(cluster)`: wait until every node answers at all.

    Awaited once after the nodes started and before the run waits for a leader; it bounds
    its own wait. Raises TargetSetupError (exit 254) when a node never answers. Without it
    the run goes straight to waiting for a leader, and a cluster that never comes up ends
    in a timeout there. The http target waits for an HTTP answer from each node.
    """

    async def wait_ready(self, cluster: ClusterSpec) -> None: ...


@runtime_checkable
class DetectsOps(Protocol):
    """`async supported_ops(cluster)`: which of the workload's ops the system has.

    Awaited once the cluster has a leader, only when `--ops` was not given; the ops it
    leaves out leave the workload, and a line says so. Without it the workload uses every
    op (`harness.workload.OPS`, or `--ops`). The http target tries cas once on a scratch key.
    """

    async def supported_ops(self, cluster: ClusterSpec) -> tuple[str, ...]: ...


class MemberControl(Protocol):
    """A cluster's membership API, as `ChangesMembers.membership` gives it. Each call bounds
    its own wait and raises `nemesis.membership.MembershipError` when the change was refused
    (it did not happen) or got no answer (it may have); the caller then reads `members`.

    - `learners`: whether the system has learners (members that receive the log and do not
      vote); without them, nodes join as voters at once.
    - `members()`: the configuration now, voters and learners by node name.
    - `add(node, learner)`: make the slot `node` a member (a learner if `learner`); the
      node is not running yet, and joins with `join_argv`.
    - `promote(node)`: make the learner `node` a voter, waiting (bounded) until it caught up.
    - `remove(node)`: take `node` out of the configuration (the leader too).
    - `join_argv(node, members)`: the command that starts `node`, with an empty data
      directory, as a member of the running cluster whose configuration is `members`
      (`node` among them); restarting it after a kill runs the same argv.
    """

    learners: bool

    async def members(self) -> Members: ...

    async def add(self, node: str, learner: bool) -> None: ...

    async def promote(self, node: str) -> None: ...

    async def remove(self, node: str) -> None: ...

    def join_argv(self, node: str, members: Members) -> list[str]: ...


@runtime_checkable
class ChangesMembers(Protocol):
    """`membership(cluster)`: the cluster's membership API (`MemberControl`).

    Read when options are validated (`--nemesis member` needs it) and once the cluster is
    up, for the `member` fault, which adds spare slots (`ClusterSpec.spares`, their data
    directories wiped first where the target `KeepsData`) and removes members through it;
    leaders are then looked for among `cluster.slots`. Without it `--nemesis member` is
    refused with exit 254 and `all` leaves it out. etcd and raftkv offer it.
    """

    def membership(self, cluster: ClusterSpec) -> MemberControl: ...


@runtime_checkable
class ReportsLeaderTerm(Protocol):
    """`async leader_term(cluster)`: the current leader and its term, for the report.

    Awaited for each leader sample of `leaders.jsonl` (every 0.5 s, bounded by a timeout);
    returns `(leader, term)`, either None when unknown. Without it the samples come from
    `Target.leader` and record no term. raftkv, etcd and http ask each node's status.
    """

    async def leader_term(self, cluster: ClusterSpec) -> tuple[str | None, int | None]: ...


@runtime_checkable
class NamesLinearizableReads(Protocol):
    """`linearizable_read_modes`: the read modes that promise linearizable reads.

    Read by `harness compare-reads`, which fails only when one of these modes finds an
    anomaly (the others are expected to, under partitions). Without it every read mode is
    held to linearizability. raftkv: log, readindex, lease; etcd: linearizable.
    """

    linearizable_read_modes: tuple[str, ...]


@runtime_checkable
class HasSets(Protocol):
    """`workloads`: the workloads the target's clients can run, when that is more than kv
    and register (whose ops every target has).

    The set workload's ops are `add` (an element to a key's set; the completion's value is
    the element) and `read` (the completion's value: every element, as a list). redis
    (SADD, SMEMBERS) and memory have them; a run of the set workload on any other target
    stops as bad usage, exit 254.
    """

    workloads: tuple[str, ...]


TARGET_HOOKS: tuple[type, ...] = (
    ValidatesOptions,
    HasSets,
    IgnoresPreload,
    SwapsForPreload,
    PreparesHost,
    KeepsData,
    ChecksNodes,
    PreparesNodes,
    WaitsReady,
    DetectsOps,
    ChangesMembers,
    ReportsLeaderTerm,
    NamesLinearizableReads,
)
"""The optional target hooks, in the order a run meets them."""
