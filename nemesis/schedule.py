"""The nemesis schedule: start and stop faults on a clock, and heal everything at the end.

`run_schedule` is a coroutine for the runner's event loop. Faults block (they run commands
on nodes), so each start, stop and heal runs in a worker thread via `asyncio.to_thread`;
the loop keeps serving clients meanwhile. `NemesisContext.lock` keeps a heal from running
while a start is still half done, even when the coroutine was cancelled mid-fault.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from nemesis import clock, iptables
from nemesis.faults import FaultEvent, Nemesis, NemesisContext, for_each_node, settle_members
from nemesis.remote import RemoteError

__all__ = ["Emit", "heal_all", "run_schedule"]

log = logging.getLogger(__name__)

Emit = Callable[[FaultEvent], None]


async def run_schedule(
    ctx: NemesisContext,
    nemeses: Sequence[Nemesis],
    *,
    interval_s: float,
    emit: Emit,
    stop: asyncio.Event,
) -> None:
    """Every `interval_s` seconds alternately start a random kind from `nemeses` (chosen with
    `ctx.rng`) and stop it, until `stop` is set; then heal everything, always.

    Each action emits an invoke event, then a complete event (with `error` set when a node
    could not be reached: the fault may be partly applied; the next stop heals it). With no
    nemeses it only waits. On any exit, cancellation included, it stops the active fault and
    runs `heal_all`, emitting their events; an abort path should still call `heal_all` itself
    afterwards (idempotent) in case this coroutine was cancelled again while healing.
    Programmer errors (and exceptions from `emit`) propagate after the heal.
    """
    if interval_s <= 0:
        raise ValueError(f"nemesis interval must be positive, got {interval_s}")
    active: Nemesis | None = None
    try:
        while not await _stopped_within(stop, interval_s):
            if not nemeses:
                continue
            if active is None:
                active = ctx.rng.choice(list(nemeses))
                await _act(active, "start", ctx, emit)
            else:
                current, active = active, None
                await _act(current, "stop", ctx, emit)
    finally:
        final = [active] if active is not None else []
        for event in await asyncio.shield(asyncio.to_thread(heal_all, ctx, final)):
            emit(event)


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancellation.
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True


async def _act(
    nemesis: Nemesis, f: Literal["start", "stop"], ctx: NemesisContext, emit: Emit
) -> None:
    emit(FaultEvent(f, nemesis.name, None, phase="invoke"))
    action = nemesis.start if f == "start" else nemesis.stop
    try:
        event = await asyncio.to_thread(action, ctx)
    except RemoteError as exc:
        log.warning("nemesis %s %s: %s", nemesis.name, f, exc)
        event = FaultEvent(f, nemesis.name, None, error=str(exc))
    emit(event)


def heal_all(ctx: NemesisContext, nemeses: Sequence[Nemesis] = ()) -> list[FaultEvent]:
    """Undo every fault; never raises (failures are logged and reported in the events).

    Stops each of `nemeses` (the ones that may be active), then, whatever those did: SIGCONT
    every node, restart every node in `ctx.killed`, flush our iptables chain on every node
    if any partition was applied in this context, and (nodes under libfaketime) give every
    node in `ctx.clocked` the true clock back, which also ends a strobe's flips, and (when
    membership changes) promote every learner and stop every node that left the cluster
    (`settle_members`). Idempotent: a second call finds nothing to undo. Returns the stop
    events of `nemeses`, then one `heal-all` stop event whose value lists what it resumed,
    restarted and healed (with "clock-healed" only when the nodes run under libfaketime, and
    "members", what `settle_members` did, only where membership changes).
    """
    events: list[FaultEvent] = []
    with ctx.lock:
        for nemesis in nemeses:
            try:
                events.append(nemesis.stop(ctx))
            except Exception as exc:  # healing must go on whatever one fault did
                log.error("nemesis: stopping %s failed: %s", nemesis.name, exc)
                events.append(FaultEvent("stop", nemesis.name, None, error=str(exc)))
        errors: list[str] = []
        paused = set(ctx.paused)
        # SIGCONT goes to every node, recorded or not: it is harmless on a running process.
        resumed = _each(ctx.all_nodes, ctx.procs.resume, ctx.paused, errors)
        value: dict[str, Any] = {
            "resumed": [n for n in resumed if n in paused],
            "restarted": _each(sorted(ctx.killed), ctx.procs.restart, ctx.killed, errors),
            "network-healed": _heal_network(ctx, errors),
        }
        if ctx.clock_files:  # the nodes run under libfaketime: true clocks on every one
            value["clock-healed"] = _each(
                sorted(ctx.clocked), _true_clock(ctx), ctx.clocked, errors
            )
        if ctx.membership is not None:  # last: promotions need the network and nodes back
            try:
                value["members"], member_errors = settle_members(ctx)
                errors += member_errors
            except Exception as exc:  # healing must go on whatever the target did
                log.error("nemesis: settling the members failed: %s", exc)
                errors.append(str(exc))
        events.append(FaultEvent("stop", "heal-all", value, error="; ".join(errors) or None))
    return events


def _each(
    nodes: Sequence[str], action: Callable[[str], None], record: set[str], errors: list[str]
) -> list[str]:
    done: list[str] = []
    for node in nodes:
        try:
            action(node)
        except Exception as exc:  # one unreachable node must not stop the others' heal
            log.error("nemesis: heal of %s failed: %s", node, exc)
            errors.append(str(exc))
            continue
        record.discard(node)
        done.append(node)
    return done


def _true_clock(ctx: NemesisContext) -> Callable[[str], None]:
    def heal(node: str) -> None:
        clock.write_setting(ctx.remotes[node], ctx.clock_files[node], clock.HEALED)

    return heal


def _heal_network(ctx: NemesisContext, errors: list[str]) -> list[str]:
    if not ctx.network_faulted:
        return []
    try:
        for_each_node(ctx.all_nodes, lambda n: iptables.heal(ctx.remotes[n]))
    except Exception as exc:  # reported, and the flag stays set so a later heal retries
        log.error("nemesis: network heal failed: %s", exc)
        errors.append(str(exc))
        return []
    ctx.network_faulted = False
    return ctx.all_nodes
