"""etcd as a target: members run Debian's `etcd` (3.4), clients speak its v3 HTTP/JSON gateway.

Each member listens on its node's address: clients on port 2379, peers on 2380. A client is
bound to one member (Jepsen's way) and sends every request there; etcd forwards a write to
its leader itself, over one kept-alive connection (`harness.http_client`). Requests (keys
and values base64-encoded, values stored as JSON text):

    write   POST /v3/kv/put    {"key", "value"}
    read    POST /v3/kv/range  {"key"} (+ "serializable": true in that read mode)
    cas     POST /v3/kv/txn    compare value == old (or create_revision == 0 for nil),
                               success: put new; ok when "succeeded", else fail

Read modes: `linearizable` (etcd's default: ReadIndex, the member confirms with the leader
that its state is current) and `serializable` (the member answers from its own state at once;
may be stale, and is the expected finding under partitions).

How outcomes are mapped (an op is `fail` only when it certainly did not happen):

    connect refused / connect timed out (nothing sent)      fail
    a request rejected before it could be proposed          fail   (bad request, too many
                                                                    requests, proposal dropped)
    any error of a read                                     fail   (a read changes nothing),
                                                                    except a timeout: info
    timeout, connection lost after sending, "request timed
    out", "leader changed", "no leader", "server stopped",
    an unknown error, an unreadable answer (write or cas)   info
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from harness.backends.base import BackendError, BackendUnavailable
from harness.http_client import HttpClient, HttpResponse, MaybeSentError, NotSentError
from harness.targets.base import (
    ChangesMembers,
    ClusterSpec,
    Completion,
    IgnoresPreload,
    KeepsData,
    NamesLinearizableReads,
    PreparesHost,
    ReportsLeaderTerm,
)
from harness.targets.etcd_members import EtcdMembership
from harness.workload import Invocation

__all__ = ["EtcdClient", "EtcdTarget", "ensure_etcd_installed"]

log = logging.getLogger(__name__)

CLIENT_PORT = 2379
PEER_PORT = 2380
BINARY = "etcd"
PACKAGE = "etcd-server"
STATUS_TIMEOUT_S = 1.0
INSTALL_TIMEOUT_S = 600.0
REFUSED_BACKOFF_S = 0.05
# Errors etcd returns before a request is proposed: the op certainly did not happen.
REJECTED_BEFORE_PROPOSAL = (
    "etcdserver: too many requests",
    "raft proposal dropped",
    "etcdserver: request is too large",
    "etcdserver: not capable",
    "etcdserver: mvcc: database space exceeded",
)
GRPC_INVALID_ARGUMENT = 3


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _encode_value(value: Any) -> str:
    return _b64(json.dumps(value))


def _decode_value(b64: str) -> Any:
    return json.loads(base64.b64decode(b64))


def _request(op: Invocation, serializable: bool) -> tuple[str, dict[str, Any]]:
    """The gateway path and JSON body of `op`."""
    key = _b64(str(op.key))
    if op.f == "read":
        body: dict[str, Any] = {"key": key}
        if serializable:
            body["serializable"] = True
        return "/v3/kv/range", body
    if op.f == "write":
        return "/v3/kv/put", {"key": key, "value": _encode_value(op.value)}
    if op.f == "cas":
        old, new = op.value
        compare: dict[str, Any] = (
            {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
            if old is None
            else {"key": key, "target": "VALUE", "result": "EQUAL", "value": _encode_value(old)}
        )
        put = {"request_put": {"key": key, "value": _encode_value(new)}}
        return "/v3/kv/txn", {"compare": [compare], "success": [put]}
    raise ValueError(f"etcd cannot run op {op.f!r}")


def completion(op: Invocation, status: int, answer: dict[str, Any]) -> Completion:
    """The Jepsen outcome of the gateway's `answer` (HTTP `status`) to `op`."""
    if status != 200 or "error" in answer:
        return _error_completion(op, answer)
    if op.f == "read":
        kvs = answer.get("kvs") or []
        try:
            value = _decode_value(kvs[0]["value"]) if kvs else None
        except (KeyError, TypeError, ValueError) as exc:
            return Completion("fail", error=f"unreadable value: {exc}")
        return Completion("ok", value=value)
    if op.f == "cas" and not answer.get("succeeded", False):
        # proto3 leaves out false: an answer without "succeeded" is a compare that failed.
        return Completion("fail", value=op.value, error="cas mismatch")
    return Completion("ok", value=op.value)


