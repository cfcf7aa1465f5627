"""The ssh backend: every node is a real host reached over SSH (paramiko), host keys verified.

A node is a host name or IP address reachable from the harness host; the service binds to
that address, so it is also the address peers, clients and partitions use. On each node:

    <remote dir>/lib/<hash>/          this project and msgpack, unpacked from wheels built
                                      on the harness host (`backends.bundle`; shared by runs,
                                      skipped when present)
    <remote dir>/runs/<run id>/<node>/        the service's data directory
    <remote dir>/runs/<run id>/<node>.pid     the detached service's pid (it leads its group)
    <remote dir>/runs/<run id>/<node>.log     its stdout and stderr, fetched back by fetch_logs

Under `power-loss` the node's data directory is a lazy filesystem mounted on its host
(`mount_lazyfs`, `backends.ssh_disks`), unmounted by teardown once the service stopped.

The service runs under the supervisor every backend uses (`backends.supervisor`), sent as
`sh -c SCRIPT` with each command. Connections, host keys (never accepted silently) and the
node's `Remote` are in `backends.ssh_hosts`.

Every command is an argv list. It reaches the node's shell as `sh -c SCRIPT sh ARG...`, quoted
with `shlex.join` on our side, so no user input is ever parsed as shell code: the scripts
below are constants and everything variable is a positional parameter.
"""

from __future__ import annotations

import logging
import posixpath
import secrets
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

from harness.backends.base import BackendError, BackendUnavailable
from harness.backends.bundle import build_bundle
from harness.backends.common import validate_nodes
from harness.backends.ssh_disks import RemoteDisks
from harness.backends.ssh_hosts import (
    DEFAULT_KNOWN_HOSTS,
    HostKeyError,
    SshOptions,
    SshRemote,
    address_of,
    check_host,
    connect,
    read_nodes_file,
)
from harness.backends.supervisor import SCRIPT, SupervisedBackend, Supervisor
from nemesis import iptables
from nemesis.remote import CommandNotFoundError, RemoteError

__all__ = [
    "DEFAULT_KNOWN_HOSTS",
    "HostKeyError",
    "SshBackend",
    "SshOptions",
    "SshRemote",
    "check_host",
    "read_nodes_file",
]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 120.0
_NODE_MAX = 16
_MIN_PYTHON = (3, 11)
# Packages the nodes need: raftkv imports msgpack and nothing else of PyPI; the lazy
# filesystem of power-loss, mfusepy (pure Python over the host's libfuse3).
NODE_REQUIREMENTS = ("msgpack", "mfusepy")
PACKAGES = ("raftkv", "harness", "nemesis", "checker")
# How the supervisor runs on a node: sent with each command, nothing to install.
_SUPERVISOR = ("sh", "-c", SCRIPT, "supervisor")

# $1 a run directory, $2 our claim: make it (and its parent) holding the claim, or exit 3 if
# it exists with another's. With ours, it is the one made through another node: nodes may
# share a filesystem.
_NEW_DIR_SCRIPT = (
    'mkdir -p -- "$(dirname -- "$1")" || exit 1; '
    'if mkdir -- "$1" 2>/dev/null; then printf %s "$2" > "$1/.claim"; exit; fi; '
    '[ "$(cat -- "$1/.claim" 2>/dev/null)" = "$2" ] && exit 0; '
    '{ [ -e "$1" ] || [ -h "$1" ]; } && exit 3; mkdir -- "$1"'
)
# $1 target dir, $2 temp dir, then wheels: unpack into temp dir, then move it into place.
_UNPACK = (
    "import os, shutil, sys, zipfile\n"
    "target, tmp, wheels = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
    "for wheel in wheels:\n"
    "    with zipfile.ZipFile(wheel) as z:\n"
    "        z.extractall(tmp)\n"
    "open(os.path.join(tmp, '.complete'), 'w').close()\n"
    "try:\n"
    "    os.rename(tmp, target)\n"
    "except OSError:\n"
    "    if not os.path.exists(os.path.join(target, '.complete')):\n"
    "        raise\n"
    "    shutil.rmtree(tmp)\n"
)
_PROBE = "import platform, sys; print(sys.version_info[0], sys.version_info[1], platform.machine())"
# $1 the base directory: make it (mode 0700) unless it exists, then accept it only if it is
# a real directory of this login's alone, under parents only root or this login may change
# (or sticky ones, as /var/tmp). Otherwise print why and exit 3. Whoever can write there can
# plant the programs we run as this login.
_SECURE_DIR = """
import os, stat, sys
path, uid = os.path.abspath(sys.argv[1]), os.getuid()
def parent_problem():
    walk = os.path.realpath(os.path.dirname(path))
    while True:
        try:
            info = os.stat(walk)
        except OSError as exc:
            return f"its parent {walk} cannot be checked: {exc.strerror}"
        writable = info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX
        if info.st_uid not in (0, uid) or writable:
            mode = stat.S_IMODE(info.st_mode)
            return (f"its parent {walk} may be changed by another user "
                    f"(owner uid {info.st_uid}, mode {mode:04o})")
        if walk == "/":
            return None
        walk = os.path.dirname(walk)
def problem():
    found = parent_problem()
    if found:
        return found
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"it cannot be made: {exc.strerror}"
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if info.st_uid != uid:
        return f"it is owned by uid {info.st_uid}, not by {sys.argv[2]} (uid {uid})"
    if info.st_mode & 0o077:
        return f"its mode is {stat.S_IMODE(info.st_mode):04o}: group or others may use it"
    return None
found = problem()
if found:
    print(found)
    sys.exit(3)
"""


