"""The docker backend (the default): one container per node, on a network of the run's own.

Layout for run id `3fa2` with nodes n1..n3 (everything carries the labels `jepsen-py.run=3fa2`
and `jepsen-py.owner=<host>:<harness pid>:<its start time>`, so `cleanup_leftovers` finds what
a killed run left behind and spares runs still going):

    network jepsen-py-3fa2        user-defined bridge, subnet 10.78.K.0/24, gateway .1 (the
                                  harness host: clients run there and reach every node);
                                  internal: no route out of it
    container jepsen-py-3fa2-n1   10.78.K.11, image jepsen-py/raftkv:<hash>, NET_ADMIN only
    ...       jepsen-py-3fa2-n3   10.78.K.13

The subnet is the first /24 of the pool that no Docker network and no host route uses; when
another run takes it first, the engine refuses and the next one is tried.

In a container, `docker-init` is PID 1 and the container's command only waits. raftkv runs
beside it, started through `docker exec raftkv-node start ARGV` (docker/node.sh keeps its pid
in a file), so SIGKILL, SIGSTOP and a restart of raftkv leave the container, its address, its
firewall rules and its data directory in place. Partitions are iptables rules inside the
containers (hence NET_ADMIN; never privileged, and no-new-privileges, a memory limit and a
pids limit on every container). raftkv's output goes to a log file inside
the container, copied into the store by `fetch_logs`.

Everything is removed by `teardown()` (also at interpreter exit if nobody called it) and, for
runs that were killed, by `cleanup_leftovers()`. The image stays: it is cached by content.

A user's image (`user_image`, `harness test --image`) runs as it is, never built or pulled.
Its entrypoint and command are replaced by our supervisor, copied in before the container
starts (`/jepsen-py/node.sh`, run by `/bin/sh` as root, so the image needs only /bin/sh and
basic tools: `timeout`, `sed`, `cat`...), so start, kill, pause and restart work as above.
Such an image may have no iptables, so its containers get no NET_ADMIN and partitions are
made from this host instead: `UserImageRemote` runs `iptables` argv lists under
`nsenter --net=/proc/<container pid>/ns/net` (root, nsenter and iptables here; the engine on
this host) and everything else through `docker exec`. Always from the host for a user's
image, whether it has iptables or not: one way, and no capability for the container. The
nemesis does not know: it builds the same argv lists and calls `Remote.execute` as for any
node. The rules die with the container's namespace.
"""

from __future__ import annotations

import contextlib
import functools
import io
import ipaddress
import logging
import os
import re
import secrets
import shutil
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from docker.client import DockerClient
from docker.errors import APIError, DockerException, NotFound
from docker.types import IPAMConfig, IPAMPool

from harness.backends.base import BackendError, BackendUnavailable, TeardownOnExit
from harness.backends.local import execute_on_host
from harness.backends.owner import current_owner, owner_alive
from harness.image import OnBuildStep, connect, ensure_image, source_root
from nemesis.iptables import IPTABLES
from nemesis.remote import (
    CommandNotFoundError,
    ExecResult,
    Remote,
    RemoteError,
    RemoteTimeoutError,
)

__all__ = [
    "DATA_ROOT",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_PIDS_LIMIT",
    "DEFAULT_POOL",
    "LABEL_RUN",
    "DockerBackend",
    "DockerRemote",
    "UserImageRemote",
    "check_host_firewall",
    "cleanup_leftovers",
    "find_user_image",
]

log = logging.getLogger(__name__)

