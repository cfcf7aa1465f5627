"""`harness check`: re-check history files of any supported format.

Exit codes: 0 all valid, 1 any invalid, 2 any unknown (and none invalid), 254 bad usage or an
unreadable file (the message names the file and line). A torn last line of a jsonl history (a
killed test's last write) is the one thing left out: the verdict's `warnings` say so.
"""

from __future__ import annotations

import json
import sys
import time
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
    junit_path: Path | None,
    files: tuple[str, ...],
) -> int:
    """Check history FILEs for linearizability (history.jsonl, Jepsen EDN, Knossos, Porcupine)."""
    codes = []
    cases: list[JunitCase] = []
    for path in files:
        report, code, keys = _check_file(path, model, fmt, time_limit, memory_limit)
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


def _check_file(
    path: str, model: str, fmt: str | None, time_limit: float | None, memory_limit: float
) -> tuple[dict[str, Any], int, list[Any]]:
    """The report, the exit code and the keys (sub-histories) of one file."""
    started = time.monotonic()
    try:
        history = read_history(path, fmt)
        parse_s = time.monotonic() - started
        result = check(history, model, time_limit_s=time_limit, memory_limit_mb=memory_limit)
    except HistoryError as exc:
        where = f"{exc.file or path}" + (f":{exc.line}" if exc.line is not None else "")
        message = f"{where}: {exc.message}"
        click.echo(f"harness check: {message}", err=True)
        return {"file": path, "error": message}, EXIT_USAGE, []
    report: dict[str, Any] = {"file": path, "format": history.format}
    report.update(result.to_json())
    report["parse_s"] = round(parse_s, 6)
    keys = sorted({e.key for e in history.events if e.process != "nemesis"}, key=repr)
    return report, verdict_exit_code(result.valid), keys


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
