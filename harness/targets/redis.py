"""Redis with Sentinel as a target: Debian's `redis-server` and `redis-sentinel` (7.0).

Under a clock fault (libfaketime in LD_PRELOAD) the node runs the same Redis built with libc
malloc (`REDIS_LIBC`, made by tools/build_redis_libc) as server and as Sentinel: Debian's
jemalloc build reads the clock while libfaketime is still starting and never comes up.

Each node runs a Redis server (port 6379) and a Sentinel (port 26379), both bound to the
node's address, under one foreground shell (`NODE_SCRIPT`) that the backend's supervisor
starts: the shell leads the process group, so a kill, a SIGSTOP and a SIGTERM of the node
reach both programs, and it exits (stopping the other) when either of them exits. It writes
the two configuration files into the node's data directory the first time (fsynced), and
leaves them alone afterwards: Redis and Sentinel rewrite them as roles change, so a node
restarted after a kill comes back with what it last knew, as a real one would.

The cluster starts with n1 as the primary and every other node its replica (`replicaof`).
Every Sentinel watches the primary under the name `harness` with a quorum of a majority;
a replica is promoted when a majority agrees. Failover settings (`SentinelTiming`):
`down-after-milliseconds` 1000 (a primary silent for a second is subjectively down),
`failover-timeout` 3000 (a failover that stalls is retried after twice that). A cut-off
primary is replaced within about 4 s, measured on netns (a second to be seen down, a
random delay of up to a second before a Sentinel asks for votes, the vote, the promotion,
and the others learning of it), so a fault of 5 s sees one; Redis's defaults (30 s and
3 min) would need runs of minutes.

A client is bound to one node. It asks that node's Sentinel for the primary
(`SENTINEL get-master-addr-by-name`) before each write or cas (and read in mode
`primary`), and sends the op there; in read mode `replica` it reads from its own node,
whatever its role. `cas` is one Lua script (atomic on the primary). With `--redis-wait N`
a write (or a cas that swapped) is followed by `WAIT N timeout`; fewer replicas than N
acknowledging makes it `info` (Redis applied it on the primary, and may lose it).

How outcomes are mapped (an op is `fail` only when it certainly did not happen):

    the node's Sentinel unreachable, or knows no primary    fail (nothing was sent)
    connect refused or timed out (nothing sent)             fail
    READONLY, NOREPLICAS, LOADING, MASTERDOWN, BUSY...      fail (refused before executing)
    any error of a read, but a timeout                      fail (a read changes nothing)
    a timeout or lost connection after sending              info
    WAIT acknowledged by fewer than N replicas              info
    any other error of a write or cas                       info
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from harness.targets.base import (
    ChecksNodes,
    ClusterSpec,
    Completion,
    HasSets,
    KeepsData,
    NamesLinearizableReads,
    PreloadProgram,
    ReportsLeaderTerm,
    SwapsForPreload,
    TargetSetupError,
    ValidatesOptions,
    WaitsReady,
)
from harness.workload import Invocation
from nemesis.remote import Remote, RemoteError

__all__ = [
    "APPENDFSYNC",
    "NODE_SCRIPT",
    "REDIS_LIBC",
    "RedisClient",
    "RedisTarget",
    "SentinelTiming",
    "redis_conf",
    "sentinel_conf",
]

log = logging.getLogger(__name__)

REDIS_PORT = 6379
SENTINEL_PORT = 26379
MASTER_NAME = "harness"
PROGRAMS = ("redis-server", "redis-sentinel")
# Debian's Redis built with libc malloc (tools/build_redis_libc), which the nodes run under
# libfaketime: Debian's jemalloc build reads the clock while the library is still starting.
REDIS_LIBC = "/usr/local/bin/redis-server-libc"
APPENDFSYNC = ("everysec", "always")
STATUS_TIMEOUT_S = 1.0
READY_TIMEOUT_S = 30.0
CHECK_TIMEOUT_S = 10.0
REFUSED_BACKOFF_S = 0.05
# Error prefixes of commands Redis refused before executing them.
REFUSED_PREFIXES = ("READONLY", "NOREPLICAS", "LOADING", "MASTERDOWN", "BUSY", "NOSCRIPT",
                    "OOM", "MISCONF", "NOAUTH", "WRONGTYPE")  # fmt: skip
# KEYS[1] the key; ARGV[1] "1" when the old value is nil, ARGV[2] the old value's text,
# ARGV[3] the new. 1 when it swapped, else 0.
CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if (ARGV[1] == '1' and current == false) or (ARGV[1] == '0' and current == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

# The node: writes both configs once (and fsyncs them), runs both programs, and exits when
# either does. $1 data dir, $2 redis.conf text, $3 sentinel.conf text, $4 REDIS_LIBC.
NODE_SCRIPT = r"""
set -u
dir=$1
mkdir -p "$dir" || exit 1
[ -s "$dir/redis.conf" ] || { printf '%s\n' "$2" >"$dir/redis.conf" && sync "$dir/redis.conf"; }
[ -s "$dir/sentinel.conf" ] || {
    printf '%s\n' "$3" >"$dir/sentinel.conf" && sync "$dir/sentinel.conf"; }
