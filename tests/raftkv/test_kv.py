"""The KV state machine: every op, sessions, snapshots, and every way a command is refused."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from raftkv.kv import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    BadRequest,
    Command,
    KVStore,
    Result,
    SnapshotError,
    decode_command,
    encode_command,
    parse_command,
)


class Log:
    """Applies commands to a store at consecutive indexes, as a replica would."""

    def __init__(self, store: KVStore | None = None) -> None:
        self.store = KVStore() if store is None else store
        self.index = self.store.applied_index

    def run(self, **fields: Any) -> Result:
        self.index += 1
        return self.store.apply(self.index, encode_command(parse_command(fields)))


def test_get_of_an_absent_key_is_none() -> None:
    log = Log()
    assert log.run(op="get", key="k") == Result(True, None)
    assert log.store.get("k") is None


def test_put_then_get_through_the_log_and_locally() -> None:
    log = Log()
    assert log.run(op="put", key="k", value=1) == Result(True)
    assert log.run(op="get", key="k") == Result(True, 1)
    assert log.store.get("k") == 1
    assert log.store.applied_index == 2


def test_set_is_an_alias_of_put() -> None:
    log = Log()
    assert log.run(op="set", key="k", value="v").ok
    assert log.store.get("k") == "v"


def test_delete_removes_the_key_and_is_ok_when_absent() -> None:
    log = Log()
    log.run(op="put", key="k", value=[1, {"a": None}])
    assert log.run(op="delete", key="k") == Result(True)
    assert log.store.get("k") is None
    assert len(log.store) == 0
    assert log.run(op="delete", key="k") == Result(True)


def test_cas_match_writes() -> None:
    log = Log()
    log.run(op="put", key="k", value=1)
    assert log.run(op="cas", key="k", expected=1, value=2) == Result(True)
    assert log.store.get("k") == 2


def test_cas_mismatch_reports_the_current_value_and_writes_nothing() -> None:
    log = Log()
    log.run(op="put", key="k", value=1)
    assert log.run(op="cas", key="k", expected=3, value=2) == Result(False, 1, "cas_mismatch")
    assert log.store.get("k") == 1


def test_cas_on_an_absent_key_matches_expected_null_only() -> None:
    log = Log()
    assert log.run(op="cas", key="k", expected=0, value=1) == Result(False, None, "cas_mismatch")
    assert log.run(op="cas", key="k", expected=None, value=1) == Result(True)
    assert log.store.get("k") == 1


@pytest.mark.parametrize(("current", "expected"), [(True, 1), (1, 1.0), (0, False), ([1], [True])])
def test_cas_compares_strictly(current: Any, expected: Any) -> None:
    log = Log()
    log.run(op="put", key="k", value=current)
    assert log.run(op="cas", key="k", expected=expected, value="x").error == "cas_mismatch"


def test_a_retried_write_applies_once_and_gets_its_first_answer() -> None:
    log = Log()
    assert log.run(op="put", key="k", value=1, client="c", seq=1).ok
    log.run(op="put", key="k", value=2)  # another client's write in between
    assert log.run(op="put", key="k", value=1, client="c", seq=1) == Result(True)
    assert log.store.get("k") == 2


def test_a_retried_cas_keeps_its_first_result() -> None:
    log = Log()
    log.run(op="put", key="k", value=0)
    first = log.run(op="cas", key="k", expected=0, value=1, client="c", seq=7)
    assert first == Result(True)
    # Re-evaluated, it would now mismatch; the session answers the first result.
    assert log.run(op="cas", key="k", expected=0, value=1, client="c", seq=7) == first
    assert log.store.session("c") == (7, first)


def test_an_older_seq_is_refused_as_stale() -> None:
    log = Log()
    log.run(op="put", key="k", value=1, client="c", seq=1)
    log.run(op="put", key="k", value=2, client="c", seq=2)
    assert log.run(op="put", key="k", value=1, client="c", seq=1) == Result(
        False, None, "stale_seq"
    )
    assert log.store.get("k") == 2


def test_sessions_are_per_client_and_ignore_gets_and_seq_zero() -> None:
    log = Log()
    log.run(op="put", key="k", value=1, client="a", seq=5)
    assert log.run(op="put", key="k", value=2, client="b", seq=5).ok
    assert log.store.get("k") == 2
    log.run(op="get", key="k", client="c", seq=9)
    assert log.store.session("c") is None
    log.run(op="put", key="k", value=3, client="d", seq=0)
    log.run(op="put", key="k", value=4, client="d", seq=0)
    assert log.store.get("k") == 4
    assert log.store.session("d") is None


def test_the_session_table_evicts_the_least_recently_written_client() -> None:
    log = Log(KVStore(max_sessions=2))
    log.run(op="put", key="k", value=1, client="a", seq=1)
    log.run(op="put", key="k", value=2, client="b", seq=1)
    log.run(op="put", key="k", value=3, client="a", seq=2)  # a is now the most recent
    log.run(op="put", key="k", value=4, client="c", seq=1)
    assert log.store.session("b") is None
    assert log.store.session("a") is not None
    # The documented cost: an evicted client's retry applies again.
    assert log.run(op="put", key="k", value=2, client="b", seq=1).ok
    assert log.store.get("k") == 2


def test_apply_requires_increasing_indexes() -> None:
    store = KVStore()
    store.apply(3, encode_command(Command("put", "k", 1)))
    with pytest.raises(AssertionError):
        store.apply(3, encode_command(Command("put", "k", 2)))


def test_an_undecodable_entry_is_skipped_alike_everywhere() -> None:
    store = KVStore()
    result = store.apply(1, b"\xc1garbage")
    assert result.ok is False and result.error == "bad_request"
    assert "msgpack" in result.value
    assert store.applied_index == 1 and len(store) == 0


def _busy_store() -> KVStore:
    log = Log(KVStore(max_sessions=3))
    log.run(op="put", key="z", value={"nested": [1, 2.5, None, True]})
    log.run(op="put", key="a", value="text", client="c1", seq=1)
    log.run(op="cas", key="a", expected="nope", value="x", client="c2", seq=4)
    log.run(op="put", key="ü", value=-(1 << 63), client="c3", seq=2)
    log.run(op="delete", key="gone")
    return log.store


def test_snapshot_restore_round_trip() -> None:
    store = _busy_store()
    restored = KVStore.restore(store.snapshot(), max_sessions=3)
    assert restored == store
    assert restored.snapshot() == store.snapshot()
    assert restored.applied_index == 5
    assert restored.get("z") == {"nested": [1, 2.5, None, True]}
    assert restored.session("c2") == (4, Result(False, "text", "cas_mismatch"))


def test_restored_sessions_keep_their_eviction_order() -> None:
    store = _busy_store()
    restored = KVStore.restore(store.snapshot(), max_sessions=3)
    for replica in (store, restored):
        Log(replica).run(op="put", key="k", value=1, client="c4", seq=1)
    assert restored == store
    assert restored.session("c1") is None


def test_snapshot_is_canonical_whatever_the_insertion_order() -> None:
    one, two = Log(), Log()
    one.run(op="put", key="a", value=1)
    one.run(op="put", key="b", value=2)
    two.run(op="put", key="b", value=2)
    two.run(op="put", key="a", value=1)
    assert one.store.snapshot() == two.store.snapshot()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "version 1 map"),
        (msgpack.packb({"v": 2}), "version 1 map"),
        (msgpack.packb({"v": 1, "applied_index": -1, "data": [], "sessions": []}), ">= 0"),
        (msgpack.packb({"v": 1, "applied_index": 0, "data": {}, "sessions": []}), "arrays"),
        (msgpack.packb({"v": 1, "applied_index": 0, "data": [["k"]], "sessions": []}), "rows"),
        (msgpack.packb({"v": 1, "applied_index": 0, "data": [[1, 2]], "sessions": []}), "key"),
        (
            msgpack.packb({"v": 1, "applied_index": 0, "data": [], "sessions": [[None] * 5]}),
            "needs a client",
        ),
    ],
)
def test_restore_refuses_garbage(data: bytes, message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        KVStore.restore(data)


def test_encode_decode_round_trip() -> None:
    cmd = Command("cas", "k", {"a": [1, "b"]}, None, "client-1", 42)
    assert decode_command(encode_command(cmd)) == cmd


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (b"\x92\x01", "not valid msgpack"),
        (msgpack.packb({"op": "get"}), "6-element array"),
        (msgpack.packb(["get", "k"]), "6-element array"),
        (msgpack.packb(["nope", "k", None, None, None, 0]), "unknown op 'nope'"),
    ],
)
def test_decode_refuses_garbage(data: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_command(data)


def test_parse_accepts_the_seed_shape_and_ignores_unknown_fields() -> None:
    cmd = parse_command({"op": "set", "key": "k", "value": "v", "id": 3})
    assert cmd == Command("set", "k", "v")


def test_parse_keeps_limits_inclusive() -> None:
    parse_command({"op": "put", "key": "k" * MAX_KEY_BYTES, "value": "v" * MAX_VALUE_BYTES})


def test_parse_drops_fields_an_op_does_not_use() -> None:
    assert parse_command({"op": "get", "key": "k", "value": 1, "expected": 2}) == Command(
        "get", "k"
    )


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "command must be an object"),
        ({"key": "k"}, "op must be a string"),
        ({"op": "foo", "key": "k"}, "unknown op 'foo'"),
        ({"op": "get"}, "key must be a string"),
        ({"op": "get", "key": 5}, "key must be a string"),
        ({"op": "get", "key": ""}, "key must not be empty"),
        ({"op": "get", "key": "k" * (MAX_KEY_BYTES + 1)}, "key exceeds 1024 bytes"),
        ({"op": "get", "key": "é" * 513}, "key exceeds 1024 bytes"),
        ({"op": "get", "key": "\ud800"}, "key must be valid UTF-8"),
        ({"op": "put", "key": "k"}, "put needs a value"),
        ({"op": "set", "key": "k", "value": None}, "set needs a value"),
        ({"op": "cas", "key": "k", "expected": 1}, "cas needs a value"),
        ({"op": "cas", "key": "k", "value": 1}, "cas needs an expected value"),
        ({"op": "put", "key": "k", "value": "v" * (MAX_VALUE_BYTES + 1)}, "exceeds 65536 bytes"),
        ({"op": "put", "key": "k", "value": ["v" * MAX_VALUE_BYTES]}, "value exceeds 65536"),
        (
            {"op": "cas", "key": "k", "expected": "v" * (MAX_VALUE_BYTES + 1), "value": 1},
            "expected exceeds 65536 bytes",
        ),
        ({"op": "put", "key": "k", "value": b"raw"}, "must be a JSON value, got bytes"),
        ({"op": "put", "key": "k", "value": {1: 2}}, "object keys must be strings"),
        ({"op": "put", "key": "k", "value": float("nan")}, "finite number"),
        ({"op": "put", "key": "k", "value": 1 << 64}, "64-bit range"),
        (
            {
                "op": "put",
                "key": "k",
                "value": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
            },
            "nested deeper",
        ),
        ({"op": "put", "key": "k", "value": 1, "client": 7}, "client must be a non-empty string"),
        ({"op": "put", "key": "k", "value": 1, "client": ""}, "client must be a non-empty"),
        ({"op": "put", "key": "k", "value": 1, "client": "c" * 257}, "client exceeds 256"),
        ({"op": "put", "key": "k", "value": 1, "seq": "1"}, "seq must be an integer"),
        ({"op": "put", "key": "k", "value": 1, "seq": True}, "seq must be an integer"),
        ({"op": "put", "key": "k", "value": 1, "seq": -1}, "seq must be between 0"),
    ],
)
def test_parse_refuses_bad_commands(obj: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_command(obj)
