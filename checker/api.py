"""`check`: the verdict on one history, with explanations, under a time and memory budget."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from checker.explain import Anomaly, _jsonable, explain, explain_witness
from checker.history import Event, paused_gc
from checker.models import MODELS, Model, infer_model, make_model
from checker.ops import Op, pair
from checker.readers import History
from checker.readers import as_history as _events
from checker.search import Search, prepare
from checker.unique import Decision, decide

__all__ = ["UNKNOWN", "Result", "Verdict", "check", "infer_model", "merge_valid"]

UNKNOWN: Literal["unknown"] = "unknown"
Verdict = bool | Literal["unknown"]
_UNSET: Any = object()
_SLICE_STEPS = 2_000
# Without explanations, the steps a search takes before it builds its rescue plans: most
# small searches are over by then, and building the plans would cost them as many steps
# again; a hard search loses at most these steps to dead configurations.
_PRUNE_AFTER_STEPS = 100
_PARALLEL_MIN_OPS = 20_000
_BYTES_PER_MEMO_ENTRY = 400
_EXPLAIN_STEPS = 300_000
METHOD_UNIQUE = "unique-values"
METHOD_SEARCH = "search"


def merge_valid(verdicts: Sequence[Verdict]) -> Verdict:
    """Jepsen's merge: False beats "unknown" beats True; nothing to merge is True."""
    if any(v is False for v in verdicts):
        return False
    if any(v == UNKNOWN for v in verdicts):
        return UNKNOWN
    return True


@dataclass(slots=True)
class Result:
    """The verdict on one history.

    `valid` is True, False or "unknown" (a budget ran out; `reason` says which). `ops` counts
    client operations after pairing (failed ones dropped), `keys` independent sub-histories.
    `anomalies` explains every key found invalid; `unknown_keys` lists keys left undecided
    (after a key is found invalid, the others get only a bounded extra effort).
    `elapsed_s` is the time spent checking, parsing excluded; `steps` the configurations
    the search expanded. `method` says what decided: "unique-values" (every key went through
    the polynomial check of registers with unique written values), "search" (every key was
    searched) or "unique-values+search" (some of each). `warnings` repeats the history's
    (what its reader ignored: a torn last line).
    """

    valid: Verdict
    model: str
    ops: int
    keys: int
    elapsed_s: float
    steps: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)
    unknown_keys: list[Hashable] = field(default_factory=list)
    reason: str | None = None
    method: str = METHOD_SEARCH
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "valid": self.valid,
            "model": self.model,
            "ops": self.ops,
            "keys": self.keys,
            "elapsed_s": round(self.elapsed_s, 6),
            "steps": self.steps,
            "method": self.method,
        }
        if self.anomalies:
            out["anomaly"] = self.anomalies[0].to_json()
            out["anomalies"] = [a.to_json() for a in self.anomalies]
        if self.unknown_keys:
            out["unknown_keys"] = [_jsonable(k) for k in self.unknown_keys]
        if self.reason:
            out["reason"] = self.reason
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def check(
    history: History | Sequence[Event] | Sequence[dict[str, Any]],
    model: str | Model = "auto",
    *,
    init: Any = _UNSET,
    time_limit_s: float | None = None,
    memory_limit_mb: float | None = None,
    workers: int | None = None,
    explain_anomalies: bool = True,
    fast_path: bool = True,
    explain_time_limit_s: float | None = None,
) -> Result:
    """Check one history for linearizability.

    `history` is a parsed `History`, a sequence of `Event`, or a sequence of dicts shaped
    like ``history.jsonl`` records. `model` is a `Model`, a name from `MODELS`, or "auto"
    (inferred from the format and the ops); `init` overrides the model's initial state.
    The verdict is "unknown", never True, when `time_limit_s` or `memory_limit_mb` runs out.
    `workers` caps the processes used for big histories (default: the CPU count; small
    histories always run in this process). With `fast_path` (the default), keys of register
    models whose written values are unique are decided in polynomial time without a search;
    the search then only explains the invalid ones. `explain_time_limit_s` bounds the time
    spent explaining invalid keys once the first is found (None: no bound); an explanation
    the limit cut short says so. Raises `HistoryError` on malformed histories.
    """
    with paused_gc():
        return _check(
            history,
            model,
            init,
            time_limit_s,
            memory_limit_mb,
            workers,
            explain_anomalies,
            fast_path,
            explain_time_limit_s,
        )


