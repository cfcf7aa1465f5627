"""`make demo` (for now): a local 3-node cluster, a few writes and reads, then stop."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from raftkv.client import Client
from raftkv.localcluster import LocalCluster


async def _demo(cluster: LocalCluster) -> int:
    leader = await cluster.wait_for_leader()
    print(f"leader elected: {leader}")
    client = Client(cluster.addrs)
    try:
        for i in range(5):
            resp = await client.put(f"k{i}", f"v{i}")
            print(f"put k{i}=v{i}: {resp['ok']}")
        resp = await client.cas("k0", "v0", "v0-new")
        print(f"cas k0 v0->v0-new: {resp['ok']}")
        for mode in ("log", "readindex", "lease", "local", "follower"):
            resp = await client.get("k0", mode=mode)
            print(f"get k0 ({mode}): {resp.get('value')!r}")
        statuses = await cluster.statuses()
        for node_id, st in statuses.items():
            print(
                f"{node_id}: role={st.get('role')} term={st.get('term')} "
                f"commit={st.get('commit_index')}"
            )
        ok = (await client.get("k0"))["value"] == "v0-new"
    finally:
        await client.close()
    return 0 if ok else 1


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="raftkv-demo-") as tmp:
        cluster = LocalCluster(Path(tmp), 3)
        print(f"starting 3 raftkv nodes on {', '.join(cluster.addrs)}")
        with cluster:
            return asyncio.run(_demo(cluster))


if __name__ == "__main__":
    sys.exit(main())
