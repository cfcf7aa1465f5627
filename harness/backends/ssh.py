"""The ssh backend: every node is a real host reached over SSH (paramiko), host keys verified.

A node is a host name or IP address reachable from the harness host; the service binds to
that address, so it is also the address peers, clients and partitions use. On each node:

    <remote dir>/lib/<hash>/          this project and msgpack, unpacked from wheels built
                                      on the harness host (shared by runs; skipped when present)
    <remote dir>/runs/<run id>/<node>/        the service's data directory
    <remote dir>/runs/<run id>/<node>.pid     the detached service's pid (it leads its group)
    <remote dir>/runs/<run id>/<node>.log     its stdout and stderr, fetched back by fetch_logs

Host keys are checked against a known_hosts file and never accepted silently: an unknown key
is refused unless `accept_new_host_keys` is set (then it is appended to the file and logged as
a warning), and a changed key is always refused. Both refusals are `HostKeyError`, which the
CLI reports as bad usage (exit 254).

Every command is an argv list. It reaches the node's shell as `sh -c SCRIPT sh ARG...`, quoted
with `shlex.join` on our side, so no user input is ever parsed as shell code: the scripts
below are constants and everything variable is a positional parameter.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import platform
import posixpath
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paramiko

from harness.backends.base import BackendError, BackendUnavailable, TeardownOnExit
from harness.backends.local import run_bounded
from nemesis import iptables
from nemesis.remote import (
    CommandNotFoundError,
    ExecResult,
    Remote,
    RemoteError,
    RemoteTimeoutError,
)

__all__ = [
    "DEFAULT_KNOWN_HOSTS",
    "HostKeyError",
    "SshBackend",
    "SshOptions",
    "SshRemote",
    "build_bundle",
    "check_host",
    "read_nodes_file",
]

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 300.0
_RUN_RE = re.compile(r"^[0-9a-f]{4}$")
_NODE_RE = re.compile(r"^[A-Za-z0-9_]{1,16}$")
_MIN_PYTHON = (3, 11)
# Packages the service needs on a node (raftkv imports msgpack and nothing else of PyPI).
NODE_REQUIREMENTS = ("msgpack",)
PACKAGES = ("raftkv", "harness", "nemesis", "checker")

# Prints "<pid> <process group>" and execs argv, or prints "missing" if argv[0] is not found.
_EXEC_SCRIPT = (
    'pgid=""; read -r _ _ _ _ pgid _ < /proc/$$/stat 2>/dev/null; '
    'if command -v "$1" >/dev/null 2>&1; then echo "$$ $pgid"; exec "$@"; '
    "else echo missing; fi"
)
# $1 pid file, $2 log, then argv: start argv detached in a session of its own.
_START_SCRIPT = (
    'pidfile=$1; logfile=$2; shift 2; printf -- "--- start: %s\\n" "$*" >> "$logfile"; '
    'setsid nohup "$@" >> "$logfile" 2>&1 < /dev/null & echo $! > "$pidfile"'
)
# Shared by the process scripts: `alive PID` is false for a zombie (nobody may reap it).
_ALIVE = (
    'alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && ! grep -q ") Z " "/proc/$1/stat"; }; '
    'pid=$(cat "$1" 2>/dev/null); '
)
# $1 pid file: exit 0 if the service runs, 3 if not.
_RUNNING_SCRIPT = _ALIVE + 'alive "$pid" || exit 3'
# $1 pid file, $2 signal: signal the service's group if it runs.
_SIGNAL_SCRIPT = _ALIVE + 'alive "$pid" && kill -s "$2" -- "-$pid" 2>/dev/null; exit 0'
# $1 pid file: SIGKILL the service's group and wait (bounded) until it is gone.
_KILL_SCRIPT = _ALIVE + (
    'alive "$pid" || exit 0; kill -s KILL -- "-$pid"; i=0; '
    'while alive "$pid" && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done; '
    'alive "$pid" && exit 4; exit 0'
)
# $1 pid file, $2 wait in tenths of a second: SIGTERM (+SIGCONT), then SIGKILL after $2.
_STOP_SCRIPT = _ALIVE + (
    'alive "$pid" || exit 0; kill -s TERM -- "-$pid"; kill -s CONT -- "-$pid"; i=0; '
    'while alive "$pid" && [ "$i" -lt "$2" ]; do sleep 0.1; i=$((i+1)); done; '
    'alive "$pid" && kill -s KILL -- "-$pid"; i=0; '
    'while alive "$pid" && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done; '
    'alive "$pid" && exit 4; exit 0'
)
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


_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")


def read_nodes_file(path: str | Path) -> list[str]:
    """Node hosts from a file: one host name or IP address per line; blank lines and
    `#` comments are skipped. Raises ValueError naming the line of a malformed host."""
    hosts: list[str] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        host = line.split("#", 1)[0].strip()
        if not host:
            continue
        try:
            check_host(host)
        except ValueError as exc:
            raise ValueError(f"{path} line {number}: {exc}") from None
        hosts.append(host)
    return hosts


def check_host(host: str) -> None:
    """Raise ValueError unless `host` looks like a host name or an IP address."""
    if not _HOST_RE.match(host) or host.startswith("-"):
        raise ValueError(f"{host!r} is not a host name or address")


class HostKeyError(BackendUnavailable):
    """A node's host key is unknown (and accepting new keys was not asked for) or changed."""


