"""What a fault finds and what it costs: runs `harness test` with one nemesis a few times
and prints, per run, the verdict and how long the fault took to inject (a start's invoke
to its record) and to heal (a stop's), from the run's history.

    .venv/bin/python bench/fault_bench.py --nemesis power-loss --bug no-fsync --runs 5
    .venv/bin/python bench/fault_bench.py --nemesis power-loss --target etcd \
        --fault-targets all -- --power-loss-metadata journaled

Options after `--` go to `harness test` as they are. Seeds are 1..runs, so a row repeats
with the same command. Ends with how many runs were invalid ("caught").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.analysis import quantile


def fault_times_ms(history: Path) -> dict[str, list[float]]:
    """Milliseconds from each nemesis invoke to its completion, by "start" and "stop"."""
    times: dict[str, list[float]] = {"start": [], "stop": []}
    invoked: dict[str, int] = {}
    for line in history.read_text(encoding="utf-8").splitlines():
        op = json.loads(line)
        if op.get("process") != "nemesis" or op.get("fault") == "heal-all":
            continue
        if op["type"] == "invoke":
            invoked[op["f"]] = op["time"]
        elif op["f"] in invoked:
            times[op["f"]].append((op["time"] - invoked.pop(op["f"])) / 1e6)
    return times


def one_run(args: argparse.Namespace, seed: int, store: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "harness.cli", "test", "--backend", args.backend,
            "--target", args.target, "--nemesis", args.nemesis, "--time", str(args.time),
            "--nemesis-interval", str(args.interval), "--seed", str(seed),
            "--store", str(store), "--no-live", *args.rest]  # fmt: skip
    for bug in args.bug:
        argv += ["--bug", bug]
    if args.fault_targets:
        argv += ["--fault-targets", args.fault_targets]
    began = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.time + 300)
    results_file = store / "latest" / "results.json"
    if not results_file.exists():
        raise SystemExit(f"seed {seed}: no results (exit {proc.returncode}): {proc.stderr}")
    results = json.loads(results_file.read_text())
    times = fault_times_ms(store / "latest" / "history.jsonl")
    return {
        "seed": seed,
        "valid": results["valid"],
        "wall_s": round(time.monotonic() - began, 1),
        "inject_ms": round(quantile(times["start"], 0.5)) if times["start"] else None,
        "heal_ms": round(quantile(times["stop"], 0.5)) if times["stop"] else None,
        "faults": len(times["start"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="netns")
    parser.add_argument("--target", default="raftkv")
    parser.add_argument("--nemesis", required=True)
    parser.add_argument("--bug", action="append", default=[])
    parser.add_argument("--fault-targets")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--time", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("rest", nargs="*", help="more `harness test` options, after --")
    args = parser.parse_args()
    caught = 0
    print("seed  valid  faults  inject p50 ms  heal p50 ms  wall s")
    with tempfile.TemporaryDirectory(prefix="fault-bench-") as tmp:
        for seed in range(1, args.runs + 1):
            row = one_run(args, seed, Path(tmp) / str(seed))
            caught += row["valid"] is False
            print(f"{row['seed']:<5} {row['valid']!s:<6} {row['faults']:<7} "
                  f"{row['inject_ms']!s:<14} {row['heal_ms']!s:<12} {row['wall_s']}")  # fmt: skip
    print(f"caught (invalid) in {caught} of {args.runs} runs")


if __name__ == "__main__":
    main()
