"""The `power-loss` fault's disks: each node's data directory on a lazy filesystem of its
own (`nemesis.lazyfs`), mounted on this host before the nodes start and unmounted after
they stop.

A node's disk is its target's `data_dir` (the `KeepsData` hook): the mount point. What
the filesystem holds lies beside it in `<data_dir>.backing` (mode 0700, so the mount's
root is private, as etcd wants its data directory), and its control socket is
`<data_dir>.lazyfs`. Each mount is a process of its own session (a Ctrl-C to the harness
does not take the disks from under the nodes), its output in the node's run directory,
its source in /proc/mounts `lazyfs-<run id>`, so `harness cleanup` finds the mounts of
runs that died (`remove_leftover_mounts`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.backends.base import BackendError, BackendUnavailable
from harness.backends.owner import owner_alive, read_owner
from harness.targets.base import ClusterSpec, KeepsData, Target
from nemesis.faults import Nemesis, PowerLossNemesis, kinds_of
from nemesis.lazyfs import FSNAME_PREFIX, parse_loss, send_command

__all__ = [
    "HostDisks",
    "check_fuse",
    "mount_disks",
    "mounted",
    "power_loss_refusal",
    "remove_leftover_mounts",
]

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 15.0
UNMOUNT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 10.0
# The file in a data root that names the run's owner (harness.runner.DATA_DIR_OWNER).
_OWNER_FILE = ".owner"


def check_fuse() -> None:
    """Raise BackendUnavailable unless this host can mount our filesystem."""
    if not os.path.exists("/dev/fuse"):
        raise BackendUnavailable("/dev/fuse is missing: this host cannot mount FUSE filesystems")
    if shutil.which("fusermount3") is None:
        raise BackendUnavailable("fusermount3 is missing: apt-get install fuse3")
    try:
        import mfusepy  # noqa: F401  (it loads libfuse3 when imported)
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(f"cannot load libfuse3 ({exc}): apt-get install fuse3") from None


def power_loss_refusal(target: Target, backend: str) -> str | None:
    """Why `power-loss` cannot fault `target` on `backend` from this host; None if it can."""
    if not isinstance(target, KeepsData):
        return f"{target.name} does not say where its nodes keep data (the KeepsData hook)"
    if backend != "netns":
        return "power-loss runs on the netns backend only, so far"
    try:
        check_fuse()
    except BackendUnavailable as exc:
        return str(exc)
    return None


def mounted() -> list[tuple[str, str]]:
    """(source, mount point) of every FUSE mount on this host."""
    found = []
    for line in Path("/proc/mounts").read_text(encoding="utf-8").splitlines():
        source, point, fstype, *_ = line.split()
        if fstype.startswith("fuse"):
            found.append((source, point.replace("\\040", " ")))
    return found


def _unmount(point: str) -> bool:
    """Detach the mount at `point` (lazily: a process still in it keeps its files)."""
    result = subprocess.run(
        ["fusermount3", "-u", "-z", point], capture_output=True, timeout=UNMOUNT_TIMEOUT_S
    )
    return result.returncode == 0


@dataclass
class _Disk:
    point: str
    control: str
    proc: subprocess.Popen[bytes]


class HostDisks:
    """The lazy filesystems of one run's nodes, on this host."""

    def __init__(self, run_id: str) -> None:
        self.fsname = f"{FSNAME_PREFIX}{run_id}"
        self._disks: dict[str, _Disk] = {}

    def mount(self, node: str, point: str, log_path: str) -> None:
        """Mount `node`'s disk at `point` (made if missing), or raise BackendError."""
        backing = f"{point}.backing"
        os.makedirs(point, exist_ok=True)
        os.makedirs(backing, mode=0o700, exist_ok=True)
        control = f"{point}.lazyfs"
        argv = [sys.executable, "-m", "nemesis.lazyfs", "mount", point, "--backing", backing]
        argv += ["--control", control, "--fsname", self.fsname]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        self._disks[node] = _Disk(point, control, proc)
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while (self.fsname, point) not in mounted() or not self._answers(control):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BackendError(f"{node}: lazyfs did not mount at {point}; see {log_path}")
            time.sleep(0.05)

    @staticmethod
    def _answers(control: str) -> bool:
        try:
            return send_command(control, "ping", COMMAND_TIMEOUT_S) == "ok"
        except OSError:
            return False

    def lose(self, node: str) -> dict[str, int]:
        """Drop what `node`'s disk did not make durable; what was lost ({"files", "pages",
        "dir_changes", "failed"}), or raise BackendError."""
        try:
            answer = send_command(self._disks[node].control, "lose", COMMAND_TIMEOUT_S)
        except OSError as exc:
            raise BackendError(f"{node}: lazyfs did not answer `lose`: {exc}") from None
        try:
            return parse_loss(answer)
        except ValueError:
            raise BackendError(f"{node}: lazyfs answered `lose` with {answer!r}") from None

    def unmount_all(self) -> None:
        """Unmount every disk and end its process; idempotent. Call after the nodes stop."""
        for node, disk in list(self._disks.items()):
            disk.proc.terminate()  # the mount unmounts itself on SIGTERM
            try:
                disk.proc.wait(timeout=UNMOUNT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s: lazyfs did not end on SIGTERM; killed", node)
                disk.proc.kill()
                disk.proc.wait(timeout=UNMOUNT_TIMEOUT_S)
            if (self.fsname, disk.point) in mounted() and not _unmount(disk.point):
                log.warning("%s: could not unmount %s", node, disk.point)
            del self._disks[node]


def remove_leftover_mounts() -> list[str]:
    """Unmount the lazy filesystems of runs that are gone (their data root's owner is dead
    or unknown); returns the mount points. Those of runs still going are spared."""
    removed = []
    for source, point in mounted():
        if not source.startswith(FSNAME_PREFIX):
            continue
        if owner_alive(read_owner(Path(point).parent / _OWNER_FILE)):
            continue
        if _unmount(point):
            removed.append(point)
    return removed


def mount_disks(
    target: Target, nemeses: list[Nemesis], cluster: ClusterSpec, run_id: str, run_dir: Path
) -> HostDisks | None:
    """With a power-loss nemesis: every node's disk mounted at its target's data_dir (the
    mount's output in the node's run directory); else None. The caller unmounts them."""
    if PowerLossNemesis.name not in kinds_of(nemeses):
        return None
    if not isinstance(target, KeepsData):
        raise BackendError(f"{target.name} does not say where its nodes keep data")
    disks = HostDisks(run_id)
    try:
        for node in cluster.nodes:
            log_path = run_dir / "nodes" / node / "lazyfs.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            disks.mount(node, target.data_dir(cluster, node), str(log_path))
    except BaseException:
        disks.unmount_all()
        raise
    return disks