def _error_completion(op: Invocation, answer: dict[str, Any]) -> Completion:
    message = str(answer.get("error") or answer.get("message") or "unknown error")
    rejected = answer.get("code") == GRPC_INVALID_ARGUMENT or any(
        known in message for known in REJECTED_BEFORE_PROPOSAL
    )
    if rejected or op.f == "read":
        return Completion("fail", value=op.value, error=message)
    return Completion("info", value=op.value, error=f"indeterminate: {message}")


class EtcdClient:
    """A client bound to one member; see the module docstring for how outcomes map."""

    def __init__(self, cluster: ClusterSpec, node: str) -> None:
        self._address = f"{cluster.addresses[node]}:{CLIENT_PORT}"
        self._http = HttpClient()
        self._serializable = cluster.read_mode == "serializable"
        self._timeout_s = cluster.op_timeout_s

    async def invoke(self, op: Invocation) -> Completion:
        path, body = _request(op, self._serializable)
        try:
            response = await self._http.request(
                self._address, "POST", path, body,
                timeout_s=self._timeout_s, connect_timeout_s=self._timeout_s,
            )  # fmt: skip
        except NotSentError as exc:
            if not exc.timed_out:
                # A member that is down refuses at once: pace the retries of its clients.
                await asyncio.sleep(REFUSED_BACKOFF_S)
            return Completion("fail", value=op.value, error=str(exc))
        except MaybeSentError as exc:
            return _lost(op, str(exc), exc.timed_out)
        answer = _json_object(response)
        if answer is None:
            return _lost(op, f"unreadable answer (HTTP {response.status})", timed_out=False)
        return completion(op, response.status, answer)

    async def close(self) -> None:
        await self._http.close()


def _lost(op: Invocation, error: str, timed_out: bool) -> Completion:
    """The outcome of a request that may have reached the member but got no usable answer."""
    if op.f == "read" and not timed_out:
        return Completion("fail", error=error)
    return Completion("info", value=op.value, error=f"indeterminate: {error}")


def _json_object(response: HttpResponse) -> dict[str, Any] | None:
    """The gateway's JSON answer (an empty body is {}), or None if it is not an object."""
    answer = response.json() if response.body.strip() else {}
    return answer if isinstance(answer, dict) else None


def ensure_etcd_installed() -> str:
    """The path of `etcd` on this host, installing Debian's etcd-server (as root, with apt-get)
    when it is missing. Raises BackendUnavailable when it cannot be installed here and
    BackendError when apt-get failed."""
    found = shutil.which(BINARY)
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BackendUnavailable(
            f"the etcd target needs `{BINARY}` on PATH: install Debian's {PACKAGE} "
            f"(apt-get install {PACKAGE}) or an etcd 3.4 or newer binary"
        )
    log.info("etcd: installing %s with apt-get", PACKAGE)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE]
    # The package lists may be missing or old: update once, then try again.
    installed = _apt(install, env) == 0 or (
        _apt(["apt-get", "update", "-qq"], env) == 0 and _apt(install, env) == 0
    )
    if not installed:
        raise BackendError(f"apt-get could not install {PACKAGE}; see harness.log")
    found = shutil.which(BINARY)
    if found is None:
        raise BackendError(f"{PACKAGE} is installed but `{BINARY}` is not on PATH")
    return found


def _apt(argv: list[str], env: dict[str, str]) -> int:
    try:
        proc = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("etcd: `%s` failed: %s", " ".join(argv), exc)
        return -1
    if proc.returncode != 0:
        log.error("etcd: `%s` exited %d: %s", " ".join(argv), proc.returncode, proc.stderr[-800:])
    return proc.returncode


