"""report.html in a real headless Chromium: it draws without errors, marks the anomaly
and the faults, keeps history values as text, and stays bounded on 100,000 operations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cdp_browser import Browser
from report_runs import EVIL, make_run

from harness.cli import main

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.timeout(600),
]

COUNT = "document.querySelectorAll(%s).length"


def count(browser: Browser, selector: str) -> int:
    return int(browser.evaluate(COUNT % json.dumps(selector)))


def open_report(browser: Browser, run: Path) -> None:
    browser.open((run / "report.html").resolve().as_uri())
    assert browser.errors() == []


def check_drawn_invalid_report(browser: Browser) -> None:
    assert browser.evaluate("document.getElementById('verdict').dataset.verdict") == "invalid"
    assert count(browser, ".timeline path.anomaly-marker") >= 1
    assert count(browser, ".timeline rect.op.blocker") >= 1
    for chart in (".leader-chart", ".latency-chart", ".rate-chart", ".timeline-svg"):
        assert count(browser, f"{chart} rect.fault-band") >= 1, chart
    assert count(browser, ".leader-chart rect.leader-seg") >= 1


def test_an_invalid_report_draws_its_anomaly_and_faults_without_errors(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert main(["analyze", str(run)]) == 1
    with Browser() as browser:
        open_report(browser, run)
        check_drawn_invalid_report(browser)
        # The stale read: the write it saw and the newest completed write are marked.
        assert count(browser, ".timeline rect.op.saw") == 1
        assert count(browser, ".timeline rect.op.newest") == 1
        assert count(browser, ".timeline rect.window-band") == 1
        story = browser.evaluate("document.querySelector('.timeline .story').textContent")
        assert EVIL in story and "newer" in story
        # The value is text everywhere: no extra script element, no dialog, no error.
        assert count(browser, "script") == 2
        assert EVIL in browser.evaluate("document.body.textContent")
        for role in ("zoom-out", "zoom-in", "view-all", "view-window", "view-anomaly"):
            browser.evaluate(f"document.querySelector('[data-role={role}]').click()")
        browser.evaluate(
            "document.querySelector('.timeline .plot').dispatchEvent("
            "new WheelEvent('wheel', {deltaY: 100, bubbles: true, cancelable: true}))"
        )
        browser.evaluate("document.getElementById('jump-first').click()")
        assert count(browser, ".timeline path.anomaly-marker") >= 1
        assert browser.errors() == []


def test_a_report_of_100000_operations_draws_a_bounded_number_of_elements(
    tmp_path: Path,
) -> None:
    run = make_run(tmp_path, 100_000)
    assert main(["analyze", str(run)]) == 1
    with Browser() as browser:
        open_report(browser, run)
        check_drawn_invalid_report(browser)
        browser.evaluate("document.querySelector('[data-role=view-all]').click()")
        assert count(browser, ".timeline rect.op") <= 3_010
        shown = browser.evaluate("document.querySelector('.timeline .shown').textContent")
        assert shown.startswith("drawing 3000 of")
        # Latency points go to a canvas, not to 100,000 SVG nodes.
        assert count(browser, "svg *") < 20_000
        assert browser.errors() == []


def invalid_run(store: Path, timeout_s: float, *args: str) -> Path:
    """The run directory of `harness test ARGS` under leader partitions (seed 3), which
    must find the run invalid."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "harness.cli", "test", "--nemesis", "partition-leader",
            "--nemesis-interval", "1", "--seed", "3", "--store", str(store), "--no-live", *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return (store / "latest").resolve()


