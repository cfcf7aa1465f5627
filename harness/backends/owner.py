"""Who made a run, so `harness cleanup` removes what killed runs left and spares runs going on.

An owner is `<host>:<pid>:<start>`: the harness's host, its pid, and the process's start time
(field 22 of /proc/<pid>/stat, in clock ticks since boot), so a pid that a later process
reuses does not keep a dead run alive. Owners written before the start time was recorded
(`<host>:<pid>`) are judged by the pid alone.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["current_owner", "owner_alive", "read_owner", "write_owner"]


def _start_ticks(pid: int) -> str | None:
    """The start time of process `pid` (None if there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    return stat.rsplit(")", 1)[1].split()[19]


def current_owner() -> str:
    """This process as an owner: `<host>:<pid>:<start>`."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by `owner` still runs. False for another host (we cannot
    tell), a malformed or empty owner, a dead pid, or a pid now held by another process."""
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    return not start or _start_ticks(int(pid)) == start


def write_owner(path: Path, owner: str) -> bool:
    """Create `path` holding `owner` (usually `current_owner()`), only if no such file exists
    yet (False then); atomic, so two harnesses never both claim it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(owner + "\n")
    return True


def read_owner(path: Path) -> str:
    """The owner recorded in `path` ("" if there is none: an unknown owner is not alive)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""
