"""etcd as a target: members run Debian's `etcd` (3.4), clients speak its v3 HTTP/JSON gateway.

Each member listens on its node's address: clients on port 2379, peers on 2380. A client is
bound to one member (Jepsen's way) and sends every request there; etcd forwards a write to
its leader itself. Requests (keys and values base64-encoded, values stored as JSON text):

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
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
from typing import Any

from harness.backends.base import BackendError, BackendUnavailable
from harness.targets.base import ClusterSpec, Completion
from harness.workload import Invocation

__all__ = ["EtcdClient", "EtcdTarget", "GatewayError", "ensure_etcd_installed"]

log = logging.getLogger(__name__)

CLIENT_PORT = 2379
PEER_PORT = 2380
BINARY = "etcd"
PACKAGE = "etcd-server"
STATUS_TIMEOUT_S = 1.0
INSTALL_TIMEOUT_S = 600.0
MAX_RESPONSE_BYTES = 1 << 20
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


class GatewayError(Exception):
    """The gateway could not be asked or did not answer. `sent` tells whether any byte of the
    request left: if not, the member certainly did not act on it."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _encode_value(value: Any) -> str:
    return _b64(json.dumps(value))


def _decode_value(b64: str) -> Any:
    return json.loads(base64.b64decode(b64))


class _Gateway:
    """One keep-alive HTTP/1.1 connection to a member's JSON gateway; one request at a time.

    `request_sent` says whether the current (or last) request was written, so a caller whose
    timeout fired knows whether the member may have acted on it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.request_sent = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST `body` as JSON; (HTTP status, decoded JSON answer). Raises GatewayError."""
        self.request_sent = False
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        reader, writer = await self._connect()
        try:
            self.request_sent = True
            writer.write(head + payload)
            await writer.drain()
            status, raw, keep_alive = await _read_response(reader)
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise GatewayError(f"connection lost after sending: {exc!r}", sent=True) from None
        except BaseException:
            # A timeout or cancellation mid-exchange leaves the stream unusable.
            await self.close()
            raise
        if not keep_alive:
            await self.close()
        try:
            answer = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise GatewayError(f"unreadable answer (HTTP {status})", sent=True) from None
        if not isinstance(answer, dict):
            raise GatewayError(f"unexpected answer (HTTP {status})", sent=True)
        return status, answer

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None and not self._reader.at_eof():
            return self._reader, self._writer
        await self.close()
        try:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise GatewayError(f"cannot connect: {exc}", sent=False) from None
        return self._reader, self._writer

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.5):
                    await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep-alive) of one HTTP/1.1 response: chunked, sized, or (neither)
    read until the member closes the connection."""
    status_line = await reader.readline()
    if not status_line:
        raise EOFError("connection closed before an answer")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for _ in range(100):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    keep_alive = headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, await _read_chunked(reader), keep_alive
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_RESPONSE_BYTES:
            raise ValueError(f"answer of {length} bytes is too large")
        return status, await reader.readexactly(length), keep_alive
    return status, await _read_to_eof(reader), False


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """A body without a length: everything up to the end of the stream (RFC 9112 §6.3),
    however many reads it arrives in; the caller's op timeout bounds the wait."""
    body = bytearray()
    while chunk := await reader.read(65536):
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise ValueError(f"answer without a length is too large: over {MAX_RESPONSE_BYTES} B")
    return bytes(body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            break
        if len(body) + size > MAX_RESPONSE_BYTES:
            raise ValueError("chunked answer is too large")
        body += await reader.readexactly(size)
        await reader.readline()
    for _ in range(100):  # trailers, up to the blank line
        if (await reader.readline()) in (b"\r\n", b"\n", b""):
            break
    return bytes(body)


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
        self._gateway = _Gateway(cluster.addresses[node], CLIENT_PORT)
        self._serializable = cluster.read_mode == "serializable"
        self._timeout_s = cluster.op_timeout_s

    async def invoke(self, op: Invocation) -> Completion:
        path, body = _request(op, self._serializable)
        try:
            async with asyncio.timeout(self._timeout_s):
                status, answer = await self._gateway.post(path, body)
        except TimeoutError:
            if not self._gateway.request_sent:
                return Completion("fail", value=op.value, error="timed out connecting")
            return Completion("info", value=op.value, error="indeterminate: timed out")
        except GatewayError as exc:
            if not exc.sent:
                # A member that is down refuses at once: pace the retries of its clients.
                await asyncio.sleep(REFUSED_BACKOFF_S)
                return Completion("fail", value=op.value, error=str(exc))
            if op.f == "read":
                return Completion("fail", error=str(exc))
            return Completion("info", value=op.value, error=f"indeterminate: {exc}")
        return completion(op, status, answer)

    async def close(self) -> None:
        await self._gateway.close()


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


class EtcdTarget:
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

    def node_argv(self, node: str, cluster: ClusterSpec) -> list[str]:
        def url(n: str, port: int) -> str:
            return f"http://{cluster.addresses[n]}:{port}"

        initial = ",".join(f"{n}={url(n, PEER_PORT)}" for n in cluster.nodes)
        # One cluster, one token: members of another run's cluster can never join ours.
        token = hashlib.sha256(f"{initial} {cluster.data_root}".encode()).hexdigest()[:16]
        # The same argv restarts a killed member: with a data dir, etcd ignores --initial-*.
        return [
            BINARY,
            "--name", node,
            "--data-dir", f"{cluster.data_root}/{node}.etcd",
            "--listen-client-urls", url(node, CLIENT_PORT),
            "--advertise-client-urls", url(node, CLIENT_PORT),
            "--listen-peer-urls", url(node, PEER_PORT),
            "--initial-advertise-peer-urls", url(node, PEER_PORT),
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"harness-{token}",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip

    def client(self, cluster: ClusterSpec, node: str) -> EtcdClient:
        return EtcdClient(cluster, node)

    async def leader(self, cluster: ClusterSpec) -> str | None:
        leader, _ = await self.leader_term(cluster)
        return leader

    async def leader_term(self, cluster: ClusterSpec) -> tuple[str | None, int | None]:
        """The member that calls itself leader in the highest raft term, and that term."""

        async def status(node: str) -> dict[str, Any]:
            gateway = _Gateway(cluster.addresses[node], CLIENT_PORT)
            try:
                async with asyncio.timeout(STATUS_TIMEOUT_S):
                    _, answer = await gateway.post("/v3/maintenance/status", {})
                return answer
            finally:
                await gateway.close()

        answers = await asyncio.gather(*(status(n) for n in cluster.nodes), return_exceptions=True)
        leaders: list[tuple[int, str]] = []
        for node, answer in zip(cluster.nodes, answers):
            if not isinstance(answer, dict) or "error" in answer:
                continue
            own = str(answer.get("header", {}).get("member_id", ""))
            if own and str(answer.get("leader", "")) == own:
                leaders.append((int(answer.get("raftTerm", 0)), node))
        if not leaders:
            return None, None
        term, node = max(leaders)
        return node, term
