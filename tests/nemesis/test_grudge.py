"""Grudge generators: the shape each promises, for 3, 5 and 7 nodes across many seeds."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from nemesis import grudge as g

SIZES = [3, 5, 7]
SEEDS = range(200)


def names(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


def hears_all(grudge: g.Grudge, nodes: list[str]) -> dict[str, frozenset[str]]:
    return {n: g.hears(grudge, n, nodes) for n in nodes}


def assert_well_formed(grudge: g.Grudge, nodes: list[str]) -> None:
    assert set(grudge) == set(nodes), "generators return complete grudges"
    g.validate(grudge, nodes)


@pytest.mark.parametrize("n", SIZES)
def test_halves_cut_the_smaller_half_from_the_larger(n: int) -> None:
    nodes = names(n)
    seen_small = set()
    for seed in SEEDS:
        grudge = g.halves(nodes, random.Random(seed))
        assert_well_formed(grudge, nodes)
        assert g.is_symmetric(grudge)
        views = set(hears_all(grudge, nodes).values())
        assert len(views) == 2
        small, large = sorted(views, key=len)
        assert len(small) == n // 2 and len(large) == n - n // 2
        assert small.isdisjoint(large) and small | large == set(nodes)
        seen_small.add(small)
    assert len(seen_small) > 1, "the halves are random"


@pytest.mark.parametrize("n", SIZES)
def test_one_isolates_a_single_random_node(n: int) -> None:
    nodes = names(n)
    victims = set()
    for seed in SEEDS:
        grudge = g.one(nodes, random.Random(seed))
        assert_well_formed(grudge, nodes)
        assert g.is_symmetric(grudge)
        alone = [node for node, dropped in grudge.items() if len(dropped) == n - 1]
        assert len(alone) == 1
        victims.add(alone[0])
        for other in set(nodes) - set(alone):
            assert grudge[other] == {alone[0]}
    assert victims == set(nodes)


@pytest.mark.parametrize("n", SIZES)
def test_leader_isolates_exactly_the_leader(n: int) -> None:
    nodes = names(n)
    for leader in nodes:
        grudge = g.leader(nodes, leader)
        assert_well_formed(grudge, nodes)
        assert grudge[leader] == set(nodes) - {leader}
        assert all(grudge[o] == {leader} for o in nodes if o != leader)
    with pytest.raises(ValueError, match="not one of"):
        g.leader(nodes, "n99")


@pytest.mark.parametrize("n", [*SIZES, 4, 6, 8, 9])
def test_majorities_ring_every_node_hears_a_different_majority(n: int) -> None:
    nodes = names(n)
    for seed in SEEDS:
        grudge = g.majorities_ring(nodes, random.Random(seed))
        assert_well_formed(grudge, nodes)
        assert g.is_symmetric(grudge)
        views = hears_all(grudge, nodes)
        assert all(len(v) > n // 2 for v in views.values()), views
        assert len(set(views.values())) == n, "no two nodes hear the same majority"
        assert any(grudge.values()), "somebody drops something"


def test_majorities_ring_shapes_for_3_and_5() -> None:
    for seed in SEEDS:
        three = g.majorities_ring(names(3), random.Random(seed))
        assert sorted(len(d) for d in three.values()) == [0, 1, 1]
        five = g.majorities_ring(names(5), random.Random(seed))
        assert all(len(d) == 2 for d in five.values())


@pytest.mark.parametrize("n", SIZES)
def test_bridge_node_hears_both_halves_which_cannot_talk(n: int) -> None:
    nodes = names(n)
    for seed in SEEDS:
        grudge = g.bridge(nodes, random.Random(seed))
        assert_well_formed(grudge, nodes)
        assert g.is_symmetric(grudge)
        bridges = [node for node, dropped in grudge.items() if not dropped]
        assert len(bridges) == 1
        bridge = bridges[0]
        assert all(bridge not in dropped for dropped in grudge.values())
        others = [node for node in nodes if node != bridge]
        views = {g.hears(grudge, o, nodes) - {bridge} for o in others}
        assert len(views) == 2
        a, b = views
        assert a.isdisjoint(b) and a | b == set(others)
        assert abs(len(a) - len(b)) <= 1
        assert all(len(g.hears(grudge, o, nodes)) > n // 2 or n == 3 for o in nodes)


@pytest.mark.parametrize("n", SIZES)
def test_one_way_drops_only_what_the_victim_receives(n: int) -> None:
    nodes = names(n)
    for seed in SEEDS:
        grudge = g.one_way(nodes, random.Random(seed))
        assert_well_formed(grudge, nodes)
        assert not g.is_symmetric(grudge)
        victims = [node for node, dropped in grudge.items() if dropped]
        assert len(victims) == 1
        assert grudge[victims[0]] == set(nodes) - set(victims)
        assert all(g.hears(grudge, o, nodes) == set(nodes) for o in nodes if o != victims[0])
    assert g.one_way(nodes, random.Random(0), victim="n2")["n2"] == set(nodes) - {"n2"}


def test_same_seed_same_grudge_whatever_the_node_order() -> None:
    nodes = names(5)
    for make in (g.halves, g.one, g.bridge, g.majorities_ring, g.one_way):
        assert make(nodes, random.Random(7)) == make(list(reversed(nodes)), random.Random(7))


def test_validation_rejects_unknown_nodes_and_self_drops() -> None:
    nodes = names(3)
    with pytest.raises(ValueError, match="unknown node"):
        g.validate({"n9": {"n1"}}, nodes)
    with pytest.raises(ValueError, match="unknown nodes"):
        g.validate({"n1": {"n9"}}, nodes)
    with pytest.raises(ValueError, match="itself"):
        g.validate({"n1": {"n1"}}, nodes)
    with pytest.raises(ValueError, match="itself"):
        g.complete({"n2": ["n2"]}, nodes)
    with pytest.raises(ValueError, match="overlap"):
        g.from_components([["n1", "n2"], ["n2", "n3"]])


def test_complete_components_and_json() -> None:
    nodes = names(3)
    assert g.complete({"n1": ["n2"]}, nodes) == {
        "n1": frozenset({"n2"}),
        "n2": frozenset(),
        "n3": frozenset(),
    }
    grudge = g.from_components([["n1"], ["n3", "n2"]])
    assert grudge == {"n1": {"n2", "n3"}, "n2": {"n1"}, "n3": {"n1"}}
    assert g.to_json(grudge) == {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"]}


@pytest.mark.parametrize(
    ("make", "least"),
    [(g.halves, 2), (g.one, 2), (g.one_way, 2), (g.bridge, 3), (g.majorities_ring, 3)],
)
def test_too_few_nodes_is_a_value_error(
    make: Callable[[list[str], random.Random], g.Grudge], least: int
) -> None:
    with pytest.raises(ValueError, match=f"at least {least} nodes"):
        make(names(least - 1), random.Random(0))