PREFIX = "jepsen-py"
LABEL_RUN = "jepsen-py.run"
LABEL_NODE = "jepsen-py.node"
LABEL_OWNER = "jepsen-py.owner"
DEFAULT_POOL = "10.78.0.0/16"
FIRST_NODE_HOST = 11  # nodes get .11, .12, ...; .1 is the gateway (the harness host)
DATA_ROOT = "/var/lib/raftkv"
NODE_LOG = "/var/log/raftkv/raftkv.log"
PYTHON = "python3"
SUPERVISOR = "raftkv-node"
# A user's image gets our supervisor in a directory of our own at its root: every image has
# a root, while /usr/local/bin may be missing from a small one.
SHELL = "/bin/sh"
USER_SUPERVISOR_DIR = "jepsen-py"
USER_SUPERVISOR = f"/{USER_SUPERVISOR_DIR}/node.sh"
# What node.sh and DockerRemote run inside a user's image, besides the shell.
USER_IMAGE_TOOLS = ("timeout", "cat", "sed", "cut", "sleep", "date", "mkdir", "dirname")
NSENTER = "nsenter"
CONTROL_TIMEOUT_S = 15.0
# Per container, ours and a user's alike: a runaway node must not take the host's memory or
# pids with it; generous for a raftkv or etcd node.
DEFAULT_MEMORY_LIMIT_BYTES = 1 << 30
DEFAULT_PIDS_LIMIT = 1024
# `timeout` (coreutils) ends a command that outlives its budget: TERM, then KILL 1 s later.
_TIMEOUT_EXITS = (124, 137)
_NOT_FOUND_EXITS = (126, 127)
_NODE_RE = re.compile(r"^[A-Za-z0-9_]{1,16}$")
_RUN_RE = re.compile(r"^[0-9a-f]{4}$")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class DockerRemote:
    """`Remote` for a node container: `docker exec` of an argv list (never a shell string)."""

    def __init__(self, node: str, address: str, container: Any) -> None:
        self.node = node
        self.address = address
        self._container = container

    def execute(self, argv: Sequence[str], timeout: float, check: bool = True) -> ExecResult:
        args = tuple(argv)
        if not args:
            raise ValueError("empty argv")
        wrapped = ["timeout", "-k", "1", f"{timeout:.3f}", *args]
        try:
            raw = self._container.exec_run(
                wrapped, stdout=True, stderr=True, stdin=False, tty=False, demux=True
            )
        except (APIError, DockerException, OSError) as exc:
            raise RemoteError(self.node, args, f"could not run: {_short(exc)}") from None
        out, err = raw.output if isinstance(raw.output, tuple) else (raw.output, b"")
        result = ExecResult(
            args,
            int(raw.exit_code if raw.exit_code is not None else -1),
            (out or b"").decode(errors="replace"),
            (err or b"").decode(errors="replace"),
        )
        if result.returncode in _TIMEOUT_EXITS:
            raise RemoteTimeoutError(self.node, args, f"timed out after {timeout} s", result)
        if result.returncode in _NOT_FOUND_EXITS:
            raise CommandNotFoundError(self.node, args, "failed: command not found", result)
        if check and result.returncode != 0:
            reason = f"exited {result.returncode}: {result.stderr.strip()[:500]}"
            raise RemoteError(self.node, args, reason, result)
        return result


class UserImageRemote(DockerRemote):
    """`Remote` for a container of a user's image: `iptables` runs on this host inside the
    container's network namespace (the image may have no iptables), the rest as in
    `DockerRemote`. `pid` is the container's main process, as the engine reports it."""

    def __init__(self, node: str, address: str, container: Any, pid: int) -> None:
        super().__init__(node, address, container)
        self._pid = pid

    def execute(self, argv: Sequence[str], timeout: float, check: bool = True) -> ExecResult:
        args = tuple(argv)
        if not args or args[0] != IPTABLES:
            return super().execute(args, timeout, check)
        problem = _host_firewall_problem() or self._netns_problem()
        if problem:
            raise RemoteError(self.node, args, f"failed: {problem}")
        wrapped = [NSENTER, f"--net=/proc/{self._pid}/ns/net", *args]
        result = execute_on_host(self.node, args, wrapped, timeout, check=False)
        # nsenter's own failures exit 1, as iptables does for "no such chain": tell them apart.
        if result.stderr.startswith(f"{NSENTER}:") or (check and result.returncode != 0):
            reason = f"exited {result.returncode}: {result.stderr.strip()[:500]}"
            raise RemoteError(self.node, args, reason, result)
        return result

    def _netns_problem(self) -> str | None:
        # Our supervisor in the process's root proves the pid is this container's on this
        # host; a remote engine's pid would name some other process here.
        if os.path.exists(f"/proc/{self._pid}/root{USER_SUPERVISOR}"):
            return None
        return (
            f"the container's process {self._pid} is not on this host (the Docker engine "
            "must run here for partitions of a user's image)"
        )


