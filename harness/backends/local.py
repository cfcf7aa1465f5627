"""Processes on the harness host: bounded commands, and long-running services we control.

Both run each child in a session of its own, so a signal to the process group reaches the
service and anything it forked, and a timed-out command cannot leave children behind.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nemesis.remote import CommandNotFoundError, ExecResult, RemoteError, RemoteTimeoutError

__all__ = ["ServiceProcess", "execute_on_host", "run_bounded"]

# After a SIGKILL, how long to wait for the kernel to reap: only a stuck (D state) process
# takes longer, and we must not hang on it.
_REAP_TIMEOUT_S = 5.0


def run_bounded(argv: Sequence[str], timeout: float) -> ExecResult:
    """Run argv on this host, wait at most `timeout` seconds, capture output.

    Raises subprocess.TimeoutExpired after killing the command's whole process group, and
    FileNotFoundError if argv[0] does not exist.
    """
    args = tuple(argv)
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.communicate(timeout=_REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # A grandchild in another session still holds the pipes: stop reading them.
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        raise
    return ExecResult(
        args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )


def execute_on_host(
    node: str, argv: Sequence[str], wrapped: Sequence[str], timeout: float, check: bool
) -> ExecResult:
    """Run `wrapped` on this host (argv, maybe behind `ip netns exec` or `nsenter`) and judge
    it as `argv` on `node`: the Remote contract's errors. Nodes that share this host's
    filesystem (namespaces) find their programs on its PATH."""
    args = tuple(argv)
    if not args:
        raise ValueError("empty argv")
    if shutil.which(args[0]) is None:
        raise CommandNotFoundError(node, args, "failed: command not found")
    try:
        raw = run_bounded(wrapped, timeout)
    except subprocess.TimeoutExpired as exc:
        raise RemoteTimeoutError(node, args, f"timed out after {timeout} s") from exc
    except OSError as exc:
        raise RemoteError(node, args, f"could not start: {exc}") from exc
    result = ExecResult(args, raw.returncode, raw.stdout, raw.stderr)
    if check and result.returncode != 0:
        reason = f"exited {result.returncode}: {result.stderr.strip()[:500]}"
        raise RemoteError(node, args, reason, result)
    return result


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    """Signal the process group led by pid; False if it no longer exists."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    return True


class ServiceProcess:
    """One long-running service started from `argv` (which may include a wrapper such as
    `ip netns exec NS`), output appended to `log_path`. Remembers argv for restarts.

    Not thread-safe on its own; the backend serializes calls.
    """

    def __init__(self, argv: Sequence[str], log_path: str) -> None:
        self.argv = tuple(argv)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The running process's pid (it leads its own process group), or None."""
        if self._proc is None or not self.running():
            return None
        return self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        assert not self.running(), "start of a running service"
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {shlex.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )

    def signal(self, sig: signal.Signals) -> None:
        """Send sig to the service's process group, if it runs."""
        if self._proc is not None and self.running():
            _signal_group(self._proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the group and reap it. No-op if not running."""
        if self._proc is None:
            return
        self.signal(signal.SIGKILL)
        self._reap(_REAP_TIMEOUT_S)

    def stop(self, timeout: float) -> None:
        """SIGTERM (and SIGCONT, so a paused service sees it), then SIGKILL after timeout."""
        if self._proc is None or not self.running():
            return
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)
        if not self._reap(timeout):
            self.kill()

    def _reap(self, timeout: float) -> bool:
        assert self._proc is not None
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
