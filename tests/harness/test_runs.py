"""Whole `harness test` runs on network namespaces: real nodes, real faults, real verdicts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.backends.netns import owner_record
from harness.backends.owner import owner_alive, read_owner

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(600),
]

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith("hns-")]


def results(store: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((store / "latest" / "results.json").read_text())


def own_namespaces(store: Path) -> list[str]:
    """The namespaces of the run in `store` still there (other runs may share the machine)."""
    run_id = re.search(r"\(id ([0-9a-f]{4})\)", (store / "latest" / "harness.log").read_text())
    assert run_id is not None, "harness.log names no run id"
    return [ns for ns in namespaces() if ns.startswith(f"hns-{run_id[1]}-")]


def test_partitioned_readindex_cluster_stays_linearizable(tmp_path: Path) -> None:
    proc = harness(
        "test",
        "--backend",
        "netns",
        "--nemesis",
        "partition",
        "--time",
        "20",
        "--nemesis-interval",
        "3",
        "--seed",
        "1",
        "--store",
        str(tmp_path),
        "--no-live",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = results(tmp_path)
    assert r["valid"] is True and r["stale_reads"] == 0
    assert r["counts"]["all"]["ok"] > 1000
    starts = [op for op in r["nemesis_schedule"] if op["f"] == "start" and op["type"] == "info"]
    assert starts and all(op["fault"] == "partition-halves" for op in starts)
    history = (tmp_path / "latest" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in history] == list(range(len(history)))
    for node in ("n1", "n2", "n3"):
        assert (tmp_path / "latest" / "nodes" / node / "raftkv.log").stat().st_size > 0
    assert own_namespaces(tmp_path) == [], "the run left namespaces behind"


def test_five_nodes_under_kill_and_pause_stay_linearizable(tmp_path: Path) -> None:
    proc = harness(
        "test",
        "--backend",
        "netns",
        "--nodes",
        "5",
        "--nemesis",
        "kill,pause",
        "--time",
        "15",
        "--nemesis-interval",
        "2",
        "--seed",
        "2",
        "--store",
        str(tmp_path),
        "--no-live",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = results(tmp_path)
    faults = {op["fault"] for op in r["nemesis_schedule"] if op["f"] == "start"}
    assert faults & {"kill", "pause"}


def test_local_reads_under_a_leader_partition_are_caught_as_stale(tmp_path: Path) -> None:
    proc = harness(
        "test",
        "--backend",
        "netns",
        "--read-mode",
        "local",
        "--nemesis",
        "partition-leader",
        "--time",
        "20",
        "--nemesis-interval",
        "1",
        "--concurrency",
        "9",
        "--test-count",
        "3",
        "--seed",
        "21",
        "--store",
        str(tmp_path),
        "--no-live",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    r = results(tmp_path)
    assert r["valid"] is False
    assert r["checker"]["anomaly"]["name"] in ("stale read", "other", "lost write")
    assert "INVALID" in proc.stdout


def test_acknowledging_before_writing_is_caught_when_nodes_crash(tmp_path: Path) -> None:
    proc = harness(
        "test",
        "--backend",
        "netns",
        "--bug",
        "no-fsync",
        "--nemesis",
        "kill",
        "--time",
        "20",
        "--nemesis-interval",
        "1",
        # A lost write needs a majority killed within a lazy flush: not every run has one.
        "--test-count",
        "6",
        "--seed",
        "2",
        "--store",
        str(tmp_path),
        "--no-live",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert results(tmp_path)["valid"] is False


def sigkill_mid_run(store: Path, args: list[str], ready: Callable[[Path], bool]) -> set[str]:
    """Starts `harness test --backend netns args` in `store`, SIGKILLs it once `ready(history
    path)` holds (at most 60 s), and returns the namespaces it left behind."""
    before = namespaces()
    proc = subprocess.Popen(
        [*HARNESS, "test", "--backend", "netns", *args, "--store", str(store), "--no-live"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    history = store / "latest" / "history.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (history.exists() and ready(history)):
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed = set(namespaces()) - set(before)
    assert killed, "the killed run's namespaces should still be there"
    return killed


def assert_cleanup_removes(killed: set[str]) -> None:
    """`harness cleanup` removes the namespaces in `killed` and their run's node processes."""
    cleanup = harness("cleanup", timeout=120)
    assert cleanup.returncode == 0, cleanup.stderr
    # Only the killed run's things: cleanup spares any other run alive on this machine.
    assert not killed & set(namespaces()), "cleanup left the killed run's namespaces behind"
    (run_id,) = {name.split("-")[1] for name in killed}
    leftover = subprocess.run(
        ["pgrep", "-f", "--", f"--data-dir /tmp/harness-{run_id}-"], capture_output=True, timeout=10
    )
    assert leftover.returncode == 1, f"node processes survived: {leftover.stdout!r}"


