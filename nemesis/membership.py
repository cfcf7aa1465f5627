"""Membership changes as a fault: who is in the cluster, and the moves the `member` fault makes.

The cluster has `slots`, node names the backend provisioned up front (`--max-nodes` of
them), of which some are members: voters, which count for quorum, and learners, which
receive the log and do not. The rest are spare: never started, or removed and stopped.
`Membership` is what the fault acts through, as `ProcessControl` is for kill: the harness
implements it on the target's own membership API (`harness.members`), tests with a fake
(`nemesis.fakes.FakeMembership`).

Moves (`plan_move`), each one change of the cluster's configuration:

    add-learner   a spare slot joins as a learner: wiped data directory, started with the
                  current member list; `promote` makes it a voter once it has caught up
    add-voter     the same, as a voter at once (targets without learners)
    promote       a learner becomes a voter
    remove        a voter (a random one, or the leader) leaves; its process is stopped

A spare slot that was a member before is "re-added" (its data wiped, so it joins as a new
member under its old name); one never used is "fresh". The cluster never goes below
MIN_VOTERS voters nor above the slot count.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "MIN_VOTERS",
    "Members",
    "Membership",
    "MembershipError",
    "Move",
    "plan_move",
]

# The fewest voters a move leaves: below three, one more fault takes the quorum.
MIN_VOTERS = 3

MoveOp = Literal["add-learner", "add-voter", "promote", "remove"]


class MembershipError(Exception):
    """A membership change failed: refused (it did not happen), or without an answer (it may
    have happened). Either way the fault reads the member list again to record what is."""


@dataclass(frozen=True)
class Members:
    """The cluster's configuration by node name: `voters` and `learners`, each sorted."""

    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(sorted(self.voters + self.learners))

    def as_json(self) -> dict[str, list[str]]:
        return {"voters": list(self.voters), "learners": list(self.learners)}


@dataclass(frozen=True)
class Move:
    """One change: `op` on `node`; `fresh` for an add of a slot that was never a member."""

    op: MoveOp
    node: str
    fresh: bool = False


class Membership(Protocol):
    """How the member fault changes the cluster. Every call blocks, bounds its own wait
    and raises MembershipError when the change failed or may not have happened.

    - `slots`: every node name the cluster may use, in order (members and spares).
    - `learners_supported`: whether the target can add learners (else adds are voters).
    - `members()`: the configuration the cluster now has.
    - `add(node, learner)`: make `node` a member (a learner if `learner`), then start it
      with an empty data directory; it has not caught up when this returns.
    - `promote(node)`: make the learner `node` a voter (waits, bounded, until it caught up).
    - `promote_together(nodes, within_s)`: promote the learners `nodes` with requests sent
      at once, none waiting for another's answer (the `member-race` fault); waits at most
      `within_s` for the answers. Returns, per node, None if it was promoted, else why not
      (refused, or no answer: it may still happen). Never raises MembershipError.
    - `remove(node)`: take `node` out of the configuration (the fault then stops it).
    - `stop(node)`: stop the process of `node` (a node no longer a member); idempotent.
    """

    slots: tuple[str, ...]
    learners_supported: bool

    def members(self) -> Members: ...

    def add(self, node: str, learner: bool) -> None: ...

    def promote(self, node: str) -> None: ...

    def promote_together(self, nodes: Sequence[str], within_s: float) -> dict[str, str | None]: ...

    def remove(self, node: str) -> None: ...

    def stop(self, node: str) -> None: ...


def plan_move(
    members: Members,
    slots: Sequence[str],
    used: set[str],
    rng: random.Random,
    leader: Callable[[], str | None],
    learners_supported: bool = True,
) -> Move | None:
    """The next move for a cluster in configuration `members` (None: no move is possible).

    A learner waiting is promoted first. Otherwise a random one of the moves the bounds
    allow: add a spare slot (`used` names the slots that were members once: adding one of
    those is a re-add), or remove a voter, half the time the leader (`leader()`, asked only
    then), else a random voter.
    """
    if members.learners:
        return Move("promote", members.learners[0])
    spares = [s for s in slots if s not in members.all]
    moves: list[str] = []
    if spares:
        moves.append("add")
    if len(members.voters) > MIN_VOTERS:
        moves.append("remove")
    if not moves:
        return None
    if rng.choice(moves) == "add":
        node = rng.choice(spares)
        return Move("add-learner" if learners_supported else "add-voter", node, node not in used)
    if rng.random() < 0.5:
        current = leader()
        if current in members.voters:
            return Move("remove", current)
    return Move("remove", rng.choice(members.voters))
