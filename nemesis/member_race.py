"""`member-race`: two membership changes at once, where only one at a time is safe.

Raft changes membership one server at a time because any majority of the old
configuration and any majority of the new one then share a node; two changes in flight
break that. With voters {1, 2, 3} (leader 1) and learners 4 and 5, promoting both at once
takes the leader to {1, 2, 3, 4, 5} (a majority: 1, 4, 5) while 2 and 3, still on {1, 2,
3}, are a majority of their own: two leaders at once, each acknowledging writes the other
never sees, which the history shows as stale reads and lost writes.

The fault makes that moment on purpose. Start: two spare slots join as learners (waited
for, as the `member` fault's adds); the other voters are cut off from the leader and the
learners; then both learners are promoted at once (`Membership.promote_together`), the
answers waited for a few seconds at most. A correct cluster takes the first promotion and
refuses the second (a change is pending), and the first cannot commit without a node from
the other side: no majority can form on either side but the old one's. Stop: the network
heals and the cluster settles (every learner promoted, as `member`'s stop).

The event's value: {"changes": [the adds, then each promotion, with "error" where it was
refused or unanswered], "cut": the grudge, "voters", "learners"} (the configuration read
back after the promotions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nemesis import grudge as grudges
from nemesis.faults import (
    FaultEvent,
    NemesisContext,
    PartitionNemesis,
    apply_move,
    change_errors,
    settle_members,
    sync_members,
)
from nemesis.membership import MIN_VOTERS, Members, MembershipError, Move

__all__ = ["RACE_WAIT_S", "MemberRaceNemesis"]

# How long the promotions' answers are waited for: a correct leader never answers the
# first while the cut lasts, and the fault must not hold the schedule for long.
RACE_WAIT_S = 3.0
NAME = "member-race"


def _cut(ctx: NemesisContext) -> grudges.Grudge | None:
    """The leader and the learners on one side, the other voters on the other."""
    assert ctx.membership is not None
    now = ctx.membership.members()
    leader = ctx.leader()
    if leader not in now.voters or len(now.learners) < 2:
        return None
    side = {leader, *now.learners}
    return grudges.from_components([sorted(side), sorted(set(now.all) - side)])


@dataclass
class MemberRaceNemesis:
    """See the module docstring. `cut` is the partition it makes (a PartitionNemesis the
    sim backend gives its network, as any partition)."""

    name: str = NAME
    min_nodes: int = 3
    cut: Any = field(default_factory=lambda: PartitionNemesis(NAME, 3, _cut))
    # Slots that were members at some time: adding one again is a re-add.
    used: set[str] = field(default_factory=set)

    def start(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            if ctx.membership is None:
                return FaultEvent("start", self.name, None, error="no membership changes here")
            changes: list[dict[str, Any]] = []
            try:
                changes += self._make_room(ctx, ctx.membership.members())
                now = ctx.membership.members()
            except MembershipError as exc:
                return FaultEvent(
                    "start", self.name, {"changes": changes}, error=f"member list: {exc}"
                )
            spares = [s for s in ctx.membership.slots if s not in now.all][:2]
            value: dict[str, Any] = {"changes": changes}
            errors = change_errors(changes)
            if now.learners or len(spares) < 2:
                why = "a learner is waiting" if now.learners else "fewer than two spare slots"
                errors.append(f"no race possible: {why}")
            else:
                errors += self._race(ctx, spares, value)
            after, error = sync_members(ctx, ctx.membership)
            errors += [error] if error else []
            return FaultEvent("start", self.name, {**value, **after},
                              error="; ".join(errors) or None)  # fmt: skip

    def _make_room(self, ctx: NemesisContext, now: Members) -> list[dict[str, Any]]:
        """Remove voters other than the leader (one change at a time, each waited for) until
        two slots are spare, never below MIN_VOTERS voters: a run can race again and again."""
        assert ctx.membership is not None
        self.used.update(now.all)
        spare = len(ctx.membership.slots) - len(now.all)
        leader = ctx.leader()
        others = [v for v in now.voters if v != leader]
        changes: list[dict[str, Any]] = []
        while spare < 2 and len(now.voters) - len(changes) > MIN_VOTERS and others:
            node = others.pop(ctx.rng.randrange(len(others)))
            changes.append(apply_move(ctx, ctx.membership, Move("remove", node)))
            spare += 1
        return changes

    def _race(self, ctx: NemesisContext, spares: list[str], value: dict[str, Any]) -> list[str]:
        """Add `spares` as learners, cut, promote both at once; the errors. Records into
        `value`'s changes and its cut."""
        assert ctx.membership is not None
        adds = [Move("add-learner", n, n not in self.used) for n in spares]
        changes = [apply_move(ctx, ctx.membership, move) for move in adds]
        self.used.update(spares)
        value["changes"] += changes
        errors = change_errors(changes)
        if errors:
            return errors
        cut = self.cut.start(ctx)
        value["cut"] = cut.value
        if cut.error:
            return [f"cut: {cut.error}"]
        promotions = self._promote(ctx, spares)
        value["changes"] += promotions
        return change_errors(promotions)

    def _promote(self, ctx: NemesisContext, nodes: list[str]) -> list[dict[str, Any]]:
        assert ctx.membership is not None
        answers = ctx.membership.promote_together(nodes, RACE_WAIT_S)
        changes: list[dict[str, Any]] = []
        for node in nodes:
            change: dict[str, Any] = {"op": "promote", "node": node}
            if answers.get(node):
                change["error"] = answers[node]
            changes.append(change)
        return changes

    def stop(self, ctx: NemesisContext) -> FaultEvent:
        with ctx.lock:
            healed = self.cut.stop(ctx)
            if ctx.membership is None:
                return FaultEvent("stop", self.name, None)
            value, errors = settle_members(ctx)
            if healed.error:
                errors.insert(0, f"heal: {healed.error}")
            return FaultEvent("stop", self.name, value, error="; ".join(errors) or None)
