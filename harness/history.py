"""The history of a run: its records (`Op`), its client ops paired (`OpSpan`), its file.

`history.jsonl` holds one JSON object per line: `index` (dense from 0), `time` (ns since
the test began), `type` (invoke|ok|fail|info), `process` (int, or "nemesis"), `f`, and
optional `key`, `value`, `error`; nemesis records add `fault`. `HistoryWriter` writes it
as the run goes (lines reach the OS at least every `flush_interval_s`, so a SIGKILLed
harness loses at most that much); `read_ops` reads it back, only ever through
`checker.read_history`, so `harness check`, `analyze` and the report agree on what a
history says. An `Op` turns back into the very JSON object it came from (`Op.to_json`):
fields it does not name are kept, and so is the order of the keys.
"""

from __future__ import annotations

import json
import math
import operator
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import checker
from checker import NEMESIS

__all__ = [
    "HistoryWriter",
    "Op",
    "OpSpan",
    "ops_from_json",
    "pair_ops",
    "read_ops",
]

_REQUIRED = ("index", "time", "type", "process", "f")
_NAMED = (*_REQUIRED, "key", "value", "error")
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
# Key orders seen, shared between Ops: a history has a handful, and a tuple per op of a
# million-op history would cost ~100 MB. Each with the keys Op does not name (its
# `extra`). Bounded, as a hostile history could vary them.
_KEY_ORDERS: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
_KEY_ORDERS_MAX = 1024
# Per key order that names only Op's fields: the getter of their values, in that order.
_GETTERS: dict[tuple[str, ...], Callable[[Op], tuple[Any, ...]]] = {}
_ATTRS = {"time": "time_ns"}
# json.dumps(record, separators=...) builds an encoder per call; this one is reused.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
# A client op's key orders (HistoryWriter.record_client), by (has a key, has an error).
_CLIENT_KEYS = {
    (False, False): (*_REQUIRED, "value"),
    (True, False): (*_REQUIRED, "key", "value"),
    (False, True): (*_REQUIRED, "value", "error"),
    (True, True): (*_REQUIRED, "key", "value", "error"),
}


# Not frozen, for the cost of a frozen __init__ (see raftkv.types.Message); never changed
# after it is made, hashed and compared as a frozen one would be.
@dataclass(slots=True, unsafe_hash=True)
class Op:
    """One history record: an invocation or completion of a client op (`process` an int),
    or a fault's (`process` is `NEMESIS`). `time_ns` is ns since the test began; `type` is
    invoke|ok|fail|info; `key`, `value` and `error` are None when the record has none.

    `extra` holds the record's fields this model does not name (a nemesis record's
    `fault`, whatever a foreign history adds); `json_keys` its keys in their order, which
    `to_json` writes back ((), the default, means index, time, type, process, f, `key`
    unless None, `value`, `error` unless None, then `extra`). So
    `Op.from_json(record).to_json() == record`, key order included: results.json copies
    nemesis records as they are."""

    index: int
    time_ns: int
    type: str
    process: int | str
    f: str
    key: Any = None
    value: Any = None
    error: Any = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _NO_EXTRA)
    json_keys: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Op:
        """The Op of one history.jsonl object. It must have index, time, type, process and
        f (KeyError otherwise); their types are `checker.read_history`'s to check."""
        keys = tuple(record)
        known = _KEY_ORDERS.get(keys)
        if known is None:
            known = (keys, tuple(k for k in keys if k not in _NAMED))
            if len(_KEY_ORDERS) < _KEY_ORDERS_MAX:
                _KEY_ORDERS[keys] = known
        keys, extras = known
        extra = {k: record[k] for k in extras} if extras else _NO_EXTRA
        return cls(
            record["index"], record["time"], record["type"], record["process"], record["f"],
            record.get("key"), record.get("value"), record.get("error"), extra, keys,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The history.jsonl object of this record."""
        keys = self.json_keys or self._writer_keys()
        getter = _GETTERS.get(keys) or _getter(keys)
        if getter is not None:
            return dict(zip(keys, getter(self)))
        named = {
            "index": self.index, "time": self.time_ns, "type": self.type,
            "process": self.process, "f": self.f, "key": self.key, "value": self.value,
            "error": self.error,
        }  # fmt: skip
        return {k: named[k] if k in named else self.extra[k] for k in keys}

    def _writer_keys(self) -> tuple[str, ...]:
        key = ("key",) if self.key is not None else ()
        error = ("error",) if self.error is not None else ()
        return (*_REQUIRED, *key, "value", *error, *self.extra)


def _getter(keys: tuple[str, ...]) -> Callable[[Op], tuple[Any, ...]] | None:
    """The getter of `keys`' values from an Op, kept for the next; None when some key is
    not an Op field (or there is no room left)."""
    # Two keys at least: attrgetter of one name returns the value, not a 1-tuple.
    if len(keys) < 2 or len(_GETTERS) >= _KEY_ORDERS_MAX or any(k not in _NAMED for k in keys):
        return None
    getter = _GETTERS[keys] = operator.attrgetter(*(_ATTRS.get(k, k) for k in keys))
    return getter


def ops_from_json(records: Iterable[Mapping[str, Any]]) -> list[Op]:
    """`Op.from_json` of each history.jsonl object, in order. A record that is no object
    or lacks a field Op requires is a `checker.HistoryError` naming it (1-based)."""
    ops: list[Op] = []
    for line, record in enumerate(records, 1):
        try:
            ops.append(Op.from_json(record))
        except (KeyError, TypeError, AttributeError):
            fields = ", ".join(_REQUIRED)
            raise checker.HistoryError(
                f"a record must be an object with {fields}", line=line
            ) from None
    return ops


def read_ops(path: Path) -> list[Op]:
    """The records of a run's `history.jsonl`, read as `harness check` and `analyze` read it
    (`checker.read_history`): a torn last line (a killed run) is left out; any other line
    that does not read is a `checker.HistoryError` naming it."""
    records = checker.read_history(str(path), "jsonl", keep_records=True).records
    assert records is not None
    return ops_from_json(records)


@dataclass(frozen=True, slots=True)
class OpSpan:
    """A client op from invocation to completion. `index` and `start_ns` are the
    invocation's; `end_ns` the completion's time, None when it never completed. `type` is
    the completion's (ok|fail|info), info too when it never completed: either way it may
    have taken effect at any time after it began. `value` is an ok completion's (what a
    read returned), else the invocation's (what a write meant to write)."""

    index: int
    process: int | str
    f: str
    key: Any
    value: Any
    type: str
    start_ns: int
    end_ns: int | None

    @property
    def done_by_ns(self) -> float:
        """When the op had certainly taken effect, if it ever did: `end_ns` for ok and fail,
        inf for info."""
        if self.type == "info" or self.end_ns is None:
            return math.inf
        return self.end_ns

    @property
    def written(self) -> Any:
        """The value the op writes if it takes effect: a write's value, a cas's new value;
        None for reads and malformed cas values."""
        if self.f == "write":
            return self.value
        if self.f == "cas" and isinstance(self.value, list) and len(self.value) == 2:
            return self.value[1]
        return None