case ${LD_PRELOAD:-} in
*faketime*)  # under a clock fault: the libc-malloc build, as server and as Sentinel
    "$4" "$dir/redis.conf" & server=$!
    "$4" "$dir/sentinel.conf" --sentinel & sentinel=$! ;;
*)
    redis-server "$dir/redis.conf" & server=$!
    redis-sentinel "$dir/sentinel.conf" & sentinel=$! ;;
esac
trap 'kill -TERM "$server" "$sentinel" 2>/dev/null' TERM INT
while kill -0 "$server" 2>/dev/null && kill -0 "$sentinel" 2>/dev/null; do sleep 0.2; done
kill -TERM "$server" "$sentinel" 2>/dev/null
wait
"""


@dataclass(frozen=True)
class SentinelTiming:
    """How fast Sentinel replaces a primary it cannot reach (milliseconds); see the module
    docstring for why these values."""

    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    # How stale a replica's last acknowledgement may be and still count for
    # min-replicas-to-write (seconds; replicas acknowledge every second).
    min_replicas_max_lag_s: int = 2


def _settings(extra: Mapping[str, Any]) -> tuple[int, int, str]:
    """(WAIT replicas, min-replicas-to-write, appendfsync) from the run's target options."""
    wait = int(extra.get("redis_wait") or 0)
    min_replicas = int(extra.get("redis_min_replicas") or 0)
    appendfsync = str(extra.get("redis_appendfsync") or "everysec")
    return wait, min_replicas, appendfsync


def redis_conf(
    node: str, cluster: ClusterSpec, data_dir: str, timing: SentinelTiming = SentinelTiming()
) -> str:
    """The server's configuration: n1 starts as the primary, the others as its replicas."""
    _, min_replicas, appendfsync = _settings(cluster.extra)
    lines = [
        f"bind {cluster.addresses[node]}",
        f"port {REDIS_PORT}",
        "protected-mode no",
        "daemonize no",
        f"dir {data_dir}",
        "appendonly yes",
        f"appendfsync {appendfsync}",
        'save ""',
        "repl-ping-replica-period 1",
        "repl-timeout 5",
        f"min-replicas-to-write {min_replicas}",
        f"min-replicas-max-lag {timing.min_replicas_max_lag_s}",
    ]
    first = cluster.nodes[0]
    if node != first:
        lines.append(f"replicaof {cluster.addresses[first]} {REDIS_PORT}")
    return "\n".join(lines)


