"""What every history reader shares: how a record becomes an `Event`.

A record is a map of fields (a ``history.jsonl`` object, an EDN op map); `event_fields`
checks it is an event and gives that event's fields, the same for every format, so that
each reader says the same thing about the same bad record. Readers that build many events
at once, column by column, do it with `new_events`, and give up on what they cannot read
so (`Unusual`) to be read record by record. `numbered_lines` splits a text into lines as
every line-based format needs.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

from checker.history import DEPTH_MAX, NEMESIS, TYPES, Event, HistoryError, brief

__all__ = [
    "TYPE_NAMES",
    "Fields",
    "Unusual",
    "event_fields",
    "new_events",
    "numbered_lines",
    "op_event",
    "record_event",
]


def numbered_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, whether a newline ends it) for each line of `text`. Lines end
    only at "\n": JSON strings may hold U+2028, U+0085, form feeds and such unescaped."""
    start, lineno, size = 0, 1, len(text)
    find = text.find
    while start < size:
        end = find("\n", start)
        if end < 0:
            yield lineno, text[start:], False
            return
        yield lineno, text[start:end], True
        start, lineno = end + 1, lineno + 1


def record_event(rec: Any, lineno: int, file: str | None) -> Event:
    """The event of one record shaped like a ``history.jsonl`` line (a dict of JSON
    values); raises `HistoryError` at `file`:`lineno` when it is not one."""
    if not isinstance(rec, dict):
        raise HistoryError("a record must be a JSON object", file=file, line=lineno)
    return _event(rec, lineno, file, _frozen(rec.get("value"), file, lineno))


def op_event(rec: Any, lineno: int, file: str | None) -> Event:
    """The event of one EDN op map, whose values the EDN reader has already made hashable;
    raises `HistoryError` at `file`:`lineno` when it is not one."""
    if not isinstance(rec, dict):
        raise HistoryError("an operation must be a map", file=file, line=lineno)
    return _event(rec, lineno, file, rec.get("value"))


def _event(rec: dict[Any, Any], lineno: int, file: str | None, value: Any) -> Event:
    typ, process, f, value, key, time_ns, has_value = event_fields(rec, lineno, file, value)
    return Event(typ, process, f, value, key, time_ns, lineno, has_value)


def event_fields(rec: dict[Any, Any], lineno: int, file: str | None, value: Any) -> Fields:
    """The fields of the event of `rec`, but its line, in the order of `Event`'s; raises
    `HistoryError` at `file`:`lineno` if it is no event."""
    typ = rec.get("type")
    if typ not in TYPES:
        raise HistoryError(
            f"type must be one of {'|'.join(TYPES)}, got {brief(typ)}", file=file, line=lineno
        )
    process = rec.get("process")
    if (
        type(process) is not int
        and process != NEMESIS
        and (not isinstance(process, int) or isinstance(process, bool))
    ):
        raise HistoryError(
            f"process must be an integer or {NEMESIS!r}, got {brief(process)}",
            file=file,
            line=lineno,
        )
    f = rec.get("f")
    if not isinstance(f, str):
        raise HistoryError(f"f must be a name, got {brief(f)}", file=file, line=lineno)
    key = rec.get("key")
    if key is not None and not isinstance(key, Hashable):
        raise HistoryError("key must be a scalar", file=file, line=lineno)
    time_ns = rec.get("time")
    if time_ns is not None and (type(time_ns) is not int):
        raise HistoryError("time must be an integer (ns)", file=file, line=lineno)
    # One string object per type and f, not one per record.
    return TYPE_NAMES[typ], process, sys.intern(f), value, key, time_ns, "value" in rec


Fields = tuple[str, Any, str, Any, Any, int | None, bool]
TYPE_NAMES = {t: t for t in TYPES}


def _frozen(value: Any, file: str | None, line: int, depth: int = 0) -> Any:
    """JSON lists become tuples and objects frozen pairs, so values can be compared and
    hashed; nested at most `DEPTH_MAX` deep."""
    if value is None or type(value) is int or type(value) is str:
        return value
    if depth >= DEPTH_MAX and isinstance(value, list | dict):
        raise HistoryError(f"value nested deeper than {DEPTH_MAX}", file=file, line=line)
    if isinstance(value, list):
        return tuple([_frozen(v, file, line, depth + 1) for v in value])
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v, file, line, depth + 1)) for k, v in value.items()))
    return value


def new_events(*columns: Sequence[Any]) -> list[Event]:
    """The events whose fields, in `Event`'s order, `columns` list (one call of the
    constructor per event, from C)."""
    return list(map(Event, *columns))


class Unusual(Exception):
    """Something a reader of whole columns leaves to a reader of one record at a time."""