def _check(
    history: History | Sequence[Event] | Sequence[dict[str, Any]],
    model: str | Model,
    init: Any,
    time_limit_s: float | None,
    memory_limit_mb: float | None,
    workers: int | None,
    explain_anomalies: bool,
    fast_path: bool,
    explain_time_limit_s: float | None = None,
) -> Result:
    started = time.monotonic()
    hist = _events(history)
    ops = pair(hist.events, file=hist.file)
    mdl = _resolve(model, init, hist.format, ops)
    parts = mdl.partition(ops)
    for _, sub, part in parts:
        sub.validate(part, hist.file)
    mem_entries = None
    if memory_limit_mb is not None:
        mem_entries = int(memory_limit_mb * 1e6 / _BYTES_PER_MEMO_ENTRY)
    memo_limit = mem_entries or 20_000_000
    deadline = None if time_limit_s is None else started + time_limit_s
    budget = _Budget(deadline, memory_limit_mb, explain_time_limit_s)
    # Explanations read the search's deepest configuration, which pruning shapes: prune
    # from the start when explaining, else only searches that are not over at once.
    prune_after = 0 if explain_anomalies else _PRUNE_AFTER_STEPS
    decided, searches, late = _split(parts, budget, memo_limit, fast_path, prune_after)
    invalid = any(not d.valid for *_, d in decided)
    # One key, or a small history, is searched here: no worker pool (nor the CPU count,
    # a system call) for it.
    parallel = len(searches) > 1 and len(ops) >= _PARALLEL_MIN_OPS
    n_workers = min(workers or os.cpu_count() or 1, 2) if parallel else 1
    if not searches:
        outcome: _Outcome = ({}, [], 0, None)
    elif n_workers > 1 and _can_fork():
        outcome = _run_parallel(searches, budget, explain_anomalies, n_workers, invalid)
    else:
        outcome = _run_group(searches, budget, explain_anomalies, invalid=invalid)
    verdicts, anomalies, steps, reason = outcome
    unknown = [searches[i][0] for i, v in verdicts.items() if v == UNKNOWN] + late
    valid = merge_valid([*verdicts.values(), *(d.valid for *_, d in decided)])
    if late:
        valid = merge_valid([valid, UNKNOWN])
        reason = reason or budget.exceeded() or "time limit"
    if explain_anomalies:
        for key, sub, part, decision in decided:
            if not decision.valid:
                anomaly, more = _explain_decision(key, sub, part, decision, budget, memo_limit)
                anomalies.append(anomaly)
                steps += more
    anomalies.sort(key=lambda a: repr(a.key))
    method = METHOD_SEARCH if not decided else METHOD_UNIQUE
    if decided and searches:
        method = f"{METHOD_UNIQUE}+{METHOD_SEARCH}"
    return Result(
        valid=valid,
        model=mdl.name,
        ops=len(ops),
        keys=len(parts),
        elapsed_s=time.monotonic() - started,
        steps=steps,
        anomalies=anomalies,
        unknown_keys=unknown,
        reason=reason if valid == UNKNOWN else None,
        method=method,
        warnings=list(hist.warnings),
    )


_Decided = tuple[Hashable, Model, list[Op], Decision]


