"""An exact, O(n log n) check of register histories whose written values are unique.

Applies to `CasRegister` models (register, cas-register, kv per key, etcd-register) when no
two operations that may take effect write the same value, and none writes the initial value.
Otherwise `decide` returns None and the caller falls back to the search.

The reduction (after Gibbons & Korach's algorithm for read/write registers):

1. Operations that never matter are dropped: reads with unknown results, reads of null under
   ``nil_read_any``, and indeterminate operations that nothing that must happen depends on
   (their value is never observed, transitively). Every indeterminate operation left must
   take effect, so it behaves as one that completes at +infinity. A successful
   ``cas [v v]`` is a read of v.
2. With unique values, each value v has one producer (a write, a cas, or the initial state).
   While the register holds v, only reads of v and at most one cas from v can take effect,
   and that cas starts the value it writes. So the operations form *chains*: a write (or the
   initial state), the reads of its value, the cas from its value, the reads of that cas's
   value, and so on. A chain occupies one contiguous stretch of any linearization, in that
   order of layers.
3. A chain is internally feasible iff placing each layer's operations as early as possible
   (not before the previous layer, not before their call) never passes an operation's
   return. Let m be the earliest return and M the latest call among a chain's operations. If
   m < M the chain's *forward zone* [m, M] lies inside its stretch in every linearization,
   and every feasible chain fits inside it; if M <= m (*backward zone*), any single instant
   of [M, m] can host the whole chain.
4. The history is linearizable iff every chain is feasible, no two forward zones intersect,
   and no backward zone lies inside a forward zone.

A failing verdict comes with a *witness*: a subset of the operations that is not
linearizable on its own (the chains involved, with what they need upstream and downstream).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from checker.models import CasRegister, Model, _show
from checker.ops import Op

__all__ = ["Decision", "decide"]

_INF = 1 << 62  # the return of an operation that never returns
_INIT = -1  # the call and return of the initial state's producer
_READ, _WRITE, _CAS = 0, 1, 2


@dataclass(slots=True)
class Decision:
    """The verdict on one sub-history; when invalid, `witness` (call order) is a subset of
    its operations that is not linearizable on its own, `blocker` the operation of the
    witness that cannot be placed, and `why` says what went wrong."""

    valid: bool
    witness: list[Op] = field(default_factory=list)
    blocker: Op | None = None
    why: str = ""


class _Unsupported(Exception):
    pass


def decide(model: Model, ops: list[Op]) -> Decision | None:
    """The verdict on `ops` under register `model`, or None if the fast path does not apply."""
    if not isinstance(model, CasRegister):
        return None
    try:
        return _Checker(model, ops).run()
    except _Unsupported:
        return None


class _Checker:
    def __init__(self, model: CasRegister, ops: list[Op]):
        self.model = model
        self.init = model.initial()
        if not _plain(self.init):
            raise _Unsupported
        # Kept ops, with per-op kind, observed value (reads, cas) and produced value.
        self.ops: list[Op] = []
        self.kind: list[int] = []
        self.seen: list[Any] = []
        self.made: list[Any] = []
        # The producer of each value; _INIT for the initial state.
        self.producer: dict[Any, int] = {self.init: _INIT}
        for op in ops:
            self._add(op)

    def _add(self, op: Op) -> None:
        f, v = op.f, op.value
        if f == "read":
            if self.model.unconstrained(op):
                return
            kind, seen, made = _READ, v, None
        elif f == "write":
            kind, seen, made = _WRITE, None, v
        elif f == "cas" and self.model.allow_cas and isinstance(v, tuple) and len(v) == 2:
            seen, made = v
            if seen == made:
                if op.ret is None:
                    return  # it changes nothing, so it need never take effect
                kind, made = _READ, None
            else:
                kind = _CAS
        else:
            raise _Unsupported  # the search reports it
        if not _plain(seen) or not _plain(made):
            raise _Unsupported
        n = len(self.ops)
        if kind != _READ:
            if made in self.producer:
                raise _Unsupported  # not unique
            self.producer[made] = n
        self.ops.append(op)
        self.kind.append(kind)
        self.seen.append(seen)
        self.made.append(made)

    def run(self) -> Decision:
        must = self._must_happen()
        if isinstance(must, Decision):
            return must
        chains = self._chains(must)
        if isinstance(chains, Decision):
            return chains
        return self._zones(chains)

    def _must_happen(self) -> list[bool] | Decision:
        """Completed ops, and the indeterminate ops they depend on (transitively)."""
        ops, kind, seen, producer = self.ops, self.kind, self.seen, self.producer
        must = [op.ret is not None for op in ops]
        work = [i for i, m in enumerate(must) if m]
        while work:
            i = work.pop()
            if kind[i] == _WRITE:
                continue
            p = producer.get(seen[i])
            if p is None:
                what = "reads" if kind[i] == _READ else "compares with"
                why = f"{self._describe(i)} {what} {_show(seen[i])}, which nothing writes"
                return self._fail([i], i, why, must)
            if p != _INIT and not must[p]:
                must[p] = True
                work.append(p)
        return must

    def _chains(self, must: list[bool]) -> list[list[list[int]]] | Decision:
        """Each chain as its layers of op indices (_INIT stands for the initial state)."""
        reads: dict[Any, list[int]] = {}
        cas_from: dict[Any, list[int]] = {}
        heads = [_INIT]
        for i, m in enumerate(must):
            if not m:
                continue
            k = self.kind[i]
            if k == _READ:
                reads.setdefault(self.seen[i], []).append(i)
            elif k == _CAS:
                cas_from.setdefault(self.seen[i], []).append(i)
            else:
                heads.append(i)
        for v, both in cas_from.items():
            if len(both) > 1:
                a, b = sorted(both[:2], key=lambda i: self.ops[i].call)
                p = self.producer[v]
                why = (
                    f"{self._describe(a)} and {self._describe(b)} both need {_show(v)}, "
                    "which is written only once"
                )
                return self._fail([a, b] + ([p] if p != _INIT else []), b, why, must)
        chains = []
        visited = 0
        for head in heads:
            v = self.init if head == _INIT else self.made[head]
            layers = [[head]]
            while True:
                layers.append(reads.get(v, []))
                nxt = cas_from.get(v)
                if not nxt:
                    break
                layers.append(nxt)
                visited += 1
                v = self.made[nxt[0]]
            if head != _INIT or len(layers) > 2 or layers[1]:
                chains.append(layers)
        if visited < sum(len(c) for c in cas_from.values()):
            return self._cycle(must, cas_from)
        return chains

    def _cycle(self, must: list[bool], cas_from: dict[Any, list[int]]) -> Decision:
        """Some cas ops form a cycle, each needing the value the previous one writes."""
        on_chain: set[int] = set()
        for head in [i for i, m in enumerate(must) if m and self.kind[i] == _WRITE] + [_INIT]:
            v = self.init if head == _INIT else self.made[head]
            while cas_from.get(v):
                i = cas_from[v][0]
                on_chain.add(i)
                v = self.made[i]
        start = next(i for c in cas_from.values() for i in c if i not in on_chain)
        cycle = [start]
        i = self.producer[self.seen[start]]
        while i not in cycle:
            cycle.append(i)
            i = self.producer[self.seen[i]]
        why = f"{self._describe(start)} is part of a cycle of cas ops, none of which can go first"
        return self._fail(cycle, start, why, must)

    def _zones(self, chains: list[list[list[int]]]) -> Decision:
        ops = self.ops
        forward: list[tuple[int, int, int]] = []  # (m, M, chain)
        backward: list[tuple[int, int, int]] = []  # (M, m, chain)
        for n, layers in enumerate(chains):
            at = _INIT - 1  # the earliest instant the current layer may start
            lo, hi = _INF, _INIT - 1
            for layer in layers:
                nxt = at
                for i in layer:
                    call = _INIT if i == _INIT else ops[i].call
                    ret = _INIT if i == _INIT else _ret(ops[i])
                    t = call if call > at else at
                    if t > ret:
                        why = f"{self._describe(i)} returned before the operations it must follow"
                        return self._fail(_members(layers), i, why)
                    if t > nxt:
                        nxt = t
                    if ret < lo:
                        lo = ret
                    if call > hi:
                        hi = call
                at = nxt
            if lo < hi:
                forward.append((lo, hi, n))
            else:
                backward.append((hi, lo, n))
        forward.sort()
        for (_, a_hi, a), (b_lo, _, b) in pairwise(forward):
            if b_lo < a_hi:
                return self._conflict(chains, a, b, a_hi)
        starts = [z[0] for z in forward]
        for b_hi, b_lo, b in backward:
            k = bisect_left(starts, b_hi) - 1
            if k >= 0 and b_lo < forward[k][1]:
                return self._conflict(chains, forward[k][2], b, forward[k][1])
        return Decision(True)

    def _conflict(self, chains: list[list[list[int]]], a: int, b: int, a_hi: int) -> Decision:
        """Chain `a` (a forward zone ending at call `a_hi`) cannot be kept apart from `b`."""
        members = _members(chains[a])
        last = next(i for i in members if i != _INIT and self.ops[i].call == a_hi)
        other = _members(chains[b])
        why = (
            f"{self._describe(last)} cannot be linearized: {self._describe(other[0])} "
            f"must take effect after {self._describe(members[0])} and before it"
        )
        return self._fail(members + other, last, why)

    def _fail(
        self, seeds: list[int], blocker: int, why: str, must: list[bool] | None = None
    ) -> Decision:
        ops = self.ops
        chosen = {i for i in seeds if i != _INIT}
        if must is not None:
            self._close(chosen, must)
        witness = sorted((ops[i] for i in chosen), key=lambda o: o.call)
        return Decision(False, witness, ops[blocker], why)

    def _close(self, chosen: set[int], must: list[bool]) -> None:
        """Add what the chosen ops need: the producers of what they observe, and for each
        indeterminate op, an op that must happen and depends on it."""
        observers: dict[Any, list[int]] = {}
        for i, m in enumerate(must):
            if m and self.kind[i] != _WRITE:
                observers.setdefault(self.seen[i], []).append(i)
        work = list(chosen)
        while work:
            i = work.pop()
            extra = []
            if self.kind[i] != _WRITE:
                p = self.producer.get(self.seen[i], _INIT)
                if p != _INIT:
                    extra.append(p)
            if self.ops[i].ret is None:
                extra.append(observers[self.made[i]][0])
            for j in extra:
                if j not in chosen:
                    chosen.add(j)
                    work.append(j)

    def _describe(self, i: int) -> str:
        if i == _INIT:
            return "the initial value"
        op = self.ops[i]
        return f"{self.model.describe(op)} (process {op.process})"


def _members(layers: list[list[int]]) -> list[int]:
    return [i for layer in layers for i in layer]


def _ret(op: Op) -> int:
    return _INF if op.ret is None else op.ret


def _plain(value: Any) -> bool:
    """Values whose equality is the same as their identity in a dict (no NaN, hashable)."""
    if value is None or type(value) is int or type(value) is str or type(value) is bool:
        return True
    if type(value) is float:
        return value == value
    if type(value) is tuple or type(value) is frozenset:
        return all(_plain(v) for v in value)
    return False
