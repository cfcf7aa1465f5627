"""The unique-values check against the full search and the brute force.

Histories are random and concurrent, with ok, fail, info and unfinished operations, and every
written value is unique: writes and cas ops write fresh values; reads and cas ops observe the
initial value, a written value or one never written.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from checker_brute import linearizable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checker import UNKNOWN, Search, check, make_model, pair, prepare, read_history
from checker.api import METHOD_SEARCH, METHOD_UNIQUE, _events
from checker.models import Model
from checker.unique import decide

CORPUS = Path(__file__).resolve().parent.parent / "data" / "histories"
SETTINGS = settings(
    max_examples=2500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
OUTCOMES = ["ok", "ok", "ok", "fail", "info", "none"]


@st.composite
def unique_histories(
    draw: st.DrawFn, max_ops: int, init: Any, cas: bool = True
) -> list[dict[str, Any]]:
    """Records on key "k"; written values are 1, 2, ... in invocation order."""
    n_proc = draw(st.integers(1, 4))
    kinds = ["read", "write", "cas"] if cas else ["read", "write"]
    specs = draw(
        st.lists(
            st.tuples(
                st.integers(0, n_proc - 1), st.sampled_from(kinds), st.sampled_from(OUTCOMES)
            ),
            max_size=max_ops,
        )
    )
    order = draw(
        st.lists(st.integers(0, n_proc - 1), min_size=3 * len(specs), max_size=3 * len(specs))
    )
    queues: list[list[tuple[str, str]]] = [[] for _ in range(n_proc)]
    for proc, f, outcome in specs:
        queues[proc].append((f, outcome))
    written: list[Any] = [init]
    records: list[dict[str, Any]] = []
    pid = list(range(n_proc))
    pending: list[tuple[str, str, Any, Any] | None] = [None] * n_proc

    def observed() -> Any:
        # A value that was written (or the initial one), or one never written (99).
        return draw(st.sampled_from([*written, 99]))

    def emit(p: int, typ: str, f: str, value: Any) -> None:
        records.append(
            {
                "index": len(records),
                "type": typ,
                "process": pid[p],
                "f": f,
                "key": "k",
                "value": value,
            }
        )

    for p in order + [p for p in range(n_proc) for _ in range(2 * len(specs) + 2)]:
        current = pending[p]
        if current is None:
            if not queues[p]:
                continue
            f, outcome = queues[p].pop(0)
            if f == "write":
                arg: Any = len(written)
                written.append(arg)
            elif f == "cas":
                arg = [observed(), len(written)]
                written.append(arg[1])
            else:
                arg = None
            pending[p] = (f, outcome, arg, None)
            emit(p, "invoke", f, arg)
            continue
        f, outcome, arg, _ = current
        if outcome == "none":
            queues[p].clear()
            continue
        result = observed() if f == "read" and outcome == "ok" else arg
        emit(p, outcome, f, result)
        pending[p] = None
        if outcome == "info":
            pid[p] += n_proc
    return records


def _parts(records: list[dict[str, Any]], model: Model) -> list[tuple[Any, Model, Any]]:
    return model.partition(pair(_events(records).events))


def _agree(records: list[dict[str, Any]], model: Model, brute: bool) -> None:
    for _key, sub, ops in _parts(records, model):
        decision = decide(sub, ops)
        assert decision is not None, records
        search = Search(sub, prepare(sub, ops)).run(1_000_000)
        assert decision.valid is search, records
        if brute:
            nil_read_any = model.nil_read_any
            init = (("k", model.init),) if nil_read_any else ()
            name = "cas-register" if nil_read_any else "kv"
            assert linearizable(records, name, init, nil_read_any=nil_read_any) is search, records
        if not decision.valid:
            # The witness is not linearizable on its own, and holds the op it blames.
            assert decision.blocker in decision.witness
            alone = Search(sub, prepare(sub, decision.witness)).run(1_000_000)
            assert alone is False, (records, decision)


@SETTINGS
@given(unique_histories(max_ops=6, init=None))
def test_kv_agrees_with_search_and_brute_force(records: list[dict[str, Any]]) -> None:
    _agree(records, make_model("kv"), brute=True)


@SETTINGS
@given(unique_histories(max_ops=6, init=0))
def test_knossos_cas_register_agrees_with_search_and_brute_force(
    records: list[dict[str, Any]],
) -> None:
    _agree(records, make_model("cas-register", 0, nil_read_any=True), brute=True)


@SETTINGS
@given(unique_histories(max_ops=14, init=None))
def test_longer_kv_histories_agree_with_search(records: list[dict[str, Any]]) -> None:
    _agree(records, make_model("kv"), brute=False)


@settings(SETTINGS, max_examples=1500)
@given(unique_histories(max_ops=14, init=None, cas=False))
def test_read_write_register_agrees_with_search(records: list[dict[str, Any]]) -> None:
    _agree(records, make_model("register"), brute=False)


@settings(SETTINGS, max_examples=500)
@given(unique_histories(max_ops=10, init=None))
def test_check_reports_the_method_and_explains_like_the_search(
    records: list[dict[str, Any]],
) -> None:
    fast = check(records, "kv", workers=1)
    slow = check(records, "kv", workers=1, fast_path=False)
    assert fast.valid is slow.valid
    assert fast.method == (METHOD_UNIQUE if fast.keys else METHOD_SEARCH)
    assert slow.method == METHOD_SEARCH
    assert [a.to_json() for a in fast.anomalies] == [a.to_json() for a in slow.anomalies]


def test_duplicate_values_and_other_models_fall_back_to_the_search() -> None:
    twice = [
        {"index": 0, "type": "invoke", "process": 0, "f": "write", "key": "k", "value": 1},
        {"index": 1, "type": "ok", "process": 0, "f": "write", "key": "k", "value": 1},
        {"index": 2, "type": "invoke", "process": 0, "f": "write", "key": "k", "value": 1},
        {"index": 3, "type": "ok", "process": 0, "f": "write", "key": "k", "value": 1},
    ]
    assert check(twice, "kv").method == METHOD_SEARCH
    assert check(twice[:2], "kv").method == METHOD_UNIQUE
    # writing the initial value is a duplicate too
    assert check(twice[:2], "kv", init=1).method == METHOD_SEARCH
    mixed = twice + [{**r, "key": "j", "value": 2, "index": 4 + i} for i, r in enumerate(twice[:2])]
    assert check(mixed, "kv").method == f"{METHOD_UNIQUE}+{METHOD_SEARCH}"


def test_an_unexplainable_search_still_gets_the_witness(monkeypatch: Any) -> None:
    import checker.api

    monkeypatch.setattr(checker.api, "_EXPLAIN_STEPS", 0)
    records = [
        {"index": 0, "type": "invoke", "process": 0, "f": "write", "key": "k", "value": 1},
        {"index": 1, "type": "ok", "process": 0, "f": "write", "key": "k", "value": 1},
        {"index": 2, "type": "invoke", "process": 0, "f": "write", "key": "k", "value": 2},
        {"index": 3, "type": "ok", "process": 0, "f": "write", "key": "k", "value": 2},
        {"index": 4, "type": "invoke", "process": 1, "f": "read", "key": "k", "value": None},
        {"index": 5, "type": "ok", "process": 1, "f": "read", "key": "k", "value": 1},
    ]
    result = check(records, "kv")
    assert result.valid is False and result.method == METHOD_UNIQUE
    (a,) = result.anomalies
    assert a.name == "stale read"
    assert a.op["value"] == 1 and [op["value"] for op in a.window] == [1, 2, 1]
    assert "write" in a.reason and "smallest failing window" in a.text


def test_corpus_histories_where_it_applies_agree_with_the_search() -> None:
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    applied = 0
    for entry in manifest:
        history = read_history(str(CORPUS / entry["path"]))
        fast = check(history, time_limit_s=60, explain_anomalies=False)
        if fast.method == METHOD_SEARCH:
            continue
        applied += 1
        slow = check(history, time_limit_s=60, explain_anomalies=False, fast_path=False)
        assert fast.valid is slow.valid is (entry["expected"] == "ok"), entry["path"]
    assert applied > 0


def test_a_budget_spent_before_the_last_key_leaves_the_rest_unknown() -> None:
    records: list[dict[str, Any]] = []
    for key in "abcde":
        for typ, f, value in [("invoke", "write", 1), ("ok", "write", 1)]:
            records.append(
                {
                    "index": len(records),
                    "type": typ,
                    "process": 0,
                    "f": f,
                    "key": key,
                    "value": value,
                }
            )
    result = check(records, "kv", time_limit_s=1e-9)
    assert result.valid == UNKNOWN and result.reason == "time limit"
    assert result.unknown_keys == ["b", "c", "d", "e"]
    assert check(records, "kv").valid is True


def _simulated(seed: int, n_ops: int, clients: int = 4) -> list[dict[str, Any]]:
    """A linearizable single-key history: each op takes effect at one instant between its
    invoke and its completion; about 1 in 20 ends in info; values are unique."""
    rng = random.Random(seed)
    state: Any = None
    records: list[dict[str, Any]] = []
    pending: list[list[Any] | None] = [None] * clients
    pid = list(range(clients))
    started = fresh = 0
    while started < n_ops or any(pending):
        c = rng.randrange(clients)
        op = pending[c]
        if op is None:
            if started < n_ops:
                started += 1
                fresh += 1
                f = rng.choice(["read", "read", "write", "cas"])
                old = state if rng.random() < 0.7 else rng.randrange(fresh)
                arg = {"read": None, "write": fresh, "cas": [old, fresh]}[f]
                pending[c] = [f, arg, False, None]
                records.append({"type": "invoke", "process": pid[c], "f": f, "value": arg})
        elif not op[2]:
            op[2] = True
            f, arg = op[0], op[1]
            if f == "read":
                op[3] = state
            elif f == "write" or state == arg[0]:
                state = arg if f == "write" else arg[1]
            else:
                op[3] = "fail"
        else:
            pending[c] = None
            f, arg, _, res = op
            typ = "info" if rng.random() < 0.05 else "fail" if res == "fail" else "ok"
            records.append(
                {"type": typ, "process": pid[c], "f": f, "value": res if f == "read" else arg}
            )
            pid[c] += clients if typ == "info" else 0
    return [{"index": i, **r} for i, r in enumerate(records)]


def test_longer_simulated_histories_with_a_corrupted_read_agree_with_search() -> None:
    verdicts = []
    for seed in range(12):
        records = _simulated(seed, 300)
        if seed % 3:
            rng = random.Random(seed)
            reads = [r for r in records if r["f"] == "read" and r["type"] == "ok"]
            victim = rng.choice(reads)
            victim["value"] = rng.choice([None, *range(1, victim["index"] // 4 + 2)])
        fast = check(records, "cas-register", init=None, workers=1)
        slow = check(records, "cas-register", init=None, workers=1, fast_path=False)
        assert fast.method == METHOD_UNIQUE and slow.method == METHOD_SEARCH
        assert fast.valid is slow.valid, seed
        if seed % 3 == 0:
            assert fast.valid is True
        verdicts.append(fast.valid)
    assert False in verdicts
