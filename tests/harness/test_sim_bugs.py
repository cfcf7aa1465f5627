"""The planted bugs that need rare schedules, found by `harness hunt --backend sim` from
histories alone, at seeds that bench/detection.py found (docs/performance.md, "detection on
the sim backend"). Each is caught by what a run shows from outside: the checker's anomaly
in the history, a node that crashed on its own, or a cluster that never served again
after every fault healed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = [sys.executable, "-m", "harness.cli"]


def hunt(store: Path, bug: str, seed: int, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [*HARNESS, "hunt", "--backend", "sim", "--bug", bug, "--time", "10", *args,
            "--seed", str(seed), "--runs", "1", "--jobs", "1", "--store", str(store)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bug", "seed", "args", "found"),
    [
        # One node cut off and one or more killed at once, both healed together every
        # 0.5 s: without the log check a node that missed entries can be elected and
        # drop them. This seed's run is a long one (about 40 s of wall time).
        ("skip-log-check", 49, ["--nemesis", "partition-one+kill", "--nemesis-interval", "0.5"],
         "first anomaly: "),
        # A voter killed right after voting forgets its vote and elects a second leader in
        # the same term; check-quorum off, or the restarted voter would ignore votes.
        ("vote-amnesia", 9, ["--nemesis", "election-crash", "--raft-option", "check-quorum=off"],
         "first anomaly: "),
        # Figure 8: a leader elected after a crash commits an entry of an older term by
        # counting replicas (one entry per append), is cut off before its own entry
        # arrives, and the leader before it overwrites that entry on the node that
        # committed it, which then refuses every append: no op succeeds after healing.
        ("commit-old-term", 3,
         ["--nemesis", "election-crash", "--raft-option", "max-append-entries=1"],
         "the cluster did not recover: "),
    ],
)  # fmt: skip
def test_hunt_finds_a_rare_planted_bug(
    tmp_path: Path, bug: str, seed: int, args: list[str], found: str
) -> None:
    proc = hunt(tmp_path, bug, seed, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"anomaly at seed {seed}" in proc.stdout
    assert found in proc.stdout


@pytest.mark.slow
def test_a_node_that_fails_its_own_check_makes_the_run_invalid(tmp_path: Path) -> None:
    # Seed 1: the history shows nothing, but the second leader of a term crashes on its
    # own safety check when it meets the voter that served both.
    args = ["--nemesis", "election-crash", "--raft-option", "check-quorum=off"]
    proc = hunt(tmp_path, "vote-amnesia", 1, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "first anomaly" not in proc.stdout
    assert "crashed on its own at " in proc.stdout and "AssertionError" in proc.stdout
    results_file = tmp_path / "latest" / "results.json"
    results = json.loads(results_file.read_text())
    assert results["valid"] is False and results["checker"]["valid"] is True
    assert results["node_crashes"] and results["node_crashes"][0]["node"] in ("n1", "n2", "n3")
    junit = (results_file.parent / "junit.xml").read_text()
    assert 'name="no-node-crash"' in junit and "log compacted" in junit
