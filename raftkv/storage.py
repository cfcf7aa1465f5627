"""Durable storage of one Raft node: hard state, log and snapshot in one directory.

Errors::

    StorageError            the directory cannot be used (locked by another process, ...)
    └── CorruptStorage      data on disk is damaged; the message names the file, the offset
                            and what is wrong. The node prints it and refuses to start.

Programmer errors (a non-contiguous append, a term going backwards) are assertions.
`OSError` from write or fsync propagates as is: after a failed fsync the page cache can no
longer be trusted, so the node must stop rather than retry.

On disk (all integers little-endian)::

    LOCK                      flock(2)ed while open: one process per directory
    snapshot.bin              one frame: [SNAPSHOT, version, index, term, peers, data]
                              (+ learners, only when there are learners)
    wal-0000000001.seg ...    log segments, each a sequence of frames:
        frame   = magic "\\xa7RKw" | u32 crc32(length | payload) | u32 length | payload
        payload = msgpack [HEADER, "raftkv-wal", version, seq, snap_index, snap_term, hs]
                | msgpack [BATCH, hs | nil, first_index, [[term, kind, data], ...]]

A BATCH replaces the log from `first_index` on with its entries (no entries: a durable
truncation; first_index 0: no log change), so overwriting a conflicting suffix is one record.
Each `sync()` writes one BATCH (split only past `_CHUNK_BYTES` of entry data), so a torn
write loses a whole batch or nothing.

The hard state travels in the same append-only stream as the log rather than in a file of
its own: nearly every batch moves the commit index, and one stream makes "entries + term,
vote, commit" one write and one fdatasync instead of two, atomic with each other. Every
segment header repeats the hard state, so retiring old segments never loses the vote.

The active (last) segment is preallocated: zero bytes are written ahead of the write
position, `_PREALLOC_BYTES` at a time, and made durable by the fdatasync of the batch that
first needs them. Every other `sync()` overwrites allocated, durable space instead of growing
the file, so its fdatasync has no size or extent change to journal. A segment is cut to its
used length when it stops being active (rollover, close): only the last one ends in zeros.

Recovery replays the segments in order on top of the snapshot. Zero bytes from the end of
the last valid record to the end of the last segment are free space, appended over in place.
Otherwise only the last record of the last segment may be bad (a torn tail: cut off, with a
warning on the "raftkv.storage" logger naming the file, the offset and the bytes cut); a bad
record anywhere else, a segment gap, a log that does not continue the snapshot, or a commit
index beyond the recovered log is CorruptStorage.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from raftkv.types import Entry, EntryKind, HardState, Snapshot

log = logging.getLogger("raftkv.storage")

__all__ = ["MAX_RECORD_BYTES", "MAX_SNAPSHOT_BYTES", "CorruptStorage", "Storage", "StorageError"]

MAX_RECORD_BYTES = 64 << 20
"""Largest log record payload; a length field above it is corruption, never an allocation."""
MAX_SNAPSHOT_BYTES = 1 << 30
"""Largest snapshot file payload (the KV image plus a few fields)."""
# Batches are split into records of about this much entry data.
_CHUNK_BYTES = 8 << 20
# The active segment is zero-filled this far ahead of its write position at a time.
_PREALLOC_BYTES = 1 << 20
_ZEROS = bytes(1 << 20)

_MAGIC = b"\xa7RKw"
_FRAME = struct.Struct("<4sII")
_LEN = struct.Struct("<I")
_VERSION = 1
_HEADER, _BATCH, _SNAPSHOT = 1, 2, 3
_SEGMENT_NAME = re.compile(r"^wal-(\d{10})\.seg$")
_SNAPSHOT_FILE = "snapshot.bin"
_SNAPSHOT_TMP = "snapshot.bin.tmp"
_LOCK_FILE = "LOCK"
_fdatasync = getattr(os, "fdatasync", os.fsync)


class StorageError(Exception):
    """The data directory cannot be used."""


class CorruptStorage(StorageError):
    """Data on disk is damaged in a way recovery must not paper over.

    Raised by `Storage.open` for: a bad record that is not the torn tail of the last segment,
    a missing segment, a missing or damaged snapshot that the log depends on, index gaps,
    terms going backwards, or committed entries that are gone.
    """


def _frame(payload: bytes) -> bytes:
    body = _LEN.pack(len(payload)) + payload
    return _MAGIC + _LEN.pack(zlib.crc32(body)) + body


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(payload: memoryview) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)


def _hs_tuple(hs: HardState) -> tuple[int, str | None, int]:
    return (hs.term, hs.vote, hs.commit)


def _frame_error(buf: memoryview, off: int, max_payload: int) -> tuple[str | None, int]:
    """Check the frame at `off`: (None, end offset) if valid, else (what is wrong, off)."""
    if len(buf) - off < _FRAME.size:
        return f"incomplete frame header ({len(buf) - off} bytes)", off
    magic, crc, length = _FRAME.unpack_from(buf, off)
    if magic != _MAGIC:
        return "bad magic", off
    if length > max_payload:
        return f"record length {length} exceeds the maximum {max_payload}", off
    end = off + _FRAME.size + length
    if end > len(buf):
        return f"record of {length} bytes runs past the end of the file", off
    if zlib.crc32(buf[off + 8 : end]) != crc:
        return "checksum mismatch", off
    return None, end


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path, fsync: bool) -> None:
    """`mkdir -p path`, each directory it creates made durable: a directory's name is an
    entry of its parent, which only an fsync of the parent saves from a power loss."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            continue  # another process made it meanwhile; its durability is its own
        if fsync:
            _fsync_path(new.parent)


