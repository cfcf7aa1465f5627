"""Grow-only sets per key (``set-kv``): the model, the names of set anomalies, and
`set_analysis`."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from checker_brute import linearizable
from hypothesis import given, settings
from hypothesis import strategies as st

from checker import ANOMALY_NAMES, LostElement, check, set_analysis
from checker.models import make_model
from checker.ops import pair
from checker.readers import as_history
from checker.sets import classify_set


class Log:
    """Records of a set history, written one event at a time."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def line(self) -> int:
        """The line the next record will have (1-based)."""
        return len(self.records) + 1

    def invoke(self, process: int, f: str, key: str, value: Any = None) -> int:
        line = self.line()
        self.records.append(
            {"type": "invoke", "process": process, "f": f, "key": key, "value": value}
        )
        return line

    def end(self, process: int, f: str, key: str, value: Any = None, typ: str = "ok") -> None:
        self.records.append({"type": typ, "process": process, "f": f, "key": key, "value": value})

    def add(self, process: int, key: str, element: Any, typ: str = "ok") -> int:
        line = self.invoke(process, "add", key, element)
        self.end(process, "add", key, element, typ)
        return line

    def read(self, process: int, key: str, elements: list[Any]) -> int:
        line = self.invoke(process, "read", key)
        self.end(process, "read", key, elements)
        return line


def test_reads_in_any_order_of_what_was_added_are_valid() -> None:
    log = Log()
    log.add(0, "k3", 17)
    log.read(1, "k3", [17])
    log.add(0, "k3", 1)
    log.add(2, "k4", 5)
    log.read(1, "k3", [17, 1])
    log.read(1, "k4", [5])
    result = check(log.records, "set-kv")
    assert result.valid is True, result.to_json()
    assert result.model == "set-kv" and result.keys == 2


def test_a_read_concurrent_with_an_add_may_see_it_or_not() -> None:
    log = Log()
    log.add(0, "k", 1)
    log.invoke(0, "add", "k", 2)
    log.read(1, "k", [1])
    log.read(2, "k", [2, 1])
    log.read(1, "k", [1, 2])
    log.end(0, "add", "k", 2)
    assert check(log.records, "set-kv").valid is True


def test_a_failed_add_never_happened_and_an_info_add_may_have() -> None:
    log = Log()
    log.add(0, "k", 1, "fail")
    log.add(1, "k", 2, "info")
    log.read(2, "k", [])
    log.read(2, "k", [2])
    assert check(log.records, "set-kv").valid is True
    log.read(2, "k", [1, 2])
    assert check(log.records, "set-kv").valid is False


def test_a_read_that_drops_an_element_is_invalid_on_its_key_only() -> None:
    log = Log()
    log.add(0, "a", 1)
    log.add(0, "b", 1)
    log.read(1, "a", [1])
    log.read(1, "b", [])
    result = check(log.records, "set-kv")
    assert result.valid is False
    assert [a.key for a in result.anomalies] == ["b"]
    assert "#{1}" in result.anomalies[0].text


def anomaly(log: Log) -> Any:
    result = check(log.records, "set-kv")
    assert result.valid is False
    assert len(result.anomalies) == 1
    return result.anomalies[0]


def test_an_acknowledged_add_that_no_later_read_contains_is_a_lost_write() -> None:
    log = Log()
    log.add(0, "k3", 1)
    line = log.add(0, "k3", 17)
    log.read(1, "k3", [1, 17])
    log.read(1, "k3", [1])
    log.add(0, "k3", 5)
    log.read(2, "k3", [1, 5])
    log.read(1, "k3", [5, 1])
    a = anomaly(log)
    assert a.name == "lost write", a.text
    assert a.detail["summary"] == (
        f"add 17 (line {line}) was acknowledged before this read began; neither this read "
        "nor any of the 2 reads of k3 that began after it contain 17: the acknowledged write "
        "vanished"
    )
    assert a.detail["element"] == 17 and a.detail["add_line"] == line


def test_the_last_read_missing_an_acknowledged_add_is_a_lost_write() -> None:
    log = Log()
    log.add(0, "k", 1)
    log.read(1, "k", [])
    assert anomaly(log).name == "lost write"


@pytest.mark.parametrize("known_by", ["add", "read"])
def test_a_read_missing_what_a_later_read_contains_is_stale(known_by: str) -> None:
    log = Log()
    if known_by == "add":
        line = log.add(0, "k3", 17)
        how = f", acknowledged before it began (line {line})"
    else:  # the add never returned, but a read that ended before this one saw it
        line = log.invoke(0, "add", "k3", 17)
        seen = log.read(1, "k3", [17])
        how = f" (added on line {line}), returned by a read (line {seen}) that ended"
        how += " before it began"
    log.read(2, "k3", [])
    later = log.read(1, "k3", [17])
    a = anomaly(log)
    assert a.name == "stale read", a.text
    want = f"this read missed 17{how}; a later read (line {later}) contains it"
    assert a.detail["summary"] == want


