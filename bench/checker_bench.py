"""Benchmark of the linearizability checker (a script, not a test).

1. The reference corpus (tests/data/histories, 231 histories): parse and check times, total
   and per set, with and without explanations of the invalid ones; `unique_values` counts
   the histories the unique-values check decided (at least one key) instead of the search.
   With `--passes N` the corpus is checked N times and the fastest pass kept per set;
   `pair_s` is how much of it pairing took (check_s - pair_s compares with Porcupine's
   check, which starts from paired operations).
2. Generated linearizable kv histories with unique written values (10 keys, 12 clients, some
   info and fail): 100,000 and 1,000,000 operations, written as history.jsonl, then parsed
   and checked; peak memory (RSS) is reported too.
3. Generated linearizable single cas-register histories in the shape of Jepsen's register
   tests (values 0..4, so written values repeat; 10 processes; about 0.8% indeterminate):
   `--register-sizes`, 100,000 and 1,000,000 operations by default.
4. With `--edn-mb N`: a generated Jepsen history.edn of about N MB (register ops with time
   and index, a nemesis op with a nested value every 500), read alone in a child process:
   read time and the peak RSS increase over the child's RSS before reading.

With `--search-only` the search decides every key (no unique-values check). The first line
says whether the checker runs compiled (`make native`; CHECKER_PURE=1 for pure Python).

Usage: python bench/checker_bench.py [--sizes 100000,1000000] [--seed 1] [--skip-corpus]
                                     [--passes N] [--search-only]
                                     [--register-sizes 100000,1000000] [--edn-mb N]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import checker.search  # noqa: E402
from checker import check, pair, read_history  # noqa: E402
from checker.history import paused_gc  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "histories"


def bench_corpus(explain: bool, fast_path: bool, passes: int) -> dict[str, Any]:
    """Parse each history once, then check them all `passes` times: per set, the parse time
    and the fastest pass's check time, and of that pass, the time `pair` takes (Porcupine's
    check starts from paired operations; ours from events)."""
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    sets: dict[str, dict[str, float]] = {}
    histories = []
    for entry in manifest:
        name = (
            "/".join(entry["path"].split("/")[:2]) if entry["source"] == "porcupine" else "knossos"
        )
        t0 = time.perf_counter()
        history = read_history(str(CORPUS / entry["path"]))
        acc = sets.setdefault(name, {"files": 0, "parse_s": 0.0, "unique_values": 0})
        acc["files"] += 1
        acc["parse_s"] += time.perf_counter() - t0
        histories.append((name, history, entry["expected"] == "ok"))
    wrong = 0
    for n in range(passes):
        check_s = dict.fromkeys(sets, 0.0)
        pair_s = dict.fromkeys(sets, 0.0)
        for name, history, ok in histories:
            t0 = time.perf_counter()
            with paused_gc():  # as in check
                pair(history.events)
            t1 = time.perf_counter()
            result = check(history, explain_anomalies=explain, fast_path=fast_path)
            t2 = time.perf_counter()
            pair_s[name] += t1 - t0
            check_s[name] += t2 - t1
            if n == 0:
                wrong += result.valid is not ok
                sets[name]["unique_values"] += result.method != "search"
        for name, acc in sets.items():
            if check_s[name] < acc.get("check_s", float("inf")):
                acc["check_s"], acc["pair_s"] = check_s[name], pair_s[name]
    total = {
        key: sum(s[key] for s in sets.values()) for key in ("files", "parse_s", "check_s", "pair_s")
    }
    return {"explain": explain, "passes": passes, "total": {**total, "wrong_verdicts": wrong},
            "sets": sets}  # fmt: skip


def generate(path: Path, n_ops: int, seed: int, keys: int = 10, clients: int = 12) -> None:
    """A linearizable history of `n_ops` operations: each op takes effect at one instant
    between its invoke and its completion; written values are unique."""
    rng = random.Random(seed)
    store: dict[int, int | None] = {k: None for k in range(keys)}
    process = list(range(clients))
    # Per client: None (idle) or [f, key, value, applied, result].
    pending: list[list[Any] | None] = [None] * clients
    next_value = 0
    started = 0
    index = 0
    with path.open("w") as out:

        def emit(typ: str, c: int, f: str, key: int, value: Any) -> None:
            nonlocal index
            rec = {
                "index": index,
                "time": index * 1000,
                "type": typ,
                "process": process[c],
                "f": f,
                "key": key,
                "value": value,
            }
            out.write(json.dumps(rec) + "\n")
            index += 1

        while started < n_ops or any(p is not None for p in pending):
            c = rng.randrange(clients)
            op = pending[c]
            if op is None:
                if started >= n_ops:
                    continue
                started += 1
                key = rng.randrange(keys)
                r = rng.random()
                if r < 0.5:
                    op = ["read", key, None]
                elif r < 0.85:
                    next_value += 1
                    op = ["write", key, next_value]
                else:
                    next_value += 1
                    old = store[key] if rng.random() < 0.7 else rng.randrange(next_value)
                    op = ["cas", key, [old, next_value]]
                pending[c] = [*op, False, None]
                emit("invoke", c, op[0], key, op[2])
            elif not op[3]:
                op[3] = True
                f, key, value = op[0], op[1], op[2]
                if f == "read":
                    op[4] = store[key]
                elif f == "write":
                    store[key] = value
                elif store[key] == value[0]:
                    store[key] = value[1]
                else:
                    op[4] = "fail"
            else:
                pending[c] = None
                f, key, value, _, res = op
                if f != "read" and rng.random() < 0.01:
                    emit("info", c, f, key, value)
                    process[c] += clients
                elif res == "fail":
                    emit("fail", c, f, key, value)
                else:
                    emit("ok", c, f, key, res if f == "read" else value)


def generate_register(
    path: Path, n_ops: int, seed: int, values: int = 5, clients: int = 10, info_share: float = 0.008
) -> None:
    """A linearizable single cas-register history in the shape of Jepsen's register tests:
    values drawn from 0..values-1 (so written values repeat), `clients` processes, reads,
    writes and cas in equal parts, and about `info_share` of the ops indeterminate (an
    indeterminate op took effect or not, at random)."""
    rng = random.Random(seed)
    register: int | None = None
    process = list(range(clients))
    pending: list[list[Any] | None] = [None] * clients  # [f, value, applied, result]
    started = index = 0
    with path.open("w") as out:

        def emit(typ: str, c: int, f: str, value: Any) -> None:
            nonlocal index
            rec = {"index": index, "time": index * 1000, "type": typ, "process": process[c],
                   "f": f, "value": value}  # fmt: skip
            out.write(json.dumps(rec) + "\n")
            index += 1

        while started < n_ops or any(p is not None for p in pending):
            c = rng.randrange(clients)
            op = pending[c]
            if op is None:
                if started < n_ops:
                    started += 1
                    f = rng.choice(("read", "write", "cas"))
                    value = None if f == "read" else rng.randrange(values)
                    if f == "cas":
                        value = [rng.randrange(values), value]
                    pending[c] = [f, value, False, None]
                    emit("invoke", c, f, value)
            elif not op[2]:
                op[2] = True
                f, value = op[0], op[1]
                lost = f != "read" and rng.random() < info_share
                if lost and rng.random() < 0.5:
                    op[3] = "info"  # never took effect
                elif f == "read":
                    op[3] = register
                elif f == "write":
                    register = value
                elif register == value[0]:
                    register = value[1]
                else:
                    op[3] = "fail"
                if lost:
                    op[3] = "info"
            else:
                pending[c] = None
                f, value, _, res = op
                if res == "info":
                    emit("info", c, f, value)
                    process[c] += clients
                elif res == "fail":
                    emit("fail", c, f, value)
                else:
                    emit("ok", c, f, res if f == "read" else value)


def bench_register(n_ops: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.jsonl"
        generate_register(path, n_ops, seed)
        t0 = time.perf_counter()
        history = read_history(str(path))
        t1 = time.perf_counter()
        result = check(history, "cas-register", time_limit_s=600)
        t2 = time.perf_counter()
    return {
        "register_ops": n_ops,
        "valid": result.valid,
        "parse_s": round(t1 - t0, 2),
        "check_s": round(t2 - t1, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def bench_generated(n_ops: int, seed: int, fast_path: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.jsonl"
        t0 = time.perf_counter()
        generate(path, n_ops, seed)
        t1 = time.perf_counter()
        history = read_history(str(path))
        t2 = time.perf_counter()
        result = check(history, "kv", time_limit_s=600, fast_path=fast_path)
        t3 = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "ops": n_ops,
        "valid": result.valid,
        "generate_s": round(t1 - t0, 2),
        "parse_s": round(t2 - t1, 2),
        "check_s": round(t3 - t2, 2),
        "method": result.method,
        "steps": result.steps,
        "peak_rss_mb": round(peak_mb),
        "peak_rss_worker_mb": round(children_mb),
    }


def generate_edn(path: Path, size_bytes: int, seed: int, clients: int = 10) -> None:
    """About `size_bytes` of a Jepsen history.edn: a line per op, register ops by `clients`
    processes (an info moves a client to a new process), a nemesis op every 500."""
    rng = random.Random(seed)
    process = list(range(clients))
    pending: list[tuple[str, Any] | None] = [None] * clients
    written = index = 0
    with path.open("w") as out:
        while written < size_bytes:
            c = rng.randrange(clients)
            if index % 500 == 499:
                value = f"{{:n{c} #{{:n{(c + 1) % 5}}}}}"
                line = f"{{:type :info, :f :start, :value {value}, :process :nemesis"
            elif pending[c] is None:
                f = rng.choice(("read", "write", "cas"))
                value = {"read": "nil", "write": rng.randrange(5)}.get(f, "[1 2]")
                pending[c] = (f, value)
                line = f"{{:type :invoke, :f :{f}, :value {value}, :process {process[c]}"
            else:
                (f, value), pending[c] = pending[c], None
                typ = rng.choice(("ok", "ok", "ok", "fail", "info"))
                line = f"{{:type :{typ}, :f :{f}, :value {value}, :process {process[c]}"
                if typ == "info":
                    process[c] += clients
            line += f", :time {index * 1000 + rng.randrange(1000)}, :index {index}}}\n"
            out.write(line)
            written += len(line)
            index += 1


# The child's peak from /proc (VmHWM), not getrusage: ru_maxrss survives fork and exec, so
# a child of a parent that has read big histories starts with the parent's peak.
_READ = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from checker import read_history
def kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
before = kb("VmRSS")
t0 = time.perf_counter()
history = read_history(sys.argv[1])
read_s = time.perf_counter() - t0
peak = kb("VmHWM")
print(json.dumps({"ops": len(history.events), "parse_s": round(read_s, 2),
                  "peak_rss_mb": round(peak / 1024),
                  "rss_increase_mb": round((peak - before) / 1024)}))
"""


