"""How many ops per second the harness drives and records.

Runs `harness test` on network namespaces against the `memory` target (no
system behind it: the harness alone) and against raftkv, and prints recorded
ops/s (every completed op: ok, fail or info) from each run's results.json.
Needs root.

    .venv/bin/python bench/harness_bench.py [--seconds 10] [--concurrency 6,20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(target: str, seconds: float, concurrency: int, store: Path) -> str:
    argv = [sys.executable, "-m", "harness.cli", "test", "--backend", "netns",
            "--target", target, "--time", str(seconds), "--concurrency", str(concurrency),
            "--seed", "1", "--store", str(store), "--no-live"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 300)
    if proc.returncode not in (0, 1, 2):
        return f"{target}: harness failed ({proc.returncode}): {proc.stderr[-500:]}"
    results = json.loads((store / "latest" / "results.json").read_text())
    counts = results["counts"]["all"]
    done = sum(counts.values())
    return (
        f"{target:8s} {concurrency:3d} clients: {done / seconds:8.0f} recorded ops/s "
        f"({counts.get('ok', 0)} ok, {counts.get('fail', 0)} fail, "
        f"{counts.get('info', 0)} info; check {results['checker']['elapsed_s']:.2f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", default="6,20")
    parser.add_argument("--targets", default="memory,raftkv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        for target in args.targets.split(","):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                print(run(target, args.seconds, concurrency, Path(tmp) / target), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
