"""Histories: the records a test writes.

A history is a sequence of `Event` records in the order they happened (Jepsen's model):
every client operation is an ``invoke`` followed by at most one completion, ``ok`` (it took
effect), ``fail`` (it certainly did not take effect) or ``info`` (unknown). A process is
single-threaded; after ``info`` a worker continues under a new process id. Events of the
process ``"nemesis"`` are fault records and are not operations. `checker.ops` pairs them
into the operations a checker reasons about.
"""

from __future__ import annotations

import gc
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from checker.errors import HistoryError

__all__ = [
    "DEPTH_MAX",
    "NEMESIS",
    "TYPES",
    "Event",
    "HistoryError",
    "brief",
    "paused_gc",
    "show_key",
]

NEMESIS = "nemesis"
TYPES = ("invoke", "ok", "fail", "info")
DEPTH_MAX = 100
"""How deeply values may nest (collections in collections); deeper is a `HistoryError`, so
nothing downstream (hashing, comparing, printing) recurses without bound."""
_BRIEF_CHARS = 60
_FIELDS = ("type", "process", "f", "value", "key", "time_ns", "line", "has_value")


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


class Event:
    """One history record; read-only by contract.

    `type` is one of `TYPES`; `process` an int or ``"nemesis"``; `key` is None for unkeyed
    histories; `value` is None when the record has none (`has_value` tells absent from null).
    `line` is the 1-based source line, for messages.
    """

    # Written out rather than a frozen dataclass: a reader makes one per record, and this
    # constructor costs about a third of the frozen one's setting of each field through
    # object.__setattr__ (mypyc, where it compiles this module, makes it cheaper still).
    __slots__ = _FIELDS

    def __init__(
        self,
        type: str,
        process: Hashable,
        f: str,
        value: Any = None,
        key: Hashable | None = None,
        time_ns: int | None = None,
        line: int | None = None,
        has_value: bool = True,
    ) -> None:
        self.type = type
        self.process = process
        self.f = f
        self.value = value
        self.key = key
        self.time_ns = time_ns
        self.line = line
        self.has_value = has_value

    def fields(self) -> tuple[Any, ...]:
        """The fields in order, as `dataclasses.astuple` would give them."""
        return (
            self.type,
            self.process,
            self.f,
            self.value,
            self.key,
            self.time_ns,
            self.line,
            self.has_value,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.fields() == other.fields()

    def __hash__(self) -> int:
        return hash(self.fields())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(_FIELDS, self.fields()))
        return f"Event({shown})"


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