class EtcdTarget(
    IgnoresPreload,
    PreparesHost,
    KeepsData,
    ChangesMembers,
    ReportsLeaderTerm,
    NamesLinearizableReads,
):
    """etcd 3.4 (Debian's etcd-server): a real Raft store nobody here wrote."""

    name = "etcd"
    read_modes: tuple[str, ...] = ("linearizable", "serializable")
    default_read_mode = "linearizable"
    linearizable_read_modes: tuple[str, ...] = ("linearizable",)
    bugs: tuple[str, ...] = ()

    def __init__(self, heartbeat_ms: int = 50, election_ms: int = 500) -> None:
        # Half of etcd's defaults (100 ms, 1000 ms): a cut-off leader is replaced within
        # about a second, so short runs see several leaders.
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms

    def prepare(self, backend: str) -> None:
        """Make sure members can run: on netns they run this host's etcd (installed if
        missing); docker images carry etcd, and ssh nodes must have it."""
        if backend == "netns":
            ensure_etcd_installed()

    preload_refusal = "etcd is a static Go binary, which ignores LD_PRELOAD"

    def data_dir(self, cluster: ClusterSpec, node: str) -> str:
        return f"{cluster.data_root}/{node}.etcd"

    def node_argv(self, node: str, cluster: ClusterSpec) -> list[str]:
        return self.member_argv(node, cluster, cluster.nodes, state="new")

    def member_argv(
        self, node: str, cluster: ClusterSpec, members: Sequence[str], state: str
    ) -> list[str]:
        """The argv of `node` in a cluster of `members`: a `new` cluster (every member of
        `cluster.nodes` starting at once), or an `existing` one it joins."""

        def url(n: str, port: int) -> str:
            return f"http://{cluster.addresses[n]}:{port}"

        initial = ",".join(f"{n}={url(n, PEER_PORT)}" for n in members)
        first = ",".join(f"{n}={url(n, PEER_PORT)}" for n in cluster.nodes)
        # One cluster, one token: members of another run's cluster can never join ours.
        token = hashlib.sha256(f"{first} {cluster.data_root}".encode()).hexdigest()[:16]
        # The same argv restarts a killed member: with a data dir, etcd ignores --initial-*.
        return [
            BINARY,
            "--name", node,
            "--data-dir", self.data_dir(cluster, node),
            "--listen-client-urls", url(node, CLIENT_PORT),
            "--advertise-client-urls", url(node, CLIENT_PORT),
            "--listen-peer-urls", url(node, PEER_PORT),
            "--initial-advertise-peer-urls", url(node, PEER_PORT),
            "--initial-cluster", initial,
            "--initial-cluster-state", state,
            "--initial-cluster-token", f"harness-{token}",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip

    def membership(self, cluster: ClusterSpec) -> EtcdMembership:
        """etcd's member API through the gateway (harness.targets.etcd_members)."""
        return EtcdMembership(self, cluster)

    def client(self, cluster: ClusterSpec, node: str) -> EtcdClient:
        return EtcdClient(cluster, node)

    async def leader(self, cluster: ClusterSpec) -> str | None:
        leader, _ = await self.leader_term(cluster)
        return leader

    async def leader_term(self, cluster: ClusterSpec) -> tuple[str | None, int | None]:
        """The member that calls itself leader in the highest raft term, and that term
        (every slot is asked: an unstarted one refuses at once)."""

        async def status(node: str) -> dict[str, Any] | None:
            async with HttpClient() as http:
                response = await http.request(
                    f"{cluster.addresses[node]}:{CLIENT_PORT}", "POST", "/v3/maintenance/status",
                    {}, timeout_s=STATUS_TIMEOUT_S, connect_timeout_s=STATUS_TIMEOUT_S,
                )  # fmt: skip
            return _json_object(response)

        # Every slot: after membership changes the leader may be a node that joined.
        answers = await asyncio.gather(*(status(n) for n in cluster.slots), return_exceptions=True)
        leaders: list[tuple[int, str]] = []
        for node, answer in zip(cluster.slots, answers):
            if not isinstance(answer, dict) or "error" in answer:
                continue
            own = str(answer.get("header", {}).get("member_id", ""))
            if own and str(answer.get("leader", "")) == own:
                leaders.append((int(answer.get("raftTerm", 0)), node))
        if not leaders:
            return None, None
        term, node = max(leaders)
        return node, term
