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

Services run as `ip netns exec <ns> argv...` under the supervisor every backend uses
(`backends.supervisor`), here as a child of the harness in a session of its own, its pid
file in `/run/harness-netns/<run id>/`; `ip` execs the service, so that pid is the
service's. Everything is removed by `teardown()`, which also runs at interpreter exit if
nobody called it.

Before it makes anything, a run records its owner (`backends.owner`: host, pid, start time)
in `/run/harness-netns/<run id>.owner`; the file also claims the run id. `cleanup_leftovers`
spares runs whose owner still runs, and removes the others, and runs with no record (made
before records were kept, or whose record is lost): nobody can tell that they still run.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from harness.backends.base import BackendError, BackendUnavailable
from harness.backends.common import validate_nodes
from harness.backends.netns_host import (
    HostRemote,
    NetnsRemote,
    forward_chains,
    host,
    links,
    namespaces,
    pick_subnet,
    remove,
)
from harness.backends.owner import current_owner, owner_alive, read_owner, write_owner
from harness.backends.supervisor import LocalSupervisor, SupervisedBackend
from nemesis import iptables
from nemesis.remote import RemoteError

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

PREFIX = "hns"
DEFAULT_POOL = "10.77.0.0/16"
FIRST_NODE_HOST = 11  # nodes get .11, .12, ...; .1 is the bridge (the harness host)
CONTROL_TIMEOUT_S = 10.0
_NS_RE = re.compile(rf"^{PREFIX}-(?P<run>[0-9a-f]{{4}})-[A-Za-z0-9_]{{1,7}}$")
_LINK_RE = re.compile(rf"^{PREFIX}(?P<run>[0-9a-f]{{4}})-[A-Za-z0-9_]{{1,7}}$")
_CHAIN_RE = re.compile(r"^HNS-(?P<run>[0-9a-f]{4})$")
_RECORD_RE = re.compile(r"^(?P<run>[0-9a-f]{4})\.owner$")
_STATE_RE = re.compile(r"^(?P<run>[0-9a-f]{4})$")
_NODE_MAX = 7
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


