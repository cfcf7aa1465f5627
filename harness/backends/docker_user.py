"""A user's image on the docker backend (`user_image`, `harness test --image`).

It runs as it is, never built or pulled. Its entrypoint and command are replaced by our
supervisor (`backends/supervisor.sh`), copied in before the container starts as
`USER_SUPERVISOR` and run by `/bin/sh` as root, so the image needs only /bin/sh and basic
tools (`USER_IMAGE_TOOLS`); start, kill, pause and restart work as in our image. This
host's libfaketime is copied in as well where the image has none (`install_faketime`), for
clock faults.

Such an image may have no iptables, so its containers get no NET_ADMIN and partitions are
made from this host instead: `UserImageRemote` runs `iptables` argv lists under
`nsenter --net=/proc/<container pid>/ns/net` (root, nsenter and iptables here; the engine on
this host) and everything else through `docker exec`. Always from the host for a user's
image, whether it has iptables or not: one way, and no capability for the container. The
nemesis does not know: it builds the same argv lists and calls `Remote.execute` as for any
node. The rules die with the container's namespace.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Sequence
from typing import Any

from docker.client import DockerClient
from docker.errors import APIError, DockerException, NotFound

from harness.backends.base import BackendError, BackendUnavailable
from harness.backends.docker_remote import DockerRemote
from harness.backends.local import execute_on_host
from harness.backends.supervisor import SCRIPT
from harness.image import short_error
from nemesis import clock
from nemesis.iptables import IPTABLES
from nemesis.remote import ExecResult, RemoteError, judge

__all__ = [
    "SHELL",
    "USER_IMAGE_TOOLS",
    "USER_SUPERVISOR",
    "UserImageRemote",
    "check_host_firewall",
    "check_user_tools",
    "faketime_archive",
    "find_user_image",
    "install_faketime",
    "install_supervisor",
    "supervisor_archive",
]

SHELL = "/bin/sh"
# Our supervisor goes in a directory of our own at the image's root: every image has a
# root, while /usr/local/bin may be missing from a small one.
USER_SUPERVISOR_DIR = "jepsen-py"
USER_SUPERVISOR = f"/{USER_SUPERVISOR_DIR}/supervisor.sh"
# What the supervisor and DockerRemote run inside a user's image, besides the shell.
USER_IMAGE_TOOLS = ("timeout", "cat", "sed", "cut", "sleep", "mkdir", "dirname")
NSENTER = "nsenter"


class UserImageRemote(DockerRemote):
    """`Remote` for a container of a user's image: `iptables` runs on this host inside the
    container's network namespace (the image may have no iptables), the rest as in
    `DockerRemote`. `pid` is the container's main process, as the engine reports it."""

    def __init__(self, node: str, address: str, container: Any, pid: int) -> None:
        super().__init__(node, address, container)
        self._pid = pid

    def execute(self, argv: Sequence[str], timeout: float, check: bool = True) -> ExecResult:
        args = tuple(argv)
        if not args or args[0] != IPTABLES:
            return super().execute(args, timeout, check)
        problem = _host_firewall_problem() or self._netns_problem()
        if problem:
            raise RemoteError(self.node, args, f"failed: {problem}")
        wrapped = [NSENTER, f"--net=/proc/{self._pid}/ns/net", *args]
        result = execute_on_host(self.node, args, wrapped, timeout, check=False)
        # nsenter's own failures exit 1, as iptables does for "no such chain": tell them apart.
        return judge(self.node, args, result, timeout, check or _nsenter_failed(result))

    def _netns_problem(self) -> str | None:
        # Our supervisor in the process's root proves the pid is this container's on this
        # host; a remote engine's pid would name some other process here.
        if os.path.exists(f"/proc/{self._pid}/root{USER_SUPERVISOR}"):
            return None
        return (
            f"the container's process {self._pid} is not on this host (the Docker engine "
            "must run here for partitions of a user's image)"
        )


def _nsenter_failed(result: ExecResult) -> bool:
    return result.returncode != 0 and result.stderr.startswith(f"{NSENTER}:")


