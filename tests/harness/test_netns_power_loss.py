"""The power-loss nemesis in whole `harness test` runs on network namespaces: each node's
data on its own lazy filesystem, killed and stripped of what it did not fsync, restarted.
raftkv's `no-fsync` bug loses acknowledged writes; raftkv without bugs survives every node
losing power at once; a store that never fsyncs survives kill and not power-loss; mounts
are gone after a run, and `harness cleanup` unmounts those of dead runs only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.disks import HostDisks, check_fuse, mounted
from harness.runner import make_data_dir
from nemesis.lazyfs import FSNAME_PREFIX
from tests.harness.test_netns_cleanup import dead_owner

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

HARNESS = [sys.executable, "-m", "harness.cli"]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "http_kv_server.py"


def harness(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def run(store: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = harness("test", "--backend", "netns", "--store", str(store), "--no-live", *args)
    results_file = store / "latest" / "results.json"
    assert results_file.exists(), proc.stdout + proc.stderr
    return proc, json.loads(results_file.read_text())


def power_losses(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The values of the power-loss starts that took effect."""
    schedule = results["nemesis_schedule"]
    starts = [op for op in schedule if op["f"] == "start" and op["type"] == "info"]
    assert starts and all("error" not in op for op in starts), starts
    return [op["value"] for op in starts if op["fault"] == "power-loss"]


def our_mounts() -> list[tuple[str, str]]:
    return [(s, p) for s, p in mounted() if s.startswith(FSNAME_PREFIX)]


def run_all_nodes_losing_power(store: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """A raftkv run where every power loss takes all three nodes (every 2 s)."""
    proc, results = run(store, "--nemesis", "power-loss", "--fault-targets", "all",
                        "--time", "16", "--nemesis-interval", "2", "--seed", "4",
                        *args)  # fmt: skip
    losses = power_losses(results)
    assert len(losses) >= 3 and all(v["nodes"] == ["n1", "n2", "n3"] for v in losses)
    return proc.returncode, results


def test_raftkv_no_fsync_loses_acknowledged_writes_in_one_run(tmp_path: Path) -> None:
    code, results = run_all_nodes_losing_power(tmp_path, "--bug", "no-fsync")
    assert code == 1 and results["valid"] is False
    losses = power_losses(results)
    assert any(sum(n.values()) for v in losses for n in v["lost"].values()), losses


def test_raftkv_stays_valid_when_every_node_loses_power_again_and_again(tmp_path: Path) -> None:
    before = set(our_mounts())
    code, results = run_all_nodes_losing_power(tmp_path)
    assert code == 0 and results["valid"] is True
    assert results["counts"]["write"]["ok"] > 100, results["counts"]
    assert set(our_mounts()) == before, "the run's disks are unmounted after it"
    report = (tmp_path / "latest" / "report.html").read_text(encoding="utf-8")
    assert "power-loss: n1 n2 n3; lost writes to" in report


def test_a_store_that_never_fsyncs_survives_kill_and_loses_writes_to_power_loss(
    tmp_path: Path,
) -> None:
    node_cmd = (f"python3 {EXAMPLE} --host {{host}} --port {{port}} --peers {{http_peers}} "
                "--data-dir {data_dir}")  # fmt: skip
    verdicts = {}
    for fault in ("kill", "power-loss"):
        # One node: no replication to race, so only the disk decides.
        _, results = run(tmp_path / fault, "--target", "http", "--node-cmd", node_cmd,
                         "--nodes", "1", "--nemesis", fault, "--time", "12",
                         "--nemesis-interval", "2", "--seed", "5")  # fmt: skip
        verdicts[fault] = results["valid"]
    assert verdicts == {"kill": True, "power-loss": False}


def test_power_loss_is_refused_where_it_cannot_run(tmp_path: Path) -> None:
    for args, why in [
        (["--target", "memory"], "memory does not say where its nodes keep data"),
        (["--fault-targets", "most"], "unknown most; expected some of one, minority"),
    ]:
        proc = harness("test", "--backend", "netns", "--nemesis", "power-loss", *args,
                       "--store", str(tmp_path), timeout=60)  # fmt: skip
        assert proc.returncode == 254, proc.stdout + proc.stderr
        assert why in proc.stderr and "Traceback" not in proc.stderr


def test_cleanup_unmounts_the_disks_of_dead_runs_and_spares_live_ones(tmp_path: Path) -> None:
    check_fuse()
    # In the temp dir, where `harness cleanup` looks for the data directories of runs.
    live_root, dead_root = make_data_dir("beef"), make_data_dir("dead")
    Path(dead_root, ".owner").write_text(dead_owner())
    live, dead = HostDisks("beef"), HostDisks("dead")
    try:
        live.mount("n1", f"{live_root}/n1", str(tmp_path / "live.log"))
        dead.mount("n1", f"{dead_root}/n1", str(tmp_path / "dead.log"))
        Path(dead_root, "n1", "x").write_text("written")
        proc = harness("cleanup", "--backend", "netns", timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"removed {dead_root}/n1" in proc.stdout
        assert f"removed {live_root}" not in proc.stdout
        deadline = time.monotonic() + 10
        while (f"{FSNAME_PREFIX}dead", f"{dead_root}/n1") in mounted():
            assert time.monotonic() < deadline, "the dead run's disk is still mounted"
            time.sleep(0.1)
        assert (f"{FSNAME_PREFIX}beef", f"{live_root}/n1") in mounted()
        assert not os.path.exists(dead_root), "its data directory went next"
    finally:
        live.unmount_all()
        dead.unmount_all()
        shutil.rmtree(live_root, ignore_errors=True)
        shutil.rmtree(dead_root, ignore_errors=True)
    assert (f"{FSNAME_PREFIX}beef", f"{live_root}/n1") not in mounted()


@pytest.mark.etcd
@pytest.mark.parametrize(("metadata", "valid"), [("journaled", True), ("strict", False)])
def test_etcd_keeps_its_writes_only_where_an_fsync_commits_every_directory_change(
    tmp_path: Path, metadata: str, valid: bool
) -> None:
    # etcd 3.4 never fsyncs the directory that holds member/ (nor member/snap after making
    # db): POSIX lets a power cut take them, ext4's journal commits them with any fsync.
    proc, results = run(tmp_path, "--target", "etcd", "--nemesis", "power-loss",
                        "--fault-targets", "all", "--power-loss-metadata", metadata,
                        "--time", "16", "--nemesis-interval", "2", "--seed", "4")  # fmt: skip
    assert results["valid"] is valid, proc.stdout + proc.stderr
    assert results["options"]["power_loss_metadata"] == metadata
    if metadata == "strict":  # what it lost: the directories it never fsynced
        losses = power_losses(results)
        assert sum(n["dir_changes"] for v in losses for n in v["lost"].values()) > 0
