"""What a power loss would take: the undo records of every change not yet made durable.

The backing directory always holds the current state; a `Journal` holds how to go back
to the durable one. File data is undone per inode (`FileUndo`: the size at the last
fsync and the old bytes of every page overwritten since), through a descriptor of the
backing file, so that it does not matter which name the file has when it is restored.
Directory changes are `DirUndo` records, each pending on the directories it changed and
durable once all of them were fsynced (or, with journaled metadata, once anything was:
`all_dirs_synced`). `Journal.lose` undoes directory changes newest
first, then restores file data. The caller serialises every call (one lock).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PAGE_BYTES", "DirUndo", "FileUndo", "Journal", "LossReport", "remove_tree_or_file"]

PAGE_BYTES = 4096
_log = logging.getLogger(__name__)


@dataclass
class FileUndo:
    """The durable state of one inode: its size and the old bytes of changed pages.

    `fd` is our own read-write descriptor of the backing file, closed by `close`.
    Pages at or past `synced_size` are not saved: truncating to it drops them anyway.
    """

    fd: int
    synced_size: int
    old_pages: dict[int, bytes] = field(default_factory=dict)

    def save_range(self, offset: int, length: int) -> None:
        """Keep the durable bytes of [offset, offset + length) before they change."""
        end = min(offset + length, self.synced_size)
        first_page = offset // PAGE_BYTES
        for page in range(first_page, -(-end // PAGE_BYTES)):
            if page not in self.old_pages:
                self.old_pages[page] = os.pread(self.fd, PAGE_BYTES, page * PAGE_BYTES)

    def restore(self) -> int:
        """Put the durable bytes and size back; returns the pages written back."""
        for page, data in self.old_pages.items():
            os.pwrite(self.fd, data, page * PAGE_BYTES)
        os.ftruncate(self.fd, self.synced_size)
        return len(self.old_pages)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class DirUndo:
    """One directory change not yet durable: `undo` reverts it, `pending` are the
    backing directories that still need an fsync, `discard` runs once it is durable
    (an unlinked file's kept copy is removed then)."""

    what: str
    pending: set[str]
    undo: Callable[[], None]
    discard: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class LossReport:
    """What one `Journal.lose` dropped: files whose data went back, pages written
    back, directory changes undone, and undo steps that failed (logged, skipped)."""

    files: int
    pages: int
    dir_changes: int
    failed: int

    def line(self) -> str:
        """The control's answer to `lose` (`parse_loss` reads it back)."""
        return (
            f"lost files={self.files} pages={self.pages} "
            f"dir_changes={self.dir_changes} failed={self.failed}"
        )


def parse_loss(line: str) -> dict[str, int]:
    """A `LossReport.line` as {"files", "pages", "dir_changes", "failed"}; ValueError if
    `line` is not one."""
    word, *fields = line.split()
    pairs = dict(f.partition("=")[::2] for f in fields)
    if word != "lost" or set(pairs) != {"files", "pages", "dir_changes", "failed"}:
        raise ValueError(f"not a loss report: {line!r}")
    return {name: int(value) for name, value in pairs.items()}


class Journal:
    """Undo records since the last fsync of each file and directory."""

    def __init__(self) -> None:
        self._files: dict[int, FileUndo] = {}
        self._dirs: list[DirUndo] = []

    def file_undo(self, inode: int, backing_path: str) -> FileUndo:
        """The undo record of `inode`, opened at its current (durable) size if new."""
        undo = self._files.get(inode)
        if undo is None:
            fd = os.open(backing_path, os.O_RDWR | os.O_CLOEXEC)
            undo = FileUndo(fd=fd, synced_size=os.fstat(fd).st_size)
            self._files[inode] = undo
        return undo

    def file_synced(self, inode: int) -> None:
        """The inode's data is durable: forget how to undo it."""
        undo = self._files.pop(inode, None)
        if undo is not None:
            undo.close()

    def add_dir_change(self, change: DirUndo) -> None:
        self._dirs.append(change)

    def dir_synced(self, backing_dir: str) -> None:
        """Changes pending only on `backing_dir` become durable."""
        kept = []
        for change in self._dirs:
            change.pending.discard(backing_dir)
            if change.pending:
                kept.append(change)
            else:
                change.discard()
        self._dirs = kept

    def all_dirs_synced(self) -> None:
        """Every directory change so far becomes durable: an fsync on a filesystem whose
        journal commits all metadata changes at once (ext4's default)."""
        for change in self._dirs:
            change.discard()
        self._dirs.clear()

    def pending(self) -> tuple[int, int]:
        """(files with unsynced data, directory changes not durable)."""
        return len(self._files), len(self._dirs)

    def sync_all(self) -> None:
        """Everything becomes durable (a clean unmount)."""
        for undo in self._files.values():
            undo.close()
        for change in self._dirs:
            change.discard()
        self._files.clear()
        self._dirs.clear()

    def lose(self) -> LossReport:
        """Undo every change not durable, newest directory change first."""
        failed = 0
        for change in reversed(self._dirs):
            try:
                change.undo()
            except OSError as exc:
                # A later durable change can stand in the way (a name taken again).
                _log.warning("cannot undo %s: %s", change.what, exc)
                failed += 1
        pages = 0
        for undo in self._files.values():
            pages += undo.restore()
            undo.close()
        report = LossReport(len(self._files), pages, len(self._dirs), failed)
        self._files.clear()
        self._dirs.clear()
        return report


def remove_tree_or_file(path: str) -> None:
    """Remove `path`, a file or a whole directory (an undone mkdir may hold files)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
