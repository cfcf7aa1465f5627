"""A small, fast EDN reader for histories.

Mapping: nil/true/false -> None/True/False; integers and floats -> int/float; strings -> str;
keywords and symbols -> str without the leading colon (``:read`` -> ``"read"``); vectors and
lists -> tuple (hashable, so values can be model states); maps -> dict; sets -> frozenset;
a tagged value (``#jepsen.history.Op {...}``, ``#inst "..."``) -> the value itself; ``#_``
discards the next form. Comments (``;``) and commas are whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EdnError", "Form", "parse_all", "parse_atom"]


class EdnError(ValueError):
    """Malformed EDN; `line` is 1-based."""

    def __init__(self, message: str, line: int):
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}")


_TOKEN = re.compile(
    r"""(?:[\s,]+|;[^\n]*)*(?:
     (?P<str>"(?:[^"\\]|\\.)*")
    |(?P<open>\#\{|[\[({])
    |(?P<close>[\])}])
    |(?P<discard>\#_)
    |(?P<tag>\#[A-Za-z][^\s,\[\](){}"]*)
    |(?P<atom>[^\s,\[\](){}";\#][^\s,\[\](){}";]*)
    |(?P<end>\Z)
    |(?P<bad>.)
    )""",
    re.X | re.S,
)
# A map of atoms, escape-free strings and vectors of atoms (most history records): read in
# one piece, its items split by `_FLAT_ITEM`.
_FLAT_BODY = r'\{((?:[^{}\[\]()"#;\\]|"[^"\\]*"|\[[^{}\[\]()"#;\\]*\])*)\}'
_FLAT_MAP = re.compile(_FLAT_BODY)
_NEXT_FLAT_MAP = re.compile(r"[\s,]*(?=\{)" + _FLAT_BODY)
_FLAT_ITEM = re.compile(r'"[^"]*"|\[[^\]]*\]|[^\s,\["]+')
_INT = re.compile(r"[+-]?\d+N?")
_FLOAT = re.compile(r"[+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?M?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_CLOSERS = {"[": "]", "(": ")", "{": "}", "#{": "}"}
_CONSTANTS: dict[str, Any] = {"nil": None, "true": True, "false": False}


def parse_atom(text: str) -> Any:
    """The value of one atom token (number, keyword, symbol, constant)."""
    if text in _CONSTANTS:
        return _CONSTANTS[text]
    first = text[0]
    if first == ":":
        return text[1:]
    if first.isdigit() or (first in "+-" and len(text) > 1 and text[1].isdigit()):
        if _INT.fullmatch(text):
            return int(text.rstrip("N"))
        if _FLOAT.fullmatch(text):
            return float(text.rstrip("M"))
        raise ValueError(f"bad number {text!r}")
    if first == "\\":
        return text[1:]
    return text


def _string(token: str) -> str:
    body = token[1:-1]
    if "\\" not in body:
        return body
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


class _Atoms(dict[str, Any]):
    """Values of the tokens `_FLAT_ITEM` finds, each parsed once."""

    def __missing__(self, token: str) -> Any:
        first = token[0]
        if first == '"':
            value: Any = token[1:-1]
        elif first == "[":
            value = tuple(self[a] for a in token[1:-1].replace(",", " ").split())
        else:
            value = parse_atom(token)
        self[token] = value
        return value


def _flat_map(body: str, atoms: _Atoms) -> dict[Any, Any] | None:
    """The map whose text between braces is `body` (matched by `_FLAT_MAP`); None if it is
    not well formed (a bad number, an odd number of forms), for the general reader to
    report."""
    try:
        items = [atoms[token] for token in _FLAT_ITEM.findall(body)]
    except ValueError:
        return None
    if len(items) % 2:
        return None
    return dict(zip(items[::2], items[1::2], strict=True))


def _more_flat_maps(
    text: str, pos: int, atoms: _Atoms, items: list[Any], track: list[int] | None, lines: _Lines
) -> int:
    """Read the flat maps that follow `pos` into `items` (their lines into `track`); the
    position after the last."""
    match = _NEXT_FLAT_MAP.match
    while True:
        m = match(text, pos)
        if m is None:
            return pos
        record = _flat_map(m.group(1), atoms)
        if record is None:
            return pos
        if track is not None:
            track.append(lines.at(m.end() - len(m.group(1)) - 2))
        items.append(record)
        pos = m.end()


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


@dataclass(slots=True)
class Form:
    """A top-level form, the line it starts on, and the line of each item if a collection."""

    value: Any
    line: int
    item_lines: list[int] = field(default_factory=list)


class _Lines:
    """Line numbers of increasing positions, counted incrementally."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line = 1

    def at(self, pos: int) -> int:
        if pos < self.pos:
            return _line_of(self.text, pos)
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def parse_all(text: str) -> list[Form]:
    """Every top-level form of `text`; raises `EdnError` naming the line on bad input."""
    forms: list[Form] = []
    lines = _Lines(text)
    # Each open collection: (opening token, items, start position); discards per depth.
    stack: list[tuple[str, list[Any], int]] = []
    discards: list[int] = [0]
    pos = 0
    match = _TOKEN.match
    flat = _FLAT_MAP.match
    atoms = _Atoms()
    while True:
        m = match(text, pos)
        assert m is not None
        kind = m.lastgroup
        assert kind is not None
        start = m.start(kind)
        pos = m.end()
        if kind == "end":
            if stack:
                raise EdnError(f"unexpected end of input in {stack[-1][0]!r}", lines.at(pos))
            if discards[-1]:
                raise EdnError("unexpected end of input after #_", lines.at(pos))
            return forms
        if kind == "bad":
            raise EdnError(f"unexpected character {m.group(kind)!r}", lines.at(start))
        if kind == "tag":
            continue
        if kind == "discard":
            discards[-1] += 1
            continue
        if kind == "open" and text[start] == "{":
            fm = flat(text, start)
            if fm is not None and not stack and "\n" in fm.group(1):
                fm = None  # a top-level form needs the line of each item
            record = None if fm is None else _flat_map(fm.group(1), atoms)
            if record is not None:
                assert fm is not None
                pos = fm.end()
                if discards[-1]:
                    discards[-1] -= 1
                elif stack:
                    track = forms[-1].item_lines if len(stack) == 1 else None
                    if track is not None:
                        track.append(lines.at(start))
                    stack[-1][1].append(record)
                    pos = _more_flat_maps(text, pos, atoms, stack[-1][1], track, lines)
                else:
                    line = lines.at(start)
                    n_items = len(_FLAT_ITEM.findall(fm.group(1)))
                    forms.append(Form(record, line, [line] * n_items))
                continue
        if kind == "open":
            if len(stack) == 0:
                forms.append(Form(None, lines.at(start)))
            elif len(stack) == 1 and not discards[-1]:
                forms[-1].item_lines.append(lines.at(start))
            stack.append((m.group(kind), [], start))
            discards.append(0)
            continue
        token = m.group(kind)
        if kind == "close":
            if not stack:
                raise EdnError(f"unmatched {token!r}", lines.at(start))
            opener, items, begin = stack.pop()
            discards.pop()
            if _CLOSERS[opener] != token:
                raise EdnError(f"{opener!r} closed by {token!r}", lines.at(start))
            value = _collection(opener, items, text, begin)
        elif kind == "str":
            value = _string(token)
        else:
            try:
                value = parse_atom(token)
            except ValueError as exc:
                raise EdnError(str(exc), lines.at(start)) from None
        if discards[-1]:
            discards[-1] -= 1
            if not stack and kind == "close":
                forms.pop()
        elif stack:
            if len(stack) == 1 and kind != "close":
                forms[-1].item_lines.append(lines.at(start))
            stack[-1][1].append(value)
        elif kind == "close":
            forms[-1].value = value
        else:
            forms.append(Form(value, lines.at(start)))


def _collection(opener: str, items: list[Any], text: str, begin: int) -> Any:
    if opener == "{":
        if len(items) % 2:
            raise EdnError("map with an odd number of forms", _line_of(text, begin))
        try:
            return dict(zip(items[::2], items[1::2]))
        except TypeError:
            raise EdnError("map key is not hashable", _line_of(text, begin)) from None
    if opener == "#{":
        try:
            return frozenset(items)
        except TypeError:
            raise EdnError("set element is not hashable", _line_of(text, begin)) from None
    return tuple(items)
