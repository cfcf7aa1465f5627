"""What a history says beyond the verdict: certain stale reads, op counts, latencies.

A read is *certainly stale* when the value it returned had been overwritten
before the read began: the write of that value completed, then another op
began and completed, all before the read's invocation, that showed another
value: a write of another value, or a read that returned another value. Only
`ok` ops prove anything; an `info` write might never have completed, so it
never makes a read stale. This needs unique written values, which our
workloads give.
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
        # Writes of a value that may have happened: ok or info, never fail.
        end_of_write = {
            _written(s): s.end_ns for s in ops if s.f in ("write", "cas") and s.type != "fail"
        }
        witnesses = _Witnesses(ops)
        for r in ops:
            if r.f != "read" or r.type != "ok":
                continue
            # The initial null was "written" before the test began.
            written_end = -1.0 if r.value is None else end_of_write.get(r.value, INF)
            if written_end == INF:
                continue
            end, by = witnesses.first_end_after(written_end, r.value)
            if end < r.start_ns:
                found.append(StaleRead(key, r.value, r.invoke_index, by, (r.start_ns - end) / 1e6))
    return found


class _Witnesses:
    """The ok ops of one key that show its value at some moment: writes (the value written)
    and reads (the value read). `first_end_after(t, v)`: the earliest completion, and its
    value, among those that began after t and show a value other than v."""

    def __init__(self, ops: list[OpSpan]) -> None:
        shown = [
            (s.start_ns, s.end_ns, _written(s) if s.f != "read" else s.value)
            for s in ops
            if s.type == "ok" and s.f in ("write", "cas", "read")
        ]
        shown.sort(key=lambda w: w[0])
        self._starts = [w[0] for w in shown]
        # _best[i]: the two earliest completions with different values among shown[i:], so
        # that one of them differs from whatever value a query excludes.
        self._best: list[list[tuple[float, Any]]] = [[]] * (len(shown) + 1)
        for i in range(len(shown) - 1, -1, -1):
            self._best[i] = _two_earliest([*self._best[i + 1], (shown[i][1], shown[i][2])])

    def first_end_after(self, t: float, value: Any) -> tuple[float, Any]:
        i = bisect.bisect_right(self._starts, t)
        return next(((end, v) for end, v in self._best[i] if v != value), (INF, None))


def _two_earliest(candidates: list[tuple[float, Any]]) -> list[tuple[float, Any]]:
    best: list[tuple[float, Any]] = []
    for end, value in sorted(candidates, key=lambda c: c[0]):
        if all(value != v for _, v in best):
            best.append((end, value))
            if len(best) == 2:
                break
    return best


def count_ops(spans: list[OpSpan]) -> dict[str, dict[str, int]]:
    """Counts by outcome, overall and per f: {"all": {"ok": n, ...}, "read": {...}}."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for s in spans:
        counts["all"][s.type] += 1
        counts[s.f][s.type] += 1
    return {f: dict(c) for f, c in counts.items()}
