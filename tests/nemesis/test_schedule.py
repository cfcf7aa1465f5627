"""run_schedule and heal_all with fakes: alternation, recording, healing on every exit."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from nemesis import iptables
from nemesis.fakes import FakeProcessControl, FakeRemote
from nemesis.faults import FaultEvent, Nemesis, NemesisContext, parse_nemesis
from nemesis.schedule import heal_all, run_schedule

pytestmark = pytest.mark.timeout(30)

INTERVAL_S = 0.01


def make_ctx(n: int = 5, seed: int = 3) -> NemesisContext:
    nodes = [f"n{i}" for i in range(1, n + 1)]
    return NemesisContext(
        remotes={node: FakeRemote(node, f"10.9.0.{10 + i}") for i, node in enumerate(nodes, 1)},
        procs=FakeProcessControl(nodes),
        rng=random.Random(seed),
        leader=lambda: "n1",
    )


def procs_of(ctx: NemesisContext) -> FakeProcessControl:
    assert isinstance(ctx.procs, FakeProcessControl)
    return ctx.procs


def fakes_of(ctx: NemesisContext) -> list[FakeRemote]:
    remotes = [ctx.remotes[n] for n in ctx.nodes]
    return [r for r in remotes if isinstance(r, FakeRemote)]


def all_healed(ctx: NemesisContext) -> bool:
    no_drops = all(not r.dropped_sources() for r in fakes_of(ctx))
    running = set(procs_of(ctx).state.values()) == {"running"}
    return no_drops and running and not ctx.killed and not ctx.paused


async def run_for(ctx: NemesisContext, nemeses: list[Nemesis], completes: int) -> list[FaultEvent]:
    """Run the schedule until `completes` start/stop completions were emitted."""
    events: list[FaultEvent] = []
    stop = asyncio.Event()

    def emit(event: FaultEvent) -> None:
        events.append(event)
        done = [e for e in events if e.phase == "complete" and e.fault != "heal-all"]
        if len(done) >= completes:
            stop.set()

    await asyncio.wait_for(
        run_schedule(ctx, nemeses, interval_s=INTERVAL_S, emit=emit, stop=stop), timeout=10
    )
    return events


def test_schedule_alternates_start_and_stop_of_the_same_fault_then_heals() -> None:
    ctx = make_ctx()
    events = asyncio.run(run_for(ctx, parse_nemesis("all", 5), completes=21))
    completes = [e for e in events if e.phase == "complete"]
    assert completes[-1].fault == "heal-all"
    body = completes[:-1]
    # An odd count ends with a fault active: the final heal stops it.
    assert [e.f for e in body] == ["start", "stop"] * 10 + ["start", "stop"]
    for start, stop in zip(body[::2], body[1::2], strict=True):
        assert start.fault == stop.fault
    invokes = [e for e in events if e.phase == "invoke"]
    assert all(e.value is None for e in invokes)
    assert len({e.fault for e in body}) > 3, "kinds are picked at random"
    assert all_healed(ctx)


def test_the_same_seed_picks_the_same_faults() -> None:
    def faults(seed: int) -> list[tuple[str, str, object]]:
        ctx = make_ctx(seed=seed)
        events = asyncio.run(run_for(ctx, parse_nemesis("all", 5), completes=12))
        return [(e.f, e.fault, e.value) for e in events]

    assert faults(11) == faults(11)
    assert faults(11) != faults(12)


def test_a_remote_error_is_recorded_and_the_schedule_goes_on() -> None:
    ctx = make_ctx(n=3)
    flaky = ctx.remotes["n2"]
    assert isinstance(flaky, FakeRemote)
    flaky.add_script(["iptables"], returncode=4, stderr="resource problem", times=3)
    events = asyncio.run(run_for(ctx, parse_nemesis("partition-one", 3), completes=4))
    first = next(e for e in events if e.phase == "complete")
    assert first.f == "start" and first.error and "n2" in first.error and first.value is None
    assert [e.f for e in events if e.phase == "complete"][:4] == ["start", "stop"] * 2
    assert all_healed(ctx)


def test_cancellation_mid_fault_still_heals() -> None:
    ctx = make_ctx()
    events: list[FaultEvent] = []

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_schedule(
                ctx, parse_nemesis("kill", 5), interval_s=INTERVAL_S, emit=events.append, stop=stop
            )
        )
        while not ctx.killed:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert events[-1].fault == "heal-all"
    assert any(e.fault == "kill" and e.f == "stop" for e in events)
    assert all_healed(ctx)


def test_no_nemeses_only_waits() -> None:
    ctx = make_ctx(n=3)
    events: list[FaultEvent] = []

    async def go() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        await run_schedule(ctx, [], interval_s=INTERVAL_S, emit=events.append, stop=stop)

    asyncio.run(go())
    assert [e.fault for e in events] == ["heal-all"]
    assert procs_of(ctx).calls == [("resume", n) for n in ctx.nodes]


def test_bad_interval_is_rejected() -> None:
    ctx = make_ctx(n=3)
    with pytest.raises(ValueError, match="positive"):
        asyncio.run(run_schedule(ctx, [], interval_s=0, emit=lambda e: None, stop=asyncio.Event()))


def test_blocking_faults_do_not_block_the_event_loop() -> None:
    class SlowProcs(FakeProcessControl):
        def kill(self, node: str) -> None:
            time.sleep(0.3)
            super().kill(node)

    ctx = make_ctx(n=3)
    ctx.procs = SlowProcs(ctx.nodes)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def go() -> None:
        stop = asyncio.Event()
        events: list[FaultEvent] = []

        def emit(event: FaultEvent) -> None:
            events.append(event)
            if event.phase == "complete" and event.f == "start":
                stop.set()

        await asyncio.gather(
            run_schedule(
                ctx, parse_nemesis("kill", 3), interval_s=INTERVAL_S, emit=emit, stop=stop
            ),
            ticker(stop),
        )

    asyncio.run(go())
    assert ticks >= 10, "the loop kept running while a kill blocked for 0.3 s"


def test_heal_all_undoes_everything_and_is_idempotent() -> None:
    ctx = make_ctx()
    for nemesis in parse_nemesis("partition-halves,kill,pause", 5):
        nemesis.start(ctx)
    assert ctx.killed and ctx.paused and ctx.network_faulted
    killed, paused = sorted(ctx.killed), sorted(ctx.paused)
    [event] = heal_all(ctx)
    assert event.fault == "heal-all" and event.error is None
    assert event.value == {"resumed": paused, "restarted": killed, "network-healed": ctx.nodes}
    assert all_healed(ctx)
    [again] = heal_all(ctx)
    assert again.value == {"resumed": [], "restarted": [], "network-healed": []}
    assert all_healed(ctx)


def test_heal_all_never_raises_and_reports_what_failed() -> None:
    ctx = make_ctx(n=3)
    for nemesis in parse_nemesis("partition-one,kill", 3):
        nemesis.start(ctx)
    procs_of(ctx).fail_on.add("n1")
    broken = ctx.remotes["n3"]
    assert isinstance(broken, FakeRemote)
    broken.add_script(["iptables"], returncode=4, stderr="no")
    events = heal_all(ctx, parse_nemesis("partition-one,kill", 3))
    assert [e.fault for e in events] == ["partition-one", "kill", "heal-all"]
    assert events[0].error and "n3" in events[0].error
    assert events[-1].error and "n3" in events[-1].error
    assert ctx.network_faulted, "a failed network heal is retried next time"
    broken.script.clear()
    procs_of(ctx).fail_on.clear()
    heal_all(ctx)
    assert all_healed(ctx)
    assert all(iptables.CHAIN in r.chains for r in fakes_of(ctx))
