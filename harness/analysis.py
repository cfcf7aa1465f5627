"""What a history says beyond the verdict: certain stale reads, op counts, latencies.

A read is *certainly stale* when the value it returned had been overwritten
before the read began: the write of that value completed, then another write
to the key began and completed, all before the read's invocation. Only `ok`
ops prove anything; an `info` write might never have completed, so it never
makes a read stale. This needs unique written values, which our workloads give.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

__all__ = ["OpSpan", "StaleRead", "count_ops", "pair_ops", "stale_reads"]

INF = math.inf


@dataclass(frozen=True)
class OpSpan:
    """A client op from invocation to completion (`end_ns` is inf when it never returned)."""

    process: Any
    f: str
    key: Any
    value: Any
    type: str  # ok | fail | info
    start_ns: int
    end_ns: float
    invoke_index: int


@dataclass(frozen=True)
class StaleRead:
    key: Any
    value: Any
    read_index: int
    overwritten_by: Any
    staleness_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "read_index": self.read_index,
            "overwritten_by": self.overwritten_by,
            "staleness_ms": round(self.staleness_ms, 3),
        }


def pair_ops(history: list[dict[str, Any]]) -> list[OpSpan]:
    """Client ops of a history.jsonl-style list, paired invoke -> completion."""
    open_ops: dict[Any, dict[str, Any]] = {}
    spans: list[OpSpan] = []
    for op in history:
        process = op.get("process")
        if process == "nemesis":
            continue
        if op["type"] == "invoke":
            open_ops[process] = op
            continue
        inv = open_ops.pop(process, None)
        if inv is None:
            continue
        end = INF if op["type"] == "info" else op["time"]
        value = op.get("value") if op["type"] == "ok" else inv.get("value")
        spans.append(
            OpSpan(
                process, inv["f"], inv.get("key"), value, op["type"], inv["time"], end, inv["index"]
            )
        )
    for inv in open_ops.values():
        spans.append(
            OpSpan(
                inv["process"],
                inv["f"],
                inv.get("key"),
                inv.get("value"),
                "info",
                inv["time"],
                INF,
                inv["index"],
            )
        )
    return spans


def _written(span: OpSpan) -> Any:
    if span.f == "write":
        return span.value
    if span.f == "cas" and isinstance(span.value, list) and len(span.value) == 2:
        return span.value[1]
    return None


def stale_reads(spans: list[OpSpan]) -> list[StaleRead]:
    """Every ok read whose value had certainly been overwritten before it began."""
    by_key: dict[Any, list[OpSpan]] = defaultdict(list)
    for s in spans:
        by_key[s.key].append(s)
    found: list[StaleRead] = []
    for key, ops in by_key.items():
        writes = sorted(
            (s for s in ops if s.type == "ok" and s.f in ("write", "cas")), key=lambda s: s.start_ns
        )
        # Writes of a value that may have happened: ok or info, never fail.
        end_of_write = {
            _written(s): s.end_ns for s in ops if s.f in ("write", "cas") and s.type != "fail"
        }
        starts = [w.start_ns for w in writes]
        # suffix_min[i]: the earliest completion among writes starting at or after starts[i].
        suffix_min: list[tuple[float, Any]] = [(INF, None)] * (len(writes) + 1)
        for i in range(len(writes) - 1, -1, -1):
            suffix_min[i] = min(
                suffix_min[i + 1], (writes[i].end_ns, _written(writes[i])), key=lambda t: t[0]
            )
        for r in ops:
            if r.f != "read" or r.type != "ok":
                continue
            # The initial null was "written" before the test began.
            written_end = -1.0 if r.value is None else end_of_write.get(r.value, INF)
            if written_end == INF:
                continue
            i = bisect.bisect_right(starts, written_end)
            end, by = suffix_min[i]
            if end < r.start_ns:
                found.append(StaleRead(key, r.value, r.invoke_index, by, (r.start_ns - end) / 1e6))
    return found


def count_ops(spans: list[OpSpan]) -> dict[str, dict[str, int]]:
    """Counts by outcome, overall and per f: {"all": {"ok": n, ...}, "read": {...}}."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for s in spans:
        counts["all"][s.type] += 1
        counts[s.f][s.type] += 1
    return {f: dict(c) for f, c in counts.items()}
