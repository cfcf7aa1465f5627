"""One Raft core and what a driver does with its Ready batches, for tests that hand-build
the messages a core receives."""

from __future__ import annotations

from typing import Any

from raftkv.core import Membership, Raft
from raftkv.types import Entry, Message, MsgType, Ready


class Driver:
    """Carries out each Ready as a node would: `applied` collects the committed entries in
    order, `memberships` each membership a Ready reported."""

    def __init__(self, core: Raft) -> None:
        self.core = core
        self.applied: list[Entry] = []
        self.memberships: list[Membership] = []

    def drain(self) -> Ready:
        """Carry out every pending Ready; return them merged."""
        merged = Ready()
        while self.core.has_ready():
            rd = self.core.ready()
            merged.hard_state = rd.hard_state or merged.hard_state
            merged.snapshot = rd.snapshot or merged.snapshot
            merged.entries += rd.entries
            merged.messages += rd.messages
            merged.committed += rd.committed
            merged.reads += rd.reads
            merged.dropped_reads += rd.dropped_reads
            if rd.membership is not None:
                self.memberships.append(rd.membership)
                merged.membership = rd.membership
            self.applied += rd.committed
            self.core.advance(rd)
        return merged

    def step(self, msg_type: MsgType, src: str, **fields: Any) -> Ready:
        fields.setdefault("term", self.core.term)
        self.core.step(Message(type=msg_type, src=src, dst=self.core.id, **fields))
        return self.drain()

    def ticks(self, n: int) -> Ready:
        for _ in range(n):
            self.core.tick()
        return self.drain()

    def ack(self, *peers: str) -> Ready:
        """Each of `peers` acknowledges the core's whole log."""
        rd = Ready()
        for peer in peers:
            rd = self.step(MsgType.APPEND_RESP, peer, index=self.core.last_index)
        return rd
