"""The one process supervisor, `supervisor.sh`, driven from the harness for every backend.

The script runs on the node (docker: in the container; ssh: on the host; netns: on this
host, the service inside the namespace) and keeps the service's pid in a file there, so the
semantics are one: start detached with a pid file and a log, SIGKILL the process group and
wait until it is gone, SIGSTOP/SIGCONT, restart with the same argv, stop with SIGTERM then
SIGKILL after a timeout, and report running (pid, state) or not. The script's header lists
its commands and exit codes.

`Supervisor` runs the script through the node's `Remote`; `LocalSupervisor` (netns) starts
the service as a child of the harness, which reaps it (no zombie outlives a kill), and
controls it through the same script. `SupervisedBackend` is the base of the backends, with
`ProcessControl` built on them.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.backends.base import BackendError
from harness.backends.common import HostsBackend, RemoteT
from nemesis.remote import Remote, RemoteError

__all__ = [
    "SCRIPT",
    "LocalSupervisor",
    "Service",
    "SupervisedBackend",
    "Supervisor",
]

SCRIPT = (Path(__file__).parent / "supervisor.sh").read_text()
# Exit codes of the script besides 0 (see its header).
_NOT_RUNNING = 3
# After a SIGKILL, how long the script waits for the process to go, and we after it.
_GONE_TIMEOUT_S = 5.0
_PIDFILE_TIMEOUT_S = 5.0


def _tenths(seconds: float) -> str:
    """`seconds` as the script's stop argument: tenths of a second, at least one."""
    return str(max(1, round(seconds * 10)))


class Supervisor:
    """The service on one node: `invoke` is how to run the script there (e.g. `raftkv-node`,
    or `sh -c SCRIPT supervisor`), `pidfile` and `log` are paths on the node. Operating
    failures raise `RemoteError`. Not thread-safe on its own; the backend serializes calls."""

    def __init__(
        self,
        remote: Remote,
        invoke: Sequence[str],
        argv: Sequence[str],
        pidfile: str,
        log: str,
        timeout_s: float,
    ) -> None:
        self.remote = remote
        self.invoke = tuple(invoke)
        self.argv = tuple(argv)
        self.pidfile = pidfile
        self.log = log
        self.timeout_s = timeout_s

    def _run(self, *args: str, timeout: float | None = None, check: bool = True) -> str:
        argv = [*self.invoke, *args]
        return self.remote.execute(argv, timeout or self.timeout_s, check).stdout

    def start(self) -> None:
        """Start argv detached; RemoteError if it is already running or cannot start."""
        self._run("start", self.pidfile, self.log, *self.argv)

    def status(self) -> tuple[int, str] | None:
        """(pid, /proc state letter) of the service, or None if it is not running."""
        argv = [*self.invoke, "status", self.pidfile]
        result = self.remote.execute(argv, self.timeout_s, check=False)
        if result.returncode == _NOT_RUNNING:
            return None
        if result.returncode != 0:
            reason = f"exited {result.returncode}: {result.stderr.strip()[:500]}"
            raise RemoteError(self.remote.node, result.argv, reason, result)
        pid, state = result.stdout.split()
        return int(pid), state

    def signal(self, name: str) -> None:
        """Send the signal `name` ("STOP", "CONT", "TERM"...) if the service runs."""
        self._run("signal", self.pidfile, name)

    def kill(self) -> None:
        """SIGKILL the service's group and wait until it is gone."""
        self._run("kill", self.pidfile, timeout=self.timeout_s + _GONE_TIMEOUT_S)

    def stop(self, timeout: float) -> None:
        """SIGTERM (and SIGCONT), then SIGKILL after `timeout` seconds."""
        self._run("stop", self.pidfile, _tenths(timeout), timeout=timeout + 2 * _GONE_TIMEOUT_S)


