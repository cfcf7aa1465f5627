"""The pytest plugin: `assert_linearizable` on ops, files and runs, and the `linearizability`
fixture used from a test suite of its own (a pytest run in a subprocess, as a user's would)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.pytest_plugin import assert_linearizable

pytest_plugins = ["pytester"]


def op(i: int, type_: str, process: int, f: str, value: Any) -> dict[str, Any]:
    return {"index": i, "time": i * 1_000_000, "type": type_, "process": process, "f": f,
            "key": "k0", "value": value}  # fmt: skip


def ops_with_a_stale_read() -> list[dict[str, Any]]:
    """Write 1, then write 2, both done; a later read still returns 1."""
    return [
        op(0, "invoke", 0, "write", 1),
        op(1, "ok", 0, "write", 1),
        op(2, "invoke", 1, "write", 2),
        op(3, "ok", 1, "write", 2),
        op(4, "invoke", 2, "read", None),
        op(5, "ok", 2, "read", 1),
    ]


def test_a_linearizable_history_passes() -> None:
    ops = ops_with_a_stale_read()
    ops[5] = op(5, "ok", 2, "read", 2)
    assert_linearizable(ops)


def test_a_stale_read_fails_with_the_checkers_explanation() -> None:
    with pytest.raises(AssertionError) as caught:
        assert_linearizable(ops_with_a_stale_read())
    message = str(caught.value)
    assert message.startswith("not linearizable")
    assert "stale read" in message
    assert "cannot be linearized" in message  # the op that cannot be placed
    assert "smallest failing window" in message
    assert "1 certainly stale reads" in message
    assert "key k0: stale read" in message and "p2 read k0 1 -> ok" in message
    assert "['k0']" not in message


def test_a_recorded_history_file_and_a_run_directory_are_checked(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps(o) + "\n" for o in ops_with_a_stale_read()))
    with pytest.raises(AssertionError, match="stale read") as caught:
        assert_linearizable(history)
    assert str(history) in str(caught.value)
    with pytest.raises(AssertionError, match="stale read"):
        assert_linearizable(tmp_path)  # a run directory without results.json
    (tmp_path / "results.json").write_text(json.dumps({"valid": True}))
    assert_linearizable(tmp_path)


def test_an_unreadable_history_fails_and_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "history.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(AssertionError, match="cannot read history"):
        assert_linearizable(bad)


def test_unknown_fails_unless_allowed() -> None:
    undecided = {"valid": "unknown", "checker": {"reason": "time limit of 1 s reached"}}
    with pytest.raises(AssertionError, match="time limit of 1 s reached"):
        assert_linearizable(undecided)
    assert_linearizable(undecided, allow_unknown=True)


def test_bad_fixture_options_fail_the_test_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_mode(linearizability):
            linearizability(read_mode="psychic")

        def test_option(linearizability):
            linearizability(colour="blue")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*no read mode 'psychic'*", "*unknown harness option(s): colour*"])


SUITE = """
from harness.pytest_plugin import assert_linearizable


def test_readindex_reads_survive_a_leader_partition(linearizability):
    outcome = linearizability(read_mode="readindex", nemesis="partition-leader", time_s=10, seed=3)
    assert_linearizable(outcome)


def test_local_reads_survive_a_leader_partition(linearizability):
    # A short run can miss the window; a few seeds make the finding dependable.
    for seed in (21, 22, 23):
        outcome = linearizability(
            read_mode="local", nemesis="partition-leader", time_s=12, concurrency=9, seed=seed
        )
        if outcome.valid is False:
            break
    assert_linearizable(outcome)
"""


@pytest.mark.root
@pytest.mark.timeout(400)
def test_a_suite_gates_on_linearizability_with_one_test_function(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    pytester.makepyfile(test_gate=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--harness-store", str(store))
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "test_local_reads_survive_a_leader_partition FAILED" in out or (
        "FAILED test_gate.py::test_local_reads_survive_a_leader_partition" in out
    )
    assert "AssertionError: not linearizable: " in out
    assert "read mode local" in out and "nemesis partition-leader" in out
    assert "cannot be linearized" in out and "smallest failing window" in out
    assert any(name in out for name in ("stale read", "lost write", "other"))
    # The recorded histories give the same verdicts again.
    (safe,) = (store / "raftkv-kv-readindex-partition-leader").glob("2*")
    assert_linearizable(safe / "history.jsonl")
    unsafe = sorted((store / "raftkv-kv-local-partition-leader").glob("2*"))[-1]
    with pytest.raises(AssertionError, match="not linearizable"):
        assert_linearizable(unsafe / "history.jsonl")


@pytest.mark.root
@pytest.mark.timeout(200)
def test_a_pytest_timeout_mid_run_tears_the_cluster_down(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    pytester.makepyfile(
        """
        def test_long(linearizability):
            linearizability(read_mode="readindex", time_s=120, seed=1)
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--timeout", "8", "--harness-store", str(store)
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Timeout*"])
    (log,) = store.glob("*/2*/harness.log")
    run_id = re.search(r"\(id ([0-9a-f]{4})\)", log.read_text())
    assert run_id is not None, log.read_text()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    assert f"hns-{run_id.group(1)}-" not in listed.stdout, "the run's namespaces survived"
    assert not (log.parent / "results.json").exists(), "the run went on to the end"
    assert (log.parent / "history.jsonl").stat().st_size > 0
