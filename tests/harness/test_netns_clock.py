"""The clock nemesis in whole `harness test` runs on network namespaces: raftkv nodes run
under libfaketime, each fault is verified on its node and recorded, readindex stays valid,
and a target whose program ignores LD_PRELOAD is refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.history import read_ops
from harness.report import fault_windows
from nemesis import clock

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not os.path.exists(clock.LIBFAKETIME),
        reason=f"needs Debian's libfaketime ({clock.LIBFAKETIME}; `make` installs it)",
    ),
]

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def test_readindex_stays_linearizable_under_verified_clock_faults(tmp_path: Path) -> None:
    proc = harness(
        "test",
        "--backend",
        "netns",
        "--read-mode",
        "readindex",
        "--nemesis",
        "clock,clock-strobe",
        "--time",
        "12",
        "--nemesis-interval",
        "2",
        "--seed",
        "3",
        "--store",
        str(tmp_path),
        "--no-live",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert results["valid"] is True and results["stale_reads"] == 0
    schedule = results["nemesis_schedule"]
    starts = [op for op in schedule if op["f"] == "start" and op["type"] == "info"]
    assert {op["fault"] for op in starts} == {"clock", "clock-strobe"}
    assert all("error" not in op for op in starts)
    for op in starts:
        value = op["value"]
        # A strobe's first flip sets its offset at the true rate.
        setting = clock.ClockSetting(value["offset_s"], value.get("rate", 1.0))
        assert value["nodes"] and sorted(value["readings"]) == value["nodes"]
        for reading in value["readings"].values():
            assert clock.ClockReading(**reading).matches(setting)
    stops = [op for op in schedule if op["f"] == "stop" and op["type"] == "info"]
    assert stops and all("error" not in op for op in stops)
    ops = read_ops(tmp_path / "latest" / "history.jsonl")
    labels = {band["label"] for band in fault_windows(ops, 10**12)}
    assert any(re.fullmatch(r"clock: n\d \S+ s x1", label) for label in labels), labels
    assert any(label.startswith("clock-strobe: n") for label in labels), labels


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--target", "etcd"], "static Go binary, which ignores LD_PRELOAD"),
        (["--target", "etcd", "--backend", "docker"], "static Go binary"),
    ],
)
def test_clock_faults_are_refused_where_they_cannot_act(
    tmp_path: Path, args: list[str], why: str
) -> None:
    proc = harness("test", *args, "--nemesis", "clock", "--store", str(tmp_path), "--no-live")
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert why in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir()), "a refused run made something"


@pytest.mark.timeout(300)
def test_lease_reads_under_a_slow_partitioned_leader_clock_are_stale(tmp_path: Path) -> None:
    # The leader's clock at x0.25 counts its lease four times too long in real time; cut
    # off, it serves lease reads while the others elect a leader and take writes.
    def run(read_mode: str, test_count: int) -> subprocess.CompletedProcess[str]:
        return harness(
            "test",
            "--backend",
            "netns",
            "--read-mode",
            read_mode,
            "--nemesis",
            "clock-slow-leader+partition-leader",
            "--time",
            "15",
            "--nemesis-interval",
            "1",
            "--concurrency",
            "9",
            "--test-count",
            str(test_count),
            "--seed",
            "21",
            "--store",
            str(tmp_path / read_mode),
            "--no-live",
            timeout=140,
        )

    lease = run("lease", 3)
    assert lease.returncode == 1, lease.stdout + lease.stderr
    assert "INVALID" in lease.stdout and "stale reads 0;" not in lease.stdout.split("INVALID")[1]
    readindex = run("readindex", 1)
    assert readindex.returncode == 0, readindex.stdout + readindex.stderr
    results = json.loads((tmp_path / "readindex" / "latest" / "results.json").read_text())
    assert results["valid"] is True and results["stale_reads"] == 0
    starts = [
        op for op in results["nemesis_schedule"] if op["f"] == "start" and op["type"] == "info"
    ]
    slowed = [op["value"]["clock-slow-leader"] for op in starts if "error" not in op]
    assert slowed and all(v["rate"] == 0.25 and len(v["nodes"]) == 1 for v in slowed)