def _host_firewall_problem() -> str | None:
    """Why this host cannot apply a user image's partitions (None if it can)."""
    missing = [tool for tool in (NSENTER, IPTABLES) if shutil.which(tool) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed on the harness host (partitions of a "
            "user's image are made from here)"
        )
    if os.geteuid() != 0:
        return "partitions of a user's image are made from the harness host: it must run as root"
    return None


def check_host_firewall() -> None:
    """Raise BackendUnavailable if this host cannot partition containers of a user's image."""
    problem = _host_firewall_problem()
    if problem:
        raise BackendUnavailable(problem)


def find_user_image(client: DockerClient, name: str) -> Any:
    """The user's image `name` on this engine, never pulled; BackendUnavailable if absent."""
    try:
        return client.images.get(name)
    except NotFound:
        raise BackendUnavailable(
            f"image {name!r} is not on this Docker engine, and it is never pulled: build or "
            "load it first (docker build, docker load)"
        ) from None
    except (APIError, DockerException) as exc:
        raise BackendUnavailable(f"image {name!r}: {_short(exc)}") from None


def _supervisor_archive() -> bytes:
    """A tar of docker/node.sh as USER_SUPERVISOR, for put_archive at the container's root."""
    script = (source_root() / "docker" / "node.sh").read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        folder = tarfile.TarInfo(USER_SUPERVISOR_DIR)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(folder)
        member = tarfile.TarInfo(USER_SUPERVISOR.lstrip("/"))
        member.size, member.mode = len(script), 0o755
        archive.addfile(member, io.BytesIO(script))
    return buffer.getvalue()


def _install_supervisor(container: Any, image: str, archive: bytes) -> None:
    """Copy our supervisor into a created (not yet started) container of a user's image."""
    try:
        chunks, _ = container.get_archive(SHELL)
        for _ in chunks:  # read to the end: the answer holds the connection until then
            pass
    except NotFound:
        raise BackendUnavailable(
            f"image {image!r} has no {SHELL}: the docker backend runs its supervisor "
            f"(docker/node.sh) with {SHELL} and basic tools ({', '.join(USER_IMAGE_TOOLS)})"
        ) from None
    container.put_archive("/", archive)


def _check_user_tools(container: Any, image: str) -> None:
    """BackendUnavailable naming the tools our supervisor needs that the image lacks."""
    script = 'for t in "$@"; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done'
    try:
        raw = container.exec_run([SHELL, "-c", script, "sh", *USER_IMAGE_TOOLS], demux=False)
    except (APIError, DockerException) as exc:
        raise BackendError(f"docker: cannot run {SHELL} in {image}: {_short(exc)}") from None
    missing = (raw.output or b"").decode(errors="replace").split()
    if raw.exit_code != 0 or missing:
        raise BackendUnavailable(
            f"image {image!r} lacks {', '.join(missing) or 'a working ' + SHELL}: the docker "
            f"backend's supervisor needs {SHELL} and {', '.join(USER_IMAGE_TOOLS)}"
        )


def _host_routes() -> list[ipaddress.IPv4Network]:
    """IPv4 routes of this host (from /proc, no tool needed)."""
    nets: list[ipaddress.IPv4Network] = []
    with contextlib.suppress(OSError), open("/proc/net/route") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            dest, mask = (int(fields[1], 16), int(fields[7], 16))
            if mask == 0:
                continue
            addr = ipaddress.IPv4Address(dest.to_bytes(4, "little"))
            net_mask = ipaddress.IPv4Address(mask.to_bytes(4, "little"))
            nets.append(ipaddress.IPv4Network(f"{addr}/{net_mask}", strict=False))
    return nets


def _used_subnets(client: DockerClient) -> list[ipaddress.IPv4Network]:
    used = _host_routes()
    for net in client.api.networks():
        for config in (net.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, TypeError):
                subnet = ipaddress.ip_network(config.get("Subnet", ""), strict=False)
                if isinstance(subnet, ipaddress.IPv4Network):
                    used.append(subnet)
    return used


class DockerBackend(TeardownOnExit):
    """The `Backend` on Docker containers. See the module docstring for the layout.

    `run_id` (4 hex digits, random by default) names everything this instance makes.
    `base_image` replaces our debootstrap base when the node image must be built; `image`
    skips the build and uses that image (one of ours: it has raftkv-node). `user_image` runs
    a user's image as it is (see the module docstring); it goes with neither of the others.
    `progress` receives one line per build step. Every container is limited to
    `memory_limit_bytes` of memory (no swap beyond it) and `pids_limit` processes and
    threads, and runs with no-new-privileges. Thread-safe: faults may call it from worker
    threads.

    Nodes share no filesystem with the harness: `python` and `data_root` say where the
    interpreter and the data directories are inside the containers.
    """

    name = "docker"
    python = PYTHON
    data_root = DATA_ROOT

    def __init__(
        self,
        run_id: str | None = None,
        base_image: str | None = None,
        image: str | None = None,
        pool: str = DEFAULT_POOL,
        progress: OnBuildStep | None = None,
        user_image: str | None = None,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
    ) -> None:
        if user_image is not None and (image is not None or base_image is not None):
            raise ValueError("user_image goes with neither image nor base_image")
        self._random_id = run_id is None
        self.run_id = run_id if run_id is not None else secrets.token_hex(2)
        if not _RUN_RE.match(self.run_id):
            raise ValueError(f"run id must be 4 hex digits, got {self.run_id!r}")
        self.base_image = base_image
        self.image = image if user_image is None else user_image
        self.user_image = user_image
        # How to run our supervisor: installed in our image, copied into a user's.
        self._supervisor = (SUPERVISOR,) if user_image is None else (SHELL, USER_SUPERVISOR)
        self._pool = ipaddress.IPv4Network(pool)
        self._progress = progress
        self.memory_limit_bytes = memory_limit_bytes
        self.pids_limit = pids_limit
        self.subnet: ipaddress.IPv4Network | None = None
        self.nodes: list[str] = []
        self._client: DockerClient | None = None
        self._network: Any = None
        self._containers: dict[str, Any] = {}
        self._remotes: dict[str, DockerRemote] = {}
        self._argv: dict[str, tuple[str, ...]] = {}
        self._log_names: dict[str, str] = {}
        self._lock = threading.RLock()

    @property
    def network_name(self) -> str:
        return f"{PREFIX}-{self.run_id}"

    def container_name(self, node: str) -> str:
        return f"{PREFIX}-{self.run_id}-{node}"

    def _labels(self, node: str | None = None) -> dict[str, str]:
        labels = {LABEL_RUN: self.run_id, LABEL_OWNER: owner_label()}
        if node is not None:
            labels[LABEL_NODE] = node
        return labels

    def setup(self, nodes: Sequence[str]) -> None:
        """Image (built if needed), network, one started container per node."""
        _validate_nodes(nodes)
        with self._lock:
            if self.nodes:
                raise BackendError(f"docker run {self.run_id} is already set up")
            client = self._client or connect()
            self._client = client
            if self.user_image is not None:
                find_user_image(client, self.user_image)
            elif self.image is None:
                say = self._progress or (lambda line: log.info("image: %s", line))
                self.image = ensure_image(client, self.base_image, say).tag
            self._claim_run_id(client, nodes)
            self.nodes = list(nodes)
            self._arm_teardown_at_exit()
            try:
                self._make_network(client)
                self._make_containers(client)
                if self.user_image is not None:
                    _check_user_tools(self._containers[self.nodes[0]], self.user_image)
            except BaseException:
                self._teardown_at_exit()
                raise

    def _claim_run_id(self, client: DockerClient, nodes: Sequence[str]) -> None:
        """Make sure nothing of this run id exists (its teardown would remove another run's,
        and the engine refuses a name twice); a random id is drawn again while one is taken."""
        for _ in range(8):
            try:
                taken = self._taken(client, nodes)
            except (APIError, DockerException) as exc:
                raise BackendError(f"docker: cannot list containers: {_short(exc)}") from None
            if not taken:
                return
            if not self._random_id:
                raise BackendError(
                    f"docker run id {self.run_id} is in use: {', '.join(taken)}; choose "
                    "another, or run `harness cleanup` if it is a leftover"
                )
            self.run_id = secrets.token_hex(2)
        raise BackendError("no free docker run id found")

    def _taken(self, client: DockerClient, nodes: Sequence[str]) -> list[str]:
        """What exists of this run id: labelled with it, or named as this run's would be."""
        label = {"label": f"{LABEL_RUN}={self.run_id}"}
        names = {self.container_name(n) for n in nodes}
        containers = client.containers.list(all=True, filters=label)
        networks = client.networks.list(filters=label)
        # The engine's name filters match parts of names: keep the exact ones.
        by_name = client.containers.list(all=True, filters={"name": self.network_name})
        containers += [c for c in by_name if c.name in names]
        nets_by_name = client.networks.list(names=[self.network_name])
        networks += [n for n in nets_by_name if n.name == self.network_name]
        return sorted(
            {f"container {c.name}" for c in containers} | {f"network {n.name}" for n in networks}
        )

    def _make_network(self, client: DockerClient) -> None:
        used = _used_subnets(client)
        last_error = "no /24 left"
        for candidate in self._pool.subnets(new_prefix=24):
            if any(candidate.overlaps(u) for u in used):
                continue
            gateway = str(candidate.network_address + 1)
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(candidate), gateway=gateway)])
            try:
                self._network = client.networks.create(
                    self.network_name,
                    driver="bridge",
                    ipam=ipam,
                    labels=self._labels(),
                    check_duplicate=True,
                    attachable=False,
                    # No route out: nodes talk to each other and to the harness, nothing else.
                    internal=True,
                )
            except APIError as exc:
                # Another run (or anyone) took this subnet since we looked: try the next one.
                last_error = _short(exc)
                if "overlap" in last_error.lower():
                    continue
                raise BackendError(f"docker: cannot create network: {last_error}") from None
            self.subnet = candidate
            return
        raise BackendError(f"docker: no free /24 subnet in {self._pool}: {last_error}")

    def _make_containers(self, client: DockerClient) -> None:
        assert self.subnet is not None and self.image is not None
        image = client.images.get(self.image)  # never a pull: ensure_image made it here
        addresses = {
            node: str(self.subnet.network_address + FIRST_NODE_HOST + i)
            for i, node in enumerate(self.nodes)
        }

        archive = _supervisor_archive() if self.user_image is not None else b""

        def make(node: str) -> Any:
            endpoint = client.api.create_endpoint_config(ipv4_address=addresses[node])
            container = client.containers.create(
                image.id,
                name=self.container_name(node),
                hostname=node,
                labels=self._labels(node),
                privileged=False,
                init=True,
                detach=True,
                mem_limit=self.memory_limit_bytes,
                memswap_limit=self.memory_limit_bytes,
                pids_limit=self.pids_limit,
                # No setuid gain inside: iptables needs only NET_ADMIN, our supervisor root.
                security_opt=["no-new-privileges"],
                network=self.network_name,
                networking_config={self.network_name: endpoint},
                **self._container_options(),
            )
            # No lock here: setup() holds it while these threads run.
            made[node] = container
            if self.user_image is not None:
                _install_supervisor(container, self.user_image, archive)
            container.start()
            return container

        made: dict[str, Any] = {}
        errors = _in_parallel(make, self.nodes)
        self._containers.update(made)
        if errors:
            raise BackendError("docker: cannot start containers: " + "; ".join(errors))
        for node in self.nodes:
            self._remotes[node] = self._make_remote(node, addresses[node])

    def _container_options(self) -> dict[str, Any]:
        if self.user_image is None:
            return {"cap_add": ["NET_ADMIN"]}  # iptables inside, for partitions
        # Only our supervisor runs as the container's command; as root, since it keeps its
        # pid and log files in system directories (the image may name another user).
        return {"entrypoint": [SHELL, USER_SUPERVISOR], "command": ["idle"], "user": "0:0"}

    def _make_remote(self, node: str, address: str) -> DockerRemote:
        container = self._containers[node]
        if self.user_image is None:
            return DockerRemote(node, address, container)
        try:
            container.reload()
        except (APIError, DockerException) as exc:
            raise BackendError(f"docker: cannot inspect {container.name}: {_short(exc)}") from None
        return UserImageRemote(node, address, container, int(container.attrs["State"]["Pid"]))

    def remote(self, node: str) -> Remote:
        return self._remote(node)

    def _remote(self, node: str) -> DockerRemote:
        try:
            return self._remotes[node]
        except KeyError:
            raise ValueError(f"unknown node {node!r}; nodes: {self.nodes}") from None

    def _control(self, node: str, argv: Sequence[str], timeout: float = CONTROL_TIMEOUT_S) -> str:
        """Run raftkv-node in the node's container; RemoteError if it fails."""
        return self._remote(node).execute([*self._supervisor, *argv], timeout).stdout

    def start_process(self, node: str, argv: Sequence[str], log_path: str) -> None:
        """Start argv in the node's container; see `Backend.start_process`.

        `log_path` names the file `fetch_logs` writes; the process logs inside the container.
        """
        if not argv:
            raise ValueError("empty argv")
        self._remote(node)
        with self._lock:
            try:
                self._control(node, ["start", *argv])
            except RemoteError as exc:
                raise BackendError(f"{node}: cannot start {argv[0]!r}: {exc.reason}") from None
            self._argv[node] = tuple(argv)
            self._log_names[node] = Path(log_path).name

    def running(self, node: str) -> tuple[int, str] | None:
        """(pid, state letter) of the node's service, or None if it is not running."""
        status = [*self._supervisor, "status"]
        result = self._remote(node).execute(status, CONTROL_TIMEOUT_S, check=False)
        if result.returncode != 0:
            return None
        pid, state = result.stdout.split()
        return int(pid), state

    # As on netns: kill, pause, resume and stop of a node where nothing was ever started do
    # nothing, so a heal during an aborted startup stays quiet.
    def kill(self, node: str) -> None:
        with self._lock:
            if node in self._argv:
                self._control(node, ["kill"])

    def restart(self, node: str) -> None:
        with self._lock:
            argv = self._argv.get(node)
            if argv is None:
                self._remote(node)
                raise ValueError(f"restart of {node!r}, where no service was ever started")
            if self.running(node) is None:
                self._control(node, ["start", *argv])

    def pause(self, node: str) -> None:
        with self._lock:
            if node in self._argv:
                self._control(node, ["signal", "STOP"])

    def resume(self, node: str) -> None:
        with self._lock:
            if node in self._argv:
                self._control(node, ["signal", "CONT"])

    def stop_process(self, node: str, timeout: float) -> None:
        with self._lock:
            if node in self._argv:
                self._control(node, ["stop", str(max(1, round(timeout)))], timeout + 5)

    def write_private_file(self, node: str, path: str, data: bytes) -> None:
        """Copy `data` into the node's container as `path`, root's, mode 0600 (a tar
        member carries its mode in); see `Backend.write_private_file`."""
        parent = str(Path(path).parent)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            member = tarfile.TarInfo(Path(path).name)
            member.size, member.mode, member.uid, member.gid = len(data), 0o600, 0, 0
            archive.addfile(member, io.BytesIO(data))
        try:
            self._remote(node).execute(["mkdir", "-p", parent], CONTROL_TIMEOUT_S)
            if not self._containers[node].put_archive(parent, buffer.getvalue()):
                raise BackendError(f"{node}: cannot write {path}: the engine refused the copy")
        except RemoteError as exc:
            raise BackendError(f"{node}: cannot make {parent}: {exc.reason}") from None
        except (APIError, DockerException) as exc:
            raise BackendError(f"{node}: cannot write {path}: {_short(exc)}") from None

    def fetch_logs(self, node: str, dest_dir: str) -> None:
        """Copy the node's service log out of its container into dest_dir."""
        with self._lock:
            container = self._containers.get(node)
            name = self._log_names.get(node)
        if container is None or name is None:
            return
        try:
            chunks, _ = container.get_archive(NODE_LOG)
            data = b"".join(chunks)
        except (APIError, DockerException) as exc:
            log.warning("docker: no log from %s: %s", node, _short(exc))
            return
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = next((m for m in archive.getmembers() if m.isfile()), None)
            source = archive.extractfile(member) if member else None
            if source is None:
                return
            dest = Path(dest_dir)
            dest.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(source.read())

    def teardown(self) -> None:
        """Remove every container and the network (running processes die with them).

        Idempotent; things already gone are skipped. Raises BackendError after trying
        everything if something could not be removed.
        """
        with self._lock:
            errors: list[str] = []
            if self._client is not None:
                errors = _remove_run(self._client, self.run_id)
            self._containers.clear()
            self._remotes.clear()
            self._argv.clear()
            self._network = None
            self.nodes = []
            self._disarm_teardown_at_exit()
        if errors:
            raise BackendError("docker teardown incomplete: " + "; ".join(errors))