class NetnsBackend(SupervisedBackend[NetnsRemote]):
    """The `Backend` on network namespaces. See the module docstring for the layout.

    `run_id` (4 hex digits, random by default) names everything this instance makes;
    `subnet` (a /24 or larger, e.g. "10.77.5.0/24") overrides the automatic choice from
    `pool`. Thread-safe: faults may call it from worker threads.
    """

    name = "netns"

    def __init__(
        self, run_id: str | None = None, subnet: str | None = None, pool: str = DEFAULT_POOL
    ) -> None:
        super().__init__(run_id)
        self._subnet_arg = subnet
        self._pool = pool
        self.subnet: ipaddress.IPv4Network | None = None
        self._owner_recorded = False

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

    @property
    def state_dir(self) -> Path:
        """Where the supervisor keeps this run's pid files."""
        return OWNER_DIR / self.run_id

    def setup(self, nodes: Sequence[str]) -> None:
        """Create the bridge, a namespace per node and the veths; see `Backend.setup`."""
        check_available()
        why = f" (interface names are limited to {_IFNAMSIZ} characters)"
        validate_nodes(nodes, _NODE_MAX, why)
        with self._lock:
            if self.nodes:
                raise BackendError(f"netns run {self.run_id} is already set up")
            advice = "choose another, or run `harness cleanup` if it is a leftover"
            self._claim_run_id(lambda: self._claim(nodes), advice)
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

    def _claim(self, nodes: Sequence[str]) -> str | None:
        """Claim the run id by recording our owner under it, if none of its names exist
        (another run's teardown would be ours); else what holds it."""
        names = {self.bridge} | {self.namespace(n) for n in nodes} | {self.veth(n) for n in nodes}
        taken = sorted(names & (set(namespaces()) | set(links())))
        if self.forward_chain in forward_chains():
            taken.append(f"iptables chain {self.forward_chain}")
        if taken:
            return ", ".join(taken)
        OWNER_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._owner_recorded = write_owner(owner_record(self.run_id), current_owner())
        return None if self._owner_recorded else f"its owner record {owner_record(self.run_id)}"

    def _choose_subnet(self, count: int) -> ipaddress.IPv4Network:
        subnet = (
            ipaddress.IPv4Network(self._subnet_arg) if self._subnet_arg else pick_subnet(self._pool)
        )
        if subnet.num_addresses < FIRST_NODE_HOST + count + 1:
            raise ValueError(f"subnet {subnet} is too small for {count} nodes")
        return subnet

    def _make_bridge(self) -> None:
        assert self.subnet is not None
        cidr = f"{self.host_address}/{self.subnet.prefixlen}"
        host(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
        host(["ip", "addr", "add", cidr, "dev", self.bridge])
        host(["ip", "link", "set", self.bridge, "up"])
        root = HostRemote(self.host_address)
        rule = ["-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        try:
            iptables.set_rules(root, [rule], self.forward_chain, "FORWARD")
        except RemoteError as exc:
            raise BackendError(f"cannot let traffic through our bridge: {exc}") from exc

    def _make_node(self, node: str, address: str) -> None:
        assert self.subnet is not None
        ns, veth = self.namespace(node), self.veth(node)
        host(["ip", "netns", "add", ns])
        # Create the peer directly inside the namespace: "eth0" is taken in the root one.
        host(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        host(["ip", "link", "set", veth, "master", self.bridge])
        host(["ip", "link", "set", veth, "up"])
        host(["ip", "-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0"])
        host(["ip", "-n", ns, "link", "set", "eth0", "up"])
        host(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._remotes[node] = NetnsRemote(node, address, ns)

    def start_process(self, node: str, argv: Sequence[str], log_path: str) -> None:
        """Start argv inside the node's namespace; see `Backend.start_process`."""
        if not argv:
            raise ValueError("empty argv")
        if shutil.which(argv[0]) is None:
            raise BackendError(f"{node}: cannot start {argv[0]!r}: command not found")
        wrapped = ["ip", "netns", "exec", self._remote(node).namespace, *argv]
        pidfile = str(self.state_dir / f"{node}.pid")
        supervisor = LocalSupervisor(HostRemote(), wrapped, pidfile, log_path, CONTROL_TIMEOUT_S)
        with self._lock:
            self._start_service(node, supervisor, argv[0], log_path)

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
        if service is None or not os.path.exists(service.supervisor.log):
            return
        log_path = Path(service.supervisor.log)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / log_path.name
        if target.resolve() != log_path.resolve():
            shutil.copyfile(log_path, target)

    def teardown(self, stop_timeout_s: float = 3.0) -> None:
        """Stop every service, then remove namespaces, veths, bridge and FORWARD chain.

        Idempotent; things already gone are skipped. Raises BackendError after trying
        everything if something could not be removed.
        """
        with self._lock:
            errors = self._stop_services(stop_timeout_s)
            names = [self.namespace(n) for n in self.nodes]
            veths = [self.veth(n) for n in self.nodes] + [self.bridge]
            errors += remove(names, veths, [self.forward_chain])
            if self._owner_recorded:
                shutil.rmtree(self.state_dir, ignore_errors=True)
                owner_record(self.run_id).unlink(missing_ok=True)
                self._owner_recorded = False
            self._services.clear()
            self._remotes.clear()
            self.nodes = []
            self._disarm_teardown_at_exit()
        if errors:
            raise BackendError("netns teardown incomplete: " + "; ".join(errors))

    def _stop_services(self, timeout_s: float) -> list[str]:
        """Stop every service within one timeout; errors as text."""
        errors: list[str] = []
        # Signal every service first, so they all shut down in one timeout, not in turn.
        for node, service in self._services.items():
            try:
                service.supervisor.signal("TERM")
                service.supervisor.signal("CONT")
            except RemoteError as exc:
                errors.append(f"{node}: {exc}")
        deadline = time.monotonic() + timeout_s
        for node, service in self._services.items():
            try:
                service.supervisor.stop(max(0.1, deadline - time.monotonic()))
            except RemoteError as exc:
                errors.append(f"{node}: {exc}")
        return errors


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

    names = [ns for ns in namespaces() if leftover(_NS_RE.match(ns))]
    veths = [link for link in links() if leftover(_LINK_RE.match(link))]
    chains = [c for c in forward_chains() if leftover(_CHAIN_RE.match(c))]
    errors = remove(names, veths, chains)
    if errors:
        raise BackendError("cleanup incomplete: " + "; ".join(errors))
    for path in OWNER_DIR.glob("*") if OWNER_DIR.is_dir() else []:
        if path.is_dir() and leftover(_STATE_RE.match(path.name)):
            shutil.rmtree(path, ignore_errors=True)
        elif leftover(_RECORD_RE.match(path.name)):
            path.unlink(missing_ok=True)
    return (
        [f"namespace {ns}" for ns in names]
        + [f"link {link}" for link in veths]
        + [f"iptables chain {chain}" for chain in chains]
    )
