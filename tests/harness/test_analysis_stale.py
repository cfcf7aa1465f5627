"""Certain stale reads when other reads are stale: a read proves only that its value had been
written, never that it was still current, so a stale read is never the proof of another's.

Histories are built by hand: event i happens at i ms, all on key "k". The checker's naming of
each read (as if it were the op that cannot be placed) must agree with the count."""

from __future__ import annotations

import math
from typing import Any

import pytest

from checker import Op, make_model
from checker.explain import classify
from harness.analysis import stale_reads
from harness.history import OpSpan, ops_from_json, pair_ops

Event = tuple[str, int, str, Any]  # (type, process, f, value)


def records(*events: Event) -> list[dict[str, Any]]:
    return [
        {"index": i, "time": i * 1_000_000, "type": t, "process": p, "f": f, "key": "k", "value": v}
        for i, (t, p, f, v) in enumerate(events)
    ]


def found(history: list[dict[str, Any]]) -> list[tuple[int, Any, Any, float]]:
    """(invocation index, value read, overwritten_by, staleness_ms) of each certain stale read."""
    return [
        (s.read_index, s.value, s.overwritten_by, s.staleness_ms)
        for s in stale_reads(pair_ops(ops_from_json(history)))
    ]


# (a) Writes of 1 then 2; a stale read of 1; then a fresh read of 2, which the stale read of 1
# must not make stale ("2 overwritten by 1" is false).
ISSUE = records(
    ("invoke", 0, "write", 1), ("ok", 0, "write", 1),
    ("invoke", 0, "write", 2), ("ok", 0, "write", 2),
    ("invoke", 1, "read", None), ("ok", 1, "read", 1),
    ("invoke", 2, "read", None), ("ok", 2, "read", 2),
)  # fmt: skip

# (b) The write of 2 never returns, but a read of 2 (fresh: the write began after the write of
# 1 ended) shows it took effect before a read of 1 began: that read is stale.
FRESH_WITNESS = records(
    ("invoke", 0, "write", 1), ("ok", 0, "write", 1),
    ("invoke", 1, "write", 2),
    ("invoke", 2, "read", None), ("ok", 2, "read", 2),
    ("invoke", 3, "read", None), ("ok", 3, "read", 1),
)  # fmt: skip

# (c) The writes of 1 and 2 overlap, so either may have come last: the read of 2 and the
# reads of 1 after it cannot all be fresh, but none of them is certainly the stale one.
OVERLAPPING = records(
    ("invoke", 0, "write", 1), ("invoke", 1, "write", 2),
    ("ok", 0, "write", 1), ("ok", 1, "write", 2),
    ("invoke", 2, "read", None), ("ok", 2, "read", 2),
    ("invoke", 2, "read", None), ("ok", 2, "read", 1),
    ("invoke", 3, "read", None), ("ok", 3, "read", 1),
)  # fmt: skip

# (c) Overlapping writes again, but a read of 1 ended before the write of 2 began: 2 was
# written after 1, and a read of 2 shows it before the last read of 1 began.
OVERLAPPING_ORDERED = records(
    ("invoke", 0, "write", 1),
    ("invoke", 2, "read", None), ("ok", 2, "read", 1),
    ("invoke", 1, "write", 2),
    ("ok", 0, "write", 1),
    ("invoke", 2, "read", None), ("ok", 2, "read", 2),
    ("invoke", 3, "read", None), ("ok", 3, "read", 1),
    ("ok", 1, "write", 2),
)  # fmt: skip

# (d) A write of 1, then overlapping writes of 2 and 3, then reads of 1, 2, 3: the read of 1
# is certainly stale; the reads of 2 and 3 may both be fresh (2 may have come last).
STALE_CHAIN = records(
    ("invoke", 0, "write", 1), ("ok", 0, "write", 1),
    ("invoke", 1, "write", 2), ("invoke", 2, "write", 3),
    ("ok", 1, "write", 2), ("ok", 2, "write", 3),
    ("invoke", 3, "read", None), ("ok", 3, "read", 1),
    ("invoke", 3, "read", None), ("ok", 3, "read", 2),
    ("invoke", 3, "read", None), ("ok", 3, "read", 3),
)  # fmt: skip

# (d) Writes of 1 then 2, then a write of 3 that never returns; a stale read of 1, a read of
# 3, then a read of 2: stale, and overwritten by 3 (as the read of 3 shows), not by 1.
STALE_THEN_FRESH_WITNESS = records(
    ("invoke", 0, "write", 1), ("ok", 0, "write", 1),
    ("invoke", 0, "write", 2), ("ok", 0, "write", 2),
    ("invoke", 1, "write", 3),
    ("invoke", 2, "read", None), ("ok", 2, "read", 1),
    ("invoke", 3, "read", None), ("ok", 3, "read", 3),
    ("invoke", 2, "read", None), ("ok", 2, "read", 2),
)  # fmt: skip

EXPECTED = {
    "issue": (ISSUE, [(4, 1, 2, 1.0)]),
    "fresh witness": (FRESH_WITNESS, [(5, 1, 2, 1.0)]),
    "overlapping": (OVERLAPPING, []),
    "overlapping ordered": (OVERLAPPING_ORDERED, [(7, 1, 2, 1.0)]),
    "stale chain": (STALE_CHAIN, [(6, 1, 2, 2.0)]),
    "stale then fresh witness": (STALE_THEN_FRESH_WITNESS, [(5, 1, 2, 2.0), (9, 2, 3, 1.0)]),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_only_certainly_stale_reads_are_counted(name: str) -> None:
    history, expected = EXPECTED[name]
    assert found(history) == expected


def _checker_op(i: int, span: OpSpan) -> Op:
    ret = None if math.isinf(span.done_by_ns) else int(span.done_by_ns)
    value = tuple(span.value) if isinstance(span.value, list) else span.value
    return Op(i, span.process, span.f, value, span.key, span.start_ns, ret, span.index)


@pytest.mark.parametrize("name", EXPECTED)
def test_the_checker_names_the_same_reads_stale(name: str) -> None:
    history, expected = EXPECTED[name]
    model = make_model("cas-register")
    ops = [_checker_op(i, s) for i, s in enumerate(pair_ops(ops_from_json(history)))]
    named = [
        op.line
        for op in ops
        if op.f == "read"
        and op.ret is not None
        and classify(model, ops, op)[0] in ("stale read", "lost write")
    ]
    assert named == [index for index, *_ in expected]