@dataclass(frozen=True)
class SshOptions:
    """How to reach the nodes. `hosts` maps node name -> host (name or IP address).

    `key_path` None means the user's agent and default keys. `remote_dir` is the base
    directory on every node (default /var/tmp/harness-<user>): made there with mode 0700,
    or used only if it is already a directory of `user`'s alone (see `SshBackend.setup`).
    `python` is the node's interpreter (3.11 or newer).
    """

    hosts: dict[str, str]
    user: str = "root"
    port: int = 22
    key_path: str | None = None
    known_hosts: str = DEFAULT_KNOWN_HOSTS
    accept_new_host_keys: bool = False
    remote_dir: str | None = None
    python: str = "python3"
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    @property
    def base_dir(self) -> str:
        return self.remote_dir or f"/var/tmp/harness-{self.user}"


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown host keys, or (when asked explicitly) append them to known_hosts."""

    def __init__(self, path: Path, accept_new: bool, lock: threading.Lock) -> None:
        self.path = path
        self.accept_new = accept_new
        self.lock = lock

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        desc = f"{key.get_name()} {key.fingerprint}"
        if not self.accept_new:
            raise HostKeyError(
                f"host {hostname} offers host key {desc}, which is not in {self.path}; "
                "check the fingerprint and add the key to that file, or pass "
                "--ssh-accept-new-host-keys to trust it on first contact"
            )
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as out:
                out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("ssh: ACCEPTED NEW host key of %s: %s (added to %s)", hostname, desc, self.path)


def _connect(node: str, host: str, opts: SshOptions, lock: threading.Lock) -> paramiko.SSHClient:
    """An SSH connection to `host`, host key verified; HostKeyError or BackendUnavailable."""
    known_hosts = Path(opts.known_hosts).expanduser()
    client = paramiko.SSHClient()
    try:
        if known_hosts.exists():
            client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(
            _KnownHostsPolicy(known_hosts, opts.accept_new_host_keys, lock)
        )
        client.connect(
            host,
            port=opts.port,
            username=opts.user,
            key_filename=opts.key_path,
            allow_agent=opts.key_path is None,
            look_for_keys=opts.key_path is None,
            timeout=opts.connect_timeout_s,
            banner_timeout=opts.connect_timeout_s,
            auth_timeout=opts.connect_timeout_s,
            channel_timeout=opts.connect_timeout_s,
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyError(
            f"host key of {host} CHANGED: {known_hosts} has {exc.expected_key.get_name()} "
            f"{exc.expected_key.fingerprint}, the host offers {exc.key.get_name()} "
            f"{exc.key.fingerprint}; refusing to connect (someone may be intercepting the "
            f"connection; if the host was reinstalled, remove the old key with "
            f"`ssh-keygen -R {host} -f {known_hosts}`)"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        key = f" with key {opts.key_path}" if opts.key_path else ""
        raise BackendUnavailable(
            f"{node}: ssh login as {opts.user}@{host}{key} refused: {exc}"
        ) from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        client.close()
        raise BackendUnavailable(
            f"{node}: cannot reach {host} port {opts.port} over ssh: {exc or type(exc).__name__}"
        ) from None
    return client


class SshRemote:
    """`Remote` for a host over an SSH connection; one channel per command, thread-safe."""

    def __init__(self, node: str, address: str, client: paramiko.SSHClient) -> None:
        self.node = node
        self.address = address
        self.client = client

    def execute(self, argv: Sequence[str], timeout: float, check: bool = True) -> ExecResult:
        args = tuple(argv)
        if not args:
            raise ValueError("empty argv")
        command = shlex.join(["sh", "-c", _EXEC_SCRIPT, "sh", *args])
        rc, out, err = self._run(args, command, timeout)
        head, _, rest = out.partition("\n")
        if head == "missing":
            raise CommandNotFoundError(self.node, args, "failed: command not found")
        result = ExecResult(args, rc, rest, err)
        if check and rc != 0:
            raise RemoteError(self.node, args, f"exited {rc}: {err.strip()[:500]}", result)
        return result

    def _run(self, args: tuple[str, ...], command: str, timeout: float) -> tuple[int, str, str]:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(self.node, args, "could not start: the ssh connection is closed")
        try:
            chan = transport.open_session(timeout=min(timeout, CONNECT_TIMEOUT_S))
            chan.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise RemoteError(self.node, args, f"could not start: {exc}") from exc
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            while not chan.exit_status_ready():
                _drain(chan, out, err)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._kill_timed_out(bytes(out))
                    raise RemoteTimeoutError(self.node, args, f"timed out after {timeout} s")
                chan.status_event.wait(min(0.05, remaining))
            _drain(chan, out, err)
            return (
                chan.recv_exit_status(),
                out.decode(errors="replace"),
                err.decode(errors="replace"),
            )
        finally:
            chan.close()

    def _kill_timed_out(self, out: bytes) -> None:
        """SIGKILL a timed-out command's process group, found from its first output line."""
        ids = out.split(b"\n", 1)[0].split()
        if not ids or not all(i.isdigit() for i in ids):
            return
        target = f"-{ids[1].decode()}" if len(ids) > 1 else ids[0].decode()
        try:
            self._run(("kill",), shlex.join(["kill", "-s", "KILL", "--", target]), 5.0)
        except RemoteError as exc:
            log.warning("%s: could not kill a timed-out command: %s", self.node, exc)