def _split(
    parts: list[tuple[Hashable, Model, list[Op]]],
    budget: _Budget,
    memo_limit: int,
    fast_path: bool,
    prune_after: int,
) -> tuple[list[_Decided], list[tuple[Hashable, Search]], list[Hashable]]:
    """The keys the unique-values check decides, the searches of the others, and the keys
    left undecided because the budget ran out first."""
    decided: list[_Decided] = []
    searches: list[tuple[Hashable, Search]] = []
    for n, (key, sub, part) in enumerate(parts):
        decision = decide(sub, part) if fast_path else None
        if decision is None:
            search = Search(sub, prepare(sub, part), memo_limit=memo_limit, prune_after=prune_after)
            searches.append((key, search))
        else:
            decided.append((key, sub, part, decision))
        if decision is not None and n + 1 < len(parts) and budget.exceeded():
            return decided, searches, [k for k, _, _ in parts[n + 1 :]]
    return decided, searches, []


def _explain_decision(
    key: Hashable,
    model: Model,
    ops: list[Op],
    decision: Decision,
    budget: _Budget,
    memo_limit: int,
) -> tuple[Anomaly, int]:
    """Explain a key the unique-values check found invalid, with a bounded search of the
    whole key (the longest linearizable prefix); failing that, from the witness alone."""
    explain_by = budget.explain_deadline()
    search = Search(model, prepare(model, ops), memo_limit=min(memo_limit, 4 * _EXPLAIN_STEPS))
    spent = 0
    while spent < _EXPLAIN_STEPS and search.verdict is None and not search.exhausted:
        search.run(_SLICE_STEPS)
        spent += _SLICE_STEPS
        if budget.exceeded() or budget.explain_over():
            break
    if search.verdict is False:
        return explain(key, search, shrink_s=0.25, deadline=explain_by), search.steps
    assert decision.blocker is not None
    if budget.explain_over():  # the witness as the unique-values check found it
        return explain_witness(key, model, decision.witness, decision.blocker, decision.why), (
            search.steps
        )
    witness = Search(model, prepare(model, decision.witness), memo_limit=4 * _EXPLAIN_STEPS)
    if witness.run(_EXPLAIN_STEPS) is False:
        anomaly = explain(key, witness, shrink_s=0.25, deadline=explain_by)
        anomaly.reason = f"{decision.why}; {anomaly.reason}"
        return anomaly, search.steps + witness.steps
    return explain_witness(key, model, decision.witness, decision.blocker, decision.why), (
        search.steps + witness.steps
    )


def _resolve(model: str | Model, init: Any, fmt: str, ops: Sequence[Op]) -> Model:
    if isinstance(model, Model):
        return model
    nil_read_any = fmt in ("knossos-edn", "jepsen-edn")
    if model == "auto":
        name, default_init = infer_model(fmt, ops)
        return make_model(name, default_init if init is _UNSET else init, nil_read_any=nil_read_any)
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected auto or one of {', '.join(MODELS)}")
    if init is _UNSET:
        return make_model(model, nil_read_any=nil_read_any)
    return make_model(model, init, nil_read_any=nil_read_any)


@dataclass(slots=True)
class _Budget:
    deadline: float | None
    memory_limit_mb: float | None
    explain_s: float | None = None
    # When explaining must end: set when the first explanation starts.
    explain_by: float | None = None

    def explain_deadline(self) -> float | None:
        """When explanations must be done (None: never); the clock starts at the first call."""
        if self.explain_s is None:
            return None
        if self.explain_by is None:
            self.explain_by = time.monotonic() + self.explain_s
        return self.explain_by

    def explain_over(self) -> bool:
        by = self.explain_deadline()
        return by is not None and time.monotonic() >= by

    def exceeded(self) -> str | None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            return "time limit"
        if self.memory_limit_mb is not None and _rss_mb() > self.memory_limit_mb:
            return "memory limit"
        return None


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


_Outcome = tuple[dict[int, Verdict], list[Anomaly], int, str | None]


