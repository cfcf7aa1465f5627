"""Durable storage of one node, on real files: round trips, compaction, torn tails, corruption."""

from __future__ import annotations

import os
import random
import shutil
import struct
import zlib
from pathlib import Path

import msgpack
import pytest

from raftkv import storage as storage_mod
from raftkv.storage import CorruptStorage, Storage, StorageError
from raftkv.types import Entry, EntryKind, HardState, Snapshot


def entries(first: int, last: int, term: int) -> list[Entry]:
    return [
        Entry(term, i, EntryKind.NORMAL, f"{i}@{term}".encode()) for i in range(first, last + 1)
    ]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("wal-*.seg"))


def record_offsets(seg: Path) -> list[int]:
    """Start offset of every frame in a segment, read with the documented format."""
    data = seg.read_bytes()
    offsets, off = [], 0
    while off < len(data):
        offsets.append(off)
        (length,) = struct.unpack_from("<I", data, off + 8)
        off += 12 + length
    assert off == len(data)
    return offsets


def frame(obj: object) -> bytes:
    """A frame built from the documented format, independently of the module."""
    payload = msgpack.packb(obj, use_bin_type=True)
    body = struct.pack("<I", len(payload)) + payload
    return b"\xa7RKw" + struct.pack("<I", zlib.crc32(body)) + body


def state(st: Storage) -> tuple[HardState, Snapshot | None, list[Entry]]:
    return st.hard_state, st.snapshot, list(st.entries)


def reopen_state(path: Path) -> tuple[HardState, Snapshot | None, list[Entry]]:
    st = Storage.open(path)
    try:
        return state(st)
    finally:
        st.close()


# ---- round trips -----------------------------------------------------------------------


def test_fresh_directory_is_created_and_empty(tmp_path: Path) -> None:
    st = Storage.open(tmp_path / "a" / "b")
    assert state(st) == (HardState(), None, [])
    st.close()
    assert reopen_state(tmp_path / "a" / "b") == (HardState(), None, [])


def test_append_hard_state_round_trip(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 3, 1))
    st.append([Entry(2, 4, EntryKind.NOOP, b"")])
    st.set_hard_state(HardState(2, "n2", 3))
    st.sync()
    st.close()
    hs, snap, log = reopen_state(tmp_path)
    assert hs == HardState(2, "n2", 3)
    assert snap is None
    assert log == [*entries(1, 3, 1), Entry(2, 4, EntryKind.NOOP, b"")]


def test_vote_none_round_trips(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.set_hard_state(HardState(7, None, 0))
    st.sync()
    st.close()
    assert reopen_state(tmp_path)[0] == HardState(7, None, 0)


def test_overwriting_a_suffix_is_durable(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 10, 1))
    st.sync()
    st.append(entries(6, 7, 2))
    assert st.entries == entries(1, 5, 1) + entries(6, 7, 2)
    st.sync()
    st.close()
    assert reopen_state(tmp_path)[2] == entries(1, 5, 1) + entries(6, 7, 2)


def test_several_appends_in_one_batch_with_an_overwrite(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 4, 1))
    st.sync()
    st.append(entries(5, 9, 1))
    st.append(entries(3, 6, 2))
    st.append(entries(7, 8, 3))
    st.sync()
    expected = entries(1, 2, 1) + entries(3, 6, 2) + entries(7, 8, 3)
    assert st.entries == expected
    st.close()
    assert reopen_state(tmp_path)[2] == expected


def test_a_batch_costs_one_write_and_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Storage.open(tmp_path)
    calls = {"write": 0, "fsync": 0}
    real_write, real_sync = os.write, storage_mod._fdatasync

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        calls["write"] += 1
        return real_write(fd, data)

    def counting_sync(fd: int) -> None:
        calls["fsync"] += 1
        real_sync(fd)

    monkeypatch.setattr(storage_mod.os, "write", counting_write)
    monkeypatch.setattr(storage_mod, "_fdatasync", counting_sync)
    st.append(entries(1, 64, 1))
    st.set_hard_state(HardState(1, "n1", 0))
    assert calls == {"write": 0, "fsync": 0}, "append and set_hard_state only buffer"
    st.sync()
    assert calls == {"write": 1, "fsync": 1}
    st.sync()
    st.set_hard_state(HardState(1, "n1", 0))
    st.sync()
    assert calls == {"write": 1, "fsync": 1}, "sync with nothing new does no I/O"
    monkeypatch.undo()
    st.close()


