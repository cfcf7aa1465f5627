"""`DockerRemote`: commands in a node container, through `docker exec`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from docker.errors import APIError, DockerException

from harness.image import short_error
from nemesis.remote import ExecResult, RemoteError, judge

__all__ = ["DockerRemote"]

# `timeout` (coreutils) ends a command that outlives its budget: TERM, then KILL 1 s later.
_TIMEOUT_EXITS = (124, 137)
# The shell's codes for a program that is missing or cannot be executed.
_NOT_FOUND_EXITS = (126, 127)


class DockerRemote:
    """`Remote` for a node container: `docker exec` of an argv list (never a shell string),
    bounded by `timeout` inside the container."""

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
            raise RemoteError(self.node, args, f"could not run: {short_error(exc)}") from None
        out, err = raw.output if isinstance(raw.output, tuple) else (raw.output, b"")
        result = ExecResult(
            args,
            int(raw.exit_code if raw.exit_code is not None else -1),
            (out or b"").decode(errors="replace"),
            (err or b"").decode(errors="replace"),
        )
        code = result.returncode
        return judge(
            self.node,
            args,
            result,
            timeout,
            check,
            timed_out=code in _TIMEOUT_EXITS,
            not_found=code in _NOT_FOUND_EXITS,
        )
