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
from operator import attrgetter
from typing import Any

from checker.models import ILLEGAL, Model, Step
from checker.ops import Op

__all__ = ["Search", "prepare"]

_NEVER = 1 << 62  # the return of an operation that never returns

# A configuration: (lo, lin, ilo, ilin, state, path). `lin` holds bit j - lo for completed op
# j; every completed op below `lo` is linearized; likewise `ilin`/`ilo` for indeterminate ops,
# unless they are counted by kind (`Search.i_kinds`): then `ilo` is 0 and `ilin` a tuple of
# how many ops of each kind are linearized (always the first ones of the kind).
# `path` is a linked list (op, rest) of what was linearized, newest first: completed ops as
# their index, indeterminate ones as ~index.
Config = tuple[int, int, int, Any, Any, Any]
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
    unconstrained, observes, produces = model.unconstrained, model.observes, model.produces
    kept = [op for op in ops if not unconstrained(op)]
    if all(op.ret is not None for op in kept):
        return kept  # nothing indeterminate to drop: what is observed does not matter
    observed: set[Any] = set()
    for op in kept:
        observed.update(observes(op))
    out = []
    for op in kept:
        if op.ret is None:
            produced = produces(op)
            if produced and not any(v in observed for v in produced):
                continue
        out.append(op)
    return out


