"""Workloads: what concurrent clients ask of the system, with Jepsen's semantics.

A `Generator` hands out ops (`f`, `key`, `value`) from one seeded rng. Every
written value is unique in the run, so a read names the write it saw. `kv`
spreads ops over independent keys; `register` uses one key. `set` adds unique
elements to grow-only sets and reads them whole (Jepsen's set test): an element
whose add was acknowledged must be in every later read of its key, so a lost
write is proven, not guessed. Each of its `keys` slots moves on to a fresh key
after `SET_ADDS_PER_KEY` adds, which bounds what a read returns; the final
reads read every key the run used.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

__all__ = ["OPS", "WORKLOADS", "Generator", "Invocation", "WorkloadOptions"]

WORKLOADS = ("kv", "register", "set")
OPS = ("read", "write", "cas")
SET_OPS = ("read", "add")
RECENT_VALUES = 4
SET_ADDS_PER_KEY = 100
SET_READS = 0.25  # of the set workload's ops


@dataclass(frozen=True)
class WorkloadOptions:
    """`mix` weighs read, write and cas; `keys` is forced to 1 for `register`; `ops`
    restricts the mix to those ops (a system without cas: `("read", "write")`); `set`
    ignores both: a quarter of its ops are reads, the rest adds."""

    workload: str = "kv"
    keys: int = 5
    mix: tuple[float, float, float] = (0.5, 0.3, 0.2)
    ops: tuple[str, ...] = OPS

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; expected one of {WORKLOADS}")
        if self.keys < 1:
            raise ValueError("--keys must be at least 1")
        if any(w < 0 for w in self.mix) or sum(self.mix) <= 0:
            raise ValueError("the op mix needs non-negative weights with a positive sum")
        unknown = [f for f in self.ops if f not in OPS]
        if unknown or not self.ops:
            raise ValueError(f"ops must be some of {', '.join(OPS)}; got {list(self.ops)}")
        if sum(w for f, w in zip(OPS, self.mix) if f in self.ops) <= 0:
            raise ValueError(f"the op mix gives no weight to {', '.join(self.ops)}")

    @property
    def weights(self) -> tuple[float, ...]:
        """The mix with the ops left out weighing nothing."""
        return tuple(w if f in self.ops else 0.0 for f, w in zip(OPS, self.mix))

    @property
    def key_count(self) -> int:
        return 1 if self.workload == "register" else self.keys


@dataclass(frozen=True)
class Invocation:
    """One op to invoke: `value` is None for reads, the new value for writes,
    and `[old, new]` for cas."""

    f: str
    key: str
    value: Any


class Generator:
    """Seeded source of invocations. Not thread-safe; one per run."""

    def __init__(self, opts: WorkloadOptions, rng: random.Random) -> None:
        self.opts = opts
        self._rng = rng
        self._next_value = 0
        self.keys = [f"k{i}" for i in range(opts.key_count)]
        # What random.choices would accumulate from the weights on every call.
        self._cum_weights = list(accumulate(opts.weights))
        # cas guesses an old value among those recently written, so some succeed.
        self._recent: dict[str, deque[Any]] = defaultdict(lambda: deque(maxlen=RECENT_VALUES))
        self._used = list(self.keys)
        self._adds = [0] * len(self.keys)

    @property
    def used_keys(self) -> list[str]:
        """Every key handed out so far (all of them for kv and register), in order."""
        return self.keys if self.opts.workload != "set" else self._used

    def _fresh(self) -> int:
        self._next_value += 1
        return self._next_value

    def next(self) -> Invocation:
        if self.opts.workload == "set":
            return self._next_set()
        key = self._rng.choice(self.keys)
        f = self._rng.choices(OPS, cum_weights=self._cum_weights)[0]
        if f == "read":
            return Invocation("read", key, None)
        if f == "write":
            value = self._fresh()
            self._recent[key].append(value)
            return Invocation("write", key, value)
        recent = self._recent[key]
        old = self._rng.choice(list(recent)) if recent else None
        new = self._fresh()
        recent.append(new)
        return Invocation("cas", key, [old, new])

    def _next_set(self) -> Invocation:
        slot = self._rng.randrange(len(self.keys))
        if self._rng.random() < SET_READS:
            return Invocation("read", self.keys[slot], None)
        if self._adds[slot] == SET_ADDS_PER_KEY:
            self._adds[slot] = 0
            self.keys[slot] = f"k{len(self._used)}"
            self._used.append(self.keys[slot])
        self._adds[slot] += 1
        return Invocation("add", self.keys[slot], self._fresh())
