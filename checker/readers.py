"""Readers for every history format the checker accepts, with format auto-detection.

Formats (see the README section "Checking histories"):

- ``jsonl``: our ``history.jsonl``, one JSON object per line.
- ``jepsen-edn``: Jepsen's ``history.edn``, one EDN map per line (``#jepsen.history.Op`` tags
  allowed).
- ``knossos-edn``: one EDN vector or list of op maps (Knossos's ``data/``).
- ``porcupine-kv``: Porcupine's get/put/append kv logs (EDN maps with ``:key``).
- ``jepsen-etcd-log``: Jepsen etcd test logs (``INFO  jepsen.util - P  :type  :f  value``).

Every reader returns a `History` or raises `HistoryError` naming the file and line. This
module holds the public API, format detection and the ``jsonl`` reader; the EDN readers are
in `checker.edn_readers`, the log readers in `checker.log_readers`, and what makes a record
an event, which they all share, in `checker.records`.
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from checker.edn import EdnError
from checker.edn_readers import jepsen_edn, knossos_edn
from checker.history import Event, HistoryError, brief, paused_gc
from checker.log_readers import etcd_record, jepsen_etcd_log, porcupine_kv
from checker.records import numbered_lines, record_event

__all__ = [
    "FORMATS",
    "History",
    "as_history",
    "detect_format",
    "load_json",
    "parse_history",
    "read_history",
]

FORMATS = ("jsonl", "jepsen-edn", "knossos-edn", "porcupine-kv", "jepsen-etcd-log")


@dataclass(slots=True)
class History:
    """Events of one history, in record order, and the format they were read from.

    `warnings` says what was read but ignored: only ever a torn last line of a ``jsonl``
    history (a killed test's last write), never anything else. `records` holds the JSON
    objects of a ``jsonl`` history as read, when asked for (`keep_records`).
    """

    events: list[Event]
    format: str
    file: str | None = None
    warnings: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] | None = None


def as_history(history: History | Sequence[Event] | Sequence[dict[str, Any]]) -> History:
    """`history` as a `History`: a parsed one as is, a sequence of `Event` or of dicts shaped
    like ``history.jsonl`` records (line numbers are their 1-based positions)."""
    if isinstance(history, History):
        return history
    events: list[Event] = []
    for n, rec in enumerate(history, 1):
        if isinstance(rec, Event):
            events.append(rec)
        elif isinstance(rec, dict):
            events.append(record_event(rec, n, None))
        else:
            raise HistoryError(f"expected an Event or a dict, got {type(rec).__name__}", line=n)
    return History(events, "jsonl")


def read_history(path: str, fmt: str | None = None, *, keep_records: bool = False) -> History:
    """Read and parse the history file at `path` (UTF-8); `fmt` forces a format.

    With `keep_records`, a ``jsonl`` history also keeps its records (`History.records`), and
    each must have its time. Raises `HistoryError` naming the file and line of what is wrong.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise HistoryError(f"cannot read: {exc.strerror or exc}", file=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _torn_in_utf8(data, exc, fmt, path, keep_records)
    del data
    return parse_history(text, fmt, file=path, keep_records=keep_records)


def _torn_in_utf8(
    data: bytes, exc: UnicodeDecodeError, fmt: str | None, path: str, keep_records: bool
) -> History:
    """A jsonl history whose last, unterminated line is a record cut inside a character is
    torn there; anything else that is not UTF-8 is an error naming its line."""
    cut = data.rfind(b"\n") + 1
    line = data.count(b"\n", 0, exc.start) + 1
    if exc.start >= cut and _cut_in_a_character(data[cut:]):
        try:
            text = data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and (fmt or detect_format(text, path)) == "jsonl":
            history = parse_history(text, "jsonl", file=path, keep_records=keep_records)
            history.warnings.append(_torn(path, line, len(data) - cut))
            return history
    column = exc.start - data.rfind(b"\n", 0, exc.start)
    raise HistoryError(
        f"not UTF-8: byte {data[exc.start]:#04x} at column {column}", file=path, line=line
    )


def _cut_in_a_character(tail: bytes) -> bool:
    """Whether `tail` is the start of a record whose last character lost a byte or more."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(tail, final=False)
    except UnicodeDecodeError:
        return False
    return _begins_a_record(text)


def _begins_a_record(line: str) -> bool:
    return line.lstrip().startswith("{")


def parse_history(
    text: str, fmt: str | None = None, *, file: str | None = None, keep_records: bool = False
) -> History:
    """Parse history `text`; `fmt` is one of `FORMATS`, or None to detect it. `keep_records`
    as for `read_history`."""
    if fmt is None:
        fmt = detect_format(text, file)
    reader = _READERS.get(fmt)
    if reader is None and fmt != "jsonl":
        raise HistoryError(
            f"unknown format {brief(fmt)}; expected one of {', '.join(FORMATS)}", file=file
        )
    try:
        with paused_gc():
            if reader is None:
                return _jsonl(text, file, keep_records)
            return History(reader(text, file), fmt, file)
    except EdnError as exc:
        raise HistoryError(exc.message, file=file, line=exc.line) from None


def _porcupine_line(line: str) -> bool:
    """A record of Porcupine's kv logs: a :key and one of its three ops, and no :time
    (Jepsen's records have one, and may have a :key too)."""
    return (
        ":time" not in line
        and re.search(r":key\s", line) is not None
        and re.search(r":f\s+:(?:get|put|append)\b", line) is not None
    )


def detect_format(text: str, file: str | None = None) -> str:
    """Guess the format from the first meaningful line (and the file name if empty)."""
    for lineno, raw, _ in numbered_lines(text):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("{") and line[1:].lstrip().startswith('"'):
            return "jsonl"
        if line[0] in "[(":
            return "knossos-edn"
        if etcd_record(line):
            return "jepsen-etcd-log"
        if line.startswith(("{", "#")):
            return "porcupine-kv" if _porcupine_line(line) else "jepsen-edn"
        raise HistoryError("unrecognised history format", file=file, line=lineno)
    name = file or ""
    if name.endswith(".log"):
        return "jepsen-etcd-log"
    if name.endswith(".edn"):
        return "jepsen-edn"
    return "jsonl"


def _torn(file: str | None, line: int, size_bytes: int) -> str:
    return f"{file or '<history>'}: last line (line {line}) is torn, {size_bytes} bytes ignored"


def _jsonl(text: str, file: str | None, keep_records: bool) -> History:
    history = History([], "jsonl", file, records=[] if keep_records else None)
    events, records = history.events, history.records
    for lineno, raw, ended in numbered_lines(text):
        if not raw.strip():
            continue
        try:
            rec = _load_record(raw, file, lineno)
        except HistoryError:
            if ended or not _begins_a_record(raw):
                raise
            history.warnings.append(_torn(file, lineno, len(raw.encode("utf-8"))))
            break
        events.append(_jsonl_event(rec, lineno, file, len(events), keep_records))
        if records is not None:
            records.append(rec)
    return history


def _load_record(raw: str, file: str | None, line: int) -> Any:
    """`load_json(raw, file, line)`; a line that is just one JSON value, as our records are,
    read with one call of the decoder instead of the several of `json.loads`."""
    try:
        rec, end = _DECODER.raw_decode(raw)
        if end == len(raw):
            return rec
    except (ValueError, RecursionError):
        pass  # load_json says what is wrong
    return load_json(raw, file, line)


_DECODER = json.JSONDecoder()


def load_json(raw: str, file: str | None, line: int = 1) -> Any:
    """`json.loads(raw)`, where `raw` starts at `line` of `file`; whatever it cannot read is
    a `HistoryError` naming the file and line."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        why = f"bad JSON: {exc.msg} (column {exc.colno})"
        line += exc.lineno - 1
    except RecursionError:
        why = "JSON nested too deeply"
    except ValueError:
        # The only other failure: an integer too long to convert in linear time.
        why = f"an integer has more than {sys.get_int_max_str_digits()} digits"
    raise HistoryError(why, file=file, line=line)


def _jsonl_event(rec: Any, lineno: int, file: str | None, index: int, time_required: bool) -> Event:
    if isinstance(rec, dict) and rec.get("index") != index:
        raise HistoryError(
            f"index {brief(rec.get('index'))}, expected {index} (dense from 0)",
            file=file,
            line=lineno,
        )
    if time_required and isinstance(rec, dict) and rec.get("time") is None:
        raise HistoryError("time is missing (ns)", file=file, line=lineno)
    return record_event(rec, lineno, file)


_READERS: dict[str, Callable[[str, str | None], list[Event]]] = {
    "jepsen-edn": jepsen_edn,
    "knossos-edn": knossos_edn,
    "porcupine-kv": porcupine_kv,
    "jepsen-etcd-log": jepsen_etcd_log,
}
