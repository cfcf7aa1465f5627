"""Plain data shared by the Raft core, storage, simulator and node.

Everything here is immutable and serialisable with msgpack through
`raftkv.wire`. Indexes and terms start at 1; index 0 / term 0 mean "nothing".
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field


class EntryKind(enum.IntEnum):
    """What a log entry carries. NOOP is the entry a new leader commits in its term;
    CONF_CHANGE carries a `ConfChange` (its `encode()`d bytes)."""

    NORMAL = 0
    NOOP = 1
    CONF_CHANGE = 2


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see Message
class Entry:
    """One log entry. `data` is opaque to Raft (the KV layer encodes commands)."""

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see Message
class HardState:
    """What must be on disk before a node answers a vote or an append.

    `vote` is the candidate voted for in `term` (None: no vote yet). `commit` is
    persisted as a hint only; safety never depends on it.
    """

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Membership:
    """A cluster configuration: who votes, and who only follows the log.

    `voters` elect leaders and count for commitment (a majority of them is a quorum);
    `learners` receive the log but never vote, count or campaign. No id is in both. The
    empty membership is that of a node which joined and has yet to hear its configuration.
    """

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()

    def members(self) -> tuple[str, ...]:
        """Voters, then learners."""
        return self.voters + self.learners

    def same_as(self, voters: tuple[str, ...], learners: tuple[str, ...]) -> bool:
        """Equal up to order."""
        return set(self.voters) == set(voters) and set(self.learners) == set(learners)


class ConfChangeOp(enum.Enum):
    """One-server configuration changes: each changes the voters by at most one id."""

    ADD_LEARNER = "add-learner"
    PROMOTE = "promote"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    """The payload of a CONF_CHANGE entry: `op` on `node_id`, and the whole configuration
    it results in (`voters`, `learners`), so that a node learns its configuration from
    the entry alone, without knowing the one before it. `context` is opaque to Raft: what
    the proposer attaches for the drivers (raftkv's: the new member's address)."""

    op: ConfChangeOp
    node_id: str
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    context: str = ""

    @property
    def membership(self) -> Membership:
        return Membership(self.voters, self.learners)

    def encode(self) -> bytes:
        """Compact JSON, keys sorted: the same change always encodes to the same bytes."""
        obj: dict[str, object] = {
            "op": self.op.value,
            "node": self.node_id,
            "voters": list(self.voters),
            "learners": list(self.learners),
        }
        if self.context:
            obj["context"] = self.context
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        """The change `encode` wrote; ValueError if `data` is not one."""
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError(f"configuration change must be an object, got {data!r}")
        op, node_id = ConfChangeOp(obj.get("op")), obj.get("node")
        voters, learners = obj.get("voters"), obj.get("learners")
        if not (isinstance(voters, list) and isinstance(learners, list)):
            raise ValueError(f"configuration change without voters and learners: {data!r}")
        if not all(isinstance(i, str) and i for i in [node_id, *voters, *learners]):
            raise ValueError(f"configuration change with a bad id: {data!r}")
        context = obj.get("context", "")
        if not isinstance(context, str):
            raise ValueError(f"configuration change with a context that is not text: {data!r}")
        return ConfChange(op, str(node_id), tuple(voters), tuple(learners), context)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine image covering every entry up to and including `index`.

    `peers` are the voters and `learners` the learners of the configuration in force at
    `index` (`Raft.membership_at(index)`). A snapshot with no `peers` predates every
    configuration change of a node that never knew the cluster's first configuration: its
    configuration is that first one, which a node takes from its own `Config`.
    """

    index: int
    term: int
    peers: tuple[str, ...]
    data: bytes
    learners: tuple[str, ...] = ()

    @property
    def membership(self) -> Membership:
        return Membership(self.peers, self.learners)


class MsgType(enum.IntEnum):
    """Raft messages, named after the paper (and etcd-io/raft where it adds some)."""

    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    TIMEOUT_NOW = 10  # leadership transfer: start an election at once


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# 1.6 us a Message against 0.4 us, and a simulated minute sends 276,000 of them. Never
# changed after it is made; hashed and compared as a frozen one would be.
@dataclass(slots=True, unsafe_hash=True)
class Message:
    """One Raft message between peers.

    Fields follow etcd-io/raft's `raftpb.Message`: `index`/`log_term` name the
    entry preceding `entries` (append) or the sender's last entry (votes);
    `reject_hint`/`hint_term` carry the conflict hint for fast backtracking;
    `context` carries a ReadIndex request id on heartbeats.
    """

    type: MsgType
    src: str
    dst: str
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    hint_term: int = 0
    context: int = 0
    snapshot: Snapshot | None = None


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see Message
class ReadState:
    """A read that may be served once the state machine has applied `index`."""

    request_id: int
    index: int


@dataclass(slots=True)
class Ready:
    """Effects the driver must carry out, in this order:

    1. persist `hard_state` (if not None), `snapshot` (if not None) and
       `entries` (appended; any stored entry at or after `entries[0].index`
       is replaced), and fsync;
    2. send `messages`;
    3. apply `snapshot` (if any), then `committed` in order;
    4. serve each of `reads` once applied >= its index;
       fail each of `dropped_reads` (certainly not served: leadership lost).
    Then call `core.advance(ready)`.

    `membership` is the node's configuration when it changed since the previous Ready
    (a configuration entry appended or truncated away, a snapshot installed), else None:
    the peers to dial from now on. It takes effect at once, before it commits.
    """

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    dropped_reads: list[int] = field(default_factory=list)
    membership: Membership | None = None

    def empty(self) -> bool:
        return not (
            self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.committed
            or self.reads
            or self.dropped_reads
            or self.membership is not None
        )
