"""A target with nothing behind it: the smallest example of the plugin interface.

Its nodes run a process that only sleeps; its clients apply ops to registers in
the harness's own memory, atomically, so every history is linearizable. It
measures what the harness itself can drive and record, and it shows in a few
lines what a target must provide.
"""

from __future__ import annotations

from typing import Any

from harness.targets.base import ClusterSpec, Completion, HasSets
from harness.workload import Invocation

__all__ = ["MemoryTarget"]


class MemoryClient:
    """Reads, writes and cas on a shared dict; an op is atomic (one event-loop step)."""

    def __init__(self, registers: dict[str, Any]) -> None:
        self._registers = registers

    async def invoke(self, op: Invocation) -> Completion:
        current = self._registers.get(op.key)
        if op.f == "add":
            self._registers[op.key] = (current or frozenset()) | {op.value}
            return Completion("ok", value=op.value)
        if op.f == "read":
            if isinstance(current, frozenset):
                return Completion("ok", value=sorted(current))
            return Completion("ok", value=current)
        if op.f == "write":
            self._registers[op.key] = op.value
            return Completion("ok", value=op.value)
        old, new = op.value
        if current != old:
            return Completion("fail", value=op.value, error="cas_mismatch")
        self._registers[op.key] = new
        return Completion("ok", value=op.value)

    async def close(self) -> None:
        return None


class MemoryTarget(HasSets):
    """Registers and sets in the harness's memory; nodes are placeholders that sleep."""

    name = "memory"
    read_modes: tuple[str, ...] = ("memory",)
    default_read_mode = "memory"
    bugs: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ("kv", "register", "set")

    def __init__(self) -> None:
        self._registers: dict[str, Any] = {}

    def node_argv(self, node: str, cluster: ClusterSpec) -> list[str]:
        # A process to supervise, kill and pause, like any node's.
        return [cluster.python, "-c", "import time\nwhile True: time.sleep(3600)"]

    def client(self, cluster: ClusterSpec, node: str) -> MemoryClient:
        return MemoryClient(self._registers)

    async def leader(self, cluster: ClusterSpec) -> str | None:
        return cluster.nodes[0]
