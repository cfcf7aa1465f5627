"""Whole `harness test` runs on Docker, the default backend: real containers, real faults."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from docker_runs import HARNESS, harness, leftovers, results, run_ids

from harness.image import BuiltImage, connect

pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(600),
]


@pytest.mark.parametrize(
    ("nemesis", "fault"),
    [("partition", "partition-halves"), ("kill", "kill"), ("pause", "pause")],
)
def test_a_docker_run_under_faults_stays_linearizable_and_leaves_nothing(
    node_image: BuiltImage, tmp_path: Path, nemesis: str, fault: str
) -> None:
    proc = harness(
        "test",
        "--nemesis", nemesis,
        "--time", "12",
        "--nemesis-interval", "2",
        "--seed", "4",
        "--store", str(tmp_path),
        "--no-live",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "on docker" in proc.stderr
    r = results(tmp_path)
    assert r["valid"] is True and r["options"]["backend"] == "docker"
    assert r["counts"]["all"]["ok"] > 200
    starts = [op for op in r["nemesis_schedule"] if op["f"] == "start" and op["type"] == "info"]
    assert starts and all(op["fault"] == fault for op in starts), starts
    for node in ("n1", "n2", "n3"):
        log = (tmp_path / "latest" / "nodes" / node / "raftkv.log").read_text()
        assert "listening on" in log
    if nemesis == "kill":
        restarted = tmp_path / "latest" / "nodes"
        starts_logged = sum(
            (restarted / n / "raftkv.log").read_text().count("--- start:")
            for n in ("n1", "n2", "n3")
        )
        assert starts_logged > 3, "a killed node was restarted in its container"
    (run_id,) = run_ids(tmp_path)
    assert leftovers(run_id) == [], "the run left containers or networks behind"
    client = connect()
    try:
        assert client.images.get(node_image.tag).id == node_image.id
    finally:
        client.close()


def test_local_reads_under_a_leader_partition_are_caught_on_docker(
    node_image: BuiltImage, tmp_path: Path
) -> None:
    proc = harness(
        "test",
        "--read-mode", "local",
        "--nemesis", "partition-leader",
        "--time", "15",
        "--nemesis-interval", "1",
        "--concurrency", "9",
        "--test-count", "5",  # stops at the first invalid run
        "--seed", "21",
        "--store", str(tmp_path),
        "--no-live",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    r = results(tmp_path)
    assert r["valid"] is False and r["stale_reads"] > 0
    assert "INVALID" in proc.stdout
    ids = run_ids(tmp_path)
    assert ids and all(leftovers(run_id) == [] for run_id in ids)


def test_a_sigkilled_harness_leaves_containers_that_cleanup_removes(
    node_image: BuiltImage, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [*HARNESS, "test", "--nemesis", "partition", "--time", "60", "--store", str(tmp_path),
         "--no-live"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    history = tmp_path / "latest" / "history.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (history.exists() and history.stat().st_size > 5_000):
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    (run_id,) = run_ids(tmp_path)
    left = leftovers(run_id)
    assert len(left) == 4, f"3 containers and a network should be left: {left}"
    cleanup = harness("cleanup", "--backend", "docker", timeout=120)
    assert cleanup.returncode == 0, cleanup.stderr
    assert all(f"removed container {name}" in cleanup.stdout for name in left[:3])
    assert leftovers(run_id) == []


def test_no_reachable_engine_is_a_usage_error_that_names_netns(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    proc = subprocess.run(
        [*HARNESS, "test", "--time", "5", "--store", str(tmp_path / "store")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 254, proc.stderr
    assert "no Docker engine reachable" in proc.stderr and "--backend netns" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists(), "a rejected run created files"
