"""Any key-value store that speaks the seed system's HTTP API, started by a command line.

The user gives the command that runs one node (`--node-cmd`), with placeholders the
harness fills in per node (`node_command`); the backend runs it like any node (kill, pause
and partitions work as for raftkv). The store must answer

    POST /command  {"op": "set" | "delete" | "cas", "key": K, "value": V, "expected": E}
    GET  /read/<key>
    GET  /status   (optional)  {"role": "leader" | ..., "leader": ..., "term": ...}

in either of two shapes: ours (`{"ok": true | false | null, "value", "error",
"leader_http"}`, as raftkv's HTTP face) or the seed's (`{"success": bool, "message"}`,
the value of a read under `value`, or the whole body). Values go out as decimal strings
and strings of digits come back as integers, so stores that keep only strings work.

How an answer becomes an outcome:
- ok: `ok` or `success` true, or a 2xx without either (a read takes its `value`);
- fail (certainly not done): `ok` false; a 4xx; connect refused or timed out on every
  node; a "not the leader" answer from every node tried (the client follows a leader
  hint, `leader_http`, `leader` or a redirect's `Location`, else tries the nodes in turn);
- info (may have happened): `ok` null; a 5xx or a `success` false that is not a "not the
  leader"; a timeout or a lost connection after sending.
A read of a key the store does not have may be a 404: that reads as null (absent).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from harness.http_client import HttpClient, HttpResponse, MaybeSentError, NotSentError
from harness.targets.base import (
    ChecksNodes,
    ClusterSpec,
    Completion,
    DetectsOps,
    KeepsData,
    ReportsLeaderTerm,
    TargetSetupError,
    ValidatesOptions,
    WaitsReady,
)
from harness.targets.node_command import (
    NodeCommand,
    check_options,
    check_program,
    data_dir,
    http_address,
)
from harness.workload import OPS, Invocation
from nemesis.remote import Remote

__all__ = ["HttpTarget"]

START_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 0.5
STATUS_TIMEOUT_S = 1.0
PROBE_TIMEOUT_S = 3.0

_INT = re.compile(r"-?[0-9]{1,18}")
_NOT_LEADER = re.compile(r"not\s+(the\s+)?leader|no\s+leader", re.IGNORECASE)
_MISMATCH = re.compile(r"mismatch|precondition|expected", re.IGNORECASE)

log = logging.getLogger(__name__)


def _from_wire(value: Any) -> Any:
    """Our written values are integers; a store may hand them back as strings."""
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    return value


def _to_wire(value: Any) -> Any:
    return None if value is None else str(value)


@dataclass
class _Answer:
    """One node's answer, judged: `kind` ok | fail | info | redirect."""

    kind: str
    value: Any = None
    error: str | None = None
    hint: str | None = None


def _judge(op: Invocation, resp: HttpResponse) -> _Answer:
    body = resp.json()
    if 300 <= resp.status < 400 and "location" in resp.headers:
        return _Answer("redirect", error="redirected", hint=resp.headers["location"])
    if isinstance(body, dict):
        if _says_not_leader(body):
            return _Answer("redirect", error="not the leader", hint=_hint(body))
        if "ok" in body:
            return _judge_ours(op, resp.status, body)
        if "success" in body:
            return _judge_seed(op, resp.status, body)
    if op.f == "read" and resp.status == 404:
        return _Answer("ok", None)
    if resp.status >= 500:
        return _Answer("info", error=f"indeterminate: HTTP {resp.status}")
    if resp.status >= 400:
        return _Answer("fail", error=f"HTTP {resp.status}: {_text(resp)}")
    if op.f != "read":
        return _Answer("ok", op.value)
    if isinstance(body, dict):
        return _Answer("ok", _from_wire(body.get("value")))
    if body is None and resp.body.strip():
        return _Answer("ok", _from_wire(resp.body.decode(errors="replace").strip()))
    return _Answer("ok", _from_wire(body))


def _judge_ours(op: Invocation, status: int, body: dict[str, Any]) -> _Answer:
    ok = body.get("ok")
    error = str(body.get("error") or body.get("message") or f"HTTP {status}")
    if status >= 500 or ok is None:
        return _Answer("info", error=f"indeterminate: {error}")
    if ok is True and 200 <= status < 300:
        return _Answer("ok", _from_wire(body.get("value")) if op.f == "read" else op.value)
    return _Answer("fail", op.value, error)