def test_a_sigkilled_harness_leaves_a_readable_history_and_cleanup_removes_the_rest(
    tmp_path: Path,
) -> None:
    def busy(history: Path) -> bool:
        if history.stat().st_size <= 20_000:
            return False
        time.sleep(2)
        return True

    args = ["--nemesis", "partition", "--time", "60", "--nemesis-interval", "2"]
    killed = sigkill_mid_run(tmp_path, args, busy)
    check = harness("check", "--json", str(tmp_path / "latest" / "history.jsonl"), timeout=120)
    assert check.returncode in (0, 2), check.stdout + check.stderr
    verdict = json.loads(check.stdout)
    assert verdict["ops"] > 100
    assert_cleanup_removes(killed)


def test_bad_options_exit_254_and_leave_nothing(tmp_path: Path) -> None:
    before = namespaces()
    cases = [
        (["--nodes", "1", "--nemesis", "partition"], "at least 2 nodes"),
        (["--nemesis", "frobnicate"], "frobnicate"),
        (["--read-mode", "psychic"], "psychic"),
        (["--bug", "nope"], "nope"),
        (["--time", "0"], "--time"),
    ]
    for args, words in cases:
        proc = harness("test", "--backend", "netns", *args, "--store", str(tmp_path), timeout=60)
        assert proc.returncode == 254, (args, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not any(tmp_path.iterdir()), "a rejected run created files"
    # Namespaces that came meanwhile must belong to runs still going (other tests may share
    # the machine); a rejected run's would have an owner that has exited, or none.
    for ns in set(namespaces()) - set(before):
        owner = read_owner(owner_record(ns.split("-")[1]))
        assert owner and owner_alive(owner), f"a rejected run left {ns}"


def test_missing_iptables_is_a_usage_error(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing on PATH: no ip, no iptables
    proc = subprocess.run(
        [*HARNESS, "test", "--backend", "netns", "--store", str(tmp_path / "s")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 254, proc.stderr
    assert "iptables" in proc.stderr or "iproute2" in proc.stderr


def started_run(store: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """A netns `harness test` with `args`, once its workload has begun; and its run id."""
    proc = subprocess.Popen(
        [*HARNESS, "test", "--backend", "netns", *args, "--store", str(store), "--no-live"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    history = store / "latest" / "history.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (history.exists() and history.stat().st_size):
        time.sleep(0.2)
    run_id = re.search(r"\(id ([0-9a-f]{4})\)", (store / "latest" / "harness.log").read_text())
    assert run_id is not None
    return proc, run_id[1]


def test_a_node_that_exits_on_its_own_makes_the_run_invalid(tmp_path: Path) -> None:
    # A SIGKILL from outside stands for a node's own crash: no fault stopped it, so the run
    # is INVALID naming it, whatever the history says; the other nodes are left alone.
    proc, run_id = started_run(
        tmp_path, "--nemesis", "partition", "--time", "10", "--nemesis-interval", "2", "--seed", "1"
    )
    node = f"--id n2 .*--data-dir /tmp/harness-{run_id}-"
    found = subprocess.run(["pgrep", "-f", "--", node], capture_output=True, text=True, timeout=10)
    assert found.returncode == 0, "n2's raftkv is not running"
    for pid in found.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    r = results(tmp_path)
    assert [c["node"] for c in r["node_crashes"]] == ["n2"], r["node_crashes"]
    assert "node n2 crashed on its own" in out and "node n2 exited on its own" in err


def test_a_cluster_that_never_serves_again_after_the_heal_is_invalid(tmp_path: Path) -> None:
    # Rules of our own, outside the harness's chain, cut every node from its peers for good:
    # the nemesis heals its partitions, yet no leader can be elected to serve the final reads.
    proc, run_id = started_run(
        tmp_path, "--nemesis", "partition", "--time", "5", "--nemesis-interval", "2",
        "--seed", "1", "--recovery-timeout", "3",
    )  # fmt: skip
    try:
        cut_every_node_from_its_peers(run_id)
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    r = results(tmp_path)
    assert r["recovery"]["window_s"] == 3 and r["recovery"]["unread"], r["recovery"]
    assert r["node_crashes"] == []
    assert "the cluster did not recover" in out, out
    assert not [ns for ns in namespaces() if ns.startswith(f"hns-{run_id}-")]


def cut_every_node_from_its_peers(run_id: str) -> None:
    spaces = [ns for ns in namespaces() if ns.startswith(f"hns-{run_id}-n")]
    cmdline = subprocess.run(["pgrep", "-af", "--", f"--data-dir /tmp/harness-{run_id}-"],
                             capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    peers = sorted(set(re.findall(r"n\d=([\d.]+):", cmdline)))
    assert len(spaces) == 3 and len(peers) == 3, (spaces, cmdline)
    for ns in spaces:
        for peer in peers:
            subprocess.run(["ip", "netns", "exec", ns, "iptables", "-I", "INPUT", "-s", peer,
                            "-j", "DROP"], check=True, timeout=10)  # fmt: skip
