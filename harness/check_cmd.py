"""`harness check`: re-check history files of any supported format.

Exit codes: 0 all valid, 1 any invalid, 2 any unknown (and none invalid), 254 bad usage or an
unreadable file (the message names the file and line). A torn last line of a jsonl history (a
killed test's last write) is the one thing left out: the verdict's `warnings` say so.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from checker import FORMATS, MODELS, HistoryError, check, read_history
from harness.exit import EXIT_INVALID, EXIT_UNKNOWN, EXIT_USAGE, EXIT_VALID, verdict_exit_code
from harness.junit import JunitCase, cases_from_check, write_junit

__all__ = ["check_command"]


@click.command("check")
@click.option(
    "--model",
    type=click.Choice(["auto", *MODELS]),
    default="auto",
    show_default=True,
    help="Model to check against; auto infers it from the format and the ops.",
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default=None, help="Force the input format."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
@click.option("--time-limit", type=click.FloatRange(min=0), default=None, help="Seconds per file.")
@click.option(
    "--memory-limit", type=click.FloatRange(min=1), default=4096.0, show_default=True, help="MB."
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Processes: files checked side by side, or one file's keys [default: the cores].",
)
@click.option(
    "--explain-time-limit",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds per file for explaining invalid keys once the verdict is known; "
    "an explanation cut short says so.",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the verdicts as JUnit XML to this file (for CI).",
)
@click.argument("files", nargs=-1, required=True)
@click.pass_context
def check_command(
    ctx: click.Context,
    model: str,
    fmt: str | None,
    as_json: bool,
    time_limit: float | None,
    memory_limit: float,
    jobs: int | None,
    explain_time_limit: float,
    junit_path: Path | None,
    files: tuple[str, ...],
) -> int:
    """Check history FILEs for linearizability (history.jsonl, Jepsen EDN, Knossos, Porcupine)."""
    jobs = jobs or os.cpu_count() or 1
    side_by_side = min(jobs, len(files))
    limits = _Limits(model, fmt, time_limit, memory_limit, explain_time_limit,
                     workers=1 if side_by_side > 1 else jobs)  # fmt: skip
    codes = []
    cases: list[JunitCase] = []
    for path, (report, code, keys, error) in zip(files, _each(files, limits, side_by_side)):
        if error is not None:
            click.echo(f"harness check: {error}", err=True)
        codes.append(code)
        cases += cases_from_check(path, report, keys)
        if as_json:
            click.echo(json.dumps(report, default=repr))
        else:
            _print_human(report)
    if junit_path is not None:
        write_junit(junit_path, cases)
    if EXIT_USAGE in codes:
        return EXIT_USAGE
    if EXIT_INVALID in codes:
        return EXIT_INVALID
    return EXIT_UNKNOWN if EXIT_UNKNOWN in codes else EXIT_VALID


@dataclass(frozen=True)
class _Limits:
    model: str
    fmt: str | None
    time_limit: float | None
    memory_limit: float
    explain_time_limit: float
    workers: int


# One file's report, exit code, keys (sub-histories), and the error to print if it failed.
_Checked = tuple[dict[str, Any], int, list[Any], str | None]


def _each(files: tuple[str, ...], limits: _Limits, side_by_side: int) -> Iterator[_Checked]:
    """Each file checked, in the order given: in this process, or `side_by_side` at once."""
    if side_by_side <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield from (_check_file(path, limits) for path in files)
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(side_by_side, mp_context=context) as pool:
        yield from pool.map(functools.partial(_check_file, limits=limits), files)


def _check_file(path: str, limits: _Limits) -> _Checked:
    started = time.monotonic()
    try:
        history = read_history(path, limits.fmt)
        parse_s = time.monotonic() - started
        result = check(
            history,
            limits.model,
            time_limit_s=limits.time_limit,
            memory_limit_mb=limits.memory_limit,
            workers=limits.workers,
            explain_time_limit_s=limits.explain_time_limit,
        )
    except HistoryError as exc:
        where = f"{exc.file or path}" + (f":{exc.line}" if exc.line is not None else "")
        message = f"{where}: {exc.message}"
        return {"file": path, "error": message}, EXIT_USAGE, [], message
    report: dict[str, Any] = {"file": path, "format": history.format}
    report.update(result.to_json())
    report["parse_s"] = round(parse_s, 6)
    keys = sorted({e.key for e in history.events if e.process != "nemesis"}, key=repr)
    return report, verdict_exit_code(result.valid), keys, None


def _print_human(report: dict[str, Any]) -> None:
    if "error" in report:
        return
    valid = report["valid"]
    word = {True: "valid", False: "INVALID"}.get(valid, "UNKNOWN")
    head = (
        f"{report['file']}: {word} ({report['model']}, {report['ops']} ops, "
        f"{report['keys']} keys; parse {report['parse_s']:.3f}s, check {report['elapsed_s']:.3f}s)"
    )
    click.echo(head)
    if report.get("reason"):
        click.echo(f"  undecided: {report['reason']}")
    for warning in report.get("warnings", []):
        click.echo(f"  warning: {warning}")
    for anomaly in report.get("anomalies", []):
        click.echo("  " + anomaly["text"].replace("\n", "\n  "))
    sys.stdout.flush()
