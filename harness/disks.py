"""The `power-loss` fault's disks: each node's data directory on a lazy filesystem of its
own (`nemesis.lazyfs`), mounted before the nodes start and unmounted after they stop.

Where the mount runs depends on the backend:

- netns (`mount_disks`): on this host, at the target's `data_dir` (the `KeepsData` hook),
  which the namespaces share.
- docker (`bind_disks`, before the backend's setup): on this host, at `<dir>/<node>` in a
  directory of the run's own (`harness.runner.make_data_dir`: its owner recorded), and
  bound into the node's container at the target's `data_dir` when setup makes it. Bound
  rather than propagated: a bind made at creation needs no shared mount on this host.
  The containers go first at teardown, then the mounts.
- ssh (`mount_disks`): on each node's host, by a process of ours there, through the
  backend (`MountsLazyfs`; `backends.ssh_disks`), which unmounts at its teardown.

On this host a mount point's filesystem lies beside it in `<point>.backing` (mode 0700,
so the mount's root is private, as etcd wants its data directory), and its control
socket is `<point>.lazyfs`. Each mount is a process of its own session (a Ctrl-C to the
harness does not take the disks from under the nodes), its output in the node's run
directory, its source in /proc/mounts `lazyfs-<run id>`, so `harness cleanup` finds the
mounts of runs that died (`remove_leftover_mounts`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from harness.backends.base import Backend, BackendError, BackendUnavailable
from harness.backends.owner import owner_alive, read_owner
from harness.backends.ssh_disks import loss_of
from harness.targets.base import ClusterSpec, KeepsData, Target
from nemesis.faults import Nemesis, PowerLossNemesis, kinds_of
from nemesis.lazyfs import FSNAME_PREFIX, send_command

__all__ = [
    "BindsHostDirs",
    "Disks",
    "HostDisks",
    "MountsLazyfs",
    "bind_disks",
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


class Disks(Protocol):
    """One run's lazy filesystems, a node's each: `lose(node)` drops what the node's disk
    did not make durable and says what ({"files", "pages", "dir_changes", "failed"}), or
    raises BackendError; `unmount_all()`, idempotent, after the nodes stopped."""

    def lose(self, node: str) -> dict[str, int]: ...

    def unmount_all(self) -> None: ...


@runtime_checkable
class BindsHostDirs(Protocol):
    """A backend whose nodes see directories of this host bound in where they are named
    before `setup` (docker); `data_root` and `run_id` as the backend has them."""

    data_root: str
    run_id: str

    def bind_host_dir(self, node: str, host_path: str, container_path: str) -> None: ...


@runtime_checkable
class MountsLazyfs(Protocol):
    """A backend whose nodes' hosts mount the lazy filesystem themselves (ssh): at each
    node's point, after checking each host can (BackendUnavailable naming it); unmounted
    by the backend's teardown."""

    def mount_lazyfs(
        self, points: Mapping[str, str], fsname: str, metadata: str = "strict"
    ) -> Disks: ...


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
    if backend == "ssh":
        return None  # each host is checked before any node starts (backends.ssh_disks)
    if backend not in ("netns", "docker"):
        return f"power-loss cannot run on the {backend} backend"
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
    """The lazy filesystems of one run's nodes, on this host. `root`, if given, is a
    directory of theirs alone, removed once all are unmounted; `metadata` one of
    `nemesis.lazyfs.METADATA_MODES`."""

    def __init__(self, run_id: str, root: str | None = None, metadata: str = "strict") -> None:
        self.fsname = f"{FSNAME_PREFIX}{run_id}"
        self.root = root
        self.metadata = metadata
        self._disks: dict[str, _Disk] = {}

    def mount(self, node: str, point: str, log_path: str) -> None:
        """Mount `node`'s disk at `point` (made if missing), or raise BackendError."""
        backing = f"{point}.backing"
        os.makedirs(point, exist_ok=True)
        os.makedirs(backing, mode=0o700, exist_ok=True)
        control = f"{point}.lazyfs"
        argv = [sys.executable, "-m", "nemesis.lazyfs", "mount", point, "--backing", backing]
        argv += ["--control", control, "--fsname", self.fsname, "--metadata", self.metadata]
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
        return loss_of(node, answer)

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
        if self.root is not None and not any(
            Path(point).is_relative_to(self.root) for _, point in mounted()
        ):
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


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


def _keeps_data(target: Target, nemeses: list[Nemesis]) -> KeepsData | None:
    """The target, if a power-loss nemesis needs its disks; else None."""
    if PowerLossNemesis.name not in kinds_of(nemeses):
        return None
    if not isinstance(target, KeepsData):
        raise BackendError(f"{target.name} does not say where its nodes keep data")
    return target


def _mount_here(disks: HostDisks, points: Mapping[str, str], run_dir: Path) -> HostDisks:
    """Mount each node's disk at its point on this host (the mount's output in the node's
    run directory); on any failure, unmount what was mounted and re-raise."""
    try:
        for node, point in points.items():
            log_path = run_dir / "nodes" / node / "lazyfs.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            disks.mount(node, point, str(log_path))
    except BaseException:
        disks.unmount_all()
        raise
    return disks


def bind_disks(
    target: Target,
    nemeses: list[Nemesis],
    backend: Backend,
    nodes: Sequence[str],
    run_dir: Path,
    metadata: str = "strict",
) -> HostDisks | None:
    """Before the backend's setup, for a backend that `BindsHostDirs` under a power-loss
    nemesis: every node's disk mounted in a new directory of this host's and named to the
    backend, to be bound at the target's data_dir; else None. The caller unmounts them
    after the backend's teardown. `metadata`: `nemesis.lazyfs.METADATA_MODES`."""
    keeps = _keeps_data(target, nemeses)
    if keeps is None or not isinstance(backend, BindsHostDirs):
        return None
    # Where the nodes see their data: as the run's ClusterSpec will say, addresses aside.
    cluster = ClusterSpec(nodes=tuple(nodes), addresses={}, data_root=backend.data_root)
    from harness.runner import make_data_dir  # here: the runner imports this module

    root = make_data_dir(backend.run_id)
    disks = HostDisks(backend.run_id, root=root, metadata=metadata)
    points = {node: f"{root}/{node}" for node in nodes}
    _mount_here(disks, points, run_dir)
    for node, point in points.items():
        backend.bind_host_dir(node, point, keeps.data_dir(cluster, node))
    log.info("power-loss disks mounted in %s, to be bound into the nodes", root)
    return disks


def mount_disks(
    target: Target,
    nemeses: list[Nemesis],
    cluster: ClusterSpec,
    backend: Backend,
    run_id: str,
    run_dir: Path,
    metadata: str = "strict",
) -> Disks | None:
    """With a power-loss nemesis, after the backend's setup: every node's disk mounted at
    its target's data_dir, on this host (netns) or by the backend on the node's host
    (`MountsLazyfs`); else None. The caller unmounts them. `metadata`: as `bind_disks`."""
    keeps = _keeps_data(target, nemeses)
    if keeps is None:
        return None
    assert not isinstance(backend, BindsHostDirs), "bound disks are mounted before setup"
    points = {node: keeps.data_dir(cluster, node) for node in cluster.nodes}
    if isinstance(backend, MountsLazyfs):
        return backend.mount_lazyfs(points, f"{FSNAME_PREFIX}{run_id}", metadata)
    return _mount_here(HostDisks(run_id, metadata=metadata), points, run_dir)
