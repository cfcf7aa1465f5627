"""Grudges: which node drops traffic from which, as plain data (no I/O).

A grudge maps a node to the set of nodes whose packets it drops (Jepsen's meaning: the key
is the receiver). `{"n1": {"n2"}}` means n1 drops what n2 sends, while n2 still hears n1.
A symmetric cut lists each side in the other's set. Nodes missing from a grudge drop nothing.

Every generator takes the node names (order does not matter) and a seeded `random.Random`,
and returns a *complete* grudge: every node is a key, possibly with an empty set.

Over TCP a one-directional drop breaks connections both ways (the handshake needs both), so
every generator here except `one_way` produces symmetric grudges: what a node cannot hear it
cannot reach either. `one_way` keeps the asymmetry on purpose (datagrams and packets of
established connections still flow from the victim).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "Grudge",
    "bridge",
    "complete",
    "from_components",
    "halves",
    "hears",
    "is_symmetric",
    "leader",
    "majorities_ring",
    "one",
    "one_way",
    "to_json",
    "validate",
]

Grudge = dict[str, frozenset[str]]


def validate(grudge: Mapping[str, Iterable[str]], nodes: Iterable[str]) -> None:
    """Raise ValueError if the grudge names an unknown node or a node drops itself."""
    known = set(nodes)
    for node, dropped in grudge.items():
        if node not in known:
            raise ValueError(f"grudge names unknown node {node!r} (nodes: {sorted(known)})")
        dropped = set(dropped)
        unknown = dropped - known
        if unknown:
            raise ValueError(f"grudge of {node!r} names unknown nodes {sorted(unknown)}")
        if node in dropped:
            raise ValueError(f"node {node!r} cannot drop traffic from itself")


def complete(grudge: Mapping[str, Iterable[str]], nodes: Iterable[str]) -> Grudge:
    """The validated grudge with every node as a key (empty set: drops nothing)."""
    node_list = list(nodes)
    validate(grudge, node_list)
    return {n: frozenset(grudge.get(n, ())) for n in node_list}


def from_components(components: Sequence[Iterable[str]]) -> Grudge:
    """Jepsen's complete-grudge: each node drops every node outside its own component."""
    comps = [frozenset(c) for c in components]
    everyone = frozenset().union(*comps)
    if sum(len(c) for c in comps) != len(everyone):
        raise ValueError("components overlap")
    return {n: everyone - c for c in comps for n in sorted(c)}


def hears(grudge: Mapping[str, Iterable[str]], node: str, nodes: Iterable[str]) -> frozenset[str]:
    """The nodes `node` receives from, itself included."""
    return frozenset(nodes) - frozenset(grudge.get(node, ()))


def is_symmetric(grudge: Mapping[str, Iterable[str]]) -> bool:
    """True when every drop goes both ways."""
    drops = {(a, b) for a, bs in grudge.items() for b in bs}
    return all((b, a) in drops for a, b in drops)


def to_json(grudge: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """The grudge as JSON-able data: {node: sorted list}, keys sorted."""
    return {n: sorted(grudge[n]) for n in sorted(grudge)}


def _shuffled(nodes: Iterable[str], rng: random.Random) -> list[str]:
    # Sort first so the result depends only on the seed, not on the caller's order.
    out = sorted(set(nodes))
    rng.shuffle(out)
    return out


def _need(nodes: Sequence[str], minimum: int, what: str) -> None:
    if len(nodes) < minimum:
        raise ValueError(f"{what} needs at least {minimum} nodes, got {len(nodes)}")


def halves(nodes: Iterable[str], rng: random.Random) -> Grudge:
    """Random halves cut from each other; the smaller half has floor(n/2) nodes.

    Jepsen's partition-random-halves. With 5 nodes: 2 against 3.
    """
    order = _shuffled(nodes, rng)
    _need(order, 2, "halves")
    cut = len(order) // 2
    return from_components([order[:cut], order[cut:]])


def one(nodes: Iterable[str], rng: random.Random) -> Grudge:
    """One random node cut from all the others (both directions)."""
    order = _shuffled(nodes, rng)
    _need(order, 2, "one")
    return from_components([order[:1], order[1:]])


def leader(nodes: Iterable[str], leader_node: str) -> Grudge:
    """The given leader cut from all the others (both directions)."""
    node_list = sorted(set(nodes))
    _need(node_list, 2, "leader")
    if leader_node not in node_list:
        raise ValueError(f"leader {leader_node!r} is not one of {node_list}")
    return from_components([[leader_node], [n for n in node_list if n != leader_node]])


def bridge(nodes: Iterable[str], rng: random.Random) -> Grudge:
    """Two random halves cut from each other, except one bridge node that hears both.

    The bridge is the first node of the larger half; it drops nothing and nobody drops it.
    With 3 nodes: a - bridge - b, where a and b cannot talk. With 5: {a, b} - bridge - {c, d}.
    Both sides can form a majority through the bridge (Jepsen's bridge).
    """
    order = _shuffled(nodes, rng)
    _need(order, 3, "bridge")
    cut = len(order) // 2
    small, large = order[:cut], order[cut:]
    the_bridge = large[0]
    grudge = from_components([small, large])
    grudge[the_bridge] = frozenset()
    return {n: dropped - {the_bridge} for n, dropped in grudge.items()}


def majorities_ring(nodes: Iterable[str], rng: random.Random) -> Grudge:
    """Every node hears a majority, and no two nodes hear the same majority. Symmetric.

    The nodes are placed on a random ring and each hears the nodes within distance k of it,
    itself included (a window of 2k+1 nodes), with k the smallest such that the window is a
    majority. The windows are distinct as long as they are smaller than the ring:
    - 5 nodes: each hears its two ring neighbours (3 of 5) and drops the two others.
    - 4 nodes: each drops only the node opposite; 6: the opposite; 7: the two farthest.
    - 3 nodes: a window of 3 would be everyone, and a symmetric grudge where every node hears
      a different majority is only the path a - b - c: the ends drop each other, the middle
      hears both. That is the same shape as `bridge` on 3 nodes (Jepsen's 3-node ring drops
      one direction of every pair, which over TCP cuts every pair; we keep it symmetric).
    """
    order = _shuffled(nodes, rng)
    _need(order, 3, "majorities_ring")
    n = len(order)
    if n == 3:
        a, b, c = order
        return {a: frozenset({c}), b: frozenset(), c: frozenset({a})}
    majority = n // 2 + 1
    k = majority // 2  # the smallest k with 2k + 1 >= majority
    grudge: Grudge = {}
    for i, node in enumerate(order):
        window = {order[(i + d) % n] for d in range(-k, k + 1)}
        grudge[node] = frozenset(order) - window
    return grudge


def one_way(nodes: Iterable[str], rng: random.Random, victim: str | None = None) -> Grudge:
    """One node (random unless `victim` is given) receives nothing; the others still hear it.

    Only the victim's INPUT drops: {victim: all others}, everyone else drops nothing.
    """
    order = _shuffled(nodes, rng)
    _need(order, 2, "one_way")
    if victim is None:
        victim = order[0]
    elif victim not in order:
        raise ValueError(f"victim {victim!r} is not one of {sorted(order)}")
    grudge: Grudge = {n: frozenset() for n in order}
    grudge[victim] = frozenset(order) - {victim}
    return grudge