def _judge_seed(op: Invocation, status: int, body: dict[str, Any]) -> _Answer:
    message = str(body.get("message") or body.get("error") or f"HTTP {status}")
    if body.get("success") is True and 200 <= status < 300:
        return _Answer("ok", _from_wire(body.get("value")) if op.f == "read" else op.value)
    if op.f == "read" and status == 404:
        return _Answer("ok", None)
    if 400 <= status < 500:
        return _Answer("fail", op.value, message)
    # A refusal that does not say why may still hide a write that went through.
    return _Answer("info", error=f"indeterminate: {message}")


def _says_not_leader(body: dict[str, Any]) -> bool:
    if body.get("error") == "not_leader":
        return True
    if body.get("ok") is True or body.get("success") is True:
        return False
    return any(
        isinstance(body.get(f), str) and _NOT_LEADER.search(body[f]) for f in ("message", "error")
    )


def _hint(body: dict[str, Any]) -> str | None:
    for field in ("leader_http", "leader_url", "leader"):
        value = body.get(field)
        if isinstance(value, str) and value:
            return value
    return None


def _text(resp: HttpResponse) -> str:
    return resp.body[:200].decode(errors="replace").strip()


class _Shared:
    """What the clients of one run learn for the target: who accepted the last write."""

    def __init__(self) -> None:
        self.last_writer: str | None = None


