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
beside it, started through `docker exec raftkv-node start ...` (our supervisor,
`backends/supervisor.sh`, installed in the image; it keeps the pid in a file), so SIGKILL,
SIGSTOP and a restart of raftkv leave the container, its address, its firewall rules and its
data directory in place. Partitions are iptables rules inside the
containers (hence NET_ADMIN; never privileged, and no-new-privileges, a memory limit and a
pids limit on every container). raftkv's output goes to a log file inside
the container, copied into the store by `fetch_logs`.

Everything is removed by `teardown()` (also at interpreter exit if nobody called it) and, for
runs that were killed, by `cleanup_leftovers()`. The image stays: it is cached by content.

A user's image (`user_image`, `harness test --image`) runs as it is, never built or pulled,
with our supervisor copied in and its partitions made from this host: see
`backends.docker_user`. A container whose image has no libfaketime (a user's, or ours on a
`base_image` without it) gets this host's copied in before it starts, for clock faults.

Directories of this host named with `bind_host_dir` before `setup` are bound into the
containers setup makes (power-loss: each node's lazy filesystem, mounted here).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from docker.client import DockerClient
from docker.errors import APIError, DockerException
from docker.types import IPAMConfig, IPAMPool, Mount

from harness.backends.base import BackendError
from harness.backends.common import validate_nodes
from harness.backends.docker_cleanup import (
    LABEL_NODE,
    LABEL_OWNER,
    LABEL_RUN,
    cleanup_leftovers,
    in_parallel,
    remove_run,
)
from harness.backends.docker_remote import DockerRemote
from harness.backends.docker_user import (
    SHELL,
    USER_SUPERVISOR,
    UserImageRemote,
    check_host_firewall,
    check_user_tools,
    faketime_archive,
    find_user_image,
    install_faketime,
    install_supervisor,
    supervisor_archive,
)
from harness.backends.owner import current_owner
from harness.backends.supervisor import SupervisedBackend, Supervisor
from harness.image import OnBuildStep, connect, ensure_image, short_error
from nemesis.remote import RemoteError

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
    "owner_label",
]

log = logging.getLogger(__name__)

PREFIX = "jepsen-py"
DEFAULT_POOL = "10.78.0.0/16"
FIRST_NODE_HOST = 11  # nodes get .11, .12, ...; .1 is the gateway (the harness host)
DATA_ROOT = "/var/lib/raftkv"
NODE_LOG = "/var/log/raftkv/raftkv.log"
NODE_PIDFILE = "/run/raftkv/pid"
PYTHON = "python3"
SUPERVISOR = "raftkv-node"
CONTROL_TIMEOUT_S = 15.0
# Per container, ours and a user's alike: a runaway node must not take the host's memory or
# pids with it; generous for a raftkv or etcd node.
DEFAULT_MEMORY_LIMIT_BYTES = 1 << 30
DEFAULT_PIDS_LIMIT = 1024
_NODE_MAX = 16


def owner_label() -> str:
    """Who made a run: this host, the harness's pid and its start time (`backends.owner`);
    cleanup spares runs still going."""
    return current_owner()


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


