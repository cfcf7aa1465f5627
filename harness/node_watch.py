"""Nodes that exit on their own during a run, on the real backends.

A store that hits its own safety check and exits (raftkv's assertions, a panic) is a finding,
as Jepsen's log checks make it one: results.json's `node_crashes` (harness.results) makes the
run INVALID and names the node. The sim backend sees its nodes crash directly; here
`watch_nodes` asks the backend's supervisor whether each member's service runs, every
`WATCH_INTERVAL_S` while the workload runs, once more at its end, and once after the final
reads (`look_again`). A node that faults stopped (killed, power-cut:
`NemesisContext.killed`) or that membership took out is not asked about; a node found dead
is confirmed under the nemesis lock, so a fault that kills it at that moment is not taken
for a crash. Paused nodes still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from harness.backends.supervisor import SupervisedBackend
from nemesis.faults import NemesisContext

__all__ = ["WATCH_INTERVAL_S", "look_again", "watch_nodes"]

log = logging.getLogger("harness")

WATCH_INTERVAL_S = 2.0


async def watch_nodes(
    ctx: NemesisContext,
    now_ns: Callable[[], int],
    stop: asyncio.Event,
    crashes: list[dict[str, Any]],
) -> None:
    """Append to `crashes` ({"time", "node", "what"}) each member node of `ctx` found not
    running with no fault or membership change having stopped it, until `stop` is set and
    once after. Nothing on a backend without a supervisor to ask."""
    if not isinstance(ctx.procs, SupervisedBackend):
        return
    while True:
        done = stop.is_set()
        await look_again(ctx, now_ns, crashes)
        if done:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)


async def look_again(
    ctx: NemesisContext, now_ns: Callable[[], int], crashes: list[dict[str, Any]]
) -> None:
    """One look as `watch_nodes` takes, for a node that exits after the workload stopped
    (serving the final reads)."""
    if isinstance(ctx.procs, SupervisedBackend):
        await asyncio.to_thread(_look, ctx.procs, ctx, now_ns, crashes)


def _look(
    backend: SupervisedBackend[Any],
    ctx: NemesisContext,
    now_ns: Callable[[], int],
    crashes: list[dict[str, Any]],
) -> None:
    seen = {c["node"] for c in crashes}
    for node in ctx.nodes:
        if node in seen or node in ctx.killed or _runs(backend, node):
            continue
        with ctx.lock:  # confirm: no fault or change holds it down now
            if node in ctx.killed or node not in ctx.nodes or _runs(backend, node):
                continue
            crash = {"time": now_ns(), "node": node, "what": _WHAT}
        crashes.append(crash)
        log.warning("node %s exited on its own", node)
        print(f"harness: node {node} exited on its own (its log: nodes/{node}/)",
              file=sys.stderr, flush=True)  # fmt: skip


_WHAT = "its service was not running, and no fault had stopped it (see its log)"


def _runs(backend: SupervisedBackend[Any], node: str) -> bool:
    try:
        return backend.running(node) is not None
    except Exception as exc:  # an unreachable node: not a crash we can tell
        log.warning("cannot ask whether %s runs: %s", node, exc)
        return True