def _all_zero(buf: memoryview, off: int) -> bool:
    data = buf.obj if isinstance(buf.obj, bytes) else bytes(buf)
    return data.count(0, off) == len(data) - off


def _valid_frame_after(buf: memoryview, off: int, max_payload: int) -> int | None:
    """Offset of the first valid frame starting after `off`, if any."""
    data = buf.obj if isinstance(buf.obj, bytes) else bytes(buf)
    pos = data.find(_MAGIC, off + 1)
    while pos != -1:
        if _frame_error(buf, pos, max_payload)[0] is None:
            return pos
        pos = data.find(_MAGIC, pos + 1)
    return None


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    # Highest entry index any record of this segment wrote: once the snapshot covers it,
    # nothing in the segment can reach the recovered log.
    max_index: int = 0


@dataclass(slots=True)
class _Replay:
    """Log reconstruction from records, in write order."""

    snap_index: int
    snap_term: int
    hs: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snap_index

    def apply_batch(self, first_index: int, raw: list[Any], where: str) -> int:
        """Replace the log from `first_index` with `raw`; returns the highest index written."""
        if first_index > self.last_index() + 1:
            raise CorruptStorage(
                f"{where}: index gap: record starts at index {first_index} but the log "
                f"(snapshot at {self.snap_index}) ends at {self.last_index()}"
            )
        cut = max(first_index, self.snap_index + 1)
        del self.entries[cut - self.snap_index - 1 :]
        # Records older than the snapshot may hold entries after it that a later record
        # overwrote, so only the final log is checked against the snapshot's term.
        prev_term = self.entries[-1].term if self.entries else 0
        index = first_index
        for term, kind, data in raw:
            if index >= cut:
                if not isinstance(term, int) or term < prev_term:
                    raise CorruptStorage(
                        f"{where}: term goes backwards at index {index}: {term} after {prev_term}"
                    )
                self.entries.append(Entry(term, index, EntryKind(kind), bytes(data)))
                prev_term = term
            index += 1
        return index - 1


