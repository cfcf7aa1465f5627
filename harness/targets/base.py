"""What a system must provide to be tested: the target plugin interface.

A target says how to run one node (`node_argv`), how to find the leader (for
leader-aware faults), and how to turn requests into Jepsen outcomes (`client`).
The backend runs the argv on each node; the nemesis never needs to know the
system. Outcomes are Jepsen's: `ok` (done), `fail` (certainly not done), `info`
(may have happened: a timeout, a connection lost after sending).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from harness.workload import Invocation

__all__ = ["ClusterSpec", "Completion", "Target", "TargetClient", "TargetSetupError"]


class TargetSetupError(Exception):
    """The target cannot run as the user configured it (a node command that is not found,
    or nodes that never answer): bad usage, exit 254. The message says what to fix."""


@dataclass(frozen=True)
class ClusterSpec:
    """The cluster a target runs on: node names, their addresses, and run options."""

    nodes: tuple[str, ...]
    addresses: dict[str, str]
    data_root: str
    read_mode: str | None = None
    bugs: tuple[str, ...] = ()
    seed: int = 0
    op_timeout_s: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)
    # The Python interpreter on the nodes; the backend says (netns: the harness's own).
    python: str = sys.executable


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
    """A system under test.

    Optional: `linearizable_read_modes`, the read modes that promise linearizable reads
    (`harness compare-reads` fails only on those; without it every mode is held to that);
    `prepare(backend)`, called in a thread before a run makes anything, to make sure the
    system can run on that backend (etcd installs its binary for netns; raise
    BackendUnavailable, exit 254, when it cannot); `check_nodes(cluster, remotes)`, called in
    a thread once the nodes exist and before any starts, with each node's `Remote`, to check
    what only the nodes can tell (the http target: its program is there; raise
    TargetSetupError, exit 254, naming the node); `prepare_nodes(cluster, backend)`, called
    in a thread after `check_nodes`, to put what the nodes need onto them (raftkv: the run's
    cluster token, through `Backend.write_private_file`).
    """

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
