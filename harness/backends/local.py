"""Bounded commands on the harness host.

Each runs in a session of its own, so a timed-out command cannot leave children behind.
Long-running services on this host go through `backends.supervisor` instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence

from nemesis.remote import ExecResult, RemoteError, judge

__all__ = ["execute_on_host", "run_bounded"]

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
        return judge(node, args, None, timeout, check, not_found=True)
    try:
        raw = run_bounded(wrapped, timeout)
    except subprocess.TimeoutExpired:
        return judge(node, args, None, timeout, check, timed_out=True)
    except OSError as exc:
        raise RemoteError(node, args, f"could not start: {exc}") from exc
    result = ExecResult(args, raw.returncode, raw.stdout, raw.stderr)
    return judge(node, args, result, timeout, check)


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    """Signal the process group led by pid; False if it no longer exists."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    return True