class Storage:
    """Durable hard state, log and snapshot of one Raft node, in one directory.

    Contract:
    - `hard_state`, `snapshot` and `entries` (the log after the snapshot: contiguous indexes
      from `snapshot.index + 1`, or from 1) hold the recovered state after `open` and are kept
      current by the mutators. Treat them as read-only.
    - `append`, `set_hard_state` only buffer; `sync()` writes the buffered batch as one record
      with one write and one fdatasync (group commit), plus a zero fill of preallocated space
      once per `_PREALLOC_BYTES`. Nothing is durable before `sync()` returns; `sync()` with
      nothing buffered costs nothing.
    - `save_snapshot` is durable when it returns (it syncs any buffered batch first).
    - With `fsync=False` every write still reaches the OS but nothing is fsynced: data
      survives a process kill, not a machine crash (the `no-fsync` deliberate bug).
    - Recovery cuts a torn tail of the last segment and never loses a synced record.
    """

    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]

    def __init__(self, data_dir: Path, fsync: bool, segment_bytes: int, lock_fd: int) -> None:
        self._dir = data_dir
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._lock_fd = lock_fd
        self.hard_state = HardState()
        self.snapshot = None
        self.entries = []
        self._segments: list[_Segment] = []
        self._fd = -1
        # Active segment: end of its records (the write position) and of its file, the
        # zero-filled preallocation lying between the two.
        self._size = 0
        self._alloc = 0
        # What the records already written say, so a new segment header never runs ahead.
        self._written_hs = HardState()
        self._pending_hs: HardState | None = None
        self._dirty_from: int | None = None
        self._unsynced = False

    # ---- opening and recovery ------------------------------------------------------

    @classmethod
    def open(
        cls, data_dir: str | os.PathLike[str], *, fsync: bool = True, segment_bytes: int = 64 << 20
    ) -> Storage:
        """Open (creating if missing) and recover the storage in `data_dir`.

        Raises CorruptStorage if the data cannot be trusted, StorageError if another
        process holds the directory.
        """
        assert segment_bytes > 0, segment_bytes
        path = Path(data_dir)
        _make_dirs(path, fsync)
        lock_fd = os.open(path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise StorageError(f"{path}: in use by another process (lock {_LOCK_FILE})") from None
        storage = cls(path, fsync, segment_bytes, lock_fd)
        try:
            storage._recover()
        except BaseException:
            storage.close()
            raise
        return storage

    def _recover(self) -> None:
        (self._dir / _SNAPSHOT_TMP).unlink(missing_ok=True)
        self.snapshot = self._read_snapshot()
        snap_index = self.snapshot.index if self.snapshot else 0
        snap_term = self.snapshot.term if self.snapshot else 0
        replay = _Replay(snap_index, snap_term)
        self._segments = self._list_segments()
        end, torn = 0, None
        for i, seg in enumerate(self._segments):
            end, torn = self._replay_segment(seg, replay, is_last=i == len(self._segments) - 1)
        cut_at = f"{self._segments[-1].path} offset {end}" if torn is not None else None
        if replay.entries and replay.entries[0].term < replay.snap_term:
            raise CorruptStorage(
                f"{self._dir}: term goes backwards after the snapshot: entry "
                f"{replay.entries[0].index} has term {replay.entries[0].term}, "
                f"the snapshot term {replay.snap_term}"
            )
        if replay.hs.commit > replay.last_index():
            lost = f"; the record cut off at {cut_at} held them" if cut_at else ""
            raise CorruptStorage(
                f"{self._dir}: hard state commit index {replay.hs.commit} is beyond the last "
                f"recovered index {replay.last_index()}: committed entries are gone{lost}"
            )
        self.hard_state = self._written_hs = replay.hs
        self.entries = replay.entries
        # Only now that the data is trusted: cut the torn tail so appends follow valid records.
        if torn is not None:
            self._cut_torn_tail(self._segments[-1], end, torn)
        if self._segments and end == 0:
            # A segment whose header never reached the disk: the roll did not happen.
            self._segments.pop().path.unlink()
            self._fsync_dir()
            end = self._segments[-1].path.stat().st_size if self._segments else 0
        if self._segments:
            self._open_active(self._segments[-1], end)
        else:
            self._roll()

    def _list_segments(self) -> list[_Segment]:
        segments = []
        for name in sorted(os.listdir(self._dir)):
            match = _SEGMENT_NAME.match(name)
            if match:
                segments.append(_Segment(int(match.group(1)), self._dir / name))
        for prev, seg in itertools.pairwise(segments):
            if seg.seq != prev.seq + 1:
                raise CorruptStorage(
                    f"{self._dir}: log segment missing between {prev.path.name} and {seg.path.name}"
                )
        return segments

    def _replay_segment(
        self, seg: _Segment, replay: _Replay, is_last: bool
    ) -> tuple[int, str | None]:
        """Apply one segment's records; returns (end of its valid records, what is wrong with
        the torn tail there, or None when there is none)."""
        buf = memoryview(seg.path.read_bytes())
        off = 0
        while off < len(buf):
            error, end = _frame_error(buf, off, MAX_RECORD_BYTES)
            if error is not None:
                return off, self._bad_record(seg, buf, off, error, is_last)
            where = f"{seg.path} offset {off}"
            payload = buf[off + _FRAME.size : end]
            try:
                self._apply_record(seg, _unpack(payload), replay, where, first=off == 0)
            except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as exc:
                raise CorruptStorage(f"{where}: undecodable record: {exc!r}") from exc
            off = end
        if not buf and not is_last:
            raise CorruptStorage(f"{seg.path} offset 0: empty segment that is not the last")
        return off, None

    def _bad_record(
        self, seg: _Segment, buf: memoryview, off: int, error: str, is_last: bool
    ) -> str | None:
        """Raise unless the bad record at `off` ends the log; returns `error` if it is a torn
        tail, None if only zeros follow (preallocated space that no write reached)."""
        where = f"{seg.path} offset {off}"
        # A segment is cut to its used length durably before the next one is created, so
        # zeros in any other segment are damage, not preallocation.
        if not is_last:
            raise CorruptStorage(f"{where}: {error} (in a segment that is not the last)")
        if _all_zero(buf, off):
            return None
        later = _valid_frame_after(buf, off, MAX_RECORD_BYTES)
        if later is not None:
            raise CorruptStorage(f"{where}: {error}, with a valid record after it at {later}")
        # The write that was in progress when the process died.
        return error

    def _cut_torn_tail(self, seg: _Segment, off: int, error: str) -> None:
        # Truncating rather than zeroing also drops the preallocation after the torn bytes,
        # but a torn tail takes a crash mid-write, and the next batch preallocates again.
        fd = os.open(seg.path, os.O_WRONLY)
        try:
            cut_bytes = os.fstat(fd).st_size - off
            # Right for a write that never completed, but it drops bytes: say so.
            log.warning(
                "%s: cut a torn last record at offset %d (%s): %d bytes cut",
                seg.path, off, error, cut_bytes,
            )  # fmt: skip
            os.ftruncate(fd, off)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _apply_record(
        self, seg: _Segment, record: list[Any], replay: _Replay, where: str, first: bool
    ) -> None:
        kind = record[0]
        if first != (kind == _HEADER):
            raise CorruptStorage(f"{where}: a segment must start with exactly one header record")
        if kind == _HEADER:
            self._check_header(seg, record, replay, where)
            replay.hs = HardState(*record[6])
            return
        if kind != _BATCH:
            raise CorruptStorage(f"{where}: unknown record type {kind!r}")
        _, hs, first_index, raw = record
        if first_index:
            seg.max_index = max(seg.max_index, replay.apply_batch(first_index, raw, where))
        if hs is not None:
            new = HardState(*hs)
            if new.term < replay.hs.term:
                raise CorruptStorage(
                    f"{where}: hard state term goes backwards: {new.term} after {replay.hs.term}"
                )
            replay.hs = new

    def _check_header(self, seg: _Segment, record: list[Any], replay: _Replay, where: str) -> None:
        _, name, version, seq, snap_index, snap_term, _hs = record
        if name != "raftkv-wal" or version != _VERSION:
            raise CorruptStorage(f"{where}: not a raftkv log segment (version {version!r})")
        if seq != seg.seq:
            raise CorruptStorage(f"{where}: header says segment {seq}, file name says {seg.seq}")
        if snap_index > replay.snap_index or (
            snap_index == replay.snap_index and snap_index and snap_term != replay.snap_term
        ):
            have = f"index {replay.snap_index}" if self.snapshot else "no snapshot"
            raise CorruptStorage(
                f"{where}: the log depends on a snapshot at index {snap_index} term {snap_term}, "
                f"but {self._dir / _SNAPSHOT_FILE} holds {have}"
            )

    def _read_snapshot(self) -> Snapshot | None:
        path = self._dir / _SNAPSHOT_FILE
        try:
            buf = memoryview(path.read_bytes())
        except FileNotFoundError:
            return None
        error, end = _frame_error(buf, 0, MAX_SNAPSHOT_BYTES)
        if error is None and end != len(buf):
            error = f"{len(buf) - end} trailing bytes"
        if error is not None:
            raise CorruptStorage(f"{path} offset 0: {error}")
        try:
            kind, version, index, term, peers, data, *rest = _unpack(buf[_FRAME.size :])
            assert kind == _SNAPSHOT and version == _VERSION, (kind, version)
            assert len(rest) <= 1, f"{len(rest)} fields after the data"
            learners = tuple(str(p) for p in rest[0]) if rest else ()
            voters = tuple(str(p) for p in peers)
            return Snapshot(int(index), int(term), voters, bytes(data), learners)
        except (AssertionError, ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptStorage(f"{path} offset 0: undecodable snapshot: {exc!r}") from exc

    # ---- mutators --------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Buffer `entries`; a stored suffix from `entries[0].index` on is replaced."""
        if not entries:
            return
        first = entries[0].index
        snap_index = self.snapshot.index if self.snapshot else 0
        snap_term = self.snapshot.term if self.snapshot else 0
        assert snap_index < first <= self._last_index() + 1, (first, snap_index, self._last_index())
        for prev, entry in itertools.pairwise(entries):
            assert entry.index == prev.index + 1 and entry.term >= prev.term, (prev, entry)
            assert len(entry.data) <= _CHUNK_BYTES, f"entry {entry.index} too large"
        assert len(entries[0].data) <= _CHUNK_BYTES, f"entry {first} too large"
        del self.entries[first - snap_index - 1 :]
        prev_term = self.entries[-1].term if self.entries else snap_term
        assert entries[0].term >= prev_term, (prev_term, entries[0])
        self.entries.extend(entries)
        if self._dirty_from is None or first < self._dirty_from:
            self._dirty_from = first

    def set_hard_state(self, hs: HardState) -> None:
        """Buffer a new hard state (term never decreases)."""
        assert hs.term >= self.hard_state.term, (self.hard_state, hs)
        if hs != self.hard_state:
            self.hard_state = hs
            self._pending_hs = hs

    def sync(self) -> None:
        """Write the buffered batch and fsync it (one write, one fdatasync)."""
        self._write_pending()
        if self._unsynced:
            if self._fsync:
                _fdatasync(self._fd)
            self._unsynced = False

    def save_snapshot(self, snap: Snapshot) -> None:
        """Durably replace the snapshot, then compact the log.

        Log entries up to `snap.index` are dropped. The suffix after it is kept only if the
        log holds `snap.index` with `snap.term` (Raft's InstallSnapshot rule); otherwise the
        log becomes empty. Segments the snapshot covers are deleted.
        """
        old_index = self.snapshot.index if self.snapshot else 0
        assert snap.index >= old_index, (old_index, snap.index)
        self.sync()
        keep = self._term_at(snap.index) == snap.term
        if not keep and self._last_index() > snap.index:
            # The conflicting suffix must be gone before the snapshot can be found on disk.
            self._dirty_from = snap.index + 1
            self.entries = self.entries[: snap.index - old_index]
            self.sync()
        self._write_snapshot_file(snap)
        self.snapshot = snap
        self.entries = self.entries[snap.index - old_index :] if keep else []
        self._roll()
        self._retire_segments(snap.index)

    def close(self) -> None:
        """Sync anything buffered, cut the preallocation off, then release the directory."""
        try:
            if self._fd >= 0:
                self.sync()
                self._finish_active()
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def disk_bytes(self) -> int:
        """Bytes used by the log segments and the snapshot file.

        Counts the zero-filled preallocation of the active segment (up to 1 MiB) as used.
        """
        total = 0
        for name in os.listdir(self._dir):
            if name == _SNAPSHOT_FILE or _SEGMENT_NAME.match(name):
                total += (self._dir / name).stat().st_size
        return total

    # ---- internals ---------------------------------------------------------------------

    def _last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot.index if self.snapshot else 0

    def _term_at(self, index: int) -> int | None:
        snap_index = self.snapshot.index if self.snapshot else 0
        if self.snapshot is not None and index == snap_index:
            return self.snapshot.term
        if snap_index < index <= self._last_index():
            return self.entries[index - snap_index - 1].term
        return None

    def _write_pending(self) -> None:
        if self._dirty_from is None and self._pending_hs is None:
            return
        if self._size >= self._segment_bytes:
            self._roll()
        out = []
        if self._dirty_from is None:
            out.append(_frame(_pack((_BATCH, _hs_tuple(self.hard_state), 0, ()))))
        else:
            out.extend(self._batch_frames(self._dirty_from))
        data = b"".join(out)
        # The fdatasync of this batch also makes the new zeros durable, once per chunk.
        self._preallocate(self._size + len(data))
        written = os.write(self._fd, data)
        while written < len(data):
            written += os.write(self._fd, memoryview(data)[written:])
        self._size += len(data)
        self._alloc = max(self._alloc, self._size)
        self._dirty_from = None
        self._pending_hs = None
        self._written_hs = self.hard_state
        self._unsynced = True

    def _batch_frames(self, first: int) -> list[bytes]:
        snap_index = self.snapshot.index if self.snapshot else 0
        pending = self.entries[first - snap_index - 1 :]
        seg = self._segments[-1]
        if pending:
            seg.max_index = max(seg.max_index, pending[-1].index)
        frames = []
        start, size = 0, 0
        for i, entry in enumerate(pending):
            size += len(entry.data) + 16
            if size > _CHUNK_BYTES and i > start:
                chunk = [(e.term, e.kind, e.data) for e in pending[start:i]]
                first_index = first if start == 0 else pending[start].index
                frames.append(_frame(_pack((_BATCH, None, first_index, chunk))))
                start, size = i, len(entry.data) + 16
        chunk = [(e.term, e.kind, e.data) for e in pending[start:]]
        first_index = first if start == 0 else pending[start].index
        hs = _hs_tuple(self.hard_state) if self._pending_hs is not None else None
        frames.append(_frame(_pack((_BATCH, hs, first_index, chunk))))
        return frames

    def _preallocate(self, end: int) -> None:
        """Zero-fill the active segment up to the chunk boundary at or after offset `end`.

        Never fills past the segment size: a write that ends there is the segment's last and
        just grows the file.
        """
        target = min(-(-end // _PREALLOC_BYTES) * _PREALLOC_BYTES, self._segment_bytes)
        if target <= self._alloc or target < end:
            return
        # Real zeros rather than fallocate(): its unwritten extents are converted, and the
        # conversion journaled, by the fdatasync after each write into a new block, which
        # measured slower for batches of a few KiB. The batch itself covers [_size, end); a
        # hole left there by a crash before it is written reads as zeros all the same.
        pos = max(self._alloc, end)
        while pos < target:
            pos += os.pwrite(self._fd, _ZEROS[: min(len(_ZEROS), target - pos)], pos)
        self._alloc = target

    def _finish_active(self) -> None:
        """Sync the active segment, cut it to its records and close it."""
        if self._alloc > self._size:
            os.ftruncate(self._fd, self._size)
            self._alloc = self._size
            self._unsynced = True
        if self._unsynced and self._fsync:
            # The size change is metadata that fdatasync(2) flushes.
            _fdatasync(self._fd)
        self._unsynced = False
        os.close(self._fd)
        self._fd = -1

    def _roll(self) -> None:
        """Start a new segment whose header carries the written hard state and snapshot."""
        if self._fd >= 0:
            # Cut durably before the next segment exists: only the last one may end in zeros.
            self._finish_active()
        seq = self._segments[-1].seq + 1 if self._segments else 1
        seg = _Segment(seq, self._dir / f"wal-{seq:010d}.seg")
        snap = self.snapshot
        snap_index, snap_term = (snap.index, snap.term) if snap else (0, 0)
        hs = _hs_tuple(self._written_hs)
        header = (_HEADER, "raftkv-wal", _VERSION, seq, snap_index, snap_term, hs)
        fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        data = _frame(_pack(header))
        os.write(fd, data)
        if self._fsync:
            os.fsync(fd)
        self._fsync_dir()
        self._segments.append(seg)
        self._fd, self._size, self._alloc, self._unsynced = fd, len(data), len(data), False

    def _open_active(self, seg: _Segment, end: int) -> None:
        """Continue writing `seg` at offset `end`, over any zeros after it."""
        self._fd = os.open(seg.path, os.O_WRONLY)
        self._size, self._alloc = end, os.fstat(self._fd).st_size
        # Writes go to the file position, which only they move (zero-filling uses pwrite).
        os.lseek(self._fd, end, os.SEEK_SET)

    def _retire_segments(self, snap_index: int) -> None:
        # Only a prefix may go (a later record may have truncated an earlier one), one file
        # at a time with a directory fsync, so a crash never leaves a gap in the sequence.
        while len(self._segments) > 1 and self._segments[0].max_index <= snap_index:
            self._segments.pop(0).path.unlink()
            self._fsync_dir()

    def _write_snapshot_file(self, snap: Snapshot) -> None:
        fields = [_SNAPSHOT, _VERSION, snap.index, snap.term, list(snap.peers), snap.data]
        if snap.learners:
            fields.append(list(snap.learners))
        payload = _pack(fields)
        if len(payload) > MAX_SNAPSHOT_BYTES:
            raise StorageError(f"snapshot of {len(payload)} bytes exceeds {MAX_SNAPSHOT_BYTES}")
        tmp = self._dir / _SNAPSHOT_TMP
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            data = _frame(payload)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._dir / _SNAPSHOT_FILE)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        if self._fsync:
            _fsync_path(self._dir)
