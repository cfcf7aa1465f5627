"""Length-prefixed msgpack frames over asyncio streams, and Raft messages as frame bodies.

A frame is a 4-byte big-endian body length followed by that many bytes of msgpack. A
peer is untrusted input: every way a frame can be wrong surfaces as FrameError, never as
an exception from deep inside the node.

`FrameReader` cuts a connection's bytes into frames as they arrive (asyncio protocols feed
it, with no task or timer per frame); FrameError says what was wrong: oversized,
undecodable, or truncated (closed mid-frame). Its size limit depends on who speaks: until a
connection has said who it is (the hello), nobody is known, so frames stay below
MAX_HELLO_FRAME_BYTES; a client's requests below MAX_REQUEST_FRAME_BYTES; only an
(authenticated) peer may send frames of up to MAX_FRAME_BYTES.
`message_from_obj` raises FrameError naming the first bad field ("entries[2].data ...").

Message layout: a map with one-letter keys, fields equal to their default left out;
entries as [term, index, kind, data], a snapshot as [index, term, peers, data, crc32(data)]
(then its learners, when it has any): the checksum lets a follower refuse an image damaged
on the way before it persists it.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import Any

import msgpack

from raftkv.types import Entry, EntryKind, Message, MsgType, Snapshot

__all__ = [
    "MAX_FRAME_BYTES",
    "MAX_HELLO_FRAME_BYTES",
    "MAX_REQUEST_FRAME_BYTES",
    "FrameError",
    "FrameReader",
    "decode_body",
    "encode_frame",
    "message_from_obj",
    "message_to_obj",
    "read_frame",
]

MAX_FRAME_BYTES = 16 << 20
"""Largest frame between peers (a batch of entries, a snapshot)."""
MAX_HELLO_FRAME_BYTES = 4 << 10
"""Largest frame before a connection's hello is done (hello, challenge, proof)."""
MAX_REQUEST_FRAME_BYTES = 1 << 20
"""Largest client request: well above the largest valid one (a cas with two 64 KiB values)."""
_HEADER = struct.Struct(">I")
_INT_MAX = (1 << 63) - 1
_MSG_TYPES = frozenset(int(t) for t in MsgType)
_KINDS = {int(k): k for k in EntryKind}


class FrameError(Exception):
    """A frame or message that is malformed; the message says what and where."""


