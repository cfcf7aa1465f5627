"""`--nemesis member`: who may run it (a target with the ChangesMembers hook, a backend with
spare nodes, room to move), `--max-nodes`, `all`, and whole runs of etcd on network
namespaces whose membership moves between 3 and 5 voters, recorded, drawn and cleaned up."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from test_runs import assert_cleanup_removes, sigkill_mid_run

from harness.exit import UsageError
from harness.options import RunOptions, setup_kinds, validate
from harness.runner import spare_slots
from nemesis.faults import parse_nemesis

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"target": "memory"}, "memory offers no membership changes"),
        ({"target": "memory"}, "(the ChangesMembers hook)"),
        ({"backend": "sim", "target": "raftkv", "max_nodes": 3}, "raise --max-nodes"),
        ({"backend": "sim"}, "not simulated yet"),
        ({"backend": "ssh"}, "the ssh backend has no spare nodes to add"),
        ({"max_nodes": 3}, "raise --max-nodes"),
        ({"nodes": 4, "max_nodes": 3, "nemesis": "partition"}, "--max-nodes 3 is below --nodes 4"),
    ],
)
def test_the_member_nemesis_is_refused_where_it_cannot_run(
    options: dict[str, object], words: str
) -> None:
    given = {"backend": "netns", "target": "etcd", "nemesis": "member", **options}
    with pytest.raises(UsageError) as caught:
        validate(RunOptions(**given))  # type: ignore[arg-type]
    assert words in str(caught.value)


def test_a_refusal_is_exit_254_with_one_sentence_and_nothing_made(tmp_path: Path) -> None:
    for args, words in (
        (["--target", "memory", "--nemesis", "member"], "ChangesMembers"),
        (["--target", "etcd", "--backend", "sim", "--nemesis", "member"], "not simulated yet"),
        (["--target", "etcd", "--nodes", "4", "--max-nodes", "3"], "below --nodes 4"),
    ):
        proc = harness("test", "--backend", "netns", *args, "--store", str(tmp_path), timeout=60)
        assert proc.returncode == 254, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_all_takes_member_for_etcd_and_raftkv_and_spares_are_made_for_it_alone() -> None:
    def kinds(**kw: object) -> set[str]:
        opts = RunOptions(nemesis="all", **kw)  # type: ignore[arg-type]
        return {n.name for n in parse_nemesis("all", opts.nodes, can_set_up=setup_kinds(opts))}

    assert "member" in kinds(target="etcd")
    assert "member" in kinds(target="raftkv")
    assert "member" not in kinds(target="memory")
    assert "member" not in kinds(target="etcd", backend="ssh")
    assert "member" not in kinds(target="raftkv", backend="sim")
    # member-race needs two slots beyond three voters: `all` leaves it out below five.
    assert "member-race" in kinds(target="raftkv")
    assert "member-race" not in kinds(target="raftkv", max_nodes=4)
    assert "member" in kinds(target="raftkv", max_nodes=4)
    opts = RunOptions(target="etcd", nemesis="member,partition")
    assert spare_slots(opts, parse_nemesis(opts.nemesis, 3)) == ["n4", "n5"]
    assert spare_slots(opts, parse_nemesis("partition", 3)) == []
    # --max-nodes defaults to 5, or --nodes when that is more: a larger cluster still runs.
    assert RunOptions(nodes=7).slot_count == 7 and RunOptions(nodes=3, max_nodes=6).slot_count == 6
    validate(RunOptions(backend="ssh", target="etcd", nodes=7, nemesis="partition"))


def namespaces(run_id: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in out.stdout.splitlines() if f"hns-{run_id}-" in line]


def etcd_processes(run_id: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10)
    return [line for line in out.stdout.splitlines() if f"harness-{run_id}-" in line]


def assert_nothing_left(run_dir: Path) -> None:
    found = re.search(r"\(id ([0-9a-f]{4})\)", (run_dir / "harness.log").read_text())
    assert found is not None
    run_id = found[1]
    assert namespaces(run_id) == []
    assert etcd_processes(run_id) == []
    assert not list(Path(tempfile.gettempdir()).glob(f"harness-{run_id}-*"))


@pytest.mark.root
@pytest.mark.etcd
@pytest.mark.timeout(300)
def test_etcd_stays_valid_while_its_membership_moves_between_3_and_5_voters(
    tmp_path: Path,
) -> None:
    # Seed 5: n4 and n5 join (as learners, then promoted), members leave, partitions between.
    proc = harness(
        "test", "--backend", "netns", "--target", "etcd", "--nemesis", "member,partition",
        "--time", "30", "--nemesis-interval", "2", "--seed", "5", "--store", str(tmp_path),
        "--no-live",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = (tmp_path / "latest").resolve()
    results = json.loads((run / "results.json").read_text())
    assert results["valid"] is True and results["counts"]["all"]["ok"] > 500
    membership = results["membership"]
    assert membership["initial"] == {"voters": ["n1", "n2", "n3"], "learners": []}
    changes = membership["changes"]
    ops = {c["op"] for c in changes if "error" not in c}
    # A removal may go unanswered on a loaded machine (etcd commits it late, or not): then
    # it is recorded with its error, and the run goes on; adds and promotions must work.
    assert {"add-learner", "promote"} <= ops, changes
    assert "remove" in {c["op"] for c in changes}, changes
    sizes = {len(c["voters"]) for c in changes}
    assert max(sizes) == 5 and min(sizes) >= 3, changes
    for change in changes:
        assert set(change) >= {"time", "op", "node", "voters", "learners", "elapsed_ms"}
        if change["op"] == "add-learner" and "error" not in change:
            assert change["node"] in change["learners"]
    # The heal left only voters, and stopped every node that left.
    final = results["nemesis_schedule"][-1]["value"]["members"]
    assert final["learners"] == [] and len(final["voters"]) >= 3
    for node in ("n4", "n5"):
        assert "etcd" in (run / "nodes" / node / "etcd.log").read_text()
    report = (run / "report.html").read_text()
    assert 'id="membership-chart"' in report and '"membership":{"nodes":["n1"' in report
    assert_nothing_left(run)


@pytest.mark.root
@pytest.mark.etcd
@pytest.mark.timeout(300)
def test_a_member_run_stopped_by_sigterm_leaves_no_namespace_process_or_data(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [*HARNESS, "test", "--backend", "netns", "--target", "etcd", "--nemesis", "member",
         "--time", "60", "--nemesis-interval", "1", "--seed", "5", "--store", str(tmp_path),
         "--no-live"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        history = tmp_path / "latest" / "history.jsonl"
        deadline = time.monotonic() + 60
        # Until a spare node has joined: then its process is one to remove too.
        while time.monotonic() < deadline:
            if history.exists() and '"add-learner"' in history.read_text():
                break
            time.sleep(0.5)
        else:
            pytest.fail("no node joined within 60 s")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 255, out + err
    assert_nothing_left((tmp_path / "latest").resolve())


@pytest.mark.root
@pytest.mark.timeout(300)
def test_raftkv_stays_valid_while_members_move_under_partitions_and_kills(
    tmp_path: Path,
) -> None:
    # Seed 5: n5 joins and is promoted, n1 leaves and comes back wiped, as n1-2.
    proc = harness(
        "test", "--backend", "netns", "--target", "raftkv",
        "--nemesis", "member,partition,kill", "--time", "30", "--nemesis-interval", "2",
        "--seed", "5", "--store", str(tmp_path), "--no-live",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = (tmp_path / "latest").resolve()
    results = json.loads((run / "results.json").read_text())
    assert results["valid"] is True and results["counts"]["all"]["ok"] > 500
    changes = results["membership"]["changes"]
    ops = {c["op"] for c in changes if "error" not in c}
    assert {"add-learner", "promote", "remove"} <= ops, changes
    assert all(3 <= len(c["voters"]) <= 5 for c in changes), changes
    readded = [c["node"] for c in changes if c["op"] == "add-learner" and not c["fresh"]]
    for node in readded:
        # A slot added again runs a new node id, read back as the slot's name.
        assert f"--id {node}-2 " in (run / "nodes" / node / "raftkv.log").read_text()
    final = results["nemesis_schedule"][-1]["value"]["members"]
    assert final["learners"] == [] and len(final["voters"]) >= 3
    assert_nothing_left(run)


@pytest.mark.root
@pytest.mark.timeout(300)
def test_member_race_passes_raftkv_and_catches_it_letting_two_changes_fly(
    tmp_path: Path,
) -> None:
    # One race (5 s in, healed at 10 s). raftkv holds the second promotion while the first
    # is pending and stays valid; with conf-two-in-flight both pass while the other voters
    # are cut off, two leaders serve at once, and the history shows it.
    def race(name: str, *bug: str) -> tuple[int, Path, dict[str, Any]]:
        proc = harness(
            "test", "--backend", "netns", "--target", "raftkv", "--nemesis", "member-race",
            *bug, "--time", "14", "--nemesis-interval", "5", "--seed", "1",
            "--store", str(tmp_path / name), "--no-live",
        )  # fmt: skip
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        run = (tmp_path / name / "latest").resolve()
        assert_nothing_left(run)
        return proc.returncode, run, json.loads((run / "results.json").read_text())

    def first_race(results: dict[str, Any]) -> dict[str, Any]:
        return next(e["value"] for e in results["nemesis_schedule"]
                    if e["fault"] == "member-race" and e["type"] == "info")  # fmt: skip

    code, _, results = race("correct")
    assert code == 0 and results["valid"] is True
    value = first_race(results)
    assert len(value["voters"]) <= 4 and value["cut"], value
    code, _, results = race("buggy", "--bug", "conf-two-in-flight")
    assert code == 1 and results["checker"]["anomalies"] and results["stale_reads"] > 0
    value = first_race(results)
    assert len(value["voters"]) == 5 and value["cut"], value


@pytest.mark.root
@pytest.mark.timeout(300)
def test_cleanup_after_a_run_killed_mid_race_leaves_nothing(tmp_path: Path) -> None:
    # Killed while the race's promotions are out: learners n4 and n5 running, the cut in
    # place. Cleanup removes the namespaces (and with them the cut) and every node process.
    def racing(history: Path) -> bool:
        if '"fault":"member-race"' not in history.read_text():
            return False
        time.sleep(1.5)  # into the race: the adds take about a second, the promotions 3 s
        return True

    args = ["--nemesis", "member-race", "--time", "60", "--nemesis-interval", "3", "--seed", "1"]
    killed = sigkill_mid_run(tmp_path, args, racing)
    assert len(killed) >= 5, f"the spare slots' nodes were not made: {sorted(killed)}"
    assert_cleanup_removes(killed)
