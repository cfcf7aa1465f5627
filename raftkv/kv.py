"""The key-value state machine that Raft replicates: deterministic, no I/O.

Commands arrive as JSON-like dicts from clients (`parse_command`), travel through the log
as msgpack bytes (`encode_command` / `decode_command`) and are applied in log order by
`KVStore.apply`. Every replica that applies the same entries in the same order reaches the
same state, the same session table and the same results; nothing here reads a clock or a
random source.

Values are JSON values: str, int, float, bool, None, and lists / string-keyed dicts of
those. Comparisons (cas) are strict: `True` is not `1`, `1` is not `1.0`.

Errors:
    BadRequest (ValueError)     a command that can never be valid; the message says why.
    SnapshotError (ValueError)  a snapshot image that cannot be restored.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "MAX_CLIENT_BYTES",
    "MAX_KEY_BYTES",
    "MAX_SESSIONS",
    "MAX_VALUE_BYTES",
    "OPS",
    "BadRequest",
    "Command",
    "KVStore",
    "Result",
    "SnapshotError",
    "decode_command",
    "encode_command",
    "parse_command",
]

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 64 * 1024
MAX_CLIENT_BYTES = 256
MAX_SESSIONS = 10_000
# JSON nesting deeper than this is refused: it would only serve to exhaust the stack.
MAX_VALUE_DEPTH = 32
OPS = ("get", "put", "set", "delete", "cas")
WRITE_OPS = frozenset({"put", "set", "delete", "cas"})

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1  # msgpack's widest unsigned integer
_SEQ_MAX = (1 << 63) - 1
_SNAPSHOT_VERSION = 1
# Log entry payloads decoded lately (up to 4,096 of them): every replica of a simulated
# cluster applies the same entry. Only commands with scalar values are kept, so that no
# two stores share a mutable value.
_DECODED: dict[bytes, Command] = {}
_DECODED_MAX = 4096


class BadRequest(ValueError):
    """A command that is malformed or out of limits; the message says exactly what is wrong."""


class SnapshotError(ValueError):
    """A snapshot image that is not one `KVStore.snapshot` could have written."""


# Slotted, not frozen, for the cost of a frozen __init__ (see raftkv.types.Message): never
# changed after it is made (a decoding is shared by the replicas), hashed and compared as
# a frozen one would be.
@dataclass(slots=True, unsafe_hash=True)
class Command:
    """One client command, validated.

    `op` is one of OPS ("set" is the seed API's name for "put"). `value` is the value to
    write (put, cas); `expected` the value cas compares with (None: the key is absent).
    `client` and `seq` form the session: when `client` is set and `seq` > 0, a write is
    applied at most once per (client, seq); see `KVStore.apply`.
    """

    op: str
    key: str
    value: Any = None
    expected: Any = None
    client: str | None = None
    seq: int = 0


@dataclass(frozen=True)
class Result:
    """The outcome of applying one command.

    ok=True: get carries the value (None: absent); put, delete and a matching cas carry None.
    ok=False errors (each certainly did not change the state):
      "cas_mismatch"  cas found another value; `value` is the current one (None: absent).
      "stale_seq"     a session write older than the client's last applied one; not applied
                      now (an earlier copy of it may or may not have been applied).
      "bad_request"   the log entry did not decode as a command; `value` holds the reason.
    """

    ok: bool
    value: Any = None
    error: str | None = None


def _utf8_len(text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"{what} must be valid UTF-8 text") from None


def _check_json(value: object, what: str, depth: int = 0) -> None:
    """Raise BadRequest unless `value` is a JSON value msgpack can carry."""
    if depth > MAX_VALUE_DEPTH:
        raise BadRequest(f"{what} is nested deeper than {MAX_VALUE_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise BadRequest(f"{what} integer is out of the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{what} must be a finite number")
    elif isinstance(value, str):
        _utf8_len(value, what)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, what, depth + 1)
    elif isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise BadRequest(f"{what} object keys must be strings")
            _utf8_len(name, what)
            _check_json(item, what, depth + 1)
    else:
        raise BadRequest(f"{what} must be a JSON value, got {type(value).__name__}")


def _check_value(value: object, what: str) -> None:
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return  # the common case, settled without the walk below
    _check_json(value, what)
    # A string's size is its UTF-8 length; any other value's is its msgpack encoding.
    if isinstance(value, str):
        size = _utf8_len(value, what)
    elif isinstance(value, list | dict):
        size = len(msgpack.packb(value, use_bin_type=True))
    else:
        return
    if size > MAX_VALUE_BYTES:
        raise BadRequest(f"{what} exceeds {MAX_VALUE_BYTES} bytes")


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise BadRequest("key must be a string")
    if not key:
        raise BadRequest("key must not be empty")
    if _utf8_len(key, "key") > MAX_KEY_BYTES:
        raise BadRequest(f"key exceeds {MAX_KEY_BYTES} bytes")
    return key


def _check_session(client: object, seq: object) -> tuple[str | None, int]:
    if client is not None:
        if not isinstance(client, str) or not client:
            raise BadRequest("client must be a non-empty string")
        if _utf8_len(client, "client") > MAX_CLIENT_BYTES:
            raise BadRequest(f"client exceeds {MAX_CLIENT_BYTES} bytes")
    if seq is None:
        seq = 0
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise BadRequest("seq must be an integer")
    if not 0 <= seq <= _SEQ_MAX:
        raise BadRequest(f"seq must be between 0 and {_SEQ_MAX}")
    return client, seq


def parse_command(obj: object) -> Command:
    """Validate a decoded JSON or msgpack object and return the Command it describes.

    Expects a dict with "op" and "key"; "value" (put/set and cas), "expected" (cas; the
    field must be present, null meaning "absent"), optional "client" and "seq". Fields it
    does not know are ignored, so clients may send request ids of their own.
    Raises BadRequest naming the first problem found.
    """
    if not isinstance(obj, dict):
        raise BadRequest("command must be an object")
    op = obj.get("op")
    if not isinstance(op, str):
        raise BadRequest("op must be a string")
    if op not in OPS:
        raise BadRequest(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    key = _check_key(obj.get("key"))
    client, seq = _check_session(obj.get("client"), obj.get("seq"))
    value = obj.get("value")
    expected = obj.get("expected")
    if op in ("put", "set", "cas"):
        if value is None:
            raise BadRequest(f"{op} needs a value")
        _check_value(value, "value")
    else:
        value = None
    if op == "cas":
        if "expected" not in obj:
            raise BadRequest("cas needs an expected value (null: the key is absent)")
        _check_value(expected, "expected")
    else:
        expected = None
    return Command(op, key, value, expected, client, seq)


def encode_command(cmd: Command, *, parsed: bool = False) -> bytes:
    """The log entry payload for `cmd`: a msgpack array, compact and order-fixed.

    `parsed`: `cmd` is what `parse_command` returned, so decoding the payload gives it back;
    `decode_command` then finds it without decoding (a leader applies what it proposed)."""
    row = [cmd.op, cmd.key, cmd.value, cmd.expected, cmd.client, cmd.seq]
    data: bytes = msgpack.packb(row, use_bin_type=True)
    if parsed:
        _remember_decoded(data, cmd)
    return data


def decode_command(data: bytes) -> Command:
    """Inverse of `encode_command`; raises BadRequest on anything it did not write."""
    if type(data) is not bytes:  # unhashable, or not what a log entry holds
        return _decode(data)
    cmd = _DECODED.get(data)
    if cmd is None:
        cmd = _decode(data)
        _remember_decoded(data, cmd)
    return cmd


def _remember_decoded(data: bytes, cmd: Command) -> None:
    if type(cmd.value) in (list, dict) or type(cmd.expected) in (list, dict):
        return
    if len(_DECODED) >= _DECODED_MAX:
        _DECODED.clear()  # dropping the oldest one by one makes iter() crawl over holes
    _DECODED[data] = cmd


def _decode(data: bytes) -> Command:
    try:
        row = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise BadRequest(f"command is not valid msgpack: {err}") from None
    if not isinstance(row, list) or len(row) != 6:
        raise BadRequest("command must be a 6-element array")
    names = ("op", "key", "value", "expected", "client", "seq")
    return parse_command(dict(zip(names, row)))


def _same(a: object, b: object) -> bool:
    """Strict JSON equality: types must match, so True != 1 and 1 != 1.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


class KVStore:
    """The replicated state: a dict of keys to JSON values, plus client sessions.

    `applied_index` is the index of the last log entry applied (0: none). `get` reads the
    applied state locally; reads that must be linearizable go through the log as "get"
    commands or wait (ReadIndex, lease) for `applied_index` before calling `get`.

    Sessions. A write carrying `client` and `seq` > 0 is applied at most once:
      - seq greater than the client's last applied seq: applied; its result is remembered
        as the client's last (one result per client);
      - seq equal to the last: not applied again; the remembered result is returned, so a
        retried write gets the answer of its first application;
      - seq less than the last: not applied; Result(ok=False, error="stale_seq"). The client
        has moved on, so this is a late duplicate or an abandoned attempt.
    Gets never touch sessions: re-running a read is harmless.

    The table keeps at most `max_sessions` clients; the client whose last write is the
    oldest is evicted first. A retry from an evicted client is applied again, so it may
    take effect twice. The bound exists because clients come and go (a harness worker
    takes a new identity after every indeterminate op) and each entry lives in every
    replica's memory and every snapshot forever otherwise. Eviction is by apply order,
    hence identical on every replica.

    `meta` is text the driver keeps with the state and finds again in a snapshot (raftkv's
    node: the address book of the cluster's members, which a node restored from a
    snapshot sees in no log entry); it is no part of the keys and values, and "" when unset.
    """

    def __init__(self, *, max_sessions: int = MAX_SESSIONS) -> None:
        assert max_sessions >= 1
        self.applied_index = 0
        self.max_sessions = max_sessions
        self._data: dict[str, Any] = {}
        self._sessions: OrderedDict[str, tuple[int, Result]] = OrderedDict()
        self.meta = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVStore):
            return NotImplemented
        return (
            self.applied_index == other.applied_index
            and self._data == other._data
            and list(self._sessions.items()) == list(other._sessions.items())
            and self.meta == other.meta
        )

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Any:
        """The applied value of `key`, or None when absent. No log, no session."""
        return self._data.get(key)

    def session(self, client: str) -> tuple[int, Result] | None:
        """The client's last applied (seq, result), or None when unknown or evicted."""
        return self._sessions.get(client)

    def apply(self, index: int, data: bytes) -> Result:
        """Apply the committed entry at `index` (strictly above `applied_index`).

        An entry that does not decode is skipped with Result(ok=False, error="bad_request"):
        every replica skips it alike, so the state stays identical everywhere.
        """
        assert index > self.applied_index, f"apply({index}) after {self.applied_index}"
        self.applied_index = index
        try:
            cmd = decode_command(data)
        except BadRequest as err:
            return Result(False, str(err), "bad_request")
        if cmd.op not in WRITE_OPS or cmd.client is None or cmd.seq == 0:
            return self._execute(cmd)
        known = self._sessions.get(cmd.client)
        if known is not None:
            last_seq, last_result = known
            if cmd.seq == last_seq:
                return last_result
            if cmd.seq < last_seq:
                return Result(False, None, "stale_seq")
        result = self._execute(cmd)
        self._remember(cmd.client, cmd.seq, result)
        return result

    def _execute(self, cmd: Command) -> Result:
        current = self._data.get(cmd.key)
        if cmd.op == "get":
            return Result(True, current)
        if cmd.op in ("put", "set"):
            self._data[cmd.key] = cmd.value
        elif cmd.op == "delete":
            self._data.pop(cmd.key, None)
        else:
            assert cmd.op == "cas", cmd.op
            if not _same(current, cmd.expected):
                return Result(False, current, "cas_mismatch")
            self._data[cmd.key] = cmd.value
        return Result(True)

    def _remember(self, client: str, seq: int, result: Result) -> None:
        self._sessions[client] = (seq, result)
        self._sessions.move_to_end(client)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def snapshot(self) -> bytes:
        """The whole state as msgpack: keys sorted, sessions oldest first (and `meta`, only
        when set, so that a store without it snapshots as before)."""
        image: dict[str, Any] = {
            "v": _SNAPSHOT_VERSION,
            "applied_index": self.applied_index,
            "data": [[key, self._data[key]] for key in sorted(self._data)],
            "sessions": [
                [client, seq, result.ok, result.value, result.error]
                for client, (seq, result) in self._sessions.items()
            ],
        }
        if self.meta:
            image["meta"] = self.meta
        return msgpack.packb(image, use_bin_type=True)

    @classmethod
    def restore(cls, data: bytes, *, max_sessions: int = MAX_SESSIONS) -> KVStore:
        """The store `snapshot` described; raises SnapshotError on anything else."""
        try:
            image = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
        except (ValueError, TypeError, msgpack.UnpackException) as err:
            raise SnapshotError(f"snapshot is not valid msgpack: {err}") from None
        if not isinstance(image, dict) or image.get("v") != _SNAPSHOT_VERSION:
            raise SnapshotError(f"snapshot must be a version {_SNAPSHOT_VERSION} map")
        store = cls(max_sessions=max_sessions)
        try:
            store._load(image)
        except BadRequest as bad:
            raise SnapshotError(f"snapshot holds an invalid entry: {bad}") from None
        return store

    def _load(self, image: dict[Any, Any]) -> None:
        applied = image.get("applied_index")
        if isinstance(applied, bool) or not isinstance(applied, int) or applied < 0:
            raise SnapshotError("snapshot applied_index must be an integer >= 0")
        self.applied_index = applied
        meta = image.get("meta", "")
        if not isinstance(meta, str):
            raise SnapshotError("snapshot meta must be text")
        self.meta = meta
        rows, sessions = image.get("data"), image.get("sessions")
        if not isinstance(rows, list) or not isinstance(sessions, list):
            raise SnapshotError("snapshot data and sessions must be arrays")
        for row in rows:
            if not isinstance(row, list) or len(row) != 2:
                raise SnapshotError("snapshot data rows must be [key, value]")
            self._data[_check_key(row[0])] = row[1]
            _check_value(row[1], "value")
        for row in sessions:
            if not isinstance(row, list) or len(row) != 5:
                raise SnapshotError("snapshot sessions must be [client, seq, ok, value, error]")
            client, seq, ok, value, error = row
            client, seq = _check_session(client, seq)
            if client is None or not isinstance(ok, bool):
                raise SnapshotError("snapshot session needs a client and a boolean ok")
            if error is not None and not isinstance(error, str):
                raise SnapshotError("snapshot session error must be a string or null")
            _check_json(value, "session value")
            self._remember(client, seq, Result(ok, value, error))