def encode_frame(obj: object) -> bytes:
    """Header plus msgpack body; raises FrameError if the body exceeds MAX_FRAME_BYTES."""
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> object:
    """Decode one frame body; raises FrameError when it is not exactly one msgpack object."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise FrameError(f"undecodable frame body: {type(err).__name__}: {err}") from None


class FrameReader:
    """Splits the bytes of one connection into decoded frames, as they arrive.

    `feed` returns the frames completed by `data` (maybe none; at most `max_frames` when
    given, the rest staying buffered for the next call, which may pass b"") and raises
    FrameError for a frame announced above `max_frame_bytes` (checked before any of its body
    arrives) or an undecodable body; after a FrameError the stream is out of step: close it.
    `max_frame_bytes` may be changed between calls: a protocol reads its hello with
    `max_frames=1`, then raises the limit for the frames that follow. `check_eof` raises
    FrameError if the stream ended inside a frame.
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self.max_frame_bytes = max_frame_bytes

    def feed(self, data: bytes, max_frames: int | None = None) -> list[object]:
        buf = self._buf
        buf += data
        frames: list[object] = []
        limit = self.max_frame_bytes
        pos, size = 0, len(buf)
        while size - pos >= _HEADER.size and (max_frames is None or len(frames) < max_frames):
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > limit:
                raise FrameError(f"frame of {length} bytes exceeds {limit}")
            end = pos + _HEADER.size + length
            if end > size:
                break
            frames.append(decode_body(bytes(buf[pos + _HEADER.size : end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    def check_eof(self) -> None:
        size = len(self._buf)
        if size == 0:
            return
        if size < _HEADER.size:
            raise FrameError(f"truncated frame header: {size} of {_HEADER.size} bytes")
        (length,) = _HEADER.unpack_from(self._buf)
        raise FrameError(f"truncated frame body: {size - _HEADER.size} of {length} bytes")


async def read_frame(reader: asyncio.StreamReader, max_frame_bytes: int) -> object:
    """Read one frame from a stream; FrameError if it is oversized or undecodable,
    asyncio.IncompleteReadError (an EOFError) if the stream ends first. No timeout of its
    own: the caller bounds the wait."""
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if length > max_frame_bytes:
        raise FrameError(f"frame of {length} bytes exceeds {max_frame_bytes}")
    return decode_body(await reader.readexactly(length))


def message_to_obj(msg: Message) -> dict[str, Any]:
    """The compact msgpack-ready form of `msg` (see the module docstring)."""
    obj: dict[str, Any] = {"y": int(msg.type), "s": msg.src, "d": msg.dst, "t": msg.term}
    if msg.log_term:
        obj["l"] = msg.log_term
    if msg.index:
        obj["i"] = msg.index
    if msg.entries:
        obj["e"] = [[e.term, e.index, int(e.kind), e.data] for e in msg.entries]
    if msg.commit:
        obj["c"] = msg.commit
    if msg.reject:
        obj["r"] = True
    if msg.reject_hint:
        obj["h"] = msg.reject_hint
    if msg.hint_term:
        obj["ht"] = msg.hint_term
    if msg.context:
        obj["x"] = msg.context
    if msg.snapshot is not None:
        snap = msg.snapshot
        obj["n"] = [snap.index, snap.term, list(snap.peers), snap.data, zlib.crc32(snap.data)]
        if snap.learners:
            obj["n"].append(list(snap.learners))
    return obj


def _int(value: object, field: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FrameError(f"field {field!r} must be an integer, got {type(value).__name__}")
    if not minimum <= value <= _INT_MAX:
        raise FrameError(f"field {field!r} must be between {minimum} and {_INT_MAX}, got {value}")
    return value


def _str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise FrameError(f"field {field!r} must be a string, got {type(value).__name__}")
    return value


def _bytes(value: object, field: str) -> bytes:
    if not isinstance(value, bytes):
        raise FrameError(f"field {field!r} must be bytes, got {type(value).__name__}")
    return value


def _list(value: object, field: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise FrameError(f"field {field!r} must be an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise FrameError(f"field {field!r} must have {length} elements, got {len(value)}")
    return value


def _entries(value: object, prev_index: int, prev_term: int) -> tuple[Entry, ...]:
    """Entries must follow the message's (index, log_term) as a log would: consecutive
    indexes from index + 1 and terms that never decrease."""
    entries = []
    for row in _list(value, "entries"):
        # The hot path: one combined test per entry; _refuse_entry explains a failure.
        if (
            type(row) is list
            and len(row) == 4
            and type(row[0]) is int
            and type(row[1]) is int
            and type(row[2]) is int
            and type(row[3]) is bytes
            and max(prev_term, 1) <= row[0] <= _INT_MAX
            and row[1] == prev_index + 1 <= _INT_MAX
            and row[2] in _KINDS
        ):
            prev_term, prev_index = row[0], row[1]
            entries.append(Entry(prev_term, prev_index, _KINDS[row[2]], row[3]))
        else:
            _refuse_entry(f"entries[{len(entries)}]", row, prev_index, prev_term)
    return tuple(entries)


def _refuse_entry(name: str, row: object, prev_index: int, prev_term: int) -> None:
    term, index, kind, data = _list(row, name, 4)
    term = _int(term, f"{name}.term", 1)
    index = _int(index, f"{name}.index", 1)
    kind = _int(kind, f"{name}.kind")
    if kind not in _KINDS:
        raise FrameError(f"field '{name}.kind' is not a known entry kind: {kind}")
    if index != prev_index + 1:
        raise FrameError(f"field '{name}.index' must be {prev_index + 1}, got {index}")
    if term < prev_term:
        raise FrameError(f"field '{name}.term' {term} is below the previous term {prev_term}")
    _bytes(data, f"{name}.data")
    raise AssertionError(f"{name} passed every check but the fast path refused it: {row!r}")


def _snapshot(value: object) -> Snapshot:
    fields = _list(value, "snapshot")
    if len(fields) not in (5, 6):
        raise FrameError(f"field 'snapshot' must have 5 or 6 elements, got {len(fields)}")
    index, term, peers, data, crc = fields[:5]
    peer_names = _names(peers, "snapshot.peers")
    learners = _names(fields[5], "snapshot.learners") if len(fields) == 6 else ()
    data = _bytes(data, "snapshot.data")
    if _int(crc, "snapshot.crc32") != zlib.crc32(data):
        raise FrameError(f"field 'snapshot.data' does not match its checksum {crc:#010x}")
    return Snapshot(
        index=_int(index, "snapshot.index"),
        term=_int(term, "snapshot.term"),
        peers=peer_names,
        data=data,
        learners=learners,
    )


def _names(value: object, field: str) -> tuple[str, ...]:
    return tuple(_str(name, f"{field}[{n}]") for n, name in enumerate(_list(value, field)))


def message_from_obj(obj: object) -> Message:
    """The Message that `message_to_obj` encoded as `obj`; FrameError names any bad field.

    Keys it does not know are ignored, so a newer peer may add fields.
    """
    if not isinstance(obj, dict):
        raise FrameError(f"message must be a map, got {type(obj).__name__}")
    for key, field in (("y", "type"), ("s", "src"), ("d", "dst"), ("t", "term")):
        if key not in obj:
            raise FrameError(f"field {field!r} is missing")
    kind = _int(obj["y"], "type")
    if kind not in _MSG_TYPES:
        raise FrameError(f"field 'type' is not a known message type: {kind}")
    index = _int(obj.get("i", 0), "index")
    log_term = _int(obj.get("l", 0), "log_term")
    reject = obj.get("r", False)
    if not isinstance(reject, bool):
        raise FrameError(f"field 'reject' must be a boolean, got {type(reject).__name__}")
    snapshot = obj.get("n")
    return Message(
        type=MsgType(kind),
        src=_str(obj["s"], "src"),
        dst=_str(obj["d"], "dst"),
        term=_int(obj["t"], "term"),
        log_term=log_term,
        index=index,
        entries=_entries(obj["e"], index, log_term) if "e" in obj else (),
        commit=_int(obj.get("c", 0), "commit"),
        reject=reject,
        reject_hint=_int(obj.get("h", 0), "reject_hint"),
        hint_term=_int(obj.get("ht", 0), "hint_term"),
        context=_int(obj.get("x", 0), "context"),
        snapshot=None if snapshot is None else _snapshot(snapshot),
    )
