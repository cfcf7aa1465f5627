"""A brute-force linearizability checker: the specification the fast search is tested against.

It knows nothing of the checker package. It pairs records itself, then tries every subset of
the indeterminate operations and every order of the chosen operations that respects real time,
applying its own sequential semantics. Exponential: for histories of a handful of operations.
"""

from __future__ import annotations

import itertools
from typing import Any

INF = float("inf")


def ops_of(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(completed ops, indeterminate ops), each {f, key, value, call, ret}."""
    pending: dict[Any, dict[str, Any]] = {}
    done, maybe = [], []
    for pos, rec in enumerate(records):
        if rec["process"] == "nemesis":
            continue
        if rec["type"] == "invoke":
            pending[rec["process"]] = {
                "f": rec["f"],
                "key": rec.get("key"),
                "value": rec.get("value"),
                "call": pos,
                "ret": INF,
            }
            continue
        op = pending.pop(rec["process"])
        if rec["type"] == "ok":
            op["ret"] = pos
            if op["f"] == "read" or op["f"] == "get":
                op["value"] = rec.get("value")
            done.append(op)
        elif rec["type"] == "info":
            maybe.append(op)
    maybe.extend(pending.values())
    return done, maybe


def apply(model: str, state: Any, op: dict[str, Any], nil_read_any: bool) -> Any:
    """The next state, or the string "ILLEGAL"."""
    f, v = op["f"], op["value"]
    if model in ("kv", "cas-register"):
        key = op["key"]
        current = dict(state).get(key)
        if f == "read":
            if v is None and nil_read_any:
                return state
            return state if current == v else "ILLEGAL"
        if f == "write":
            return tuple(sorted({**dict(state), key: v}.items(), key=repr))
        if f == "cas":
            old, new = v
            if current != old:
                return "ILLEGAL"
            return tuple(sorted({**dict(state), key: new}.items(), key=repr))
    if model == "mutex":
        if f == "acquire":
            return "ILLEGAL" if state else True
        return False if state else "ILLEGAL"
    if model == "append-kv":
        if f == "get":
            return state if state == v else "ILLEGAL"
        return v if f == "put" else state + v
    if model == "set-kv":
        sets = dict(state)
        current = sets.get(op["key"], frozenset())
        if f == "add":
            return tuple(sorted({**sets, op["key"]: current | {v}}.items(), key=repr))
        return state if v is None or current == frozenset(v) else "ILLEGAL"
    if model == "set":
        if f == "add":
            return state | {v}
        return state if v is None or state == frozenset(v) else "ILLEGAL"
    raise AssertionError(f"unknown op {f} for {model}")


def respects_real_time(order: tuple[dict[str, Any], ...]) -> bool:
    return all(not (b["ret"] < a["call"]) for i, a in enumerate(order) for b in order[i + 1 :])


def linearizable(
    records: list[dict[str, Any]], model: str, init: Any, *, nil_read_any: bool = False
) -> bool:
    done, maybe = ops_of(records)
    for size in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, size):
            for order in itertools.permutations(done + list(chosen)):
                if not respects_real_time(order):
                    continue
                state = init
                for op in order:
                    state = apply(model, state, op, nil_read_any)
                    if state == "ILLEGAL":
                        break
                else:
                    return True
    return False
