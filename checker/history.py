"""Histories: the records a test writes, and the operations a checker reasons about.

A history is a sequence of `Event` records in the order they happened (Jepsen's model):
every client operation is an ``invoke`` followed by at most one completion, ``ok`` (it took
effect), ``fail`` (it certainly did not take effect) or ``info`` (unknown). A process is
single-threaded; after ``info`` a worker continues under a new process id. Events of the
process ``"nemesis"`` are fault records and are not operations.

`pair` turns events into `Op` values: failed operations are dropped, and operations that ended
in ``info`` or never completed become *indeterminate* (``ret is None``): they may take effect
at any single point after their call, or never.
"""

from __future__ import annotations

import gc
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEPTH_MAX",
    "NEMESIS",
    "TYPES",
    "Event",
    "HistoryError",
    "Op",
    "brief",
    "pair",
    "paused_gc",
    "show_key",
]

NEMESIS = "nemesis"
TYPES = ("invoke", "ok", "fail", "info")
DEPTH_MAX = 100
"""How deeply values may nest (collections in collections); deeper is a `HistoryError`, so
nothing downstream (hashing, comparing, printing) recurses without bound."""
_BRIEF_CHARS = 60


class HistoryError(ValueError):
    """A history that cannot be read or makes no sense; names the file and line when known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        where = file or "<history>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


def brief(value: Any) -> str:
    """`repr(value)` cut to a few dozen characters, to quote bad input in a message."""
    text = repr(value[: _BRIEF_CHARS + 1] if isinstance(value, str) else value)
    return text if len(text) <= _BRIEF_CHARS else text[:_BRIEF_CHARS] + "..."


def show_key(key: Any) -> str:
    """A key as a person reads it: a string key as it is (`k0`), unless it is empty or holds
    white space (then quoted, as any other key is shown by its repr)."""
    if isinstance(key, str) and key and not any(c.isspace() for c in key):
        return key
    return repr(key)


@dataclass(frozen=True, slots=True)
class Event:
    """One history record.

    `type` is one of `TYPES`; `process` an int or ``"nemesis"``; `key` is None for unkeyed
    histories; `value` is None when the record has none (`has_value` tells absent from null).
    `line` is the 1-based source line, for messages.
    """

    type: str
    process: Hashable
    f: str
    value: Any = None
    key: Hashable | None = None
    time_ns: int | None = None
    line: int | None = None
    has_value: bool = True


# Not frozen, though nothing may change an Op once made (it is hashed): a frozen dataclass's
# constructor costs five times as much, most of pairing a small history.
@dataclass(slots=True, unsafe_hash=True)
class Op:
    """One client operation as the checker sees it; read-only by contract.

    `call` and `ret` are positions in the event sequence (time is record order); `ret` is None
    for an indeterminate operation. `value` is the completion's value when the operation
    completed with one (a read's result), else the invocation's (a write's argument).
    `id` is the operation's position among all operations of its history.
    """

    id: int
    process: Hashable
    f: str
    value: Any
    key: Hashable | None
    call: int
    ret: int | None
    line: int | None = None

    @property
    def indeterminate(self) -> bool:
        return self.ret is None


def pair(events: Iterable[Event], *, file: str | None = None) -> list[Op]:
    """Pair invocations with completions by process; raises `HistoryError` on nonsense."""
    pending: dict[Hashable, int] = {}  # process -> its pending invocation's place in `invokes`
    invokes: list[Event] = []
    calls: list[int] = []
    ends: list[Event | None] = []
    rets: list[int] = []
    for pos, ev in enumerate(events):
        process = ev.process
        if process == NEMESIS:
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


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building millions of acyclic records otherwise
    triggers full collections over an ever larger heap."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
