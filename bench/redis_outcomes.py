"""The README's Redis outcome table, from real runs (a script, not a test; needs root).

Runs `harness test --backend netns --target redis --workload set` once per setting below
(same seed and length), each in its own store under a temporary directory, and prints one
markdown row per setting: the verdict, ok / fail / info, and the acknowledged adds lost
(in no read of their key from some read on, the final reads after the heal included).

Usage: python bench/redis_outcomes.py [--time 30] [--seed 1] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / ".venv" / "bin" / "harness"

CUT = ["--nemesis", "partition-leader", "--nemesis-interval", "5"]
POWER = ["--nemesis", "power-loss", "--fault-targets", "all"]
CLOCK = ["--nemesis", "clock", "--nemesis-interval", "3"]
SETTINGS: dict[str, list[str]] = {
    "defaults": CUT,
    "min-replicas 1": [*CUT, "--redis-min-replicas", "1"],
    "wait 1": [*CUT, "--redis-wait", "1"],
    "wait 2": [*CUT, "--redis-wait", "2"],
    "appendfsync always": [*CUT, "--redis-appendfsync", "always"],
    "power-loss": POWER,
    "power-loss, appendfsync always": [*POWER, "--redis-appendfsync", "always"],
    "no faults, replica reads": ["--read-mode", "replica"],
    "clocks": ["--nemesis", "clock,clock-strobe", "--nemesis-interval", "3"],
    "clocks, all nodes": [*CLOCK, "--fault-targets", "all"],
    "cut and clocks": ["--nemesis", "partition-leader,clock", "--nemesis-interval", "5"],
}


def run(name: str, extra: list[str], time_s: float, seed: int, store: Path) -> str:
    argv = [
        str(HARNESS), "test", "--backend", "netns", "--target", "redis", "--workload", "set",
        "--time", str(time_s), "--seed", str(seed), "--store", str(store), "--no-live", *extra,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=time_s * 10 + 300)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    r = json.loads((store / "latest" / "results.json").read_text())
    c = r["counts"]["all"]
    verdict = "VALID" if r["valid"] is True else "INVALID" if r["valid"] is False else "UNKNOWN"
    sets = r["set"]
    figures = f"{c.get('ok', 0):,} / {c.get('fail', 0):,} / {c.get('info', 0):,}"
    acked = sum(1 for x in sets["lost"] if x["acknowledged"])
    lost = f"{acked:,} of {sets['acknowledged']:,} (+{len(sets['lost']) - acked:,})"
    names = sorted({a["name"] for a in r["checker"].get("anomalies", [])})
    return (
        f"| `{' '.join(extra) or '(no faults)'}` | {verdict} | {figures} | {lost} | "
        f"{sets['stale']:,} | {', '.join(names) or 'none'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=sorted(SETTINGS), action="append")
    args = parser.parse_args()
    print("| options | verdict | ok / fail / info | acknowledged adds lost (+ read, then lost) "
          "| stale elements | anomalies named |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or SETTINGS:
            store = Path(tmp) / name.replace(" ", "-")
            row = run(name, SETTINGS[name], args.time, args.seed, store)
            print(row, flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
