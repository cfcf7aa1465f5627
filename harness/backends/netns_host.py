"""The netns backend's commands on this host: `ip` and `iptables` listings, the subnet
choice, the Remotes of the root namespace and of a node's, and removal of what a run made.

Every command is bounded (`HOST_COMMAND_TIMEOUT_S`); a failure is a BackendError.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from functools import partial

from harness.backends.base import BackendError
from harness.backends.local import execute_on_host, run_bounded
from nemesis import iptables
from nemesis.remote import ExecResult, RemoteError

__all__ = [
    "HOST_COMMAND_TIMEOUT_S",
    "HostRemote",
    "NetnsRemote",
    "forward_chains",
    "host",
    "links",
    "namespaces",
    "pick_subnet",
    "remove",
]

HOST_COMMAND_TIMEOUT_S = 10.0


def host(argv: Sequence[str], ok: Sequence[int] = (0,)) -> ExecResult:
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
    out = host(argv).stdout.strip()
    parsed = json.loads(out) if out else []
    return [item for item in parsed if isinstance(item, dict)]


def namespaces() -> list[str]:
    """The names of this host's network namespaces."""
    return [str(ns["name"]) for ns in _json_list(["ip", "-j", "netns", "list"])]


def links() -> list[str]:
    """The names of the root namespace's network interfaces."""
    return [str(link["ifname"]) for link in _json_list(["ip", "-j", "link", "show"])]


def forward_chains() -> list[str]:
    """Chains defined in the host's filter table (`-N NAME` lines of `iptables -S`)."""
    out = host(iptables.list_argv()).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("-N ")]


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


def pick_subnet(pool: str) -> ipaddress.IPv4Network:
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


def _kill_namespace_processes(namespace: str) -> list[int]:
    """SIGKILL every process in the namespace and wait (bounded) until they are gone."""
    pids = [int(p) for p in host(["ip", "netns", "pids", namespace]).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(100):
        if not host(["ip", "netns", "pids", namespace]).stdout.split():
            break
        time.sleep(0.05)
    return pids


def remove(namespaces_: Sequence[str], links_: Sequence[str], chains: Sequence[str]) -> list[str]:
    """Remove what exists of the given namespaces, links and FORWARD chains; errors as text.

    Order: processes, then links (a veth goes with its peer at once, whereas a deleted
    namespace's devices vanish later, in the background), then namespaces, then chains.
    """
    errors: list[str] = []
    try:
        present_ns = [ns for ns in namespaces() if ns in set(namespaces_)]
        present_links = [link for link in links() if link in set(links_)]
    except BackendError as exc:
        return [str(exc)]
    for ns in present_ns:
        errors += _attempt(partial(_kill_namespace_processes, ns))
    for link in sorted(present_links, key=lambda name: name.endswith("-br")):
        errors += _attempt(partial(host, ["ip", "link", "delete", link]), links, link)
    for ns in present_ns:
        errors += _attempt(partial(host, ["ip", "netns", "delete", ns]), namespaces, ns)
    root = HostRemote()
    for chain in chains:
        try:
            iptables.remove(root, chain, "FORWARD")
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
