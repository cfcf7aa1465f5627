"""The tiny protocol every fault talks through: run a command on a node, control its process.

Faults never reach a host directly. They hold a `Remote` per node (run argv there) and one
`ProcessControl` (kill, restart, pause, resume the system under test). The harness backends
(netns, docker, ssh) implement both; `nemesis.fakes` implements them for unit tests.

Errors, following the house split between operating and programmer errors:

    RemoteError                 a command failed, timed out or could not start (operating error)
     ├── RemoteTimeoutError     the command ran past its timeout and was killed
     └── CommandNotFoundError   the program (argv[0]) does not exist on the node

Every Remote judges what a command did with `judge`, so the errors read alike whatever ran
it; each tells a timeout and a missing program apart its own way (a subprocess timeout,
`timeout`'s exit codes, a marker line) and says which it saw.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "CommandNotFoundError",
    "ExecResult",
    "ProcessControl",
    "Remote",
    "RemoteError",
    "RemoteTimeoutError",
    "judge",
]


@dataclass(frozen=True)
class ExecResult:
    """What one command did on a node. Output is decoded as UTF-8 with replacement."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class RemoteError(Exception):
    """A command on a node failed (nonzero exit with check=True), timed out, or could not start.

    The message names the node and the argv; `result` holds the output when there was one.
    """

    def __init__(
        self, node: str, argv: Sequence[str], reason: str, result: ExecResult | None = None
    ) -> None:
        self.node = node
        self.argv = tuple(argv)
        self.reason = reason
        self.result = result
        super().__init__(f"{node}: `{shlex.join(self.argv)}` {reason}")


class RemoteTimeoutError(RemoteError):
    """The command did not finish within its timeout; it was killed."""


class CommandNotFoundError(RemoteError):
    """The program named by argv[0] is not installed on the node."""


def judge(
    node: str,
    argv: Sequence[str],
    result: ExecResult | None,
    timeout: float,
    check: bool,
    *,
    timed_out: bool = False,
    not_found: bool = False,
) -> ExecResult:
    """The `Remote.execute` contract applied to one command on `node`: RemoteTimeoutError
    if it `timed_out` (after `timeout` seconds), CommandNotFoundError if argv[0] was
    `not_found`, RemoteError for a nonzero exit with `check`; else the result.

    `result` may be None only for a timeout or a missing program (nothing ran to the end).
    """
    args = tuple(argv)
    if timed_out:
        raise RemoteTimeoutError(node, args, f"timed out after {timeout} s", result)
    if not_found:
        raise CommandNotFoundError(node, args, "failed: command not found", result)
    assert result is not None, "a command that ran has a result"
    if check and result.returncode != 0:
        reason = f"exited {result.returncode}: {result.stderr.strip()[:500]}"
        raise RemoteError(node, args, reason, result)
    return result


@runtime_checkable
class Remote(Protocol):
    """Runs commands on one node.

    `node` is the node's name ("n1"); `address` its IP address as the other nodes see it (the
    address a partition drops). `execute` runs an argv list (never a shell string) and waits at
    most `timeout` seconds. With `check=True` a nonzero exit raises `RemoteError`; with
    `check=False` the result is returned whatever the exit code. A timeout always raises
    `RemoteTimeoutError`; a missing program always raises `CommandNotFoundError`. Safe to call
    from several threads at once.
    """

    node: str
    address: str

    def execute(self, argv: Sequence[str], timeout: float, check: bool = True) -> ExecResult: ...


@runtime_checkable
class ProcessControl(Protocol):
    """Controls the system under test's service process on each node.

    Every method is idempotent, so healing can always be retried: `kill` of a dead process,
    `restart` of a running one, `pause` of a paused one and `resume` of a running one do
    nothing. `kill` is SIGKILL (no chance to flush); `restart` starts the same argv with the
    same data directory; `pause` is SIGSTOP and `resume` SIGCONT. Operating failures raise
    `RemoteError`.
    """

    def kill(self, node: str) -> None: ...

    def restart(self, node: str) -> None: ...

    def pause(self, node: str) -> None: ...

    def resume(self, node: str) -> None: ...
