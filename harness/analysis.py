"""What a history says beyond the verdict: certain stale reads, op counts, latencies.

Every latency figure (report, compare, benchmarks) is a `quantile` of this module:
nearest-rank, so p99 is a latency some op really had.

A read is *certainly stale* when the value it returned had been overwritten
before the read began: an op showing another value (a completed write of it,
or a completed read that returned it) ended before the read began, and that
value's write began after every write of the value read had taken effect.
A read shows only that its value had been written, never that it was still
current, so a stale read never makes another read stale (the rule is the
checker's, `checker.explain.Overwrites`). A failed write never happened; an
`info` write counts only once a read shows it. This needs unique written
values, which our workloads give.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from checker.explain import Overwrites, Shown
from harness.history import OpSpan

__all__ = ["StaleRead", "count_ops", "quantile", "stale_reads"]


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


def stale_reads(spans: Sequence[OpSpan]) -> list[StaleRead]:
    """Every ok read whose value had certainly been overwritten before it began."""
    by_key: dict[Any, list[OpSpan]] = defaultdict(list)
    for s in spans:
        by_key[s.key].append(s)
    found: list[StaleRead] = []
    for key, ops in by_key.items():
        shown = [_shown(s) for s in ops if _shows(s)]
        overwrites = Overwrites(shown, None)
        for r in shown:
            if not r.read:
                continue
            proof = overwrites.first_proof(r)
            if proof is not None:
                staleness_ms = (r.start - proof.end) / 1e6
                found.append(StaleRead(key, r.value, r.op, proof.value, staleness_ms))
    return found


def _shows(span: OpSpan) -> bool:
    """Writes that may have happened (never a failed one) and completed reads."""
    if span.f == "read":
        return span.type == "ok"
    return span.type != "fail" and (span.f == "write" or span.written is not None)


def _shown(span: OpSpan) -> Shown:
    read = span.f == "read"
    value = span.value if read else span.written
    return Shown(value, span.start_ns, span.done_by_ns, read=read, op=span.index)


def count_ops(spans: Iterable[OpSpan]) -> dict[str, dict[str, int]]:
    """Counts by outcome, overall and per f: {"all": {"ok": n, ...}, "read": {...}}."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for s in spans:
        counts["all"][s.type] += 1
        counts[s.f][s.type] += 1
    return {f: dict(c) for f, c in counts.items()}


def quantile(ascending: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-quantile (0 <= q <= 1) of a non-empty ascending sequence: the
    smallest value with at least a fraction `q` of the values at or below it, so
    `quantile(v, 0.5)` of [1, 2, 3, 4] is 2 and `quantile(v, 0.99)` of 100 values is the
    99th. Always one of the values, never an interpolation. ValueError when empty."""
    if not ascending:
        raise ValueError("no values to take a quantile of")
    # q as the decimal it was written as: 0.07 * 100 is 7.000000000000001 in floats.
    rank = math.ceil(Fraction(str(q)) * len(ascending))
    return ascending[max(1, rank) - 1]
