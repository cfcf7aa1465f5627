"""raftkv as a target: nodes run `raftkv serve`, clients speak its msgpack protocol.

The nodes of a run share a cluster token made for that run; each finds it in a private
file beside its data directory (`prepare_nodes`, on every slot: a spare may join), never on
its command line, which any user of the host can read.

Membership (`ChangesMembers`): `harness.targets.raftkv_members` over the nodes' HTTP
`/members`; a spare slot joins with `raftkv serve --join`, under a new node id when the
slot was a member before (n4-2: a wiped server comes back under a new id).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

from harness.targets.base import (
    ChangesMembers,
    ClusterSpec,
    Completion,
    KeepsData,
    NamesLinearizableReads,
    PreparesNodes,
    ReportsLeaderTerm,
)
from harness.targets.raftkv_members import RaftkvMembership
from harness.workload import Invocation
from raftkv.client import Client
from raftkv.core import BUGS
from raftkv.node import READ_MODES
from raftkv.timing import NODE_TIMING

if TYPE_CHECKING:
    from harness.backends.base import Backend

__all__ = ["RaftkvTarget"]

PEER_PORT = 7001
HTTP_PORT = 8001
ATTEMPT_TIMEOUT_S = 0.15


def _addr(cluster: ClusterSpec, node: str) -> str:
    return f"{cluster.addresses[node]}:{PEER_PORT}"


def _token_path(cluster: ClusterSpec, node: str) -> str:
    return f"{cluster.data_root}/{node}.cluster-token"


async def _status(cluster: ClusterSpec, node: str) -> dict[str, Any]:
    client = Client([_addr(cluster, node)], timeout_s=1.0)
    try:
        return await client.request({"op": "status"}, node=_addr(cluster, node))
    finally:
        await client.close()


class RaftkvClient:
    """Maps raftkv answers to Jepsen outcomes: ok True -> ok, False -> fail, None -> info."""

    def __init__(self, cluster: ClusterSpec, node: str) -> None:
        self._client = Client(
            [_addr(cluster, n) for n in cluster.slots],
            timeout_s=cluster.op_timeout_s,
            home=_addr(cluster, node),
            # Short attempts move clients off a cut-off leader quickly; a retry is
            # safe because the session makes a write apply at most once.
            attempt_timeout_s=min(cluster.op_timeout_s / 4, ATTEMPT_TIMEOUT_S),
        )
        self._read_mode = cluster.read_mode

    async def invoke(self, op: Invocation) -> Completion:
        try:
            resp = await self._call(op)
        except (OSError, EOFError, TimeoutError) as exc:
            return Completion("info", error=f"indeterminate: {exc}")
        ok = resp.get("ok")
        error = resp.get("error")
        if ok is None:
            return Completion("info", error=error or "unknown")
        if ok is False:
            return Completion("fail", value=op.value, error=error)
        value = resp.get("value") if op.f == "read" else op.value
        return Completion("ok", value=value)

    async def _call(self, op: Invocation) -> dict[str, Any]:
        if op.f == "read":
            return await self._client.get(op.key, mode=self._read_mode)
        if op.f == "write":
            return await self._client.put(op.key, op.value)
        if op.f == "cas":
            old, new = op.value
            return await self._client.cas(op.key, old, new)
        raise ValueError(f"raftkv cannot run op {op.f!r}")

    async def close(self) -> None:
        await self._client.close()


class RaftkvTarget(
    KeepsData, PreparesNodes, ChangesMembers, ReportsLeaderTerm, NamesLinearizableReads
):
    """The project's own Raft store."""

    name = "raftkv"
    read_modes: tuple[str, ...] = READ_MODES
    default_read_mode = "readindex"
    # The modes that promise linearizable reads; local and follower are unsafe on purpose.
    linearizable_read_modes: tuple[str, ...] = ("log", "readindex", "lease")
    bugs: tuple[str, ...] = tuple(sorted(BUGS))

    def __init__(
        self,
        tick_ms: int = NODE_TIMING.tick_ms,
        election_ticks: int = NODE_TIMING.election_timeout_ticks,
    ) -> None:
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        # A target serves one run: its nodes, and only they, can prove this token.
        self._cluster_token = secrets.token_hex(32)

    def prepare_nodes(self, cluster: ClusterSpec, backend: Backend) -> None:
        """Put the run's cluster token on every node, mode 0600, before any starts."""
        data = (self._cluster_token + "\n").encode()
        for node in cluster.slots:
            backend.write_private_file(node, _token_path(cluster, node), data)

    def data_dir(self, cluster: ClusterSpec, node: str) -> str:
        return f"{cluster.data_root}/{node}"

    def node_argv(self, node: str, cluster: ClusterSpec) -> list[str]:
        peers = ",".join(f"{n}={_addr(cluster, n)}" for n in cluster.nodes)
        return self._serve_argv(cluster, node, node, ["--peers", peers])

    def join_argv(
        self, cluster: ClusterSpec, slot: str, node_id: str, members: tuple[str, ...]
    ) -> list[str]:
        """`raftkv serve --join` for `slot`'s node, under `node_id`, through `members`' slots."""
        join = ",".join(_addr(cluster, n) for n in members if n != slot)
        peers = ["--peers", f"{node_id}={_addr(cluster, slot)}", "--join", join]
        return self._serve_argv(cluster, slot, node_id, peers)

    def membership(self, cluster: ClusterSpec) -> RaftkvMembership:
        return RaftkvMembership(self, cluster)

    def peer_address(self, cluster: ClusterSpec, node: str) -> str:
        return _addr(cluster, node)

    def http_address(self, cluster: ClusterSpec, node: str) -> str:
        return f"{cluster.addresses[node]}:{HTTP_PORT}"

    def _serve_argv(
        self, cluster: ClusterSpec, slot: str, node_id: str, peers: list[str]
    ) -> list[str]:
        argv = [
            cluster.python, "-m", "raftkv.cli", "serve",
            "--id", node_id,
            *peers,
            "--data-dir", self.data_dir(cluster, slot),
            "--http", self.http_address(cluster, slot),
            "--read-mode", cluster.read_mode or self.default_read_mode,
            "--tick-ms", str(self.tick_ms),
            "--election-ticks", str(self.election_ticks),
            "--seed", str(cluster.seed + cluster.slots.index(slot)),
            "--cluster-token", _token_path(cluster, slot),
        ]  # fmt: skip
        for bug in cluster.bugs:
            argv += ["--bug", bug]
        for word in cluster.raft_options:
            argv += ["--raft-option", word]
        return argv

    def client(self, cluster: ClusterSpec, node: str) -> RaftkvClient:
        return RaftkvClient(cluster, node)

    async def leader(self, cluster: ClusterSpec) -> str | None:
        answers = await asyncio.gather(*(_status(cluster, n) for n in cluster.slots))
        leaders = [
            (a.get("term", 0), n)
            for n, a in zip(cluster.slots, answers)
            if a.get("ok") and a.get("role") == "leader"
        ]
        return max(leaders)[1] if leaders else None

    async def leader_term(self, cluster: ClusterSpec) -> tuple[str | None, int | None]:
        """The leader of the highest term among the nodes that answer, and that term."""
        statuses = (_status(cluster, n) for n in cluster.slots)
        answers = await asyncio.gather(*statuses, return_exceptions=True)
        leaders = [
            (int(a.get("term", 0)), n)
            for n, a in zip(cluster.slots, answers)
            if isinstance(a, dict) and a.get("ok") and a.get("role") == "leader"
        ]
        if not leaders:
            return None, None
        term, node = max(leaders)
        return node, term