def test_an_element_a_finished_read_returned_must_stay() -> None:
    # The add never returned, but a read that ended before the last one began saw it.
    log = Log()
    log.invoke(0, "add", "k", 4)
    log.read(1, "k", [4])
    log.read(1, "k", [])
    a = anomaly(log)
    assert a.name == "lost write", a.text
    assert "was returned by a read" in a.detail["summary"]


def test_a_read_of_an_element_never_added() -> None:
    log = Log()
    log.add(0, "k", 1)
    log.add(0, "k", 2, "fail")
    log.read(1, "k", [1, 2, 9])
    a = anomaly(log)
    assert a.name == "read of a value never written", a.text
    assert a.detail["summary"] == "no operation ever added 2 9"


def test_set_analysis_counts_lost_stale_unread_and_ok_elements() -> None:
    log = Log()
    log.add(0, "k", 1)  # ok: every later read has it
    lost = log.add(0, "k", 2)  # seen, then gone for good
    log.add(0, "k", 3)  # stale: one read misses it, the last has it
    log.read(1, "k", [1, 2])
    gone = log.read(1, "k", [1, 3])
    log.read(2, "k", [1, 3])
    log.add(0, "k", 4)  # unread: no read began after it
    log.add(0, "j", 1, "fail")
    log.read(1, "j", [])
    result = set_analysis(log.records)
    assert result.acknowledged == 4
    assert (result.ok, result.stale, result.unread) == (1, 1, 1)
    assert result.lost == [LostElement("k", 2, lost, gone, 2)]
    assert result.unexpected == [] and not result.valid
    out = result.to_json()
    assert out["lost"] == [
        {"key": "k", "element": 2, "add_line": lost, "missing_from_line": gone,
         "reads_missing": 2, "acknowledged": True}
    ]  # fmt: skip
    assert json.loads(json.dumps(out)) == out


def test_set_analysis_knows_an_info_add_from_a_read_and_flags_what_was_never_added() -> None:
    log = Log()
    info = log.add(0, "k", 7, "info")
    log.add(5, "k", 8, "info")  # never read: not known, so not counted
    log.add(1, "k", 9, "fail")
    first = log.read(1, "k", [7, 9])
    log.read(2, "k", [7])
    gone = log.read(1, "k", [])
    result = set_analysis(log.records)
    assert result.acknowledged == 0
    assert result.lost == [LostElement("k", 7, info, gone, 1, acknowledged=False)]
    assert result.unexpected == [("k", 9, first)]
    assert (result.ok, result.stale, result.unread) == (0, 0, 0)


def test_set_analysis_of_a_valid_history_file(tmp_path: Path) -> None:
    log = Log()
    log.add(0, "k", 1)
    log.read(1, "k", [1])
    log.add(0, "k", 2)
    log.invoke(0, "add", "k", 3)
    log.read(1, "k", [2, 1])
    log.end(0, "add", "k", 3)
    path = tmp_path / "history.jsonl"
    path.write_text(
        "".join(json.dumps({"index": i, **r}) + "\n" for i, r in enumerate(log.records))
    )
    result = set_analysis(path)
    assert result.valid and result.to_json()["valid"] is True
    assert (result.acknowledged, result.ok, result.unread) == (3, 2, 1)


def test_a_read_that_saw_a_newer_add_must_see_what_was_acknowledged_before_it() -> None:
    # The read began before 1 was acknowledged, but it saw 2, added after that: it took
    # effect after 1 was in the set, and missed it.
    log = Log()
    log.invoke(1, "read", "k")
    first = log.add(0, "k", 1)
    line = log.add(0, "k", 2)
    log.end(1, "read", "k", [2])
    later = log.read(1, "k", [1, 2])
    a = anomaly(log)
    assert a.name == "stale read", a.text
    assert a.detail["summary"] == (
        f"this read missed 1, acknowledged before the add of 2 (line {line}), which it saw, "
        f"began (line {first}); a later read (line {later}) contains it"
    )


