"""Run directories made from known histories, for report, serve and JUnit tests.

`make_run` writes what `harness test` leaves behind (history.jsonl with client and
nemesis ops, leaders.jsonl, nodes/*/raftkv.log) for a history whose verdict is known:
ops follow each other in time (so every read must see the latest write), and with
`stale=True` one read of `k1` returns a value that had certainly been overwritten.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

EVIL = "<script>alert(1)</script>"
PROCESSES = 6


def history(n_ops: int, *, stale: bool, keys: int = 3, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    ops: list[dict[str, Any]] = []
    t = 1_000_000
    value = 0
    latest: dict[str, Any] = {}
    stale_at = n_ops // 2 if stale else -1

    def record(type_: str, process: Any, f: str, **fields: Any) -> None:
        ops.append({"index": len(ops), "time": t, "type": type_, "process": process, "f": f})
        ops[-1].update(fields)

    for i in range(n_ops):
        if i % max(1, n_ops // 6) == 0 and i:
            fault = "start" if (i // max(1, n_ops // 6)) % 2 else "stop"
            value_of = (
                {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"]} if fault == "start" else None
            )
            record("invoke", "nemesis", fault, value=None, fault="partition-leader")
            t += 1_000_000
            record("info", "nemesis", fault, value=value_of, fault="partition-leader")
        process = i % PROCESSES
        key = f"k{rng.randrange(keys)}"
        if i == stale_at:
            key = "k1"
            t = _write(record, t, process, key, EVIL)
            t = _write(record, t, (process + 1) % PROCESSES, key, "newer")
            record("invoke", (process + 2) % PROCESSES, "read", key=key, value=None)
            t += 2_000_000
            record("ok", (process + 2) % PROCESSES, "read", key=key, value=EVIL)
            t += 500_000
            latest[key] = "newer"
            continue
        if rng.random() < 0.5:
            value += 1
            t = _write(record, t, process, key, value)
            latest[key] = value
        else:
            record("invoke", process, "read", key=key, value=None)
            t += rng.randrange(200_000, 3_000_000)
            outcome = "fail" if rng.random() < 0.05 else "ok"
            record(outcome, process, "read", key=key, value=latest.get(key))
            t += 100_000
    return ops


def _write(record: Any, t: int, process: int, key: str, value: Any) -> int:
    record("invoke", process, "write", key=key, value=value)
    t += 1_500_000
    record("ok", process, "write", key=key, value=value)
    return t + 100_000


def make_run(
    store: Path, n_ops: int = 400, *, stale: bool = True, test: str = "raftkv-kv-local-x"
) -> Path:
    """A run directory under `store/<test>/<stamp>/` with a `latest` link; no results yet."""
    run = store / test / f"20260101T0000{len(list(store.glob('*/*'))):02d}.000"
    (run / "nodes" / "n1").mkdir(parents=True)
    ops = history(n_ops, stale=stale)
    with open(run / "history.jsonl", "w", encoding="utf-8") as out:
        for op in ops:
            out.write(json.dumps(op) + "\n")
    end = ops[-1]["time"]
    with open(run / "leaders.jsonl", "w", encoding="utf-8") as out:
        for i, t in enumerate(range(0, end, max(1, end // 10))):
            leader = None if i == 4 else f"n{1 + i // 5}"
            out.write(json.dumps({"time": t, "leader": leader, "term": 1 + i // 5}) + "\n")
    (run / "nodes" / "n1" / "raftkv.log").write_text("node log\n")
    options = {
        "backend": "netns", "nemesis": "partition-leader", "read_mode": "local", "seed": 5,
        "nodes": 3, "time_s": 10.0, "check_time_limit_s": 60.0,
    }  # fmt: skip
    (run / "results.json").write_text(
        json.dumps({"valid": "unknown", "test": test, "seed": 5, "options": options})
    )
    latest = store / "latest"
    if latest.is_symlink():
        latest.unlink()
    latest.symlink_to(run.relative_to(store))
    return run
