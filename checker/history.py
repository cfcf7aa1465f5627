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
from dataclasses import dataclass
from typing import Any

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
