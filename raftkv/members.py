"""What a node keeps about its cluster's members beside the Raft core: their addresses, and
whose data directory it is.

The address book maps a member's id to its peer address (``host:port``, which also serves
the msgpack clients) and its HTTP address (or None). It rides in every configuration
change (`ConfChange.context`, the book of the configuration the change results in, so a
node that joins learns every member's address from one entry) and in snapshots
(`KVStore.meta`, the book of the snapshot's configuration, since a node restored from a
snapshot sees no entry before it). As JSON, keys sorted::

    {"n1": {"address": "10.0.0.1:7001", "http": "10.0.0.1:8001"}, "n4": {...}}

A data directory names its node in a file `MEMBER` (``{"id": ..., "join": ...}``, written
when the node first opens it empty): a node whose disk was wiped must come back under a new
id (docs/membership.md), and one that joined a running cluster must come back without the
configuration its `--peers` would give it.

Errors: `BadRequest` (from `raftkv.kv`) for a change request that can never be valid;
`StorageError` for a data directory a node must not start from; ValueError for a book that
does not decode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from raftkv.core import ConfChangeOp
from raftkv.kv import BadRequest
from raftkv.storage import StorageError
from raftkv.transport import split_addr

__all__ = [
    "MEMBER_FILE",
    "Address",
    "MemberChange",
    "claim_data_dir",
    "decode_book",
    "encode_book",
    "parse_change",
]

MEMBER_FILE = "MEMBER"
MAX_ID_BYTES = 64

Address = tuple[str, str | None]
"""A member's peer address (``host:port``) and HTTP address (None: it has no HTTP face)."""


def encode_book(book: Mapping[str, Address]) -> str:
    obj = {node: {"address": peer, "http": http} for node, (peer, http) in sorted(book.items())}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def decode_book(text: str) -> dict[str, Address]:
    """The book `encode_book` wrote ("" is the empty book); ValueError otherwise."""
    if not text:
        return {}
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"an address book must be an object: {text[:100]!r}")
    book: dict[str, Address] = {}
    for node, entry in obj.items():
        peer = entry.get("address") if isinstance(entry, dict) else None
        http = entry.get("http") if isinstance(entry, dict) else None
        if not isinstance(peer, str) or not (http is None or isinstance(http, str)):
            raise ValueError(f"a bad address book entry for {node!r}: {entry!r:.100}")
        book[node] = (peer, http)
    return book


@dataclass(frozen=True)
class MemberChange:
    """One change request: `op` on `node`, with the new member's addresses (add-learner)."""

    op: ConfChangeOp
    node: str
    address: str | None
    http: str | None


def parse_change(op: object, node: object, address: object, http: object) -> MemberChange:
    """Validate a change request's fields; raises BadRequest naming the first problem."""
    ops = ", ".join(o.value for o in ConfChangeOp)
    try:
        change_op = ConfChangeOp(op)
    except ValueError:
        raise BadRequest(f"unknown membership change {op!r}; expected one of {ops}") from None
    if not isinstance(node, str) or not node:
        raise BadRequest("a membership change needs the member's id")
    if len(node.encode("utf-8", "replace")) > MAX_ID_BYTES or not node.isprintable():
        raise BadRequest(f"a member id is printable and at most {MAX_ID_BYTES} bytes")
    for name, value in (("address", address), ("http", http)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be HOST:PORT")
        try:
            split_addr(value)
        except ValueError as exc:
            raise BadRequest(f"{name}: {exc}") from None
    if change_op is ConfChangeOp.ADD_LEARNER and address is None:
        raise BadRequest("add-learner needs the new member's peer address (HOST:PORT)")
    assert address is None or isinstance(address, str)
    assert http is None or isinstance(http, str)
    return MemberChange(change_op, node, address, http)


def claim_data_dir(data_dir: Path, node_id: str, join: bool, has_state: bool) -> bool:
    """Check that node `node_id` may start from `data_dir` (`has_state`: its storage holds
    a log, a snapshot or a vote) and record whose it is. Returns whether the node runs in
    join mode: asked for with an empty directory, or recorded when it first joined.

    Raises StorageError for a directory that holds another node's state, or, with `join`,
    state of a node that did not join (it would keep votes and a log it already gave
    under this id while asking to be added as new)."""
    path = data_dir / MEMBER_FILE
    recorded = _read_member_file(path)
    if recorded is not None and recorded[0] != node_id:
        raise StorageError(
            f"{data_dir} holds the state of node {recorded[0]!r}, not {node_id!r}: start "
            f"{recorded[0]!r} from it, or a new node from an empty directory"
        )
    if not has_state:
        _write_member_file(path, node_id, join)
        return join
    joined = recorded is not None and recorded[1]
    if join and not joined:
        raise StorageError(
            f"--join needs an empty data directory, and {data_dir} holds node {node_id!r}'s "
            "state: restart it without --join, or join from an empty directory under a new id"
        )
    if recorded is None:
        _write_member_file(path, node_id, False)
    return joined


def _read_member_file(path: Path) -> tuple[str, bool] | None:
    try:
        obj = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"{path} cannot be read: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise StorageError(f"{path} does not name a node: {obj!r:.100}")
    return obj["id"], obj.get("join") is True


def _write_member_file(path: Path, node_id: str, join: bool) -> None:
    tmp = path.with_suffix(".tmp")
    data = json.dumps({"id": node_id, "join": join}).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