class SshBackend(SupervisedBackend[SshRemote]):
    """The `Backend` on SSH hosts. See the module docstring for what lives on a node.

    `run_id` (4 hex digits, random by default) names this run's directory on the nodes; a
    random one is drawn again while a node has that directory already (a leftover, or
    another harness's run sharing the nodes), a chosen one is then refused (BackendError).
    Thread-safe: faults may call it from worker threads.
    """

    name = "ssh"

    def __init__(self, opts: SshOptions, run_id: str | None = None) -> None:
        super().__init__(run_id)
        self.opts = opts
        self.python = opts.python
        self.lib_dir: str | None = None
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._run_dir_made: set[str] = set()  # nodes where we made run_dir: only there it goes
        self._disks: RemoteDisks | None = None
        self._known_hosts_lock = threading.Lock()

    @property
    def run_dir(self) -> str:
        return posixpath.join(self.opts.base_dir, "runs", self.run_id)

    @property
    def data_root(self) -> str:
        """Where node data directories go on the nodes (`<data_root>/<node>`)."""
        return self.run_dir

    def _pidfile(self, node: str) -> str:
        return posixpath.join(self.run_dir, f"{node}.pid")

    def _logfile(self, node: str) -> str:
        return posixpath.join(self.run_dir, f"{node}.log")

    def setup(self, nodes: Sequence[str]) -> None:
        """Connect to every node (host keys verified), install, make the run directory.

        The base directory must be this login's alone: made with mode 0700 if missing, and
        refused (BackendUnavailable, before anything is copied or run) if it is a symbolic
        link, not a directory, owned by another user, open to group or others, or under a
        parent another user may change.
        """
        validate_nodes(nodes, _NODE_MAX)
        for node in nodes:
            if node not in self.opts.hosts:
                raise ValueError(f"no host given for node {node!r}")
        with self._lock:
            if self.nodes:
                raise BackendError(f"ssh run {self.run_id} is already set up")
            self.nodes = list(nodes)
            self._arm_teardown_at_exit()
            try:
                self._connect_all()
                self._install()
            except BaseException:
                self._teardown_at_exit()
                raise

    def _connect_all(self) -> None:
        """Connect to every node at once (the caller holds the lock); keep every connection
        made, so teardown closes them, then re-raise the first failure in node order."""
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            futures = {
                node: pool.submit(
                    connect, node, self.opts.hosts[node], self.opts, self._known_hosts_lock
                )
                for node in self.nodes
            }
        for node, future in futures.items():
            if future.exception() is None:
                self._clients[node] = future.result()
        for node, future in futures.items():
            future.result()
            host = self.opts.hosts[node]
            self._remotes[node] = SshRemote(node, address_of(host), self._clients[node])

    def _install(self) -> None:
        probes = {node: self._probe(node) for node in self.nodes}
        for node in self.nodes:
            self._secure_base_dir(node)
        bundles: dict[tuple[tuple[int, int], str], Path] = {}
        for key in set(probes.values()):
            bundles[key] = build_bundle(PACKAGES, NODE_REQUIREMENTS, *key)
        libs = {node: self._install_node(node, bundles[probes[node]]) for node in self.nodes}
        if len(set(libs.values())) != 1:
            raise BackendUnavailable(f"nodes run different Pythons: {probes}; use one version")
        self.lib_dir = next(iter(libs.values()))
        self._claim_run_dir()

    def _claim_run_dir(self) -> None:
        """Make the run directory on every node, where it must not exist yet (another run's
        teardown would be ours); see the class docstring."""
        advice = "choose another, or remove it if it is a leftover"
        self._claim_run_id(self._try_run_dir, advice)

    def _try_run_dir(self) -> str | None:
        """Make run_dir on every node under a new claim; None if made everywhere, else (after
        removing what it made) where it existed."""
        claim = secrets.token_hex(8)
        taken = [node for node in self.nodes if not self._make_run_dir(node, claim)]
        if not taken:
            return None
        for node in list(self._run_dir_made):
            self._remote(node).execute(["rm", "-rf", self.run_dir], COMMAND_TIMEOUT_S)
            self._run_dir_made.discard(node)
        return f"{self.run_dir} exists on {', '.join(taken)}"

    def _make_run_dir(self, node: str, claim: str) -> bool:
        """Make run_dir on the node; False if it exists there already, not made by us."""
        made = self._script(node, _NEW_DIR_SCRIPT, self.run_dir, claim) == 0
        if made:
            self._run_dir_made.add(node)
        return made

    def _probe(self, node: str) -> tuple[tuple[int, int], str]:
        try:
            out = self._remote(node).execute([self.python, "-c", _PROBE], COMMAND_TIMEOUT_S)
        except RemoteError as exc:
            raise BackendUnavailable(f"{node}: no usable {self.python}: {exc}") from None
        major, minor, machine = out.stdout.split()
        version = (int(major), int(minor))
        if version < _MIN_PYTHON:
            raise BackendUnavailable(
                f"{node}: {self.python} is {major}.{minor}; the nodes need Python 3.11 or newer"
            )
        return version, machine

    def _secure_base_dir(self, node: str) -> None:
        """Make the base directory, or check that it is ours alone; see `setup`."""
        argv = [self.python, "-c", _SECURE_DIR, self.opts.base_dir, self.opts.user]
        result = self._remote(node).execute(argv, COMMAND_TIMEOUT_S, check=False)
        if result.returncode == 0:
            return
        if result.returncode != 3:
            raise BackendError(
                f"{node}: cannot check the remote directory {self.opts.base_dir}: "
                f"exited {result.returncode}: {result.stderr.strip()[-500:]}"
            )
        raise BackendUnavailable(
            f"{node}: remote directory {self.opts.base_dir} on {self.opts.hosts[node]}: "
            f"{result.stdout.strip()}; the harness runs what it keeps there as "
            f"{self.opts.user}, so it uses only a directory of that login's alone (mode 0700): "
            "remove it, or pass --ssh-remote-dir with a path that does not exist yet"
        )

    def _install_node(self, node: str, bundle: Path) -> str:
        """Upload and unpack the bundle unless the node already has it; its lib directory."""
        lib = posixpath.join(self.opts.base_dir, "lib", bundle.name.removeprefix("bundle-"))
        remote = self._remote(node)
        done = remote.execute(["test", "-f", f"{lib}/.complete"], COMMAND_TIMEOUT_S, check=False)
        if done.returncode == 0:
            return lib
        staging = posixpath.join(self.opts.base_dir, "lib", f".upload-{secrets.token_hex(4)}")
        remote.execute(["mkdir", "-p", f"{staging}/wheels"], COMMAND_TIMEOUT_S)
        try:
            wheels = sorted(bundle.glob("*.whl"))
            sftp = self._clients[node].open_sftp()
            try:
                channel = sftp.get_channel()
                if channel is not None:
                    channel.settimeout(INSTALL_TIMEOUT_S)
                for wheel in wheels:
                    sftp.put(str(wheel), f"{staging}/wheels/{wheel.name}")
            finally:
                sftp.close()
            argv = [self.python, "-c", _UNPACK, lib, f"{staging}/tree"]
            remote.execute(
                [*argv, *(f"{staging}/wheels/{w.name}" for w in wheels)], INSTALL_TIMEOUT_S
            )
        except (OSError, paramiko.SSHException) as exc:
            raise BackendError(f"{node}: upload to {staging} failed: {exc}") from exc
        finally:
            remote.execute(["rm", "-rf", staging], COMMAND_TIMEOUT_S, check=False)
        log.info("ssh: installed %s on %s", lib, node)
        return lib

    def _script(
        self, node: str, script: str, *args: str, timeout: float = COMMAND_TIMEOUT_S
    ) -> int:
        result = self._remote(node).execute(["sh", "-c", script, "sh", *args], timeout, check=False)
        if result.returncode not in (0, 3):
            reason = f"exited {result.returncode}: {result.stderr.strip()[:500]}"
            raise RemoteError(node, result.argv, reason, result)
        return result.returncode

    def start_process(self, node: str, argv: Sequence[str], log_path: str) -> None:
        """Start argv detached on the node, with the installed packages on its PYTHONPATH."""
        if not argv:
            raise ValueError("empty argv")
        assert self.lib_dir is not None, "setup() first"
        service = ("env", f"PYTHONPATH={self.lib_dir}", *argv)
        pidfile, logfile = self._pidfile(node), self._logfile(node)
        remote = self._remote(node)
        supervisor = Supervisor(remote, _SUPERVISOR, service, pidfile, logfile, COMMAND_TIMEOUT_S)
        with self._lock:
            self._start_service(node, supervisor, argv[0], log_path)

    def mount_lazyfs(
        self, points: Mapping[str, str], fsname: str, metadata: str = "strict"
    ) -> RemoteDisks:
        """Mount a lazy filesystem named `fsname` (`metadata`, one of
        `nemesis.lazyfs.METADATA_MODES`) at each node's point (a path on its host), for
        power-loss; see `backends.ssh_disks`. First every host must be able to:
        BackendUnavailable naming the first that cannot, before anything is mounted.
        BackendError if a mount does not come up. Teardown unmounts them."""
        assert self.lib_dir is not None, "setup() first"
        with self._lock:
            if self._disks is not None:
                raise BackendError(f"ssh run {self.run_id} has its disks mounted already")
            remotes = {node: self._remote(node) for node in points}
            hosts = {node: self.opts.hosts[node] for node in points}
            disks = RemoteDisks(remotes, hosts, self.python, self.lib_dir, fsname, metadata)
            self._disks = disks
        disks.check(list(points))
        log.info("ssh: every host can mount lazyfs")
        disks.mount_all(points)
        log.info("ssh: lazyfs mounted on every host (%s)", fsname)
        return disks

    def write_private_file(self, node: str, path: str, data: bytes) -> None:
        """Write `data` to `path` on the node over SFTP, made mode 0600 before any byte is
        written; see `Backend.write_private_file`."""
        remote = self._remote(node)
        try:
            remote.execute(["mkdir", "-p", posixpath.dirname(path)], COMMAND_TIMEOUT_S)
            sftp = self._clients[node].open_sftp()
            try:
                channel = sftp.get_channel()
                if channel is not None:
                    channel.settimeout(COMMAND_TIMEOUT_S)
                with sftp.open(path, "wb") as f:
                    f.chmod(0o600)
                    f.write(data)
            finally:
                sftp.close()
        except RemoteError as exc:
            raise BackendError(f"{node}: cannot make the directory of {path}: {exc}") from None
        except (OSError, paramiko.SSHException) as exc:
            raise BackendError(f"{node}: cannot write {path}: {exc}") from exc

    def fetch_logs(self, node: str, dest_dir: str) -> None:
        """Copy the node's service log over SFTP into dest_dir (under the local log's name),
        and its lazy filesystem's as lazyfs.log under power-loss."""
        with self._lock:
            service = self._services.get(node)
            client = self._clients.get(node)
            lazyfs_log = self._disks.log_path(node) if self._disks is not None else None
        if service is None or client is None:
            return
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        wanted = [(self._logfile(node), service.log_name)]
        if lazyfs_log is not None:
            wanted.append((lazyfs_log, "lazyfs.log"))
        for path, name in wanted:
            try:
                sftp = client.open_sftp()
                try:
                    channel = sftp.get_channel()
                    if channel is not None:
                        channel.settimeout(INSTALL_TIMEOUT_S)
                    sftp.get(path, str(dest / name))
                finally:
                    sftp.close()
            except (OSError, paramiko.SSHException) as exc:
                raise BackendError(f"{node}: cannot fetch {path}: {exc}") from exc

    def teardown(self, stop_timeout_s: float = 3.0) -> None:
        """Stop every service, remove our iptables chain and run directory, disconnect.

        Idempotent. Raises BackendError after trying everything if something failed.
        """
        with self._lock:
            errors: list[str] = []
            connected = [n for n in self.nodes if n in self._remotes]

            def clean(node: str) -> None:
                remote = self._remotes[node]
                if service := self._services.get(node):
                    service.supervisor.stop(stop_timeout_s)
                if self._disks is not None:  # nothing holds a file there now
                    self._disks.unmount(node)
                try:
                    iptables.remove(remote)
                except RemoteError as exc:
                    # No iptables on the node: then no partition ever ran there either.
                    if not isinstance(exc.__cause__, CommandNotFoundError):
                        raise
                if node in self._run_dir_made:
                    remote.execute(["rm", "-rf", self.run_dir], COMMAND_TIMEOUT_S)
                    self._run_dir_made.discard(node)

            def attempt(node: str) -> None:
                try:
                    clean(node)
                except (RemoteError, BackendError, OSError, paramiko.SSHException) as exc:
                    errors.append(f"{node}: {exc}")

            if connected:
                with ThreadPoolExecutor(len(connected)) as pool:
                    list(pool.map(attempt, connected))
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            self._disks = None
            self._remotes.clear()
            self._services.clear()
            self.nodes = []
            self._disarm_teardown_at_exit()
        if errors:
            raise BackendError("ssh teardown incomplete: " + "; ".join(errors))
