"""lazyfs (the power-loss filesystem) against plain disk: an fsync'd write loop, and
raftkv's put throughput with the three nodes' data on each. Needs root and /dev/fuse.

    .venv/bin/python bench/lazyfs_bench.py [--seconds 5] [--write-bytes 4096] [--clients 64]

The write loop appends `--write-bytes` and fdatasyncs, one process, and prints writes/s
and p50/p99 latency. The raftkv cell is bench/raftkv_bench.py's put with `--clients`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from raftkv_bench import measure

from harness.analysis import quantile
from raftkv.localcluster import LocalCluster

MOUNT_TIMEOUT_S = 10.0


@contextlib.contextmanager
def lazyfs_mount(tmp: Path) -> Iterator[Path]:
    """A lazyfs mount under `tmp`, unmounted on the way out."""
    mountpoint, backing = tmp / "mnt", tmp / "backing"
    mountpoint.mkdir()
    backing.mkdir()
    argv = [sys.executable, "-m", "nemesis.lazyfs", "mount", str(mountpoint)]
    argv += ["--backing", str(backing), "--control", str(tmp / "control.sock")]
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(mountpoint):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("lazyfs did not mount")
            time.sleep(0.05)
        yield mountpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            subprocess.run(["umount", "-l", str(mountpoint)], timeout=10, check=False)
            proc.kill()
            proc.wait(timeout=5)


def fsync_loop(directory: Path, write_bytes: int, seconds: float) -> str:
    data = b"x" * write_bytes
    latencies: list[float] = []
    fd = os.open(directory / "loop", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    latencies.sort()
    p50_ms, p99_ms = (quantile(latencies, q) * 1000 for q in (0.5, 0.99))
    return (
        f"write {write_bytes} B + fdatasync: {len(latencies) / seconds:8.0f} /s  "
        f"p50 {p50_ms:6.3f} ms  p99 {p99_ms:6.3f} ms"
    )


def raftkv_puts(root: Path, clients: int, seconds: float) -> str:
    cluster = LocalCluster(root, 3, extra_args=("--log-level", "warning"))
    with cluster:
        asyncio.run(cluster.wait_for_leader())
        return measure(cluster.addrs, "put", clients, 2, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--write-bytes", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lazyfs-bench-", dir="/var/tmp") as tmp:
        plain = Path(tmp) / "plain"
        plain.mkdir()
        with lazyfs_mount(Path(tmp)) as mounted:
            for label, where in (("plain ", plain), ("lazyfs", mounted)):
                print(label, fsync_loop(where, args.write_bytes, args.seconds), flush=True)
            for label, where in (("plain ", plain), ("lazyfs", mounted)):
                (where / "raftkv").mkdir()
                print(label, raftkv_puts(where / "raftkv", args.clients, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