def pair_ops(ops: Iterable[Op]) -> list[OpSpan]:
    """The client ops of a history, each invocation paired with its process's next
    completion, in the order they completed; then the ops that never completed, in the
    order of their processes' first invocations. Nemesis records are left out, and so is a
    completion without an invocation."""
    open_ops: dict[int | str, Op] = {}
    spans: list[OpSpan] = []
    for op in ops:
        if op.process == NEMESIS:
            continue
        if op.type == "invoke":
            open_ops[op.process] = op
            continue
        invoked = open_ops.pop(op.process, None)
        if invoked is not None:
            spans.append(_span(invoked, op))
    spans.extend(_span(invoked, None) for invoked in open_ops.values())
    return spans


def _span(invoked: Op, done: Op | None) -> OpSpan:
    if done is None:
        return OpSpan(
            invoked.index, invoked.process, invoked.f, invoked.key, invoked.value, "info",
            invoked.time_ns, None,
        )  # fmt: skip
    value = done.value if done.type == "ok" else invoked.value
    return OpSpan(
        invoked.index, invoked.process, invoked.f, invoked.key, value, done.type,
        invoked.time_ns, done.time_ns,
    )  # fmt: skip


def _json(value: Any) -> str:
    """`value` as json.dumps writes it inside a record (ensure_ascii, no spaces)."""
    if type(value) is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _ENCODE(value)


_NAME_JSON: dict[str, str] = {}
_NAME_JSON_MAX = 256


def _name_json(name: str) -> str:
    """`_json(name)` for an op's type or f, remembered (at most `_NAME_JSON_MAX` names)."""
    encoded = _NAME_JSON.get(name)
    if encoded is None:
        encoded = _json(name)
        if len(_NAME_JSON) < _NAME_JSON_MAX:
            _NAME_JSON[name] = encoded
    return encoded


class HistoryWriter:
    """Appends ops with dense indexes and test-relative nanosecond times; `ops` holds
    every Op recorded so far. `clock`, when given, tells the time instead (a simulation's
    virtual nanoseconds)."""

    def __init__(
        self,
        path: Path,
        flush_interval_s: float = 1.0,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._file: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - long-lived
        self._t0_ns = time.monotonic_ns()
        self._next_index = 0
        self._flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self.ops: list[Op] = []

    def now_ns(self) -> int:
        if self._clock is not None:
            return self._clock()
        return time.monotonic_ns() - self._t0_ns

    def record(self, type_: str, process: int | str, f: str, **fields: Any) -> Op:
        """Record one op. `fields` are written in the order given; a None field is left
        out, except `value` (a read's invocation has value null)."""
        record: dict[str, Any] = {
            "index": self._next_index,
            "time": self.now_ns(),
            "type": type_,
            "process": process,
            "f": f,
        }
        for k, v in fields.items():
            if v is not None or k == "value":
                record[k] = v
        self._next_index += 1
        self._file.write(_ENCODE(record) + "\n")
        op = Op.from_json(record)
        self.ops.append(op)
        if time.monotonic() - self._last_flush >= self._flush_interval_s:
            self.flush()
        return op

    def record_client(
        self, type_: str, process: int | str, f: str, key: Any, value: Any, error: Any = None
    ) -> Op:
        """`record(type_, process, f, key=key, value=value, error=error)`, the same line
        and Op, written without building the record's dict and encoding it whole (a 60-s
        sim run records 150,000 client ops)."""
        index = self._next_index
        self._next_index = index + 1
        time_ns = self.now_ns()
        # index and time are ints (their str is their JSON); type and f come from a few
        # names, each encoded once.
        line = (
            f'{{"index":{index:d},"time":{time_ns:d},"type":{_name_json(type_)},'
            f'"process":{_json(process)},"f":{_name_json(f)}'
        )
        if key is not None:
            line += f',"key":{_json(key)}'
        line += f',"value":{_json(value)}'
        if error is not None:
            line += f',"error":{_json(error)}'
        self._file.write(line + "}\n")
        keys = _CLIENT_KEYS[key is not None, error is not None]
        op = Op(index, time_ns, type_, process, f, key, value, error, _NO_EXTRA, keys)
        self.ops.append(op)
        if time.monotonic() - self._last_flush >= self._flush_interval_s:
            self.flush()
        return op

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()
