"""Raft's clock: how long a tick is and how many of them each timeout lasts.

One `RaftTiming` is shared by the core (`raftkv.core.Config`), the simulator
(`raftkv.sim.SimOptions`) and the node (`raftkv.node.NodeOptions`), so the timeouts and
their checks are written once. The core and the simulator count ticks and never read
`tick_ms`; the node's ticker turns it into wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NODE_TIMING", "RaftTiming"]


@dataclass(frozen=True)
class RaftTiming:
    """Timeouts in ticks, and the length of one tick for a driver on a real clock.

    An election starts after a randomized timeout in
    [election_timeout_ticks, 2 * election_timeout_ticks) without hearing from a leader; a
    leader sends heartbeats every `heartbeat_ticks`. A lease read is served locally only
    while a quorum answered heartbeats sent less than `lease_ticks` ago; `lease_ticks`
    must be below `election_timeout_ticks` (the margin absorbs clock-rate drift between
    nodes), and leases need `check_quorum` (without it a lease read runs a ReadIndex round).

    With `check_quorum` a leader that has not heard from a quorum for an election timeout
    steps down, and a node that heard from a leader (or started) less than an election
    timeout ago ignores vote requests from higher terms: leader stickiness, which is also
    what makes a lease safe across a voter's restart.

    The defaults are `for_election_timeout(10)`. Raises ValueError on unsafe settings.
    """

    election_timeout_ticks: int = 10
    heartbeat_ticks: int = 1
    lease_ticks: int = 8
    check_quorum: bool = True
    tick_ms: int = 25

    def __post_init__(self) -> None:
        if self.election_timeout_ticks < 2:
            raise ValueError("election_timeout_ticks must be at least 2")
        if not 1 <= self.heartbeat_ticks < self.election_timeout_ticks:
            raise ValueError("heartbeat_ticks must be in [1, election_timeout_ticks)")
        if not 1 <= self.lease_ticks < self.election_timeout_ticks:
            raise ValueError("lease_ticks must be in [1, election_timeout_ticks)")
        if self.tick_ms < 1:
            raise ValueError("tick_ms must be at least 1")

    @classmethod
    def for_election_timeout(cls, election_timeout_ticks: int, tick_ms: int = 25) -> RaftTiming:
        """The timing for an election timeout: heartbeats ten times per timeout (at least
        every tick), and a lease shorter than the timeout by a fifth of it, at least 2 ticks.
        Raises ValueError below 2 ticks."""
        return cls(
            election_timeout_ticks=election_timeout_ticks,
            heartbeat_ticks=max(1, election_timeout_ticks // 10),
            lease_ticks=max(1, election_timeout_ticks - max(2, election_timeout_ticks // 5)),
            tick_ms=tick_ms,
        )


NODE_TIMING = RaftTiming.for_election_timeout(20, tick_ms=25)
"""What a real node runs with unless told otherwise: 25 ms ticks, elections after 500 ms."""
