"""The linearizability search of one independent sub-history (Wing & Gong, with Lowe's memo).

A configuration is the set of operations linearized so far and the model state they lead to.
From a configuration, an operation may be linearized next when it is not yet linearized and
its call precedes the return of every operation not yet linearized. The search explores
configurations depth first and remembers every one it has seen, so none is expanded twice.

Operations are kept in two lists sorted by call: completed ones, which must all be linearized,
and indeterminate ones, which may be linearized or not. Each set of linearized operations is
stored relative to the lowest operation not yet linearized, so its bitset stays as small as
the window of concurrent operations, however long the history.

`Search` is resumable: `run(max_steps)` advances it and returns True (linearizable), False
(not) or None (not finished), so many searches can be interleaved under one budget.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable
from typing import Any

from checker.history import Op
from checker.models import ILLEGAL, Model, Step

__all__ = ["Search", "prepare"]

_NEVER = 1 << 62  # the return of an operation that never returns

# A configuration: (lo, lin, ilo, ilin, state, path). `lin` holds bit j - lo for completed op
# j; every completed op below `lo` is linearized; likewise `ilin`/`ilo` for indeterminate ops.
# `path` is a linked list (op, rest) of what was linearized, newest first: completed ops as
# their index, indeterminate ones as ~index.
Config = tuple[int, int, int, int, Any, Any]
# For a completed pure op: (reachable(state), completed rescuers, how many of them count,
# indeterminate rescuers, how many of them count). Each rescuer list holds indexes in call
# order and is shared by every op the model gave the same rescuers; an op counts the prefix
# called before it returned, since a rescuer called later can never precede it.
_Rescue = tuple[Callable[[Any], bool], list[int], int, list[int], int]


def prepare(model: Model, ops: list[Op]) -> list[Op]:
    """The operations that can constrain the verdict; the others are dropped.

    Dropped: operations that are always legal and change nothing (reads of unknown results),
    and indeterminate operations whose every effect is invisible: they produce only values
    that no operation ever observes, so linearizing them can make nothing else legal.
    """
    kept = [op for op in ops if not model.unconstrained(op)]
    observed: set[Any] = set()
    for op in kept:
        observed.update(model.observes(op))
    out = []
    for op in kept:
        if op.ret is None:
            produced = model.produces(op)
            if produced and not any(v in observed for v in produced):
                continue
        out.append(op)
    return out


class Search:
    """A resumable search over one sub-history; see the module docstring.

    `steps` counts configurations expanded. After a False verdict, `best` is the deepest
    configuration reached (most completed operations linearized), for explanations.
    `memo_limit` bounds the number of configurations remembered: reaching it ends the
    search with `exhausted` set (the verdict is then unknown).
    """

    def __init__(self, model: Model, ops: list[Op], *, memo_limit: int = 20_000_000):
        self.model = model
        self.comp = sorted((op for op in ops if op.ret is not None), key=lambda o: o.call)
        self.info = sorted((op for op in ops if op.ret is None), key=lambda o: o.call)
        self.c_call = [op.call for op in self.comp]
        self.c_ret = [op.ret if op.ret is not None else _NEVER for op in self.comp]
        self.c_step: list[Step] = [model.step(op) for op in self.comp]
        self.c_pure = [model.pure(op) for op in self.comp]
        self.i_call = [op.call for op in self.info]
        self.i_step: list[Step] = [model.step(op) for op in self.info]
        self.i_prev = _previous_identical(self.info)
        self.init = model.initial()
        self.c_rescue = self._rescues(model, ops)
        self.memo_limit = memo_limit
        root: Config = (0, 0, 0, 0, self.init, None)
        self.stack: list[Config] = [root]
        self.memo: set[tuple[int, int, int, int, Any]] = {root[:5]}
        self.steps = 0
        self.verdict: bool | None = None
        self.exhausted = False
        self.best: Config = root
        self.best_count = -1
        # The op that can no longer be linearized in `best`, when a pruning rule found one.
        self.best_blocker: int | None = None
        self.dead_op = -1

    @property
    def ops(self) -> int:
        return len(self.comp) + len(self.info)

    def run(self, max_steps: int) -> bool | None:
        """Expand at most `max_steps` configurations; the verdict if known, else None."""
        if self.verdict is not None or self.exhausted:
            return self.verdict
        stack, memo, expand = self.stack, self.memo, self._expand
        limit = self.steps + max_steps
        while stack:
            if self.steps >= limit:
                return None
            self.steps += 1
            children = expand(stack.pop())
            if children is None:
                self.verdict = True
                self.stack = []
                return True
            for child in reversed(children):
                key = child[:5]
                if key not in memo:
                    memo.add(key)
                    stack.append(child)
            if len(memo) > self.memo_limit:
                self.exhausted = True
                return None
        self.verdict = False
        return False

    def _rescues(self, model: Model, ops: list[Op]) -> list[_Rescue | None]:
        """Each completed op's rescue plan (see `_Rescue`), in time and memory linear in
        the history: models share one rescuer list among many ops (every read of a value
        has that value's writers), and so do the plans here."""
        plan = model.rescue_plan(ops)
        c_index = {op.id: j for j, op in enumerate(self.comp)}
        i_index = {op.id: i for i, op in enumerate(self.info)}
        shared: dict[int, tuple[list[int], list[int], list[int], list[int]]] = {}
        out: list[_Rescue | None] = []
        for j, op in enumerate(self.comp):
            entry = plan.get(op.id)
            if entry is None:
                out.append(None)
                continue
            reach, rescuers = entry
            lists = shared.get(id(rescuers))
            if lists is None:
                comp = sorted(c_index[r.id] for r in rescuers if r.id in c_index)
                info = sorted(i_index[r.id] for r in rescuers if r.id in i_index)
                lists = (comp, [self.c_call[k] for k in comp], info, [self.i_call[i] for i in info])
                shared[id(rescuers)] = lists
            comp, comp_calls, info, info_calls = lists
            ret = self.c_ret[j]
            out.append(
                (reach, comp, bisect_left(comp_calls, ret), info, bisect_left(info_calls, ret))
            )
        return out

    def _close(self, cfg: Config) -> tuple[Config, list[tuple[int, Any]] | None, int]:
        """Commit every completed candidate that is legal and never changes a state; then the
        remaining candidates with their next states (None if the configuration is dead), and
        the earliest pending return."""
        lo, lin, ilo, ilin, s, path = cfg
        call, ret, step, pure = self.c_call, self.c_ret, self.c_step, self.c_pure
        rescue = self.c_rescue
        n = len(call)
        while True:
            runmin = _NEVER
            cands: list[tuple[int, Any]] = []
            j = lo
            committed = False
            while j < n:
                bit = 1 << (j - lo)
                if not lin & bit:
                    if call[j] > runmin:
                        break
                    r = ret[j]
                    if r < runmin:
                        runmin = r
                    ns = step[j](s)
                    if ns is ILLEGAL:
                        plan = rescue[j]
                        # It must still be linearized, and nothing left can make it legal.
                        if (
                            plan is not None
                            and not plan[0](s)
                            and _all_linearized(plan[1], plan[2], lo, lin)
                            and _all_linearized(plan[3], plan[4], ilo, ilin)
                        ):
                            self.dead_op = j
                            return (lo, lin, ilo, ilin, s, path), None, runmin
                    else:
                        if ns is s and pure[j]:
                            # A legal op that never changes any state: linearizing it now
                            # loses nothing.
                            lin |= bit
                            path = (j, path)
                            committed = True
                            break
                        cands.append((j, ns))
                j += 1
            if not committed:
                return (lo, lin, ilo, ilin, s, path), cands, runmin
            if lin & 1:
                shift = (~lin & (lin + 1)).bit_length() - 1
                lin >>= shift
                lo += shift

    def _expand(self, cfg: Config) -> list[Config] | None:
        """The children of `cfg` in preference order, or None if it completes the search."""
        before = cfg[:5]
        cfg, cands, runmin = self._close(cfg)
        lo, lin, ilo, ilin, s, path = cfg
        key = cfg[:5]
        if key != before:
            if key in self.memo:
                return []
            self.memo.add(key)
        if lo == len(self.c_call):
            # Only indeterminate operations remain, and they need not take effect.
            self.best = cfg
            return None
        count = lo + lin.bit_count()
        if count > self.best_count:
            self.best_count = count
            self.best = cfg
            self.best_blocker = self.dead_op if cands is None else None
        if cands is None:
            return []
        children: list[Config] = []
        for j, ns in cands:
            nlin = lin | (1 << (j - lo))
            nlo = lo
            if nlin & 1:
                shift = (~nlin & (nlin + 1)).bit_length() - 1
                nlin >>= shift
                nlo += shift
            children.append((nlo, nlin, ilo, ilin, ns, (j, path)))
        i_call, i_step, i_prev = self.i_call, self.i_step, self.i_prev
        i = ilo
        n = len(i_call)
        while i < n and i_call[i] < runmin:
            bit = 1 << (i - ilo)
            p = i_prev[i]
            # Identical indeterminate ops are interchangeable: take them in call order only.
            if not ilin & bit and (p < ilo or (ilin >> (p - ilo)) & 1):
                ns = i_step[i](s)
                # One that changes nothing need never be linearized.
                if ns is not ILLEGAL and ns is not s:
                    nilin = ilin | bit
                    nilo = ilo
                    if nilin & 1:
                        shift = (~nilin & (nilin + 1)).bit_length() - 1
                        nilin >>= shift
                        nilo += shift
                    children.append((lo, lin, nilo, nilin, ns, (~i, path)))
            i += 1
        return children

    def linearized(self, cfg: Config) -> list[Op]:
        """The operations linearized to reach `cfg`, in linearization order."""
        out: list[Op] = []
        path = cfg[5]
        while path is not None:
            j, path = path
            out.append(self.comp[j] if j >= 0 else self.info[~j])
        out.reverse()
        return out

    def pending(self, cfg: Config) -> list[Op]:
        """Completed operations not linearized in `cfg`, earliest return first."""
        lo, lin = cfg[0], cfg[1]
        left = [self.comp[j] for j in range(lo, len(self.comp)) if not (lin >> (j - lo)) & 1]
        return sorted(left, key=lambda o: o.ret if o.ret is not None else _NEVER)

    def states_seen_by(self, op: Op, limit: int = 200_000) -> list[Any]:
        """States of remembered configurations in which completed `op` could have been
        linearized next (it was pending and nothing pending had returned before its call)."""
        j = self.comp.index(op)
        call = self.c_call[j]
        seen: dict[Hashable, None] = {}
        for n, (lo, lin, _ilo, _ilin, s) in enumerate(self.memo):
            if n >= limit:
                break
            if j < lo or (lin >> (j - lo)) & 1:
                continue
            if all((lin >> (k - lo)) & 1 or self.c_ret[k] > call for k in range(lo, j)):
                seen[s] = None
        return list(seen)


def _all_linearized(indexes: list[int], end: int, lo: int, lin: int) -> bool:
    """Whether every op in `indexes[:end]` (ascending) is linearized: below `lo`, or with
    its bit set in `lin`. Those below `lo` are skipped without a look."""
    k = bisect_left(indexes, lo, 0, end)
    while k < end:
        if not (lin >> (indexes[k] - lo)) & 1:
            return False
        k += 1
    return True


def _previous_identical(info: list[Op]) -> list[int]:
    last: dict[tuple[str, Any], int] = {}
    prev = []
    for i, op in enumerate(info):
        k = (op.f, op.value)
        try:
            prev.append(last.get(k, -1))
            last[k] = i
        except TypeError:
            prev.append(-1)
    return prev
