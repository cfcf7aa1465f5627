"""The netns backend: one Linux network namespace per node, on one host, as root.

Layout for run id `3fa2` with nodes n1..n3 (every name starts with `hns`, so leftovers of a
killed run can be found and removed by `cleanup_leftovers`):

    root namespace                              namespace hns-3fa2-n1
    bridge hns3fa2-br  10.77.K.1/24  <-- veth -->  hns3fa2-n1 | eth0 10.77.K.11/24, lo up
                                     <-- veth -->  ... n2: 10.77.K.12, n3: 10.77.K.13

The subnet is the first free /24 in 10.77.0.0/16 unless given. The harness host is on the
bridge (the .1 address), so clients running in the harness process reach every node.

When the host bridges through netfilter (br_netfilter, as Docker sets up) and its FORWARD
policy drops, frames between our veths would be dropped; a chain of our own, `HNS-<run id>`,
jumped to from the top of FORWARD, accepts exactly the traffic that stays on our bridge.

Services run as `ip netns exec <ns> argv...` in a session of their own; `ip` execs the
service, so the tracked pid is the service's. Everything is removed by `teardown()`, which
also runs at interpreter exit if nobody called it.

Before it makes anything, a run records its owner (`backends.owner`: host, pid, start time)
in `/run/harness-netns/<run id>.owner`; the file also claims the run id. `cleanup_leftovers`
spares runs whose owner still runs, and removes the others, and runs with no record (made
before records were kept, or whose record is lost): nobody can tell that they still run.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from harness.backends.base import BackendError, BackendUnavailable, TeardownOnExit
from harness.backends.local import ServiceProcess, execute_on_host, run_bounded
from harness.backends.owner import current_owner, owner_alive, read_owner, write_owner
from nemesis import iptables
from nemesis.remote import (
    ExecResult,
    Remote,
    RemoteError,
)

__all__ = [
    "DEFAULT_POOL",
    "PREFIX",
    "HostRemote",
    "NetnsBackend",
    "NetnsRemote",
    "check_available",
    "cleanup_leftovers",
    "owner_record",
]

log = logging.getLogger(__name__)

PREFIX = "hns"
DEFAULT_POOL = "10.77.0.0/16"
FIRST_NODE_HOST = 11  # nodes get .11, .12, ...; .1 is the bridge (the harness host)
HOST_COMMAND_TIMEOUT_S = 10.0
_NS_RE = re.compile(rf"^{PREFIX}-(?P<run>[0-9a-f]{{4}})-[A-Za-z0-9_]{{1,7}}$")
_LINK_RE = re.compile(rf"^{PREFIX}(?P<run>[0-9a-f]{{4}})-[A-Za-z0-9_]{{1,7}}$")
_CHAIN_RE = re.compile(r"^HNS-(?P<run>[0-9a-f]{4})$")
_RECORD_RE = re.compile(r"^(?P<run>[0-9a-f]{4})\.owner$")
_NODE_RE = re.compile(r"^[A-Za-z0-9_]{1,7}$")
_RUN_RE = re.compile(r"^[0-9a-f]{4}$")
_IFNAMSIZ = 15
# root's, on a tmpfs: records vanish at reboot, as the namespaces do.
OWNER_DIR = Path("/run/harness-netns")


def check_available() -> None:
    """Raise BackendUnavailable unless we are root and `ip` and `iptables` are installed."""
    if os.geteuid() != 0:
        raise BackendUnavailable("the netns backend needs root (run as root, or use docker)")
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    if missing:
        raise BackendUnavailable(
            f"the netns backend needs {' and '.join(missing)}: install iproute2 and iptables"
        )


def owner_record(run_id: str) -> Path:
    """The file naming the owner of netns run `run_id` (see the module docstring)."""
    return OWNER_DIR / f"{run_id}.owner"


def _host(argv: Sequence[str], ok: Sequence[int] = (0,)) -> ExecResult:
    """Run a command on the harness host; BackendError unless its exit code is in `ok`."""
    try:
        result = run_bounded(argv, HOST_COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"`{' '.join(argv)}` failed: {exc}") from exc
    if result.returncode not in ok:
        raise BackendError(
            f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()[:500]}"
        )
    return result


def _json_list(argv: Sequence[str]) -> list[dict[str, object]]:
    out = _host(argv).stdout.strip()
    parsed = json.loads(out) if out else []
    return [item for item in parsed if isinstance(item, dict)]


def _namespaces() -> list[str]:
    return [str(ns["name"]) for ns in _json_list(["ip", "-j", "netns", "list"])]


def _links() -> list[str]:
    return [str(link["ifname"]) for link in _json_list(["ip", "-j", "link", "show"])]


class NetnsRemote:
    """`Remote` for a node in a network namespace: runs `ip netns exec <namespace> argv`."""

    def __init__(self, node: str, address: str, namespace: str) -> None:
        self.node = node
        self.address = address
        self.namespace = namespace

    def execute(self, argv: Sequence[str], timeout: float, check: bool = True) -> ExecResult:
        wrapped = ["ip", "netns", "exec", self.namespace, *argv]
        return execute_on_host(self.node, argv, wrapped, timeout, check)


class HostRemote:
    """`Remote` for the harness host itself (the root namespace)."""

    def __init__(self, address: str = "", node: str = "host") -> None:
        self.node = node
        self.address = address

    def execute(self, argv: Sequence[str], timeout: float, check: bool = True) -> ExecResult:
        return execute_on_host(self.node, argv, argv, timeout, check)


def _pick_subnet(pool: str) -> ipaddress.IPv4Network:
    """The first /24 of `pool` that overlaps no address or route on this host."""
    used: list[ipaddress.IPv4Network] = []
    for iface in _json_list(["ip", "-j", "-4", "addr", "show"]):
        infos = iface.get("addr_info")
        for info in infos if isinstance(infos, list) else []:
            if isinstance(info, dict) and "local" in info:
                cidr = f"{info['local']}/{info.get('prefixlen', 32)}"
                used.append(ipaddress.IPv4Network(cidr, strict=False))
    for route in _json_list(["ip", "-j", "-4", "route", "show"]):
        dst = str(route.get("dst", "default"))
        if dst != "default":
            used.append(ipaddress.IPv4Network(dst, strict=False))
    for candidate in ipaddress.IPv4Network(pool).subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise BackendError(f"no free /24 left in {pool}")


class NetnsBackend(TeardownOnExit):
    """The `Backend` on network namespaces. See the module docstring for the layout.

    `run_id` (4 hex digits, random by default) names everything this instance makes;
    `subnet` (a /24 or larger, e.g. "10.77.5.0/24") overrides the automatic choice from
    `pool`. Thread-safe: faults may call it from worker threads.
    """

    name = "netns"

    def __init__(
        self, run_id: str | None = None, subnet: str | None = None, pool: str = DEFAULT_POOL
    ) -> None:
        self._random_id = run_id is None
        self.run_id = run_id if run_id is not None else secrets.token_hex(2)
        if not _RUN_RE.match(self.run_id):
            raise ValueError(f"run id must be 4 hex digits, got {self.run_id!r}")
        self._subnet_arg = subnet
        self._pool = pool
        self.subnet: ipaddress.IPv4Network | None = None
        self.nodes: list[str] = []
        self._remotes: dict[str, NetnsRemote] = {}
        self._services: dict[str, ServiceProcess] = {}
        self._owner_recorded = False
        self._lock = threading.RLock()

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.run_id}-br"

    @property
    def forward_chain(self) -> str:
        return f"HNS-{self.run_id}"

    def namespace(self, node: str) -> str:
        return f"{PREFIX}-{self.run_id}-{node}"

    def veth(self, node: str) -> str:
        return f"{PREFIX}{self.run_id}-{node}"

    @property
    def host_address(self) -> str:
        """The harness host's address on the bridge (nodes see clients come from here)."""
        assert self.subnet is not None, "setup() first"
        return str(self.subnet.network_address + 1)

    def setup(self, nodes: Sequence[str]) -> None:
        """Create the bridge, a namespace per node and the veths; see `Backend.setup`."""
        check_available()
        self._validate_nodes(nodes)
        with self._lock:
            if self.nodes:
                raise BackendError(f"netns run {self.run_id} is already set up")
            self._claim_run_id(nodes)
            self.nodes = list(nodes)
            self._arm_teardown_at_exit()
            try:
                self.subnet = self._choose_subnet(len(nodes))
                self._make_bridge()
                for i, node in enumerate(self.nodes):
                    self._make_node(node, str(self.subnet.network_address + FIRST_NODE_HOST + i))
            except BaseException:
                self._teardown_at_exit()
                raise

    def _claim_run_id(self, nodes: Sequence[str]) -> None:
        """Claim a run id none of whose names exist (another run's teardown would be ours)
        by recording our owner under it; a random id is drawn again while one is taken."""
        for _ in range(8):
            taken = self._taken(nodes)
            if not taken and self._record_owner():
                return
            if not self._random_id:
                what = ", ".join(taken) or f"its owner record {owner_record(self.run_id)}"
                raise BackendError(
                    f"netns run id {self.run_id} is in use: {what}; "
                    "choose another, or run `harness cleanup` if it is a leftover"
                )
            self.run_id = secrets.token_hex(2)
        raise BackendError("no free netns run id found")

    def _taken(self, nodes: Sequence[str]) -> list[str]:
        """Which of this run's names exist already."""
        names = {self.bridge} | {self.namespace(n) for n in nodes} | {self.veth(n) for n in nodes}
        taken = sorted(names & (set(_namespaces()) | set(_links())))
        if self.forward_chain in _forward_chains():
            taken.append(f"iptables chain {self.forward_chain}")
        return taken

    def _record_owner(self) -> bool:
        OWNER_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._owner_recorded = write_owner(owner_record(self.run_id), current_owner())
        return self._owner_recorded

    def _validate_nodes(self, nodes: Sequence[str]) -> None:
        if not nodes:
            raise ValueError("no nodes")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"duplicate node names in {list(nodes)}")
        for node in nodes:
            if not _NODE_RE.match(node):
                raise ValueError(
                    f"node name {node!r} must be 1-7 letters, digits or _ "
                    f"(interface names are limited to {_IFNAMSIZ} characters)"
                )

    def _choose_subnet(self, count: int) -> ipaddress.IPv4Network:
        subnet = (
            ipaddress.IPv4Network(self._subnet_arg)
            if self._subnet_arg
            else _pick_subnet(self._pool)
        )
        if subnet.num_addresses < FIRST_NODE_HOST + count + 1:
            raise ValueError(f"subnet {subnet} is too small for {count} nodes")
        return subnet

    def _make_bridge(self) -> None:
        assert self.subnet is not None
        cidr = f"{self.host_address}/{self.subnet.prefixlen}"
        _host(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
        _host(["ip", "addr", "add", cidr, "dev", self.bridge])
        _host(["ip", "link", "set", self.bridge, "up"])
        host = HostRemote(self.host_address)
        rule = ["-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        try:
            iptables.set_rules(host, [rule], self.forward_chain, "FORWARD")
        except RemoteError as exc:
            raise BackendError(f"cannot let traffic through our bridge: {exc}") from exc

    def _make_node(self, node: str, address: str) -> None:
        assert self.subnet is not None
        ns, veth = self.namespace(node), self.veth(node)
        _host(["ip", "netns", "add", ns])
        # Create the peer directly inside the namespace: "eth0" is taken in the root one.
        _host(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _host(["ip", "link", "set", veth, "master", self.bridge])
        _host(["ip", "link", "set", veth, "up"])
        _host(["ip", "-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0"])
        _host(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _host(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._remotes[node] = NetnsRemote(node, address, ns)

    def remote(self, node: str) -> Remote:
        return self._remote(node)

    def _remote(self, node: str) -> NetnsRemote:
        try:
            return self._remotes[node]
        except KeyError:
            raise ValueError(f"unknown node {node!r}; nodes: {self.nodes}") from None

    def start_process(self, node: str, argv: Sequence[str], log_path: str) -> None:
        """Start argv inside the node's namespace; see `Backend.start_process`."""
        if not argv:
            raise ValueError("empty argv")
        if shutil.which(argv[0]) is None:
            raise BackendError(f"{node}: cannot start {argv[0]!r}: command not found")
        wrapped = ["ip", "netns", "exec", self._remote(node).namespace, *argv]
        with self._lock:
            service = self._services.get(node)
            if service is not None and service.running():
                raise BackendError(f"{node}: a service is already running (pid {service.pid})")
            service = ServiceProcess(wrapped, log_path)
            try:
                service.start()
            except OSError as exc:
                raise BackendError(f"{node}: cannot start {argv[0]!r}: {exc}") from exc
            self._services[node] = service

    def _service(self, node: str) -> ServiceProcess | None:
        self._remote(node)
        return self._services.get(node)

    def pid(self, node: str) -> int | None:
        """The pid of the node's service if it runs, else None."""
        with self._lock:
            service = self._service(node)
            return service.pid if service else None

    # kill, pause, resume and stop of a node where nothing was ever started do nothing,
    # like on a dead service, so a heal during an aborted startup stays quiet.
    def kill(self, node: str) -> None:
        with self._lock:
            if service := self._service(node):
                service.kill()

    def restart(self, node: str) -> None:
        with self._lock:
            service = self._service(node)
            if service is None:
                raise ValueError(f"restart of {node!r}, where no service was ever started")
            if not service.running():
                try:
                    service.start()
                except OSError as exc:
                    raise RemoteError(node, service.argv, f"could not restart: {exc}") from exc

    def pause(self, node: str) -> None:
        with self._lock:
            if service := self._service(node):
                service.signal(signal.SIGSTOP)

    def resume(self, node: str) -> None:
        with self._lock:
            if service := self._service(node):
                service.signal(signal.SIGCONT)

    def stop_process(self, node: str, timeout: float) -> None:
        with self._lock:
            if service := self._service(node):
                service.stop(timeout)

    def write_private_file(self, node: str, path: str, data: bytes) -> None:
        """Write `data` to `path`, mode 0600 (the nodes share this host's files); see
        `Backend.write_private_file`."""
        self._remote(node)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            with os.fdopen(os.open(path, flags, 0o600), "wb") as f:
                os.fchmod(f.fileno(), 0o600)  # a file that was there keeps its mode otherwise
                f.write(data)
        except OSError as exc:
            raise BackendError(f"{node}: cannot write {path}: {exc}") from exc

    def fetch_logs(self, node: str, dest_dir: str) -> None:
        """Copy the node's service log into dest_dir (no-op if it is already there)."""
        with self._lock:
            service = self._services.get(node)
        if service is None or not os.path.exists(service.log_path):
            return
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / Path(service.log_path).name
        if target.resolve() != Path(service.log_path).resolve():
            shutil.copyfile(service.log_path, target)

    def teardown(self, stop_timeout_s: float = 3.0) -> None:
        """Stop every service, then remove namespaces, veths, bridge and FORWARD chain.

        Idempotent; things already gone are skipped. Raises BackendError after trying
        everything if something could not be removed.
        """
        with self._lock:
            errors: list[str] = []
            # Signal every service first, so they all shut down in one timeout, not in turn.
            for service in self._services.values():
                service.signal(signal.SIGTERM)
                service.signal(signal.SIGCONT)
            deadline = time.monotonic() + stop_timeout_s
            for node, service in self._services.items():
                try:
                    service.stop(max(0.05, deadline - time.monotonic()))
                except OSError as exc:
                    errors.append(f"{node}: {exc}")
            namespaces = [self.namespace(n) for n in self.nodes]
            links = [self.veth(n) for n in self.nodes] + [self.bridge]
            errors += _remove(namespaces, links, [self.forward_chain])
            if self._owner_recorded:
                owner_record(self.run_id).unlink(missing_ok=True)
                self._owner_recorded = False
            self._services.clear()
            self._remotes.clear()
            self.nodes = []
            self._disarm_teardown_at_exit()
        if errors:
            raise BackendError("netns teardown incomplete: " + "; ".join(errors))


def _kill_namespace_processes(namespace: str) -> list[int]:
    """SIGKILL every process in the namespace and wait (bounded) until they are gone."""
    pids = [int(p) for p in _host(["ip", "netns", "pids", namespace]).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(100):
        if not _host(["ip", "netns", "pids", namespace]).stdout.split():
            break
        time.sleep(0.05)
    return pids


def _remove(namespaces: Sequence[str], links: Sequence[str], chains: Sequence[str]) -> list[str]:
    """Remove what exists of the given namespaces, links and FORWARD chains; errors as text.

    Order: processes, then links (a veth goes with its peer at once, whereas a deleted
    namespace's devices vanish later, in the background), then namespaces, then chains.
    """
    errors: list[str] = []
    try:
        present_ns = [ns for ns in _namespaces() if ns in set(namespaces)]
        present_links = [link for link in _links() if link in set(links)]
    except BackendError as exc:
        return [str(exc)]
    for ns in present_ns:
        errors += _attempt(partial(_kill_namespace_processes, ns))
    for link in sorted(present_links, key=lambda name: name.endswith("-br")):
        errors += _attempt(partial(_host, ["ip", "link", "delete", link]), _links, link)
    for ns in present_ns:
        errors += _attempt(partial(_host, ["ip", "netns", "delete", ns]), _namespaces, ns)
    host = HostRemote()
    for chain in chains:
        try:
            iptables.remove(host, chain, "FORWARD")
        except RemoteError as exc:
            errors.append(str(exc))
    return errors


def _attempt(
    action: Callable[[], object],
    listing: Callable[[], list[str]] | None = None,
    name: str = "",
) -> list[str]:
    """Run action; a failure counts only if `name` is still in `listing()` afterwards."""
    try:
        action()
    except BackendError as exc:
        try:
            if listing is not None and name not in listing():
                return []
        except BackendError:
            pass
        return [str(exc)]
    return []


def cleanup_leftovers(run_id: str | None = None) -> list[str]:
    """Remove every namespace, veth, bridge, FORWARD chain (and the processes in those
    namespaces) that a netns run whose owner is gone left behind, found by our name prefix;
    only those of `run_id` if given. Runs whose owner still runs are spared; a run without
    an owner record is a leftover (see the module docstring).

    Returns what it removed, one description per item. Raises BackendUnavailable when not
    root or tools are missing, BackendError if something could not be removed.
    """
    check_available()
    alive: dict[str, bool] = {}

    def leftover(match: re.Match[str] | None) -> bool:
        if match is None or run_id not in (None, match["run"]):
            return False
        run = match["run"]
        if run not in alive:
            alive[run] = owner_alive(read_owner(owner_record(run)))
        return not alive[run]

    namespaces = [ns for ns in _namespaces() if leftover(_NS_RE.match(ns))]
    links = [link for link in _links() if leftover(_LINK_RE.match(link))]
    chains = [c for c in _forward_chains() if leftover(_CHAIN_RE.match(c))]
    errors = _remove(namespaces, links, chains)
    if errors:
        raise BackendError("cleanup incomplete: " + "; ".join(errors))
    for record in OWNER_DIR.glob("*.owner"):
        if leftover(_RECORD_RE.match(record.name)):
            record.unlink(missing_ok=True)
    return (
        [f"namespace {ns}" for ns in namespaces]
        + [f"link {link}" for link in links]
        + [f"iptables chain {chain}" for chain in chains]
    )


def _forward_chains() -> list[str]:
    """Chains defined in the host's filter table (`-N NAME` lines of `iptables -S`)."""
    out = _host(iptables.list_argv()).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("-N ")]