def sentinel_conf(
    node: str, cluster: ClusterSpec, data_dir: str, timing: SentinelTiming = SentinelTiming()
) -> str:
    """The Sentinel's configuration: watch n1 with a majority quorum."""
    quorum = len(cluster.nodes) // 2 + 1
    first = cluster.addresses[cluster.nodes[0]]
    return "\n".join([
        f"bind {cluster.addresses[node]}",
        f"port {SENTINEL_PORT}",
        "protected-mode no",
        "daemonize no",
        f"dir {data_dir}",
        f"sentinel monitor {MASTER_NAME} {first} {REDIS_PORT} {quorum}",
        f"sentinel down-after-milliseconds {MASTER_NAME} {timing.down_after_ms}",
        f"sentinel failover-timeout {MASTER_NAME} {timing.failover_timeout_ms}",
        f"sentinel parallel-syncs {MASTER_NAME} 1",
    ])  # fmt: skip


class _Refused(Exception):
    """Nothing was sent: the op certainly did not happen."""


class _Lost(Exception):
    """The command was sent and no answer came: it may have happened."""

    def __init__(self, message: str, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class _Link:
    """One connection to one address, opened on demand and dropped after any error, so a
    command never reads another's late answer. Every call is bounded by `timeout_s`."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.address = f"{host}:{port}"
        self._timeout_s = timeout_s
        self._conn = Connection(
            host=host, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, protocol=2,
            driver_info=None, decode_responses=True,
        )  # fmt: skip

    async def call(self, *args: Any) -> Any:
        """The answer to one command; ResponseError as Redis sent it, _Refused when no
        connection could be made, _Lost when the command was sent and no answer came."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._conn.connect()
        except (RedisError, OSError, TimeoutError) as exc:
            await self.drop()
            raise _Refused(f"connect to {self.address}: {exc}") from None
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._conn.send_command(*args)
                return await self._conn.read_response()
        except ResponseError:
            raise
        except TimeoutError as exc:
            await self.drop()
            raise _Lost(f"{self.address}: no answer within {self._timeout_s} s ({exc})",
                        timed_out=True) from None  # fmt: skip
        except (RedisError, OSError) as exc:
            await self.drop()
            raise _Lost(f"{self.address}: connection lost after sending: {exc}",
                        timed_out=isinstance(exc, RedisTimeoutError)) from None  # fmt: skip

    async def drop(self) -> None:
        try:
            await self._conn.disconnect(nowait=True)
        except (RedisError, OSError):
            pass


def _refused_before_executing(error: ResponseError) -> bool:
    return str(error).split(" ", 1)[0].upper() in REFUSED_PREFIXES


class RedisClient:
    """A client bound to one node; see the module docstring for how outcomes map."""

    def __init__(self, cluster: ClusterSpec, node: str) -> None:
        self._cluster = cluster
        self._node = node
        self._timeout_s = cluster.op_timeout_s
        self._wait, _, _ = _settings(cluster.extra)
        self._replica_reads = cluster.read_mode == "replica"
        self._sets = cluster.workload == "set"
        self._sentinel = _Link(cluster.addresses[node], SENTINEL_PORT, self._timeout_s)
        self._links: dict[str, _Link] = {}

    def _link(self, host: str) -> _Link:
        if host not in self._links:
            self._links[host] = _Link(host, REDIS_PORT, self._timeout_s)
        return self._links[host]

    async def primary(self) -> str:
        """The primary's address as this node's Sentinel knows it; _Refused if unknown."""
        try:
            answer = await self._sentinel.call("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        except _Lost as exc:  # asking changes nothing
            raise _Refused(f"sentinel: {exc}") from None
        except ResponseError as exc:
            raise _Refused(f"sentinel: {exc}") from None
        if not answer:
            raise _Refused("sentinel knows no primary")
        return str(answer[0])

    async def invoke(self, op: Invocation) -> Completion:
        try:
            return await self._invoke(op)
        except _Refused as exc:
            if "refused" in str(exc).lower():
                # A node that is down refuses at once: pace the retries of its clients.
                await asyncio.sleep(REFUSED_BACKOFF_S)
            return Completion("fail", value=op.value, error=str(exc))
        except _Lost as exc:
            if op.f == "read" and not exc.timed_out:
                return Completion("fail", error=str(exc))
            return Completion("info", value=op.value, error=f"indeterminate: {exc}")
        except ResponseError as exc:
            if op.f == "read" or _refused_before_executing(exc):
                return Completion("fail", value=op.value, error=str(exc))
            return Completion("info", value=op.value, error=f"indeterminate: {exc}")

    async def _invoke(self, op: Invocation) -> Completion:
        key = str(op.key)
        if op.f == "read":
            host = self._cluster.addresses[self._node] if self._replica_reads else None
            link = self._link(host or await self.primary())
            if self._sets:
                members = await link.call("SMEMBERS", key)
                return Completion("ok", value=sorted(int(m) for m in members))
            text = await link.call("GET", key)
            return Completion("ok", value=None if text is None else json.loads(text))
        link = self._link(await self.primary())
        if op.f == "add":
            await link.call("SADD", key, str(op.value))
        elif op.f == "write":
            await link.call("SET", key, json.dumps(op.value))
        elif op.f == "cas":
            old, new = op.value
            flag, old_text = ("1", "") if old is None else ("0", json.dumps(old))
            swapped = await link.call("EVAL", CAS_SCRIPT, 1, key, flag, old_text, json.dumps(new))
            if int(swapped) != 1:
                return Completion("fail", value=op.value, error="cas mismatch")
        else:
            raise ValueError(f"redis cannot run op {op.f!r}")
        return await self._waited(link, op)

    async def _waited(self, link: _Link, op: Invocation) -> Completion:
        """`ok`, or `info` when WAIT saw fewer replicas than asked for."""
        if self._wait == 0:
            return Completion("ok", value=op.value)
        wait_ms = max(1, int(self._timeout_s * 500))  # half the op's deadline
        try:
            acked = int(await link.call("WAIT", self._wait, wait_ms))
        except (_Lost, ResponseError) as exc:
            return Completion("info", value=op.value, error=f"indeterminate: WAIT: {exc}")
        if acked < self._wait:
            error = f"indeterminate: WAIT: {acked} of {self._wait} replicas"
            return Completion("info", value=op.value, error=error)
        return Completion("ok", value=op.value)

    async def close(self) -> None:
        await self._sentinel.drop()
        for link in self._links.values():
            await link.drop()


async def _ask(host: str, port: int, *args: Any) -> Any:
    """One command to one address with a fresh connection; any failure is an exception."""
    link = _Link(host, port, STATUS_TIMEOUT_S)
    try:
        return await link.call(*args)
    finally:
        await link.drop()


def _pairs(answer: Any) -> dict[str, str]:
    """A RESP2 flat list of field, value, ... as a dict."""
    if isinstance(answer, dict):
        return {str(k): str(v) for k, v in answer.items()}
    items = list(answer or [])
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}


class RedisTarget(
    ValidatesOptions,
    HasSets,
    SwapsForPreload,
    KeepsData,
    ChecksNodes,
    WaitsReady,
    ReportsLeaderTerm,
    NamesLinearizableReads,
):
    """Redis 7.0 with Sentinel (Debian's): asynchronous replication, failover by Sentinel."""

    name = "redis"
    read_modes: tuple[str, ...] = ("primary", "replica")
    default_read_mode = "primary"
    # Neither promises linearizability: a failover can lose acknowledged writes.
    linearizable_read_modes: tuple[str, ...] = ()
    bugs: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ("kv", "register", "set")

    def __init__(self, timing: SentinelTiming = SentinelTiming()) -> None:
        self.timing = timing

    preload_program = PreloadProgram(
        REDIS_LIBC,
        "Debian's redis-server is linked with jemalloc, which cannot start under libfaketime; "
        "`make redis-libc` (root) builds Debian's Redis with libc malloc there, "
        "from Debian's source package (tools/build_redis_libc)",
    )

    def validate_options(self, extra: dict[str, Any], nodes: int, backend: str) -> None:
        wait, min_replicas, appendfsync = _settings(extra)
        for flag, value in (("--redis-wait", wait), ("--redis-min-replicas", min_replicas)):
            if not 0 <= value <= nodes - 1:
                raise ValueError(f"{flag} {value}: a cluster of {nodes} has {nodes - 1} "
                                 "replicas")  # fmt: skip
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"--redis-appendfsync is one of {', '.join(APPENDFSYNC)}")

    def data_dir(self, cluster: ClusterSpec, node: str) -> str:
        return f"{cluster.data_root}/{node}.redis"

    def node_argv(self, node: str, cluster: ClusterSpec) -> list[str]:
        data_dir = self.data_dir(cluster, node)
        return [
            "sh", "-c", NODE_SCRIPT, "redis-node", data_dir,
            redis_conf(node, cluster, data_dir, self.timing),
            sentinel_conf(node, cluster, data_dir, self.timing), REDIS_LIBC,
        ]  # fmt: skip

    def check_nodes(self, cluster: ClusterSpec, remotes: Mapping[str, Remote]) -> None:
        """Both programs on every node, else TargetSetupError naming the node."""
        for node, remote in remotes.items():
            for program in PROGRAMS:
                argv = ["sh", "-c", f"command -v {program}"]
                try:
                    found = remote.execute(argv, CHECK_TIMEOUT_S, False).returncode == 0
                except RemoteError as exc:
                    raise TargetSetupError(f"{node} ({remote.address}): cannot look for "
                                           f"{program}: {exc}") from None  # fmt: skip
                if not found:
                    raise TargetSetupError(
                        f"{node} ({remote.address}) has no {program}: install Debian's "
                        f"redis-server and redis-sentinel there (apt-get install "
                        "redis-server redis-sentinel)"
                    )

    async def wait_ready(self, cluster: ClusterSpec) -> None:
        """Every server and Sentinel answers, and every Sentinel knows the others and the
        replicas (a failover needs votes from Sentinels that found each other)."""
        others = len(cluster.nodes) - 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        missing: list[str] = list(cluster.nodes)
        while loop.time() < deadline:
            answers = await asyncio.gather(
                *(self._node_ready(cluster, n, others) for n in cluster.nodes)
            )
            missing = [n for n, ok in zip(cluster.nodes, answers) if not ok]
            if not missing:
                return
            await asyncio.sleep(0.2)
        raise TargetSetupError(
            f"redis: {', '.join(missing)} not ready within {READY_TIMEOUT_S:.0f} s "
            "(see nodes/<node>/ logs)"
        )

    async def _node_ready(self, cluster: ClusterSpec, node: str, others: int) -> bool:
        host = cluster.addresses[node]
        try:
            await _ask(host, REDIS_PORT, "PING")
            master = _pairs(await _ask(host, SENTINEL_PORT, "SENTINEL", "master", MASTER_NAME))
        except (_Refused, _Lost, ResponseError):
            return False
        return (
            int(master.get("num-other-sentinels", 0)) >= others
            and int(master.get("num-slaves", 0)) >= others
        )

    def client(self, cluster: ClusterSpec, node: str) -> RedisClient:
        return RedisClient(cluster, node)

    async def leader(self, cluster: ClusterSpec) -> str | None:
        leader, _ = await self.leader_term(cluster)
        return leader

    async def leader_term(self, cluster: ClusterSpec) -> tuple[str | None, int | None]:
        """The primary a majority of the Sentinels names, and the highest config epoch
        among them (None, None without a majority)."""
        by_address = {cluster.addresses[n]: n for n in cluster.slots}

        async def view(node: str) -> tuple[str, int] | None:
            try:
                answer = await _ask(cluster.addresses[node], SENTINEL_PORT,
                                    "SENTINEL", "master", MASTER_NAME)  # fmt: skip
            except (_Refused, _Lost, ResponseError):
                return None
            master = _pairs(answer)
            return master.get("ip", ""), int(master.get("config-epoch", 0))

        views = [v for v in await asyncio.gather(*(view(n) for n in cluster.nodes)) if v]
        counts = Counter(ip for ip, _ in views)
        majority = len(cluster.nodes) // 2 + 1
        for ip, count in counts.most_common(1):
            if count >= majority and ip in by_address:
                epoch = max(e for i, e in views if i == ip)
                return by_address[ip], epoch
        return None, None
