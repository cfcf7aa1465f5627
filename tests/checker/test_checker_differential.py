"""Differential tests: the search, with every pruning rule, against the brute force."""

from __future__ import annotations

import random
from typing import Any

from checker_brute import linearizable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checker import check, make_model
from checker.api import _events
from checker.ops import pair
from checker.search import Search, prepare

VALUES = st.integers(0, 2)
SETTINGS = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def _op(
    model: str, values: st.SearchStrategy[int] = VALUES
) -> st.SearchStrategy[tuple[str, Any, Any]]:
    """(f, invoke value, ok value) for one operation of `model`."""
    if model in ("kv", "cas-register"):
        return st.one_of(
            st.tuples(st.just("read"), st.none(), st.one_of(st.none(), values)),
            values.map(lambda v: ("write", v, v)),
            st.tuples(values, values).map(lambda c: ("cas", list(c), list(c))),
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
def histories(
    draw: st.DrawFn,
    model: str,
    max_ops: int = 6,
    keys: int = 1,
    values: st.SearchStrategy[int] = VALUES,
    max_procs: int = 3,
) -> list[dict[str, Any]]:
    """Records of a random concurrent history with ok, fail, info and unfinished ops."""
    n_proc = draw(st.integers(1, max_procs))
    ops = draw(
        st.lists(
            st.tuples(
                st.integers(0, n_proc - 1),
                _op(model, values),
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


def register_run(
    seed: int, n_ops: int = 8, values: int = 2, info_share: float = 0.1
) -> list[dict[str, Any]]:
    """Records of up to 4 clients on one real register: each op takes effect at one step
    between its invoke and its completion (an info op took effect or not), so reads of
    repeated values overlap their writers; a third of the runs then lie about one read."""
    rng = random.Random(seed)
    register: int | None = None
    clients = rng.randint(2, 4)
    pid = list(range(clients))
    pending: list[list[Any] | None] = [None] * clients  # [f, value, applied, result]
    records: list[dict[str, Any]] = []
    started = 0

    def rec(typ: str, c: int, f: str, value: Any) -> None:
        records.append({"index": len(records), "type": typ, "process": pid[c], "f": f,
                        "value": value})  # fmt: skip

    while started < n_ops or any(p is not None for p in pending):
        c = rng.randrange(clients)
        op = pending[c]
        if op is None:
            if started < n_ops:
                started += 1
                f = rng.choice(("read", "write", "cas"))
                arg: Any = None if f == "read" else rng.randrange(values)
                if f == "cas":
                    arg = [rng.randrange(values), arg]
                pending[c] = [f, arg, False, None]
                rec("invoke", c, f, arg)
        elif not op[2]:
            op[2] = True
            if rng.random() < info_share and op[0] != "read":
                op[3] = "info"
                if rng.random() < 0.5:
                    continue
            if op[0] == "read":
                op[3] = register
            elif op[0] == "write":
                register = op[1]
            elif register == op[1][0]:
                register = op[1][1]
            elif op[3] != "info":
                op[3] = "fail"
        else:
            pending[c] = None
            f, arg, _, result = op
            if result in ("info", "fail"):
                rec(result, c, f, arg)
                pid[c] += clients if result == "info" else 0
            else:
                rec("ok", c, f, result if f == "read" else arg)
    reads = [r for r in records if r["type"] == "ok" and r["f"] == "read"]
    if reads and rng.random() < 0.33:
        lie = rng.choice(reads)
        lie["value"] = rng.choice([v for v in (None, *range(values)) if v != lie["value"]])
    return records


@settings(SETTINGS, max_examples=500)
@given(st.integers(0, 2**32))
def test_cas_register_with_values_written_many_times_agrees_with_brute_force(seed: int) -> None:
    # Each value read has several writers, before, during and after the read: what the
    # search's rescue plans cut by time (a writer called after the read returned cannot
    # rescue it) must not change a verdict, on valid runs above all.
    _agree(register_run(seed), "cas-register", None, ((None, None),))


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


@settings(SETTINGS, max_examples=300)
@given(st.integers(0, 2**32))
def test_counting_indeterminate_ops_by_kind_or_walking_them_agree_with_brute_force(
    seed: int,
) -> None:
    # Many writes that may or may not have happened, of few kinds: the search counts them
    # by kind on long histories like this one; both ways must agree with the brute force.
    records = register_run(seed, n_ops=9, info_share=0.5)
    model = make_model("cas-register", None)
    ops = prepare(model, pair(_events(records).events))
    expected = linearizable(records, "cas-register", ((None, None),))
    for by_kind in (True, False):
        search = Search(model, ops, by_kind=by_kind)
        assert search.run(10**7) is expected, (by_kind, records)


@settings(SETTINGS, max_examples=500)
@given(histories("set", keys=2, max_ops=7))
def test_set_kv_agrees_with_brute_force(records: list[dict[str, Any]]) -> None:
    _agree(records, "set-kv", frozenset(), ())
