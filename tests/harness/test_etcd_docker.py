"""The etcd target on the Docker backend: etcd comes with the node image (Debian's package
in the base built by debootstrap), members run in containers on the run's own network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from docker_runs import leftovers

pytestmark = [
    pytest.mark.docker,
    # The first run on a machine builds the node image (a few minutes).
    pytest.mark.timeout(900),
]


def test_etcd_in_containers_stays_linearizable_under_partitions_and_kills(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "harness.cli", "test", "--backend", "docker",
            "--target", "etcd", "--nemesis", "partition,kill", "--time", "12",
            "--nemesis-interval", "2", "--seed", "4", "--store", str(tmp_path), "--no-live",
        ],
        capture_output=True,
        text=True,
        timeout=850,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "latest"
    r = json.loads((run / "results.json").read_text())
    assert r["valid"] is True and r["options"]["backend"] == "docker"
    assert r["counts"]["all"]["ok"] > 100
    assert {op["fault"] for op in r["nemesis_schedule"] if op["f"] == "start"}
    for node in ("n1", "n2", "n3"):
        # etcd's own log, copied out of the member's container.
        assert '"msg":"serving client traffic' in (run / "nodes" / node / "etcd.log").read_text()
    run_id = re.search(r"\(id ([0-9a-f]{4})\)", (run / "harness.log").read_text())
    assert run_id is not None
    assert leftovers(run_id[1]) == [], "the run left containers or its network behind"


def test_etcd_members_join_and_leave_in_containers_made_up_front(tmp_path: Path) -> None:
    # Seed 5: n5 and n4 join as learners and are promoted (5 voters), then one leaves.
    proc = subprocess.run(
        [
            sys.executable, "-m", "harness.cli", "test", "--backend", "docker",
            "--target", "etcd", "--nemesis", "member,partition", "--time", "25",
            "--nemesis-interval", "2", "--seed", "5", "--store", str(tmp_path), "--no-live",
        ],
        capture_output=True,
        text=True,
        timeout=850,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "latest"
    r = json.loads((run / "results.json").read_text())
    assert r["valid"] is True
    changes = r["membership"]["changes"]
    assert {"add-learner", "promote"} <= {c["op"] for c in changes if "error" not in c}
    assert max(len(c["voters"]) for c in changes) == 5, changes
    for node in ("n4", "n5"):
        assert '"msg":"serving client traffic' in (run / "nodes" / node / "etcd.log").read_text()
    run_id = re.search(r"\(id ([0-9a-f]{4})\)", (run / "harness.log").read_text())
    assert run_id is not None
    assert leftovers(run_id[1]) == [], "the run left containers or its network behind"
