"""A read is named stale only when certainly stale: when the proof of the overwrite is a read,
that read must not be able to be stale itself (`checker.explain.Overwrites`)."""

from __future__ import annotations

import math
import random
from functools import cache
from typing import Any

from checker import check
from checker.explain import Overwrites, Shown


def history(*ops: tuple[str, int, str, Any]) -> list[dict[str, Any]]:
    return [
        {"index": i, "type": t, "process": p, "f": f, "key": "k", "value": v}
        for i, (t, p, f, v) in enumerate(ops)
    ]


def read(process: int, value: Any) -> list[tuple[str, int, str, Any]]:
    return [("invoke", process, "read", None), ("ok", process, "read", value)]


def anomaly(*ops: tuple[str, int, str, Any]) -> Any:
    result = check(history(*ops), "kv")
    assert result.valid is False
    [found] = result.anomalies
    return found


def test_a_read_after_overlapping_writes_is_not_named_stale_on_another_reads_word() -> None:
    # Either write may have come last: if 2 did, the read of 1 is the stale one; if 1 did,
    # the read of 2 is. Neither read is certainly stale.
    a = anomaly(
        ("invoke", 0, "write", 1), ("invoke", 1, "write", 2),
        ("ok", 0, "write", 1), ("ok", 1, "write", 2),
        *read(2, 2), *read(3, 1),
    )  # fmt: skip
    assert a.name == "other", a.text


def test_a_read_shows_a_write_that_never_returned_had_taken_effect() -> None:
    # The write of 1 never returned, but a read of 1 shows it took effect before 2 was written.
    a = anomaly(
        ("invoke", 0, "write", 1), *read(1, 1),
        ("invoke", 2, "write", 2), ("ok", 2, "write", 2),
        *read(3, 1),
    )  # fmt: skip
    assert a.name == "stale read", a.text
    assert a.op["process"] == 3 and "by write" in a.detail["summary"]


def test_a_stale_read_is_named_by_the_write_not_by_another_read() -> None:
    a = anomaly(
        ("invoke", 0, "write", 1), ("ok", 0, "write", 1),
        ("invoke", 0, "write", 2), ("ok", 0, "write", 2),
        *read(1, 1), *read(2, 2),
    )  # fmt: skip
    assert a.name == "stale read" and a.op["value"] == 1
    assert "by write k 2," in a.detail["summary"], a.detail


# Random small histories: every read the rule calls stale is stale in every way the ops can
# be placed in real-time order, with each read after some write of its value (reads need not
# be fresh; a write that never returned may never have happened).

SEED = 8


def random_history(rng: random.Random) -> list[Shown]:
    n = rng.randint(3, 7)
    times = rng.sample(range(2 * n), 2 * n)
    shown = []
    for i in range(n):
        start, end = sorted(times[2 * i : 2 * i + 2])
        is_read = rng.random() < 0.6
        value = rng.choice((None, 1, 2) if is_read else (1, 2))
        never_returned = not is_read and rng.random() < 0.25
        shown.append(Shown(value, start, math.inf if never_returned else end, is_read, op=i))
    return shown


def can_be_fresh(shown: list[Shown], target: Shown) -> bool:
    """Some real-time placement of the ops shows `target`'s value current when it reads."""
    before = [{j for j, b in enumerate(shown) if b.end < a.start} for a in shown]

    @cache
    def place(done: frozenset[int], current: Any, written: frozenset[Any]) -> bool:
        if len(done) == len(shown):
            return True
        for i, s in enumerate(shown):
            if i in done or not before[i] <= done:
                continue
            if s.end == math.inf and place(done | {i}, current, written):
                return True  # it never happened
            if s.read and (s.value not in written or (s is target and s.value != current)):
                continue
            after = (current, written) if s.read else (s.value, written | {s.value})
            if place(done | {i}, *after):
                return True
        return False

    return place(frozenset(), None, frozenset({None}))


def test_every_read_named_stale_is_certainly_stale() -> None:
    rng = random.Random(SEED)
    named = 0
    for _ in range(5000):
        shown = random_history(rng)
        overwrites = Overwrites(shown, None)
        for r in (s for s in shown if s.read):
            proofs = overwrites.proofs(r)
            assert overwrites.first_proof(r) == min(proofs, key=lambda p: p.end, default=None)
            assert not (proofs and can_be_fresh(shown, r)), (SEED, shown, r, proofs)
            named += bool(proofs)
    assert named > 200  # the property was put to the test