def _run_group(
    searches: Sequence[tuple[Hashable, Search]],
    budget: _Budget,
    explain_anomalies: bool,
    indices: Sequence[int] | None = None,
    stop: Any = None,
    *,
    invalid: bool = False,
) -> _Outcome:
    """Interleave the searches in round-robin slices; after the first invalid key, the rest
    get only as much effort again as was spent so far (a single hard key must not hide an
    easy invalid one, nor delay the verdict)."""
    active = list(range(len(searches))) if indices is None else list(indices)
    verdicts: dict[int, Verdict] = {}
    reason: str | None = None
    extra_steps: int | None = _extra_effort(searches, explain_anomalies) if invalid else None
    while active:
        for idx in list(active):
            search = searches[idx][1]
            v = search.run(_SLICE_STEPS)
            if v is not None or search.exhausted:
                active.remove(idx)
                verdicts[idx] = v if v is not None else UNKNOWN
                if search.exhausted:
                    reason = "memory limit"
                if v is False and extra_steps is None:
                    extra_steps = _extra_effort(searches, explain_anomalies)
                    if stop is not None:
                        stop.set()
        why = budget.exceeded()
        if why is None and stop is not None and extra_steps is None and stop.is_set():
            extra_steps = _extra_effort(searches, explain_anomalies)
        if why is None and extra_steps is not None:
            extra_steps -= _SLICE_STEPS * len(active)
            if extra_steps < 0 or (explain_anomalies and budget.explain_over()):
                why = "stopped after an invalid key"
        if why is not None:
            for idx in active:
                verdicts[idx] = UNKNOWN
            reason = reason or why
            break
    anomalies = []
    if explain_anomalies:
        for idx, verdict in verdicts.items():
            if verdict is False:
                key, search = searches[idx]
                deadline = budget.explain_deadline()
                anomalies.append(explain(key, search, shrink_s=0.25, deadline=deadline))
    steps = sum(searches[i][1].steps for i in verdicts)
    return verdicts, anomalies, steps, reason


def _extra_effort(searches: Sequence[tuple[Hashable, Search]], explain_anomalies: bool) -> int:
    """Steps the other keys still get once one key is invalid: none for a bare verdict; for
    explanations, as many again as spent so far (at least enough for a few rounds)."""
    if not explain_anomalies:
        return 0
    return max(40_000, sum(s.steps for _, s in searches))


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


_WORK: dict[str, Any] = {}


def _own_signals() -> None:
    """A forked worker takes SIGTERM and SIGINT as a process of its own: a caller's
    handlers (an asyncio loop's, which write to a wakeup fd the worker would share with its
    parent) would keep the pool's terminate from ending it, and would pass the signal on to
    the parent as if the parent had been sent it."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _worker(indices: list[int]) -> _Outcome:
    return _run_group(
        _WORK["searches"],
        _WORK["budget"],
        _WORK["explain"],
        indices,
        _WORK["stop"],
        invalid=_WORK["invalid"],
    )


def _run_parallel(
    searches: Sequence[tuple[Hashable, Search]],
    budget: _Budget,
    explain_anomalies: bool,
    n_workers: int,
    invalid: bool = False,
) -> _Outcome:
    """Split the keys into `n_workers` groups of similar size, one forked process each."""
    groups: list[list[int]] = [[] for _ in range(n_workers)]
    loads = [0] * n_workers
    for idx in sorted(range(len(searches)), key=lambda i: -searches[i][1].ops):
        g = loads.index(min(loads))
        groups[g].append(idx)
        loads[g] += searches[idx][1].ops
    ctx = multiprocessing.get_context("fork")
    _WORK.update(
        searches=searches,
        budget=budget,
        explain=explain_anomalies,
        stop=ctx.Event(),
        invalid=invalid,
    )
    try:
        with ctx.Pool(n_workers, initializer=_own_signals) as pool:
            outcomes = pool.map(_worker, groups, chunksize=1)
    finally:
        _WORK.clear()
    verdicts: dict[int, Verdict] = {}
    anomalies: list[Anomaly] = []
    steps = 0
    reasons = []
    for v, a, s, r in outcomes:
        verdicts.update(v)
        anomalies.extend(a)
        steps += s
        if r:
            reasons.append(r)
    return verdicts, anomalies, steps, reasons[0] if reasons else None
