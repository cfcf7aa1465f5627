"""Explanations of non-linearizable sub-histories: what could not happen, and why.

An `Anomaly` holds the longest linearizable prefix the search found, the operation that
cannot be placed after it with the states it could have seen, a minimal window of operations
that still fails (shrunk automatically), and a name:

- ``stale read``: the value read had certainly been overwritten before the read began;
- ``lost write``: as a stale read, and no later read ever sees the overwriting write or
  anything newer: the acknowledged write vanished;
- ``read of a value never written``;
- ``cas anomaly``: a compare-and-set that succeeded from an impossible value;
- ``other``: anything else (mutex, multi-register, append, real-time orders).
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field
from typing import Any

from checker.history import Op
from checker.models import ILLEGAL, Model, _show
from checker.search import Search

__all__ = ["ANOMALY_NAMES", "Anomaly", "explain", "explain_witness"]

ANOMALY_NAMES = (
    "stale read",
    "lost write",
    "read of a value never written",
    "cas anomaly",
    "other",
)
_SHOWN_PREFIX = 12


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, frozenset | set):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _op_dict(op: Op) -> dict[str, Any]:
    return {
        "process": _jsonable(op.process),
        "f": op.f,
        "key": _jsonable(op.key),
        "value": _jsonable(op.value),
        "type": "info" if op.ret is None else "ok",
        "line": op.line,
    }


def explain(key: Hashable, search: Search, *, shrink_s: float = 1.0) -> Anomaly:
    """Explain the False verdict of a finished `search` of the sub-history under `key`."""
    model = search.model
    best = search.best
    prefix = search.linearized(best)
    pending = search.pending(best)
    blocker = pending[0] if search.best_blocker is None else search.comp[search.best_blocker]
    states = search.states_seen_by(blocker)[:10]
    ops = sorted(search.comp + search.info, key=lambda o: o.call)
    window = shrink(model, ops, blocker, deadline=time.monotonic() + shrink_s)
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
    key = "" if anomaly.key is None else f"key {anomaly.key!r}: "
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
    whether a write was lost is judged on `everything` (default: `ops`)."""
    if blocker.f == "cas":
        return "cas anomaly", {"summary": "a compare-and-set succeeded from an impossible value"}
    seen = model.observes(blocker)
    if not model.pure(blocker) or not seen:
        return "other", {}
    value = seen[0]
    producers = [op for op in ops if value in model.produces(op)]
    initial = value == model.initial()
    if not producers and not initial:
        return "read of a value never written", {
            "summary": f"no operation ever wrote {_show(value)}"
        }
    # Witnesses that the value had changed before the read began: completed writes of
    # another value, and completed reads of another value (a read that began after every
    # write of ours ended, and saw something else, saw it overwritten).
    witnesses = [
        op
        for op in ops
        if op.ret is not None
        and op.ret < blocker.call
        and op.id != blocker.id
        and any(v != value for v in (*model.produces(op), *_reads(model, op)))
    ]
    stale = all(
        p.ret is not None and any(p.ret < w.call for w in witnesses) for p in producers
    ) and (not initial or bool(witnesses))
    if not stale or not witnesses:
        return "other", {}
    # Name a witness that began after every write of the value ended: a write if one did.
    after = [w for w in witnesses if all(p.ret is not None and p.ret < w.call for p in producers)]
    writes = [w for w in after if model.produces(w)]
    last = max(writes or after or witnesses, key=lambda w: w.ret if w.ret is not None else 0)
    how = "by" if writes else "as seen by"
    summary = (
        f"{_show(value)} had certainly been overwritten ({how} {model.describe(last)}, "
        f"line {last.line}) before the read began"
    )
    if writes and _lost(model, ops if everything is None else everything, last, blocker):
        return "lost write", {"summary": summary + "; no later read ever saw it or anything newer"}
    return "stale read", {"summary": summary}


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