def test_segments_roll_over_and_reopen(tmp_path: Path) -> None:
    st = Storage.open(tmp_path, segment_bytes=1000)
    for first in range(1, 400, 20):
        st.append(entries(first, first + 19, 1 + first // 100))
        st.set_hard_state(HardState(1 + first // 100, "n1", first))
        st.sync()
    expected = state(st)
    st.close()
    assert len(segments(tmp_path)) > 3
    assert reopen_state(tmp_path) == expected
    # Overwrite across a segment boundary, then reopen again.
    st = Storage.open(tmp_path, segment_bytes=1000)
    st.append(entries(390, 395, 9))
    st.sync()
    expected = state(st)
    st.close()
    assert reopen_state(tmp_path) == expected
    assert expected[2][-1] == Entry(9, 395, EntryKind.NORMAL, b"395@9")


def test_large_batch_is_split_into_records(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    big = [Entry(1, i, EntryKind.NORMAL, bytes([i % 251]) * (1 << 20)) for i in range(1, 21)]
    st.append(big)
    st.set_hard_state(HardState(1, None, 20))
    st.sync()
    st.close()
    assert len(record_offsets(segments(tmp_path)[0])) > 3
    assert reopen_state(tmp_path) == (HardState(1, None, 20), None, big)


def test_close_syncs_buffered_writes(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 2, 1))
    st.close()
    assert reopen_state(tmp_path)[2] == entries(1, 2, 1)


def test_fsync_false_still_stores_everything(tmp_path: Path) -> None:
    st = Storage.open(tmp_path, fsync=False, segment_bytes=1000)
    st.append(entries(1, 50, 1))
    st.set_hard_state(HardState(1, "n3", 40))
    st.sync()
    st.save_snapshot(Snapshot(40, 1, ("n1", "n2", "n3"), b"image"))
    st.append(entries(51, 55, 2))
    st.sync()
    expected = state(st)
    st.close()
    assert reopen_state(tmp_path) == expected
    assert expected[2] == entries(41, 50, 1) + entries(51, 55, 2)


def test_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        Storage.open(tmp_path)
    st.close()
    Storage.open(tmp_path).close()


def test_appends_that_break_contiguity_are_programmer_errors(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 3, 2))
    with pytest.raises(AssertionError):
        st.append(entries(5, 6, 2))  # gap
    with pytest.raises(AssertionError):
        st.append(entries(4, 4, 1))  # term goes backwards
    st.close()


# ---- snapshots and compaction ---------------------------------------------------------------


def test_snapshot_compacts_and_shrinks_disk_use(tmp_path: Path) -> None:
    st = Storage.open(tmp_path, segment_bytes=4096)
    for first in range(1, 2001, 50):
        st.append(entries(first, first + 49, 3))
        st.sync()
    st.set_hard_state(HardState(3, "n1", 1990))
    st.sync()
    before = st.disk_bytes()
    segs_before = len(segments(tmp_path))
    st.save_snapshot(Snapshot(1990, 3, ("n1", "n2", "n3"), b"kv image"))
    assert st.entries == entries(1991, 2000, 3)
    assert st.disk_bytes() < before / 4
    assert len(segments(tmp_path)) < segs_before
    expected = state(st)
    st.close()
    assert reopen_state(tmp_path) == expected
    assert not (tmp_path / "snapshot.bin.tmp").exists()


def test_log_continues_after_snapshot_and_reopen(tmp_path: Path) -> None:
    st = Storage.open(tmp_path, segment_bytes=1024)
    st.append(entries(1, 30, 1))
    st.sync()
    st.save_snapshot(Snapshot(30, 1, ("n1",), b"s30"))
    assert st.entries == []
    st.close()
    st = Storage.open(tmp_path, segment_bytes=1024)
    assert st.snapshot == Snapshot(30, 1, ("n1",), b"s30")
    st.append(entries(31, 60, 2))
    st.sync()
    st.save_snapshot(Snapshot(45, 2, ("n1", "n2"), b"s45"))
    st.append(entries(61, 62, 2))
    st.sync()
    expected = state(st)
    st.close()
    assert reopen_state(tmp_path) == expected
    assert expected[2] == entries(46, 60, 2) + entries(61, 62, 2)


def test_snapshot_keeps_its_configuration_learners_included(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 10, 1))
    st.sync()
    st.save_snapshot(Snapshot(8, 1, ("n1", "n2"), b"image", learners=("n3",)))
    st.close()
    _hs, snap, _log = reopen_state(tmp_path)
    assert snap == Snapshot(8, 1, ("n1", "n2"), b"image", learners=("n3",))


def test_snapshot_beyond_the_log_empties_it(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 5, 1))
    st.sync()
    st.save_snapshot(Snapshot(100, 4, ("n1",), b"from leader"))
    assert st.entries == []
    st.append(entries(101, 102, 4))
    st.sync()
    st.close()
    _hs, snap, log = reopen_state(tmp_path)
    assert snap == Snapshot(100, 4, ("n1",), b"from leader")
    assert log == entries(101, 102, 4)


def test_snapshot_whose_term_conflicts_with_the_log_empties_it(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 10, 1))
    st.sync()
    st.save_snapshot(Snapshot(6, 2, ("n1",), b"other history"))
    assert st.entries == []
    st.close()
    _hs, snap, log = reopen_state(tmp_path)
    assert snap is not None and snap.index == 6 and log == []


