"""`harness analyze RUN_DIR`: check a stored run again and rewrite its results and report.

Reads `history.jsonl` (a torn last line, as a killed run leaves, is skipped) and the
run's options from `results.json` when there is one; writes `results.json`,
`report.html` and `junit.xml` anew. Exit codes: 0 valid, 1 invalid, 2 unknown,
254 when RUN_DIR is not a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from harness.junit import cases_from_results, relative_to_junit, suite_properties, write_junit
from harness.report import REPORT_FILE, read_ops, write_report
from harness.results import check_history
from harness.store import write_json

__all__ = ["analyze_command", "analyze_run", "exit_code"]

EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN = 0, 1, 2
DEFAULT_TIME_LIMIT_S = 120.0


def exit_code(valid: Any) -> int:
    return EXIT_VALID if valid is True else EXIT_INVALID if valid is False else EXIT_UNKNOWN


def _previous(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    if not path.exists():
        return {}
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise click.UsageError(
            f"{path}: not JSON ({exc}); move it away to analyze anyway"
        ) from None
    if not isinstance(previous, dict):
        raise click.UsageError(f"{path}: not a results object; move it away to analyze anyway")
    return previous


def analyze_run(run_dir: Path, time_limit_s: float | None = None) -> dict[str, Any]:
    """Check `run_dir/history.jsonl` again; write results.json, report.html and junit.xml."""
    history = run_dir / "history.jsonl"
    if not history.is_file():
        raise click.UsageError(f"{run_dir}: no history.jsonl here; is it a run directory?")
    previous = _previous(run_dir)
    options = previous.get("options") or {}
    limit = time_limit_s or options.get("check_time_limit_s") or DEFAULT_TIME_LIMIT_S
    ops = read_ops(history)
    checked = check_history(ops, float(limit))
    results = {
        "valid": checked["valid"],
        "test": previous.get("test") or run_dir.resolve().parent.name,
        "run_dir": str(run_dir),
        "seed": previous.get("seed", options.get("seed")),
        "options": options,
        "nemeses": previous.get("nemeses", []),
        **{k: v for k, v in checked.items() if k != "valid"},
        "nemesis_schedule": [op for op in ops if op.get("process") == "nemesis"],
    }
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
    results = analyze_run(run_dir, time_limit)
    if junit_path is not None:
        rel = relative_to_junit(run_dir / REPORT_FILE, junit_path)
        write_junit(junit_path, cases_from_results(results, rel), suite_properties(results))
    word = {True: "VALID", False: "INVALID"}.get(results["valid"], "UNKNOWN")
    click.echo(
        f"{word}: stale reads {results['stale_reads']}; keys {json.dumps(results['keys'])}; "
        f"report {run_dir / REPORT_FILE}"
    )
    return exit_code(results["valid"])
