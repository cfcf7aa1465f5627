"""packet-loss with fakes: the shapes, the statistic rules, what is recorded, the heal; and
`delay` refused with a sentence."""

from __future__ import annotations

import json
import random

import pytest

from nemesis import netfaults
from nemesis.fakes import FakeProcessControl, FakeRemote
from nemesis.faults import FaultEvent, NemesisContext, PacketLossNemesis, parse_nemesis
from nemesis.netfaults import LossShape, loss_label, loss_map, loss_rule, pick_shape
from nemesis.schedule import heal_all

NODES = ["n1", "n2", "n3", "n4", "n5"]


def make_ctx(seed: int) -> NemesisContext:
    remotes = {n: FakeRemote(n, f"10.9.0.{i}") for i, n in enumerate(NODES, 1)}
    return NemesisContext(
        remotes=dict(remotes), procs=FakeProcessControl(NODES), rng=random.Random(seed)
    )


def chain_rules(ctx: NemesisContext, node: str) -> list[tuple[str, ...]]:
    remote = ctx.remotes[node]
    assert isinstance(remote, FakeRemote)
    hooked = ("-j", "HARNESS-NEMESIS") in remote.chains["INPUT"]
    return list(remote.chains.get("HARNESS-NEMESIS", [])) if hooked else []


def test_the_rule_drops_a_random_share_of_each_source() -> None:
    assert loss_rule(["10.0.0.2", "10.0.0.1", "10.0.0.2"], 0.2) == [
        "-s", "10.0.0.1,10.0.0.2", "-m", "statistic", "--mode", "random",
        "--probability", "0.200000", "-j", "DROP",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least one source"):
        loss_rule([], 0.2)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="above 0 and at most 1"):
            loss_rule(["10.0.0.1"], bad)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (LossShape("pair", ("n2", "n4"), "one-way"), {"n4": {"n2"}}),
        (LossShape("pair", ("n2", "n4"), "both"), {"n4": {"n2"}, "n2": {"n4"}}),
        (LossShape("one", ("n1",), "in"), {"n1": {"n2", "n3"}}),
        (LossShape("one", ("n1",), "out"), {"n2": {"n1"}, "n3": {"n1"}}),
        (LossShape("one", ("n1",), "both"), {"n1": {"n2", "n3"}, "n2": {"n1"}, "n3": {"n1"}}),
    ],
)
def test_loss_map_names_for_each_receiver_the_senders_it_loses(
    shape: LossShape, expected: dict[str, set[str]]
) -> None:
    drops = loss_map(shape, ["n1", "n2", "n3", "n4"][: 4 if shape.kind == "pair" else 3])
    assert {n: set(s) for n, s in drops.items() if s} == expected


def test_shapes_cover_pairs_and_single_nodes_in_every_direction_and_repeat_by_seed() -> None:
    seen = {
        (s.kind, s.direction) for s in (pick_shape(NODES, random.Random(i)) for i in range(200))
    }
    assert seen == {("pair", "one-way"), ("pair", "both"), ("one", "in"), ("one", "out"),
                    ("one", "both")}  # fmt: skip
    assert pick_shape(NODES, random.Random(7)) == pick_shape(
        list(reversed(NODES)), random.Random(7)
    )
    with pytest.raises(ValueError, match="at least 2 nodes"):
        pick_shape(["n1"], random.Random(1))


@pytest.mark.parametrize("seed", range(6))
def test_start_installs_the_recorded_loss_and_stop_flushes_it(seed: int) -> None:
    ctx = make_ctx(seed)
    [nemesis] = parse_nemesis("packet-loss", len(NODES), packet_loss=0.35)
    event = nemesis.start(ctx)
    assert event.f == "start" and event.fault == "packet-loss" and event.error is None
    value = event.value
    assert isinstance(value, dict) and value["share"] == 0.35
    assert value["kind"] in ("pair", "one") and value["direction"]
    json.dumps(event.as_op())
    address = {n: f"10.9.0.{i}" for i, n in enumerate(NODES, 1)}
    for node in NODES:
        senders = value["drops"][node]
        rules = chain_rules(ctx, node)
        assert {r[r.index("-s") + 1] for r in rules} == {address[s] for s in senders}
        assert all(r[r.index("--probability") + 1] == "0.350000" for r in rules)
    assert any(value["drops"].values())
    assert ctx.network_faulted
    assert nemesis.stop(ctx) == FaultEvent("stop", "packet-loss", "network-healed")
    assert all(not chain_rules(ctx, n) for n in NODES)
    assert not ctx.network_faulted
    nemesis.stop(ctx)


def test_heal_all_flushes_a_loss_whose_fault_object_was_lost() -> None:
    ctx = make_ctx(3)
    PacketLossNemesis(share=0.5).start(ctx)
    [event] = heal_all(ctx)
    assert isinstance(event.value, dict) and event.value["network-healed"] == NODES
    assert all(not chain_rules(ctx, n) for n in NODES)


def test_parse_takes_the_share_and_all_includes_packet_loss_from_two_nodes() -> None:
    [loss] = parse_nemesis("packet-loss", 3, packet_loss=0.5)
    assert isinstance(loss, PacketLossNemesis) and loss.share == 0.5
    assert "packet-loss" in [n.name for n in parse_nemesis("all", 2)]
    assert "packet-loss" not in [n.name for n in parse_nemesis("all", 1)]
    with pytest.raises(ValueError, match="needs at least 2 nodes"):
        parse_nemesis("packet-loss", 1)
    with pytest.raises(ValueError, match="above 0 and at most 1"):
        parse_nemesis("partition", 3, packet_loss=0)


def test_labels_say_the_share_the_nodes_and_the_direction() -> None:
    pair = netfaults.loss_value(LossShape("pair", ("n1", "n2"), "one-way"), 0.2, {})
    assert loss_label(pair) == "20% lost n1->n2"
    both = netfaults.loss_value(LossShape("pair", ("n1", "n2"), "both"), 0.05, {})
    assert loss_label(both) == "5% lost n1<->n2"
    one = netfaults.loss_value(LossShape("one", ("n3",), "in"), 1.0, {})
    assert loss_label(one) == "100% lost around n3 (in)"


@pytest.mark.root
def test_delay_is_refused_with_a_sentence_naming_netem() -> None:
    # This kernel has no sch_netem; on one that has it the harness still applies no delay.
    with pytest.raises(ValueError, match=r"nemesis 'delay'.*netem") as refused:
        parse_nemesis("partition,delay", 3)
    assert "packet-loss works" in str(refused.value)
