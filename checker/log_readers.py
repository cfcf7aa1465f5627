"""The readers of log-like histories, one record a line: Porcupine's kv logs (EDN maps with
a ``:key``) and Jepsen's etcd test logs (``INFO  jepsen.util - P  :type  :f  value``).

Each reads all its lines with one regex over the whole text and makes the events column by
column (an etcd log's distinct process and value texts parsed once each, `_Parsed`), as
such logs are long runs of records alike. Lines the regex does not read as records go
through the EDN reader (kv logs) or a reader of one log line at a time (etcd logs), which
also says where what is wrong is.
"""

from __future__ import annotations

import heapq
import re
import sys
from collections.abc import Callable
from itertools import compress
from operator import attrgetter
from typing import Any

from checker.edn import EdnError, parse_all, parse_atom, parse_one
from checker.history import NEMESIS, TYPES, Event, HistoryError, brief
from checker.records import TYPE_NAMES, Unusual, new_events, numbered_lines, op_event

__all__ = ["etcd_record", "jepsen_etcd_log", "porcupine_kv"]


# Every line: Porcupine's usual line (groups: process, type, f, key, value), read without
# the EDN reader, or any other line (the last group), which goes through it (escapes in
# strings, a process of more digits than an int64 has).
_KV_LINE = re.compile(
    r'^(?:\{:process (\d{1,18}+), :type :(invoke|ok|fail|info), :f :(\w++), :key "([^"\\]*+)", '
    r':value (nil|"[^"\\]*+")\}[^\S\n]*+|(.*+))$',
    re.M,
)


def porcupine_kv(text: str, file: str | None) -> list[Event]:
    """Porcupine's usual lines read column by column, any other line by the EDN reader, in
    line order."""
    rows = _KV_LINE.findall(text)
    if not rows:
        return []
    procs, types, fs, keys, values, others = zip(*rows)
    lines = list(compress(range(1, len(rows) + 1), types))
    events = new_events(
        list(map(TYPE_NAMES.__getitem__, compress(types, types))),
        list(map(int, compress(procs, types))),
        list(map(sys.intern, compress(fs, types))),
        list(map(_kv_value, compress(values, types))),
        list(compress(keys, types)),
        [None] * len(lines),
        lines,
        [True] * len(lines),
    )
    others_read = [
        _edn_line(other, lineno, file)
        for lineno, other in zip(compress(range(1, len(rows) + 1), others), filter(None, others))
        if other.strip()
    ]
    if others_read:
        return list(heapq.merge(events, others_read, key=attrgetter("line")))
    return events


def _kv_value(text: str) -> str | None:
    return None if text == "nil" else text[1:-1]


def _edn_line(raw: str, lineno: int, file: str | None) -> Event:
    try:
        forms = parse_all(raw)
    except EdnError as exc:
        raise HistoryError(exc.message, file=file, line=lineno) from None
    if len(forms) != 1 or not isinstance(forms[0].value, dict):
        raise HistoryError("expected one map per line", file=file, line=lineno)
    return op_event(forms[0].value, lineno, file)


_ETCD_TYPES = {f":{t}": t for t in TYPES}


def etcd_record(line: str) -> str | None:
    """What follows ``LEVEL jepsen.util -`` on a log line of a jepsen.util record, else
    None. Split on whitespace, not matched with a regex: runs of spaces stay linear."""
    if line[:1].isspace():
        return None
    parts = line.split(None, 3)
    if len(parts) < 3 or parts[1] != "jepsen.util" or parts[2] != "-":
        return None
    return parts[3] if len(parts) == 4 else ""


# Every line: a jepsen.util record whose fields are apart by spaces or tabs (groups: process,
# type, f, value), or any other line (the last group). Possessive: runs of spaces stay
# linear.
_ETCD_LINE = re.compile(
    r"^(?:\S++[ \t]++jepsen\.util[ \t]++-[ \t]++(\S++)[ \t]++:(invoke|ok|fail|info)[ \t]++"
    r":(\S++)[ \t]++(\S.*+)|(.*+))$",
    re.M,
)


class _Parsed(dict[str, Any]):
    """The value of each text, parsed once by `parse` for all readers (the most recent
    `_PARSED_MAX`); `Unusual` if it cannot be."""

    def __init__(self, parse: Callable[[str], Any]):
        super().__init__()
        self.parse = parse

    def __missing__(self, text: str) -> Any:
        if len(self) >= _PARSED_MAX:
            self.clear()
        try:
            value = self.parse(text)
        except (ValueError, EdnError):
            raise Unusual from None
        self[text] = value
        return value


_PARSED_MAX = 10_000


def _etcd_process(text: str) -> Any:
    process = parse_atom(text)
    if not isinstance(process, int) and process != NEMESIS:
        raise ValueError(text)
    return process


_ETCD_PROCESSES = _Parsed(_etcd_process)
_ETCD_VALUES = _Parsed(parse_one)


def jepsen_etcd_log(text: str, file: str | None) -> list[Event]:
    """The jepsen.util records of an etcd test log, in line order; other lines are ignored."""
    try:
        return _etcd_log_at_once(text, file)
    except Unusual:
        return _etcd_log_by_line(text, file)


def _etcd_log_at_once(text: str, file: str | None) -> list[Event]:
    """All records read with one regex over the text, their fields converted column by
    column, each distinct text once; other lines as `_etcd_log_by_line` reads them. Raises
    `Unusual` for what is wrong, for `_etcd_log_by_line` to say where."""
    rows = _ETCD_LINE.findall(text)
    if not rows:
        return []
    procs, types, fs, values, others = zip(*rows)
    lines = list(compress(range(1, len(rows) + 1), types))
    events = new_events(
        list(map(TYPE_NAMES.__getitem__, compress(types, types))),
        list(map(_ETCD_PROCESSES.__getitem__, compress(procs, types))),
        list(map(sys.intern, compress(fs, types))),
        list(map(_ETCD_VALUES.__getitem__, compress(values, types))),
        [None] * len(lines),
        [None] * len(lines),
        lines,
        [True] * len(lines),
    )
    others_read = [
        event
        for lineno, other in zip(compress(range(1, len(rows) + 1), others), filter(None, others))
        if (event := _etcd_line(other, lineno, file)) is not None
    ]
    if others_read:
        raise Unusual  # records the regex did not read: rare, left to the line reader
    return events


def _etcd_log_by_line(text: str, file: str | None) -> list[Event]:
    events = []
    for lineno, raw, _ in numbered_lines(text):
        event = _etcd_line(raw, lineno, file)
        if event is not None:
            events.append(event)
    return events


def _etcd_line(raw: str, lineno: int, file: str | None) -> Event | None:
    """The event of a jepsen.util record, None for another log line."""
    rest = etcd_record(raw)
    if rest is None:
        return None
    fields = rest.split(None, 3)
    if len(fields) < 4 or fields[1] not in _ETCD_TYPES or fields[2][:1] != ":":
        raise HistoryError("malformed jepsen.util record", file=file, line=lineno)
    proc, typ, f, value_text = fields[0], _ETCD_TYPES[fields[1]], fields[2][1:], fields[3]
    try:
        process: Any = parse_atom(proc)
        value = parse_one(value_text)
    except (ValueError, EdnError):
        raise HistoryError(f"bad value {brief(value_text)}", file=file, line=lineno) from None
    if not isinstance(process, int) and process != NEMESIS:
        raise HistoryError(f"bad process {brief(proc)}", file=file, line=lineno)
    return Event(typ, process, sys.intern(f), value, None, None, lineno)
