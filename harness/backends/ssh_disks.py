"""The `power-loss` fault's disks on ssh hosts: each node's data directory on a lazy
filesystem (`nemesis.lazyfs`) mounted on its own host, by a process of ours there.

On a node, for the data directory `D` (the mount point):

    D.backing          what the filesystem holds (mode 0700)
    D.lazyfs           its control socket (`lose` is sent there from the node itself)
    D.lazyfs.pid       the mount process's pid, under the supervisor every backend uses
    D.lazyfs.log       its output

The mount process runs the installed bundle (mfusepy in it) under the node's Python, and
its source in /proc/mounts is `lazyfs-<run id>`. Before anything is mounted every host
must show /dev/fuse, fusermount3 and a libfuse3 that loads (a login other than root also
needs `user_allow_other` in /etc/fuse.conf, since the filesystem is mounted allow_other),
else BackendUnavailable naming the host. The backend unmounts after stopping its services
and before removing its run directory (`unmount`): SIGTERM (the process unmounts itself),
then `fusermount3 -u -z` for a mount its process left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from harness.backends.base import BackendError, BackendUnavailable
from harness.backends.supervisor import SCRIPT, Supervisor
from nemesis.lazyfs import parse_loss
from nemesis.remote import Remote, RemoteError

__all__ = ["RemoteDisks", "loss_of"]

MOUNT_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
# The longest path a unix socket can bind to (sun_path holds 108 bytes with the NUL).
_SOCKET_PATH_MAX = 107
# Prints why this host cannot mount the filesystem and exits 3; exits 0 if it can.
_FUSE_PROBE = """
import os, shutil, sys
def problem():
    if not os.path.exists("/dev/fuse"):
        return "has no /dev/fuse: it cannot mount FUSE filesystems"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"cannot open /dev/fuse: {exc.strerror}"
    if shutil.which("fusermount3") is None:
        return "has no fusermount3: apt-get install fuse3"
    try:
        import mfusepy  # loads libfuse3
    except (ImportError, OSError) as exc:
        return f"cannot load libfuse3 ({exc}): apt-get install fuse3"
    if os.getuid() != 0:
        try:
            conf = open("/etc/fuse.conf").read().split()
        except OSError:
            conf = []
        if "user_allow_other" not in conf:
            return ("lets no login but root mount allow_other: "
                    "add user_allow_other to /etc/fuse.conf")
    return None
found = problem()
if found:
    print(found)
    sys.exit(3)