class DockerBackend(SupervisedBackend[DockerRemote]):
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
        super().__init__(run_id)
        self.base_image = base_image
        self.image = image if user_image is None else user_image
        self.user_image = user_image
        self._pool = ipaddress.IPv4Network(pool)
        self._progress = progress
        self.memory_limit_bytes = memory_limit_bytes
        self.pids_limit = pids_limit
        self.subnet: ipaddress.IPv4Network | None = None
        self._client: DockerClient | None = None
        self._network: Any = None
        self._containers: dict[str, Any] = {}
        self._binds: dict[str, list[tuple[str, str]]] = {}

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

    def bind_host_dir(self, node: str, host_path: str, container_path: str) -> None:
        """Bind `host_path`, a directory on this host, at `container_path` in `node`'s
        container, read-write; before `setup` (BackendError after it). The engine refuses a
        path that does not exist then: it is never made for us."""
        with self._lock:
            if self.nodes:
                raise BackendError(f"docker run {self.run_id}: binds go before setup")
            self._binds.setdefault(node, []).append((host_path, container_path))

    def setup(self, nodes: Sequence[str]) -> None:
        """Image (built if needed), network, one started container per node (with the
        directories `bind_host_dir` named)."""
        validate_nodes(nodes, _NODE_MAX)
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
            advice = "choose another, or run `harness cleanup` if it is a leftover"
            self._claim_run_id(lambda: self._taken(client, nodes), advice)
            self.nodes = list(nodes)
            self._arm_teardown_at_exit()
            try:
                self._make_network(client)
                self._make_containers(client)
                if self.user_image is not None:
                    check_user_tools(self._containers[self.nodes[0]], self.user_image)
            except BaseException:
                self._teardown_at_exit()
                raise

    def _taken(self, client: DockerClient, nodes: Sequence[str]) -> str | None:
        """What exists of this run id (labelled with it, or named as this run's would be),
        None if nothing: then the id is ours (the engine refuses a name twice, and another
        run's teardown would remove ours)."""
        try:
            found = self._named_or_labelled(client, nodes)
        except (APIError, DockerException) as exc:
            raise BackendError(f"docker: cannot list containers: {short_error(exc)}") from None
        return ", ".join(found) or None

    def _named_or_labelled(self, client: DockerClient, nodes: Sequence[str]) -> list[str]:
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
                last_error = short_error(exc)
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

        archive = supervisor_archive() if self.user_image is not None else b""
        faketime = faketime_archive()

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
                mounts=[
                    Mount(target, source, type="bind", read_only=False)
                    for source, target in self._binds.get(node, [])
                ],
                **self._container_options(),
            )
            # No lock here: setup() holds it while these threads run.
            made[node] = container
            if self.user_image is not None:
                install_supervisor(container, self.user_image, archive)
            install_faketime(container, faketime)  # for clock faults, where the image lacks it
            container.start()
            return container

        made: dict[str, Any] = {}
        errors = in_parallel(make, self.nodes)
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
            raise BackendError(
                f"docker: cannot inspect {container.name}: {short_error(exc)}"
            ) from None
        return UserImageRemote(node, address, container, int(container.attrs["State"]["Pid"]))

    def start_process(self, node: str, argv: Sequence[str], log_path: str) -> None:
        """Start argv in the node's container; see `Backend.start_process`.

        `log_path` names the file `fetch_logs` writes; the process logs inside the container.
        """
        if not argv:
            raise ValueError("empty argv")
        invoke = (SUPERVISOR,) if self.user_image is None else (SHELL, USER_SUPERVISOR)
        remote = self._remote(node)
        supervisor = Supervisor(remote, invoke, argv, NODE_PIDFILE, NODE_LOG, CONTROL_TIMEOUT_S)
        with self._lock:
            self._start_service(node, supervisor, argv[0], log_path)

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
            raise BackendError(f"{node}: cannot write {path}: {short_error(exc)}") from None

    def fetch_logs(self, node: str, dest_dir: str) -> None:
        """Copy the node's service log out of its container into dest_dir."""
        with self._lock:
            container = self._containers.get(node)
            service = self._services.get(node)
        if container is None or service is None:
            return
        try:
            chunks, _ = container.get_archive(NODE_LOG)
            data = b"".join(chunks)
        except (APIError, DockerException) as exc:
            log.warning("docker: no log from %s: %s", node, short_error(exc))
            return
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = next((m for m in archive.getmembers() if m.isfile()), None)
            source = archive.extractfile(member) if member else None
            if source is None:
                return
            dest = Path(dest_dir)
            dest.mkdir(parents=True, exist_ok=True)
            (dest / service.log_name).write_bytes(source.read())

    def teardown(self) -> None:
        """Remove every container and the network (running processes die with them).

        Idempotent; things already gone are skipped. Raises BackendError after trying
        everything if something could not be removed.
        """
        with self._lock:
            errors: list[str] = []
            if self._client is not None:
                errors = remove_run(self._client, self.run_id)
            self._containers.clear()
            self._remotes.clear()
            self._services.clear()
            self._network = None
            self.nodes = []
            self._disarm_teardown_at_exit()
        if errors:
            raise BackendError("docker teardown incomplete: " + "; ".join(errors))
