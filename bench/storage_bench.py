"""Micro-benchmark of raftkv.storage: entries appended per second, one sync per batch.

Each batch is what the node does per group commit: append N entries, set the hard state,
sync() (one write, one fdatasync). Run on the disk the node will use:

    .venv/bin/python bench/storage_bench.py [--dir PATH] [--seconds 2] [--no-fsync]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from harness.analysis import quantile
from raftkv.storage import Storage
from raftkv.types import Entry, EntryKind, HardState

BATCH_SIZES = (1, 8, 64)
ENTRY_BYTES = 100  # about one put command with a short key and value


def run(data_dir: Path, batch: int, seconds: float, fsync: bool) -> tuple[float, float, float]:
    """Returns (entries per second, mean and p99 milliseconds per synced batch)."""
    st = Storage.open(data_dir, fsync=fsync)
    payload = b"x" * ENTRY_BYTES
    index, times = 0, []
    start = now = time.perf_counter()
    deadline = start + seconds
    while now < deadline:
        st.append([Entry(1, index + i, EntryKind.NORMAL, payload) for i in range(1, batch + 1)])
        index += batch
        st.set_hard_state(HardState(1, "n1", index - batch))
        st.sync()
        times.append(time.perf_counter() - now)
        now += times[-1]
    elapsed = now - start
    st.close()
    times.sort()
    return index / elapsed, elapsed / len(times) * 1000, quantile(times, 0.99) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("."), help="where to create the data")
    parser.add_argument("--seconds", type=float, default=2.0, help="per batch size")
    parser.add_argument("--no-fsync", action="store_true", help="measure without fsync")
    args = parser.parse_args()
    fsync = not args.no_fsync
    root = Path(tempfile.mkdtemp(prefix="storage-bench-", dir=args.dir))
    try:
        print(f"fsync={'on' if fsync else 'off'}  dir={root}  entry={ENTRY_BYTES} B")
        for batch in BATCH_SIZES:
            rate, ms, p99 = run(root / f"b{batch}", batch, args.seconds, fsync)
            print(
                f"batch {batch:3d}: {rate:10,.0f} appends/s  {ms:7.3f} ms per synced batch"
                f"  (p99 {p99:.3f} ms)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
