"""Explanations of non-linearizable sub-histories: what could not happen, and why.

An `Anomaly` holds the longest linearizable prefix the search found, the operation that
cannot be placed after it with the states it could have seen, a minimal window of operations
that still fails (shrunk automatically), and a name:

- ``stale read``: the value read had certainly been overwritten before the read began
  (`Overwrites` says when that is certain: never on the word of a read that may be stale);
- ``lost write``: as a stale read, and no later read ever sees the overwriting write or
  anything newer (the state never moved on past it). When newer writes follow and are
  read, a register cannot tell a lost write from a read that lagged: what the lagging read
  missed may be overwritten before anyone reads it. Such a read is a stale read; a
  grow-only set workload proves lost writes instead: for ``set`` and ``set-kv``, a read
  missing an element known to be in the set is a lost write when no read that began after
  it contains the element, else a stale read (`checker.sets.classify_set`);
- ``read of a value never written``;
- ``cas anomaly``: a compare-and-set that succeeded from an impossible value;
- ``other``: anything else (mutex, multi-register, append, real-time orders).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from checker.history import show_key
from checker.models import ILLEGAL, Model, SetModel, _jsonable, _show
from checker.ops import Op
from checker.search import Search
from checker.sets import classify_set

__all__ = ["ANOMALY_NAMES", "Anomaly", "Overwrites", "Shown", "explain", "explain_witness"]

ANOMALY_NAMES = (
    "stale read",
    "lost write",
    "read of a value never written",
    "cas anomaly",
    "other",
)
_SHOWN_PREFIX = 12
_INF = math.inf


@dataclass(slots=True)
class Anomaly:
    """Why one key (sub-history) is not linearizable.

    `op` is the operation that cannot be placed; `states` the model states in which it could
    have been linearized (none of which allows it); `prefix_len` the length of the longest
    linearizable prefix and `prefix` its last few operations; `window` a small set of
    operations, in call order, that is not linearizable on its own. Operations are rendered
    as dicts: process, f, key, value, type (ok or info), line.
    """

    key: Hashable
    name: str
    op: dict[str, Any]
    states: list[Any]
    prefix_len: int
    prefix: list[dict[str, Any]]
    window: list[dict[str, Any]]
    reason: str
    text: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["key"] = _jsonable(self.key)
        out["states"] = [_jsonable(s) for s in self.states]
        return out


def _op_dict(op: Op) -> dict[str, Any]:
    return {
        "process": _jsonable(op.process),
        "f": op.f,
        "key": _jsonable(op.key),
        "value": _jsonable(op.value),
        "type": "info" if op.ret is None else "ok",
        "line": op.line,
    }


def explain(
    key: Hashable, search: Search, *, shrink_s: float = 1.0, deadline: float | None = None
) -> Anomaly:
    """Explain the False verdict of a finished `search` of the sub-history under `key`.
    Past `deadline` (the explanation time limit) it only names the op that cannot be
    placed; a window the deadline cut short says it may not be the smallest."""
    model = search.model
    best = search.best
    prefix = search.linearized(best)
    pending = search.pending(best)
    blocker = pending[0] if search.best_blocker is None else search.comp[search.best_blocker]
    if deadline is not None and time.monotonic() >= deadline:
        return unexplained(key, model, blocker, len(prefix))
    states = search.states_seen_by(blocker)[:10]
    ops = sorted(search.comp + search.info, key=lambda o: o.call)
    shrink_by = time.monotonic() + shrink_s
    window = shrink(
        model, ops, blocker, deadline=shrink_by if deadline is None else min(shrink_by, deadline)
    )
    cut_short = deadline is not None and time.monotonic() >= deadline
    name, detail = classify(model, ops, blocker)
    if name == "other" and blocker in window:
        name, detail = classify(model, window, blocker, everything=ops)
        if name != "other":
            detail["summary"] = f"within the window: {detail['summary']}"
    step = model.step(blocker)
    legal = [s for s in states if step(s) is not ILLEGAL]
    illegal = ", ".join(_show(s) for s in states if step(s) is ILLEGAL) or "none"
    reason = f"{model.describe(blocker)} (process {blocker.process}) cannot be linearized: "
    if legal:
        reason += (
            f"it is illegal in states {illegal}, and from states "
            f"{', '.join(_show(s) for s in legal)} no order of the remaining operations works"
        )
    else:
        reason += f"it is illegal in every state it could have seen ({illegal})"
    if cut_short:
        reason += (
            f" (the explanation time limit ran out: the window of {len(window)} ops may not"
            " be the smallest)"
        )
    anomaly = Anomaly(
        key=key,
        name=name,
        op=_op_dict(blocker),
        states=states,
        prefix_len=len(prefix),
        prefix=[_op_dict(op) for op in prefix[-_SHOWN_PREFIX:]],
        window=[_op_dict(op) for op in window],
        reason=reason,
        detail=detail,
    )
    anomaly.text = render(model, anomaly, window, prefix)
    return anomaly


def unexplained(key: Hashable, model: Model, blocker: Op, prefix_len: int) -> Anomaly:
    """The anomaly of a key found invalid when the explanation time limit had run out:
    which op cannot be placed, and that nothing more was worked out."""
    anomaly = Anomaly(
        key=key,
        name="other",
        op=_op_dict(blocker),
        states=[],
        prefix_len=prefix_len,
        prefix=[],
        window=[],
        reason=f"{model.describe(blocker)} (process {blocker.process}) cannot be linearized; "
        "not explained further: the explanation time limit ran out first",
        detail={"unfinished": True},
    )
    name = "" if key is None else f"key {show_key(key)}: "
    anomaly.text = f"{name}{anomaly.name}\n  {anomaly.reason}"
    return anomaly


def explain_witness(
    key: Hashable, model: Model, witness: list[Op], blocker: Op, why: str
) -> Anomaly:
    """Explain a sub-history from a `witness` (a subset of its operations, not linearizable on
    its own) and the `blocker` among them, without a search: no prefix, no states."""
    name, detail = classify(model, witness, blocker)
    anomaly = Anomaly(
        key=key,
        name=name,
        op=_op_dict(blocker),
        states=[],
        prefix_len=0,
        prefix=[],
        window=[_op_dict(op) for op in witness],
        reason=why,
        detail=detail,
    )
    anomaly.text = render(model, anomaly, witness, [])
    return anomaly


def render(model: Model, anomaly: Anomaly, window: list[Op], prefix: list[Op]) -> str:
    """The anomaly as terminal text."""
    key = "" if anomaly.key is None else f"key {show_key(anomaly.key)}: "
    lines = [f"{key}{anomaly.name}", f"  {anomaly.reason}"]
    if anomaly.detail.get("summary"):
        lines.append(f"  {anomaly.detail['summary']}")
    lines.append(f"  longest linearizable prefix: {anomaly.prefix_len} ops; it ends with:")
    for op in prefix[-_SHOWN_PREFIX:]:
        lines.append(f"    {_line(model, op)}")
    lines.append(f"  smallest failing window ({len(window)} ops, in call order):")
    for op in window:
        lines.append(f"    {_line(model, op)}")
    return "\n".join(lines)


def _line(model: Model, op: Op) -> str:
    kind = "info" if op.ret is None else "ok"
    where = f"  (line {op.line})" if op.line is not None else ""
    return f"p{op.process} {model.describe(op)} -> {kind}{where}"


def _fails(model: Model, ops: list[Op], steps: int = 20_000) -> bool:
    search = Search(model, ops, memo_limit=steps * 4)
    return search.run(steps) is False


def shrink(model: Model, ops: list[Op], blocker: Op, *, deadline: float) -> list[Op]:
    """A small subset of `ops`, containing `blocker`, that is still not linearizable.

    Chunks of operations are removed while the rest still fails and every value read that
    had a writer keeps one; stops at `deadline` (the result then is merely smaller).
    """
    cut = blocker.ret if blocker.ret is not None else max(o.call for o in ops)
    current = [op for op in ops if op.call <= cut]
    if not _fails(model, current):
        current = list(ops)
    allowed = model.unsupported(current)
    chunk = max(1, len(current) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        while i < len(current) and time.monotonic() < deadline:
            trial = current[:i] + current[i + chunk :]
            if blocker in trial and model.unsupported(trial) <= allowed and _fails(model, trial):
                current = trial
            else:
                i += chunk
        chunk //= 2
    return current


def classify(
    model: Model, ops: list[Op], blocker: Op, everything: list[Op] | None = None
) -> tuple[str, dict[str, Any]]:
    """Name the anomaly that `blocker` (the op that cannot be placed) shows among `ops`;
    whether a write was lost is judged on `everything` (default: `ops`). A read of a
    grow-only set is named by `classify_set`, on `everything`."""
    if isinstance(model, SetModel):
        return classify_set(model, ops if everything is None else everything, blocker)
    if blocker.f == "cas":
        return "cas anomaly", {"summary": "a compare-and-set succeeded from an impossible value"}
    seen = model.observes(blocker)
    if not model.pure(blocker) or not seen:
        return "other", {}
    value = seen[0]
    if value != model.initial() and not any(value in model.produces(op) for op in ops):
        return "read of a value never written", {
            "summary": f"no operation ever wrote {_show(value)}"
        }
    overwrites = Overwrites(_shown(model, ops), model.initial())
    proofs = overwrites.proofs(Shown(value, blocker.call, _INF, read=True))
    if not proofs:
        return "other", {}
    # Name the last proof to complete: a write if one is among them.
    writes = [p for p in proofs if not p.read]
    last = max(writes or proofs, key=lambda p: p.end).op
    how = "by" if writes else "as seen by"
    summary = (
        f"{_show(value)} had certainly been overwritten ({how} {model.describe(last)}, "
        f"line {last.line}) before the read began"
    )
    every = ops if everything is None else everything
    if writes and _lost(model, every, last, blocker):
        return "lost write", {"summary": summary + "; no later read ever saw it or anything newer"}
    return "stale read", {"summary": summary}


def _shown(model: Model, ops: list[Op]) -> list[Shown]:
    """The values `ops` show: what each wrote, and what each completed read returned."""
    shown = []
    for op in ops:
        end = _INF if op.ret is None else op.ret
        shown += [Shown(v, op.call, end, read=False, op=op) for v in model.produces(op)]
        shown += [Shown(v, op.call, end, read=True, op=op) for v in _reads(model, op)]
    return shown


def _reads(model: Model, op: Op) -> tuple[Any, ...]:
    """What a completed pure op (a read) observed; nothing for any other op."""
    return model.observes(op) if model.pure(op) else ()


def _lost(model: Model, ops: list[Op], write: Op, blocker: Op) -> bool:
    """Other reads began after `write` returned, and none saw a value written at or after it."""
    assert write.ret is not None
    newer: set[Any] = set()
    for op in ops:
        if op.call >= write.call:
            newer.update(model.produces(op))
    later_reads = [
        op for op in ops if model.pure(op) and op.call > write.ret and op.id != blocker.id
    ]
    return bool(later_reads) and not any(
        v in newer for op in later_reads for v in model.observes(op)
    )


@dataclass(frozen=True, slots=True)
class Shown:
    """An operation that shows a value of one register: a write (or cas) of `value` that may
    have happened (never a failed one), or a completed read that returned it (`read`).

    `start` and `end` are times on any one clock; `end` is inf for an op that never returned.
    `op` is the caller's own handle, handed back unchanged in proofs.
    """

    value: Any
    start: float
    end: float
    read: bool
    op: Any = None


class Overwrites:
    """Proofs that the value a read returned had certainly been overwritten before it began.

    Value A had been overwritten before time t when an op showing another value B ended before
    t and B's write began after every write of A had taken effect (`settled`): B was then
    written after every A, and before t. A read proves only that its value had been written by
    the time it returned, never that it was still current (it may be stale): so a read of A
    can settle A, and a read of B proves the overwrite only when every write of B began after A
    settled. A stale read is never the proof of another read's staleness.
    """

    def __init__(self, shown: Iterable[Shown], initial: Any) -> None:
        self._initial = initial
        self._writes: dict[Any, list[Shown]] = defaultdict(list)
        self._reads: dict[Any, list[Shown]] = defaultdict(list)
        for s in shown:
            (self._reads if s.read else self._writes)[_key(s.value)].append(s)
        # Each candidate proof with the time its write of B began: its own start for a
        # completed write, the earliest start of any write of B for a read of B.
        proofs = [(s.start, s) for ws in self._writes.values() for s in ws if s.end < _INF]
        for key, reads in self._reads.items():
            began = self._write_began(key)
            proofs += [(began, s) for s in reads if -_INF < began < _INF]
        proofs.sort(key=lambda p: p[0])
        self._proofs = proofs
        self._began = [p[0] for p in proofs]
        # _earliest[i]: the two earliest-ending proofs, of different values, among proofs[i:],
        # so one of them differs from whatever value a query excludes.
        self._earliest: list[list[Shown]] = [[] for _ in range(len(proofs) + 1)]
        for i in range(len(proofs) - 1, -1, -1):
            self._earliest[i] = _two_earliest([*self._earliest[i + 1], proofs[i][1]])

    def settled(self, value: Any) -> float:
        """When every write of `value` had certainly taken effect: -inf for the initial value
        never written, inf when some write may never have happened and nothing shows it did."""
        key = _key(value)
        writes = self._writes.get(key, [])
        is_initial = _key(self._initial) == key
        if len(writes) == 1 and not is_initial:
            # One write: any read of its value shows it had taken effect.
            return min([writes[0].end, *(r.end for r in self._reads.get(key, []))])
        if not writes:
            return -_INF if is_initial else _INF
        return max(w.end for w in writes)

    def proofs(self, read: Shown) -> list[Shown]:
        """Every op proving `read`'s value overwritten before `read` began."""
        settled = self.settled(read.value)
        key = _key(read.value)
        return [
            s
            for began, s in self._proofs
            if began > settled and s.end < read.start and _key(s.value) != key
        ]

    def first_proof(self, read: Shown) -> Shown | None:
        """The proof that completed first, or None (in log time)."""
        i = bisect.bisect_right(self._began, self.settled(read.value))
        key = _key(read.value)
        first = next((s for s in self._earliest[i] if _key(s.value) != key), None)
        return first if first is not None and first.end < read.start else None

    def _write_began(self, key: Any) -> float:
        if _key(self._initial) == key:
            return -_INF
        return min((w.start for w in self._writes.get(key, [])), default=_INF)


def _two_earliest(candidates: list[Shown]) -> list[Shown]:
    best: list[Shown] = []
    for s in sorted(candidates, key=lambda c: c.end):
        if all(_key(s.value) != _key(b.value) for b in best):
            best.append(s)
            if len(best) == 2:
                break
    return best


def _key(value: Any) -> Hashable:
    """`value` as a dict key: values read from a history may be lists."""
    try:
        hash(value)
    except TypeError:
        return ("unhashable", repr(value))
    return value