"""
# Defines mounted(fsname, point): whether /proc/mounts shows it (its octal escapes read).
_MOUNTED = """
import re, sys
def mounted(fsname, point):
    def unescape(field):
        return re.sub(r"\\\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
    with open("/proc/mounts") as mounts:
        rows = [line.split() for line in mounts]
    return any(row[0] == fsname and unescape(row[1]) == point for row in rows)
"""
# $1 fsname, $2 mount point, $3 control socket, $4 the mount process's pid file, $5
# seconds: wait until the mount is in /proc/mounts and its control answers; exit 3 if not
# in time, 4 if the process ended.
_AWAIT_MOUNT = (
    _MOUNTED
    + """
import os, time
from nemesis.lazyfs import send_command
fsname, point, control, pidfile = sys.argv[1:5]
deadline = time.monotonic() + float(sys.argv[5])
def alive():
    try:
        with open(pidfile) as f:
            return os.path.exists(f"/proc/{int(f.read().strip())}")
    except (OSError, ValueError):
        return False
def answers():
    try:
        return send_command(control, "ping", 2.0) == "ok"
    except OSError:
        return False
while not (mounted(fsname, point) and answers()):
    if not alive():
        sys.exit(4)
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.05)
"""
)
# $1 fsname, $2 mount point: exit 0 if it is mounted, 3 if not.
_IS_MOUNTED = _MOUNTED + "sys.exit(0 if mounted(sys.argv[1], sys.argv[2]) else 3)\n"


class RemoteDisks:
    """The lazy filesystems of one run's nodes, each on its ssh host. `remotes` reach the
    nodes, `hosts` name them (for messages), `python` and `lib_dir` are the node's
    interpreter and the installed bundle; `metadata` one of `nemesis.lazyfs.METADATA_MODES`.
    Thread-safe."""

    def __init__(
        self,
        remotes: Mapping[str, Remote],
        hosts: Mapping[str, str],
        python: str,
        lib_dir: str,
        fsname: str,
        metadata: str = "strict",
    ) -> None:
        self._remotes = dict(remotes)
        self._hosts = dict(hosts)
        self._env = ("env", f"PYTHONPATH={lib_dir}")
        self.python = python
        self.fsname = fsname
        self.metadata = metadata
        self._points: dict[str, str] = {}
        self._supervisors: dict[str, Supervisor] = {}
        self._lock = threading.Lock()

    def _py(self, *args: str) -> list[str]:
        return [*self._env, self.python, *args]

    def check(self, nodes: Sequence[str]) -> None:
        """BackendUnavailable naming the first host (in node order) that cannot mount."""
        problems = _each(nodes, self._problem)
        for node in nodes:
            if problems[node]:
                raise BackendUnavailable(
                    f"power-loss: {node} ({self._hosts[node]}) {problems[node]}"
                )

    def _problem(self, node: str) -> str | None:
        argv = self._py("-c", _FUSE_PROBE)
        result = self._remotes[node].execute(argv, COMMAND_TIMEOUT_S, check=False)
        if result.returncode == 3:
            return result.stdout.strip() or "cannot mount FUSE filesystems"
        if result.returncode != 0:
            raise BackendError(
                f"{node}: the FUSE probe exited {result.returncode}: {result.stderr.strip()[-500:]}"
            )
        return None

    def mount_all(self, points: Mapping[str, str]) -> None:
        """Mount each node's disk at its point (made if missing), all at once; BackendError
        if one does not come up (those that did stay, for `unmount_all`)."""
        for point in points.values():
            if len(f"{point}.lazyfs".encode()) > _SOCKET_PATH_MAX:
                raise BackendUnavailable(
                    f"power-loss: the control socket {point}.lazyfs is longer than a unix "
                    f"socket path may be ({_SOCKET_PATH_MAX} bytes): choose a shorter "
                    "--ssh-remote-dir"
                )
        errors = [e for e in _each(list(points), lambda n: self._mount(n, points[n])).values() if e]
        if errors:
            raise BackendError("; ".join(errors))

    def _mount(self, node: str, point: str) -> str | None:
        remote = self._remotes[node]
        try:
            remote.execute(["mkdir", "-p", point], COMMAND_TIMEOUT_S)
            remote.execute(["mkdir", "-p", "-m", "0700", f"{point}.backing"], COMMAND_TIMEOUT_S)
            argv = self._py("-m", "nemesis.lazyfs", "mount", point)
            argv += ["--backing", f"{point}.backing", "--control", f"{point}.lazyfs"]
            argv += ["--fsname", self.fsname, "--metadata", self.metadata]
            invoke = ("sh", "-c", SCRIPT, "supervisor")
            pidfile, log = f"{point}.lazyfs.pid", f"{point}.lazyfs.log"
            supervisor = Supervisor(remote, invoke, argv, pidfile, log, COMMAND_TIMEOUT_S)
            with self._lock:
                self._points[node] = point
                self._supervisors[node] = supervisor
            supervisor.start()
            wait = self._py("-c", _AWAIT_MOUNT, self.fsname, point, f"{point}.lazyfs", pidfile)
            waited = remote.execute(
                [*wait, str(MOUNT_TIMEOUT_S)], MOUNT_TIMEOUT_S + COMMAND_TIMEOUT_S, check=False
            )
        except RemoteError as exc:
            return f"{node}: cannot mount lazyfs at {point}: {exc.reason}"
        if waited.returncode != 0:
            how = (
                "exited"
                if waited.returncode == 4
                else f"did not mount within {MOUNT_TIMEOUT_S:.0f} s"
            )
            return f"{node}: lazyfs {how} at {point}; see {log} on {self._hosts[node]}"
        return None

    def log_path(self, node: str) -> str | None:
        """Where `node`'s mount process writes its output on the node (None: no disk)."""
        with self._lock:
            point = self._points.get(node)
        return None if point is None else f"{point}.lazyfs.log"

    def lose(self, node: str) -> dict[str, int]:
        """Drop what `node`'s disk did not make durable, through its control socket on the
        node; what was lost ({"files", "pages", "dir_changes", "failed"}), or BackendError."""
        with self._lock:
            point = self._points[node]
        argv = self._py("-m", "nemesis.lazyfs", "lose", "--control", f"{point}.lazyfs")
        try:
            answer = self._remotes[node].execute(argv, COMMAND_TIMEOUT_S).stdout.strip()
        except RemoteError as exc:
            raise BackendError(f"{node}: lazyfs did not answer `lose`: {exc.reason}") from None
        return loss_of(node, answer)

    def unmount(self, node: str) -> None:
        """End `node`'s mount process and make sure nothing stays mounted; idempotent.
        Call after the node's service stopped. RemoteError if the node cannot be reached."""
        with self._lock:
            point = self._points.get(node)
            supervisor = self._supervisors.get(node)
        if point is None or supervisor is None:
            return
        remote = self._remotes[node]
        supervisor.stop(STOP_TIMEOUT_S)  # lazyfs unmounts itself on SIGTERM
        is_mounted = self._py("-c", _IS_MOUNTED, self.fsname, point)
        if remote.execute(is_mounted, COMMAND_TIMEOUT_S, check=False).returncode == 0:
            remote.execute(["fusermount3", "-u", "-z", point], COMMAND_TIMEOUT_S)
        with self._lock:
            self._points.pop(node, None)
            self._supervisors.pop(node, None)

    def unmount_all(self) -> None:
        """`unmount` every node's disk; BackendError after trying all if one failed."""
        with self._lock:
            nodes = list(self._points)
        failed = [e for e in _each(nodes, self._try_unmount).values() if e]
        if failed:
            raise BackendError("lazyfs unmount incomplete: " + "; ".join(failed))

    def _try_unmount(self, node: str) -> str | None:
        try:
            self.unmount(node)
        except RemoteError as exc:
            return f"{node}: {exc.reason}"
        return None


def _each(nodes: Sequence[str], action: Callable[[str], str | None]) -> dict[str, str | None]:
    """`action(node)` on every node at once: what each returned."""
    if not nodes:
        return {}
    with ThreadPoolExecutor(len(nodes)) as pool:
        futures = {node: pool.submit(action, node) for node in nodes}
    return {node: future.result() for node, future in futures.items()}


def loss_of(node: str, answer: str) -> dict[str, int]:
    """What `node`'s lazyfs answered to `lose` (a LossReport line), read; BackendError
    if it is not one. Shared with harness.disks, whose mounts answer alike."""
    try:
        return parse_loss(answer)
    except ValueError:
        raise BackendError(f"{node}: lazyfs answered `lose` with {answer!r}") from None
