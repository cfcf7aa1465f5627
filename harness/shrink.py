"""Shrinking a failing sim run: the smallest run, found by trying, that still fails.

A sim run is its options and seed, and its faults are the events its history records. The
shrinker replays those events as a plan (harness.simrun.SimRun's `plan`) and tries, in
turn: a shorter run (halving the time while it still fails), then each fault without one
of its start/stop pairs (a pair that the failure does not need goes), then fewer clients
(a concurrency one lower, while it still fails). Every try is a whole sim run, checked by
the checker: "still fails" means INVALID. What is left is the smallest failing run found,
not the smallest there is.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.options import RunOptions

__all__ = ["Shrunk", "fault_pairs", "fault_plan", "shrink_run"]

NS = 1_000_000_000
MIN_TIME_S = 1.0


@dataclass
class Shrunk:
    """The smallest failing run found: its options, plan, run directory, and how many
    client ops and fault pairs it kept (against the original's)."""

    opts: RunOptions
    plan: list[dict[str, Any]]
    run_dir: Path
    ops: int
    faults: int
    tries: int


def fault_plan(history: Path) -> list[dict[str, Any]]:
    """The fault events (completed starts and stops, not the final heal) of a history."""
    plan = []
    for line in history.read_text(encoding="utf-8").splitlines():
        op = json.loads(line)
        if op.get("process") != "nemesis" or op.get("type") != "info":
            continue
        if op.get("fault") == "heal-all":
            continue
        plan.append({k: op.get(k) for k in ("time", "f", "fault", "value")})
    return plan


def fault_pairs(plan: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The plan as start/stop pairs (a start left open at the end is a pair of one)."""
    pairs: list[list[dict[str, Any]]] = []
    for event in plan:
        if event["f"] == "start" or not pairs or len(pairs[-1]) == 2:
            pairs.append([event])
        else:
            pairs[-1].append(event)
    return pairs


def shrink_run(opts: RunOptions, plan: list[dict[str, Any]], out: Path,
               say: Callable[[str], None] = lambda line: None) -> Shrunk:  # fmt: skip
    """Shrink the failing run (`opts`, `plan`); the smallest failing run found is written
    to `out`. Raises ValueError if the run does not fail when replayed."""
    from harness.simrun import run_sim  # raftkv's simulation only when used

    tries = 0
    scratch = Path(tempfile.mkdtemp(prefix="harness-shrink-"))

    def fails(candidate: RunOptions, events: list[dict[str, Any]]) -> bool:
        nonlocal tries
        tries += 1
        run_dir = scratch / str(tries)
        run_dir.mkdir()
        valid, _, _ = run_sim(candidate, run_dir, events)
        return valid is False

    try:
        if not fails(opts, plan):
            raise ValueError("the run does not fail when its faults are replayed")
        while opts.time_s / 2 >= MIN_TIME_S:
            shorter = dataclasses.replace(opts, time_s=opts.time_s / 2)
            kept = [e for e in plan if e["time"] < shorter.time_s * NS]
            if not fails(shorter, kept):
                break
            opts, plan = shorter, kept
            say(f"time {opts.time_s:g} s: still fails")
        pairs = fault_pairs(plan)
        i = 0
        while i < len(pairs):
            fewer = pairs[:i] + pairs[i + 1 :]
            if fails(opts, [e for pair in fewer for e in pair]):
                pairs = fewer
                say(f"{len(pairs)} faults: still fails")
            else:
                i += 1
        plan = [e for pair in pairs for e in pair]
        while opts.concurrency > 1:
            fewer_clients = dataclasses.replace(opts, concurrency=opts.concurrency - 1)
            if not fails(fewer_clients, plan):
                break
            opts = fewer_clients
            say(f"{opts.concurrency} clients: still fails")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        run_sim(opts, out, plan)
        ops = sum(1 for line in (out / "history.jsonl").read_text().splitlines()
                  if '"process":"nemesis"' not in line) // 2  # fmt: skip
        (out / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
        return Shrunk(opts, plan, out, ops, len(fault_pairs(plan)), tries)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
