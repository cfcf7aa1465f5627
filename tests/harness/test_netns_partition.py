"""Partitions with real iptables in real namespaces: grudges hold, heal restores, and only
our chain is ever flushed."""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.backends.netns import NetnsBackend
from nemesis import grudge as grudges
from nemesis import iptables
from nemesis.faults import FaultEvent, NemesisContext, apply_grudge, heal_partitions, parse_nemesis
from nemesis.schedule import heal_all, run_schedule

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(120),
]

NODES = ["n1", "n2", "n3"]
TCP_PORT, UDP_PORT = 7000, 7001
# Accepts TCP connections; logs every UDP datagram with its sender.
SERVER = f"""
import socket, sys, threading
address = sys.argv[1]
tcp = socket.create_server((address, {TCP_PORT}))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((address, {UDP_PORT}))
def serve_tcp():
    while True:
        tcp.accept()[0].close()
threading.Thread(target=serve_tcp, daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = udp.recvfrom(1024)
    print("udp", peer[0], data.decode(), flush=True)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsBackend]:
    logs = tmp_path_factory.mktemp("partition-logs")
    backend = NetnsBackend()
    backend.setup(NODES)
    try:
        for node in NODES:
            argv = [sys.executable, "-c", SERVER, backend.remote(node).address]
            backend.start_process(node, argv, str(logs / f"{node}.log"))
        for node in NODES:
            wait_listening(backend.remote(node).address)
        yield backend
    finally:
        backend.teardown()


@pytest.fixture
def ctx(cluster: NetnsBackend) -> Iterator[NemesisContext]:
    context = NemesisContext(
        remotes={n: cluster.remote(n) for n in NODES},
        procs=cluster,
        rng=random.Random(5),
        leader=lambda: "n3",
    )
    yield context
    heal_all(context)
    for node in NODES:
        iptables.remove(cluster.remote(node))


def wait_listening(address: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            socket.create_connection((address, TCP_PORT), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def reachable(cluster: NetnsBackend) -> set[tuple[str, str]]:
    """Every (src, dst) pair where src can open a TCP connection to dst, all probed at once."""
    probe = (
        "import socket, sys\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "def up(a):\n"
        "    try:\n"
        f"        socket.create_connection((a, {TCP_PORT}), timeout=0.4).close()\n"
        "        return a\n"
        "    except OSError:\n"
        "        return ''\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    print(*pool.map(up, sys.argv[1:]))\n"
    )
    names = {cluster.remote(n).address: n for n in NODES}

    def from_node(src: str) -> set[tuple[str, str]]:
        others = [cluster.remote(n).address for n in NODES if n != src]
        out = cluster.remote(src).execute([sys.executable, "-c", probe, *others], timeout=10)
        return {(src, names[a]) for a in out.stdout.split()}

    with ThreadPoolExecutor(len(NODES)) as pool:
        return set().union(*pool.map(from_node, NODES))


def everyone() -> set[tuple[str, str]]:
    return {(a, b) for a in NODES for b in NODES if a != b}


def udp_send(cluster: NetnsBackend, src: str, dst: str, tag: str) -> None:
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.sendto(sys.argv[2].encode(), (sys.argv[1], {UDP_PORT}))\n"
    )
    address = cluster.remote(dst).address
    cluster.remote(src).execute([sys.executable, "-c", code, address, tag], timeout=10)


def udp_received(cluster: NetnsBackend, tmp_path: Path, node: str, tag: str) -> bool:
    cluster.fetch_logs(node, str(tmp_path))
    return tag in (tmp_path / f"{node}.log").read_text()


def test_isolating_one_node_cuts_both_ways_and_heal_restores(
    cluster: NetnsBackend, ctx: NemesisContext
) -> None:
    assert reachable(cluster) == everyone()
    apply_grudge(ctx, grudges.leader(NODES, "n1"))
    assert reachable(cluster) == {("n2", "n3"), ("n3", "n2")}
    # The harness host is not a node: clients still reach the isolated node.
    socket.create_connection((cluster.remote("n1").address, TCP_PORT), timeout=2).close()
    heal_partitions(ctx)
    assert reachable(cluster) == everyone()


def test_bridge_and_ring_on_three_nodes(cluster: NetnsBackend, ctx: NemesisContext) -> None:
    grudge = grudges.bridge(NODES, random.Random(1))
    [bridge] = [n for n, dropped in grudge.items() if not dropped]
    apply_grudge(ctx, grudge)
    ends = [n for n in NODES if n != bridge]
    assert reachable(cluster) == everyone() - {(ends[0], ends[1]), (ends[1], ends[0])}
    apply_grudge(ctx, grudges.complete({}, NODES))
    assert reachable(cluster) == everyone()


def test_one_way_is_really_one_way(
    cluster: NetnsBackend, ctx: NemesisContext, tmp_path: Path
) -> None:
    apply_grudge(ctx, grudges.one_way(NODES, random.Random(0), victim="n1"))
    udp_send(cluster, "n1", "n2", "from-victim")
    udp_send(cluster, "n2", "n1", "to-victim")
    udp_send(cluster, "n3", "n2", "bystanders")
    time.sleep(0.3)
    assert udp_received(cluster, tmp_path, "n2", "from-victim"), "the others still hear n1"
    assert not udp_received(cluster, tmp_path, "n1", "to-victim"), "n1 hears nothing"
    assert udp_received(cluster, tmp_path, "n2", "bystanders")
    # Over TCP a one-way drop still breaks connections both ways (the handshake needs both).
    assert reachable(cluster) == {("n2", "n3"), ("n3", "n2")}
    heal_partitions(ctx)
    udp_send(cluster, "n2", "n1", "after-heal")
    time.sleep(0.3)
    assert udp_received(cluster, tmp_path, "n1", "after-heal")


def test_only_our_chain_is_flushed(cluster: NetnsBackend, ctx: NemesisContext) -> None:
    n2 = cluster.remote("n2")
    theirs = ["-s", "192.0.2.99/32", "-j", "DROP"]
    n2.execute(["iptables", "-w", "-A", "INPUT", *theirs], timeout=10)
    n2.execute(["iptables", "-w", "-N", "SOMEONE-ELSE"], timeout=10)
    n2.execute(["iptables", "-w", "-A", "SOMEONE-ELSE", "-j", "ACCEPT"], timeout=10)
    try:
        for _ in range(2):
            apply_grudge(ctx, grudges.leader(NODES, "n2"))
        assert ("n1", "n2") not in reachable(cluster)
        heal_partitions(ctx)
        heal_partitions(ctx)
        assert reachable(cluster) == everyone()
        rules = n2.execute(["iptables", "-w", "-S"], timeout=10).stdout
        assert "-A INPUT -s 192.0.2.99/32 -j DROP" in rules
        assert "-A SOMEONE-ELSE -j ACCEPT" in rules
        assert rules.count(f"-A INPUT -j {iptables.CHAIN}") == 1
        iptables.remove(n2)
        rules = n2.execute(["iptables", "-w", "-S"], timeout=10).stdout
        assert iptables.CHAIN not in rules and "-A INPUT -s 192.0.2.99/32 -j DROP" in rules
    finally:
        n2.execute(["iptables", "-w", "-D", "INPUT", *theirs], timeout=10, check=False)
        n2.execute(["iptables", "-w", "-F", "SOMEONE-ELSE"], timeout=10, check=False)
        n2.execute(["iptables", "-w", "-X", "SOMEONE-ELSE"], timeout=10, check=False)


def test_a_short_schedule_of_every_fault_heals_completely(
    cluster: NetnsBackend, ctx: NemesisContext
) -> None:
    events: list[FaultEvent] = []
    pids = {n: cluster.pid(n) for n in NODES}

    async def go() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(3.0, stop.set)
        nemeses = parse_nemesis("all", len(NODES))
        await run_schedule(ctx, nemeses, interval_s=0.15, emit=events.append, stop=stop)

    asyncio.run(go())
    done = [e for e in events if e.phase == "complete"]
    assert len(done) >= 6 and done[-1].fault == "heal-all"
    assert all(e.error is None for e in done), [e for e in done if e.error]
    assert all(cluster.pid(n) is not None for n in NODES), "killed nodes were restarted"
    for node in NODES:
        status = Path(f"/proc/{cluster.pid(node)}/status").read_text()
        assert "State:\tT" not in status, f"{node} still paused"
    for node in NODES:
        wait_listening(cluster.remote(node).address)
    assert reachable(cluster) == everyone()
    if any(e.fault == "kill" and e.f == "start" for e in done):
        assert {n: cluster.pid(n) for n in NODES} != pids
