"""`--nemesis member` on the sim backend: the member fault's moves on raftkv's core in
virtual time, combined with partitions and kills, recorded as on real nodes, the same
bytes for the same seed, and a replayed schedule that makes its changes again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.options import RunOptions, validate
from harness.shrink import fault_plan
from harness.simrun import run_sim

HARNESS = [sys.executable, "-m", "harness.cli"]


def sim_run(tmp_path: Path, name: str, **given: Any) -> dict[str, Any]:
    opts = RunOptions(backend="sim", store=tmp_path / name, live=False, **given)
    validate(opts)
    _, _, results = run_sim(opts)
    return results


def healed(results: dict[str, Any]) -> dict[str, Any]:
    """The configuration the final heal settled."""
    heals = [e for e in results["nemesis_schedule"] if e["fault"] == "heal-all"]
    return dict(heals[-1]["value"]["members"])


def voter_counts(results: dict[str, Any]) -> set[int]:
    return {len(c["voters"]) for c in results["membership"]["changes"]}


def test_the_membership_moves_between_3_and_5_voters_under_partitions_and_kills(
    tmp_path: Path,
) -> None:
    # Seed 2: n4 and n5 join (learners, then promoted), members leave, n5 comes back as n5-2.
    results = sim_run(tmp_path, "run", nemesis="member,partition,kill", time_s=25.0,
                      nemesis_interval_s=1.0, seed=2)  # fmt: skip
    assert results["valid"] is True, results["checker"].get("anomaly")
    assert results["counts"]["all"]["ok"] > 5000
    membership = results["membership"]
    assert membership["initial"] == {"voters": ["n1", "n2", "n3"], "learners": []}
    changes = membership["changes"]
    assert {"add-learner", "promote", "remove"} <= {c["op"] for c in changes if "error" not in c}
    assert min(voter_counts(results)) >= 3 and max(voter_counts(results)) == 5, changes
    readded = [c for c in changes if c["op"] == "add-learner" and not c["fresh"]]
    assert readded and all(c["id"].startswith(f"{c['node']}-") for c in readded), changes
    final = healed(results)
    assert final["learners"] == [] and len(final["voters"]) >= 3
    report = (Path(results["run_dir"]) / "report.html").read_text()
    assert 'id="membership-chart"' in report and '"membership":{"nodes":["n1"' in report


def test_member_and_partition_together_stay_valid(tmp_path: Path) -> None:
    results = sim_run(tmp_path, "run", nemesis="member+partition", time_s=20.0,
                      nemesis_interval_s=1.0, seed=4)  # fmt: skip
    assert results["valid"] is True, results["checker"].get("anomaly")
    assert len([c for c in results["membership"]["changes"] if "error" not in c]) >= 4
    assert results["node_crashes"] == [] and results["recovery"]["unread"] == []


def test_the_same_seed_gives_the_same_bytes_with_membership_changes(tmp_path: Path) -> None:
    given: dict[str, Any] = {"nemesis": "member,partition", "time_s": 8.0,
                             "nemesis_interval_s": 0.5, "seed": 7}  # fmt: skip
    first, second = (sim_run(tmp_path, name, **given) for name in ("a", "b"))
    assert first["membership"]["changes"], first["membership"]
    histories = [(Path(r["run_dir"]) / "history.jsonl").read_bytes() for r in (first, second)]
    assert histories[0] == histories[1]


def test_a_replayed_schedule_makes_its_member_changes_again(tmp_path: Path) -> None:
    given: dict[str, Any] = {"nemesis": "member", "time_s": 8.0, "nemesis_interval_s": 0.5,
                             "seed": 3}  # fmt: skip
    recorded = sim_run(tmp_path, "recorded", **given)
    plan = fault_plan(Path(recorded["run_dir"]) / "history.jsonl")
    opts = RunOptions(backend="sim", store=tmp_path / "replayed", live=False, **given)
    (tmp_path / "replayed").mkdir()
    valid, _, replayed = run_sim(opts, tmp_path / "replayed", plan)
    assert valid is True
    # The heal reads the configuration the replayed changes left: the recorded one.
    final = [healed(r)["voters"] for r in (recorded, replayed)]
    assert final[0] == final[1] and len(final[0]) >= 3, final


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--max-nodes", "3"], "no node can join"),
        (["--target", "etcd"], "etcd's membership changes are not simulated yet"),
        (["--nemesis", "member-race", "--max-nodes", "4"], "needs --max-nodes 5 or more"),
    ],
)
def test_what_the_sim_cannot_change_is_refused(tmp_path: Path, args: list[str], why: str) -> None:
    proc = subprocess.run(
        [*HARNESS, "test", "--backend", "sim", "--nemesis", "member", *args,
         "--store", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert why in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_member_race_passes_a_correct_cluster_and_catches_two_changes_in_flight(
    tmp_path: Path,
) -> None:
    # The same seed and schedule: raftkv takes the first promotion, holds the second while
    # the first is pending, and neither can commit while the cut lasts: it stays
    # linearizable. With conf-two-in-flight both pass, the leader's side and the cut-off
    # voters are majorities of their own, and the history shows it.
    run = {"nemesis": "member-race", "time_s": 30.0, "seed": 1}
    correct = sim_run(tmp_path, "correct", **run)
    assert correct["valid"] is True, correct["checker"].get("anomaly")
    races = [
        e
        for e in correct["nemesis_schedule"]
        if e["fault"] == "member-race" and e["f"] == "start" and e["type"] == "info"
    ]
    assert len(races) == 2 and all(len(e["value"]["voters"]) == 3 for e in races), races
    assert all(len(e["value"]["learners"]) == 2 and e["value"]["cut"] for e in races)
    # One race is enough (a cluster split in two spins in backtracking once healed).
    buggy = sim_run(tmp_path, "buggy", bugs=("conf-two-in-flight",), nemesis="member-race",
                    time_s=12.0, nemesis_interval_s=5.0, seed=1)  # fmt: skip
    assert buggy["valid"] is False
    assert buggy["checker"]["anomalies"] and buggy["stale_reads"] > 0
    assert max(len(c["voters"]) for c in buggy["membership"]["changes"]) == 5