@pytest.mark.root
def test_the_report_of_a_real_invalid_run(tmp_path: Path) -> None:
    # A deposed leader that keeps serving lease reads: stale reads under a leader partition.
    run = invalid_run(
        tmp_path, 400, "--backend", "netns", "--read-mode", "lease", "--bug", "stale-leader-read",
        "--time", "8", "--junit", str(tmp_path / "junit.xml"), "--test-count", "3",
    )  # fmt: skip
    for name in ("report.html", "junit.xml", "leaders.jsonl", "results.json"):
        assert (run / name).is_file(), name
    samples = [json.loads(line) for line in (run / "leaders.jsonl").read_text().splitlines()]
    assert any(s["leader"] and isinstance(s["term"], int) for s in samples)
    junit = (tmp_path / "junit.xml").read_text()
    assert 'type="Nonlinearizable"' in junit and "report.html</system-out>" in junit
    with Browser() as browser:
        open_report(browser, run)
        check_drawn_invalid_report(browser)
        browser.screenshot(tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000


def add_member_changes(run: Path) -> None:
    """Member fault records in `run`'s history: n4 joins as a learner, is promoted, n2 leaves;
    results.json says the run had the member fault."""
    lines = (run / "history.jsonl").read_text().splitlines()
    end = json.loads(lines[-1])["time"]
    configs = [
        ("start", {"op": "add-learner", "node": "n4"}, ["n1", "n2", "n3"], ["n4"]),
        ("stop", {"op": "promote", "node": "n4"}, ["n1", "n2", "n3", "n4"], []),
        ("start", {"op": "remove", "node": "n2"}, ["n1", "n3", "n4"], []),
    ]
    for i, (f, change, voters, learners) in enumerate(configs, 1):
        value = {"changes": [{**change, "elapsed_ms": 5.0}], "voters": voters, "learners": learners}
        op = {"index": len(lines), "time": end * i // 4, "type": "info", "process": "nemesis",
              "f": f, "value": value, "fault": "member"}  # fmt: skip
        lines.append(json.dumps(op))
    ops = sorted((json.loads(line) for line in lines), key=lambda op: op["time"])
    for index, op in enumerate(ops):
        op["index"] = index
    (run / "history.jsonl").write_text("".join(json.dumps(op) + "\n" for op in ops))
    results = json.loads((run / "results.json").read_text())
    results["nemeses"] = ["member"]
    (run / "results.json").write_text(json.dumps(results))


def test_the_membership_track_draws_voters_and_learners_per_node(tmp_path: Path) -> None:
    run = make_run(tmp_path, stale=False)
    add_member_changes(run)
    assert main(["analyze", str(run)]) == 0
    changes = json.loads((run / "results.json").read_text())["membership"]["changes"]
    assert [(c["op"], c["node"]) for c in changes] == [
        ("add-learner", "n4"), ("promote", "n4"), ("remove", "n2"),
    ]  # fmt: skip
    with Browser() as browser:
        open_report(browser, run)
        assert count(browser, ".membership-chart rect.member-learner") == 1
        # n1 and n3 throughout, n2 until it left, n4 once promoted.
        assert count(browser, ".membership-chart rect.member-voter") == 4
        assert count(browser, ".membership-chart rect[data-node=n4]") == 2
        assert count(browser, ".leader-chart rect.leader-seg") >= 1
        browser.evaluate("window.dispatchEvent(new Event('resize'))")
        assert browser.errors() == []


# Every pair of labels above a timeline whose boxes intersect, as [text, text].
OVERLAPS = """(() => {
  const out = [];
  document.querySelectorAll('.timeline svg.timeline-svg').forEach(svg => {
    const boxes = Array.from(svg.querySelectorAll('text.mark-label, text.marker-label, '
      + 'text.fault-label')).map(t => [t.textContent, t.getBoundingClientRect()]);
    boxes.forEach(([s, a], i) => boxes.slice(i + 1).forEach(([u, b]) => {
      if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) {
        out.push([s, u]);
      }
    }));
  });
  return out;
})()"""


def test_the_labels_of_nearby_markers_never_overlap(tmp_path: Path) -> None:
    # A real invalid run: local reads served by a cut-off leader, in virtual time.
    run = invalid_run(tmp_path, 120, "--backend", "sim", "--read-mode", "local", "--time", "10")
    labels = "document.querySelectorAll('.timeline text.mark-label, .timeline text.marker-label')"
    for width in (1400, 700):
        with Browser(width=width) as browser:
            open_report(browser, run)
            assert int(browser.evaluate(labels + ".length")) >= 3
            assert browser.evaluate(OVERLAPS) == []
            browser.screenshot(tmp_path / f"labels-{width}.png")
            for role in ("zoom-out", "zoom-out", "view-window", "zoom-in", "view-all"):
                browser.evaluate(f"document.querySelector('[data-role={role}]').click()")
                assert browser.evaluate(OVERLAPS) == [], role
            assert browser.errors() == []
        assert (tmp_path / f"labels-{width}.png").stat().st_size > 10_000