def test_snapshot_replaced_atomically_and_leftover_temp_removed(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 10, 1))
    st.sync()
    st.save_snapshot(Snapshot(5, 1, ("n1",), b"first"))
    st.save_snapshot(Snapshot(8, 1, ("n1",), b"second"))
    st.close()
    (tmp_path / "snapshot.bin.tmp").write_bytes(b"half a snapshot")
    _hs, snap, log = reopen_state(tmp_path)
    assert snap == Snapshot(8, 1, ("n1",), b"second")
    assert log == entries(9, 10, 1)
    assert not (tmp_path / "snapshot.bin.tmp").exists()


# ---- torn tails ----------------------------------------------------------------------------


def write_three_batches(path: Path) -> tuple[HardState, list[Entry]]:
    """Two batches, then a third whose record tests tear; returns the state before it."""
    st = Storage.open(path)
    st.append(entries(1, 3, 1))
    st.set_hard_state(HardState(1, "n1", 0))
    st.sync()
    st.append(entries(4, 5, 1))
    st.set_hard_state(HardState(1, "n1", 3))
    st.sync()
    before = st.hard_state, list(st.entries)
    st.append(entries(4, 8, 2))
    st.set_hard_state(HardState(2, "n2", 4))
    st.sync()
    st.close()
    return before


def test_torn_tail_at_every_offset_recovers_the_previous_records(tmp_path: Path) -> None:
    src = tmp_path / "src"
    hs_before, log_before = write_three_batches(src)
    seg = segments(src)[0]
    data = seg.read_bytes()
    last = record_offsets(seg)[-1]
    for cut in range(last, len(data)):
        case = tmp_path / f"cut{cut}"
        case.mkdir()
        (case / seg.name).write_bytes(data[:cut])
        st = Storage.open(case)
        assert (st.hard_state, st.entries) == (hs_before, log_before), f"cut at {cut}"
        assert (case / seg.name).stat().st_size == last, "the torn bytes are cut off"
        st.append(entries(6, 6, 3))
        st.sync()
        st.close()
        assert reopen_state(case)[2] == [*log_before, *entries(6, 6, 3)]


def test_bad_checksum_in_the_final_record_is_a_torn_tail(tmp_path: Path) -> None:
    hs_before, log_before = write_three_batches(tmp_path)
    seg = segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert reopen_state(tmp_path) == (hs_before, None, log_before)


def test_zeroed_tail_is_a_torn_tail(tmp_path: Path) -> None:
    write_three_batches(tmp_path)
    seg = segments(tmp_path)[0]
    with seg.open("ab") as f:
        f.write(b"\0" * 4096)
    assert reopen_state(tmp_path) == (
        HardState(2, "n2", 4),
        None,
        entries(1, 3, 1) + entries(4, 8, 2),
    )


def test_torn_header_of_a_new_segment_is_dropped(tmp_path: Path) -> None:
    st = Storage.open(tmp_path, segment_bytes=200)
    for first in range(1, 40, 4):
        st.append(entries(first, first + 3, 1))
        st.sync()
    expected = state(st)
    st.close()
    last_seg = segments(tmp_path)[-1]
    name = f"wal-{int(last_seg.name[4:14]) + 1:010d}.seg"
    (tmp_path / name).write_bytes(b"\xa7RK")
    assert reopen_state(tmp_path) == expected
    assert not (tmp_path / name).exists()


