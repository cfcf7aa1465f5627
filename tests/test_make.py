"""What `make` prints: its setup steps say what they do and keep their tools' output in a log
(tools/quietly), shown only when a step fails; `make demo` runs leader partitions too, and
the node image's build steps take a short line each."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.image import _step_line

ROOT = Path(__file__).resolve().parent.parent
QUIETLY = ROOT / "tools" / "quietly"


def quietly(log: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUIETLY), str(log), *argv], capture_output=True, text=True, timeout=30, check=False
    )


def test_a_step_that_works_prints_nothing_and_keeps_its_output_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "build" / "setup.log"
    first = quietly(log, "sh", "-c", "echo some warning block >&2; echo done")
    second = quietly(log, "echo", "again")
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    text = log.read_text()
    assert "some warning block" in text and "done" in text
    assert text.index("done") < text.index("again")  # appended, step after step


def test_a_step_that_fails_shows_its_output_and_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    proc = quietly(log, "sh", "-c", "echo the reason it broke; exit 3")
    assert proc.returncode == 3 and proc.stdout == ""
    assert "failed (exit 3)" in proc.stderr and "the reason it broke" in proc.stderr
    assert str(log) in proc.stderr and "the reason it broke" in log.read_text()
    missing = quietly(log, "no-such-command-here")
    assert missing.returncode == 127 and "no-such-command-here" in missing.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_demo_runs_leader_partitions_and_points_at_the_report_and_compare_reads() -> None:
    # -n: print the recipes without running them; the setup steps are up to date or not.
    proc = subprocess.run(
        ["make", "-n", "--always-make", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "harness test --nemesis partition,partition-leader --time 60" in proc.stdout
    assert "report.html" in proc.stdout and "harness compare-reads" in proc.stdout
    # Every setup tool runs through quietly; nothing of pip's or apt's reaches the terminal.
    for tool in ("pip install", "-m venv", "build_native.py", "apt-get install"):
        lines = [line for line in proc.stdout.splitlines() if tool in line]
        assert lines and all("tools/quietly" in line for line in lines), (tool, lines)


def test_a_build_step_shows_as_one_short_line() -> None:
    step = (
        "Step 5/6 : RUN install -m 0755 /tmp/context/supervisor.sh /usr/local/bin/raftkv-node"
        "  && raftkv-node install /tmp/context/wheels  && rm -rf /tmp/context"
    )
    assert _step_line(step) == "Step 5/6 : RUN install -m 0755 /tmp/context/supervisor.sh /us..."
    assert _step_line("Step 2/6 : FROM ${BASE}") == "Step 2/6 : FROM ${BASE}"
