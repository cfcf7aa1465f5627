"""The redis target on the Docker backend: redis-server and redis-sentinel come with the node
image (Debian's packages in the base built by debootstrap), one container per node; the image
also carries this host's Redis built with libc malloc, which clock faults run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from docker_runs import leftovers
from test_redis import assert_clocks_reached_redis, clock_args

pytestmark = [
    pytest.mark.docker,
    # The first run on a machine builds the node image (a few minutes).
    pytest.mark.timeout(900),
]


def test_a_cut_off_primary_loses_writes_in_containers_too(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "harness.cli", "test", "--backend", "docker",
            "--target", "redis", "--nemesis", "partition-leader", "--time", "15",
            "--nemesis-interval", "5", "--test-count", "2", "--seed", "1",
            "--store", str(tmp_path), "--no-live",
        ],
        capture_output=True,
        text=True,
        timeout=850,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    run = tmp_path / "latest"
    r = json.loads((run / "results.json").read_text())
    assert r["valid"] is False and r["options"]["backend"] == "docker"
    names = {a["name"] for a in r["checker"]["anomalies"]}
    assert names & {"lost write", "stale read"}, names
    for node in ("n1", "n2", "n3"):
        log = (run / "nodes" / node / "redis.log").read_text()
        assert "Ready to accept connections" in log and "Sentinel ID is" in log
    run_id = re.search(r"\(id ([0-9a-f]{4})\)", (run / "harness.log").read_text())
    assert run_id is not None
    assert leftovers(run_id[1]) == [], "the run left containers or its network behind"


@pytest.mark.redis_libc
def test_clock_faults_reach_redis_in_containers(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "test", "--backend", "docker", *clock_args(),
         "--store", str(tmp_path)],
        capture_output=True, text=True, timeout=850,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert_clocks_reached_redis(tmp_path / "latest")
