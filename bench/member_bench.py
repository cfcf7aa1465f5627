"""Benchmark of raftkv membership changes on a local cluster (a script, not a test).

Starts 3 `raftkv serve` processes on loopback (with 2 spares), writes `--entries` keys
(one entry each), then:
1. adds n4 with `serve --join` and times, from its start: added as a learner, caught up
   (applied the leader's commit index, by snapshot since the leader's log was compacted),
   promoted (the promotion retried while the learner is behind);
2. 3 -> 5: the same for n5; then 5 -> 3: removes n4 and n5, timed;
3. reads back a sample of keys through the remaining voters.
Prints one JSON object of figures.

Usage: python bench/member_bench.py [--entries 100000] [--concurrency 256]
                                    [--snapshot-entries 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raftkv.client import Client  # noqa: E402
from raftkv.localcluster import LocalCluster  # noqa: E402

CHANGE_TIMEOUT_S = 300.0


async def write(client: Client, entries: int, concurrency: int) -> float:
    # One first, alone: it finds the leader and opens the connection the others share.
    await client.put("k0", 0)
    began = time.monotonic()
    queue = iter(range(entries))

    async def worker() -> None:
        for i in queue:
            resp = await client.put(f"k{i}", i)
            if resp.get("ok") is not True:
                raise RuntimeError(f"put k{i}: {resp}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic() - began


async def change(client: Client, op: str, node: str) -> tuple[dict[str, Any], int]:
    """The change, retried while the refusal says it may pass later; and the tries."""
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    tries = 0
    while True:
        tries += 1
        resp = await client.change_member(op, node)
        if resp.get("ok") is True:
            return resp, tries
        if not resp.get("retryable") or time.monotonic() > deadline:
            raise RuntimeError(f"{op} {node}: {resp}")
        await asyncio.sleep(0.05)


async def status(cluster: LocalCluster, node: str) -> dict[str, Any]:
    return (await cluster.statuses(timeout_s=2.0)).get(node, {})


async def add(cluster: LocalCluster, client: Client, node: str) -> dict[str, Any]:
    leader = await cluster.wait_for_leader()
    began = time.monotonic()
    cluster.start(node)
    figures: dict[str, Any] = {"node": node}
    while True:
        members = await client.members(cluster.addr(leader))
        if node in members.get("learners", []):
            figures["learner_s"] = round(time.monotonic() - began, 3)
            break
        await asyncio.sleep(0.02)
    target = (await status(cluster, leader))["commit_index"]
    while True:
        mine = await status(cluster, node)
        if mine.get("ok") and mine.get("last_applied", 0) >= target:
            figures["caught_up_s"] = round(time.monotonic() - began, 3)
            figures["snapshot_index"] = mine.get("snapshot_index")
            figures["applied"] = mine.get("last_applied")
            break
        await asyncio.sleep(0.02)
    _, tries = await change(client, "promote", node)
    figures["promoted_s"] = round(time.monotonic() - began, 3)
    figures["promote_tries"] = tries
    return figures


async def remove(client: Client, node: str) -> float:
    began = time.monotonic()
    await change(client, "remove", node)
    return round(time.monotonic() - began, 3)


async def bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    extra = ("--snapshot-entries", str(args.snapshot_entries), "--log-level", "warning")
    cluster = LocalCluster(root, 3, spares=2, extra_args=extra)
    cluster.start()
    try:
        await cluster.wait_for_leader()
        client = Client(cluster.addrs[:3], timeout_s=10.0)
        try:
            write_s = await write(client, args.entries, args.concurrency)
            out: dict[str, Any] = {
                "entries": args.entries,
                "write_s": round(write_s, 2),
                "writes_per_s": round(args.entries / write_s),
            }
            out["add_n4"] = await add(cluster, client, "n4")
            out["add_n5"] = await add(cluster, client, "n5")
            out["remove_n4_s"] = await remove(client, "n4")
            out["remove_n5_s"] = await remove(client, "n5")
            cluster.kill("n4")
            cluster.kill("n5")
            await asyncio.sleep(0.2)
            members = await client.members(cluster.addr(await cluster.wait_for_leader()))
            out["final_voters"] = members.get("voters")
            for i in range(0, args.entries, max(1, args.entries // 100)):
                value = (await client.get(f"k{i}")).get("value")
                if value != i:
                    raise RuntimeError(f"k{i} reads {value!r}")
            out["reads_checked"] = 100
            return out
        finally:
            await client.close()
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--snapshot-entries", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="member-bench-") as tmp:
        print(json.dumps(asyncio.run(bench(args, Path(tmp))), indent=1))


if __name__ == "__main__":
    main()
