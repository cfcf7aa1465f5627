"""`harness compare-reads`: the table's figures, its page, its exit code, and real runs."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.compare_cmd import (
    CHART_MEASURES,
    ModeRow,
    chart_view,
    compare_command,
    compare_exit_code,
    mode_row,
    render_html,
    render_text,
    write_compare_junit,
)
from harness.history import Op
from harness.options import RunOptions
from harness.targets import RaftkvTarget

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, timeout: float = 500) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def op(i: int, t_ms: float, type_: str, process: Any, f: str, **kw: Any) -> Op:
    record = {"index": i, "time": int(t_ms * 1e6), "type": type_, "process": process, "f": f}
    return Op.from_json({**record, **kw})


def history() -> list[Op]:
    """Reads taking 1, 2, 3 and 10 ms, a write, a failed cas, a timed-out read, a fault."""
    h = [
        op(0, 0, "invoke", 0, "write", key="k0", value=1),
        op(1, 4, "ok", 0, "write", key="k0", value=1),
        op(2, 5, "info", "nemesis", "start", value="isolated"),
    ]
    t = 10.0
    for took in (3, 1, 10, 2):
        h += [op(len(h), t, "invoke", 1, "read", key="k0", value=None)]
        h += [op(len(h), t + took, "ok", 1, "read", key="k0", value=1)]
        t += 20
    h += [op(len(h), t, "invoke", 2, "cas", key="k0", value=[5, 6])]
    h += [op(len(h), t + 1, "fail", 2, "cas", key="k0", value=[5, 6])]
    h += [op(len(h), t, "invoke", 3, "read", key="k0", value=None)]
    h += [op(len(h), t + 500, "info", 3, "read", key="k0", value=None)]
    return h


def results(valid: Any = True) -> dict[str, Any]:
    counts = {"all": {"ok": 5, "fail": 1, "info": 1}}
    return {
        "valid": valid,
        "stale_reads": 2,
        "max_staleness_ms": 12.5,
        "counts": counts,
        "options": {"time_s": 2.0},
        "run_dir": "/nowhere/run",
        "checker": {"anomaly": {"name": "stale read"}} if valid is False else {},
    }


def test_a_row_pairs_reads_for_latency_and_counts_ok_ops_for_rate_and_availability() -> None:
    row = mode_row("local", False, results(False), history())
    assert (row.read_p50_ms, row.read_p99_ms) == (2.0, 10.0)  # the timed-out read is not one
    assert row.ops_per_s == 2.5  # 5 ok ops in 2 s
    assert row.availability == round(6 / 7, 4)  # ok and fail are answers; info is not
    assert (row.valid, row.stale_reads, row.max_staleness_ms) == (False, 2, 12.5)
    assert row.anomaly == "stale read"
    assert set(row.to_json()) >= {
        "mode", "valid", "stale_reads", "max_staleness_ms", "read_p50_ms", "read_p99_ms",
        "ops_per_s", "availability",
    }  # fmt: skip


def test_a_run_without_reads_or_ops_has_no_latency_and_no_availability() -> None:
    empty = {**results(), "counts": {}}
    row = mode_row("log", True, empty, [])
    assert (row.read_p50_ms, row.read_p99_ms, row.availability) == (None, None, None)
    assert "-" in render_text([row]).splitlines()[2]


def _row(mode: str, meant: bool, valid: Any) -> ModeRow:
    return mode_row(mode, meant, results(valid), history())


def test_only_modes_meant_to_be_linearizable_decide_the_exit_code() -> None:
    safe_ok, unsafe_bad = _row("readindex", True, True), _row("local", False, False)
    assert compare_exit_code([safe_ok, unsafe_bad]) == 0
    assert compare_exit_code([safe_ok, _row("lease", True, "unknown"), unsafe_bad]) == 2
    assert compare_exit_code([_row("lease", True, "unknown"), _row("log", True, False)]) == 1
    assert RaftkvTarget.linearizable_read_modes == ("log", "readindex", "lease")


def test_junit_fails_only_modes_meant_to_be_linearizable(tmp_path: Path) -> None:
    rows = [_row("readindex", True, False), _row("local", False, False), _row("log", True, True)]
    path = tmp_path / "ci" / "junit.xml"
    write_compare_junit(path, RunOptions(seed=5, nemesis="partition-leader"), rows)
    suite = ET.parse(path).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "0")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["linearizable[readindex]"].find("failure") is not None
    local = cases["linearizable[local]"]
    assert local.find("failure") is None
    assert "unsafe read mode (expected)" in (local.findtext("system-out") or "")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["seed"] == "5" and props["nemesis"] == "partition-leader"


def test_compare_reads_takes_the_options_of_harness_test_but_not_the_per_run_ones() -> None:
    names = {p.name for p in compare_command.params}
    assert {"nemesis", "seed", "backend", "junit_path", "modes", "as_json"} <= names
    assert not names & {"read_mode", "test_count", "leave_running"}


def test_the_page_escapes_what_histories_and_modes_carry(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    row = ModeRow(evil, False, False, 1, 1.0, 1.0, 2.0, 3.0, 0.5, evil, str(tmp_path / "r"))
    page = render_html([row], f"title {evil}", {"nemesis": evil}, tmp_path)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="r/results.json"' in page


def test_the_charts_put_each_mode_at_its_read_latency_and_staleness(tmp_path: Path) -> None:
    def row(mode: str, stale: int, staleness: float, p50: float | None) -> ModeRow:
        p99 = None if p50 is None else 2 * p50
        return ModeRow(mode, stale == 0, stale == 0, stale, staleness, p50, p99, 1.0, 1.0, None,
                       str(tmp_path / mode))  # fmt: skip

    rows = [row("log", 0, 0.0, 4.0), row("local", 5, 150.0, 1.0), row("follower", 500, 370.0, 0.5),
            row("unread", 0, 0.0, None)]  # fmt: skip
    charts = chart_view(rows)
    assert [c["field"] for c in charts] == [field for field, _ in CHART_MEASURES]
    for chart in charts:
        points = {p["mode"]: p for p in chart["points"]}
        assert list(points) == ["log", "local", "follower"]  # no reads, no latency: left out
        # Further right the slower the median read, a whisker out to p99; higher the staler.
        assert points["follower"]["cx"] < points["local"]["cx"] < points["log"]["cx"]
        assert all(p["x99"] > p["cx"] for p in points.values())
        assert points["follower"]["cy"] < points["local"]["cy"] < points["log"]["cy"]
        assert chart["x_ticks"][-1][0] >= points["log"]["x99"]  # the axis reaches p99
        assert [t for _, t in chart["x_ticks"]] == ["0", "2", "4", "6", "8"]
    assert [t for _, t in charts[0]["y_ticks"]] == ["0", "200", "400", "600"]
    page = render_html(rows, "t", {}, tmp_path)
    assert page.count('<svg class="chart"') == 2 and "<script" not in page
    assert page.count('<g class="point" data-mode="follower">') == 2
    assert "follower: 500 stale reads, read p50 0.50 ms, p99 1.00 ms" in page


def test_a_comparison_without_reads_draws_no_chart(tmp_path: Path) -> None:
    row = ModeRow("log", True, True, 0, 0.0, None, None, 0.0, None, None, str(tmp_path / "r"))
    page = render_html([row], "t", {}, tmp_path)
    assert 'class="chart"' not in page and "<table" in page


def test_compare_reads_on_the_sim_backend_writes_a_page_with_its_charts(tmp_path: Path) -> None:
    proc = harness("compare-reads", "--backend", "sim", "--modes", "lease,follower", "--time",
                   "5", "--seed", "3", "--store", str(tmp_path), "--json", timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    page = Path(report["html"]).read_text()
    for mode in ("lease", "follower"):
        assert page.count(f'<g class="point" data-mode="{mode}">') == 2, mode


def test_bad_modes_are_usage_errors_that_leave_nothing(tmp_path: Path) -> None:
    for modes, words in (("log,psychic", "psychic"), ("log,log", "twice"), (" , ", "at least")):
        proc = harness("compare-reads", "--modes", modes, "--store", str(tmp_path), timeout=60)
        assert proc.returncode == 254, (modes, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr, (modes, proc.stderr)
    proc = harness("compare-reads", "--target", "http", "--store", str(tmp_path), timeout=60)
    assert proc.returncode == 254 and "no read modes" in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir()), "a rejected comparison created files"


@pytest.mark.root
@pytest.mark.timeout(700)
def test_every_read_mode_under_a_leader_partition_shows_which_modes_serve_stale_reads(
    tmp_path: Path,
) -> None:
    proc = harness(
        "compare-reads",
        "--backend", "netns",
        "--nemesis", "partition-leader",
        "--nemesis-interval", "1",
        "--op-timeout", "1",
        "--time", "6",
        "--concurrency", "9",
        "--seed", "7",
        "--store", str(tmp_path),
        "--no-live",
        "--json",
        "--junit", str(tmp_path / "junit.xml"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    rows = {row["mode"]: row for row in report["modes"]}
    assert list(rows) == ["log", "readindex", "lease", "local", "follower"]
    for mode in ("log", "readindex", "lease"):
        assert rows[mode]["valid"] is True, rows[mode]
        assert rows[mode]["stale_reads"] == 0, rows[mode]
        assert rows[mode]["read_p50_ms"] is not None and rows[mode]["ops_per_s"] > 0
    assert rows["follower"]["stale_reads"] > 0 and rows["follower"]["valid"] is False
    assert rows["local"]["stale_reads"] + rows["follower"]["stale_reads"] > 0
    for row in rows.values():
        run = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        assert run["seed"] == 7 and run["options"]["read_mode"] == row["mode"]
        kinds = {op["fault"] for op in run["nemesis_schedule"] if op["f"] == "start"}
        assert kinds == {"partition-leader"}
    page = Path(report["html"]).read_text()
    assert page.count("<tr class=") == 5 and 'data-mode="follower"' in page
    junit = (Path(report["html"]).parent / "junit.xml").read_text()
    assert 'failures="0"' in junit and "linearizable[readindex]" in junit
    assert "unsafe read mode (expected)" in junit
    assert ET.parse(tmp_path / "junit.xml").getroot().get("tests") == "5"
    assert "availability" in proc.stderr  # the table, on stderr beside --json