def _validate_nodes(nodes: Sequence[str]) -> None:
    if not nodes:
        raise ValueError("no nodes")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"duplicate node names in {list(nodes)}")
    for node in nodes:
        if not _NODE_RE.match(node):
            raise ValueError(f"node name {node!r} must be 1-16 letters, digits or _")


def _in_parallel(action: Callable[[str], object], items: Sequence[str]) -> list[str]:
    """Run action on every item at once; the errors, as text, of those that failed."""
    if not items:
        return []
    errors: list[str] = []

    def attempt(item: str, run: Callable[[], object]) -> None:
        try:
            run()
        except (APIError, DockerException, OSError) as exc:
            errors.append(f"{item}: {_short(exc)}")

    if sys.is_finalizing() or not threading.main_thread().is_alive():
        # At interpreter exit (the atexit teardown) no new thread may start: one by one.
        for item in items:
            attempt(item, functools.partial(action, item))
        return errors
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        futures = {item: pool.submit(action, item) for item in items}
        for item, future in futures.items():
            attempt(item, future.result)
    return errors


def _remove_container(container: Any) -> None:
    """Force-remove a container; one that another cleanup is removing already is waited for."""
    try:
        container.remove(force=True, v=True)
        return
    except NotFound:
        return
    except APIError as exc:
        if "already in progress" not in str(exc):
            raise
        busy = exc
    for _ in range(100):
        try:
            container.reload()
        except NotFound:
            return
        time.sleep(0.1)
    raise busy