class Search:
    """A resumable search over one sub-history; see the module docstring.

    `steps` counts configurations expanded. After a False verdict, `best` is the deepest
    configuration reached (most completed operations linearized), for explanations.
    `memo_limit` bounds the number of configurations remembered: reaching it ends the
    search with `exhausted` set (the verdict is then unknown). `by_kind` counts the
    indeterminate ops by kind (True), walks them (False), or picks (None; see
    `_info_candidates`): the verdict is the same either way. With `prune_after` > 0, the
    rescue plans (see `_Rescue`) that let the search abandon configurations that can never
    complete are built only once the search has taken that many steps: on a small search,
    building them costs more than they save. The verdict is the same; `steps` and
    `best` may differ, so a search to be explained keeps the default (0, from the start).
    """

    def __init__(
        self,
        model: Model,
        ops: list[Op],
        *,
        memo_limit: int = 20_000_000,
        by_kind: bool | None = None,
        prune_after: int = 0,
    ):
        self.model = model
        by_call, step = attrgetter("call"), model.step
        self.comp = sorted([op for op in ops if op.ret is not None], key=by_call)
        self.info = sorted([op for op in ops if op.ret is None], key=by_call)
        self.c_call = [op.call for op in self.comp]
        self.c_ret = [op.ret if op.ret is not None else _NEVER for op in self.comp]
        self.c_step: list[Step] = [step(op) for op in self.comp]
        self.c_pure = [model.pure(op) for op in self.comp]
        self.i_call = [op.call for op in self.info]
        self.i_step: list[Step] = [step(op) for op in self.info]
        self.i_prev = _previous_identical(self.info)
        self.i_kinds = _kinds(self.i_prev, by_kind)
        # Per indeterminate op, with kinds: its kind and its place among the kind's ops.
        self.i_kind_of = [0] * len(self.info)
        self.i_place = [0] * len(self.info)
        for kind, members in enumerate(self.i_kinds or ()):
            for place, i in enumerate(members):
                self.i_kind_of[i], self.i_place[i] = kind, place
        self.init = model.initial()
        self.prune_after = prune_after
        self.c_rescue: list[_Rescue | None] = [None] * len(self.comp)
        if prune_after == 0:
            self.c_rescue = self._rescues(model, ops)
        self.memo_limit = memo_limit
        no_info: Any = 0 if self.i_kinds is None else (0,) * len(self.i_kinds)
        root: Config = (0, 0, 0, no_info, self.init, None)
        self.stack: list[Config] = [root]
        self.memo: set[tuple[int, int, int, Any, Any]] = {root[:5]}
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
        limit = self.steps + max_steps
        if 0 < self.prune_after < limit:
            if self._walk(self.prune_after) is not None or self.exhausted:
                return self.verdict
            self.c_rescue = self._rescues(self.model, self.comp + self.info)
            self.prune_after = 0
        return self._walk(limit)

    def _walk(self, limit: int) -> bool | None:
        """Expand configurations until `steps` reaches `limit`; the verdict if known."""
        if self.verdict is not None or self.exhausted:
            return self.verdict
        stack, memo, expand = self.stack, self.memo, self._expand
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
        runmin = _NEVER
        cands: list[tuple[int, Any]] = []
        j = lo
        while j < n:
            bit = 1 << (j - lo)
            if not lin & bit:
                if call[j] > runmin:
                    break
                ns = step[j](s)
                if ns is ILLEGAL:
                    plan = rescue[j]
                    # It must still be linearized, and nothing left can make it legal.
                    if (
                        plan is not None
                        and not plan[0](s)
                        and _all_linearized(plan[1], plan[2], lo, lin)
                        and self._info_linearized(plan[3], plan[4], ilo, ilin)
                    ):
                        self.dead_op = j
                        return (lo, lin, ilo, ilin, s, path), None, runmin
                elif ns is s and pure[j]:
                    # A legal op that never changes any state: linearizing it now loses
                    # nothing. The state stays, so what the scan found so far stands, and
                    # the scan goes on (the op's return no longer bounds the candidates).
                    lin |= bit
                    path = (j, path)
                    j += 1
                    if lin & 1:  # then j was lo: the window moves past every op linearized
                        shift = (~lin & (lin + 1)).bit_length() - 1
                        lin >>= shift
                        lo += shift
                        j = lo
                    continue
                else:
                    cands.append((j, ns))
                if ret[j] < runmin:
                    runmin = ret[j]
            j += 1
        return (lo, lin, ilo, ilin, s, path), cands, runmin

    def _expand(self, cfg: Config) -> list[Config] | None:
        """The children of `cfg` in preference order, or None if it completes the search."""
        before = cfg[:5]
        cfg, cands, runmin = self._close(cfg)
        lo, lin, ilo, ilin, _, path = cfg
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
        if self.i_call:  # most small histories have no indeterminate op: skip the call
            self._info_children(cfg, runmin, children)
        return children

    def _info_children(self, cfg: Config, runmin: int, children: list[Config]) -> None:
        """Append the children that linearize an indeterminate op next."""
        lo, lin, ilo, ilin, s, path = cfg
        i_step, kinds = self.i_step, self.i_kinds
        for i in self._info_candidates(ilo, ilin, runmin):
            ns = i_step[i](s)
            # One that changes nothing need never be linearized.
            if ns is ILLEGAL or ns is s:
                continue
            nilo = ilo
            nilin: Any  # a tuple of counts by kind, or a bitset (an int)
            if kinds is not None:
                kind = self.i_kind_of[i]
                nilin = (*ilin[:kind], ilin[kind] + 1, *ilin[kind + 1 :])
            else:
                nilin = ilin | (1 << (i - ilo))
                if nilin & 1:
                    shift = (~nilin & (nilin + 1)).bit_length() - 1
                    nilin >>= shift
                    nilo += shift
            children.append((lo, lin, nilo, nilin, ns, (~i, path)))

    def _info_linearized(self, indexes: list[int], end: int, ilo: int, ilin: Any) -> bool:
        """Whether every indeterminate op in `indexes[:end]` is linearized."""
        if self.i_kinds is None:
            return _all_linearized(indexes, end, ilo, ilin)
        kind_of, place = self.i_kind_of, self.i_place
        return all(place[i] < ilin[kind_of[i]] for i in indexes[:end])

    def _info_candidates(self, ilo: int, ilin: Any, runmin: int) -> list[int]:
        """The indeterminate ops that may be linearized next, in call order: called before
        `runmin`, not linearized, and first of their kind. Identical indeterminate ops are
        interchangeable, so each kind is taken in call order only: the linearized ones of a
        kind are always its first ones. Where kinds are few and ops many (Jepsen's registers
        of five values: the ops that never took effect stay unlinearized for the whole
        search), ops are counted by kind, and each kind's next op is looked up, not found by
        a walk over every op called so far."""
        i_call = self.i_call
        if self.i_kinds is not None:
            out = []
            for members, done in zip(self.i_kinds, ilin):
                if done < len(members) and i_call[members[done]] < runmin:
                    out.append(members[done])
            out.sort()
            return out
        i_prev = self.i_prev
        out = []
        i, n = ilo, len(i_call)
        while i < n and i_call[i] < runmin:
            p = i_prev[i]
            if not (ilin >> (i - ilo)) & 1 and (p < ilo or (ilin >> (p - ilo)) & 1):
                out.append(i)
            i += 1
        return out

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
        linearized next (it was pending and nothing pending had returned before its call),
        ordered by their repr: the memo's own order follows string hashes, which differ from
        one process to the next, and an explanation should not."""
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
        return sorted(seen, key=repr)


def _all_linearized(indexes: list[int], end: int, lo: int, lin: int) -> bool:
    """Whether every op in `indexes[:end]` (ascending) is linearized: below `lo`, or with
    its bit set in `lin`. Those below `lo` are skipped without a look."""
    k = bisect_left(indexes, lo, 0, end)
    while k < end:
        if not (lin >> (indexes[k] - lo)) & 1:
            return False
        k += 1
    return True


def _kinds(prev: list[int], by_kind: bool | None) -> list[list[int]] | None:
    """The indeterminate ops grouped by kind (chains of `prev`), each group ascending, when
    `by_kind`, or (None) when there are at most a quarter as many kinds as ops; else None
    (walking the ops is as cheap)."""
    if by_kind is False:
        return None
    groups: list[list[int]] = []
    group_of: list[int] = []
    for i, p in enumerate(prev):
        if p < 0:
            group_of.append(len(groups))
            groups.append([i])
        else:
            group_of.append(group_of[p])
            groups[group_of[p]].append(i)
    if by_kind is None and len(groups) * 4 > len(prev):
        return None
    return groups


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
