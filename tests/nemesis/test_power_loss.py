"""power-loss with fakes: kill first, then the loss, restart on stop; how faults on
processes pick their nodes under `--fault-targets`; the loss report's round trip."""

from __future__ import annotations

import json

import pytest

from nemesis.fakes import FakeProcessControl
from nemesis.faults import (
    NemesisContext,
    kinds_of,
    parse_nemesis,
    parse_target_modes,
    pick_targets,
)
from nemesis.lazyfs import LossReport, parse_loss
from tests.nemesis.test_faults import make_ctx


def with_disks(ctx: NemesisContext, calls: list[tuple[str, str]]) -> None:
    """Give every node a lose call that records itself after the process calls so far."""
    procs = ctx.procs
    assert isinstance(procs, FakeProcessControl)

    def lose_for(node: str):  # type: ignore[no-untyped-def]
        def lose() -> dict[str, int]:
            assert procs.state[node] == "killed", "the loss comes after the kill"
            calls.append(("lose", node))
            return {"files": 1, "pages": 2, "dir_changes": 3, "failed": 0}

        return lose

    ctx.lose_unsynced = {n: lose_for(n) for n in ctx.nodes}


def test_power_loss_kills_then_loses_and_stop_restarts_on_what_is_left() -> None:
    seen = set()
    for seed in range(40):
        ctx = make_ctx(seed=seed, leader="n2")
        calls: list[tuple[str, str]] = []
        with_disks(ctx, calls)
        procs = ctx.procs
        assert isinstance(procs, FakeProcessControl)
        [power] = parse_nemesis("power-loss", 5)
        event = power.start(ctx)
        assert event.error is None and isinstance(event.value, dict)
        targets = event.value["nodes"]
        assert sorted(n for _, n in calls) == targets
        assert set(event.value["lost"]) == set(targets)
        assert {n for n, s in procs.state.items() if s == "killed"} == set(targets)
        json.dumps(event.as_op())
        assert power.stop(ctx).value == targets
        assert set(procs.state.values()) == {"running"}
        seen.add(len(targets))
    assert seen == {1, 2, 3, 5}, "one, the leader, a minority, a majority, all"


def test_power_loss_without_lazy_disks_does_nothing_and_says_why() -> None:
    ctx = make_ctx(n=3)
    [power] = parse_nemesis("power-loss", 3)
    event = power.start(ctx)
    assert event.value is None and event.error == "node data not on lazyfs"
    assert set(ctx.procs.state.values()) == {"running"}  # type: ignore[attr-defined]


def test_all_takes_power_loss_only_where_it_can_be_set_up() -> None:
    assert "power-loss" not in kinds_of(parse_nemesis("all", 3))
    assert "power-loss" in kinds_of(parse_nemesis("all", 3, can_set_up={"power-loss"}))
    assert kinds_of(parse_nemesis("power-loss+partition-leader", 3)) == {
        "power-loss",
        "partition-leader",
    }


@pytest.mark.parametrize(
    ("modes", "sizes"),
    [("all", {5}), ("majority", {3}), ("minority", {2}), ("one,leader", {1})],
)
def test_fault_targets_choose_how_nodes_are_picked(modes: str, sizes: set[int]) -> None:
    picked = set()
    for seed in range(20):
        ctx = make_ctx(seed=seed, leader="n4")
        ctx.target_modes = parse_target_modes(modes)
        picked.add(tuple(pick_targets(ctx)))
    assert {len(p) for p in picked} == sizes
    if modes == "one,leader":
        assert ("n4",) in picked and len(picked) > 1


def test_a_three_node_minority_under_fault_targets_is_one_node() -> None:
    ctx = make_ctx(n=3)
    ctx.target_modes = frozenset({"minority"})
    assert len(pick_targets(ctx)) == 1


def test_bad_fault_targets_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown most; expected some of one, minority"):
        parse_target_modes("all,most")
    with pytest.raises(ValueError, match="expected some of"):
        parse_target_modes(" , ")


def test_a_loss_report_reads_back() -> None:
    report = LossReport(files=3, pages=17, dir_changes=2, failed=0)
    assert parse_loss(report.line()) == {"files": 3, "pages": 17, "dir_changes": 2, "failed": 0}
    for bad in ("ok", "lost files=1", "lost files=x pages=1 dir_changes=1 failed=0"):
        with pytest.raises(ValueError):
            parse_loss(bad)
