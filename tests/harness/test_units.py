"""Pure parts of a run: the generator, the history writer, certain stale reads, results."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from checker import HistoryError
from harness.analysis import count_ops, stale_reads
from harness.history import HistoryWriter, Op, ops_from_json, pair_ops, read_ops
from harness.results import check_history
from harness.store import new_run_dir
from harness.workload import Generator, WorkloadOptions


def test_generator_is_seeded_and_writes_unique_values() -> None:
    def ops(seed: int) -> list[Any]:
        gen = Generator(WorkloadOptions("kv", keys=4), random.Random(seed))
        return [gen.next() for _ in range(2000)]

    first = ops(5)
    assert first == ops(5) and first != ops(6)
    written = [o.value for o in first if o.f == "write"] + [
        o.value[1] for o in first if o.f == "cas"
    ]
    assert len(written) == len(set(written)), "written values must be unique"
    mix = Counter(o.f for o in first)
    assert mix["read"] > mix["write"] > mix["cas"] > 0
    assert {o.key for o in first} == {"k0", "k1", "k2", "k3"}
    cas_olds = [o.value[0] for o in first if o.f == "cas"]
    assert any(old is not None for old in cas_olds), "cas should guess values it saw"


def test_register_workload_uses_one_key_and_bad_options_are_refused() -> None:
    gen = Generator(WorkloadOptions("register", keys=9), random.Random(1))
    assert {gen.next().key for _ in range(100)} == {"k0"}
    with pytest.raises(ValueError, match="workload"):
        WorkloadOptions("queue")
    with pytest.raises(ValueError, match="keys"):
        WorkloadOptions("kv", keys=0)


def test_history_writer_flushes_dense_ops_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    writer = HistoryWriter(path, flush_interval_s=0.0)
    writer.record("invoke", 0, "write", key="k", value=1)
    writer.record("ok", 0, "write", key="k", value=1)
    # Flushed already: a killed harness loses nothing written before the last flush.
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [op["index"] for op in lines] == [0, 1]
    assert lines[0]["time"] <= lines[1]["time"]
    assert lines[1] == {**lines[1], "type": "ok", "process": 0, "f": "write", "value": 1}
    writer.record("invoke", 1, "read", key="k", value=None)
    writer.close()
    assert json.loads(path.read_text().splitlines()[-1])["value"] is None


def test_an_op_writes_back_the_very_record_it_was_read_from() -> None:
    records = [
        {"index": 0, "time": 5, "type": "invoke", "process": 0, "f": "read", "key": "k"},
        {"f": "read", "type": "ok", "process": 0, "index": 1, "time": 7, "key": None,
         "value": [1, {"a": None}], "node": "n2", "error": None},
        {"index": 2, "time": 9, "type": "info", "process": "nemesis", "f": "start",
         "value": ["n1"], "fault": "kill", "error": "n3: timed out"},
    ]  # fmt: skip
    ops = ops_from_json(records)
    assert [op.to_json() for op in ops] == records
    assert [list(op.to_json()) for op in ops] == [list(r) for r in records]  # key order too
    assert ops[1].value == [1, {"a": None}] and ops[1].extra == {"node": "n2"}
    assert ops[2].extra == {"fault": "kill"} and ops[2].error == "n3: timed out"
    made = Op(3, 11, "ok", 1, "write", key="k", value=None, extra={"node": "n1"})
    assert list(made.to_json()) == ["index", "time", "type", "process", "f", "key", "value", "node"]
    with pytest.raises(HistoryError, match="index, time, type, process, f") as caught:
        ops_from_json([records[0], {"index": 1, "type": "ok"}])
    assert caught.value.line == 2


def test_the_writer_keeps_in_memory_the_ops_history_jsonl_reads_back(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path / "history.jsonl")
    writer.record("invoke", 0, "cas", key="k", value=(1, 2))
    writer.record("info", "nemesis", "start", value={"n1": ["n2"]}, fault="partition", error="x")
    writer.record("fail", 0, "cas", key="k", value=(1, 2), error=None)
    writer.close()
    back = read_ops(tmp_path / "history.jsonl")
    assert [op.to_json() for op in back] == json.loads(
        json.dumps([o.to_json() for o in writer.ops])
    )
    assert list(back[1].to_json())[5:] == ["value", "fault", "error"]  # as written
    assert "error" not in back[2].to_json()


def test_a_client_op_recorded_in_short_is_the_line_and_op_record_makes(tmp_path: Path) -> None:
    long, short = (
        HistoryWriter(tmp_path / name, clock=lambda: 12_345)
        for name in ("long.jsonl", "short.jsonl")
    )
    values = [None, 0, -7, 2**64 - 1, 10**30, True, 1.5, float("inf"), "", 'é"\\\n', [1, None],
              (2, 3), {"a": [{"b": "ü"}]}]  # fmt: skip
    for type_, process, key, value, error in itertools.product(
        ("invoke", "ok", "info"), (0, 7), (None, "k0", "ü"), values, (None, "timeout", "é")
    ):
        made = short.record_client(type_, process, "cas", key, value, error)
        assert made == long.record(type_, process, "cas", key=key, value=value, error=error)
    long.close()
    short.close()
    assert short.path.read_bytes() == long.path.read_bytes()


def test_spans_pair_invocations_with_completions_and_an_info_op_may_end_any_time() -> None:
    ops = ops_from_json([
        {"index": 0, "time": 0, "type": "invoke", "process": 0, "f": "write", "value": 1},
        {"index": 1, "time": 1, "type": "invoke", "process": 1, "f": "read", "value": None},
        {"index": 2, "time": 2, "type": "info", "process": 0, "f": "write", "value": None},
        {"index": 3, "time": 3, "type": "ok", "process": 9, "f": "read", "value": 5},
    ])  # fmt: skip
    written, unfinished = pair_ops(ops)
    assert (written.type, written.value, written.end_ns) == ("info", 1, 2)
    assert written.done_by_ns == math.inf  # an info write may take effect at any time
    assert written.written == 1 and unfinished.written is None
    assert (unfinished.index, unfinished.type, unfinished.end_ns) == (1, "info", None)


def op(index: int, time: int, type_: str, process: int, f: str, key: str, value: Any) -> dict:  # type: ignore[type-arg]
    return {
        "index": index,
        "time": time,
        "type": type_,
        "process": process,
        "f": f,
        "key": key,
        "value": value,
    }


def build(events: list[tuple[str, int, str, Any]]) -> list[dict]:  # type: ignore[type-arg]
    """(type, process, f, value) in order; times are the positions, key is always k."""
    return [op(i, i * 1_000_000, t, p, f, "k", v) for i, (t, p, f, v) in enumerate(events)]


def test_a_read_of_a_value_overwritten_before_it_began_is_certainly_stale() -> None:
    history = build([
        ("invoke", 0, "write", 1), ("ok", 0, "write", 1),
        ("invoke", 0, "write", 2), ("ok", 0, "write", 2),
        ("invoke", 1, "read", None), ("ok", 1, "read", 1),
    ])  # fmt: skip
    [stale] = stale_reads(pair_ops(ops_from_json(history)))
    assert (stale.value, stale.overwritten_by) == (1, 2)
    assert stale.staleness_ms == pytest.approx(1.0)
    checked = check_history(ops_from_json(history), time_limit_s=10)
    assert checked["valid"] is False and checked["keys"] == {"k": False}
    assert checked["stale_reads"] == 1


def test_concurrent_and_indeterminate_writes_never_make_a_read_certainly_stale() -> None:
    history = build([
        ("invoke", 0, "write", 1), ("ok", 0, "write", 1),
        ("invoke", 0, "write", 2),              # concurrent with the read below
        ("invoke", 1, "read", None), ("ok", 1, "read", 1),
        ("info", 0, "write", 2),
        ("invoke", 2, "write", 3), ("info", 2, "write", 3),   # may never have happened
        ("invoke", 3, "read", None), ("ok", 3, "read", 2),
    ])  # fmt: skip
    assert stale_reads(pair_ops(ops_from_json(history))) == []
    checked = check_history(ops_from_json(history), time_limit_s=10)
    assert checked["valid"] is True and checked["stale_reads"] == 0
    counts = count_ops(pair_ops(ops_from_json(history)))
    assert counts["all"] == {"ok": 3, "info": 2} and counts["read"] == {"ok": 2}


def test_reading_the_initial_null_after_a_completed_write_is_stale() -> None:
    history = build([
        ("invoke", 0, "write", 7), ("ok", 0, "write", 7),
        ("invoke", 1, "read", None), ("ok", 1, "read", None),
    ])  # fmt: skip
    [stale] = stale_reads(pair_ops(ops_from_json(history)))
    assert stale.value is None and stale.overwritten_by == 7


def test_nemesis_ops_are_ignored_and_unfinished_ops_are_indeterminate() -> None:
    history = build([("invoke", 0, "write", 1), ("ok", 0, "write", 1)])
    history.append(
        {
            "index": 2,
            "time": 5,
            "type": "info",
            "process": "nemesis",
            "f": "start",
            "value": {"n1": ["n2"]},
        }
    )
    history.append(op(3, 6, "invoke", 1, "write", "k", 2))  # the harness died here
    spans = pair_ops(ops_from_json(history))
    assert [(s.f, s.type) for s in spans] == [("write", "ok"), ("write", "info")]
    assert check_history(ops_from_json(history), time_limit_s=10)["valid"] is True


def test_a_read_of_another_value_can_prove_the_overwrite() -> None:
    # The writes overlap, but a read of 1 ended before the write of 2 began, so 2 was written
    # after 1; the read of 2 ended before the reads of 1 began: 1 had been overwritten.
    history = build([
        ("invoke", 0, "write", 1),
        ("invoke", 2, "read", None), ("ok", 2, "read", 1),
        ("invoke", 1, "write", 2), ("ok", 0, "write", 1),
        ("invoke", 2, "read", None), ("ok", 2, "read", 2),
        ("invoke", 2, "read", None), ("ok", 2, "read", 1),
        ("invoke", 3, "read", None), ("ok", 3, "read", 1),
        ("ok", 1, "write", 2),
    ])  # fmt: skip
    found = stale_reads(pair_ops(ops_from_json(history)))
    assert [(s.value, s.overwritten_by) for s in found] == [(1, 2), (1, 2)]
    assert found[0].staleness_ms == pytest.approx(1.0)  # from the end of the read of 2


def test_reads_of_the_same_value_prove_nothing() -> None:
    history = build([
        ("invoke", 0, "write", 1), ("ok", 0, "write", 1),
        ("invoke", 1, "read", None), ("ok", 1, "read", 1),
        ("invoke", 2, "read", None), ("ok", 2, "read", 1),
    ])  # fmt: skip
    assert stale_reads(pair_ops(ops_from_json(history))) == []


def test_runs_started_in_the_same_millisecond_get_directories_of_their_own(
    tmp_path: Path,
) -> None:
    def now() -> dt.datetime:
        return dt.datetime(2026, 1, 2, 3, 4, 5, 678_000)

    made = [new_run_dir(tmp_path, "t", now=now) for _ in range(3)]
    assert len(set(made)) == 3 and all(d.is_dir() for d in made)
    assert made[0].name == "20260102T030405.678" and made[1].name == "20260102T030405.678-1"