def _host_firewall_problem() -> str | None:
    """Why this host cannot apply a user image's partitions (None if it can)."""
    missing = [tool for tool in (NSENTER, IPTABLES) if shutil.which(tool) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed on the harness host (partitions of a "
            "user's image are made from here)"
        )
    if os.geteuid() != 0:
        return "partitions of a user's image are made from the harness host: it must run as root"
    return None


def check_host_firewall() -> None:
    """Raise BackendUnavailable if this host cannot partition containers of a user's image."""
    problem = _host_firewall_problem()
    if problem:
        raise BackendUnavailable(problem)


def find_user_image(client: DockerClient, name: str) -> Any:
    """The user's image `name` on this engine, never pulled; BackendUnavailable if absent."""
    try:
        return client.images.get(name)
    except NotFound:
        raise BackendUnavailable(
            f"image {name!r} is not on this Docker engine, and it is never pulled: build or "
            "load it first (docker build, docker load)"
        ) from None
    except (APIError, DockerException) as exc:
        raise BackendUnavailable(f"image {name!r}: {short_error(exc)}") from None


def supervisor_archive() -> bytes:
    """A tar of our supervisor as USER_SUPERVISOR, for put_archive at the container's root."""
    script = SCRIPT.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        folder = tarfile.TarInfo(USER_SUPERVISOR_DIR)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(folder)
        member = tarfile.TarInfo(USER_SUPERVISOR.lstrip("/"))
        member.size, member.mode = len(script), 0o755
        archive.addfile(member, io.BytesIO(script))
    return buffer.getvalue()


def install_supervisor(container: Any, image: str, archive: bytes) -> None:
    """Copy our supervisor into a created (not yet started) container of a user's image."""
    try:
        chunks, _ = container.get_archive(SHELL)
        for _ in chunks:  # read to the end: the answer holds the connection until then
            pass
    except NotFound:
        raise BackendUnavailable(
            f"image {image!r} has no {SHELL}: the docker backend runs its supervisor "
            f"with {SHELL} and basic tools ({', '.join(USER_IMAGE_TOOLS)})"
        ) from None
    container.put_archive("/", archive)


def faketime_archive() -> bytes | None:
    """A tar of this host's libfaketime as `clock.LIBFAKETIME`, for put_archive at a
    container's root; None where this host has none."""
    try:
        with open(clock.LIBFAKETIME, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        # No members for the parent directories: the engine makes the missing ones (0755)
        # and leaves the image's own as they are.
        member = tarfile.TarInfo(clock.LIBFAKETIME.lstrip("/"))
        member.size, member.mode = len(data), 0o644
        archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def install_faketime(container: Any, archive: bytes | None) -> None:
    """Copy `archive` (`faketime_archive`) into a created container whose image has no
    libfaketime; an image's own copy stays (it matches the image's libc). Nothing without
    an archive: harness.clocks then refuses clock faults naming the node."""
    if archive is None:
        return
    try:
        chunks, _ = container.get_archive(clock.LIBFAKETIME)
        for _ in chunks:  # read to the end: the answer holds the connection until then
            pass
        return
    except NotFound:
        pass
    container.put_archive("/", archive)


def check_user_tools(container: Any, image: str) -> None:
    """BackendUnavailable naming the tools our supervisor needs that the image lacks."""
    script = 'for t in "$@"; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done'
    try:
        raw = container.exec_run([SHELL, "-c", script, "sh", *USER_IMAGE_TOOLS], demux=False)
    except (APIError, DockerException) as exc:
        raise BackendError(f"docker: cannot run {SHELL} in {image}: {short_error(exc)}") from None
    missing = (raw.output or b"").decode(errors="replace").split()
    if raw.exit_code != 0 or missing:
        raise BackendUnavailable(
            f"image {image!r} lacks {', '.join(missing) or 'a working ' + SHELL}: the docker "
            f"backend's supervisor needs {SHELL} and {', '.join(USER_IMAGE_TOOLS)}"
        )
