"""The member-race fault on a fake cluster: it adds two learners, cuts the other voters off
from the leader and them, promotes both at once, records every step, makes room to race
again, and leaves a settled configuration at stop."""

from __future__ import annotations

from nemesis.fakes import FakeMembership
from nemesis.faults import parse_nemesis, settle_members
from nemesis.member_race import MemberRaceNemesis
from tests.nemesis.test_member_moves import context, fake


def test_a_correct_cluster_takes_one_promotion_and_refuses_the_second() -> None:
    cluster = fake()
    ctx = context(cluster)
    started = MemberRaceNemesis().start(ctx)
    changes = started.value["changes"]
    assert [(c["op"], c["node"]) for c in changes] == [
        ("add-learner", "n4"), ("add-learner", "n5"), ("promote", "n4"), ("promote", "n5"),
    ]  # fmt: skip
    assert "error" not in changes[2] and "pending" in changes[3]["error"]
    assert started.error is not None and "promote n5" in started.error
    # The leader and the learners on one side, the other voters on the other.
    assert started.value["cut"]["n1"] == ["n2", "n3"] == started.value["cut"]["n4"]
    assert started.value["cut"]["n2"] == ["n1", "n4", "n5"]
    assert started.value["voters"] == ["n1", "n2", "n3", "n4"]
    assert started.value["learners"] == ["n5"]
    assert ctx.network_faulted


def test_a_cluster_that_lets_two_changes_fly_takes_both() -> None:
    cluster = FakeMembership(("n1", "n2", "n3", "n4", "n5"), {"n1", "n2", "n3"},
                             one_change_at_a_time=False)  # fmt: skip
    started = MemberRaceNemesis().start(context(cluster))
    assert started.error is None, started
    assert started.value["voters"] == ["n1", "n2", "n3", "n4", "n5"]


def test_stop_heals_and_settles_and_the_next_start_makes_room_first() -> None:
    cluster = fake()
    ctx = context(cluster)
    fault = MemberRaceNemesis()
    fault.start(ctx)
    stopped = fault.stop(ctx)
    assert not ctx.network_faulted
    assert stopped.value["voters"] == ["n1", "n2", "n3", "n4", "n5"]
    assert stopped.value["learners"] == []
    again = fault.start(ctx)
    ops = [(c["op"], c.get("fresh")) for c in again.value["changes"]]
    # Two voters (never the leader) leave, then their slots come back: re-adds.
    assert ops[:4] == [("remove", None), ("remove", None), ("add-learner", False),
                       ("add-learner", False)]  # fmt: skip
    assert all(c["node"] != "n1" for c in again.value["changes"])
    assert ("stop", again.value["changes"][0]["node"]) in cluster.calls


def test_no_race_without_two_spare_slots_or_with_a_learner_waiting() -> None:
    ctx = context(fake(("n1", "n2", "n3", "n4")))
    ctx.membership = FakeMembership(("n1", "n2", "n3", "n4"), {"n1", "n2", "n3", "n4"})
    started = MemberRaceNemesis().start(ctx)
    assert "fewer than two spare slots" in str(started.error)
    waiting = fake()
    waiting.learners.add("n4")
    assert "a learner is waiting" in str(MemberRaceNemesis().start(context(waiting)).error)


def test_it_is_a_kind_of_its_own_that_all_takes_only_where_set_up() -> None:
    (race,) = parse_nemesis("member-race", 3, can_set_up={"member-race"})
    assert isinstance(race, MemberRaceNemesis)
    assert "member-race" not in {n.name for n in parse_nemesis("all", 3)}


def test_a_cluster_that_takes_no_change_is_left_after_one_learner_fails_twice() -> None:
    cluster = fake()
    cluster.learners |= {"n4", "n5"}
    cluster.refuse |= {"promote", "remove"}
    ctx = context(cluster)
    value, errors = settle_members(ctx)
    assert [(c["op"], c["node"]) for c in value["changes"]] == [("promote", "n4"), ("remove", "n4")]
    assert any("takes no membership change" in e for e in errors)
    assert value["learners"] == ["n4", "n5"]
