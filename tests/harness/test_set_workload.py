"""The set workload: unique adds to grow-only sets, keys that move on, final reads of every
key, and lost writes proven from the history: none on a store that keeps its adds, every
one on a store that drops some."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness import runner
from harness.options import RunOptions
from harness.targets import TARGETS
from harness.targets.base import ClusterSpec, Completion
from harness.targets.memory import MemoryClient, MemoryTarget
from harness.workload import SET_ADDS_PER_KEY, Generator, Invocation, WorkloadOptions
from tests.harness.test_target_hooks import FakeBackend

HARNESS = [str(Path(__file__).parents[2] / ".venv" / "bin" / "harness")]


def test_adds_are_unique_and_each_key_slot_moves_on_after_its_share() -> None:
    def ops(seed: int) -> list[Invocation]:
        gen = Generator(WorkloadOptions("set", keys=3), random.Random(seed))
        return [gen.next() for _ in range(3000)]

    first = ops(4)
    assert first == ops(4) != ops(5)
    assert {o.f for o in first} == {"add", "read"}
    adds = [o for o in first if o.f == "add"]
    assert len({o.value for o in adds}) == len(adds)
    per_key = Counter(o.key for o in adds)
    assert max(per_key.values()) == SET_ADDS_PER_KEY and len(per_key) > 3
    # A key is read only once it is open: it was there at the start or an add opened it.
    opened = {"k0", "k1", "k2"}
    for op in first:
        assert op.f == "add" or (op.key in opened and op.value is None)
        opened.add(op.key)


class DroppingClient(MemoryClient):
    """Acknowledges every add and forgets every 20th: acknowledged writes lost."""

    def __init__(self, registers: dict[str, Any], count: list[int]) -> None:
        super().__init__(registers)
        self._count = count

    async def invoke(self, op: Invocation) -> Completion:
        if op.f == "add":
            self._count[0] += 1
            if self._count[0] % 20 == 0:
                return Completion("ok", value=op.value)
        return await super().invoke(op)


class DroppingTarget(MemoryTarget):
    name = "dropping"

    def __init__(self) -> None:
        super().__init__()
        self._count = [0]

    def client(self, cluster: ClusterSpec, node: str) -> MemoryClient:
        return DroppingClient(self._registers, self._count)


def run_sets(target: MemoryTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setitem(TARGETS, target.name, lambda: target)
    monkeypatch.setattr(runner, "make_backend", lambda opts: FakeBackend(tmp_path / "data"))
    opts = RunOptions(
        backend="ssh", target=target.name, nodes=3, concurrency=4, time_s=0.5, rate=2000,
        workload="set", keys=2, store=tmp_path / "store", live=False,
    )  # fmt: skip
    return asyncio.run(runner.run_test(opts))


def test_a_store_that_keeps_its_adds_is_valid_and_every_key_is_read_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = run_sets(MemoryTarget(), tmp_path, monkeypatch)
    r = outcome.results
    assert outcome.valid is True, r["checker"]
    assert r["lost_writes"] == 0 and r["set"]["acknowledged"] > SET_ADDS_PER_KEY
    assert len(r["keys"]) > 2  # the two slots moved on to fresh keys
    lines = (outcome.run_dir / "history.jsonl").read_text().splitlines()
    final = {op["key"] for op in map(json.loads, lines)
             if op["type"] == "ok" and isinstance(op["process"], int)
             and op["process"] >= 10 * 4 * 1000}  # fmt: skip
    assert final == set(r["keys"]), "the final reads read every key the run used"
    assert r["set"]["unread"] == 0


def test_a_store_that_drops_acknowledged_adds_is_invalid_with_each_one_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = DroppingTarget()
    outcome = run_sets(target, tmp_path, monkeypatch)
    r = outcome.results
    assert outcome.valid is False
    dropped = target._count[0] // 20
    assert r["lost_writes"] == dropped > 0
    assert {a["name"] for a in r["checker"]["anomalies"]} == {"lost write"}
    report = (outcome.run_dir / "report.html").read_text()
    assert "lost writes: " in report


def test_the_set_workload_is_refused_where_the_target_has_no_sets(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run(
        [*HARNESS, "test", "--target", "raftkv", "--workload", "set", "--backend", "netns",
         "--store", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 254, proc.stdout + proc.stderr
    assert "raftkv has no sets" in proc.stderr and "redis" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