# ---- corruption ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["magic", "length", "crc", "payload"])
def test_flipped_byte_in_the_middle_is_corruption(tmp_path: Path, where: str) -> None:
    write_three_batches(tmp_path)
    seg = segments(tmp_path)[0]
    second = record_offsets(seg)[1]
    pos = second + {"magic": 1, "crc": 5, "length": 9, "payload": 20}[where]
    data = bytearray(seg.read_bytes())
    data[pos] ^= 0x40
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage, match=rf"{seg.name} offset {second}") as info:
        Storage.open(tmp_path)
    assert "valid record after it" in str(info.value)
    # The refused open leaves the files alone and the lock released.
    assert seg.read_bytes() == bytes(data)
    with pytest.raises(CorruptStorage):
        Storage.open(tmp_path)


def test_absurd_length_is_corruption_not_an_allocation(tmp_path: Path) -> None:
    write_three_batches(tmp_path)
    seg = segments(tmp_path)[0]
    second = record_offsets(seg)[1]
    data = bytearray(seg.read_bytes())
    struct.pack_into("<I", data, second + 8, 0xFFFFFFF0)
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage, match="exceeds the maximum"):
        Storage.open(tmp_path)


def test_damage_in_a_segment_that_is_not_the_last_is_corruption(tmp_path: Path) -> None:
    st = Storage.open(tmp_path, segment_bytes=300)
    for first in range(1, 60, 5):
        st.append(entries(first, first + 4, 1))
        st.sync()
    st.close()
    first_seg = segments(tmp_path)[0]
    data = first_seg.read_bytes()
    first_seg.write_bytes(data[:-3])  # a "torn tail" anywhere but the last segment is damage
    with pytest.raises(CorruptStorage, match=first_seg.name):
        Storage.open(tmp_path)


def test_missing_segment_is_corruption(tmp_path: Path) -> None:
    st = Storage.open(tmp_path, segment_bytes=300)
    for first in range(1, 60, 5):
        st.append(entries(first, first + 4, 1))
        st.sync()
    st.close()
    segs = segments(tmp_path)
    assert len(segs) >= 3
    segs[1].unlink()
    with pytest.raises(CorruptStorage, match="segment missing"):
        Storage.open(tmp_path)


def test_lost_committed_record_is_corruption(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 3, 1))
    st.sync()
    st.append(entries(4, 5, 1))
    st.sync()
    st.set_hard_state(HardState(1, "n1", 5))
    st.sync()
    st.close()
    seg = segments(tmp_path)[0]
    _hdr, _a, b, c = record_offsets(seg)
    data = seg.read_bytes()
    seg.write_bytes(data[:b] + data[c:])  # the record holding entries 4..5 vanishes
    with pytest.raises(CorruptStorage, match="commit index 5 is beyond the last recovered index 3"):
        Storage.open(tmp_path)


def test_missing_snapshot_that_the_log_depends_on_is_corruption(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 20, 1))
    st.sync()
    st.save_snapshot(Snapshot(15, 1, ("n1",), b"image"))
    st.close()
    (tmp_path / "snapshot.bin").unlink()
    with pytest.raises(CorruptStorage, match="depends on a snapshot at index 15"):
        Storage.open(tmp_path)


def test_corrupt_snapshot_file_is_corruption(tmp_path: Path) -> None:
    st = Storage.open(tmp_path)
    st.append(entries(1, 20, 1))
    st.sync()
    st.save_snapshot(Snapshot(15, 1, ("n1",), b"image" * 100))
    st.close()
    snap = tmp_path / "snapshot.bin"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 1
    snap.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage, match=r"snapshot\.bin offset 0: checksum mismatch"):
        Storage.open(tmp_path)


def header(seq: int, snap_index: int = 0, snap_term: int = 0) -> bytes:
    return frame([1, "raftkv-wal", 1, seq, snap_index, snap_term, [0, None, 0]])


def test_index_gap_is_corruption(tmp_path: Path) -> None:
    raw = [[1, 0, b"a"], [1, 0, b"b"]]
    data = header(1) + frame([2, None, 1, raw]) + frame([2, None, 5, raw])
    (tmp_path / "wal-0000000001.seg").write_bytes(data)
    with pytest.raises(CorruptStorage, match="index gap: record starts at index 5"):
        Storage.open(tmp_path)


