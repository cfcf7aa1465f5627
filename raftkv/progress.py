"""What a leader knows about each follower's log, and how it paces appends to it."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

__all__ = ["FollowerProgress", "ProgressState"]


class ProgressState(enum.Enum):
    """How the leader currently sends to a follower.

    PROBE: one append at a time until the follower's log position is found.
    REPLICATE: pipelined appends with an optimistic `next_index`, bounded in flight.
    SNAPSHOT: a snapshot is on its way; nothing else is sent until it is acknowledged.
    """

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


@dataclass(slots=True)
class FollowerProgress:
    """Replication state of one follower, owned by the leader.

    `match_index` is the highest index known to be replicated on the follower;
    `next_index` the next one to send. `inflight` holds the last index of each
    append sent in REPLICATE state and not yet acknowledged. `progress_tick` is the
    leader tick at which the follower last made progress (used to retransmit after
    losses). `lease_stamp_tick` is the send tick of the newest heartbeat it answered.
    """

    next_index: int
    match_index: int = 0
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    snapshot_index: int = 0
    inflight: deque[int] = field(default_factory=deque)
    recent_active: bool = False
    progress_tick: int = 0
    lease_stamp_tick: int = -(10**9)

    def paused(self, max_inflight: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= max_inflight

    def become_probe(self, now_tick: int) -> None:
        self.state = ProgressState.PROBE
        self.next_index = self.match_index + 1
        self.probe_sent = False
        self.inflight.clear()
        self.progress_tick = now_tick

    def become_replicate(self, now_tick: int) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = self.match_index + 1
        self.probe_sent = False
        self.inflight.clear()
        self.progress_tick = now_tick

    def become_snapshot(self, snapshot_index: int, now_tick: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = snapshot_index
        self.inflight.clear()
        self.progress_tick = now_tick

    def acknowledge(self, index: int, now_tick: int) -> bool:
        """The follower holds everything up to `index`; True when that is news."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match_index:
            return False
        self.match_index = index
        self.next_index = max(self.next_index, index + 1)
        self.progress_tick = now_tick
        return True
