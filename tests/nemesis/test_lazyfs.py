"""lazyfs on a real mount, through real syscalls: what a power loss takes and keeps.

Durable: a file's data from its fsync on; a directory change from the fsync of its
directory on. Everything else goes at `lose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import mmap
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nemesis.lazyfs import send_command
from raftkv.client import Client
from raftkv.localcluster import LocalCluster
from raftkv.storage import Storage
from raftkv.types import Entry, HardState

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

MOUNT_TIMEOUT_S = 10.0


@dataclass
class Mount:
    path: Path
    backing: Path
    control: str

    def lose(self) -> str:
        answer = send_command(self.control, "lose", timeout_s=10.0)
        assert answer.startswith("lost "), answer
        return answer


def _wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def mounted(path: Path) -> bool:
    """In the mount table, even when dead (os.path.ismount says no: ENOTCONN)."""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


def _unmount(path: Path, proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the filesystem unmounts itself), then fusermount3 -u, then umount -l."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    for argv in (["fusermount3", "-u", str(path)], ["umount", "-l", str(path)]):
        if not mounted(path):
            break
        subprocess.run(argv, timeout=10, check=False, capture_output=True)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture
def lazy(tmp_path: Path) -> Iterator[Mount]:
    with mounted_lazyfs(tmp_path) as (mount, proc):
        yield mount
    assert proc.returncode == 0  # SIGTERM: a clean unmount


@contextlib.contextmanager
def mounted_lazyfs(
    tmp_path: Path, *options: str
) -> Iterator[tuple[Mount, subprocess.Popen[bytes]]]:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (fuse3)")
    mount = Mount(tmp_path / "mnt", tmp_path / "backing", str(tmp_path / "control.sock"))
    mount.path.mkdir()
    mount.backing.mkdir()
    argv = [sys.executable, "-m", "nemesis.lazyfs", "mount", str(mount.path)]
    argv += ["--backing", str(mount.backing), "--control", mount.control, *options]
    log = open(tmp_path / "lazyfs.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        up = _wait_until(
            lambda: os.path.ismount(mount.path) and os.path.exists(mount.control), MOUNT_TIMEOUT_S
        )
        assert up, (tmp_path / "lazyfs.log").read_text()
        yield mount, proc
    finally:
        _unmount(mount.path, proc)
        log.close()
    assert not mounted(mount.path)


def write_file(path: Path, data: bytes, *, fsync: bool, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_file(path: Path, data: bytes) -> None:
    write_file(path, data, fsync=True)
    fsync_dir(path.parent)


def test_written_not_synced_is_lost_and_fsynced_is_kept(lazy: Mount) -> None:
    durable_file(lazy.path / "a", b"synced")
    write_file(lazy.path / "a", b"SYNCED-and-more-not-synced", fsync=False)
    assert (lazy.path / "a").read_bytes() == b"SYNCED-and-more-not-synced"  # read your writes
    durable_file(lazy.path / "b", b"kept")
    lazy.lose()
    assert (lazy.path / "a").read_bytes() == b"synced"
    assert (lazy.path / "b").read_bytes() == b"kept"


def test_fdatasync_makes_data_durable(lazy: Mount) -> None:
    durable_file(lazy.path / "a", b"")
    fd = os.open(lazy.path / "a", os.O_WRONLY)
    os.pwrite(fd, b"x" * 10000, 5000)
    os.fdatasync(fd)
    os.pwrite(fd, b"y" * 10, 0)
    os.close(fd)
    lazy.lose()
    assert (lazy.path / "a").read_bytes() == b"\0" * 5000 + b"x" * 10000


def test_created_file_without_dir_fsync_is_gone(lazy: Mount) -> None:
    write_file(lazy.path / "new", b"data", fsync=True)  # the data, not the name
    (lazy.path / "d").mkdir()
    lazy.lose()
    assert sorted(os.listdir(lazy.path)) == []
    assert sorted(os.listdir(lazy.backing)) == [".lazyfs-trash"]


def test_renamed_without_dir_fsync_has_the_old_name(lazy: Mount) -> None:
    durable_file(lazy.path / "old", b"one")
    durable_file(lazy.path / "target", b"two")
    os.rename(lazy.path / "old", lazy.path / "target")  # replaces target
    assert (lazy.path / "target").read_bytes() == b"one"
    lazy.lose()
    assert (lazy.path / "old").read_bytes() == b"one"
    assert (lazy.path / "target").read_bytes() == b"two"


def test_rename_across_directories_needs_both_fsynced(lazy: Mount) -> None:
    (lazy.path / "src").mkdir()
    (lazy.path / "dst").mkdir()
    fsync_dir(lazy.path)
    durable_file(lazy.path / "src" / "f", b"f")
    os.rename(lazy.path / "src" / "f", lazy.path / "dst" / "f")
    fsync_dir(lazy.path / "dst")
    lazy.lose()
    assert os.listdir(lazy.path / "src") == ["f"] and os.listdir(lazy.path / "dst") == []
    os.rename(lazy.path / "src" / "f", lazy.path / "dst" / "f")
    fsync_dir(lazy.path / "dst")
    fsync_dir(lazy.path / "src")
    lazy.lose()
    assert os.listdir(lazy.path / "src") == [] and os.listdir(lazy.path / "dst") == ["f"]


def test_unlink_without_dir_fsync_comes_back(lazy: Mount) -> None:
    durable_file(lazy.path / "f", b"still here")
    (lazy.path / "f").unlink()
    assert not (lazy.path / "f").exists()
    lazy.lose()
    assert (lazy.path / "f").read_bytes() == b"still here"
    (lazy.path / "f").unlink()
    fsync_dir(lazy.path)
    lazy.lose()
    assert not (lazy.path / "f").exists()
    assert os.listdir(lazy.backing / ".lazyfs-trash") == []


def test_directory_fsync_makes_creates_and_mkdirs_durable(lazy: Mount) -> None:
    (lazy.path / "d").mkdir()
    write_file(lazy.path / "d" / "f", b"data", fsync=True)
    fsync_dir(lazy.path / "d")
    fsync_dir(lazy.path)
    (lazy.path / "e").mkdir()
    lazy.lose()
    assert os.listdir(lazy.path) == ["d"]
    assert (lazy.path / "d" / "f").read_bytes() == b"data"


def test_o_append_appends_and_is_lost_unsynced(lazy: Mount) -> None:
    durable_file(lazy.path / "log", b"a")
    write_file(lazy.path / "log", b"b", fsync=True, flags=os.O_APPEND)
    fd = os.open(lazy.path / "log", os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"c")
    os.write(fd, b"d")
    os.close(fd)
    assert (lazy.path / "log").read_bytes() == b"abcd"
    lazy.lose()
    assert (lazy.path / "log").read_bytes() == b"ab"


def test_truncate_ftruncate_and_o_trunc_are_undone(lazy: Mount) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes: three pages
    durable_file(lazy.path / "f", data)
    os.truncate(lazy.path / "f", 100)
    assert (lazy.path / "f").stat().st_size == 100
    lazy.lose()
    assert (lazy.path / "f").read_bytes() == data
    fd = os.open(lazy.path / "f", os.O_RDWR)
    os.ftruncate(fd, 20000)  # grows with a hole
    os.close(fd)
    write_file(lazy.path / "f", b"new", fsync=False, flags=os.O_TRUNC)
    assert (lazy.path / "f").read_bytes() == b"new"
    lazy.lose()
    assert (lazy.path / "f").read_bytes() == data


def test_preallocation_is_written_zeros_and_fallocate_is_refused(lazy: Mount) -> None:
    durable_file(lazy.path / "f", b"12345")
    fd = os.open(lazy.path / "f", os.O_RDWR)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        keep_size = 1
        assert libc.fallocate(fd, keep_size, ctypes.c_long(0), ctypes.c_long(1 << 20)) == -1
        assert ctypes.get_errno() == errno.EOPNOTSUPP
        os.posix_fallocate(fd, 0, 1 << 16)  # glibc falls back to writing
        assert os.fstat(fd).st_size == 1 << 16
    finally:
        os.close(fd)
    lazy.lose()
    assert (lazy.path / "f").read_bytes() == b"12345"


@pytest.mark.parametrize("metadata", ["strict", "journaled"])
def test_a_directory_made_and_never_fsynced_is_lost_unless_the_journal_commits_it(
    tmp_path: Path, metadata: str
) -> None:
    # As etcd 3.4 makes its member directory: mkdir, a file in it fsynced, a rename fsynced
    # in the new directory, but never an fsync of the directory that holds `member`.
    with mounted_lazyfs(tmp_path, "--metadata", metadata) as (lazy, _):
        (lazy.path / "member").mkdir()
        durable_file(lazy.path / "member" / "db", b"data")
        lazy.lose()
        kept = (lazy.path / "member" / "db").exists()
    assert kept == (metadata == "journaled")


def test_shared_mmap_writes_made_durable_by_msync_and_fsync_are_kept(lazy: Mount) -> None:
    # Stores such as etcd (bbolt) map their files shared; the loss must not undo a page
    # written through a map once msync and fsync made it durable.
    durable_file(lazy.path / "f", b"m" * 8192)
    fd = os.open(lazy.path / "f", os.O_RDWR)
    try:
        with mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as shared:
            shared[:4] = b"SYNC"
            shared.flush()
        os.fsync(fd)
        with mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE) as private:
            private[:4] = b"PRIV"  # a private map's writes never reach the file
    finally:
        os.close(fd)
    lazy.lose()
    assert (lazy.path / "f").read_bytes() == b"SYNC" + b"m" * 8188


def test_threads_writing_different_files_keep_exactly_the_synced(lazy: Mount) -> None:
    files, rounds = 8, 20
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            path = lazy.path / f"f{i}"
            durable_file(path, b"")
            for r in range(rounds):
                write_file(path, f"{i}:{r};".encode(), fsync=i % 2 == 0, flags=os.O_APPEND)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(files)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads), errors
    lazy.lose()
    for i in range(files):
        expected = "".join(f"{i}:{r};" for r in range(rounds)) if i % 2 == 0 else ""
        assert (lazy.path / f"f{i}").read_text() == expected, i


def _storage_round(data_dir: Path, fsync: bool) -> None:
    storage = Storage.open(data_dir, fsync=fsync, segment_bytes=1 << 20)
    try:
        for index in range(1, 201):
            storage.append([Entry(term=1, index=index, data=b"v%d" % index)])
            storage.set_hard_state(HardState(term=1, vote="n1", commit=index))
            storage.sync()
    finally:
        storage.close()


@pytest.mark.parametrize("fsync", [True, False])
def test_raftkv_storage_keeps_synced_entries_across_a_loss(lazy: Mount, fsync: bool) -> None:
    data_dir = lazy.path / "node"
    storage = Storage.open(data_dir, fsync=True, segment_bytes=1 << 20)
    storage.close()
    _storage_round(data_dir, fsync)
    lazy.lose()
    storage = Storage.open(data_dir, fsync=True, segment_bytes=1 << 20)
    try:
        assert len(storage.entries) == (200 if fsync else 0)
        assert storage.hard_state.term == (1 if fsync else 0)
    finally:
        storage.close()


def test_control_answers_pending_and_unknown_commands(lazy: Mount) -> None:
    write_file(lazy.path / "f", b"x", fsync=False)
    assert send_command(lazy.control, "pending", timeout_s=5) == "pending files=1 dir_changes=1"
    assert send_command(lazy.control, "ping", timeout_s=5) == "ok"
    assert send_command(lazy.control, "reboot", timeout_s=5).startswith("error: unknown command")
    assert lazy.lose() == "lost files=1 pages=0 dir_changes=1 failed=0"


def test_a_killed_filesystem_is_still_unmounted(tmp_path: Path) -> None:
    with mounted_lazyfs(tmp_path) as (mount, proc):
        proc.kill()
        proc.wait(timeout=5)
        assert mounted(mount.path)
        with pytest.raises(OSError) as dead:
            os.listdir(mount.path)
        assert dead.value.errno == errno.ENOTCONN
    assert not mounted(mount.path)


async def _put_all(cluster: LocalCluster, keys: int) -> dict[str, int]:
    """Put 1..3 to each key; the last value each key had acknowledged."""
    acked: dict[str, int] = {}
    client = Client(cluster.addrs, timeout_s=5)
    try:
        for value in range(1, 4):
            for k in range(keys):
                if (await client.put(f"k{k}", value)).get("ok") is True:
                    acked[f"k{k}"] = value
    finally:
        await client.close()
    return acked


async def _read_all(cluster: LocalCluster, keys: int) -> dict[str, object]:
    client = Client(cluster.addrs, timeout_s=5)
    try:
        return {f"k{k}": (await client.get(f"k{k}", mode="log")).get("value") for k in range(keys)}
    finally:
        await client.close()


@pytest.mark.parametrize("bugs", [(), ("no-fsync",)], ids=["fsync", "no-fsync"])
def test_raftkv_cluster_power_failed_at_once(lazy: Mount, bugs: tuple[str, ...]) -> None:
    """Three nodes on the mount, kill -9 all, lose, restart: every acknowledged put is
    still there; with the no-fsync bug, acknowledged puts are gone."""
    keys = 10
    # The data root and the cluster token exist before a power loss, as on a real
    # machine (LocalCluster writes its token without an fsync: a loss leaves it empty).
    (lazy.path / "cluster").mkdir()
    fsync_dir(lazy.path)
    token = lazy.path / "cluster" / "cluster-token"
    durable_file(token, secrets.token_hex(32).encode() + b"\n")
    token.chmod(0o600)
    cluster = LocalCluster(
        lazy.path / "cluster", 3, bugs=bugs, extra_args=("--log-level", "warning")
    )
    with cluster:
        asyncio.run(cluster.wait_for_leader(timeout_s=20))
        acked = asyncio.run(_put_all(cluster, keys))
        assert len(acked) == keys
        for node_id in cluster.ids:
            cluster.kill(node_id)
        lazy.lose()
        cluster.start()
        asyncio.run(cluster.wait_for_leader(timeout_s=20))
        values = asyncio.run(_read_all(cluster, keys))
    if bugs:
        assert values != acked and any(v is None for v in values.values()), values
    else:
        assert values == acked
