"""Readers for every history format the checker accepts, with format auto-detection.

Formats (see the README section "Checking histories"):

- ``jsonl``: our ``history.jsonl``, one JSON object per line.
- ``jepsen-edn``: Jepsen's ``history.edn``, one EDN map per line (``#jepsen.history.Op`` tags
  allowed).
- ``knossos-edn``: one EDN vector or list of op maps (Knossos's ``data/``).
- ``porcupine-kv``: Porcupine's get/put/append kv logs (EDN maps with ``:key``).
- ``jepsen-etcd-log``: Jepsen etcd test logs (``INFO  jepsen.util - P  :type  :f  value``).

Every reader returns a `History` or raises `HistoryError` naming the file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from checker.edn import EdnError, Form, parse_all, parse_atom
from checker.history import NEMESIS, TYPES, Event, HistoryError, paused_gc

__all__ = ["FORMATS", "History", "detect_format", "parse_history", "read_history"]

FORMATS = ("jsonl", "jepsen-edn", "knossos-edn", "porcupine-kv", "jepsen-etcd-log")


@dataclass(slots=True)
class History:
    """Events of one history, in record order, and the format they were read from."""

    events: list[Event]
    format: str
    file: str | None = None


def read_history(path: str, fmt: str | None = None) -> History:
    """Read and parse the history file at `path`; `fmt` forces a format."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"cannot read: {exc}", file=path) from None
    return parse_history(text, fmt, file=path)


def parse_history(text: str, fmt: str | None = None, *, file: str | None = None) -> History:
    """Parse history `text`; `fmt` is one of `FORMATS`, or None to detect it."""
    if fmt is None:
        fmt = detect_format(text, file)
    reader = _READERS.get(fmt)
    if reader is None:
        raise HistoryError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    try:
        with paused_gc():
            events = reader(text, file)
    except EdnError as exc:
        raise HistoryError(exc.message, file=file, line=exc.line) from None
    return History(events, fmt, file)


