"""How soon each planted bug is caught, on the sim backend and on netns, as a Markdown table.

For each planted bug (raftkv.core.BUGS) and each set of options of CASES:

- sim: `harness hunt --backend sim --time 10` from seed 1, up to `--cap` seeds in `--jobs`
  processes: the seed that first made the run INVALID (the checker's anomaly, or a node
  that crashed on its own), how many seeds that took, and the wall time; `-` when none
  did within the cap.
- netns (with `--netns-cap N`, N > 0): `harness test --backend netns --time 20` with seeds
  1, 2, ... up to N tries: the try that first came out INVALID, and the wall time; `n/a`
  where the options name a fault only the simulation can run. Needs root and the netns
  backend's tools; leaves nothing behind (each run cleans up after itself).

    .venv/bin/python bench/detection.py [--cap 200] [--jobs 2] [--netns-cap 0] [--bug X ...]
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
NETNS_TRY_TIMEOUT_S = 300
SIM_ONLY = ("election-crash",)


@dataclass(frozen=True)
class Case:
    """One row: a planted bug and the options (beyond the bug and the time)."""

    bug: str
    options: str

    @property
    def args(self) -> list[str]:
        return shlex.split(self.options)

    @property
    def sim_only(self) -> bool:
        return any(kind in self.options for kind in SIM_ONLY)


CASES = (
    Case("no-fsync", "--nemesis power-loss --fault-targets all"),
    Case("no-fsync", "--nemesis all"),
    Case("stale-leader-read", "--read-mode lease --nemesis partition-leader"),
    Case("stale-leader-read", "--read-mode lease --nemesis all"),
    Case("commit-old-term", "--nemesis election-crash --raft-option max-append-entries=1"),
    Case("commit-old-term", "--nemesis all --raft-option max-append-entries=1"),
    Case("vote-amnesia", "--nemesis election-crash --raft-option check-quorum=off"),
    Case("vote-amnesia", "--nemesis election-crash"),
    Case("vote-amnesia", "--nemesis all --raft-option check-quorum=off"),
    Case("skip-log-check", "--nemesis partition-one+kill --nemesis-interval 0.5"),
    Case("skip-log-check", "--nemesis all"),
    Case("conf-two-in-flight", "--nemesis member-race --nemesis-interval 5"),
)


@dataclass(frozen=True)
class Found:
    """When a case was first caught: at `first` (None: not within the cap), after `tried`
    seeds or tries, in `wall_s` seconds; `None` for a case that cannot run there."""

    first: int | None
    tried: int
    wall_s: float


def hunt(case: Case, cap: int, jobs: int, store: Path) -> Found:
    argv = [str(HARNESS), "hunt", "--backend", "sim", "--bug", case.bug, "--time", "10",
            *case.args, "--runs", str(cap), "--jobs", str(jobs), "--store", str(store)]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    wall_s = time.monotonic() - start
    match = FOUND.search(proc.stdout)
    if proc.returncode == 1 and match:
        return Found(int(match.group(1)), int(match.group(2)), wall_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return Found(None, cap, wall_s)


def on_netns(case: Case, cap: int, store: Path) -> Found | None:
    """Tries of 20 s on netns, seeds 1.., until one is INVALID (exit 1) or `cap` tries."""
    if case.sim_only:
        return None
    start = time.monotonic()
    for seed in range(1, cap + 1):
        argv = [str(HARNESS), "test", "--backend", "netns", "--bug", case.bug, "--time", "20",
                *case.args, "--seed", str(seed), "--no-live", "--store", str(store)]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True,
                              timeout=NETNS_TRY_TIMEOUT_S, check=False)  # fmt: skip
        if proc.returncode == 1:
            return Found(seed, seed, time.monotonic() - start)
        if proc.returncode not in (0, 2):
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return Found(None, cap, time.monotonic() - start)


def _cell(found: Found | None, cap: int) -> str:
    if found is None:
        return "n/a"
    if found.first is None:
        return f"- (none in {cap}, {found.wall_s:.0f} s)"
    return f"{found.first} ({found.wall_s:.0f} s)"


def table(rows: list[tuple[Case, Found, Found | None]], cap: int, netns_cap: int) -> str:
    lines = [
        "| bug | options | sim: first seed caught (wall) | netns: first try of 20 s (wall) |",
        "|-----|---------|-------------------------------|---------------------------------|",
    ]
    for case, sim, netns in rows:
        netns_cell = _cell(netns, netns_cap) if netns_cap else "not run"
        lines.append(f"| {case.bug} | `{case.options}` | {_cell(sim, cap)} | {netns_cell} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=200, help="sim seeds per row at most")
    parser.add_argument("--jobs", type=int, default=2, help="hunt's processes")
    parser.add_argument("--netns-cap", type=int, default=0, help="netns tries per row (0: none)")
    parser.add_argument("--bug", action="append", default=[], help="only these bugs")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.bug or c.bug in args.bug]
    rows = []
    with tempfile.TemporaryDirectory(prefix="detection-") as tmp:
        for i, case in enumerate(cases):
            sim = hunt(case, args.cap, args.jobs, Path(tmp) / f"sim{i}")
            netns = (
                on_netns(case, args.netns_cap, Path(tmp) / f"netns{i}") if args.netns_cap else None
            )
            rows.append((case, sim, netns))
            print(f"{case.bug} {case.options}: sim {sim}, netns {netns}", file=sys.stderr,
                  flush=True)  # fmt: skip
    print(table(rows, args.cap, args.netns_cap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
