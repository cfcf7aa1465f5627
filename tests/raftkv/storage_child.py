"""Writer process for the kill -9 test: appends and syncs batches until it is killed.

Usage: storage_child.py DATA_DIR SEED [STALL_AT_FILL]. Prints (flushed) one line per event:

    ready LAST_INDEX            storage opened and recovered
    begin FIRST COUNT TERM      a batch replacing the log from FIRST is about to be written
    ack FIRST COUNT TERM        that batch is synced: it must survive the kill
    snap INDEX                  a snapshot at INDEX is durable
    stalled OFFSET              the STALL_AT_FILL-th zero fill of preallocated space wrote
                                half its bytes up to OFFSET and now waits to be killed

With STALL_AT_FILL the segment is preallocated in small chunks, so fills are frequent.

Entry data is b"INDEX@TERM", snapshot data b"snap INDEX", so recovery can be checked alone.
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

from raftkv import storage as storage_mod
from raftkv.storage import Storage
from raftkv.types import Entry, EntryKind, HardState, Snapshot

SEGMENT_BYTES = 16 << 10
SNAPSHOT_EVERY = 150
LAG = 5  # entries between the last acked index and the commit index
STALL_PREALLOC_BYTES = 2048


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def term_at(st: Storage, index: int) -> int:
    snap_index = st.snapshot.index if st.snapshot else 0
    if index == snap_index:
        return st.snapshot.term if st.snapshot else 0
    return st.entries[index - snap_index - 1].term


def stall_at_fill(fill: int) -> None:
    """Make the `fill`-th zero fill write half of its bytes, then hang until killed."""
    storage_mod._PREALLOC_BYTES = STALL_PREALLOC_BYTES
    real_pwrite = os.pwrite
    fills = 0

    def pwrite(fd: int, data: Any, offset: int) -> int:
        nonlocal fills
        fills += 1
        if fills < fill:
            return real_pwrite(fd, data, offset)
        written = real_pwrite(fd, data[: len(data) // 2], offset)
        say(f"stalled {offset + written}")
        while True:
            time.sleep(1)

    os.pwrite = pwrite


def main(data_dir: str, seed: int) -> None:
    rng = random.Random(seed)
    st = Storage.open(data_dir, fsync=True, segment_bytes=SEGMENT_BYTES)
    snap_index = st.snapshot.index if st.snapshot else 0
    last = st.entries[-1].index if st.entries else snap_index
    term = max(st.hard_state.term, st.entries[-1].term if st.entries else 1, 1)
    commit = st.hard_state.commit
    say(f"ready {last}")
    while True:
        first = last + 1
        if rng.random() < 0.1:
            # Overwrite a short uncommitted suffix with entries of a new term.
            first = max(commit + 1, snap_index + 1, last - rng.randint(0, 3))
            term += 1
        count = rng.randint(1, 40)
        say(f"begin {first} {count} {term}")
        st.append(
            [
                Entry(term, i, EntryKind.NORMAL, b"%d@%d" % (i, term))
                for i in range(first, first + count)
            ]
        )
        last = first + count - 1
        commit = max(commit, last - LAG)
        st.set_hard_state(HardState(term, "n1", commit))
        st.sync()
        say(f"ack {first} {count} {term}")
        if commit - snap_index >= SNAPSHOT_EVERY:
            st.save_snapshot(Snapshot(commit, term_at(st, commit), ("n1",), b"snap %d" % commit))
            snap_index = commit
            say(f"snap {commit}")


if __name__ == "__main__":
    if len(sys.argv) > 3:
        stall_at_fill(int(sys.argv[3]))
    main(sys.argv[1], int(sys.argv[2]))
