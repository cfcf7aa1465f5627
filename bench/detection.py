"""Seeds until each planted bug is first caught on the sim backend, as a Markdown table.

For each planted bug (raftkv.core.BUGS) and each nemesis of CASES, runs
`harness hunt --backend sim` (seeds 1, 2, ... up to `--cap`, in `--jobs` processes) and
reports the seed that first gave the checker an anomaly, how many seeds that took, and
the wall time; `-` when none did within the cap. Sim only: nothing here touches a network
namespace, a container or a host.

    .venv/bin/python bench/detection.py [--cap 200] [--jobs 2] [--bug X ...]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HARNESS = Path(sys.executable).with_name("harness")
FOUND = re.compile(r"anomaly at seed (\d+) \(after (\d+) runs")
TIMEOUT_S = 3600


@dataclass(frozen=True)
class Case:
    """One row: a planted bug and the hunt options (beyond the bug and `--time 10`)."""

    bug: str
    options: str

    @property
    def args(self) -> list[str]:
        return shlex.split(self.options)


CASES = (
    Case("no-fsync", "--nemesis power-loss --fault-targets all"),
    Case("no-fsync", "--nemesis all"),
    Case("stale-leader-read", "--read-mode lease --nemesis partition-leader"),
    Case("stale-leader-read", "--read-mode lease --nemesis all"),
    Case(
        "commit-old-term",
        "--nemesis partition-leader,kill --fault-targets leader --nemesis-interval 0.1",
    ),
    Case("commit-old-term", "--nemesis all"),
    Case("vote-amnesia", "--nemesis kill,partition-one --nemesis-interval 0.1"),
    Case("vote-amnesia", "--nemesis all"),
    Case("skip-log-check", "--nemesis partition-one+kill --nemesis-interval 0.5"),
    Case("skip-log-check", "--nemesis all"),
)


@dataclass(frozen=True)
class Row:
    case: Case
    seed: int | None
    seeds: int
    wall_s: float


def hunt(case: Case, cap: int, jobs: int, store: Path) -> Row:
    argv = [str(HARNESS), "hunt", "--backend", "sim", "--bug", case.bug, "--time", "10",
            *case.args, "--runs", str(cap), "--jobs", str(jobs), "--store", str(store)]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    wall_s = time.monotonic() - start
    match = FOUND.search(proc.stdout)
    if proc.returncode == 1 and match:
        return Row(case, int(match.group(1)), int(match.group(2)), wall_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return Row(case, None, cap, wall_s)


def table(rows: list[Row], cap: int) -> str:
    lines = [
        "| bug | nemesis (with `--time 10`) | first seed caught | seeds run | wall (s) |",
        "|-----|----------------------------|-------------------|-----------|----------|",
    ]
    for row in rows:
        seed = str(row.seed) if row.seed is not None else f"- (none in {cap})"
        lines.append(
            f"| {row.case.bug} | `{row.case.options}` | {seed} | {row.seeds} | {row.wall_s:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=200, help="seeds per row at most")
    parser.add_argument("--jobs", type=int, default=2, help="hunt's processes")
    parser.add_argument("--bug", action="append", default=[], help="only these bugs")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.bug or c.bug in args.bug]
    rows = []
    with tempfile.TemporaryDirectory(prefix="detection-") as tmp:
        for case in cases:
            rows.append(hunt(case, args.cap, args.jobs, Path(tmp) / "store"))
            print(f"{case.bug} {case.options}: {rows[-1]}", file=sys.stderr, flush=True)
    print(table(rows, args.cap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