def detect_format(text: str, file: str | None = None) -> str:
    """Guess the format from the first meaningful line (and the file name if empty)."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("{") and line[1:].lstrip().startswith('"'):
            return "jsonl"
        if line[0] in "[(":
            return "knossos-edn"
        if _ETCD_LINE.match(line):
            return "jepsen-etcd-log"
        if line.startswith(("{", "#")):
            return "porcupine-kv" if re.search(r":key\s", text[:4096]) else "jepsen-edn"
        raise HistoryError("unrecognised history format", file=file, line=1)
    name = file or ""
    if name.endswith(".log"):
        return "jepsen-etcd-log"
    if name.endswith(".edn"):
        return "jepsen-edn"
    return "jsonl"


def _jsonl(text: str, file: str | None) -> list[Event]:
    events: list[Event] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HistoryError(f"bad JSON: {exc.msg}", file=file, line=lineno) from None
        if not isinstance(rec, dict):
            raise HistoryError("a record must be a JSON object", file=file, line=lineno)
        if rec.get("index") != len(events):
            raise HistoryError(
                f"index {rec.get('index')!r}, expected {len(events)} (dense from 0)",
                file=file,
                line=lineno,
            )
        time_ns = rec.get("time")
        if time_ns is not None and (not isinstance(time_ns, int) or isinstance(time_ns, bool)):
            raise HistoryError("time must be an integer (ns)", file=file, line=lineno)
        events.append(_event(rec, lineno, file, _frozen(rec.get("value")), time_ns))
    return events


def _event(
    rec: dict[Any, Any], lineno: int, file: str | None, value: Any, time_ns: Any = None
) -> Event:
    typ = rec.get("type")
    if typ not in TYPES:
        raise HistoryError(
            f"type must be one of {'|'.join(TYPES)}, got {typ!r}", file=file, line=lineno
        )
    process = rec.get("process")
    if (
        type(process) is not int
        and process != NEMESIS
        and (not isinstance(process, int) or isinstance(process, bool))
    ):
        raise HistoryError(
            f"process must be an integer or {NEMESIS!r}, got {process!r}", file=file, line=lineno
        )
    f = rec.get("f")
    if not isinstance(f, str):
        raise HistoryError(f"f must be a name, got {f!r}", file=file, line=lineno)
    key = rec.get("key")
    if key is not None and not isinstance(key, Hashable):
        raise HistoryError("key must be a scalar", file=file, line=lineno)
    return Event(typ, process, f, value, key, time_ns, lineno, "value" in rec)


def _frozen(value: Any) -> Any:
    """JSON lists become tuples and objects frozen pairs, so values can be compared and hashed."""
    if value is None or type(value) is int or type(value) is str:
        return value
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


def _edn_maps(text: str, file: str | None) -> list[Event]:
    return _op_maps(parse_all(text), file)


def _op_maps(forms: list[Form], file: str | None) -> list[Event]:
    if len(forms) == 1 and isinstance(forms[0].value, tuple):
        items, lines = forms[0].value, forms[0].item_lines
    else:
        items, lines = tuple(f.value for f in forms), [f.line for f in forms]
    events = []
    for rec, lineno in zip(items, lines):
        if not isinstance(rec, dict):
            raise HistoryError("an operation must be a map", file=file, line=lineno)
        events.append(_event(rec, lineno, file, rec.get("value"), rec.get("time")))
    return events


def _knossos(text: str, file: str | None) -> list[Event]:
    forms = parse_all(text)
    if len(forms) != 1 or not isinstance(forms[0].value, tuple):
        line = forms[1].line if len(forms) > 1 else 1
        raise HistoryError("expected one vector or list of operations", file=file, line=line)
    return _op_maps(forms, file)


_KV_LINE = re.compile(
    r'\{:process (\d+), :type :(invoke|ok|fail|info), :f :(\w+), :key "((?:[^"\\]|\\.)*)", '
    r':value (nil|"(?:[^"\\]|\\.)*")\}\s*'
)


def _porcupine_kv(text: str, file: str | None) -> list[Event]:
    events = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        m = _KV_LINE.fullmatch(raw)
        if m is None:
            events.append(_edn_line(raw, lineno, file))
            continue
        proc, typ, f, key, value = m.groups()
        events.append(
            Event(typ, int(proc), f, None if value == "nil" else value[1:-1], key, None, lineno)
        )
    return events


def _edn_line(raw: str, lineno: int, file: str | None) -> Event:
    try:
        forms = parse_all(raw)
    except EdnError as exc:
        raise HistoryError(exc.message, file=file, line=lineno) from None
    if len(forms) != 1 or not isinstance(forms[0].value, dict):
        raise HistoryError("expected one map per line", file=file, line=lineno)
    rec = forms[0].value
    return _event(rec, lineno, file, rec.get("value"), rec.get("time"))


_ETCD_LINE = re.compile(r"\S+\s+jepsen\.util\s+-\s+")
_ETCD_FIELDS = re.compile(r"(\S+)\s+:(invoke|ok|fail|info)\s+:(\S+)\s*(.*?)\s*")


def _etcd_log(text: str, file: str | None) -> list[Event]:
    events = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        head = _ETCD_LINE.match(raw)
        if head is None:
            continue  # other log lines
        m = _ETCD_FIELDS.fullmatch(raw, head.end())
        if m is None or not m.group(4):
            raise HistoryError("malformed jepsen.util record", file=file, line=lineno)
        proc, typ, f, value_text = m.groups()
        try:
            process: Any = parse_atom(proc)
            value = _etcd_value(value_text)
        except (ValueError, EdnError):
            raise HistoryError(f"bad value {value_text!r}", file=file, line=lineno) from None
        if not isinstance(process, int) and process != NEMESIS:
            raise HistoryError(f"bad process {proc!r}", file=file, line=lineno)
        events.append(Event(typ, process, f, value, None, None, lineno))
    return events


def _etcd_value(text: str) -> Any:
    forms = parse_all(text)
    if len(forms) != 1:
        raise ValueError(text)
    return forms[0].value


_READERS = {
    "jsonl": _jsonl,
    "jepsen-edn": _edn_maps,
    "knossos-edn": _knossos,
    "porcupine-kv": _porcupine_kv,
    "jepsen-etcd-log": _etcd_log,
}