class LocalSupervisor(Supervisor):
    """A `Supervisor` whose node shares this host's processes (netns): the script's `run`
    starts the service as our child, in a session of its own, and we reap it, since this
    host's init may not (a zombie counts as gone, but its pid stays taken)."""

    def __init__(
        self, remote: Remote, argv: Sequence[str], pidfile: str, log: str, timeout_s: float
    ) -> None:
        super().__init__(remote, ("sh", "-c", SCRIPT, "supervisor"), argv, pidfile, log, timeout_s)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.reap()
        Path(self.pidfile).parent.mkdir(parents=True, exist_ok=True)
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        argv = [*self.invoke, "run", self.pidfile, self.log, *self.argv]
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise RemoteError(self.remote.node, self.argv, f"could not start: {exc}") from exc
        self._await_pidfile(self._proc)

    def _await_pidfile(self, proc: subprocess.Popen[bytes]) -> None:
        """Return once the script has recorded its pid (it then execs the service), so
        status, pid and signals see the new process at once."""
        deadline = time.monotonic() + _PIDFILE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if Path(self.pidfile).read_text().strip() == str(proc.pid):
                    _close_stderr(proc)
                    return
            except OSError:
                pass
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                _close_stderr(proc)
                reason = f"exited {proc.returncode}: {err.strip()[:500]}"
                raise RemoteError(self.remote.node, self.argv, reason)
            time.sleep(0.005)
        raise RemoteError(self.remote.node, self.argv, "did not start within 5 s")

    def reap(self, timeout: float = 0.0) -> None:
        """Collect our child's exit status if it has exited (waiting up to `timeout`)."""
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return
        self._proc = None

    def status(self) -> tuple[int, str] | None:
        found = super().status()
        if found is None:
            self.reap()
        return found

    def kill(self) -> None:
        super().kill()
        self.reap(_GONE_TIMEOUT_S)

    def stop(self, timeout: float) -> None:
        super().stop(timeout)
        self.reap(_GONE_TIMEOUT_S)


def _close_stderr(proc: subprocess.Popen[bytes]) -> None:
    if proc.stderr is not None:
        proc.stderr.close()


@dataclass
class Service:
    """What a backend remembers of a node's service: how to control it, and the name under
    which `fetch_logs` puts its log."""

    supervisor: Supervisor
    log_name: str


class SupervisedBackend(HostsBackend[RemoteT]):
    """A backend whose services run under a `Supervisor` per node: `ProcessControl`, and
    `pid` and `running`. Kill, pause, resume and stop of a node where nothing was ever
    started do nothing, as on a dead service, so a heal during an aborted startup stays
    quiet; an unknown node is a ValueError. Thread-safe: every call holds `_lock`.
    """

    def __init__(self, run_id: str | None) -> None:
        super().__init__(run_id)
        self._services: dict[str, Service] = {}
        self._lock = threading.RLock()

    def _service(self, node: str) -> Service | None:
        self._remote(node)
        return self._services.get(node)

    def _start_service(
        self, node: str, supervisor: Supervisor, program: str, log_path: str
    ) -> None:
        """Start `supervisor`'s service on the node (the caller holds the lock) and remember
        it; BackendError naming `program` if one runs there already or it cannot start."""
        service = self._service(node)
        running = service.supervisor.status() if service else None
        if running is not None:
            raise BackendError(f"{node}: a service is already running (pid {running[0]})")
        try:
            supervisor.start()
        except RemoteError as exc:
            raise BackendError(f"{node}: cannot start {program!r}: {exc.reason}") from None
        self._services[node] = Service(supervisor, Path(log_path).name)

    def running(self, node: str) -> tuple[int, str] | None:
        """(pid, state letter) of the node's service, or None if it is not running."""
        with self._lock:
            service = self._service(node)
            return service.supervisor.status() if service else None

    def pid(self, node: str) -> int | None:
        """The pid of the node's service (on the node) if it runs, else None."""
        found = self.running(node)
        return found[0] if found else None

    def kill(self, node: str) -> None:
        with self._lock:
            if service := self._service(node):
                service.supervisor.kill()

    def restart(self, node: str) -> None:
        with self._lock:
            service = self._service(node)
            if service is None:
                raise ValueError(f"restart of {node!r}, where no service was ever started")
            if service.supervisor.status() is None:
                service.supervisor.start()

    def pause(self, node: str) -> None:
        with self._lock:
            if service := self._service(node):
                service.supervisor.signal("STOP")

    def resume(self, node: str) -> None:
        with self._lock:
            if service := self._service(node):
                service.supervisor.signal("CONT")

    def stop_process(self, node: str, timeout: float) -> None:
        with self._lock:
            if service := self._service(node):
                service.supervisor.stop(timeout)
