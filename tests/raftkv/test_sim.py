"""Many-seed safety runs of the simulator, and proof that each deliberate bug is caught.

RAFTKV_SIM_SEED_SCALE (default 1) multiplies the number of seeds of every sweep.
"""

from __future__ import annotations

import os
import time

import pytest

from raftkv.core import BUGS
from raftkv.sim import (
    PROFILES,
    InvariantViolation,
    SimOptions,
    Simulation,
    main,
    run_chaos,
)

SCALE = int(os.environ.get("RAFTKV_SIM_SEED_SCALE", "1"))

# Seeds per profile: sized so the whole file runs in about two minutes on one core.
SWEEPS = {
    "reliable": 150,
    "small": 800,
    "faults": 400,
    "snapshots": 600,
    "churn": 250,
    "figure8": 600,
    "amnesia": 400,
    "membership": 300,
    "membership-churn": 300,
}


def test_every_profile_is_swept() -> None:
    assert set(SWEEPS) == set(PROFILES)


def sweep(profile: str, seeds: range, bugs: frozenset[str] = frozenset()) -> list[str]:
    failures = []
    for seed in seeds:
        try:
            run_chaos(seed, profile, bugs=bugs)
        except InvariantViolation as exc:
            failures.append(str(exc))
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("profile", sorted(SWEEPS))
def test_many_seeds_keep_every_invariant(profile: str) -> None:
    seeds = range(SWEEPS[profile] * SCALE)
    start = time.perf_counter()
    failures = sweep(profile, seeds)
    elapsed_s = time.perf_counter() - start
    print(f"{profile}: {len(seeds)} seeds in {elapsed_s:.1f} s")
    assert not failures, f"{len(failures)} of {len(seeds)} seeds failed; first:\n{failures[0]}"


# The profile whose faults make each bug bite, and how many seeds to search.
BUG_HUNTS = {
    "commit-old-term": ("figure8", 200),
    "skip-log-check": ("small", 100),
    "stale-leader-read": ("small", 200),
    "vote-amnesia": ("amnesia", 300),
    "no-fsync": ("small", 100),
    "conf-two-in-flight": ("membership", 50),
}


def test_every_bug_has_a_hunt() -> None:
    assert set(BUG_HUNTS) == BUGS


def test_the_core_s_bugs_are_the_only_list_of_bugs() -> None:
    import raftkv.node
    from harness.targets.raftkv import RaftkvTarget
    from raftkv.cli import serve

    (bug_option,) = [p for p in serve.params if p.name == "bugs"]
    assert set(bug_option.type.choices) == BUGS  # type: ignore[attr-defined]
    assert set(RaftkvTarget.bugs) == BUGS
    assert getattr(raftkv.node, "BUGS", BUGS) is BUGS, "a second definition drifts"


@pytest.mark.parametrize("bug", sorted(BUG_HUNTS))
def test_each_bug_is_caught_and_its_seed_passes_without_it(bug: str) -> None:
    profile, bound = BUG_HUNTS[bug]
    caught: list[tuple[int, str]] = []
    for seed in range(bound):
        try:
            run_chaos(seed, profile, bugs={bug})
        except InvariantViolation as exc:
            caught.append((seed, str(exc)))
            if len(caught) == 2:
                break
    assert caught, f"{bug}: no seed in range({bound}) of profile {profile!r} broke an invariant"
    for seed, message in caught:
        assert f"seed={seed}" in message and f"--bug {bug}" in message
        run_chaos(seed, profile)  # the same schedule without the bug keeps every invariant


def test_same_seed_same_run() -> None:
    first = run_chaos(11, "faults")
    assert run_chaos(11, "faults") == first
    assert run_chaos(12, "faults") != first


def test_violation_names_seed_and_replay_command(capsys: pytest.CaptureFixture[str]) -> None:
    hunt_seed = next(
        seed for seed in range(200) if sweep("small", range(seed, seed + 1), {"skip-log-check"})
    )
    assert main(["--profile", "small", "--seed", str(hunt_seed), "--bug", "skip-log-check"]) == 1
    out = capsys.readouterr().out
    expected = f"python -m raftkv.sim --profile small --seed {hunt_seed} --bug skip-log-check"
    assert expected in out
    assert main(["--profile", "small", "--seed", str(hunt_seed)]) == 0


def test_chaos_runs_exercise_the_protocol() -> None:
    report = run_chaos(3, "snapshots")
    assert report.stats.get("SNAPSHOT", 0) >= 1 and report.stats["snapshots"] >= 5
    report = run_chaos(3, "churn")
    assert report.stats["crashes"] >= 3 and report.leaders >= 2 and report.reads_ok >= 5
    assert report.stats.get("dropped", 0) > 0 and report.stats.get("PRE_VOTE", 0) > 0


def test_crash_keeps_only_what_was_persisted() -> None:
    sim = Simulation(5, 3, SimOptions())
    assert sim.run_until(lambda: sim.leader() is not None, 60)
    for _ in range(5):
        sim.propose()
        sim.run(1)
    sim.run(3)
    follower = next(n for n in sim.ids if n != sim.leader())
    hard_state, _, entries = sim.disk(follower)
    assert len(entries) == sim.core(follower).last_index
    sim.crash(follower)
    sim.restart(follower)
    assert sim.core(follower).term == hard_state.term
    assert sim.core(follower).last_index == len(entries)


def test_no_fsync_crash_loses_recent_batches() -> None:
    sim = Simulation(5, 3, SimOptions(bugs=frozenset({"no-fsync"}), unsynced_ready_rounds=3))
    assert sim.run_until(lambda: sim.leader() is not None, 60)
    for _ in range(5):
        sim.propose()
        sim.run(1)
    follower = next(n for n in sim.ids if n != sim.leader())
    in_memory = sim.core(follower).last_index
    sim.crash(follower)
    sim.restart(follower)
    assert sim.core(follower).last_index < in_memory
