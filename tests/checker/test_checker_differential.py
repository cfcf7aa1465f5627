"""Differential tests: the search, with every pruning rule, against the brute force."""

from __future__ import annotations

from typing import Any

from checker_brute import linearizable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checker import check, make_model

VALUES = st.integers(0, 2)
SETTINGS = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def _op(model: str) -> st.SearchStrategy[tuple[str, Any, Any]]:
    """(f, invoke value, ok value) for one operation of `model`."""
    if model in ("kv", "cas-register"):
        return st.one_of(
            st.tuples(st.just("read"), st.none(), st.one_of(st.none(), VALUES)),
            VALUES.map(lambda v: ("write", v, v)),
            st.tuples(VALUES, VALUES).map(lambda c: ("cas", list(c), list(c))),
        )
    if model == "mutex":
        return st.sampled_from([("acquire", None, None), ("release", None, None)])
    if model == "append-kv":
        return st.one_of(
            st.tuples(st.just("get"), st.none(), st.sampled_from(["", "a", "b", "ab", "ba"])),
            st.sampled_from(["a", "b"]).map(lambda v: ("put", v, v)),
            st.sampled_from(["a", "b"]).map(lambda v: ("append", v, v)),
        )
    assert model == "set"
    return st.one_of(
        VALUES.map(lambda v: ("add", v, v)),
        st.tuples(st.just("read"), st.none(), st.frozensets(VALUES, max_size=3).map(sorted)),
    )


@st.composite
def histories(draw: st.DrawFn, model: str, max_ops: int = 6, keys: int = 1) -> list[dict[str, Any]]:
    """Records of a random concurrent history with ok, fail, info and unfinished ops."""
    n_proc = draw(st.integers(1, 3))
    ops = draw(
        st.lists(
            st.tuples(
                st.integers(0, n_proc - 1),
                _op(model),
                st.sampled_from(["ok", "ok", "ok", "fail", "info", "none"]),
                st.integers(0, keys - 1),
            ),
            max_size=max_ops,
        )
    )
    queues: list[list[tuple[Any, ...]]] = [[] for _ in range(n_proc)]
    for proc, op, outcome, key in ops:
        queues[proc].append((op, outcome, key))
    records: list[dict[str, Any]] = []
    pid = list(range(n_proc))
    pending: list[tuple[Any, ...] | None] = [None] * n_proc
    order = draw(st.lists(st.integers(0, n_proc - 1), min_size=4 * len(ops), max_size=4 * len(ops)))
    for p in order + [p for p in range(n_proc) for _ in range(2 * len(ops) + 2)]:
        _advance(records, queues, pending, pid, p, n_proc, keys > 1)
    return records


def _advance(
    records: list[dict[str, Any]],
    queues: list[list[tuple[Any, ...]]],
    pending: list[tuple[Any, ...] | None],
    pid: list[int],
    p: int,
    n_proc: int,
    keyed: bool,
) -> None:
    def rec(typ: str, f: str, value: Any, key: int) -> None:
        r: dict[str, Any] = {"index": len(records), "type": typ, "process": pid[p], "f": f}
        r["value"] = value
        if keyed:
            r["key"] = key
        records.append(r)

    current = pending[p]
    if current is None:
        if not queues[p]:
            return
        (f, arg, result), outcome, key = current = queues[p].pop(0)
        pending[p] = current
        rec("invoke", f, arg, key)
        return
    (f, arg, result), outcome, key = current
    if outcome == "none":
        queues[p].clear()
        return
    rec(outcome, f, result if outcome == "ok" else arg, key)
    pending[p] = None
    if outcome == "info":
        pid[p] += n_proc


def _agree(records: list[dict[str, Any]], name: str, init: Any, brute_init: Any, **kw: Any) -> None:
    model = make_model(name, init, **kw)
    result = check(records, model, workers=1)
    expected = linearizable(records, name, brute_init, nil_read_any=kw.get("nil_read_any", False))
    assert result.valid is expected, records
    if result.valid is False:
        assert result.anomalies and result.anomalies[0].window


@SETTINGS
@given(histories("kv", keys=2))
def test_kv_agrees_with_brute_force(records: list[dict[str, Any]]) -> None:
    _agree(records, "kv", None, ())


@SETTINGS
@given(histories("cas-register"))
def test_knossos_cas_register_agrees_with_brute_force(records: list[dict[str, Any]]) -> None:
    _agree(records, "cas-register", 0, ((None, 0),), nil_read_any=True)


@settings(SETTINGS, max_examples=500)
@given(histories("mutex"))
def test_mutex_agrees_with_brute_force(records: list[dict[str, Any]]) -> None:
    _agree(records, "mutex", False, False)


@settings(SETTINGS, max_examples=500)
@given(histories("append-kv"))
def test_append_kv_agrees_with_brute_force(records: list[dict[str, Any]]) -> None:
    _agree(records, "append-kv", "", "")


@settings(SETTINGS, max_examples=500)
@given(histories("set"))
def test_set_agrees_with_brute_force(records: list[dict[str, Any]]) -> None:
    _agree(records, "set", frozenset(), frozenset())
