"""The FUSE operations: a passthrough over a backing directory that journals what a
power loss would take (`journal.Journal`) and drops it on `LazyOperations.lose`.

Durability, as on a real disk with no write cache promises: a file's data and size are
durable from its fsync/fdatasync on; a create, mkdir, unlink, rmdir or rename from the
fsync of its directory (a rename: of both directories) on. Metadata (mode, owner,
times) is applied at once and never lost. Unsupported, refused with EOPNOTSUPP:
fallocate (glibc's posix_fallocate then writes zeros, which is journaled), hard links,
symlinks, device nodes. Writes reach us as they are made (the kernel caches pages for
reads only, and drops them on open: see `mount`); pages written through a shared map
reach us when the kernel writes them back (msync, fsync, munmap, or later), so until then
they are not even unsynced. One lock serialises every operation.

A directory renamed before its own fsync keeps its pending changes under its old name:
they become durable only through the fsync of a directory of that name; a loss cannot
find them under the new name and leaves them be (counted as `failed` in its report).

Directory changes follow one of lazyfs.METADATA_MODES: `strict` is the above (all POSIX
promises); `journaled` makes every directory change durable at the next fsync or
fdatasync of any file or directory, as a journaling filesystem that commits all its
metadata in one transaction does (ext4 in its default data=ordered mode).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from typing import Any

import mfusepy

from nemesis.lazyfs import METADATA_MODES
from nemesis.lazyfs.journal import DirUndo, Journal, LossReport, remove_tree_or_file

__all__ = ["TRASH_NAME", "LazyOperations"]

# Unlinked and replaced entries wait here until their unlink is durable; hidden.
TRASH_NAME = ".lazyfs-trash"
_STATFS_FIELDS = (
    "f_bsize",
    "f_frsize",
    "f_blocks",
    "f_bfree",
    "f_bavail",
    "f_files",
    "f_ffree",
    "f_favail",
    "f_flag",
    "f_namemax",
)
_STAT_FIELDS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")


class LazyOperations(mfusepy.Operations):
    """Passthrough operations over `backing_dir` (absolute), losing on demand; directory
    changes made durable as `metadata` (one of METADATA_MODES) says."""

    use_ns = True

    def __init__(self, backing_dir: str, metadata: str = "strict") -> None:
        if metadata not in METADATA_MODES:
            raise ValueError(f"metadata {metadata!r}: expected one of {METADATA_MODES}")
        self.journaled = metadata == "journaled"
        self.root = os.path.realpath(backing_dir)
        self.trash = os.path.join(self.root, TRASH_NAME)
        # The last mount ended cleanly or not at all: what is in the trash was unlinked.
        if os.path.isdir(self.trash):
            remove_tree_or_file(self.trash)
        os.mkdir(self.trash, 0o700)
        self._mutex = threading.RLock()
        self.journal = Journal()
        self._trash_names = itertools.count()
        self._append_fds: set[int] = set()

    # -- control ---------------------------------------------------------------------------

    def lose(self) -> LossReport:
        """Drop every change not durable, as a power loss would."""
        with self._mutex:
            return self.journal.lose()

    def pending(self) -> tuple[int, int]:
        with self._mutex:
            return self.journal.pending()

    def destroy(self, path: str) -> None:
        with self._mutex:
            self.journal.sync_all()

    # -- paths -----------------------------------------------------------------------------

    def _real(self, path: str) -> str:
        rel = path.lstrip("/")
        if rel == TRASH_NAME or rel.startswith(TRASH_NAME + "/"):
            raise OSError(errno.ENOENT, "hidden")
        return os.path.join(self.root, rel) if rel else self.root

    def _parent(self, real: str) -> str:
        return os.path.dirname(real)

    def _to_trash(self, real: str) -> str:
        kept = os.path.join(self.trash, str(next(self._trash_names)))
        os.rename(real, kept)
        return kept

    # -- attributes and listing ------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
        attrs: dict[str, Any] = {name: getattr(st, name) for name in _STAT_FIELDS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino, an entry without its inode number (0) is skipped by the kernel.
        real = self._real(path)
        entries = []
        with os.scandir(real) as listing:
            for entry in listing:
                if path == "/" and entry.name == TRASH_NAME:
                    continue
                st = entry.stat(follow_symlinks=False)
                entries.append((entry.name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
        for name in (".", ".."):
            st = os.lstat(os.path.join(real, name))
            entries.append((name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
        return entries

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        return {key: getattr(st, key) for key in _STATFS_FIELDS}

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._real(path), follow_symlinks=False)
        else:
            os.utime(self._real(path), ns=times, follow_symlinks=False)
        return 0

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise OSError(errno.EACCES, "access")
        return 0

    # -- file data -------------------------------------------------------------------------

    def _open_backing(self, real: str, flags: int, mode: int) -> int:
        with self._mutex:
            if flags & os.O_TRUNC and os.path.isfile(real):
                # O_TRUNC is a size change like any other: keep the durable bytes first.
                self.journal.file_undo(os.stat(real).st_ino, real).save_range(0, 1 << 62)
            fd = os.open(real, (flags & ~os.O_APPEND) | os.O_CLOEXEC, mode)
            if flags & os.O_APPEND:
                self._append_fds.add(fd)
            return fd

    def open(self, path: str, flags: int) -> int:
        return self._open_backing(self._real(path), flags, 0)

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        real = self._real(path)
        with self._mutex:
            existed = os.path.lexists(real)
            fd = self._open_backing(real, flags | os.O_CREAT, mode)
            if not existed:
                self._journal_dir(f"create {path}", {self._parent(real)}, lambda: os.unlink(real))
            return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            st = os.fstat(fh)
            if fh in self._append_fds:
                offset = st.st_size
            self._file_undo(fh, st.st_ino).save_range(offset, len(data))
            return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            if fh is None:
                real = self._real(path)
                self.journal.file_undo(os.stat(real).st_ino, real).save_range(length, 1 << 62)
                os.truncate(real, length)
            else:
                self._file_undo(fh, os.fstat(fh).st_ino).save_range(length, 1 << 62)
                os.ftruncate(fh, length)
            return 0

    def _file_undo(self, fh: int, inode: int) -> Any:
        # Through /proc so that a write-only handle still gets a readable undo descriptor.
        return self.journal.file_undo(inode, f"/proc/self/fd/{fh}")

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            (os.fdatasync if datasync else os.fsync)(fh)
            self.journal.file_synced(os.fstat(fh).st_ino)
            if self.journaled:
                self.journal.all_dirs_synced()
            return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            self._append_fds.discard(fh)
            os.close(fh)
            return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        raise OSError(errno.EOPNOTSUPP, "fallocate")

    # -- directories -----------------------------------------------------------------------

    def _journal_dir(
        self, what: str, dirs: set[str], undo: Any, discard: Any = lambda: None
    ) -> None:
        self.journal.add_dir_change(DirUndo(what, dirs, undo, discard))

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        real = self._real(path)
        with self._mutex:
            fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if self.journaled:
                self.journal.all_dirs_synced()
            else:
                self.journal.dir_synced(real)
            return 0

    def mkdir(self, path: str, mode: int) -> int:
        real = self._real(path)
        with self._mutex:
            os.mkdir(real, mode)
            self._journal_dir(
                f"mkdir {path}", {self._parent(real)}, lambda: remove_tree_or_file(real)
            )
            return 0

    def rmdir(self, path: str) -> int:
        real = self._real(path)
        with self._mutex:
            mode = stat.S_IMODE(os.lstat(real).st_mode)
            os.rmdir(real)
            self._journal_dir(f"rmdir {path}", {self._parent(real)}, lambda: os.mkdir(real, mode))
            return 0

    def unlink(self, path: str) -> int:
        real = self._real(path)
        with self._mutex:
            if os.path.isdir(real) and not os.path.islink(real):
                raise OSError(errno.EISDIR, "unlink")
            kept = self._to_trash(real)
            self._journal_dir(
                f"unlink {path}",
                {self._parent(real)},
                lambda: os.rename(kept, real),
                lambda: remove_tree_or_file(kept),
            )
            return 0

    def rename(self, old: str, new: str) -> int:
        old_real, new_real = self._real(old), self._real(new)
        with self._mutex:
            os.lstat(old_real)
            replaced = self._displace(old_real, new_real)
            os.rename(old_real, new_real)

            def undo() -> None:
                os.rename(new_real, old_real)
                if replaced is not None:
                    os.rename(replaced, new_real)

            def discard() -> None:
                if replaced is not None:
                    remove_tree_or_file(replaced)

            dirs = {self._parent(old_real), self._parent(new_real)}
            self._journal_dir(f"rename {old} {new}", dirs, undo, discard)
            return 0

    def _displace(self, old_real: str, new_real: str) -> str | None:
        """Move the entry a rename replaces to the trash; None if there is none.

        Checks first what rename(2) would refuse, so that nothing moves on an error.
        """
        if not os.path.lexists(new_real) or os.path.samefile(old_real, new_real):
            return None
        old_is_dir, new_is_dir = os.path.isdir(old_real), os.path.isdir(new_real)
        if old_is_dir and not new_is_dir:
            raise OSError(errno.ENOTDIR, "rename")
        if new_is_dir and not old_is_dir:
            raise OSError(errno.EISDIR, "rename")
        if new_is_dir and os.listdir(new_real):
            raise OSError(errno.ENOTEMPTY, "rename")
        return self._to_trash(new_real)

    def link(self, target: str, source: str) -> int:
        raise OSError(errno.EOPNOTSUPP, "link")

    def symlink(self, target: str, source: str) -> int:
        raise OSError(errno.EOPNOTSUPP, "symlink")

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise OSError(errno.EOPNOTSUPP, "mknod")
