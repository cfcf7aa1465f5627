"""packet-loss with real iptables between real namespaces: a share of the datagrams is lost
(and counted by our rule), heal restores every one; a whole run under it stays valid with
the fault recorded; `delay` exits 254 before anything is made."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.backends.netns import NetnsBackend
from harness.history import read_ops
from harness.report import fault_windows
from nemesis import iptables
from nemesis.netfaults import loss_rule

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

NODES = ["n1", "n2"]
UDP_PORT = 7101
SENT = 400
# Logs one line per datagram; the test counts them in the log.
RECEIVER = f"""
import socket, sys
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
udp.bind((sys.argv[1], {UDP_PORT}))
print("ready", flush=True)
while True:
    data, peer = udp.recvfrom(64)
    print("got", data.decode(), flush=True)
"""
# Paced, so that no datagram is lost to a full socket buffer rather than to our rule.
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(f"{sys.argv[2]}-{i}".encode(), (sys.argv[1], int(sys.argv[4])))
    time.sleep(0.0005)
"""
HARNESS = [sys.executable, "-m", "harness.cli"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NetnsBackend, Path]]:
    log = tmp_path_factory.mktemp("loss-logs") / "n2.log"
    backend = NetnsBackend()
    backend.setup(NODES)
    try:
        argv = [sys.executable, "-c", RECEIVER, backend.remote("n2").address]
        backend.start_process("n2", argv, str(log))
        wait_for(lambda: log.exists() and "ready" in log.read_text())
        yield backend, log
    finally:
        iptables.remove(backend.remote("n2"))
        backend.teardown()


def wait_for(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def send_and_count(backend: NetnsBackend, log: Path, tag: str) -> int:
    """Send SENT datagrams n1 -> n2 tagged `tag`; how many n2 received (once quiet 0.5 s)."""
    address = backend.remote("n2").address
    argv = [sys.executable, "-c", SENDER, address, tag, str(SENT), str(UDP_PORT)]
    backend.remote("n1").execute(argv, timeout=30)
    count, quiet_since = -1, time.monotonic()
    end = time.monotonic() + 10
    while time.monotonic() - quiet_since < 0.5 and time.monotonic() < end:
        now = log.read_text().count(f"got {tag}-")
        if now != count:
            count, quiet_since = now, time.monotonic()
        time.sleep(0.05)
    return count


def dropped_by_rule(backend: NetnsBackend) -> int:
    listing = backend.remote("n2").execute(
        ["iptables", "-w", "5", "-L", iptables.CHAIN, "-v", "-x", "-n"], timeout=10
    )
    rows = [line.split() for line in listing.stdout.splitlines() if "statistic" in line]
    return sum(int(row[0]) for row in rows)


def test_half_the_datagrams_are_lost_and_heal_restores_every_one(
    pair: tuple[NetnsBackend, Path],
) -> None:
    backend, log = pair
    n1, n2 = backend.remote("n1"), backend.remote("n2")
    iptables.set_rules(n2, [loss_rule([n1.address], 0.5)])
    received = send_and_count(backend, log, "lossy")
    # Binomial(400, 0.5): mean 200, sd 10; the bounds are 8 sd away.
    assert 120 <= received <= 280, received
    dropped = dropped_by_rule(backend)
    print(f"sent {SENT}, received {received}, dropped by the rule {dropped}")
    assert 0 < dropped <= SENT - received
    iptables.heal(n2)
    assert "statistic" not in n2.execute(iptables.list_argv(iptables.CHAIN), timeout=10).stdout
    assert send_and_count(backend, log, "healed") == SENT


def test_a_short_run_under_packet_loss_stays_valid_and_records_the_fault(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*HARNESS, "test", "--backend", "netns", "--nemesis", "packet-loss",
         "--packet-loss", "0.3", "--time", "8", "--nemesis-interval", "2", "--seed", "3",
         "--store", str(tmp_path), "--no-live"],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert results["valid"] is True and results["options"]["packet_loss"] == 0.3
    starts = [
        op for op in results["nemesis_schedule"] if op["f"] == "start" and op["type"] == "info"
    ]
    assert starts and all(op["fault"] == "packet-loss" for op in starts)
    for op in starts:
        assert op["value"]["share"] == 0.3 and op["value"]["direction"]
        assert any(op["value"]["drops"].values())
    ops = read_ops(tmp_path / "latest" / "history.jsonl")
    labels = [band["label"] for band in fault_windows(ops, 10**12)]
    assert labels and all(label.startswith("packet-loss: 30% lost ") for label in labels)


def test_delay_exits_254_with_a_sentence_and_makes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = subprocess.run(
        [*HARNESS, "test", "--backend", "netns", "--nemesis", "delay", "--time", "5",
         "--store", str(store), "--no-live"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert "nemesis 'delay'" in proc.stderr and "netem" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not store.exists()
