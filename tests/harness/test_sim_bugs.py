"""The planted bugs that need rare schedules, found by `harness hunt --backend sim` from
histories alone, at seeds that bench/detection.py found (docs/performance.md, "detection on
the sim backend"). `commit-old-term` and `vote-amnesia` have no test here: no schedule the
harness can express has shown them to the checker yet (docs/performance.md says what was
tried and why)."""

from __future__ import annotations

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
    ("bug", "seed", "args"),
    [
        # One node cut off and one or more killed at once, both healed together every
        # 0.5 s: without the log check a node that missed entries can be elected and
        # drop them. This seed's run is a long one (about 40 s of wall time).
        ("skip-log-check", 49, ["--nemesis", "partition-one+kill", "--nemesis-interval", "0.5"]),
    ],
)
def test_hunt_finds_a_rare_planted_bug(
    tmp_path: Path, bug: str, seed: int, args: list[str]
) -> None:
    proc = hunt(tmp_path, bug, seed, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"anomaly at seed {seed}" in proc.stdout
    assert "first anomaly: " in proc.stdout
