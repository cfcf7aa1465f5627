"""`harness analyze RUN_DIR`: check a stored run again and rewrite its results and report.

Reads `history.jsonl` as `harness check` does (`checker.read_history`: a torn last line, as
a killed run leaves, is left out and the results' `warnings` say so; any other line that
does not read is an error naming it) and the run's options from `results.json` when there
is one; writes `results.json`, `report.html` and `junit.xml` anew. Exit codes: 0 valid,
1 invalid, 2 unknown, 254 when RUN_DIR is not a run or a file in it does not read (the
message names the file, and the line in a history).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import checker
from harness.exit import EXIT_USAGE, UsageError, verdict_exit_code
from harness.history import ops_from_json
from harness.junit import cases_from_results, relative_to_junit, suite_properties, write_junit
from harness.report import REPORT_FILE, write_report
from harness.results import check_history, counts_text, membership, nemesis_schedule
from harness.store import write_json
from nemesis.faults import MEMBER_KINDS

__all__ = ["analyze_command", "analyze_run"]

DEFAULT_TIME_LIMIT_S = 120.0


def _previous(run_dir: Path) -> dict[str, Any]:
    """The run's results.json, if any, with the fields analyze reuses of the types it
    needs; anything else is a usage error naming the file and the field."""
    path = run_dir / "results.json"
    if not path.exists():
        return {}
    try:
        previous = checker.load_json(path.read_bytes().decode("utf-8"), str(path))
    except (OSError, UnicodeDecodeError, checker.HistoryError) as exc:
        raise UsageError(f"{path}: {_reason(exc)}; move it away to analyze anyway") from None
    why = _wrong_field(previous)
    if why is not None:
        raise UsageError(f"{path}: {why}; fix it or move it away to analyze anyway")
    return previous


def _reason(exc: Exception) -> str:
    if isinstance(exc, checker.HistoryError):
        return f"line {exc.line}: {exc.message}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 (byte {exc.start})"
    return str(exc)


def _wrong_field(previous: Any) -> str | None:
    """What of a results.json analyze cannot use, or None."""
    if not isinstance(previous, dict):
        return "not a results object"
    options = previous.get("options")
    fields = [
        ("test", previous.get("test"), _NAME),
        ("seed", previous.get("seed"), _INTEGER),
        ("options", options, _OBJECT),
        ("nemeses", previous.get("nemeses"), _NAMES),
    ]
    if isinstance(options, dict):
        fields.append(("options.seed", options.get("seed"), _INTEGER))
        fields.append(("options.check_time_limit_s", options.get("check_time_limit_s"), _SECONDS))
    for name, value, (kind, fits) in fields:
        if value is not None and not fits(value):
            return f"{name} must be {kind}, not {checker.brief(value)}"
    return None


_Kind = tuple[str, Callable[[Any], bool]]
_NAME: _Kind = ("a name", lambda v: isinstance(v, str))
_INTEGER: _Kind = ("an integer", lambda v: type(v) is int)
_OBJECT: _Kind = ("an object", lambda v: isinstance(v, dict))
_NAMES: _Kind = (
    "a list of names",
    lambda v: isinstance(v, list) and all(type(n) is str for n in v),
)
_SECONDS: _Kind = ("a positive number", lambda v: type(v) in (int, float) and v > 0)


def analyze_run(run_dir: Path, time_limit_s: float | None = None) -> dict[str, Any]:
    """Check `run_dir/history.jsonl` again; write results.json, report.html and junit.xml.
    Raises `checker.HistoryError` when the history does not read or makes no sense, and
    `harness.exit.UsageError` when `run_dir` is no run or its results.json is not usable."""
    path = run_dir / "history.jsonl"
    if not path.is_file():
        raise UsageError(f"{run_dir}: no history.jsonl here; is it a run directory?")
    previous = _previous(run_dir)
    options = previous.get("options") or {}
    limit = time_limit_s or options.get("check_time_limit_s") or DEFAULT_TIME_LIMIT_S
    history = checker.read_history(str(path), "jsonl", keep_records=True)
    assert history.records is not None
    ops = ops_from_json(history.records)
    checked = check_history(ops, float(limit), history)
    results = {
        "valid": checked["valid"],
        "test": previous.get("test") or run_dir.resolve().parent.name,
        "run_dir": str(run_dir),
        "seed": previous.get("seed", options.get("seed")),
        "options": options,
        "nemeses": previous.get("nemeses") or [],
        **{k: v for k, v in checked.items() if k != "valid"},
        "nemesis_schedule": nemesis_schedule(ops),
    }
    if any(MEMBER_KINDS & set(str(name).split("+")) for name in results["nemeses"]):
        nodes = options.get("nodes")
        count = nodes if type(nodes) is int else 0
        results["membership"] = membership(ops, [f"n{i}" for i in range(1, count + 1)])
    if history.warnings:
        results["warnings"] = history.warnings
    write_json(run_dir / "results.json", results)
    write_report(run_dir, results, ops)
    write_junit(
        run_dir / "junit.xml",
        cases_from_results(results, REPORT_FILE),
        properties=suite_properties(results),
    )
    return results


@click.command("analyze")
@click.argument(
    "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds for the checker (default: the run's own limit).",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the verdicts as JUnit XML to this file.",
)
def analyze_command(run_dir: Path, time_limit: float | None, junit_path: Path | None) -> int:
    """Check a stored run again; rewrite its results.json, report.html and junit.xml."""
    try:
        results = analyze_run(run_dir, time_limit)
    except checker.HistoryError as exc:
        click.echo(f"harness analyze: {exc}", err=True)
        return EXIT_USAGE
    for warning in results.get("warnings", []):
        click.echo(f"warning: {warning}")
    if junit_path is not None:
        rel = relative_to_junit(run_dir / REPORT_FILE, junit_path)
        write_junit(junit_path, cases_from_results(results, rel), suite_properties(results))
    word = {True: "VALID", False: "INVALID"}.get(results["valid"], "UNKNOWN")
    click.echo(f"{word}: {counts_text(results)}; report {run_dir / REPORT_FILE}")
    return verdict_exit_code(results["valid"])
