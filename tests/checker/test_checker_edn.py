"""The EDN reader's shortcut for flat maps reads exactly what the general reader reads."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import checker.edn
from checker.edn import SEQUENCE, EdnError, FlatMaps, iter_forms, parse_all

NEVER = re.compile(r"(?!)")
ATOMS = [":type", ":ok", ":f", ":value", "nil", "true", "1", "-2", "3.5", "12N", "foo", "\\c"]
PIECES = [
    *ATOMS,
    '"s"',
    '""',
    '"a\\"b"',
    '"{[;#"',
    "[1 2]",
    "[1,:a]",
    "[]",
    "[[1]]",
    "[[1 2] [:a, nil]]",
    "[[[1]]]",
    '[["s"]]',
    "{:a 1}",
    "{}",
    "#{1 2}",
    "(1 2)",
    "#_",
    "#_ :x",
    "#jepsen.history.Op",
    "; comment\n",
    ",",
    "\n",
    " ",
    "1x",
    "}",
    "]",
]


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A vector of maps, mostly well formed, some not."""
    maps = []
    for _ in range(draw(st.integers(0, 6))):
        items = draw(st.lists(st.sampled_from(PIECES), max_size=8))
        if draw(st.booleans()) and len(items) % 2:
            items.append("nil")
        sep = draw(st.sampled_from([" ", ", ", "\n"]))
        maps.append("{" + sep.join(items) + "}")
    sep = draw(st.sampled_from(["\n", " ", ",", "\n ", "\n; note\n"]))
    return (
        draw(st.sampled_from(["[", "(", ""]))
        + sep.join(maps)
        + draw(st.sampled_from(["]", ")", ""]))
    )


def _read(text: str) -> Any:
    try:
        return [(f.value, f.line, f.item_lines) for f in parse_all(text)]
    except EdnError as exc:
        return ("error", exc.message, exc.line)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_flat_maps_read_as_the_general_reader_reads_them(text: str) -> None:
    fast = _read(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checker.edn, "_FLAT_MAP", NEVER)
        mp.setattr(checker.edn, "_FLAT_RUN", NEVER)
        slow = _read(text)
    assert fast == slow, text


def _unwrapped(text: str, flat: bool = False) -> Any:
    """What `_read` gives, rebuilt from the forms `iter_forms(unwrap=True)` yields (with
    `flat`, its runs of flat maps read with `FlatMaps.read`)."""
    forms: list[Any] = []
    maps = FlatMaps()
    try:
        for form in iter_forms(text, unwrap=True, flat=flat):
            if form.flat:
                values = [maps.read(t, n) for t, n in zip(form.value, form.item_lines, strict=True)]
                if form.depth == 1:
                    forms[-1][0] += values
                    forms[-1][2] += form.item_lines
                else:
                    forms += ([v, n, []] for v, n in zip(values, form.item_lines, strict=True))
            elif form.value is SEQUENCE:
                forms.append([[], form.line, []])
            elif form.depth == 1:
                forms[-1][0] += form.value
                forms[-1][2] += form.item_lines
            else:
                forms.append([form.value, form.line, form.item_lines])
    except EdnError as exc:
        return ("error", exc.message, exc.line)
    return [(tuple(v) if isinstance(v, list) else v, line, lines) for v, line, lines in forms]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_unwrapped_sequences_yield_what_the_whole_reader_reads(text: str) -> None:
    assert _unwrapped(text) == _read(text), text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_flat_runs_read_as_the_whole_reader_reads_them(text: str) -> None:
    assert _unwrapped(text, flat=True) == _read(text), text
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checker.edn, "_RUN_CHARS", 23)
        assert _unwrapped(text, flat=True) == _read(text), text


def test_maps_written_alike_are_read_as_columns() -> None:
    texts = ["{:type :ok, :f :read, :value [1 2]}", ' #tag {:type :info, :f "x", :value nil} ,']
    assert FlatMaps().columns(texts) == (
        ["type", "f", "value"],
        [(":ok", ":info"), (":read", '"x"'), ("[1 2]", "nil")],
    )
    for odd in ("{:type :ok, :f :read}", "{:type :ok, :value [1 2], :f :read}", "{:f :a :b 1}"):
        assert FlatMaps().columns([texts[0], odd]) is None


def test_records_spread_over_lines_keep_their_lines() -> None:
    text = '[{:a 1\n :b [1\n 2]}\n\n {:c "x"}, {:d nil}\n#_{:e 1} {:f :g}]'
    (form,) = parse_all(text)
    assert form.value == ({"a": 1, "b": (1, 2)}, {"c": "x"}, {"d": None}, {"f": "g"})
    assert form.item_lines == [1, 5, 5, 6]


@pytest.mark.parametrize("sep", ["\n ", " ", "\n#_ 1\n"])
def test_a_run_of_maps_hands_a_bad_one_to_the_general_reader(sep: str) -> None:
    maps = ["{:a 1}", "{:b [2 3]}", '{:c "x"}', "{:d 4x}", "{:e 5}"]
    with pytest.raises(EdnError) as err:
        parse_all("[" + sep.join(maps) + "]")
    assert (err.value.message, err.value.line) == ("bad number '4x'", 1 + 3 * sep.count("\n"))
