"""The member fault on a fake cluster: its moves keep between 3 voters and the slot count,
a learner is promoted at stop, a node that leaves is stopped, every change is recorded,
the heal leaves a stable configuration, and the other faults act on the members alone."""

from __future__ import annotations

import random

from nemesis.fakes import FakeMembership, FakeProcessControl, FakeRemote
from nemesis.faults import MemberNemesis, NemesisContext, PartitionNemesis, parse_nemesis
from nemesis.membership import MIN_VOTERS, Members, Move, plan_move
from nemesis.schedule import heal_all

SLOTS = ("n1", "n2", "n3", "n4", "n5")


def context(membership: FakeMembership | None, seed: int = 1) -> NemesisContext:
    remotes = {n: FakeRemote(n, f"10.0.0.{i}") for i, n in enumerate(SLOTS, 1)}
    ctx = NemesisContext(remotes, FakeProcessControl(SLOTS), random.Random(seed))
    ctx.membership = membership
    ctx.members = set(membership.voters) if membership is not None else None
    ctx.leader = lambda: "n1"
    return ctx


def fake(voters: tuple[str, ...] = ("n1", "n2", "n3")) -> FakeMembership:
    return FakeMembership(SLOTS, set(voters))


def test_moves_stay_between_three_voters_and_the_slots() -> None:
    rng = random.Random(3)
    leader = lambda: "n2"  # noqa: E731
    three = Members(("n1", "n2", "n3"))
    for _ in range(50):
        move = plan_move(three, SLOTS, {"n1", "n2", "n3"}, rng, leader)
        assert move is not None and move.op == "add-learner" and move.fresh
        assert move.node in ("n4", "n5")
    full = Members(SLOTS)
    removed = {plan_move(full, SLOTS, set(SLOTS), rng, leader) for _ in range(50)}
    assert {m.op for m in removed if m} == {"remove"} and Move("remove", "n2") in removed
    assert plan_move(Members(("n1", "n2", "n3")), SLOTS[:3], set(), rng, leader) is None
    waiting = Members(("n1", "n2", "n3"), ("n5",))
    assert plan_move(waiting, SLOTS, set(), rng, leader) == Move("promote", "n5")
    voters_only = plan_move(three, SLOTS, set(), rng, leader, learners_supported=False)
    assert voters_only is not None and voters_only.op == "add-voter"


def test_start_and_stop_move_the_cluster_and_record_each_change() -> None:
    cluster = fake()
    ctx = context(cluster)
    fault = MemberNemesis()
    sizes, ops, readds = set(), set(), 0
    for _ in range(40):
        started = fault.start(ctx)
        assert started.error is None, started
        (change,) = started.value["changes"]
        ops.add(change["op"])
        readds += change.get("fresh") is False
        assert started.value["voters"] == sorted(cluster.voters)
        assert started.value["learners"] == sorted(cluster.learners)
        stopped = fault.stop(ctx)
        assert not cluster.learners and stopped.value["learners"] == []
        assert MIN_VOTERS <= len(cluster.voters) <= len(SLOTS)
        # Faults act on the members; everything else was stopped.
        assert set(ctx.nodes) == cluster.voters == cluster.running
        sizes.add(len(cluster.voters))
    assert sizes == {3, 4, 5}
    assert ops == {"add-learner", "remove"} and readds > 0


def test_a_learner_that_never_catches_up_is_removed_and_stopped_by_the_heal() -> None:
    cluster = fake()
    cluster.stuck = {"n4", "n5"}
    ctx = context(cluster)
    fault = MemberNemesis()
    started = fault.start(ctx)
    (added,) = started.value["changes"]
    assert added["op"] == "add-learner" and cluster.learners == {added["node"]}
    events = heal_all(ctx, [fault])
    assert events[0].error is not None and "not a learner in sync" in events[0].error
    assert not cluster.learners and cluster.voters == {"n1", "n2", "n3"}
    assert cluster.running == {"n1", "n2", "n3"} and set(ctx.nodes) == cluster.voters
    assert events[-1].value["members"]["voters"] == ["n1", "n2", "n3"]


def test_a_refused_change_is_recorded_and_changes_nothing() -> None:
    cluster = fake(SLOTS)
    cluster.refuse = {"remove"}
    ctx = context(cluster)
    started = MemberNemesis().start(ctx)
    (change,) = started.value["changes"]
    assert change["op"] == "remove" and "refused" in change["error"]
    assert started.error is not None and set(ctx.nodes) == set(SLOTS) == cluster.running
    assert MemberNemesis().start(context(None)).error == "no membership changes here"


def test_partitions_cut_the_members_only_and_heal_every_slot() -> None:
    cluster = fake()
    ctx = context(cluster)
    (partition,) = parse_nemesis("partition", 3)
    assert isinstance(partition, PartitionNemesis)
    grudge = partition.start(ctx).value
    assert set(grudge) <= {"n1", "n2", "n3"}
    for spare in ("n4", "n5"):
        assert not any(spare in dropped for dropped in grudge.values())
    partition.stop(ctx)
    assert all(remote.calls for remote in ctx.remotes.values())  # the heal reached them all


def test_all_takes_member_only_where_the_run_can_set_it_up() -> None:
    def kinds(can: tuple[str, ...]) -> set[str]:
        return {n.name for n in parse_nemesis("all", 3, can_set_up=can)}

    assert "member" not in kinds(())
    assert "member" in kinds(("member",))
