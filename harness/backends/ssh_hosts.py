"""The ssh backend's hosts: how to reach them (`SshOptions`), host keys checked against a
known_hosts file, connections, and `SshRemote`, the Remote over one.

Host keys are never accepted silently: an unknown key is refused unless
`accept_new_host_keys` is set (then it is appended to the file and logged as a warning), and a
changed key is always refused. Both refusals are `HostKeyError`, which the CLI reports as bad
usage (exit 254).

Every command is an argv list. It reaches the node's shell as `sh -c SCRIPT sh ARG...`, quoted
with `shlex.join` on our side, so no user input is ever parsed as shell code: the scripts are
constants and everything variable is a positional parameter.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from harness.backends.base import BackendUnavailable
from nemesis.remote import ExecResult, RemoteError, judge

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_KNOWN_HOSTS",
    "HostKeyError",
    "SshOptions",
    "SshRemote",
    "address_of",
    "check_host",
    "connect",
    "read_nodes_file",
]

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
CONNECT_TIMEOUT_S = 10.0

# Prints "<pid> <process group>" and execs argv, or prints "missing" if argv[0] is not found.
_EXEC_SCRIPT = (
    'pgid=""; read -r _ _ _ _ pgid _ < /proc/$$/stat 2>/dev/null; '
    'if command -v "$1" >/dev/null 2>&1; then echo "$$ $pgid"; exec "$@"; '
    "else echo missing; fi"
)


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


def connect(node: str, host: str, opts: SshOptions, lock: threading.Lock) -> paramiko.SSHClient:
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
        ran = self._run(args, command, timeout)
        if ran is None:
            return judge(self.node, args, None, timeout, check, timed_out=True)
        rc, out, err = ran
        head, _, rest = out.partition("\n")
        if head == "missing":
            return judge(self.node, args, None, timeout, check, not_found=True)
        return judge(self.node, args, ExecResult(args, rc, rest, err), timeout, check)

    def _run(
        self, args: tuple[str, ...], command: str, timeout: float
    ) -> tuple[int, str, str] | None:
        """(exit code, stdout, stderr) of `command`, or None if it timed out (then killed)."""
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
                    return None
                chan.status_event.wait(min(0.05, remaining))
            # The exit status can arrive before the last of the output (a command's stderr
            # came back empty once under load): read on to the channel's end of file.
            while not chan.eof_received and not chan.closed and time.monotonic() < deadline:
                _drain(chan, out, err)
                time.sleep(0.005)
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
            killed = self._run(("kill",), shlex.join(["kill", "-s", "KILL", "--", target]), 5.0)
        except RemoteError as exc:
            log.warning("%s: could not kill a timed-out command: %s", self.node, exc)
            return
        if killed is None:
            log.warning("%s: could not kill a timed-out command: no answer in 5 s", self.node)


def _drain(chan: paramiko.Channel, out: bytearray, err: bytearray) -> None:
    while chan.recv_ready():
        out += chan.recv(65536)
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(65536)


def address_of(host: str) -> str:
    """The IPv4 address of `host` as the other nodes will see it (one lookup, at setup)."""
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
    except OSError as exc:
        raise BackendUnavailable(f"cannot resolve node host {host!r}: {exc}") from None
