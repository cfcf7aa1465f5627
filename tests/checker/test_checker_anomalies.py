"""Hand-written histories, one per anomaly name, and the explanation's contents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from checker import UNKNOWN, check, merge_valid, read_history, show_key

CORPUS = Path(__file__).resolve().parent.parent / "data" / "histories"


def history(*ops: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Records from (type, process, f, value) tuples, all on key "k"."""
    return [
        {"index": i, "type": t, "process": p, "f": f, "key": "k", "value": v}
        for i, (t, p, f, v) in enumerate(ops)
    ]


def seq(process: int, f: str, value: Any, result: Any = None) -> list[tuple[Any, ...]]:
    done = value if result is None else result
    return [("invoke", process, f, value), ("ok", process, f, done)]


def anomaly(records: list[dict[str, Any]]) -> Any:
    result = check(records, "kv")
    assert result.valid is False
    assert len(result.anomalies) == 1
    return result.anomalies[0]


def test_stale_read() -> None:
    a = anomaly(history(*seq(0, "write", 1), *seq(0, "write", 2), *seq(1, "read", None, 1)))
    assert a.name == "stale read"
    assert a.op["f"] == "read" and a.op["value"] == 1
    assert a.states == [2]
    assert a.prefix_len == 2
    assert len(a.window) == 3
    assert "stale read" in a.text and "overwritten" in a.text


def test_lost_write() -> None:
    ops = [
        *seq(0, "write", 1),
        *seq(0, "write", 2),
        *seq(1, "read", None, 1),
        *seq(2, "read", None, 1),
    ]
    a = anomaly(history(*ops))
    assert a.name == "lost write"


def test_a_read_of_an_older_value_is_stale_though_no_later_read_sees_what_it_missed() -> None:
    # 2 is acknowledged, then a read sees 1 and every later read sees only 3, written after
    # that read. The state may have gone back to before 2 (a failover to a replica that
    # never got it), or the read may merely have lagged behind a replica while 2 was
    # overwritten by 3 before anyone else read it: a register cannot tell the two apart
    # once newer writes follow, so this is a stale read, never a lost write.
    ops = [
        *seq(0, "write", 1),
        *seq(0, "write", 2),
        *seq(1, "read", None, 1),
        *seq(1, "write", 3),
        *seq(2, "read", None, 3),
        *seq(0, "read", None, 3),
    ]
    a = anomaly(history(*ops))
    assert a.name == "stale read", a.text
    assert "went back" not in a.text


def test_a_lagging_read_is_stale_when_others_still_see_what_it_missed() -> None:
    ops = [
        *seq(0, "write", 1),
        *seq(0, "write", 2),
        *seq(1, "read", None, 1),
        *seq(2, "read", None, 2),
        *seq(1, "write", 3),
        *seq(2, "read", None, 3),
    ]
    a = anomaly(history(*ops))
    assert a.name == "stale read", a.text


def test_read_of_a_value_never_written() -> None:
    a = anomaly(history(*seq(0, "write", 1), *seq(1, "read", None, 7)))
    assert a.name == "read of a value never written"
    assert [op["value"] for op in a.window] == [7]


def test_read_of_absent_key_after_a_write_is_stale() -> None:
    a = anomaly(history(*seq(0, "write", 1), *seq(1, "read", None, None)))
    assert a.name == "stale read"


def test_cas_anomaly() -> None:
    a = anomaly(history(*seq(0, "write", 1), *seq(0, "cas", [5, 6])))
    assert a.name == "cas anomaly"
    assert a.op["f"] == "cas"


def test_other_for_a_mutex() -> None:
    records = [
        {"index": 0, "type": "invoke", "process": 0, "f": "acquire", "value": None},
        {"index": 1, "type": "ok", "process": 0, "f": "acquire", "value": None},
        {"index": 2, "type": "invoke", "process": 1, "f": "acquire", "value": None},
        {"index": 3, "type": "ok", "process": 1, "f": "acquire", "value": None},
    ]
    result = check(records, "mutex")
    assert result.valid is False and result.anomalies[0].name == "other"