def _remove_run(client: DockerClient, run_id: str | None) -> list[str]:
    """Remove the containers, then the networks, labelled with run_id (any run if None)."""
    label = LABEL_RUN if run_id is None else f"{LABEL_RUN}={run_id}"
    try:
        containers = client.containers.list(all=True, filters={"label": label})
    except (APIError, DockerException) as exc:
        return [f"cannot list containers: {_short(exc)}"]
    by_name = {c.name: c for c in containers}
    errors = _in_parallel(lambda name: _remove_container(by_name[name]), list(by_name))
    try:
        networks = client.networks.list(filters={"label": label})
    except (APIError, DockerException) as exc:
        return [*errors, f"cannot list networks: {_short(exc)}"]
    for network in networks:
        try:
            network.remove()
        except NotFound:
            pass
        except (APIError, DockerException) as exc:
            errors.append(f"network {network.name}: {_short(exc)}")
    return errors


def owner_label() -> str:
    """Who made a run: this host, the harness's pid and its start time (`backends.owner`);
    cleanup spares runs still going."""
    return current_owner()


def cleanup_leftovers(client: DockerClient | None = None) -> list[str]:
    """Remove the containers and networks of docker runs whose harness is gone (found by
    label: a run's owner is the host and pid that made it; runs still going are spared).

    Images stay (cached). Returns what it removed. Raises BackendUnavailable when no engine
    is reachable, BackendError if something could not be removed.
    """
    client = client or connect()
    try:
        containers = client.containers.list(all=True, filters={"label": LABEL_RUN})
        networks = client.networks.list(filters={"label": LABEL_RUN})
    except (APIError, DockerException) as exc:
        raise BackendError(f"docker: cannot list leftovers: {_short(exc)}") from None
    runs = {
        _label(thing, LABEL_RUN)
        for thing in [*containers, *networks]
        if not owner_alive(_label(thing, LABEL_OWNER))
    }
    errors = [error for run_id in sorted(runs) for error in _remove_run(client, run_id)]
    if errors:
        raise BackendError("docker cleanup incomplete: " + "; ".join(errors))
    return [f"container {c.name}" for c in containers if _label(c, LABEL_RUN) in runs] + [
        f"network {n.name}" for n in networks if _label(n, LABEL_RUN) in runs
    ]


def _label(thing: Any, name: str) -> str:
    """A label of a container or a network ("" if it has none)."""
    labels = thing.attrs.get("Labels") or (thing.attrs.get("Config") or {}).get("Labels") or {}
    return str(labels.get(name, ""))