class HttpKvClient:
    """A client bound to a home node: every op starts there (Jepsen's binding), follows
    "not the leader" answers, and never retries a request that may have been received."""

    def __init__(self, cluster: ClusterSpec, node: str, shared: _Shared | None = None) -> None:
        self._cluster = cluster
        self._home = node
        self._http = HttpClient()
        self._shared = shared or _Shared()

    def _node_of(self, hint: str | None) -> str | None:
        if hint is None:
            return None
        if hint in self._cluster.nodes:
            return hint
        netloc = urlsplit(hint).netloc if "//" in hint else hint
        for node in self._cluster.nodes:
            if netloc in (http_address(self._cluster, node), self._cluster.addresses[node]):
                return node
        return None

    async def exchange(
        self, op: Invocation, method: str, path: str, body: Any, timeout_s: float
    ) -> tuple[str, _Answer]:
        """Send until a node gives an answer that is not "not the leader"; the answering
        node and its judged answer (fail or info when no node gave one)."""
        nodes = self._cluster.nodes
        deadline = time.monotonic() + timeout_s
        node = self._home
        errors: list[str] = []
        unreachable: set[str] = set()
        for _ in range(2 * len(nodes) + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(unreachable) == len(nodes):
                break
            try:
                resp = await self._http.request(
                    http_address(self._cluster, node), method, path, body,
                    timeout_s=remaining, connect_timeout_s=CONNECT_TIMEOUT_S,
                )  # fmt: skip
            except NotSentError as exc:
                errors.append(f"{node}: {exc}")
                unreachable.add(node)
                node = nodes[(nodes.index(node) + 1) % len(nodes)]
                continue
            except MaybeSentError as exc:
                return node, _Answer("info", error=f"indeterminate: {node}: {exc}")
            answer = _judge(op, resp)
            if answer.kind != "redirect":
                return node, answer
            errors.append(f"{node}: {answer.error}")
            hinted = self._node_of(answer.hint)
            node = (
                hinted
                if hinted not in (None, node)
                else nodes[(nodes.index(node) + 1) % len(nodes)]
            )
        return node, _Answer("fail", op.value, "; ".join(errors[-3:]) or "no time left")

    async def invoke(self, op: Invocation) -> Completion:
        if op.f == "read":
            method, path, body = "GET", f"/read/{quote(op.key, safe='')}", None
        elif op.f == "write":
            method, path = "POST", "/command"
            body = {"op": "set", "key": op.key, "value": _to_wire(op.value)}
        elif op.f == "cas":
            old, new = op.value
            method, path = "POST", "/command"
            body = {"op": "cas", "key": op.key, "value": _to_wire(new), "expected": _to_wire(old)}
        else:
            raise ValueError(f"the http target cannot run op {op.f!r}")
        node, answer = await self.exchange(op, method, path, body, self._cluster.op_timeout_s)
        if answer.kind == "ok" and op.f != "read":
            self._shared.last_writer = node
        if answer.kind == "ok":
            return Completion("ok", answer.value)
        if answer.kind == "info":
            return Completion("info", error=answer.error)
        return Completion("fail", op.value, answer.error)

    async def close(self) -> None:
        await self._http.close()


def _node_command(cluster: ClusterSpec) -> NodeCommand:
    extra = cluster.extra
    return NodeCommand.parse(extra["node_cmd"], extra.get("node_env", ()), len(cluster.nodes))


class HttpTarget(
    ValidatesOptions, KeepsData, ChecksNodes, WaitsReady, DetectsOps, ReportsLeaderTerm
):
    """A store started by `--node-cmd` and reached over HTTP (see the module docstring)."""

    name = "http"
    read_modes: tuple[str, ...] = ()
    default_read_mode = ""
    bugs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._shared = _Shared()

    @staticmethod
    def validate_options(extra: dict[str, Any], nodes: int, backend: str) -> None:
        check_options(extra, nodes, backend)

    @staticmethod
    def check_nodes(cluster: ClusterSpec, remotes: Mapping[str, Remote]) -> None:
        check_program(_node_command(cluster), cluster, remotes)

    def data_dir(self, cluster: ClusterSpec, node: str) -> str:
        return data_dir(cluster, node)

    def node_argv(self, node: str, cluster: ClusterSpec) -> list[str]:
        return _node_command(cluster).render(node, cluster)

    def client(self, cluster: ClusterSpec, node: str) -> HttpKvClient:
        return HttpKvClient(cluster, node, self._shared)

    async def _get_status(self, cluster: ClusterSpec, node: str) -> HttpResponse | None:
        # A connection of its own each time: callers come and go (leader sampling, the
        # nemesis) and nothing is left open between them.
        try:
            async with HttpClient() as http:
                return await http.request(
                    http_address(cluster, node), "GET", "/status",
                    timeout_s=STATUS_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S,
                )  # fmt: skip
        except (NotSentError, MaybeSentError):
            return None

    async def leader_term(self, cluster: ClusterSpec) -> tuple[str | None, int | None]:
        """From `GET /status` where nodes answer it (the highest term's self-declared
        leader); where none does, the node that last accepted a write, else the first
        node that answers at all."""
        answers = await asyncio.gather(*(self._get_status(cluster, n) for n in cluster.nodes))
        statuses = {
            n: body
            for n, a in zip(cluster.nodes, answers)
            if a is not None and a.status == 200
            and isinstance(body := a.json(), dict) and "role" in body
        }  # fmt: skip
        leaders = [
            (int(b["term"]) if isinstance(b.get("term"), int) else 0, n)
            for n, b in statuses.items()
            if b.get("role") == "leader"
        ]
        if leaders:
            term, node = max(leaders)
            return node, term if isinstance(statuses[node].get("term"), int) else None
        if statuses:
            return None, None
        answered = [n for n, a in zip(cluster.nodes, answers) if a is not None]
        if not answered:
            return None, None
        last = self._shared.last_writer
        return (last if last in answered else answered[0]), None

    async def leader(self, cluster: ClusterSpec) -> str | None:
        return (await self.leader_term(cluster))[0]

    async def wait_ready(self, cluster: ClusterSpec) -> None:
        """Wait until every node answers HTTP at all; TargetSetupError if one never does."""
        timeout_s = float(cluster.extra.get("node_start_timeout_s") or START_TIMEOUT_S)
        deadline = time.monotonic() + timeout_s
        waiting = list(cluster.nodes)
        while waiting and time.monotonic() < deadline:
            answers = await asyncio.gather(*(self._get_status(cluster, n) for n in waiting))
            waiting = [n for n, a in zip(waiting, answers) if a is None]
            if waiting:
                await asyncio.sleep(0.2)
        if waiting:
            names = waiting
            where = ", ".join(f"{n} at http://{http_address(cluster, n)}" for n in names)
            raise TargetSetupError(
                f"--node-cmd: no HTTP answer within {timeout_s:g} s from {where}; does the "
                "command start a server on {host}:{port}?"
            )

    async def supported_ops(self, cluster: ClusterSpec) -> tuple[str, ...]:
        """Which of the workload's ops the store understands: cas is tried once on a
        scratch key, and left out if refused as unknown (or if nothing could tell)."""
        client = HttpKvClient(cluster, await self.leader(cluster) or cluster.nodes[0])
        key = f"harness-probe-{secrets.token_hex(4)}"
        op = Invocation("cas", key, [None, 0])
        body = {"op": "cas", "key": key, "value": "0", "expected": None}
        try:
            _, answer = await client.exchange(op, "POST", "/command", body, PROBE_TIMEOUT_S)
        finally:
            await client.close()
        # A fresh key is absent, so a store that knows cas swaps; "mismatch" still shows
        # that it understood.
        understood = answer.kind == "ok" or (
            answer.kind == "fail" and bool(_MISMATCH.search(answer.error or ""))
        )
        log.info("cas probe on %s: %s %s", key, answer.kind, answer.error or "")
        return OPS if understood else tuple(f for f in OPS if f != "cas")
