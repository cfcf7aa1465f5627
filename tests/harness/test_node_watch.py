"""Which stopped nodes the node watcher (harness.node_watch) calls crashed: the logic, on a
backend whose supervisors are a table. (test_runs.py kills a real node mid-run.)"""

from __future__ import annotations

import asyncio
import random

from harness.backends.supervisor import SupervisedBackend
from harness.node_watch import look_again
from nemesis.fakes import FakeRemote
from nemesis.faults import NemesisContext
from nemesis.remote import Remote

NODES = ["n1", "n2", "n3"]


class TableBackend(SupervisedBackend[Remote]):
    """Nodes run unless listed in `down`; `unreachable` ones cannot be asked."""

    def __init__(self, down: set[str], unreachable: frozenset[str] = frozenset()) -> None:
        super().__init__(None)
        self.down = down
        self.unreachable = unreachable

    def running(self, node: str) -> tuple[int, str] | None:
        if node in self.unreachable:
            raise OSError("no route to host")
        return None if node in self.down else (100, "S")


def look(ctx: NemesisContext) -> list[str]:
    crashes: list[dict[str, object]] = []
    asyncio.run(look_again(ctx, lambda: 7, crashes))
    assert all(c["time"] == 7 and "no fault had stopped it" in str(c["what"]) for c in crashes)
    return [str(c["node"]) for c in crashes]


def context(backend: SupervisedBackend[Remote]) -> NemesisContext:
    remotes: dict[str, Remote] = {n: FakeRemote(n, f"10.0.0.{i}") for i, n in enumerate(NODES)}
    return NemesisContext(remotes=remotes, procs=backend, rng=random.Random(1))


def test_a_node_down_with_no_fault_holding_it_is_a_crash() -> None:
    assert look(context(TableBackend({"n2"}))) == ["n2"]
    assert look(context(TableBackend(set()))) == []


def test_nodes_a_fault_killed_or_membership_took_out_are_not_crashes() -> None:
    ctx = context(TableBackend({"n1", "n2", "n3"}))
    ctx.killed = {"n1"}
    ctx.members = {"n1", "n3"}
    assert look(ctx) == ["n3"]


def test_a_node_that_cannot_be_asked_is_not_called_crashed() -> None:
    assert look(context(TableBackend({"n2"}, unreachable=frozenset({"n2"})))) == []


def test_a_node_back_up_when_confirmed_under_the_lock_is_not_a_crash() -> None:
    # Down at the first look, running again by the confirmation (a fault restarting it).
    backend = TableBackend({"n2"})
    answers = iter([None, (100, "S")])
    backend.running = lambda node: next(answers) if node == "n2" else (1, "S")  # type: ignore[method-assign]
    assert look(context(backend)) == []
