"""The readers of histories of EDN op maps: Jepsen's ``history.edn`` (one map per line, or
one vector or list of them) and Knossos's (one vector or list of maps).

Most op maps are flat (`Form.flat`: no collection in them but the value) and alike in shape,
and their events are made column by column (`_FlatOps`): each distinct value token read
once, the fields checked a column at a time. What does not read so is read map by map, as
the general EDN reader reads it, to say which map is wrong and why.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

from checker.edn import INT_DIGITS_MAX, SEQUENCE, EdnError, FlatMaps, Form, iter_forms
from checker.history import NEMESIS, Event, HistoryError
from checker.records import TYPE_NAMES, Fields, Unusual, event_fields, new_events, op_event

__all__ = ["jepsen_edn", "knossos_edn"]


def jepsen_edn(text: str, file: str | None) -> list[Event]:
    """One map per top-level form, or one vector or list of maps (as Knossos)."""
    forms = iter_forms(text, unwrap=True, flat=True)
    first = next(forms, None)
    if first is None:
        return []
    if first.value is SEQUENCE:
        return _op_items(forms, file)
    flat_ops = _FlatOps(file)
    events: list[Event] = []
    for form in chain((first,), forms):
        if form.flat:
            events += flat_ops.events(form.value, form.item_lines)
        else:
            events.append(op_event(form.value, form.line, file))
    return events


def knossos_edn(text: str, file: str | None) -> list[Event]:
    """One vector or list of maps, and nothing else."""
    forms = iter_forms(text, unwrap=True, flat=True)
    first = next(forms, None)
    if first is None or first.value is not SEQUENCE:
        line = 1 if first is None else first.line
        raise HistoryError("expected one vector or list of operations", file=file, line=line)
    return _op_items(forms, file)


def _op_items(forms: Iterator[Form], file: str | None) -> list[Event]:
    """The ops of the top-level vector or list whose items `forms` yields next."""
    flat_ops = _FlatOps(file)
    events: list[Event] = []
    for form in forms:
        if form.depth == 0:
            raise HistoryError(
                "expected one vector or list of operations", file=file, line=form.line
            )
        if form.flat:
            events += flat_ops.events(form.value, form.item_lines)
        else:
            events.extend(
                op_event(rec, line, file) for rec, line in zip(form.value, form.item_lines)
            )
    return events


def _same(value: Any) -> Any:
    return value


def _process(value: Any) -> Any:
    if type(value) is not int and value != NEMESIS:
        raise ValueError(value)
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(value)
    return sys.intern(value)


def _digits(tokens: tuple[str, ...]) -> bool:
    """Whether every token is a decimal integer without sign (whose value `int` gives)."""
    joined = "".join(tokens)
    return joined.isascii() and joined.isdigit() and max(map(len, tokens)) <= INT_DIGITS_MAX


class _NotAnOp(Exception):
    """A flat map that is not an op, or no map at all; read again at its line to say why."""


class _FlatFields(dict[str, Fields]):
    """The event fields of the text of each flat map (`Form.flat`), read once for all
    readers (the most recent `_FLAT_FIELDS_MAX`): records repeat, within a history and
    across them (Knossos's have neither time nor index); `_NotAnOp` for a text that is not
    an op."""

    def __missing__(self, text: str) -> Fields:
        if len(self) >= _FLAT_FIELDS_MAX:
            self.clear()
        try:
            rec = FlatMaps().read(text, 1)
            fields = event_fields(rec, 1, None, rec.get("value"))
        except (EdnError, HistoryError):
            raise _NotAnOp from None
        self[text] = fields
        return fields


_FLAT_FIELDS = _FlatFields()


class _FlatOps:
    """Makes the events of the flat maps of one history (`Form.flat` runs)."""

    def __init__(self, file: str | None):
        self.file = file
        self.maps = FlatMaps()

    def events(self, texts: list[str], lines: list[int]) -> list[Event]:
        """The events of the flat maps `texts`, which start on `lines`."""
        if len(texts) >= _SHAPED_MIN and (columns := self.maps.columns(texts)) is not None:
            try:
                return self._column_events(*columns, lines)
            except Unusual:
                pass  # read map by map, to say which is wrong
        try:
            rows = list(map(_FLAT_FIELDS.__getitem__, texts))
        except _NotAnOp:
            for text, line in zip(texts, lines, strict=True):
                op_event(self.maps.read(text, line), line, self.file)
            raise AssertionError("a flat map read once as no op and once as one") from None
        types, processes, fs, values, keys, times, has_values = zip(*rows)
        return new_events(types, processes, fs, values, keys, times, lines, has_values)

    def _column_events(
        self, keys: list[Any], columns: list[tuple[str, ...]], lines: list[int]
    ) -> list[Event]:
        """The events of maps given as columns of value tokens (`FlatMaps.columns`),
        checked as `event_fields` checks a record, column by column; `Unusual` where a record
        is not an op, or a value does not read."""
        by_key = dict(zip(keys, columns))
        if len(by_key) != len(keys) or not {"type", "process", "f"} <= by_key.keys():
            raise Unusual
        for key in by_key.keys() - _OP_KEYS:
            self._column(by_key[key], unique=True)  # read all the same: a bad number is an error
        n = len(lines)
        absent = [None] * n
        return new_events(
            self._column(by_key["type"], TYPE_NAMES.__getitem__),
            self._column(by_key["process"], _process),
            self._column(by_key["f"], _name),
            self._column(by_key["value"]) if "value" in by_key else absent,
            self._column(by_key["key"]) if "key" in by_key else absent,
            self._times(by_key["time"]) if "time" in by_key else absent,
            lines,
            [("value" in by_key)] * n,
        )

    def _column(
        self, tokens: tuple[str, ...], check: Callable[[Any], Any] = _same, unique: bool = False
    ) -> list[Any]:
        """The values of `tokens`, each distinct one read and checked once, so that equal
        values are one object (a history's processes, its written values); a column of
        integers that are `unique` (times, indexes), or mostly, is read in a C loop."""
        if unique and _digits(tokens):
            return list(map(int, tokens))  # what reading each gives
        distinct = set(tokens)
        if check is _same and 2 * len(distinct) > len(tokens) and _digits(tokens):
            return list(map(int, tokens))
        try:
            values = {token: check(self.maps.value(token)) for token in distinct}
        except (ValueError, KeyError, TypeError):
            raise Unusual from None
        return list(map(values.__getitem__, tokens))

    def _times(self, tokens: tuple[str, ...]) -> list[Any]:
        times = self._column(tokens, unique=True)
        if not set(map(type, times)) <= {int, type(None)}:
            raise Unusual
        return times


_OP_KEYS = frozenset(("type", "process", "f", "value", "key", "time"))
_SHAPED_MIN = 16
_FLAT_FIELDS_MAX = 10_000
