"""The power-loss nemesis on the docker backend, for real: each node's lazy filesystem is
mounted on this host and bound into its container; raftkv survives every node losing
power at once, and its `no-fsync` bug loses acknowledged writes; a run leaves no mount,
mount process, container or directory behind; and `harness cleanup` unmounts the disks
of a docker run whose harness was killed, after removing its containers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from docker_runs import HARNESS, harness, leftovers, results, run_ids

from harness.disks import check_fuse, mounted

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]

RUN = ["--backend", "docker", "--nemesis", "power-loss", "--fault-targets", "all",
       "--nemesis-interval", "2", "--seed", "4", "--no-live"]  # fmt: skip


@pytest.fixture(autouse=True)
def fuse_here() -> None:
    try:
        check_fuse()
    except Exception as exc:
        pytest.skip(f"this host cannot mount lazyfs: {exc}")


def disk_root(store: Path) -> str:
    """The directory of this host where the run mounted its disks (from its harness.log)."""
    (log,) = {p.resolve() for p in store.glob("*/*/harness.log")}
    found = re.search(r"power-loss disks mounted in (\S+),", log.read_text())
    assert found, "the run mounted no disks"
    return found.group(1)


def left_behind(root: str) -> list[str]:
    """What of the disks under `root` is still here: mounts, mount processes, the dir."""
    found = [point for _, point in mounted() if point.startswith(f"{root}/")]
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "nemesis.lazyfs" in cmdline and root in cmdline:
            found.append(f"process {proc.name}: {cmdline}")
    return found + ([root] if os.path.exists(root) else [])


def power_losses(r: dict[str, Any]) -> list[dict[str, Any]]:
    starts = [op for op in r["nemesis_schedule"] if op["f"] == "start" and op["type"] == "info"]
    assert starts and all("error" not in op for op in starts), starts
    losses = [op["value"] for op in starts if op["fault"] == "power-loss"]
    assert len(losses) >= 2 and all(v["nodes"] == ["n1", "n2", "n3"] for v in losses), losses
    return losses


def test_raftkv_on_docker_survives_every_node_losing_power_and_leaves_nothing(
    node_image: object, tmp_path: Path
) -> None:
    proc = harness("test", *RUN, "--time", "12", "--store", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = results(tmp_path)
    assert r["valid"] is True and r["counts"]["write"]["ok"] > 100, r["counts"]
    power_losses(r)
    (run_id,) = run_ids(tmp_path)
    assert leftovers(run_id) == []
    assert left_behind(disk_root(tmp_path)) == []


def test_raftkv_no_fsync_on_docker_loses_acknowledged_writes(
    node_image: object, tmp_path: Path
) -> None:
    proc = harness("test", *RUN, "--time", "12", "--bug", "no-fsync", "--store", str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    r = results(tmp_path)
    assert r["valid"] is False
    losses = power_losses(r)
    assert any(sum(n.values()) for v in losses for n in v["lost"].values()), losses
    assert left_behind(disk_root(tmp_path)) == []


def test_cleanup_unmounts_the_disks_of_a_killed_docker_run(
    node_image: object, tmp_path: Path
) -> None:
    argv = [*HARNESS, "test", *RUN, "--time", "60", "--store", str(tmp_path)]
    run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob("*/*/history.jsonl")) or "cluster up" not in "".join(
            p.read_text() for p in tmp_path.glob("*/*/harness.log")
        ):
            assert run.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    root = disk_root(tmp_path)
    (run_id,) = run_ids(tmp_path)
    assert leftovers(run_id) and len(left_behind(root)) > 3, "the killed run left its disks"
    proc = harness("cleanup", "--backend", "docker", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for node in ("n1", "n2", "n3"):
        assert f"removed {root}/{node}" in proc.stdout, proc.stdout
    assert leftovers(run_id) == []
    deadline = time.monotonic() + 10
    while left := left_behind(root):
        assert time.monotonic() < deadline, f"left after cleanup: {left}"
        time.sleep(0.1)
