"""Grow-only sets: naming what a set read that cannot be linearized shows, and Jepsen's
set-full analysis of a whole history.

A grow-only set never loses an element in a correct system: once an element is known to be
in the set (its add was acknowledged, or a read returned it), every read of that key that
begins afterwards must contain it. So, unlike a register, whose lagging reads and lost
writes look alike once newer writes follow, a set proves a lost write: an element known to
be in the set that the last read of its key does not contain is gone. A read that misses
an element which a later read contains again merely lagged: a stale read.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from checker.history import Event, paused_gc
from checker.models import Model, _jsonable, _show, _sorted
from checker.ops import Op, pair
from checker.readers import History, as_history, read_history

__all__ = ["LostElement", "SetAnalysis", "classify_set", "set_analysis"]

_INF = float("inf")


def _elements(op: Op) -> frozenset[Any] | None:
    """What a completed set read returned; None for any other op."""
    if op.f != "read" or op.ret is None or not isinstance(op.value, tuple | frozenset):
        return None
    return frozenset(op.value)


def _known(ops: list[Op], reads: list[tuple[Op, frozenset[Any]]]) -> dict[Any, tuple[float, Op]]:
    """For each element: when it became known to be in the set (the return of its
    acknowledged add, or of the first read that returned it), and the op that made it so."""
    known: dict[Any, tuple[float, Op]] = {}
    for op in ops:
        if op.f == "add" and op.ret is not None and op.ret < known.get(op.value, (_INF,))[0]:
            known[op.value] = (op.ret, op)
    for op, got in reads:
        assert op.ret is not None
        for e in got:
            if op.ret < known.get(e, (_INF,))[0]:
                known[e] = (op.ret, op)
    return known


def _adds(ops: list[Op]) -> dict[Any, Op]:
    """The first add of each element that may have taken effect."""
    adds: dict[Any, Op] = {}
    for op in ops:
        if op.f == "add":
            adds.setdefault(op.value, op)
    return adds


def _where(op: Op) -> str:
    return f"line {op.line}" if op.line is not None else f"operation {op.id}"


def classify_set(model: Model, ops: list[Op], blocker: Op) -> tuple[str, dict[str, Any]]:
    """Name the anomaly a set read `blocker` that cannot be placed shows among `ops` (every
    op of its key): "read of a value never written", "lost write", "stale read" or "other".

    The elements a read misses are those known to be in the set (their add acknowledged, or
    returned by a read that ended) before it began, or before the add of an element it
    returned began; one that neither this read nor any read of the key that began after it
    contains was lost, else the read was stale.
    """
    got = _elements(blocker)
    if got is None:
        return "other", {}
    initial = model.initial()
    adds = _adds(ops)
    strange = [e for e in got if e not in adds and e not in initial]
    if strange:
        shown = " ".join(_show(e) for e in _sorted(strange))
        return "read of a value never written", {
            "summary": f"no operation ever added {shown}",
            "elements": strange,
        }
    # The read took effect after it began and after every add of what it returned began:
    # whatever was known to be in the set before then must be in it.
    since, newest = blocker.call, None
    for e in got:
        add = adds.get(e)
        if add is not None and add.call > since:
            since, newest = add.call, add
    reads = [(op, e) for op in ops if op.id != blocker.id and (e := _elements(op)) is not None]
    known = _known(ops, reads)
    missed = sorted(
        ((t, e, why) for e, (t, why) in known.items() if t < since and e in adds and e not in got),
        key=lambda m: (m[0], repr(m[1])),
    )
    if not missed:
        return _later_loss(ops, adds, blocker) or ("other", {})
    later = [(op, e) for op, e in reads if op.call > blocker.call]
    seen_later: set[Any] = set().union(*(e for _, e in later))
    lost = [m for m in missed if m[1] not in seen_later]
    if lost:
        _, element, why = lost[0]
        add = adds[element]
        before = _before("this read", newest)
        how = _how_known(element, add, why, _acked(add, since), before)
        acknowledged = "acknowledged " if add.ret is not None else ""
        lost_elements = [m[1] for m in lost]
        tail = f"the {acknowledged}write vanished"
        return _vanished(how, "this read", blocker.key, len(later), add, lost_elements, tail)
    _, element, why = missed[0]
    add = adds[element]
    before = _before("it", newest)
    how = f", acknowledged {before} ({_where(add)})"
    if not _acked(add, since):
        how = f" (added on {_where(add)}), returned by a read ({_where(why)}) that ended {before}"
    again = min((op for op, e in later if element in e), key=lambda op: op.call)
    more = _likewise(missed)
    return "stale read", {
        "summary": f"this read missed {_show(element)}{how}; a later read "
        f"({_where(again)}) contains it{more}",
        "element": element,
        "add_line": add.line,
    }


# How many reads after the one that cannot be placed `_later_loss` looks through: it scans
# the key's known elements for each, and explanations must stay cheap.
_LATER_READS_MAX = 2_000


def _later_loss(
    ops: list[Op], adds: dict[Any, Op], blocker: Op
) -> tuple[str, dict[str, Any]] | None:
    """A lost write proved by a read of the key that began after `blocker`, when `blocker`
    misses nothing known before it began: concurrent adds and reads can leave the read that
    cannot be placed without a missing element of its own, while a later read, and every
    read after it, lacks an element known before it began. The earliest such read."""
    reads = [(op, e) for op in ops if (e := _elements(op)) is not None]
    known = _known(ops, reads)
    later = sorted((r for r in reads if r[0].call > blocker.call), key=lambda r: r[0].call)
    later = later[:_LATER_READS_MAX]
    seen_after: set[Any] = set()
    found: tuple[Op, list[Any], int] | None = None
    for i in range(len(later) - 1, -1, -1):
        read, got = later[i]
        gone = got | seen_after
        lacks = [e for e, (t, _) in known.items() if t < read.call and e in adds and e not in gone]
        if lacks:
            found = (read, sorted(lacks, key=lambda e: (known[e][0], repr(e))), len(later) - 1 - i)
        seen_after |= got
    if found is None:
        return None
    read, lost, after = found
    element = lost[0]
    add, why = adds[element], known[element][1]
    how = _how_known(element, add, why, why is add, f"before a later read ({_where(read)}) began")
    tail = "the write vanished, and this read cannot be placed in that history"
    return _vanished(how, "that read", blocker.key, after, add, lost, tail)


def _vanished(
    how: str, reader: str, key: Hashable | None, later: int, add: Op, lost: list[Any], tail: str
) -> tuple[str, dict[str, Any]]:
    """A lost write: `lost[0]`, added by `add` and known as `how` says, is in neither the read
    called `reader` nor any of the `later` reads of `key` that began after it."""
    element = lost[0]
    of = "" if key is None else f" of {key}"
    lacking = (
        f"neither {reader} nor any of the {later} reads{of} that began after it contain"
        if later
        else f"{reader}, the last{of}, does not contain"
    )
    return "lost write", {
        "summary": f"{how}; {lacking} {_show(element)}: {tail}{_likewise(lost)}",
        "element": element,
        "add_line": add.line,
        "later_reads": later,
        "lost": lost,
    }


def _how_known(element: Any, add: Op, why: Op, acked: bool, when: str) -> str:
    """How `element` was known to be in the set `when`: its add acknowledged, or else a read
    (`why`) that returned it."""
    if acked:
        return f"add {_show(element)} ({_where(add)}) was acknowledged {when}"
    return (
        f"{_show(element)} (added on {_where(add)}) was returned by a read ({_where(why)}) "
        f"that ended {when}"
    )


def _likewise(lost: Sequence[Any]) -> str:
    return f" ({len(lost) - 1} more elements likewise)" if len(lost) > 1 else ""


def _acked(add: Op, since: int) -> bool:
    """Whether `add` was acknowledged before `since` (then it is named, rather than a read
    that returned its element first)."""
    return add.ret is not None and add.ret < since


def _before(read: str, newest: Op | None) -> str:
    """When the read had certainly not yet taken effect: before it began, or before the
    last-called add of an element it returned began."""
    if newest is None:
        return f"before {read} began"
    return f"before the add of {_show(newest.value)} ({_where(newest)}), which {read} saw, began"


@dataclass(slots=True)
class LostElement:
    """An element known to be in its key's set that the last read of the key lacks.

    `add_line` is the line of its add; `missing_from_line` the line of the first read
    that missed it for good (every read of the key from then on lacks it); `reads_missing`
    how many reads those are; `acknowledged` whether its add was (else the add ended
    `info` and a read had returned the element).
    """

    key: Hashable
    element: Any
    add_line: int | None
    missing_from_line: int | None
    reads_missing: int
    acknowledged: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "key": _jsonable(self.key),
            "element": _jsonable(self.element),
            "add_line": self.add_line,
            "missing_from_line": self.missing_from_line,
            "reads_missing": self.reads_missing,
            "acknowledged": self.acknowledged,
        }


@dataclass(slots=True)
class SetAnalysis:
    """Jepsen's set-full analysis of a grow-only set history, per key and element.

    An element is *known* from the return of its acknowledged add, or of the first read
    that returned it (an add that ended in ``info`` becomes known so). Over the reads of
    its key that began after it became known: none is `unread`; the last one lacks it is
    `lost` (the set only grows, so it certainly vanished); some lack it but the last has it
    is `stale`; every one has it is `ok`. `unexpected` lists elements read that no add which
    may have taken effect ever added (failed adds certainly did not), as (key, element,
    line of the first read that returned it). `acknowledged` counts acknowledged adds.
    """

    acknowledged: int = 0
    ok: int = 0
    lost: list[LostElement] = field(default_factory=list)
    stale: int = 0
    unread: int = 0
    unexpected: list[tuple[Hashable, Any, int | None]] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """No element lost and none unexpected (stale reads are not linearizable, but no
        acknowledged element vanished)."""
        return not self.lost and not self.unexpected

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "acknowledged": self.acknowledged,
            "ok": self.ok,
            "lost": [x.to_json() for x in self.lost],
            "stale": self.stale,
            "unread": self.unread,
            "unexpected": [
                {"key": _jsonable(k), "element": _jsonable(e), "line": line}
                for k, e, line in self.unexpected
            ],
        }


def set_analysis(
    history: str | os.PathLike[str] | History | Sequence[Event] | Sequence[dict[str, Any]],
) -> SetAnalysis:
    """Analyse a grow-only set history (``add`` element, ``read`` returning the whole set,
    per key) as Jepsen's set-full checker does; see `SetAnalysis`. `history` is a path to a
    history file, a parsed `History`, a sequence of `Event` or of dicts shaped like
    ``history.jsonl`` records. Ops without a key form one set. Time is O(n log n) in the
    size of the history (elements returned by reads included)."""
    with paused_gc():
        if isinstance(history, str | os.PathLike):
            hist = read_history(os.fspath(history))
        else:
            hist = as_history(history)
        ops = pair(hist.events, file=hist.file)
        out = SetAnalysis()
        keys: dict[Hashable, list[Op]] = {}
        for op in ops:
            keys.setdefault(op.key, []).append(op)
        for key, part in keys.items():
            _analyse_key(key, part, out)
        out.lost.sort(key=lambda x: (_INF if x.add_line is None else x.add_line, repr(x.key)))
        return out


def _analyse_key(key: Hashable, ops: list[Op], out: SetAnalysis) -> None:
    reads = sorted(
        ((op, e) for op in ops if (e := _elements(op)) is not None), key=lambda r: r[0].call
    )
    calls = [op.call for op, _ in reads]
    # For each element, the positions (in call order) of the reads that returned it.
    seen_in: dict[Any, list[int]] = {}
    for i, (_, got) in enumerate(reads):
        for e in got:
            seen_in.setdefault(e, []).append(i)
    adds = _adds(ops)
    out.acknowledged += sum(1 for op in ops if op.f == "add" and op.ret is not None)
    for e, seen in seen_in.items():
        if e not in adds:
            out.unexpected.append((key, e, reads[seen[0]][0].line))
    for e, (t, _) in _known(ops, reads).items():
        if e not in adds:
            continue
        first = bisect.bisect_right(calls, t)  # the first read that began after e was known
        if first == len(reads):
            out.unread += 1
            continue
        seen = seen_in.get(e, [])
        if not seen or seen[-1] != len(reads) - 1:
            gone = max(first, seen[-1] + 1 if seen else 0)
            add, missing = adds[e], len(reads) - gone
            line = reads[gone][0].line
            acked = add.ret is not None
            out.lost.append(LostElement(key, e, add.line, line, missing, acknowledged=acked))
        elif len(seen) - bisect.bisect_left(seen, first) < len(reads) - first:
            out.stale += 1
        else:
            out.ok += 1
