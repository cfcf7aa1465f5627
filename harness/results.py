"""From a finished history to `results.json`: the verdict and what explains it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import checker
from checker import NEMESIS
from harness.analysis import count_ops, stale_reads
from harness.history import Op, pair_ops
from harness.junit import crash_text
from harness.options import RunOptions, options_to_json
from nemesis.faults import MEMBER_KINDS, kinds_of

__all__ = [
    "anomaly_line",
    "build_results",
    "check_history",
    "counts_text",
    "finding_lines",
    "lost_text",
    "membership",
    "nemesis_schedule",
]


def check_history(
    ops: Sequence[Op], time_limit_s: float, history: checker.History | None = None
) -> dict[str, Any]:
    """The checker's verdict, per key, and certain stale reads. `history` is `ops` as
    `checker.read_history` read them, if they were read from a file (its errors then name
    the file and line)."""
    target = history if history is not None else [op.to_json() for op in ops]
    sets = any(op.f == "add" for op in ops)
    result = checker.check(target, "set-kv" if sets else "kv", time_limit_s=time_limit_s)
    spans = pair_ops(ops)
    keys = sorted({s.key for s in spans if s.key is not None}, key=str)
    bad = {a.key for a in result.anomalies}
    unknown = set(result.unknown_keys)
    per_key = {
        str(k): (False if k in bad else checker.UNKNOWN if k in unknown else True) for k in keys
    }
    if sets:
        return {"valid": result.valid, "checker": result.to_json(), "keys": per_key,
                **_set_findings(target), "counts": count_ops(spans)}  # fmt: skip
    stale = stale_reads(spans)
    return {
        "valid": result.valid,
        "checker": result.to_json(),
        "keys": per_key,
        "stale_reads": len(stale),
        "stale_read_examples": [s.to_json() for s in stale[:20]],
        "stale_reads_by_key": dict(Counter(str(s.key) for s in stale)),
        "max_staleness_ms": round(max((s.staleness_ms for s in stale), default=0.0), 3),
        "counts": count_ops(spans),
    }


def lost_text(sets: Mapping[str, Any]) -> str:
    """The set workload's lost writes in one line, with the first as an example: those
    acknowledged, and those whose add was indeterminate but which reads had returned."""
    lost = sets["lost"]
    acked = sum(1 for x in lost if x.get("acknowledged", True))
    first = next((x for x in lost if x.get("acknowledged", True)), lost[0])
    how = "added" if first.get("acknowledged", True) else "added (indeterminate), read,"
    return (
        f"lost writes: {acked} of {sets['acknowledged']} acknowledged adds, and "
        f"{len(lost) - acked} more that reads had returned; e.g. {first['element']} {how} "
        f"to {first['key']} (line {first['add_line']}), missing from every read of "
        f"{first['key']} from line {first['missing_from_line']} on "
        f"({first['reads_missing']} reads)"
    )


def _set_findings(history: Any) -> dict[str, Any]:
    """What the set workload's history shows element by element (`checker.set_analysis`):
    `lost_writes`, the acknowledged adds missing from every read of their key from some
    read on (`set.lost` has those and the elements of indeterminate adds that reads had
    returned before they vanished), and `stale_reads`, the elements a read missed that a
    later read had."""
    sets = checker.set_analysis(history).to_json()
    return {
        "lost_writes": sum(1 for x in sets["lost"] if x["acknowledged"]),
        "stale_reads": sets["stale"],
        "stale_reads_by_key": {},
        "max_staleness_ms": 0.0,
        "set": sets,
    }


def nemesis_schedule(ops: Iterable[Op]) -> list[dict[str, Any]]:
    """results.json's `nemesis_schedule`: the nemesis records, as history.jsonl has them."""
    return [op.to_json() for op in ops if op.process == NEMESIS]


def _member_value(op: Op) -> Mapping[str, Any] | None:
    """What a nemesis record says of the membership: the member fault's value (alone or as a
    part of faults acting together), or the heal's `members`; None for any other."""
    fault = str(op.extra.get("fault") or "")
    value = op.value
    if op.type != "info" or not isinstance(value, Mapping):
        return None
    found = (
        value
        if fault in MEMBER_KINDS
        else value.get("members")
        if fault == "heal-all"
        else next((value.get(k) for k in fault.split("+") if k in MEMBER_KINDS), None)
    )
    return found if isinstance(found, Mapping) else None


