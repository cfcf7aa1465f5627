"""A pytest plugin: gate a test suite on linearizability with one test function.

Installed with the package (entry point `pytest11`), so any suite can write::

    from harness.pytest_plugin import assert_linearizable

    def test_reads_survive_a_leader_partition(linearizability):
        outcome = linearizability(nemesis="partition-leader", read_mode="readindex", time_s=10)
        assert_linearizable(outcome)

    def test_recorded_history():
        assert_linearizable("histories/run-17.jsonl")

`linearizability(**options)` starts a cluster of a target on a backend, drives a short
workload with faults, tears everything down and returns the run's `RunOutcome`. Options are
`RunOptions` fields (target, backend, nodes, nemesis, read_mode, time_s, seed, concurrency,
nemesis_interval_s, op_timeout_s, bugs, ...); defaults are short (10 s, faults every second).
Runs go to pytest's temporary directory, or under `--harness-store DIR` to keep them.
Options that cannot work (an unknown read mode, a nemesis too big for the cluster, a backend
that is unavailable here) fail the test with the reason, before anything starts; so does
what `harness test` would call bad usage (exit 254, harness.exit) found once the run began.

`assert_linearizable(subject)` raises AssertionError with the checker's explanation (the
anomaly's name, the op that cannot be placed, the smallest failing window) when the subject
is not linearizable, and also when the verdict is unknown unless `allow_unknown=True`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from checker.history import show_key

if TYPE_CHECKING:
    from harness.options import RunOptions
    from harness.runner import RunOutcome

__all__ = ["assert_linearizable", "linearizability"]

# Short runs whose faults come often enough to matter.
FIXTURE_DEFAULTS: dict[str, Any] = {
    "time_s": 10.0,
    "nemesis": "partition",
    "nemesis_interval_s": 1.0,
    "op_timeout_s": 1.0,
    "live": False,
}
CHECK_TIME_LIMIT_S = 120.0
# An assertion message stays readable: the first anomaly in full up to this many lines.
MAX_EXPLANATION_LINES = 40
MAX_OTHER_ANOMALIES = 5


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "linearizability tests (harness)")
    group.addoption(
        "--harness-store",
        default=None,
        help="Keep the runs of the `linearizability` fixture in this store "
        "(default: pytest's temporary directory).",
    )
    group.addoption(
        "--harness-backend",
        default=None,
        help="Backend for the `linearizability` fixture when a test names none (default: netns).",
    )


def build_options(store: Path, **options: Any) -> RunOptions:
    """RunOptions for one fixture run: FIXTURE_DEFAULTS, then `options`, in `store`.
    Raises ValueError naming an unknown option."""
    from harness.options import RunOptions

    fields = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown harness option(s): {', '.join(unknown)}")
    merged = {**FIXTURE_DEFAULTS, **options, "store": store}
    if "concurrency" not in options:
        merged["concurrency"] = 2 * int(merged.get("nodes", 3))
    if "bugs" in merged:
        merged["bugs"] = tuple(merged["bugs"])
    return RunOptions(**merged)


def run_options(opts: RunOptions) -> RunOutcome:
    """Validate `opts` and run one test to the end (a fresh event loop in a worker thread, so
    it also works from inside a running loop). Bad options, and the other errors the command
    line calls bad usage (harness.exit), fail the calling test with their message. Ctrl-C or
    a pytest timeout cancels the run, which heals and tears down before the error goes on."""
    from harness.options import validate

    with _usage_errors_fail_the_test():
        validate(opts)
        return _run_in_thread(opts)


@contextlib.contextmanager
def _usage_errors_fail_the_test() -> Iterator[None]:
    from harness.exit import EXIT_USAGE, exit_code_of

    try:
        yield
    except Exception as exc:
        if exit_code_of(exc) != EXIT_USAGE:
            raise
        pytest.fail(f"harness: {exc}", pytrace=False)


def _run_in_thread(opts: RunOptions) -> RunOutcome:
    from harness.runner import run_test

    stop = threading.Event()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []

    async def main() -> RunOutcome:
        task = asyncio.current_task()
        assert task is not None
        running.append((asyncio.get_running_loop(), task))
        if stop.is_set():
            raise asyncio.CancelledError
        return await run_test(opts)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(asyncio.run, main())
        try:
            return future.result()
        except BaseException:
            stop.set()
            for loop, task in running:
                with contextlib.suppress(RuntimeError):  # the loop already closed
                    loop.call_soon_threadsafe(task.cancel)
            raise  # leaving the pool waits for the run's teardown


@pytest.fixture
def linearizability(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RunOutcome]]:
    """A function that runs one harness test and returns its RunOutcome (see the module)."""
    kept = request.config.getoption("--harness-store")
    store = Path(kept) if kept else tmp_path_factory.mktemp("harness-store")
    backend = request.config.getoption("--harness-backend")

    def run(**options: Any) -> RunOutcome:
        if backend and "backend" not in options:
            options["backend"] = backend
        try:
            opts = build_options(store, **options)
        except (TypeError, ValueError) as exc:
            pytest.fail(f"harness: {exc}", pytrace=False)
        return run_options(opts)

    yield run


def assert_linearizable(subject: Any, *, allow_unknown: bool = False) -> None:
    """Raise AssertionError, explained, unless `subject` is linearizable.

    `subject` is a RunOutcome, a results dict (results.json) or a checker report, a run
    directory, a results.json, a history file in any format `harness check` reads, or a list
    of history.jsonl-shaped ops. "unknown" fails too unless `allow_unknown`.
    """
    __tracebackhide__ = True
    where, results = _results_of(subject)
    valid = results.get("valid")
    if valid is True or (allow_unknown and valid == "unknown"):
        return
    raise AssertionError(explain_failure(where, results))


def explain_failure(where: str, results: dict[str, Any]) -> str:
    """The message of a failed `assert_linearizable`: verdict, run facts, checker text."""
    checker_json = results.get("checker", results)
    valid = results.get("valid")
    head = "not linearizable" if valid is False else f"linearizability undecided ({valid!r})"
    lines = [f"{head}: {where}" if where else head]
    options = results.get("options") or {}
    facts = [
        f"{name} {options[key]}"
        for key, name in (
            ("target", "target"),
            ("read_mode", "read mode"),
            ("nemesis", "nemesis"),
            ("seed", "seed"),
        )
        if options.get(key) is not None
    ]
    if "stale_reads" in results:
        facts.append(
            f"{results['stale_reads']} certainly stale reads "
            f"(max staleness {results.get('max_staleness_ms', 0)} ms)"
        )
    if facts:
        lines.append("; ".join(facts))
    anomalies = checker_json.get("anomalies", [])
    if anomalies:
        lines += _clip(anomalies[0].get("text") or json.dumps(anomalies[0], default=str))
    for anomaly in anomalies[1 : MAX_OTHER_ANOMALIES + 1]:
        lines.append(f"also key {show_key(anomaly.get('key'))}: {anomaly.get('name')}")
    if len(anomalies) > MAX_OTHER_ANOMALIES + 1:
        lines.append(f"and {len(anomalies) - MAX_OTHER_ANOMALIES - 1} more invalid keys")
    if checker_json.get("reason"):
        lines.append(f"undecided: {checker_json['reason']}")
    report = Path(where) / "report.html" if where else None
    if report is not None and report.is_file():
        lines.append(f"report: {report}")
    return "\n".join(lines)


def _clip(text: str) -> list[str]:
    lines = text.splitlines()
    if len(lines) <= MAX_EXPLANATION_LINES:
        return lines
    cut = len(lines) - MAX_EXPLANATION_LINES
    return [*lines[:MAX_EXPLANATION_LINES], f"  ... {cut} more lines in the run's results.json"]


def _results_of(subject: Any) -> tuple[str, dict[str, Any]]:
    from harness.runner import RunOutcome

    if isinstance(subject, RunOutcome):
        return str(subject.run_dir), subject.results
    if isinstance(subject, dict):
        return str(subject.get("run_dir", "")), subject
    if isinstance(subject, str | Path):
        return _results_of_path(Path(subject))
    if isinstance(subject, Sequence):
        return "", _check_ops(list(subject))
    raise TypeError(f"cannot check {type(subject).__name__}: expected an outcome, a path or ops")


def _results_of_path(path: Path) -> tuple[str, dict[str, Any]]:
    import checker

    if path.is_dir():
        if (path / "results.json").is_file():
            path = path / "results.json"
        else:
            path = path / "history.jsonl"
    if path.name == "results.json":
        results = json.loads(path.read_text(encoding="utf-8"))
        return str(path.parent), results
    try:
        history = checker.read_history(str(path))
    except checker.HistoryError as exc:
        raise AssertionError(f"cannot read history {path}: {exc.message}") from None
    result = checker.check(history, "auto", time_limit_s=CHECK_TIME_LIMIT_S)
    return str(path), {"valid": result.valid, "checker": result.to_json()}


def _check_ops(ops: list[dict[str, Any]]) -> dict[str, Any]:
    from harness.history import ops_from_json
    from harness.results import check_history

    return check_history(ops_from_json(ops), CHECK_TIME_LIMIT_S)
