"""Operations: a history's invocations paired with their completions.

`pair` turns `Event` records into `Op` values: failed operations are dropped, and operations
that ended in ``info`` or never completed become *indeterminate* (``ret is None``): they may
take effect at any single point after their call, or never.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from checker.history import NEMESIS, Event, HistoryError, brief

__all__ = ["Op", "pair"]

_FIELDS = ("id", "process", "f", "value", "key", "call", "ret", "line")


class Op:
    """One client operation as the checker sees it; read-only by contract.

    `call` and `ret` are positions in the event sequence (time is record order); `ret` is None
    for an indeterminate operation. `value` is the completion's value when the operation
    completed with one (a read's result), else the invocation's (a write's argument).
    `id` is the operation's position among all operations of its history.
    """

    # Written out rather than a dataclass: pairing makes one per operation, and this
    # constructor costs a third of a compiled dataclass's (mypyc keeps the generated Python
    # __init__) and half a frozen one's in pure Python. Not frozen, though nothing may change
    # an Op once made (it is hashed).
    __slots__ = _FIELDS

    def __init__(
        self,
        id: int,
        process: Hashable,
        f: str,
        value: Any,
        key: Hashable | None,
        call: int,
        ret: int | None,
        line: int | None = None,
    ) -> None:
        self.id = id
        self.process = process
        self.f = f
        self.value = value
        self.key = key
        self.call = call
        self.ret = ret
        self.line = line

    @property
    def indeterminate(self) -> bool:
        return self.ret is None

    def fields(self) -> tuple[Any, ...]:
        """The fields in order, as `dataclasses.astuple` would give them."""
        return (self.id, self.process, self.f, self.value, self.key, self.call, self.ret, self.line)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Op) and self.fields() == other.fields()

    def __hash__(self) -> int:
        return hash(self.fields())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(_FIELDS, self.fields()))
        return f"Op({shown})"


def pair(events: Iterable[Event], *, file: str | None = None) -> list[Op]:
    """Pair invocations with completions by process; raises `HistoryError` on nonsense."""
    pending: dict[Hashable, int] = {}  # process -> its pending invocation's place in `invokes`
    invokes: list[Event] = []
    calls: list[int] = []
    ends: list[Event | None] = []
    rets: list[int] = []
    for pos, ev in enumerate(events):
        process = ev.process
        if isinstance(process, str) and process == NEMESIS:  # most processes are ints: cheaper
            continue
        if ev.type == "invoke":
            if process in pending:
                raise HistoryError(
                    f"process {brief(process)} invokes while its previous operation is pending",
                    file=file,
                    line=ev.line,
                )
            pending[process] = len(invokes)
            invokes.append(ev)
            calls.append(pos)
            ends.append(None)
            rets.append(pos)
            continue
        n = pending.pop(process, None)
        if n is None:
            if ev.type == "info":
                continue  # an info with nothing pending is noise, as in Jepsen
            raise HistoryError(
                f"{ev.type} for process {brief(process)} with no pending invoke",
                file=file,
                line=ev.line,
            )
        if ev.f != invokes[n].f:
            raise HistoryError(
                f"completion f {brief(ev.f)} does not match invoke f {brief(invokes[n].f)}",
                file=file,
                line=ev.line,
            )
        ends[n] = ev
        rets[n] = pos
    return _ops(invokes, calls, ends, rets)


def _ops(
    invokes: list[Event], calls: list[int], ends: list[Event | None], rets: list[int]
) -> list[Op]:
    """The operations of paired invocations, failed ones dropped, in invocation order."""
    ops: list[Op] = []
    for inv, call, end, ret in zip(invokes, calls, ends, rets):
        if end is None or end.type == "info":
            ops.append(Op(len(ops), inv.process, inv.f, inv.value, inv.key, call, None, inv.line))
        elif end.type == "ok":
            value = end.value if end.has_value else inv.value
            if value is None and not _is_read(inv):
                value = inv.value
            ops.append(Op(len(ops), inv.process, inv.f, value, inv.key, call, ret, inv.line))
    return ops


def _is_read(inv: Event) -> bool:
    """An invocation whose value is a placeholder for the result (a null argument)."""
    return inv.value is None