def bench_edn(mb: float, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.edn"
        generate_edn(path, int(mb * 1e6), seed)
        size_mb = path.stat().st_size / 1e6
        argv = [sys.executable, "-c", _READ, str(path), str(ROOT)]
        child = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    return {"edn_mb": round(size_mb, 1), **json.loads(child.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-corpus", action="store_true")
    parser.add_argument("--passes", type=int, default=1, help="checks of the corpus, fastest kept")
    parser.add_argument("--search-only", action="store_true")
    parser.add_argument("--register-sizes", default="100000,1000000")
    parser.add_argument("--edn-mb", type=float, default=0, help="a Jepsen EDN history's MB")
    args = parser.parse_args()
    print(json.dumps({"compiled": not checker.search.__file__.endswith(".py")}))
    if not args.skip_corpus:
        for explain in (False, True):
            report = bench_corpus(explain, not args.search_only, args.passes)
            print(json.dumps(report, default=lambda x: round(x, 3)))
    for size in (int(s) for s in args.sizes.split(",") if s):
        report = bench_generated(size, args.seed, not args.search_only)
        print(json.dumps(report), flush=True)
    for size in (int(s) for s in args.register_sizes.split(",") if s):
        print(json.dumps(bench_register(size, args.seed)), flush=True)
    if args.edn_mb:
        print(json.dumps(bench_edn(args.edn_mb, args.seed)), flush=True)


if __name__ == "__main__":
    main()
