"""The raftkv target's cluster token on network namespaces: a private file per node, never
on a command line, and a cluster that elects and serves with it."""

from __future__ import annotations

import asyncio
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends.netns import NetnsBackend
from harness.targets.base import ClusterSpec
from harness.targets.raftkv import RaftkvTarget
from harness.workload import Invocation

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(120),
]

NODES = ("t1", "t2", "t3")


@pytest.fixture
def backend() -> Iterator[NetnsBackend]:
    backend = NetnsBackend()
    backend.setup(list(NODES))
    try:
        yield backend
    finally:
        backend.teardown()


def leader_within(target: RaftkvTarget, cluster: ClusterSpec, timeout_s: float) -> str | None:
    async def go() -> str | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = await target.leader(cluster)
            if leader is not None:
                return leader
            await asyncio.sleep(0.2)
        return None

    return asyncio.run(go())


def test_nodes_get_the_run_token_in_a_private_file_not_on_their_command_line(
    backend: NetnsBackend, tmp_path: Path
) -> None:
    cluster = ClusterSpec(
        nodes=NODES,
        addresses={n: backend.remote(n).address for n in NODES},
        data_root=str(tmp_path),
        python=sys.executable,
    )
    target = RaftkvTarget()
    target.prepare_nodes(cluster, backend)
    token_files = sorted(tmp_path.glob("*.cluster-token"))
    assert len(token_files) == len(NODES)
    token = token_files[0].read_text().strip()
    assert len(token) >= 32 and {f.read_text().strip() for f in token_files} == {token}
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in token_files)
    assert RaftkvTarget()._cluster_token != target._cluster_token, "one token per run"
    for node in NODES:
        backend.start_process(node, target.node_argv(node, cluster), str(tmp_path / f"{node}.log"))
    assert leader_within(target, cluster, 30.0) is not None, "the cluster elects with the token"
    for node in NODES:
        pid = backend.pid(node)
        assert pid is not None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert "--cluster-token" in cmdline and token not in cmdline, cmdline

    async def write_once() -> str:
        client = target.client(cluster, NODES[0])
        try:
            done = await client.invoke(Invocation(f="write", key="k", value=1))
        finally:
            await client.close()
        return done.type

    assert asyncio.run(write_once()) == "ok"
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in NODES)
    assert "no cluster token" not in logs and "refused" not in logs, logs