def set_run(
    seed: int, n_ops: int = 6, keys: int = 2, clients: int = 3, drop: bool = True
) -> list[dict[str, Any]]:
    """Records of `clients` clients on real grow-only sets: each op begins, takes effect
    and ends at random times, one op at a time per client (an info add took effect or not);
    then, with `drop`, half the runs drop an element from one read, or from every read of
    its key from one on."""
    rng = random.Random(seed)
    clock = [0.0] * clients
    moments: list[tuple[float, int, int, list[Any]]] = []  # (time, phase, op number, op)
    for n in range(n_ops):
        c = rng.randrange(clients)
        f, value = ("add", n + 1) if rng.random() < 0.5 else ("read", None)
        outcome = rng.choice(["info", "fail"]) if f == "add" and rng.random() < 0.2 else "ok"
        op = [c, f, rng.randrange(keys), value, outcome]
        begin = clock[c] + rng.random()
        effect = begin + rng.random()
        clock[c] = effect + rng.random()
        moments += [(begin, 0, n, op), (effect, 1, n, op), (clock[c], 2, n, op)]
    sets: list[set[int]] = [set() for _ in range(keys)]
    pid = list(range(clients))
    log = Log()
    for _, phase, _, op in sorted(moments):
        c, f, key, value, outcome = op
        if phase == 0:
            log.invoke(pid[c], f, f"k{key}", value)
        elif phase == 2:
            log.end(pid[c], f, f"k{key}", value, outcome)
            pid[c] += clients if outcome == "info" else 0
        elif f == "read":
            op[3] = sorted(sets[key], key=lambda _: rng.random())
        elif outcome == "ok" or (outcome == "info" and rng.random() < 0.5):
            sets[key].add(value)
    reads = [r for r in log.records if r["type"] == "ok" and r["f"] == "read" and r["value"]]
    if drop and reads and rng.random() < 0.5:
        victim = rng.choice(reads)
        gone = rng.choice(victim["value"])
        every = rng.random() < 0.5
        for r in reads[reads.index(victim) :] if every else [victim]:
            if r["key"] == victim["key"]:
                r["value"] = [e for e in r["value"] if e != gone]
    return log.records


@settings(max_examples=400, deadline=None, database=None)
@given(st.integers(0, 2**32))
def test_set_kv_on_real_sets_agrees_with_brute_force(seed: int) -> None:
    records = set_run(seed)
    result = check(records, "set-kv", workers=1)
    assert result.valid is linearizable(records, "set-kv", ()), records
    analysis = set_analysis(records)
    if analysis.lost or analysis.stale or analysis.unexpected:
        assert result.valid is False, (analysis, records)
    for a in result.anomalies:
        assert a.name in ANOMALY_NAMES


def test_a_long_set_history_checks_in_seconds() -> None:
    # 50,000 ops of 10 clients over 125 keys (about 200 adds each): about a second each.
    records = set_run(1, n_ops=50_000, keys=125, clients=10, drop=False)
    started = time.monotonic()
    result = check(records, "set-kv")
    assert result.valid is True and result.keys == 125
    analysis = set_analysis(records)
    assert analysis.valid and analysis.stale == 0
    assert time.monotonic() - started < 30


def test_auto_picks_set_kv_for_keyed_adds() -> None:
    log = Log()
    log.add(0, "k", 1)
    log.read(1, "k", [1])
    assert check(log.records).model == "set-kv"


def test_an_add_acknowledged_before_the_read_is_named_though_a_read_saw_it_first() -> None:
    log = Log()
    log.invoke(1, "read", "k")
    line = log.invoke(0, "add", "k", 5)
    log.end(1, "read", "k", [5])
    log.end(0, "add", "k", 5)
    log.read(1, "k", [])
    a = anomaly(log)
    assert a.name == "lost write", a.text
    assert a.detail["summary"].startswith(
        f"add 5 (line {line}) was acknowledged before this read began; "
    )


def test_a_loss_a_later_read_proves_names_a_read_that_misses_nothing_known() -> None:
    # p5's read began first and returned [2]; add 1 and a read of [1] ended while add 2 was
    # still running. So p5's read misses nothing known before it (or before add 2) began,
    # yet no order places it (1 before [1] before 2 before [2] before 1). The later read of
    # [2] lacks 1, acknowledged before it began: the loss that explains it.
    log = Log()
    log.invoke(5, "read", "k")
    log.invoke(2, "add", "k", 2)
    add_line = log.add(0, "k", 1)
    log.read(3, "k", [1])
    log.end(2, "add", "k", 2)
    log.end(5, "read", "k", [2])
    later = log.read(1, "k", [2])
    ops = pair(as_history(log.records).events)
    blocker = next(op for op in ops if op.process == 5)
    name, detail = classify_set(make_model("set-kv"), ops, blocker)
    assert name == "lost write", detail
    assert detail["summary"] == (
        f"add 1 (line {add_line}) was acknowledged before a later read (line {later}) began; "
        "that read, the last of k, does not contain 1: the write vanished, and this read "
        "cannot be placed in that history"
    )
    assert detail["element"] == 1 and detail["lost"] == [1]
    assert not check(log.records, model="set-kv").valid


def test_a_long_read_is_shown_by_its_ends_and_its_size() -> None:
    log = Log()
    for e in range(30):
        log.add(0, "k", e)
    log.read(1, "k", list(range(1, 30)))  # 0 is gone
    a = anomaly(log)
    assert a.name == "lost write"
    assert "read k [1 2 3 4 5 6 7 8 9 ... 29] (29 items)" in a.text, a.text
    assert " 15 " not in a.text.split("smallest failing window")[0]
