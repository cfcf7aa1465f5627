"""The `--node-cmd` of the http target: a node's command line with placeholders.

The user gives the command that runs one node; the harness fills in, per node, the
placeholders of `PLACEHOLDERS` (`{id}`, `{host}`, `{port}`, `{peers}`, ...). `{{` and `}}`
stand for braces. The command is split as a shell would split it but never run by one;
`--node-env NAME=VALUE` pairs go in front of it through `env`. The node listens for HTTP on
`{host}:{port}` (`http_address`) and for its peers on `{peer_port}`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.backends.base import BackendError
from harness.targets.base import ClusterSpec, TargetSetupError
from nemesis.remote import CommandNotFoundError, Remote, RemoteError

__all__ = [
    "HTTP_PORT",
    "PEER_PORT",
    "PLACEHOLDERS",
    "NodeCommand",
    "check_options",
    "check_program",
    "http_address",
]

HTTP_PORT = 8001
PEER_PORT = 7001
LOOKUP_TIMEOUT_S = 15.0

PLACEHOLDERS: dict[str, str] = {
    "id": "the node's name (n1, n2, ...)",
    "host": "the node's address",
    "port": "the node's HTTP port, where the harness's clients connect",
    "peer_port": "a second port for the node's traffic between peers",
    "peers": "every node as id=host:peer_port, comma-separated",
    "http_peers": "every node as http://host:port, comma-separated",
    "data_dir": "a directory of the node's own (the node creates it)",
    "python": "the Python interpreter on the node",
}
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class NodeCommand:
    """A parsed `--node-cmd` (argv elements with placeholders) and `--node-env` pairs."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, command: str, env: Sequence[str] = (), nodes: int = 3) -> NodeCommand:
        """Split `command` as a shell would (it is never run by one) and check it; raises
        ValueError naming what is wrong."""
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise ValueError(f"--node-cmd cannot be split: {exc}") from None
        if not argv:
            raise ValueError("--node-cmd is empty")
        used: set[str] = set()
        for arg in argv:
            used |= _fields(arg)
        unknown = sorted(used - PLACEHOLDERS.keys())
        if unknown:
            raise ValueError(
                f"--node-cmd has unknown placeholders {', '.join('{' + u + '}' for u in unknown)}"
                f"; known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        if "port" not in used:
            raise ValueError("--node-cmd must contain {port}: the node's HTTP port")
        if nodes > 1 and not used & {"peers", "http_peers"}:
            raise ValueError("--node-cmd must tell a node its peers with {peers} or {http_peers}")
        pairs = []
        for item in env:
            name, sep, value = item.partition("=")
            if not sep or not _ENV_NAME.fullmatch(name):
                raise ValueError(f"--node-env {item!r} is not NAME=VALUE")
            pairs.append((name, value))
        return cls(argv, tuple(pairs))

    def render(self, node: str, cluster: ClusterSpec) -> list[str]:
        """The argv that runs `node` (behind `env NAME=VALUE ...` when env is set)."""
        values = _values(node, cluster)
        argv = [_substitute(arg, values) for arg in self.argv]
        if self.env:
            return ["env", *(f"{k}={v}" for k, v in self.env), *argv]
        return argv

    def program(self, node: str, cluster: ClusterSpec) -> str:
        """The program that runs `node` (the first word, placeholders filled in)."""
        return _substitute(self.argv[0], _values(node, cluster))


def _values(node: str, cluster: ClusterSpec) -> dict[str, str]:
    """What each placeholder stands for on `node`."""
    return {
        "id": node,
        "host": cluster.addresses[node],
        "port": str(_http_port(cluster)),
        "peer_port": str(PEER_PORT),
        "peers": ",".join(f"{n}={cluster.addresses[n]}:{PEER_PORT}" for n in cluster.nodes),
        "http_peers": ",".join(f"http://{http_address(cluster, n)}" for n in cluster.nodes),
        "data_dir": data_dir(cluster, node),
        "python": cluster.python,
    }


def data_dir(cluster: ClusterSpec, node: str) -> str:
    """The `{data_dir}` of `node`: the directory it keeps its data in."""
    return f"{cluster.data_root}/{node}"


def _fields(arg: str) -> set[str]:
    return {m.group(1) for m in _FIELD.finditer(arg) if m.group(1) is not None}


def _substitute(arg: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        return values[name]

    return _FIELD.sub(one, arg)


def check_options(extra: dict[str, Any], nodes: int, backend: str) -> NodeCommand:
    """Check the http target's options before anything is made; ValueError says what is
    wrong. On netns (the host's filesystem) the command must exist here; other backends'
    nodes are asked once they exist (`check_program`)."""
    command = extra.get("node_cmd")
    if not command:
        raise ValueError("--target http needs --node-cmd: the command that starts one node")
    parsed = NodeCommand.parse(command, extra.get("node_env", ()), nodes)
    if backend == "netns":
        program = _substitute(
            parsed.argv[0], {p: "" for p in PLACEHOLDERS} | {"python": sys.executable}
        )
        if shutil.which(program) is None:
            where = "" if os.sep in program else " on PATH"
            raise ValueError(f"--node-cmd: command {program!r} not found{where}")
    return parsed


def check_program(
    command: NodeCommand, cluster: ClusterSpec, remotes: Mapping[str, Remote]
) -> None:
    """TargetSetupError, naming the nodes and the command, unless the command's program is
    found on every node (`command -v` there, through the backend's Remote)."""
    missing = []
    for node in cluster.nodes:
        program = command.program(node, cluster)
        # Prints the program's path if found; exits 0 either way (sh's own 127 stays apart).
        lookup = ["sh", "-c", 'command -v "$1" || true', "sh", program]
        try:
            found = bool(remotes[node].execute(lookup, LOOKUP_TIMEOUT_S).stdout.strip())
        except CommandNotFoundError:  # not even sh there
            found = False
        except RemoteError as exc:
            raise BackendError(f"{node}: cannot look for {program!r}: {exc.reason}") from None
        if not found:
            missing.append(f"{node} ({cluster.addresses[node]})")
    if missing:
        raise TargetSetupError(
            f"--node-cmd: command {command.program(cluster.nodes[0], cluster)!r} not found "
            f"on {', '.join(missing)}"
        )


def _http_port(cluster: ClusterSpec) -> int:
    return int(cluster.extra.get("http_port", HTTP_PORT))


def http_address(cluster: ClusterSpec, node: str) -> str:
    """Where `node` answers HTTP: `{host}:{port}` of its command."""
    return f"{cluster.addresses[node]}:{_http_port(cluster)}"
