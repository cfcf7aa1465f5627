"""raftkv throughput and latency: 3 nodes on loopback, fsync on.

For 1, 8 and 64 concurrent clients, prints ops/s and p50/p99 latency for put
and for each read mode. Clients run in `--procs` load processes so the load
generator is not the bottleneck.

    .venv/bin/python bench/raftkv_bench.py [--seconds 5] [--clients 1,8,64] [--procs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from harness.analysis import quantile
from raftkv.client import Client
from raftkv.localcluster import LocalCluster

OPS = ("put", "log", "readindex", "lease", "local", "follower")


async def _worker(addrs: list[str], op: str, clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def one(j: int) -> None:
        client = Client(addrs, timeout_s=5)
        i = 0
        try:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                if op == "put":
                    resp = await client.put(f"k{j % 64}", i)
                else:
                    resp = await client.get(f"k{j % 64}", mode=op)
                if resp.get("ok") is True:
                    latencies.append(time.perf_counter() - t0)
                i += 1
        finally:
            await client.close()

    await asyncio.gather(*(one(j) for j in range(clients)))
    return latencies


def _run_worker(args: tuple[list[str], str, int, float]) -> list[float]:
    return asyncio.run(_worker(*args))


def measure(addrs: list[str], op: str, clients: int, procs: int, seconds: float) -> str:
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    if procs == 1:
        latencies = _run_worker((addrs, op, clients, seconds))
    else:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            parts = pool.map(_run_worker, [(addrs, op, n, seconds) for n in shares])
        latencies = [x for part in parts for x in part]
    if len(latencies) < 2:
        return f"{op:10s} {clients:4d} clients: no successful ops"
    latencies.sort()
    p50_ms, p99_ms = (quantile(latencies, q) * 1000 for q in (0.5, 0.99))
    return (
        f"{op:10s} {clients:4d} clients: {len(latencies) / seconds:8.0f} ops/s  "
        f"p50 {p50_ms:6.2f} ms  p99 {p99_ms:6.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--ops", default=",".join(OPS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="raftkv-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), 3, extra_args=("--log-level", "warning"))
        with cluster:
            leader = asyncio.run(cluster.wait_for_leader())
            print(f"3 nodes, fsync on, leader {leader}; {args.seconds} s per cell", flush=True)
            for op in args.ops.split(","):
                for clients in (int(c) for c in args.clients.split(",")):
                    print(measure(cluster.addrs, op, clients, args.procs, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