def test_log_starting_after_1_without_a_snapshot_is_corruption(tmp_path: Path) -> None:
    data = header(1) + frame([2, None, 40, [[1, 0, b"a"]]])
    (tmp_path / "wal-0000000001.seg").write_bytes(data)
    with pytest.raises(CorruptStorage, match="index gap"):
        Storage.open(tmp_path)


def test_terms_going_backwards_is_corruption(tmp_path: Path) -> None:
    data = header(1) + frame([2, None, 1, [[3, 0, b"a"], [2, 0, b"b"]]])
    (tmp_path / "wal-0000000001.seg").write_bytes(data)
    with pytest.raises(CorruptStorage, match="term goes backwards at index 2"):
        Storage.open(tmp_path)


def test_undecodable_record_with_a_good_checksum_is_corruption(tmp_path: Path) -> None:
    data = header(1) + frame([2, None, 1, [[1, 99, b"bad kind"]]])
    (tmp_path / "wal-0000000001.seg").write_bytes(data)
    with pytest.raises(CorruptStorage, match=r"wal-0000000001\.seg offset \d+: undecodable"):
        Storage.open(tmp_path)


# ---- a seeded model check -----------------------------------------------------------------


SEEDS = [int(s) for s in os.environ.get("STORAGE_SEEDS", "1 2 3 4 5 6 7 8").split()]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_match_a_model_across_reopens(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    st = Storage.open(tmp_path, segment_bytes=rng.choice([256, 1024, 1 << 20]))
    model: list[Entry] = []
    snap_index, term = 0, 1
    for step in range(400):
        last = model[-1].index if model else snap_index
        roll = rng.random()
        if roll < 0.6:
            first = rng.randint(max(snap_index + 1, last - 3), last + 1)
            term += rng.random() < 0.2
            new = entries(first, first + rng.randint(0, 8), term)
            st.append(new)
            model = [e for e in model if e.index < first] + new
        elif roll < 0.75:
            st.set_hard_state(HardState(term, rng.choice([None, "n1", "n2"]), 0))
        elif roll < 0.8 and model:
            at = rng.randint(model[0].index, last)
            st.sync()
            st.save_snapshot(Snapshot(at, model[at - model[0].index].term, ("n1",), b"%d" % at))
            model, snap_index = [e for e in model if e.index > at], at
        elif roll < 0.9:
            st.sync()
        else:
            st.close()
            st = Storage.open(tmp_path, segment_bytes=rng.choice([256, 1024, 1 << 20]))
        assert st.entries == model, f"seed {seed} step {step}"
    st.close()
    _hs, snap, log = reopen_state(tmp_path)
    assert log == model, f"seed {seed}"
    assert (snap.index if snap else 0) == snap_index, f"seed {seed}"


def test_torn_record_at_or_below_the_commit_index_is_corruption(tmp_path: Path) -> None:
    raw = [[1, 0, b"a"], [1, 0, b"b"]]
    good = header(1) + frame([2, None, 1, raw[:1]]) + frame([2, [1, None, 3], 0, []])
    torn = frame([2, None, 2, raw])[:-2]
    seg = tmp_path / "wal-0000000001.seg"
    seg.write_bytes(good + torn)
    with pytest.raises(
        CorruptStorage, match=rf"commit index 3 .* cut off at .*{seg.name} offset {len(good)}"
    ):
        Storage.open(tmp_path)
    assert seg.read_bytes() == good + torn, "a refused open changes nothing on disk"


# ---- preallocated zero tails ----------------------------------------------------------------


def write_open(path: Path, segment_bytes: int = 64 << 20) -> tuple[Storage, list[Entry]]:
    """Two synced batches in a storage left open: its segment ends in preallocated zeros."""
    st = Storage.open(path, segment_bytes=segment_bytes)
    st.append(entries(1, 3, 1))
    st.set_hard_state(HardState(1, "n1", 1))
    st.sync()
    st.append(entries(4, 6, 1))
    st.set_hard_state(HardState(1, "n1", 3))
    st.sync()
    return st, list(st.entries)


def killed_copy(src: Path, dst: Path) -> Path:
    """The directory as a kill -9 of the process holding `src` open would leave it."""
    shutil.copytree(src, dst)
    return dst


def used_bytes(seg: Path) -> int:
    """End of the last frame, read with the documented format (a zero tail is not a frame)."""
    data = seg.read_bytes()
    off = 0
    while off + 12 <= len(data) and data[off : off + 4] == b"\xa7RKw":
        (length,) = struct.unpack_from("<I", data, off + 8)
        off += 12 + length
    return off


def test_zero_tail_is_free_space_appended_over_in_place(tmp_path: Path) -> None:
    st, log = write_open(tmp_path / "live")
    case = killed_copy(tmp_path / "live", tmp_path / "case")
    st.close()
    seg = segments(case)[0]
    used, size = used_bytes(seg), seg.stat().st_size
    assert size > used and seg.read_bytes()[used:] == bytes(size - used), "a zero tail"
    st = Storage.open(case)
    assert (st.hard_state, st.entries) == (HardState(1, "n1", 3), log)
    assert seg.stat().st_size == size, "the preallocation is kept"
    st.append(entries(7, 9, 2))
    st.sync()
    assert seg.stat().st_size == size, "the batch overwrote zeros instead of growing the file"
    assert used_bytes(seg) > used
    st.close()
    assert seg.stat().st_size == used_bytes(seg), "close cuts the zeros off"
    assert reopen_state(case)[2] == [*log, *entries(7, 9, 2)]


@pytest.mark.parametrize("landed", ["front", "back", "middle"])
def test_torn_record_followed_by_zeros_is_a_torn_tail(tmp_path: Path, landed: str) -> None:
    st, log = write_open(tmp_path / "live")
    case = killed_copy(tmp_path / "live", tmp_path / "case")
    st.close()
    seg = segments(case)[0]
    used = used_bytes(seg)
    torn = frame([2, [2, "n2", 3], 7, [[2, 0, b"7@2" * 100]]])
    # Which sectors of the interrupted write reached the disk before the crash.
    part = {
        "front": torn[: len(torn) // 2],
        "back": bytes(len(torn) // 2) + torn[len(torn) // 2 :],
        "middle": bytes(20) + torn[20:-20],
    }[landed]
    with seg.open("r+b") as f:
        f.seek(used)
        f.write(part)
    st = Storage.open(case)
    assert (st.hard_state, st.entries) == (HardState(1, "n1", 3), log)
    assert seg.stat().st_size == used, "the torn bytes are cut off durably before any append"
    st.append(entries(7, 8, 3))
    st.sync()
    st.close()
    assert reopen_state(case)[2] == [*log, *entries(7, 8, 3)]


def test_torn_tail_cut_before_new_records_so_garbage_never_precedes_them(tmp_path: Path) -> None:
    st, log = write_open(tmp_path / "live")
    case = killed_copy(tmp_path / "live", tmp_path / "case")
    st.close()
    seg = segments(case)[0]
    used = used_bytes(seg)
    with seg.open("r+b") as f:
        f.seek(used)
        f.write(b"\xa7RKw" + b"\x55" * 300)  # a long torn record
    st = Storage.open(case)
    st.append(entries(7, 7, 3))  # a short record: it would not cover all of the garbage
    st.sync()
    # Killed again with this batch synced: nothing but records and zeros may be left.
    again = killed_copy(case, tmp_path / "again")
    st.close()
    assert b"\x55" * 8 not in segments(again)[0].read_bytes()
    assert reopen_state(again)[2] == [*log, *entries(7, 7, 3)]


@pytest.mark.parametrize("where", ["crc", "payload"])
def test_corruption_in_the_middle_is_detected_with_a_zero_tail(tmp_path: Path, where: str) -> None:
    st, _log = write_open(tmp_path / "live")
    case = killed_copy(tmp_path / "live", tmp_path / "case")
    st.close()
    seg = segments(case)[0]
    second = record_offsets_before_zeros(seg)[1]
    data = bytearray(seg.read_bytes())
    data[second + {"crc": 5, "payload": 20}[where]] ^= 0x40
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptStorage, match=rf"{seg.name} offset {second}: .*valid record after"):
        Storage.open(case)
    assert seg.read_bytes() == bytes(data), "a refused open changes nothing on disk"


def test_valid_record_inside_the_zero_tail_is_corruption(tmp_path: Path) -> None:
    st, _log = write_open(tmp_path / "live")
    case = killed_copy(tmp_path / "live", tmp_path / "case")
    st.close()
    seg = segments(case)[0]
    used = used_bytes(seg)
    with seg.open("r+b") as f:
        f.seek(used + 4096)  # a record with lost bytes before it is not free space
        f.write(frame([2, None, 7, [[1, 0, b"7@1"]]]))
    with pytest.raises(CorruptStorage, match=rf"offset {used}: bad magic, with a valid record"):
        Storage.open(case)


def test_zeros_at_the_end_of_a_segment_that_is_not_the_last_are_corruption(
    tmp_path: Path,
) -> None:
    st = Storage.open(tmp_path, segment_bytes=300)
    for first in range(1, 60, 5):
        st.append(entries(first, first + 4, 1))
        st.sync()
    st.close()
    first_seg = segments(tmp_path)[0]
    with first_seg.open("ab") as f:
        f.write(bytes(100))
    with pytest.raises(CorruptStorage, match=rf"{first_seg.name} .*not the last"):
        Storage.open(tmp_path)


def test_rollover_cuts_finished_segments_to_their_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_mod, "_PREALLOC_BYTES", 2048)
    st = Storage.open(tmp_path, segment_bytes=8000)
    zero_tails = 0
    for first in range(1, 3000, 25):
        st.append(entries(first, first + 24, 1))
        st.set_hard_state(HardState(1, "n1", first))
        st.sync()
        *finished, active = segments(tmp_path)
        for seg in finished:
            assert seg.stat().st_size == used_bytes(seg), f"{seg.name} ends in zeros"
        zero_tails += active.stat().st_size > used_bytes(active)
    assert len(segments(tmp_path)) > 3
    assert zero_tails > 30, "the active segment is preallocated"
    st.save_snapshot(Snapshot(2000, 1, ("n1",), b"image"))
    for seg in segments(tmp_path):
        assert seg.stat().st_size == used_bytes(seg), f"{seg.name} ends in zeros after a roll"
    expected = state(st)
    st.close()
    assert reopen_state(tmp_path) == expected


def test_partial_preallocation_is_free_space_and_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill mid-fill leaves zeros up to anywhere, even a hole before them; all is free."""
    st, log = write_open(tmp_path / "live")
    st.close()
    seg = segments(tmp_path / "live")[0]
    used = seg.stat().st_size
    for extra in (1, 4095, 70_000):
        case = tmp_path / f"case{extra}"
        shutil.copytree(tmp_path / "live", case)
        with (case / seg.name).open("r+b") as f:
            f.truncate(used + extra)  # a hole reads as zeros, like an interrupted zero fill
        st = Storage.open(case)
        assert st.entries == log
        st.append(entries(7, 7, 2))
        st.sync()
        assert (case / seg.name).stat().st_size == 1 << 20, "the fill is completed"
        st.close()
        assert reopen_state(case)[2] == [*log, *entries(7, 7, 2)]


def record_offsets_before_zeros(seg: Path) -> list[int]:
    offsets, off, end = [], 0, used_bytes(seg)
    while off < end:
        offsets.append(off)
        (length,) = struct.unpack_from("<I", seg.read_bytes(), off + 8)
        off += 12 + length
    return offsets


# ---- what recovery says, and directories made durable ------------------------------------------


def test_cutting_a_torn_tail_is_logged_with_file_offset_and_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_three_batches(tmp_path)
    seg = segments(tmp_path)[0]
    data = seg.read_bytes()
    last = record_offsets(seg)[-1]
    seg.write_bytes(data[:-5])
    with caplog.at_level("WARNING", logger="raftkv.storage"):
        reopen_state(tmp_path)
    (record,) = [r for r in caplog.records if r.name == "raftkv.storage"]
    message = record.getMessage()
    assert str(seg) in message and f"offset {last}" in message, message
    assert f"{len(data) - 5 - last} bytes" in message, message


def test_a_clean_reopen_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_three_batches(tmp_path)
    with caplog.at_level("DEBUG", logger="raftkv.storage"):
        reopen_state(tmp_path)
    assert [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []


def test_new_data_directories_are_fsynced_in_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(storage_mod.os, "fsync", recording_fsync)
    Storage.open(tmp_path / "a" / "b").close()
    assert str(tmp_path) in synced, "the new directory 'a' is a name in tmp_path"
    assert str(tmp_path / "a") in synced, "the new directory 'b' is a name in 'a'"
    synced.clear()
    Storage.open(tmp_path / "a" / "b").close()
    assert str(tmp_path) not in synced, "an existing directory is not created again"
