"""Frames and Raft messages on the wire: round trips, and every malformed input refused."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.types import Entry, EntryKind, Message, MsgType, Snapshot
from raftkv.wire import (
    MAX_FRAME_BYTES,
    FrameError,
    FrameReader,
    decode_body,
    encode_frame,
    message_from_obj,
    message_to_obj,
)

ints = st.integers(min_value=0, max_value=(1 << 63) - 1)
small = st.integers(min_value=0, max_value=1000)
names = st.text(max_size=8)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    index, log_term = draw(small), draw(small)
    entries, term = [], max(log_term, 1)
    for n in range(draw(st.integers(min_value=0, max_value=5))):
        term += draw(st.integers(min_value=0, max_value=2))
        kind = draw(st.sampled_from(EntryKind))
        entries.append(Entry(term, index + 1 + n, kind, draw(st.binary(max_size=32))))
    snapshot = draw(
        st.none()
        | st.builds(
            Snapshot,
            index=ints,
            term=ints,
            peers=st.lists(names, max_size=5).map(tuple),
            data=st.binary(max_size=64),
            learners=st.lists(names, max_size=3).map(tuple),
        )
    )
    return Message(
        type=draw(st.sampled_from(MsgType)),
        src=draw(names),
        dst=draw(names),
        term=draw(ints),
        log_term=log_term,
        index=index,
        entries=tuple(entries),
        commit=draw(ints),
        reject=draw(st.booleans()),
        reject_hint=draw(ints),
        hint_term=draw(ints),
        context=draw(ints),
        snapshot=snapshot,
    )


def read(data: bytes, *, eof: bool = True) -> object:
    """The one frame in `data`; with `eof`, the stream ends after it."""
    reader = FrameReader()
    frames = reader.feed(data)
    if eof:
        reader.check_eof()
    assert len(frames) == 1, frames
    return frames[0]


@settings(max_examples=300, deadline=None)
@given(messages())
def test_message_round_trips_through_a_frame(msg: Message) -> None:
    decoded = message_from_obj(read(encode_frame(message_to_obj(msg))))
    assert decoded == msg
    assert isinstance(decoded.type, MsgType)
    assert all(isinstance(e.kind, EntryKind) for e in decoded.entries)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_any_object_round_trips_through_a_frame(obj: object) -> None:
    assert read(encode_frame(obj)) == obj


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bodies_decode_or_raise_frame_error(body: bytes) -> None:
    try:
        decode_body(body)
    except FrameError:
        pass


def test_defaults_are_left_out_of_the_encoding() -> None:
    msg = Message(MsgType.HEARTBEAT, "a", "b", 3)
    assert message_to_obj(msg) == {"y": 7, "s": "a", "d": "b", "t": 3}


def test_two_frames_back_to_back() -> None:
    reader = FrameReader()
    assert reader.feed(encode_frame({"a": 1}) + encode_frame([2, b"x"])) == [{"a": 1}, [2, b"x"]]


@settings(max_examples=100, deadline=None)
@given(st.lists(json_like, min_size=1, max_size=4), st.data())
def test_frames_cut_anywhere_arrive_whole_and_in_order(objs: list[object], data: Any) -> None:
    stream = b"".join(encode_frame(obj) for obj in objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = FrameReader()
    got: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        got += reader.feed(stream[start:end])
    reader.check_eof()
    assert got == objs


def test_int_map_keys_are_accepted() -> None:
    assert read(encode_frame({1: "one"})) == {1: "one"}


def test_clean_close_between_frames_is_no_error() -> None:
    reader = FrameReader()
    assert reader.feed(encode_frame([1])) == [[1]]
    reader.check_eof()
    assert reader.feed(b"") == []


def test_oversized_frame_is_refused_before_its_body_arrives() -> None:
    header = struct.pack(">I", MAX_FRAME_BYTES + 1)
    with pytest.raises(FrameError, match="exceeds"):
        FrameReader().feed(header)


def test_a_hello_is_read_alone_under_a_small_limit_then_the_limit_rises() -> None:
    big = {"e": b"x" * 10_000}
    reader = FrameReader(max_frame_bytes=4096)
    data = encode_frame({"hello": "peer"}) + encode_frame(big)
    assert reader.feed(data, max_frames=1) == [{"hello": "peer"}]
    with pytest.raises(FrameError, match="exceeds 4096"):
        FrameReader(max_frame_bytes=4096).feed(data)
    reader.max_frame_bytes = MAX_FRAME_BYTES
    assert reader.feed(b"") == [big], "the buffered frame, read under the new limit"


def test_encode_refuses_an_oversized_frame() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        encode_frame(b"x" * MAX_FRAME_BYTES)


def test_truncated_header() -> None:
    with pytest.raises(FrameError, match="truncated frame header: 2 of 4"):
        read(b"\x00\x00")


def test_truncated_body() -> None:
    with pytest.raises(FrameError, match="truncated frame body: 3 of 10"):
        read(struct.pack(">I", 10) + b"abc")


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    reader = FrameReader()
    frame = encode_frame({"k": b"v" * 100})
    assert reader.feed(frame[:50]) == []
    assert reader.feed(frame[50:]) == [{"k": b"v" * 100}]


@pytest.mark.parametrize(
    "body", [b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xd9\x02\xff\xfe", b"\x81\x91\x01\x02"]
)
def test_garbage_bodies_are_undecodable(body: bytes) -> None:
    with pytest.raises(FrameError, match="undecodable"):
        read(struct.pack(">I", len(body)) + body)


def good() -> dict[str, Any]:
    msg = Message(
        MsgType.APPEND,
        "a",
        "b",
        term=5,
        log_term=4,
        index=10,
        entries=(Entry(4, 11, EntryKind.NORMAL, b"x"), Entry(5, 12, EntryKind.NOOP)),
        snapshot=Snapshot(9, 3, ("a", "b"), b"img"),
    )
    return message_to_obj(msg)


def with_field(key: str, value: object) -> dict[str, Any]:
    obj = good()
    obj[key] = value
    return obj


def without(key: str) -> dict[str, Any]:
    obj = good()
    del obj[key]
    return obj


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "message must be a map"),
        (without("y"), "'type' is missing"),
        (without("s"), "'src' is missing"),
        (without("d"), "'dst' is missing"),
        (without("t"), "'term' is missing"),
        (with_field("y", 99), "'type' is not a known message type"),
        (with_field("y", "append"), "'type' must be an integer"),
        (with_field("s", b"a"), "'src' must be a string"),
        (with_field("d", None), "'dst' must be a string"),
        (with_field("t", -1), "'term' must be between 0"),
        (with_field("t", True), "'term' must be an integer"),
        (with_field("t", 1 << 63), "'term' must be between"),
        (with_field("c", 1.5), "'commit' must be an integer"),
        (with_field("r", 1), "'reject' must be a boolean"),
        (with_field("h", "x"), "'reject_hint' must be an integer"),
        (with_field("ht", None), "'hint_term' must be an integer"),
        (with_field("x", []), "'context' must be an integer"),
        (with_field("e", {}), "'entries' must be an array"),
        (with_field("e", [[4, 11, 0]]), r"'entries\[0\]' must have 4 elements"),
        (with_field("e", [None]), r"'entries\[0\]' must be an array"),
        (with_field("e", [[4, 11, 0, "x"]]), r"'entries\[0\].data' must be bytes"),
        (with_field("e", [[4, 11, 7, b""]]), r"'entries\[0\].kind' is not a known entry kind"),
        (with_field("e", [[4, 11, True, b""]]), r"'entries\[0\].kind' must be an integer"),
        (with_field("e", [[4, 11, [1], b""]]), r"'entries\[0\].kind' must be an integer"),
        (with_field("e", [[4, 11.0, 0, b""]]), r"'entries\[0\].index' must be an integer"),
        (with_field("e", [[0, 11, 0, b""]]), r"'entries\[0\].term' must be between 1"),
        (with_field("e", [[4, 12, 0, b""]]), r"'entries\[0\].index' must be 11, got 12"),
        (with_field("e", [[4, 11, 0, b""], [4, 13, 0, b""]]), r"'entries\[1\].index' must be 12"),
        (with_field("e", [[3, 11, 0, b""]]), r"'entries\[0\].term' 3 is below"),
        (with_field("n", [1, 2, 3]), "'snapshot' must have 5 or 6 elements"),
        (with_field("n", [1, 2, [], b"", 0, [7]]), r"'snapshot.learners\[0\]' must be a string"),
        (with_field("n", [1, 2, [], b"img", 7]), "'snapshot.data' does not match its checksum"),
        (with_field("n", "img"), "'snapshot' must be an array"),
        (with_field("n", [1, 2, "ab", b"", 0]), "'snapshot.peers' must be an array"),
        (with_field("n", [1, 2, ["a", 3], b"", 0]), r"'snapshot.peers\[1\]' must be a string"),
        (with_field("n", [1, -2, [], b"", 0]), "'snapshot.term' must be between"),
        (with_field("n", [1, 2, [], None, 0]), "'snapshot.data' must be bytes"),
    ],
)
def test_wrong_shapes_name_the_field(obj: object, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        message_from_obj(obj)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["y", "s", "d", "t", "l", "i", "e", "c", "r", "h", "ht", "x", "n"]), json_like
)
def test_any_field_value_decodes_or_raises_frame_error(key: str, value: object) -> None:
    # Only FrameError may escape: anything else would crash the node reading the frame.
    try:
        message_from_obj(with_field(key, value))
    except FrameError:
        pass


def test_unknown_keys_are_ignored() -> None:
    obj = with_field("future", [1, 2])
    assert message_from_obj(obj) == message_from_obj(good())


def test_malformed_message_inside_a_valid_frame() -> None:
    frame = encode_frame({"y": 5, "s": "a", "d": "b", "t": 1, "e": [[1, 1, 0, "text"]]})
    with pytest.raises(FrameError, match="data"):
        message_from_obj(read(frame))


def test_frame_body_is_plain_msgpack() -> None:
    frame = encode_frame(message_to_obj(Message(MsgType.VOTE, "a", "b", 2, 1, 1)))
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert msgpack.unpackb(frame[4:]) == {"y": 3, "s": "a", "d": "b", "t": 2, "l": 1, "i": 1}


entry_parts = st.integers(-2, 14) | st.booleans() | st.binary(max_size=2) | st.none() | st.just([1])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(entry_parts, min_size=3, max_size=5), max_size=4))
def test_near_miss_entries_decode_or_raise_frame_error(rows: list[list[object]]) -> None:
    try:
        message_from_obj({"y": 5, "s": "a", "d": "b", "t": 9, "i": 10, "l": 2, "e": rows})
    except FrameError:
        pass
