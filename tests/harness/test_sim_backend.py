"""`--backend sim` and `harness hunt`: whole runs in virtual time, the same bytes for the
same seed, every fault kind recorded, planted bugs found from histories alone, and what the
sim refuses."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def sim_test(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return harness("test", "--backend", "sim", "--store", str(store), "--no-live", *args)


def results(store: Path) -> dict[str, Any]:
    return json.loads((store / "latest" / "results.json").read_text())


def test_the_same_seed_gives_the_same_history_bytes(tmp_path: Path) -> None:
    args = ("--nemesis", "all", "--time", "8", "--nemesis-interval", "1", "--seed", "11")
    for name in ("a", "b"):
        proc = sim_test(tmp_path / name, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    first = (tmp_path / "a" / "latest" / "history.jsonl").read_bytes()
    assert first == (tmp_path / "b" / "latest" / "history.jsonl").read_bytes()
    other = sim_test(tmp_path / "c", *args[:-1], "12")
    assert other.returncode == 0
    assert first != (tmp_path / "c" / "latest" / "history.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--target", "etcd", "--raft-option", "pre-vote=off"], "etcd has none"),
        (["--raft-option", "pre-vote"], "expected NAME=VALUE"),
        (["--raft-option", "check-quorum=sometimes"], "check-quorum takes on or off"),
        (["--raft-option", "heartbeat=1"], "unknown raft option 'heartbeat'"),
    ],
)
def test_bad_raft_options_are_refused_before_anything_runs(
    tmp_path: Path, args: list[str], why: str
) -> None:
    proc = harness("test", "--backend", "sim", *args, "--store", str(tmp_path), timeout=60)
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert why in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_election_crash_runs_its_steps_and_a_correct_cluster_survives(tmp_path: Path) -> None:
    proc = sim_test(tmp_path, "--nemesis", "election-crash", "--raft-option", "check-quorum=off",
                    "--time", "10", "--seed", "9")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr  # seed 9 with vote-amnesia fails
    r = results(tmp_path)
    assert r["valid"] is True and r["node_crashes"] == []
    assert r["recovery"] == {"window_s": 10, "unread": []}  # served again after healing
    junit = (Path(r["run_dir"]) / "junit.xml").read_text()
    assert 'name="no-node-crash"' in junit and 'name="recovered"' in junit
    assert "<failure" not in junit
    steps = [op["value"] for op in r["nemesis_schedule"]
             if op["fault"] == "election-crash" and op["type"] == "info"]  # fmt: skip
    leader = steps[0]["leader"]
    assert steps[0]["cut"][leader] == sorted(n for n in ("n1", "n2", "n3") if n != leader)
    assert steps[1] == {"nodes": [leader]}
    crash = steps[2]
    assert crash["voter"] != crash["candidate"] and leader not in (
        crash["voter"],
        crash["candidate"],
    )
    assert crash["nodes"] == [crash["voter"]] and crash["term"] >= 2
    assert steps[3] == {"restarted": sorted([leader, crash["voter"]])}
    assert "cut" in steps[4] and crash["candidate"] in json.dumps(steps[4]["cut"])
    assert steps[5] == {"restarted": [], "healed": True}
    report = (Path(r["run_dir"]) / "report.html").read_text()
    assert f"election-crash: leader {leader} cut off and killed" in report


@pytest.mark.slow  # several whole sim runs: in `make test`, not `make check`
def test_every_fault_kind_acts_and_is_recorded(tmp_path: Path) -> None:
    proc = sim_test(tmp_path, "--nemesis", "all", "--time", "30", "--nemesis-interval", "0.5",
                    "--seed", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = results(tmp_path)
    starts = [op for op in r["nemesis_schedule"] if op["f"] == "start" and op["type"] == "info"]
    kinds = {op["fault"] for op in starts}
    assert {"kill", "pause", "power-loss", "packet-loss", "clock", "partition-leader"} <= kinds
    # Only a leader-aware fault may find no leader to act on (a kill or cut just before).
    assert {op.get("error") for op in starts} <= {None, "leader unknown: nothing done"}
    clock = next(op["value"] for op in starts if op["fault"] == "clock")
    assert clock["rate"] in (0.5, 2.0) and clock["offset_s"] == 0.0
    assert r["counts"]["all"]["ok"] > 1000
    assert (tmp_path / "latest" / "report.html").exists()
    assert (tmp_path / "latest" / "leaders.jsonl").read_text().count("\n") > 50


@pytest.mark.slow  # several whole sim runs: in `make test`, not `make check`
@pytest.mark.parametrize(
    ("bug", "args"),
    [
        ("no-fsync", ["--nemesis", "power-loss", "--fault-targets", "all"]),
        ("stale-leader-read", ["--nemesis", "partition-leader", "--read-mode", "lease"]),
    ],
)
def test_hunt_finds_a_planted_bug_and_its_replay_repeats_it(
    tmp_path: Path, bug: str, args: list[str]
) -> None:
    proc = harness("hunt", "--bug", bug, *args, "--time", "10", "--nemesis-interval", "1",
                   "--runs", "10", "--store", str(tmp_path / "hunt"))  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert "first anomaly" in lines
    replay = shlex.split(lines["replay"])
    assert replay[:4] == ["harness", "test", "--backend", "sim"] and f"{bug}" in replay
    again = harness(*replay[1:], "--store", str(tmp_path / "replay"), "--no-live")
    assert again.returncode == 1, again.stdout + again.stderr
    kept = next((tmp_path / "hunt").glob("*/*/history.jsonl"))
    assert kept.read_bytes() == (tmp_path / "replay" / "latest" / "history.jsonl").read_bytes()


@pytest.mark.slow  # several whole sim runs: in `make test`, not `make check`
def test_hunt_without_a_bug_finds_nothing(tmp_path: Path) -> None:
    proc = harness("hunt", "--nemesis", "all", "--time", "5", "--runs", "4", "--jobs", "2",
                   "--store", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no anomaly in 4 runs (seeds 1..4)" in proc.stdout
    assert not list(tmp_path.glob("*/*/history.jsonl")), "runs that found nothing leave nothing"


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["test", "--backend", "sim", "--target", "etcd"], "etcd has no core to simulate"),
        (["test", "--backend", "sim", "--nemesis", "clock-strobe"], "no wall clock to jump"),
        (["hunt", "--backend", "netns"], "hunt runs on the sim backend only"),
        (["test", "--backend", "netns", "--nemesis", "kill,election-crash"], "use --backend sim"),
    ],
)
def test_what_the_sim_cannot_run_is_refused(tmp_path: Path, args: list[str], why: str) -> None:
    proc = harness(*args, "--store", str(tmp_path), timeout=60)
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert why in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # several whole sim runs: in `make test`, not `make check`
def test_shrink_keeps_the_anomaly_with_fewer_faults_ops_and_clients(tmp_path: Path) -> None:
    hunt = harness("hunt", "--bug", "no-fsync", "--nemesis", "power-loss,partition,kill",
                   "--time", "8", "--nemesis-interval", "0.5", "--runs", "10",
                   "--store", str(tmp_path))  # fmt: skip
    assert hunt.returncode == 1, hunt.stdout + hunt.stderr
    run_dir = (tmp_path / "latest").resolve()
    before = results(tmp_path)
    proc = harness("shrink", str(run_dir))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    shrunk = json.loads((run_dir / "shrunk" / "results.json").read_text())
    assert shrunk["valid"] is False
    plan = json.loads((run_dir / "shrunk" / "plan.json").read_text())
    starts = [e for e in before["nemesis_schedule"] if e["f"] == "start" and e["type"] == "info"]
    assert 0 < sum(e["f"] == "start" for e in plan) < len(starts)
    assert sum(shrunk["counts"]["all"].values()) < sum(before["counts"]["all"].values())
    assert shrunk["options"]["concurrency"] <= before["options"]["concurrency"]
    assert (run_dir / "shrunk" / "report.html").exists()
    assert "shrunk in" in proc.stdout and "faults (of" in proc.stdout
    again = harness("shrink", str(tmp_path / "nowhere"))
    assert again.returncode == 254 and "Traceback" not in again.stderr