def test_window_is_shrunk_and_keeps_the_writer_of_what_is_read() -> None:
    noise = [op for p in range(2, 6) for op in seq(p, "write", 10 + p)]
    ops = [*noise, *seq(0, "write", 1), *seq(0, "write", 2), *seq(1, "read", None, 1)]
    a = anomaly(history(*ops))
    values = [(op["f"], op["value"]) for op in a.window]
    assert ("read", 1) in values and ("write", 1) in values
    assert len(a.window) <= 3


def test_indeterminate_write_may_take_effect_late_or_never() -> None:
    ops = [("invoke", 0, "write", 1), ("info", 0, "write", 1), *seq(1, "read", None, None)]
    ops += [*seq(1, "read", None, 1), *seq(1, "read", None, 1)]
    assert check(history(*ops), "kv").valid is True
    # but once it is seen, it cannot un-happen
    assert check(history(*ops, *seq(2, "read", None, None)), "kv").valid is False


def test_failed_write_never_happened() -> None:
    ops = [("invoke", 0, "write", 1), ("fail", 0, "write", 1), *seq(1, "read", None, 1)]
    assert check(history(*ops), "kv").valid is False


def test_keys_are_independent_and_every_invalid_key_is_explained() -> None:
    records: list[dict[str, Any]] = []
    for key in ("a", "b", "c"):
        bad = key != "b"
        for t, p, f, v in [*seq(0, "write", 1), *seq(1, "read", None, 2 if bad else 1)]:
            records.append(
                {"index": len(records), "type": t, "process": p, "f": f, "key": key, "value": v}
            )
    result = check(records, "kv")
    assert result.valid is False and result.keys == 3
    assert [a.key for a in result.anomalies] == ["a", "c"]
    assert result.to_json()["anomaly"]["key"] == "a"


def test_verdicts_merge_false_over_unknown_over_true() -> None:
    assert merge_valid([True, UNKNOWN, False]) is False
    assert merge_valid([True, UNKNOWN]) == UNKNOWN
    assert merge_valid([True, True]) is True
    assert merge_valid([]) is True


def test_budgets_end_in_unknown_never_true() -> None:
    big = read_history(str(CORPUS / "porcupine/kv/c50-ok.txt"))
    timed = check(big, time_limit_s=0.001, workers=1)
    assert timed.valid == UNKNOWN and timed.reason == "time limit"
    small = check(big, memory_limit_mb=0.5, workers=1)
    assert small.valid == UNKNOWN and small.reason == "memory limit"


def test_a_read_can_witness_the_overwrite() -> None:
    # The writes of 1 and 2 overlap, but a read of 1 ended before the write of 2 began, so 2
    # was written after 1; a read of 2 ended before the last read of 1 began: 1 was overwritten.
    ops = [
        ("invoke", 0, "write", 1),
        *seq(2, "read", None, 1),
        ("invoke", 1, "write", 2),
        ("ok", 0, "write", 1),
        *seq(2, "read", None, 2),
        *seq(3, "read", None, 1),
        ("ok", 1, "write", 2),
    ]
    a = anomaly(history(*ops))
    assert a.name == "stale read", a.text
    assert "as seen by read" in a.detail["summary"], a.detail


def test_a_key_reads_as_itself_in_the_explanation_and_stays_a_string_in_json() -> None:
    records = [
        {"index": i, "type": t, "process": p, "f": f, "key": "k0", "value": v}
        for i, (t, p, f, v) in enumerate([*seq(0, "write", 1), *seq(1, "read", None, 2)])
    ]
    a = anomaly(records)
    assert a.text.startswith("key k0: ") and "p1 read k0 2 -> ok" in a.text, a.text
    assert "[" not in a.reason and "'" not in a.text, a.text
    assert a.to_json()["key"] == "k0" and a.to_json()["op"]["key"] == "k0"


def test_a_key_that_would_not_read_as_one_word_is_quoted() -> None:
    assert [show_key(k) for k in ("k0", "a b", "", 3, None)] == ["k0", "'a b'", "''", "3", "None"]


def test_a_number_key_is_bracketed_in_an_op_so_it_does_not_read_as_a_value() -> None:
    records = [  # Jepsen's independent [key, value] tuples
        {"index": i, "type": t, "process": p, "f": f, "value": [0, v]}
        for i, (t, p, f, v) in enumerate([*seq(0, "write", 1), *seq(1, "read", None, 2)])
    ]
    a = anomaly(records)
    assert a.text.startswith("key 0: ") and "p1 read [0] 2 -> ok" in a.text, a.text
