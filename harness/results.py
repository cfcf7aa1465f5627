"""From a finished history to `results.json`: the verdict and what explains it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import checker
from harness.analysis import count_ops, pair_ops, stale_reads

if TYPE_CHECKING:
    from harness.runner import TestOptions

__all__ = ["build_results", "check_history", "options_of_results"]


def check_history(
    ops: Sequence[dict[str, Any]], time_limit_s: float, history: checker.History | None = None
) -> dict[str, Any]:
    """The checker's verdict, per key, and certain stale reads. `history` is `ops` as
    `checker.read_history` read them, if they were read from a file (its errors then name
    the file and line)."""
    target = history if history is not None else list(ops)
    result = checker.check(target, "kv", time_limit_s=time_limit_s)
    spans = pair_ops(list(ops))
    keys = sorted({s.key for s in spans if s.key is not None}, key=str)
    bad = {a.key for a in result.anomalies}
    unknown = set(result.unknown_keys)
    per_key = {
        str(k): (False if k in bad else checker.UNKNOWN if k in unknown else True) for k in keys
    }
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


def build_results(
    opts: TestOptions, ops: Sequence[dict[str, Any]], run_dir: Path, nemeses: Sequence[Any]
) -> dict[str, Any]:
    checked = check_history(ops, opts.check_time_limit_s)
    schedule = [op for op in ops if op.get("process") == "nemesis"]
    options = asdict(opts)
    options["store"] = str(opts.store)
    return {
        "valid": checked["valid"],
        "test": opts.test_name,
        "run_dir": str(run_dir),
        "seed": opts.seed,
        "options": options,
        "nemeses": [n.name for n in nemeses],
        **{k: v for k, v in checked.items() if k != "valid"},
        "nemesis_schedule": schedule,
    }


def options_of_results(options: Mapping[str, Any]) -> TestOptions:
    """The TestOptions that `build_results` wrote as a results.json's `options` (JSON has
    lists for tuples, an object for `ssh`, a string for `store`). Keys TestOptions lacks
    are ignored and missing ones take its defaults (results of older runs); a value of
    the wrong shape is TypeError or ValueError."""
    from harness.runner import TestOptions  # the runner imports this module

    if not isinstance(options, Mapping):
        raise TypeError(f"options are {type(options).__name__}, not an object")
    names = {f.name for f in fields(TestOptions)}
    kw = {name: value for name, value in options.items() if name in names}
    if kw.get("ssh") is not None:
        from harness.backends.ssh import SshOptions  # paramiko only when used

        kw["ssh"] = SshOptions(**kw["ssh"])
    if "store" in kw:
        kw["store"] = Path(kw["store"])
    for name in ("bugs", "ops"):
        if kw.get(name) is not None:
            kw[name] = tuple(kw[name])
    return TestOptions(**kw)
