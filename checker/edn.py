"""A small, fast EDN reader for histories.

Mapping: nil/true/false -> None/True/False; integers and floats -> int/float; strings -> str;
keywords and symbols -> str without the leading colon (``:read`` -> ``"read"``); vectors and
lists -> tuple; maps -> `Map` (a dict that hashes); sets -> frozenset. Every value is thus
hashable, so it can be a map key, a set element or a model state. A tagged value
(``#jepsen.history.Op {...}``, ``#inst "..."``) -> the value itself; ``#_`` discards the next
form. Comments (``;``) and commas are whitespace.

Bounds: collections nest at most `DEPTH_MAX` deep and integers have at most
`INT_DIGITS_MAX` digits (more is an `EdnError`); reading is iterative and linear.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, islice, repeat
from typing import Any, NamedTuple

from checker.history import DEPTH_MAX, brief

__all__ = [
    "INT_DIGITS_MAX",
    "SEQUENCE",
    "EdnError",
    "FlatMaps",
    "Form",
    "Map",
    "iter_forms",
    "parse_all",
    "parse_atom",
    "parse_one",
]

INT_DIGITS_MAX = 4300
"""Python's own default limit: converting longer digit strings takes quadratic time."""


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
# A map of atoms, escape-free strings, and vectors of atoms or of such vectors (most history
# records, Knossos's multi-register transactions too): read in one piece, its items split by
# `_FLAT_ITEM`. Possessive quantifiers: the regex engine then runs through a map without
# keeping a backtracking point per character.
_FLAT_VECTOR = r'\[(?:[^{}\[\]()"#;\\]++|\[[^{}\[\]()"#;\\]*+\])*+\]'
_FLAT_INSIDE = rf'(?:[^{{}}\[\]()"#;\\]++|"[^"\\]*+"|{_FLAT_VECTOR})*+'
_FLAT_BODY = rf"\{{({_FLAT_INSIDE})\}}"
_FLAT_MAP = re.compile(_FLAT_BODY)
# A run of flat maps is matched whole, then split into its maps, each with the tag before it
# (the reader ignores tags) and the separators after it: one flat map's text. Where each
# map has a line of its own (as Jepsen and Knossos write them), the lines are the maps.
_TAG = r'\#[A-Za-z][^\s,\[\](){}";]*+'
_RUN_ITEM = rf"(?:{_TAG}[ \t,]*+)?\{{{_FLAT_INSIDE}\}}[\s,]*+"
_FLAT_RUN = re.compile(f"(?:{_RUN_ITEM})*+")
_FLAT_RUN_ITEM = re.compile(_RUN_ITEM)
_LINE_SPACE = r"[ \t\r\f\v,]*+"
_LINE_VECTOR = r'\[(?:[^{}\[\]()"#;\\\n]++|\[[^{}\[\]()"#;\\\n]*+\])*+\]'
_LINE_INSIDE = rf'(?:[^{{}}\[\]()"#;\\\n]++|"[^"\\\n]*+"|{_LINE_VECTOR})*+'
_LINE = rf"{_LINE_SPACE}(?:{_TAG}[ \t,]*+)?\{{{_LINE_INSIDE}\}}{_LINE_SPACE}"
_LINE_RUN = re.compile(rf"{_LINE}(?:\n{_LINE})*+")
# A key and a value of `FlatMaps.columns`.
_KEY = re.compile(r'[^\s,\[\](){}";#\\]++')
_SLOT = re.compile(r'([^\s,\[\](){}";#\\]++|\[[^{}\[\]()"#;\\\n]*+\]|"[^"\\\n]*+")')
_FLAT_TEXT = re.compile(rf"[\s,]*+(?:{_TAG}[\s,]*+)?{_FLAT_BODY}[\s,]*+")
_FLAT_ITEM = re.compile(r'"[^"]*"|\[(?:[^\[\]]|\[[^\]]*\])*\]|[^\s,\["]+')
_ATOM = re.compile(r'[^\s,\[\](){}";\#][^\s,\[\](){}";]*')
# A vector of atoms (``[3 4]``) with nothing in it that needs the general reader.
_ATOM_VECTOR = re.compile(r'\[[^{}\[\]()"#;\\]*+\]')
_INT = re.compile(r"[+-]?\d+N?")
_FLOAT = re.compile(r"[+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?M?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_CLOSERS = {"[": "]", "(": ")", "{": "}", "#{": "}"}
_CONSTANTS: dict[str, Any] = {"nil": None, "true": True, "false": False}
_SEQUENCES = ("[", "(")
_RUN_CHARS = 1 << 16


class _Sequence:
    __slots__ = ()

    def __repr__(self) -> str:
        return "SEQUENCE"


SEQUENCE: Any = _Sequence()
"""The value of the form `iter_forms(unwrap=True)` yields where a top-level vector or list
opens; its items follow."""
_ATOMS_MAX = 10_000


class Map(dict[Any, Any]):
    """An EDN map: a dict that hashes by content. Never changed after it is read."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def parse_atom(text: str) -> Any:
    """The value of one atom token (number, keyword, symbol, constant)."""
    if text in _CONSTANTS:
        return _CONSTANTS[text]
    first = text[0]
    if first == ":":
        return text[1:]
    if first.isdigit() or (first in "+-" and len(text) > 1 and text[1].isdigit()):
        if _INT.fullmatch(text):
            if len(text) > INT_DIGITS_MAX:
                raise ValueError(f"integer of {len(text)} digits (at most {INT_DIGITS_MAX})")
            return int(text.rstrip("N"))
        if _FLOAT.fullmatch(text):
            return float(text.rstrip("M"))
        raise ValueError(f"bad number {brief(text)}")
    if first == "\\":
        return text[1:]
    return text


def _string(token: str) -> str:
    body = token[1:-1]
    if "\\" not in body:
        return body
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


class _Atoms(dict[str, Any]):
    """Values of the tokens `_FLAT_ITEM` finds, each parsed once (the most recent
    `_ATOMS_MAX` of them: unique times and indexes would otherwise all be kept)."""

    def __missing__(self, token: str) -> Any:
        if len(self) >= _ATOMS_MAX:
            self.clear()
        first = token[0]
        if first == '"':
            value: Any = token[1:-1]
        elif first == "[":
            value = tuple(self[a] for a in _FLAT_ITEM.findall(token[1:-1]))
        else:
            value = parse_atom(token)
        self[token] = value
        return value


def _flat_map(body: str, atoms: _Atoms) -> Map | None:
    """The map whose text between braces is `body` (matched by `_FLAT_MAP`); None if it is
    not well formed (a bad number, an odd number of forms), for the general reader to
    report."""
    try:
        items = [atoms[token] for token in _FLAT_ITEM.findall(body)]
    except ValueError:
        return None
    if len(items) % 2:
        return None
    return Map(zip(items[::2], items[1::2], strict=True))


class _FlatRun(NamedTuple):
    """Flat maps one after another: the text of each (see `_FLAT_TEXT`), the line each
    starts on, and the position after the last. `gap` characters (newlines) separate
    consecutive texts."""

    texts: list[str]
    lines: list[int]
    end: int
    gap: int


def _flat_run(text: str, start: int, lines: _Lines) -> _FlatRun | None:
    """The flat maps from `start` (a ``{``) on, within `_RUN_CHARS` characters; None if
    the map at `start` is not flat or larger. Two passes of the regex engine over the whole
    run instead of one call per map; where maps have a line each, `str.split` is the
    second."""
    end = start + _RUN_CHARS
    first = lines.at(start)
    m = _LINE_RUN.match(text, start, end)
    if m is not None and text.count("\n", start, m.end()):
        texts = text[start : m.end()].split("\n")
        return _FlatRun(texts, list(range(first, first + len(texts))), m.end(), 1)
    m = _FLAT_RUN.match(text, start, end)
    if m is None or m.end() == start:
        return None
    texts = _FLAT_RUN_ITEM.findall(text, start, m.end())
    starts = accumulate(map(str.count, texts, repeat("\n")), initial=first)
    return _FlatRun(texts, list(islice(starts, len(texts))), m.end(), 0)


def _flat_maps(run: _FlatRun, start: int, atoms: _Atoms) -> tuple[list[Any], int]:
    """The maps of `run` up to the first that `_flat_map` cannot read, and the position
    after them (where the general reader takes over)."""
    records: list[Any] = []
    for text in run.texts:
        record = _flat_map(_body(text), atoms)
        if record is None:
            n = len(records)
            return records, start + sum(map(len, run.texts[:n])) + n * run.gap
        records.append(record)
    return records, run.end


def _body(text: str) -> str:
    """The text between the braces of the flat map whose text is `text`."""
    inner = text.strip(" \t\n\r\f\v,")
    if inner[:1] == "{" and inner[-1:] == "}":
        return inner[1:-1]  # no tag, and no other white space around it
    m = _FLAT_TEXT.fullmatch(text)
    assert m is not None, text
    return m.group(1)


class _NotAnEntry(Exception):
    pass


class _Entries(dict[str, tuple[Any, Any]]):
    """The key and value of each entry of maps written as Clojure prints them (``:f :read``
    of ``{:type :ok, :f :read}``), each entry read once (the most recent `_ATOMS_MAX`);
    `_NotAnEntry` for text of another shape. A key and a value that are each one whole
    `_FLAT_ITEM` token are the tokens `_flat_map` finds there."""

    def __init__(self, atoms: _Atoms):
        super().__init__()
        self.atoms = atoms

    def __missing__(self, entry: str) -> tuple[Any, Any]:
        if len(self) >= _ATOMS_MAX:
            self.clear()
        key, _, value = entry.partition(" ")
        if _FLAT_ITEM.fullmatch(key) is None or _FLAT_ITEM.fullmatch(value) is None:
            raise _NotAnEntry
        try:
            pair = (self.atoms[key], self.atoms[value])
        except ValueError:
            raise _NotAnEntry from None
        self[entry] = pair
        return pair


class FlatMaps:
    """Reads the maps of `Form.flat` runs; numbers, names and whole entries each parsed
    once, for all readers: what they map to never changes, and histories share most (a
    small history would otherwise cost more in parsing its first entries than in the rest)."""

    def __init__(self) -> None:
        self.atoms = _SHARED_ATOMS
        self.entries = _SHARED_ENTRIES

    def value(self, token: str) -> Any:
        """The value of a token of `columns`; raises `ValueError` for a bad number."""
        return self.atoms[token]

    def columns(self, texts: list[str]) -> tuple[list[Any], list[tuple[str, ...]]] | None:
        """The keys of the maps `texts` (texts of a `Form.flat` run, each a line of its own)
        and, per key, the token of each map's value there (read with `value`), if all are
        written alike: the same keys in the same order, as Jepsen and Knossos write records,
        each value one atom, string or vector of atoms. None otherwise. One regex over all
        the texts, instead of reading each."""
        pairs = [entry.partition(" ") for entry in _body(texts[0]).split(", ")]
        if not all(_KEY.fullmatch(k) and sp and _SLOT.fullmatch(v) for k, sp, v in pairs):
            return None
        try:
            keys = [self.atoms[k] for k, _, _ in pairs]
        except ValueError:
            return None
        layout = ", ".join(re.escape(k) + " " + _SLOT.pattern for k, _, _ in pairs)
        shape = re.compile(rf"^{_LINE_SPACE}(?:{_TAG}[ \t,]*+)?\{{{layout}\}}{_LINE_SPACE}$", re.M)
        rows = shape.findall("\n".join(texts))
        if len(rows) != len(texts):
            return None
        if len(keys) == 1:
            return keys, [tuple(rows)]
        return keys, list(zip(*rows))

    def read(self, text: str, line: int) -> dict[Any, Any]:
        """The entries of the map whose text (one of a `Form.flat` run) is `text`, starting
        on `line`, as `iter_forms` reads them; raises `EdnError` as reading it in place
        would. A plain dict, maybe: no flat map holds a map, so nothing hashes it, and
        making a dict takes half the time of making a `Map`."""
        body = _body(text)
        try:
            return dict(map(self.entries.__getitem__, body.split(", ")))
        except _NotAnEntry:
            pass
        record = _flat_map(body, self.atoms)
        if record is not None:
            return record
        try:
            (form,) = parse_all("{" + body + "}")
        except EdnError as exc:
            raise EdnError(exc.message, line + exc.line - 1) from None
        value: Map = form.value
        return value


_SHARED_ATOMS = _Atoms()
_SHARED_ENTRIES = _Entries(_SHARED_ATOMS)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


@dataclass(slots=True)
class Form:
    """A top-level form (`depth` 0) and the line it starts on, with the line of each item if
    it is a vector or list; or (`depth` 1) a batch of items of an unwrapped top-level vector
    or list: `value` lists them, `item_lines` gives their lines. A `flat` form (see
    `iter_forms`) is a run of maps of either depth: `value` lists the text of each, to be
    read with `FlatMaps.read`, and `item_lines` their lines."""

    value: Any
    line: int
    item_lines: list[int] = field(default_factory=list)
    depth: int = 0
    flat: bool = False


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


def parse_one(text: str) -> Any:
    """The value of the one form `text` holds; raises `EdnError` if it holds another
    number of forms, or bad input."""
    if _ATOM.fullmatch(text):
        try:
            return parse_atom(text)
        except ValueError as exc:
            raise EdnError(str(exc), 1) from None
    if _ATOM_VECTOR.fullmatch(text):
        try:
            return tuple(map(parse_atom, text[1:-1].replace(",", " ").split()))
        except ValueError:
            pass  # the general reader says where
    forms = parse_all(text)
    if len(forms) != 1:
        raise EdnError(f"expected one form, got {len(forms)}", 1)
    return forms[0].value


def parse_all(text: str) -> list[Form]:
    """Every top-level form of `text`; raises `EdnError` naming the line on bad input."""
    return list(iter_forms(text))


def iter_forms(text: str, *, unwrap: bool = False, flat: bool = False) -> Iterator[Form]:
    """The top-level forms of `text`, each as soon as it is read, so a reader can turn it
    into a record and let it go; raises `EdnError` naming the line on bad input (after
    yielding the forms before it). With `unwrap`, a top-level vector or list is not read
    whole: a form whose value is `SEQUENCE` stands for it, then its items follow in
    batches (forms of depth 1), as soon as they are read. With `flat` too, runs of flat
    maps there (or at the top level) come unread, as forms with `flat` set: the caller
    reads each map with `FlatMaps.read`, or reads maps that repeat once."""
    lines = _Lines(text)
    # Each open collection: (opening token, items, start position); discards per depth.
    stack: list[tuple[str, list[Any], int]] = []
    discards: list[int] = [0]
    top = Form(None, 0)  # the top-level collection being read
    pos = 0
    match = _TOKEN.match
    atoms = _Atoms()
    while True:
        m = match(text, pos)
        assert m is not None
        kind = m.lastgroup
        assert kind is not None
        start = m.start(kind)
        pos = m.end()
        if kind == "end":
            _check_end(stack, discards, lines.at(pos))
            return
        if kind == "bad":
            raise EdnError(f"unexpected character {m.group(kind)!r}", lines.at(start))
        if kind == "tag":
            continue
        if kind == "discard":
            discards[-1] += 1
            continue
        if kind == "open" and text[start] == "{" and len(stack) <= DEPTH_MAX - 2:
            end = yield from _flat_forms(text, start, lines, stack, discards, top, atoms, flat)
            if end is not None:
                pos = end
                continue
        if kind == "open":
            if len(stack) >= DEPTH_MAX:
                raise EdnError(f"collections nested deeper than {DEPTH_MAX}", lines.at(start))
            if not stack:
                top = Form(None, lines.at(start))
                if unwrap and m.group(kind) in _SEQUENCES and not discards[-1]:
                    top.value = SEQUENCE
                    yield Form(SEQUENCE, top.line)
            elif _tracked(stack, discards):
                top.item_lines.append(lines.at(start))
            stack.append((m.group(kind), [], start))
            discards.append(0)
            continue
        token = m.group(kind)
        if kind == "close":
            value = _close(token, stack, discards, text, lines.at(start))
        elif kind == "str":
            value = _string(token)
        else:
            try:
                value = parse_atom(token)
            except ValueError as exc:
                raise EdnError(str(exc), lines.at(start)) from None
        if discards[-1]:
            discards[-1] -= 1
        elif stack:
            if kind != "close" and _tracked(stack, discards):
                top.item_lines.append(lines.at(start))
            stack[-1][1].append(value)
            if len(stack) == 1 and top.value is SEQUENCE:
                yield _batch(top, stack[0][1])
        elif kind != "close":
            yield Form(value, lines.at(start))
        elif top.value is not SEQUENCE:
            top.value = value
            yield top


def _flat_forms(
    text: str,
    start: int,
    lines: _Lines,
    stack: list[tuple[str, list[Any], int]],
    discards: list[int],
    top: Form,
    atoms: _Atoms,
    flat: bool,
) -> Generator[Form, None, int | None]:
    """Read the flat map at `start` (a ``{``), and the run of them it begins where it is a
    top-level form or an item of the top-level vector or list; yield what `iter_forms`
    yields for them and return the position after them, or None if that map is not flat."""
    run = None
    if not discards[-1] and (not stack or _tracked(stack, discards)):
        run = _flat_run(text, start, lines)
    if run is None:
        fm = _FLAT_MAP.match(text, start)
        record = None if fm is None else _flat_map(fm.group(1), atoms)
        if fm is None or record is None:
            return None
        if discards[-1]:
            discards[-1] -= 1
            return fm.end()
        records, record_lines, end = [record], [lines.at(start)], fm.end()
    elif flat and (not stack or top.value is SEQUENCE):
        yield Form(run.texts, run.lines[0], run.lines, len(stack), flat=True)
        return run.end
    else:
        records, end = _flat_maps(run, start, atoms)
        if not records:
            return None
        record_lines = run.lines[: len(records)]
    if not stack:
        yield from map(Form, records, record_lines)
        return end
    stack[-1][1].extend(records)
    if _tracked(stack, discards):
        top.item_lines.extend(record_lines)
    if len(stack) == 1 and top.value is SEQUENCE:
        yield _batch(top, stack[0][1])
    return end


def _batch(top: Form, items: list[Any]) -> Form:
    """The items read so far of the unwrapped top-level sequence `top`, then forgotten."""
    batch = Form(items[:], top.item_lines[0], top.item_lines[:], depth=1)
    items.clear()
    top.item_lines.clear()
    return batch


def _tracked(stack: list[tuple[str, list[Any], int]], discards: list[int]) -> bool:
    """Whether the next item is one of a top-level vector or list, whose line is kept."""
    return len(stack) == 1 and stack[0][0] in _SEQUENCES and not discards[-1]


def _check_end(stack: list[tuple[str, list[Any], int]], discards: list[int], line: int) -> None:
    if stack:
        raise EdnError(f"unexpected end of input in {stack[-1][0]!r}", line)
    if discards[-1]:
        raise EdnError("unexpected end of input after #_", line)


def _close(
    token: str,
    stack: list[tuple[str, list[Any], int]],
    discards: list[int],
    text: str,
    line: int,
) -> Any:
    """The collection `token` closes, taken off `stack`."""
    if not stack:
        raise EdnError(f"unmatched {token!r}", line)
    opener, items, begin = stack.pop()
    discards.pop()
    if _CLOSERS[opener] != token:
        raise EdnError(f"{opener!r} closed by {token!r}", line)
    if opener == "{":
        if len(items) % 2:
            raise EdnError("map with an odd number of forms", _line_of(text, begin))
        return Map(zip(items[::2], items[1::2], strict=True))
    if opener == "#{":
        return frozenset(items)
    return tuple(items)