def _drain(chan: paramiko.Channel, out: bytearray, err: bytearray) -> None:
    while chan.recv_ready():
        out += chan.recv(65536)
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(65536)


def _project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        raise BackendUnavailable(
            f"the ssh backend builds this project's wheel from its source tree, and {root} "
            "has no pyproject.toml; install the harness from a source checkout"
        )
    return root


def _source_hash(root: Path, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    files = [root / "pyproject.toml"]
    for package in PACKAGES:
        files += sorted((root / package).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _pip(args: Sequence[str], what: str) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        result = run_bounded(argv, BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"{what}: `{shlex.join(argv)}` failed: {exc}") from exc
    if result.returncode != 0:
        raise BackendError(
            f"{what}: `{shlex.join(argv)}` exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()[-800:]}"
        )


def _download_requirements(dest: Path, cache: Path, version: tuple[int, int], machine: str) -> None:
    """Binary wheels of NODE_REQUIREMENTS, pinned to our versions, for the node's Python,
    into `dest`. Taken from `cache` when there; otherwise downloaded into it first, so only
    the first build contacts the package index."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in NODE_REQUIREMENTS]
    tags: list[str] = []
    if (version, machine) != (sys.version_info[:2], platform.machine()):
        tags = ["--python-version", f"{version[0]}.{version[1]}", "--implementation", "cp"]
        for plat in ("manylinux2014", "manylinux_2_28", "musllinux_1_1"):
            tags += ["--platform", f"{plat}_{machine}"]
    common = ["download", "--no-deps", "--only-binary=:all:", *tags, *pins]
    offline = [*common, "--no-index", "--find-links", str(cache), "--dest", str(dest)]
    try:
        _pip(offline, "wheel cache")
    except BackendError:
        what = f"downloading {', '.join(pins)} for Python {version[0]}.{version[1]} {machine}"
        _pip([*common, "--dest", str(cache)], what)
        _pip(offline, "wheel cache")


def _build_wheel(src: Path, dest: Path, cache: Path) -> None:
    """This project's wheel from `src`, built in an isolated environment whose build tools
    (pyproject's build-system requires) come from `cache`, filled from the index once."""
    offline = ["wheel", "--no-deps", "--no-index", "--find-links", str(cache)]
    offline += ["--wheel-dir", str(dest), str(src)]
    try:
        _pip(offline, "building this project's wheel")
    except BackendError:
        requires = tomllib.loads((src / "pyproject.toml").read_text())["build-system"]["requires"]
        _pip(["download", "--dest", str(cache), *requires], "downloading build tools")
        _pip(offline, "building this project's wheel")


def build_bundle(version: tuple[int, int], machine: str, cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the wheels a node needs: this project, built from its source tree,
    and NODE_REQUIREMENTS for CPython `version` on `machine`. Returns a directory of .whl
    files whose name is a hash of their content, cached under `cache_dir`."""
    root = _project_root()
    pins = ",".join(f"{n}=={importlib.metadata.version(n)}" for n in NODE_REQUIREMENTS)
    cache = (cache_dir or Path("~/.cache/harness").expanduser()) / "ssh"
    key = _source_hash(root, f"{pins} {version} {machine}")
    bundle = cache / f"bundle-{key}"
    if (bundle / ".complete").exists():
        return bundle
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"bundle-{key}.", dir=cache))
    try:
        # Build from a copy, so the source tree gets no build/ or egg-info litter.
        src = work / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            if (root / name).exists():
                shutil.copy(root / name, src / name)
        for package in PACKAGES:
            shutil.copytree(
                root / package, src / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        wheels = work / "wheels"
        _build_wheel(src, wheels, cache / "wheels")
        _download_requirements(wheels, cache / "wheels", version, machine)
        shutil.rmtree(src)
        (wheels / ".complete").touch()
        try:
            wheels.rename(bundle)
        except OSError:
            if not (bundle / ".complete").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return bundle


@dataclass
class _Service:
    argv: tuple[str, ...]
    log_name: str


class SshBackend(TeardownOnExit):
    """The `Backend` on SSH hosts. See the module docstring for what lives on a node.

    `run_id` (4 hex digits, random by default) names this run's directory on the nodes; a
    random one is drawn again while a node has that directory already (a leftover, or
    another harness's run sharing the nodes), a chosen one is then refused (BackendError).
    Thread-safe: faults may call it from worker threads.
    """

    name = "ssh"

    def __init__(self, opts: SshOptions, run_id: str | None = None) -> None:
        self.opts = opts
        self._random_id = run_id is None
        self.run_id = run_id if run_id is not None else secrets.token_hex(2)
        if not _RUN_RE.match(self.run_id):
            raise ValueError(f"run id must be 4 hex digits, got {self.run_id!r}")
        self.python = opts.python
        self.nodes: list[str] = []
        self.lib_dir: str | None = None
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._remotes: dict[str, SshRemote] = {}
        self._services: dict[str, _Service] = {}
        self._run_dir_made: set[str] = set()  # nodes where we made run_dir: only there it goes
        self._lock = threading.RLock()
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
        self._validate_nodes(nodes)
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

    def _validate_nodes(self, nodes: Sequence[str]) -> None:
        if not nodes:
            raise ValueError("no nodes")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"duplicate node names in {list(nodes)}")
        for node in nodes:
            if not _NODE_RE.match(node):
                raise ValueError(f"node name {node!r} must be 1-16 letters, digits or _")
            if node not in self.opts.hosts:
                raise ValueError(f"no host given for node {node!r}")

    def _connect_all(self) -> None:
        """Connect to every node at once (the caller holds the lock); keep every connection
        made, so teardown closes them, then re-raise the first failure in node order."""
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            futures = {
                node: pool.submit(
                    _connect, node, self.opts.hosts[node], self.opts, self._known_hosts_lock
                )
                for node in self.nodes
            }
        for node, future in futures.items():
            if future.exception() is None:
                self._clients[node] = future.result()
        for node, future in futures.items():
            future.result()
            host = self.opts.hosts[node]
            self._remotes[node] = SshRemote(node, _address_of(host), self._clients[node])

    def _install(self) -> None:
        probes = {node: self._probe(node) for node in self.nodes}
        for node in self.nodes:
            self._secure_base_dir(node)
        bundles: dict[tuple[tuple[int, int], str], Path] = {}
        for key in set(probes.values()):
            bundles[key] = build_bundle(*key)
        libs = {node: self._install_node(node, bundles[probes[node]]) for node in self.nodes}
        if len(set(libs.values())) != 1:
            raise BackendUnavailable(f"nodes run different Pythons: {probes}; use one version")
        self.lib_dir = next(iter(libs.values()))
        self._claim_run_dir()

    def _claim_run_dir(self) -> None:
        """Make the run directory on every node, where it must not exist yet (another run's
        teardown would be ours); see the class docstring."""
        for _ in range(8):
            claim = secrets.token_hex(8)
            taken = [node for node in self.nodes if not self._make_run_dir(node, claim)]
            if not taken:
                return
            for node in list(self._run_dir_made):
                self._remote(node).execute(["rm", "-rf", self.run_dir], COMMAND_TIMEOUT_S)
                self._run_dir_made.discard(node)
            if not self._random_id:
                raise BackendError(
                    f"ssh run id {self.run_id} is in use: {self.run_dir} exists on "
                    f"{', '.join(taken)}; choose another, or remove it if it is a leftover"
                )
            self.run_id = secrets.token_hex(2)
        raise BackendError("no free ssh run id found")

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

    def remote(self, node: str) -> Remote:
        return self._remote(node)

    def _remote(self, node: str) -> SshRemote:
        try:
            return self._remotes[node]
        except KeyError:
            raise ValueError(f"unknown node {node!r}; nodes: {self.nodes}") from None

    def _script(
        self, node: str, script: str, *args: str, timeout: float = COMMAND_TIMEOUT_S
    ) -> int:
        result = self._remote(node).execute(["sh", "-c", script, "sh", *args], timeout, check=False)
        if result.returncode not in (0, 3):
            reason = f"exited {result.returncode}: {result.stderr.strip()[:500]}"
            raise RemoteError(node, result.argv, reason, result)
        return result.returncode

    def _running(self, node: str) -> bool:
        return self._script(node, _RUNNING_SCRIPT, self._pidfile(node)) == 0

    def start_process(self, node: str, argv: Sequence[str], log_path: str) -> None:
        """Start argv detached on the node, with the installed packages on its PYTHONPATH."""
        if not argv:
            raise ValueError("empty argv")
        assert self.lib_dir is not None, "setup() first"
        with self._lock:
            if node in self._services and self._running(node):
                raise BackendError(f"{node}: a service is already running")
            service = _Service(("env", f"PYTHONPATH={self.lib_dir}", *argv), Path(log_path).name)
            try:
                self._start(node, service)
            except RemoteError as exc:
                raise BackendError(f"{node}: cannot start {argv[0]!r}: {exc}") from exc
            self._services[node] = service

    def _start(self, node: str, service: _Service) -> None:
        self._remote(node).execute(
            ["sh", "-c", _START_SCRIPT, "sh", self._pidfile(node), self._logfile(node),
             *service.argv],
            COMMAND_TIMEOUT_S,
        )  # fmt: skip

    def pid(self, node: str) -> int | None:
        """The pid of the node's service (on the node) if it runs, else None."""
        with self._lock:
            if node not in self._services or not self._running(node):
                return None
            out = self._remote(node).execute(["cat", self._pidfile(node)], COMMAND_TIMEOUT_S)
            return int(out.stdout.strip())

    def _signal(self, node: str, sig: str) -> None:
        with self._lock:
            self._remote(node)
            if node in self._services:
                self._script(node, _SIGNAL_SCRIPT, self._pidfile(node), sig)

    def kill(self, node: str) -> None:
        with self._lock:
            if node in self._services:
                self._script(node, _KILL_SCRIPT, self._pidfile(node))

    def restart(self, node: str) -> None:
        with self._lock:
            service = self._services.get(node)
            if service is None:
                self._remote(node)
                raise ValueError(f"restart of {node!r}, where no service was ever started")
            if not self._running(node):
                self._start(node, service)

    def pause(self, node: str) -> None:
        self._signal(node, "STOP")

    def resume(self, node: str) -> None:
        self._signal(node, "CONT")

    def stop_process(self, node: str, timeout: float) -> None:
        with self._lock:
            if node in self._services:
                tenths = str(max(1, round(timeout * 10)))
                self._script(node, _STOP_SCRIPT, self._pidfile(node), tenths, timeout=timeout + 10)

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
        """Copy the node's service log over SFTP into dest_dir (under the local log's name)."""
        with self._lock:
            service = self._services.get(node)
            client = self._clients.get(node)
        if service is None or client is None:
            return
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            sftp = client.open_sftp()
            try:
                channel = sftp.get_channel()
                if channel is not None:
                    channel.settimeout(INSTALL_TIMEOUT_S)
                sftp.get(self._logfile(node), str(dest / service.log_name))
            finally:
                sftp.close()
        except (OSError, paramiko.SSHException) as exc:
            raise BackendError(f"{node}: cannot fetch {self._logfile(node)}: {exc}") from exc

    def teardown(self, stop_timeout_s: float = 3.0) -> None:
        """Stop every service, remove our iptables chain and run directory, disconnect.

        Idempotent. Raises BackendError after trying everything if something failed.
        """
        with self._lock:
            errors: list[str] = []
            connected = [n for n in self.nodes if n in self._remotes]

            def clean(node: str) -> None:
                remote = self._remotes[node]
                if node in self._services:
                    tenths = str(max(1, round(stop_timeout_s * 10)))
                    self._script(node, _STOP_SCRIPT, self._pidfile(node), tenths, timeout=30)
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
            self._remotes.clear()
            self._services.clear()
            self.nodes = []
            self._disarm_teardown_at_exit()
        if errors:
            raise BackendError("ssh teardown incomplete: " + "; ".join(errors))


def _address_of(host: str) -> str:
    """The IPv4 address of `host` as the other nodes will see it (one lookup, at setup)."""
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
    except OSError as exc:
        raise BackendUnavailable(f"cannot resolve node host {host!r}: {exc}") from None