def membership(ops: Iterable[Op], initial: Sequence[str]) -> dict[str, Any]:
    """results.json's `membership`: the `initial` voters, and each change the member fault
    made, in order: {"time" (ns, the record's), "op", "node", "voters" and "learners" after,
    "elapsed_ms", and "fresh" for adds, "error" for a change that failed}."""
    changes = []
    for op in ops:
        if op.process != NEMESIS or (value := _member_value(op)) is None:
            continue
        after = {"voters": value.get("voters"), "learners": value.get("learners")}
        for change in value.get("changes") or ():
            changes.append({"time": op.time_ns, **change, **after})
    return {"initial": {"voters": list(initial), "learners": []}, "changes": changes}


def build_results(
    opts: RunOptions,
    ops: Sequence[Op],
    run_dir: Path,
    nemeses: Sequence[Any],
    node_crashes: Sequence[Mapping[str, Any]] | None = None,
    recovery: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """results.json of a run made with `opts` (its options as `options_to_json` writes
    them; `options_from_json` reads them back).

    Two findings besides the checker's, where the backend can tell (the sim backend; the
    real ones through their supervisors, harness.node_watch, for crashes):
    `node_crashes`, the nodes that died on their own, no fault having killed them ({"time",
    "node", "what"}: a node's own safety check failed), and `recovery` ({"window_s",
    "unread"}), the keys the final reads could not read within window_s seconds after
    every fault healed. Either makes the run INVALID, whatever the checker says of the
    history: a database that crashes, or never serves again, is a finding. With the member
    fault, `membership` records the voters the run began with and each change (`membership`).
    """
    checked = check_history(ops, opts.check_time_limit_s)
    extra: dict[str, Any] = {}
    if node_crashes is not None:
        extra["node_crashes"] = list(node_crashes)
    if recovery is not None:
        extra["recovery"] = dict(recovery)
    failed = bool(node_crashes) or bool(recovery and recovery.get("unread"))
    results = {
        "valid": False if failed else checked["valid"],
        "test": opts.test_name,
        "run_dir": str(run_dir),
        "seed": opts.seed,
        "options": options_to_json(opts),
        "nemeses": [n.name for n in nemeses],
        **{k: v for k, v in checked.items() if k != "valid"},
        "nemesis_schedule": nemesis_schedule(ops),
        **extra,
    }
    if kinds_of(nemeses) & MEMBER_KINDS:
        results["membership"] = membership(ops, [f"n{i}" for i in range(1, opts.nodes + 1)])
    return results


def anomaly_line(results: Mapping[str, Any]) -> str | None:
    """The checker's first anomaly as one line, if it found one."""
    anomaly = results["checker"].get("anomaly")
    if not anomaly:
        return None
    reason = anomaly.get("reason") or ""
    return f"first anomaly: {anomaly.get('name')} on key {anomaly.get('key')}: {reason}"


def counts_text(results: Mapping[str, Any]) -> str:
    """Lost writes (the set workload's), stale reads and the verdict per key, as the
    summary line shows them: keys as JSON, or counted when there are many (the set
    workload moves on to fresh keys as it goes)."""
    keys = results["keys"]
    if len(keys) <= 10:
        shown = json.dumps(keys)
    else:
        bad = sum(1 for v in keys.values() if v is False)
        unknown = sum(1 for v in keys.values() if v not in (True, False))
        shown = f"{len(keys)} ({bad} invalid, {unknown} unknown)"
    lost = f"lost writes {results['lost_writes']}; " if "lost_writes" in results else ""
    return f"{lost}stale reads {results['stale_reads']}; keys {shown}"


def finding_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per finding besides the checker's (see build_results): acknowledged adds
    the set workload lost, each node that crashed on its own, and a cluster that did not
    serve again after healing."""
    lines = [lost_text(results["set"])] if (results.get("set") or {}).get("lost") else []
    lines += [crash_text(c) for c in results.get("node_crashes") or ()]
    recovery = results.get("recovery") or {}
    if recovery.get("unread"):
        lines.append(
            f"the cluster did not recover: {', '.join(map(str, recovery['unread']))} not read "
            f"within {recovery.get('window_s')} s after every fault healed"
        )
    return lines
